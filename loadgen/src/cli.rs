//! Command-line flags. Names follow the seed's Python generator so its users feel
//! at home; every flag can also be set by a `LOADGEN_*` environment variable.
//! Parsing only: checking that the values make sense is [`crate::config`]'s job.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// The load model of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    /// Closed model: `--messages` messages over `--workers` concurrent sessions, as
    /// fast as they go.
    Burst,
    /// Open model: `--rate` messages per second for `--duration` seconds on a fixed
    /// timetable, whatever the server's speed; latency is also measured from each
    /// send's scheduled time (coordinated-omission corrected).
    Sustained,
    /// Open model on a rate curve: `--stages 30s:100,2m:500,10s:0` ramps the rate
    /// linearly from `--start-rate` (default 0) to each target in turn, on a fixed
    /// timetable, latency also coordinated-omission corrected.
    Stages,
    /// A search for the highest rate that meets `--slo`: constant-rate steps of
    /// the open model from `--start-rate`, doubled until a step breaks the SLO
    /// (or `--max-rate`), then bisected to 5%; each step judged on its own
    /// corrected latency and success rate.
    Capacity,
}

/// How the open model spreads its sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalsArg {
    /// Evenly spaced at the current rate.
    Uniform,
    /// Exponential gaps at the current rate, as independent senders make them
    /// (seeded by `--seed`, so a run repeats).
    Poisson,
}

/// How a session gets its TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext SMTP.
    None,
    /// EHLO, STARTTLS, handshake, EHLO again (RFC 3207), as on ports 25 and 587.
    Starttls,
    /// TLS from the first byte (RFC 8314), as on port 465.
    Implicit,
}

/// `--tls-resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The SASL mechanism of `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMechanism {
    /// RFC 4616: one line, `\0user\0password` in base64, sent with AUTH.
    Plain,
    /// The user name and the password each in answer to a 334 challenge.
    Login,
}

impl AuthMechanism {
    /// The name in AUTH commands and in the EHLO keyword's list.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
        }
    }
}

