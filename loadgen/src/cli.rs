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
}

/// Stampede's SMTP load generator.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
pub struct Args {
    /// Servers to load, comma separated: `host` or `host:port` (round-robin).
    #[arg(long, env = "LOADGEN_SERVERS", value_delimiter = ',', required = true)]
    pub servers: Vec<String>,

    /// SMTP port for servers given without one.
    #[arg(long, env = "LOADGEN_PORT", default_value_t = 2525)]
    pub port: u16,

    /// Load model: burst (fixed message count, closed) or sustained (fixed rate, open).
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

    /// Skip the check, before the run, that every server answers with a 220 banner.
    #[arg(long, env = "LOADGEN_NO_PREFLIGHT")]
    pub no_preflight: bool,
}