/// Stampede's SMTP load generator.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, about, long_about = None, after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Servers to load, comma separated: `host` or `host:port` (round-robin).
    #[arg(long, env = "LOADGEN_SERVERS", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,

    /// SMTP port for servers given without one.
    #[arg(long, env = "LOADGEN_PORT", default_value_t = 2525)]
    pub port: u16,

    /// Load model: burst (fixed message count, closed), sustained (fixed rate, open),
    /// stages (a rate curve, open) or capacity (a search for the highest rate that
    /// meets --slo).
    #[arg(long, env = "LOADGEN_MODE", value_enum, default_value_t = ModeArg::Burst)]
    pub mode: ModeArg,

    /// Burst mode: number of messages to send.
    #[arg(long, env = "LOADGEN_MESSAGES", default_value_t = 1000)]
    pub messages: u64,

    /// Concurrent sessions. Burst: the closed-model concurrency (default 10).
    /// Sustained: the most sessions in flight at once (default 50); a send that finds
    /// them all busy waits and is counted late.
    #[arg(long, env = "LOADGEN_WORKERS")]
    pub workers: Option<u32>,

    /// Sustained mode: length of the run (`90s`, `2m`, `1h30m`; a plain number is
    /// seconds).
    #[arg(long, env = "LOADGEN_DURATION", default_value = "60")]
    pub duration: String,

    /// Sustained mode: messages per second.
    #[arg(long, env = "LOADGEN_RATE", default_value_t = 50.0)]
    pub rate: f64,

    /// Stages mode: the rate curve as DURATION:TARGET points, comma separated
    /// (`30s:100,2m:500,30s:500,10s:0`); the rate moves linearly to each TARGET
    /// (messages per second) over its DURATION, `0s:2000` is a step.
    #[arg(long, env = "LOADGEN_STAGES", help_heading = "Load shape")]
    pub stages: Option<String>,

    /// Stages mode: the rate the first stage starts from [default: 0]. Capacity
    /// mode: the first step's rate [default: 100].
    #[arg(long, env = "LOADGEN_START_RATE", help_heading = "Load shape")]
    pub start_rate: Option<f64>,

    /// Sustained and stages modes: uniform (evenly spaced) or poisson arrivals.
    #[arg(long, env = "LOADGEN_ARRIVALS", value_enum, default_value_t = ArrivalsArg::Uniform, help_heading = "Load shape")]
    pub arrivals: ArrivalsArg,

    /// Seed of the Poisson arrivals [default: random; the seed used is recorded in
    /// the result's run.config.seed, so a run can be repeated].
    #[arg(long, env = "LOADGEN_SEED", help_heading = "Load shape")]
    pub seed: Option<u64>,

    /// Sustained and stages modes: messages due in this first stretch (`10s`) are
    /// sent but left out of the figures (totals, histograms, phases, rates); the
    /// timeline keeps them, marked by the result's `warmup_s`.
    #[arg(long, env = "LOADGEN_WARMUP", help_heading = "Load shape")]
    pub warmup: Option<String>,

    /// Message size: small|medium|large|xlarge (1 KiB/10 KiB/100 KiB/1 MiB), an exact
    /// size (`2500`, `64KiB`, `1MiB` binary, `10KB` decimal) or a weighted mix
    /// (`small=70,medium=25,large=5`).
    #[arg(long, env = "LOADGEN_SIZE", default_value = "medium")]
    pub size: String,

    /// Result file [default: results/<YYYYMMDD-HHMMSS>-<test-type>.json].
    #[arg(long, short = 'o', env = "LOADGEN_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Name recorded as the result's test_type [default: the mode].
    #[arg(long, env = "LOADGEN_TEST_TYPE")]
    pub test_type: Option<String>,

    /// Messages sent on one connection before QUIT (connection reuse).
    #[arg(long, env = "LOADGEN_MSGS_PER_CONN", default_value_t = 1)]
    pub msgs_per_conn: u32,

    /// Recipients per message (RCPT TO commands).
    #[arg(long, env = "LOADGEN_RCPTS", default_value_t = 1)]
    pub rcpts: u32,

    /// Send MAIL, RCPT and DATA in one write when the server advertises PIPELINING.
    #[arg(long, env = "LOADGEN_PIPELINING")]
    pub pipelining: bool,

    /// Timeout of each SMTP operation (connect, each reply): `500ms`, `30s`, `2m`; a
    /// plain number is seconds.
    #[arg(long, env = "LOADGEN_TIMEOUT", default_value = "30")]
    pub timeout: String,

    /// Envelope sender: an address, or a domain (`loadgen@<domain>`).
    #[arg(long, env = "LOADGEN_FROM", default_value = "stampede.test")]
    pub from: String,

    /// Recipient: an address, or a domain (`user@<domain>`); with `--rcpts N` > 1 a
    /// number is appended to the local part.
    #[arg(long, env = "LOADGEN_TO", default_value = "example.test")]
    pub to: String,

    /// Name sent with EHLO.
    #[arg(long, env = "LOADGEN_HELO", default_value = "loadgen.stampede.test")]
    pub helo: String,

    /// No progress bar and no summary table.
    #[arg(long, short = 'q', env = "LOADGEN_QUIET")]
    pub quiet: bool,

    /// Docker containers whose CPU and memory to sample during the run (comma list).
    #[arg(long, env = "LOADGEN_MONITOR_CONTAINERS", value_delimiter = ',')]
    pub monitor_containers: Vec<String>,

    /// Sustained mode: a send is counted late when it starts more than this long
    /// after its scheduled time (smaller scheduling jitter is not late). A plain
    /// number is milliseconds, as the name says; `1s`, `250ms` also work.
    #[arg(long, env = "LOADGEN_LATE_TOLERANCE_MS", default_value = "10")]
    pub late_tolerance_ms: String,

    /// Time in-flight messages may take to finish after the run's end (sustained)
    /// or after Ctrl-C (`500ms`, `5s`; a plain number is seconds); what is still
    /// running then is counted as failed ("aborted").
    #[arg(long, env = "LOADGEN_DRAIN_TIMEOUT", default_value = "5")]
    pub drain_timeout: String,

    /// Threads of the generator's runtime; 0 = one per core, 1 = a single thread.
    #[arg(long, env = "LOADGEN_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Bind each new connection to the next of these local addresses, round-robin
    /// over the whole run: a comma list of addresses (`127.0.0.5`), ranges
    /// (`127.0.0.2-127.0.0.40`) and CIDR blocks (`127.0.0.0/28`), one family, at
    /// most 65536. Every address is checked before the run; on Linux all of
    /// 127.0.0.0/8 is on `lo`. The result counts connections per address
    /// (`per_source`).
    #[arg(long, env = "LOADGEN_SOURCE_IPS", value_name = "SPEC")]
    pub source_ips: Option<String>,

    /// Skip the check, before the run, that every server answers with a 220 banner.
    #[arg(long, env = "LOADGEN_NO_PREFLIGHT")]
    pub no_preflight: bool,

    /// TLS: none, starttls (upgrade after EHLO; a server that does not offer it
    /// fails the message as `tls:not_offered`, never falls back to plaintext) or
    /// implicit (TLS from connect, port 465).
    #[arg(long, env = "LOADGEN_TLS", value_enum, default_value_t = TlsMode::None, help_heading = "TLS")]
    pub tls: TlsMode,

    /// PEM file of extra trusted CA certificates, added to the system's roots.
    #[arg(long, env = "LOADGEN_TLS_CA", help_heading = "TLS")]
    pub tls_ca: Option<PathBuf>,

    /// Accept any server certificate (self-signed test servers); the handshake's
    /// signatures are still checked.
    #[arg(
        long,
        env = "LOADGEN_TLS_INSECURE",
        conflicts_with = "tls_ca",
        help_heading = "TLS"
    )]
    pub tls_insecure: bool,

    /// Server name sent in SNI and checked against the certificate [default: the
    /// server's host name, or its IP address when given as one].
    #[arg(long, env = "LOADGEN_TLS_SNI", help_heading = "TLS")]
    pub tls_sni: Option<String>,

    /// Resume TLS sessions across connections, as real clients do; `off` makes
    /// every handshake a full one.
    #[arg(long, env = "LOADGEN_TLS_RESUME", value_enum, default_value_t = OnOff::On, help_heading = "TLS")]
    pub tls_resume: OnOff,

    /// Authenticate every connection (after TLS, if any) with this SASL mechanism;
    /// needs --auth-user and --auth-password, or --auth-file.
    #[arg(long, env = "LOADGEN_AUTH", value_enum, help_heading = "AUTH")]
    pub auth: Option<AuthMechanism>,

    /// User name for --auth.
    #[arg(
        long,
        env = "LOADGEN_AUTH_USER",
        conflicts_with = "auth_file",
        help_heading = "AUTH"
    )]
    pub auth_user: Option<String>,

    /// Password for --auth-user (the environment variable keeps it out of the
    /// process list). Never written to the result.
    #[arg(
        long,
        env = "LOADGEN_AUTH_PASSWORD",
        hide_env_values = true,
        help_heading = "AUTH"
    )]
    pub auth_password: Option<String>,

    /// File of `user:password` lines (`#` comments and blank lines ignored), used
    /// in turn, one per connection.
    #[arg(long, env = "LOADGEN_AUTH_FILE", help_heading = "AUTH")]
    pub auth_file: Option<PathBuf>,

    /// A gate the run must meet, in the grammar of `analyze check`: `p99<=25ms`,
    /// `success_rate>=99.9`, `failed==0`. Repeatable, or a comma list (the
    /// environment variable's form: `p99<=25ms,success_rate>=99.9`). Judged at the end of the
    /// run; a missed gate exits 99 after the result (with its `gates` key) is
    /// written. Latency figures (avg, p50 .. p99_9, max) are judged on the
    /// coordinated-omission corrected latency where the run measures it
    /// (sustained mode), on the service time otherwise (burst); the result names
    /// the figure judged (`corrected_p99`).
    #[arg(
        long = "require",
        env = "LOADGEN_REQUIRE",
        value_name = "GATE",
        value_delimiter = ',',
        help_heading = "Gates"
    )]
    pub require: Vec<String>,

    /// Stop the run as soon as a --require gate can no longer be met: a count
    /// that only grows (failed, connection_errors, timeouts, late_sends) past its
    /// limit, or more failures than success_rate or successful_messages allows
    /// of the planned total. The run is recorded as aborted by that gate and
    /// exits 99. Latency and throughput gates are judged at the end only.
    #[arg(
        long,
        env = "LOADGEN_ABORT_ON_FAIL",
        requires = "require",
        help_heading = "Gates"
    )]
    pub abort_on_fail: bool,

    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// The flags of `--mode capacity` (parsed only; checked in `config.rs`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Capacity search")]
pub struct CapacityArgs {
    /// Capacity mode: the service-level objective each step must meet, as
    /// comma-separated gates in the grammar of --require
    /// (`p99<=250ms,success_rate>=99.9`). Latency is judged on the step's
    /// coordinated-omission corrected latency, every figure on that step alone.
    #[arg(long, env = "LOADGEN_SLO", value_name = "GATES")]
    pub slo: Option<String>,

    /// Capacity mode: the highest rate to try, messages per second [default:
    /// 100000]. A search that passes here reports "at least" this rate.
    #[arg(long, env = "LOADGEN_MAX_RATE")]
    pub max_rate: Option<f64>,

    /// Capacity mode: how long each step offers its rate (`20s`, `1m`; a plain
    /// number is seconds) [default: 20s].
    #[arg(long, env = "LOADGEN_STEP_DURATION")]
    pub step_duration: Option<String>,

    /// Capacity mode: the pause between steps, so one step's backlog does not
    /// weigh on the next (`5s`; a plain number is seconds) [default: 5s].
    #[arg(long, env = "LOADGEN_COOLDOWN")]
    pub cooldown: Option<String>,
}

/// `loadgen --help`'s closing section.
pub const EXIT_CODES_HELP: &str = "\
Commands:
  limits  check that a server enforces its resource limits (loadgen limits --help)

Exit codes:
  0    the run was carried out (and met every --require gate); a capacity
       search exits 0 whatever rate it found (the verdict is in the result)
  1    the run could not be carried out (unreachable server, no runtime, result not written)
  2    bad usage: a bad flag or value, named on stderr
  99   a --require gate was missed, or --abort-on-fail stopped the run (result written)
  130  interrupted with Ctrl-C (result written, marked interrupted)";
