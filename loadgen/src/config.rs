//! A run's settings, checked. Every error names the flag it is about, so a user
//! reading one line knows what to change.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::auth::{Credential, read_auth_file};
use crate::cli::{Args, ArrivalsArg, AuthMechanism, ModeArg, OnOff, TlsMode};
use crate::source_addrs::SourceAddrs;
use crate::timetable::{Arrivals, RateCurve};
use crate::tls::{TlsSettings, read_ca_file, server_name};

/// The four named sizes of the seed generator.
pub const NAMED_SIZES: [(&str, u64); 4] = [
    ("small", 1024),
    ("medium", 10 * 1024),
    ("large", 100 * 1024),
    ("xlarge", 1024 * 1024),
];

/// Smallest message we build: the headers alone take about 300 bytes.
pub const MIN_MESSAGE_SIZE: u64 = 512;
/// Largest message we build (also the reference server's default limit).
pub const MAX_MESSAGE_SIZE: u64 = 100 * 1024 * 1024;
/// RFC 5321 4.5.3.1.8 requires servers to accept at least 100 recipients; allow a
/// little beyond so the 101st can be tested.
pub const MAX_RCPTS: u32 = 1000;
/// Upper bound on concurrency: each worker is a task and, while busy, a socket.
pub const MAX_WORKERS: u32 = 100_000;
/// Default concurrency in burst mode (closed model).
pub const DEFAULT_BURST_WORKERS: u32 = 10;
/// Default pool of sessions in sustained mode: enough to absorb a server stall of
/// about a second at 50/s, few enough to stay under the reference server's default
/// per-IP connection limit (50).
pub const DEFAULT_SUSTAINED_WORKERS: u32 = 50;

/// `--duration`: a millisecond up to a week.
const DURATION_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(7 * 86400));
/// `--timeout`: a millisecond up to an hour.
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(3600));
/// `--late-tolerance-ms`: none up to a minute.
const LATE_TOLERANCE_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(60));
/// `--drain-timeout`: none up to an hour.
const DRAIN_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--{flag}: {problem}")]
    Invalid { flag: &'static str, problem: String },
}

fn invalid(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        problem: problem.into(),
    }
}

/// One server to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
pub fn parse_server(s: &str, default_port: u16) -> Result<ServerAddr, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty server name".into());
    }
    let port_of = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: bad port {p:?}"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let port = match after {
            "" => default_port,
            p => port_of(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected ':port' after ']'"))?,
            )?,
        };
        return Ok(ServerAddr {
            host: host.to_string(),
            port,
        });
    }
    match s.matches(':').count() {
        0 => Ok(ServerAddr {
            host: s.to_string(),
            port: default_port,
        }),
        1 => {
            let (host, port) = s.split_once(':').expect("one colon");
            if host.is_empty() {
                return Err(format!("{s:?}: empty host"));
            }
            Ok(ServerAddr {
                host: host.to_string(),
                port: port_of(port)?,
            })
        }
        _ => Ok(ServerAddr {
            host: s.to_string(),
            port: default_port,
        }),
    }
}

/// What sizes the messages have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeSpec {
    /// The text given on the command line.
    pub text: String,
    /// Sizes in bytes on the wire, each with its weight (one entry unless a mix).
    pub choices: Vec<SizeChoice>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeChoice {
    pub bytes: u64,
    pub weight: u32,
}

impl SizeSpec {
    /// The weighted mean size, recorded as the result's `message_size`.
    pub fn mean_bytes(&self) -> u64 {
        let total: u64 = self.choices.iter().map(|c| u64::from(c.weight)).sum();
        let sum: u64 = self
            .choices
            .iter()
            .map(|c| c.bytes * u64::from(c.weight))
            .sum();
        sum.checked_div(total).unwrap_or(0)
    }
}

/// Parses a named size (`medium`) or an exact one in the shared grammar of
/// [`units::parse_size`] (`2500`, `64KiB`, `1.5MiB`, `10KB`; a bare `10k` is refused).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some((_, b)) = NAMED_SIZES.iter().find(|(n, _)| n.eq_ignore_ascii_case(t)) {
        return Ok(*b);
    }
    let bytes = units::parse_size(t).map_err(|e| match e {
        units::UnitError::BadSize { .. } => {
            format!("{s:?} is not a size (small, medium, large, xlarge, 2500, 64KiB, 1MiB, 10KB)")
        }
        other => other.to_string(),
    })?;
    if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&bytes) {
        return Err(format!(
            "{s:?} = {bytes} bytes, outside {MIN_MESSAGE_SIZE}..={MAX_MESSAGE_SIZE}"
        ));
    }
    Ok(bytes)
}

/// Parses a single size or a weighted mix `name=weight,...`.
pub fn parse_size_spec(s: &str) -> Result<SizeSpec, String> {
    let mut choices = Vec::new();
    if s.contains('=') {
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (size, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: a mix entry is size=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: weight must be a whole number"))?;
            if weight > 0 {
                choices.push(SizeChoice {
                    bytes: parse_size(size)?,
                    weight,
                });
            }
        }
        if choices.is_empty() {
            return Err(format!("{s:?}: the mix has no entry with a weight above 0"));
        }
    } else {
        choices.push(SizeChoice {
            bytes: parse_size(s)?,
            weight: 1,
        });
    }
    Ok(SizeSpec {
        text: s.to_string(),
        choices,
    })
}

/// The load model, with its own settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    Burst {
        messages: u64,
        workers: u32,
    },
    Sustained {
        rate: f64,
        duration: f64,
        workers: u32,
    },
    Stages {
        stages: Vec<StageSpec>,
        start_rate: f64,
        workers: u32,
    },
    Capacity {
        #[serde(flatten)]
        search: CapacitySpec,
        workers: u32,
    },
}

/// The settings of a capacity search (`--mode capacity`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacitySpec {
    /// `--slo`, one gate per item as written; parsed in `Config::slo_gates`.
    pub slo: Vec<String>,
    pub start_rate: f64,
    pub max_rate: f64,
    /// `--step-duration`, seconds.
    pub step_duration: f64,
    /// `--cooldown`, seconds.
    pub cooldown: f64,
}

/// Capacity mode's defaults (CONTRACT.md).
pub const DEFAULT_CAPACITY_START_RATE: f64 = 100.0;
pub const DEFAULT_CAPACITY_MAX_RATE: f64 = 100_000.0;
const DEFAULT_STEP_DURATION: &str = "20s";
const DEFAULT_COOLDOWN: &str = "5s";
/// `--cooldown`: none up to an hour.
const COOLDOWN_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));

/// One point of `--stages`: reach `target` messages per second over `duration_s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageSpec {
    pub duration_s: f64,
    pub target: f64,
}

/// Highest rate `--rate`, `--stages` and `--start-rate` take.
pub const MAX_RATE: f64 = 1_000_000.0;

/// Parses `--stages`: `DURATION:TARGET` points, comma separated, durations in the
/// shared grammar (`30s`, `2m`, `1h30m`, `0s` for a step).
pub fn parse_stages(s: &str) -> Result<Vec<StageSpec>, String> {
    let stages = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|point| {
            let (d, t) = point
                .split_once(':')
                .ok_or_else(|| format!("{point:?}: a stage is DURATION:TARGET (30s:100)"))?;
            let duration = units::parse_duration(d).map_err(|e| format!("{point:?}: {e}"))?;
            if duration > DURATION_RANGE.1 {
                return Err(format!("{point:?}: a stage lasts at most a week"));
            }
            let target = rate_value(t).map_err(|e| format!("{point:?}: {e}"))?;
            Ok(StageSpec {
                duration_s: duration.as_secs_f64(),
                target,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if stages.is_empty() {
        return Err("no stage given (30s:100,1m:100,10s:0)".into());
    }
    Ok(stages)
}

/// A rate in messages per second, `0..=MAX_RATE`.
fn rate_value(t: &str) -> Result<f64, String> {
    let rate: f64 = t
        .trim()
        .parse()
        .map_err(|_| format!("{t:?} is not a rate (messages per second)"))?;
    check_rate(rate)
}

fn check_rate(rate: f64) -> Result<f64, String> {
    if !rate.is_finite() || !(0.0..=MAX_RATE).contains(&rate) {
        return Err(format!("rate {rate} is outside 0..={MAX_RATE}"));
    }
    Ok(rate)
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Burst { .. } => "burst",
            Mode::Sustained { .. } => "sustained",
            Mode::Stages { .. } => "stages",
            Mode::Capacity { .. } => "capacity",
        }
    }

    pub fn workers(&self) -> u32 {
        match *self {
            Mode::Burst { workers, .. }
            | Mode::Sustained { workers, .. }
            | Mode::Stages { workers, .. }
            | Mode::Capacity { workers, .. } => workers,
        }
    }

    /// The open model's rate curve; `None` in the closed model, and in capacity
    /// mode, whose steps each run as a sustained run of their own.
    pub fn rate_curve(&self) -> Option<RateCurve> {
        match self {
            Mode::Burst { .. } | Mode::Capacity { .. } => None,
            Mode::Sustained { rate, duration, .. } => Some(RateCurve::constant(*rate, *duration)),
            Mode::Stages {
                stages, start_rate, ..
            } => {
                let points: Vec<_> = stages.iter().map(|s| (s.duration_s, s.target)).collect();
                Some(RateCurve::stages(*start_rate, &points))
            }
        }
    }
}

/// Every setting of a run, checked. Serialized whole into the result's `run.config`.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Servers as given (recorded as the result's `servers`).
    pub servers_given: Vec<String>,
    pub servers: Vec<ServerAddr>,
    pub port: u16,
    #[serde(flatten)]
    pub mode: Mode,
    pub size: SizeSpec,
    pub output: Option<PathBuf>,
    pub test_type: String,
    pub msgs_per_conn: u32,
    pub rcpts: u32,
    pub pipelining: bool,
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub from: String,
    /// One address per recipient.
    pub recipients: Vec<String>,
    pub helo: String,
    pub quiet: bool,
    /// Show the live progress bar (main sets it when stdout is a terminal).
    pub progress: bool,
    pub monitor_containers: Vec<String>,
    #[serde(with = "secs")]
    pub late_tolerance: Duration,
    #[serde(with = "secs")]
    pub drain_timeout: Duration,
    pub preflight: bool,
    /// `--source-ips`, as given; absent from `run.config` when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ips: Option<String>,
    /// The addresses of `--source-ips`, dealt out round-robin.
    #[serde(skip)]
    pub sources: Option<SourceAddrs>,
    /// Runtime threads (0 = one per core).
    pub threads: usize,
    pub tls: TlsSettings,
    /// `--auth`, when given.
    pub auth: Option<AuthSettings>,
    /// `--arrivals`.
    pub arrivals: ArrivalsArg,
    /// `--seed`, or the random one drawn for this run (recorded so it repeats).
    pub seed: u64,
    /// `--warmup`: sends due before this are left out of the figures.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// `--require`, as given; parsed in `gates`.
    pub require: Vec<String>,
    pub abort_on_fail: bool,
    #[serde(skip)]
    pub gates: Vec<report::Gate>,
    /// Capacity mode: `--slo`, parsed.
    #[serde(skip)]
    pub slo_gates: Vec<report::Gate>,
}

/// How every connection authenticates. Serialized into the result without the
/// passwords.
#[derive(Debug, Clone, Serialize)]
pub struct AuthSettings {
    pub mechanism: AuthMechanism,
    /// `--auth-user`, when the run uses one user.
    pub user: Option<String>,
    /// `--auth-file`, when the run rotates over its users.
    pub file: Option<PathBuf>,
    /// How many users the run logs in as.
    pub users: usize,
    #[serde(skip)]
    pub credentials: Vec<Credential>,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// How a plain number given to a duration flag is read, which is also the unit
/// its bounds are shown in.
#[derive(Debug, Clone, Copy)]
enum Plain {
    Seconds,
    /// `--late-tolerance-ms`: milliseconds, as the name says.
    Millis,
}

impl Plain {
    fn number(self, d: Duration) -> f64 {
        match self {
            Plain::Seconds => d.as_secs_f64(),
            Plain::Millis => d.as_secs_f64() * 1000.0,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Plain::Seconds => "s",
            Plain::Millis => "ms",
        }
    }
}

/// A duration flag in the shared grammar of [`units::parse_duration`] (`150ms`,
/// `30s`, `2m`, `1h30m`), checked against `min..=max`. Errors quote the value as
/// given and show the bounds in the unit of a plain number.
fn duration_flag(
    flag: &'static str,
    given: &str,
    plain: Plain,
    (min, max): (Duration, Duration),
) -> Result<Duration, ConfigError> {
    let text = given.trim();
    let is_plain = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let d = match plain {
        Plain::Millis if is_plain => units::parse_duration(text).map(|d| d / 1000),
        _ => units::parse_duration(text),
    }
    .map_err(|e| invalid(flag, e.to_string()))?;
    if d < min || d > max {
        return Err(invalid(
            flag,
            format!(
                "{text} is outside {}..={} {}",
                plain.number(min),
                plain.number(max),
                plain.unit()
            ),
        ));
    }
    Ok(d)
}

fn mailbox(
    flag: &'static str,
    v: &str,
    default_local: &str,
) -> Result<(String, String), ConfigError> {
    let v = v.trim();
    let bad = |why: &str| invalid(flag, format!("{v:?}: {why}"));
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '<' || c == '>') {
        return Err(bad("expected an address or a domain"));
    }
    match v.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok((local.to_string(), domain.to_string()))
        }
        Some(_) => Err(bad("expected local@domain")),
        None => Ok((default_local.to_string(), v.to_string())),
    }
}

/// The `--tls*` flags, checked: the CA file read, every server's TLS name known.
fn tls_settings(a: &Args, servers: &[ServerAddr]) -> Result<TlsSettings, ConfigError> {
    if a.tls == TlsMode::None {
        let stray = [
            ("tls-ca", a.tls_ca.is_some()),
            ("tls-insecure", a.tls_insecure),
            ("tls-sni", a.tls_sni.is_some()),
        ];
        if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
            return Err(invalid(flag, "needs --tls starttls or --tls implicit"));
        }
    }
    let ca_certs = match &a.tls_ca {
        Some(path) => read_ca_file(path).map_err(|e| invalid("tls-ca", e))?,
        None => Vec::new(),
    };
    let server_names = match &a.tls_sni {
        Some(sni) => {
            let name = server_name(sni.trim()).map_err(|e| invalid("tls-sni", e))?;
            vec![name; servers.len()]
        }
        // Only checked when used: a plaintext run may name servers any way.
        None if a.tls != TlsMode::None => servers
            .iter()
            .map(|s| {
                server_name(&s.host).map_err(|e| {
                    invalid("servers", format!("{e}: give the TLS name with --tls-sni"))
                })
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(TlsSettings {
        mode: a.tls,
        ca: a.tls_ca.clone(),
        insecure: a.tls_insecure,
        sni: a.tls_sni.as_ref().map(|s| s.trim().to_string()),
        resume: a.tls_resume == OnOff::On,
        ca_certs,
        server_names,
    })
}

/// The `--auth*` flags, checked: one user with its password, or a file of them.
fn auth_settings(a: &Args) -> Result<Option<AuthSettings>, ConfigError> {
    let Some(mechanism) = a.auth else {
        let stray = [
            ("auth-user", a.auth_user.is_some()),
            ("auth-password", a.auth_password.is_some()),
            ("auth-file", a.auth_file.is_some()),
        ];
        return match stray.iter().find(|(_, given)| *given) {
            Some((flag, _)) => Err(invalid(flag, "needs --auth plain or --auth login")),
            None => Ok(None),
        };
    };
    let credentials = match (&a.auth_user, &a.auth_password, &a.auth_file) {
        (Some(user), Some(password), None) => {
            vec![Credential::new(user, password).map_err(|e| invalid("auth-user", e))?]
        }
        (Some(_), None, None) => {
            return Err(invalid("auth-password", "needed with --auth-user"));
        }
        (None, Some(_), _) => {
            return Err(invalid("auth-password", "needs --auth-user"));
        }
        (None, None, Some(path)) => read_auth_file(path).map_err(|e| invalid("auth-file", e))?,
        (Some(_), _, Some(_)) => {
            return Err(invalid(
                "auth-file",
                "give either --auth-file or --auth-user, not both",
            ));
        }
        (None, None, None) => {
            return Err(invalid(
                "auth",
                "needs credentials: --auth-user and --auth-password, or --auth-file",
            ));
        }
    };
    Ok(Some(AuthSettings {
        mechanism,
        user: a.auth_user.clone(),
        file: a.auth_file.clone(),
        users: credentials.len(),
        credentials,
    }))
}

/// `--stages`/`--start-rate` outside stages mode, and `--arrivals`, `--seed`,
/// `--warmup`: checked against the mode. The seed is drawn here when not given.
fn load_shape(a: &Args, mode: &Mode) -> Result<(ArrivalsArg, u64, Duration), ConfigError> {
    let stages = matches!(mode, Mode::Stages { .. });
    let capacity = matches!(mode, Mode::Capacity { .. });
    if !stages {
        if a.stages.is_some() {
            return Err(invalid("stages", "needs --mode stages"));
        }
        if a.start_rate.is_some() && !capacity {
            return Err(invalid("start-rate", "needs --mode stages or capacity"));
        }
    }
    // Burst has no timetable. A capacity search builds one per step (a sustained
    // run: arrivals apply), and a warmup would leave part of each step out of the
    // verdict, which the step's length already covers.
    let curve = if capacity { None } else { mode.rate_curve() };
    let Some(curve) = curve else {
        if !capacity && a.arrivals != ArrivalsArg::Uniform {
            return Err(invalid("arrivals", "needs --mode sustained or stages"));
        }
        if a.warmup.is_some() {
            return Err(invalid("warmup", "needs --mode sustained or stages"));
        }
        return Ok((
            a.arrivals,
            a.seed.unwrap_or_else(rand::random),
            Duration::ZERO,
        ));
    };
    let warmup = match &a.warmup {
        Some(w) => duration_flag(
            "warmup",
            w,
            Plain::Seconds,
            (Duration::ZERO, DURATION_RANGE.1),
        )?,
        None => Duration::ZERO,
    };
    if warmup.as_secs_f64() >= curve.duration() {
        return Err(invalid(
            "warmup",
            format!(
                "{} is not shorter than the run ({} s): nothing would be measured",
                a.warmup.as_deref().unwrap_or_default().trim(),
                curve.duration()
            ),
        ));
    }
    Ok((a.arrivals, a.seed.unwrap_or_else(rand::random), warmup))
}

/// The flags of `--mode capacity`, checked; the SLO's gates are parsed in
/// [`slo_gates`].
fn capacity_spec(a: &Args) -> Result<CapacitySpec, ConfigError> {
    let c = &a.capacity;
    let slo = c
        .slo
        .as_deref()
        .ok_or_else(|| {
            invalid(
                "slo",
                "needed with --mode capacity ('p99<=250ms,success_rate>=99.9')",
            )
        })?
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect::<Vec<_>>();
    if slo.is_empty() {
        return Err(invalid(
            "slo",
            "no gate given ('p99<=250ms,success_rate>=99.9')",
        ));
    }
    let positive = |flag: &'static str, rate: f64| {
        if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE {
            Ok(rate)
        } else {
            Err(invalid(flag, format!("{rate} must be in (0, {MAX_RATE}]")))
        }
    };
    let start_rate = positive(
        "start-rate",
        a.start_rate.unwrap_or(DEFAULT_CAPACITY_START_RATE),
    )?;
    let max_rate = positive("max-rate", c.max_rate.unwrap_or(DEFAULT_CAPACITY_MAX_RATE))?;
    if max_rate < start_rate {
        return Err(invalid(
            "max-rate",
            format!("{max_rate} is below --start-rate {start_rate}"),
        ));
    }
    let step = duration_flag(
        "step-duration",
        c.step_duration.as_deref().unwrap_or(DEFAULT_STEP_DURATION),
        Plain::Seconds,
        DURATION_RANGE,
    )?;
    if (start_rate * step.as_secs_f64()).round() < 1.0 {
        return Err(invalid(
            "step-duration",
            "--start-rate × --step-duration is less than one message",
        ));
    }
    let cooldown = duration_flag(
        "cooldown",
        c.cooldown.as_deref().unwrap_or(DEFAULT_COOLDOWN),
        Plain::Seconds,
        COOLDOWN_RANGE,
    )?;
    Ok(CapacitySpec {
        slo,
        start_rate,
        max_rate,
        step_duration: step.as_secs_f64(),
        cooldown: cooldown.as_secs_f64(),
    })
}

/// `--slo`'s gates in capacity mode; outside it, its flags are refused, and so is
/// `--require` inside it (a search is judged step by step, by `--slo`).
fn slo_gates(a: &Args, mode: &Mode) -> Result<Vec<report::Gate>, ConfigError> {
    let Mode::Capacity { search, .. } = mode else {
        let c = &a.capacity;
        let given = [
            ("slo", c.slo.is_some()),
            ("max-rate", c.max_rate.is_some()),
            ("step-duration", c.step_duration.is_some()),
            ("cooldown", c.cooldown.is_some()),
        ];
        return match given.iter().find(|(_, g)| *g) {
            Some((flag, _)) => Err(invalid(flag, "needs --mode capacity")),
            None => Ok(Vec::new()),
        };
    };
    if !a.require.is_empty() {
        return Err(invalid(
            "require",
            "not with --mode capacity: each step is judged by --slo",
        ));
    }
    search
        .slo
        .iter()
        .map(|g| report::Gate::parse(g).map_err(|e| invalid("slo", e.to_string())))
        .collect()
}

impl Config {
    /// Checks the flags. The error names the flag.
    pub fn from_args(a: Args) -> Result<Config, ConfigError> {
        let servers_given: Vec<String> = a
            .servers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers_given.is_empty() {
            return Err(invalid("servers", "no server given"));
        }
        if a.port == 0 {
            return Err(invalid("port", "must be 1..=65535"));
        }
        let servers = servers_given
            .iter()
            .map(|s| parse_server(s, a.port).map_err(|e| invalid("servers", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let n = servers.len() as u32;
        let workers = |default: u32| -> Result<u32, ConfigError> {
            let w = a.workers.unwrap_or(default.max(n));
            if w == 0 || w > MAX_WORKERS {
                return Err(invalid("workers", format!("must be 1..={MAX_WORKERS}")));
            }
            if w < n {
                return Err(invalid(
                    "workers",
                    format!("{w} is fewer than the {n} servers; each server needs a session"),
                ));
            }
            Ok(w)
        };
        let mode = match a.mode {
            ModeArg::Burst => {
                if a.messages == 0 {
                    return Err(invalid("messages", "must be at least 1"));
                }
                Mode::Burst {
                    messages: a.messages,
                    workers: workers(DEFAULT_BURST_WORKERS)?,
                }
            }
            ModeArg::Stages => {
                let text = a.stages.as_deref().ok_or_else(|| {
                    invalid("stages", "needed with --mode stages (30s:100,1m:100)")
                })?;
                let stages = parse_stages(text).map_err(|e| invalid("stages", e))?;
                let start_rate = check_rate(a.start_rate.unwrap_or(0.0))
                    .map_err(|e| invalid("start-rate", e))?;
                let mode = Mode::Stages {
                    stages,
                    start_rate,
                    workers: workers(DEFAULT_SUSTAINED_WORKERS)?,
                };
                if mode.rate_curve().is_none_or(|c| c.integral().round() < 1.0) {
                    return Err(invalid(
                        "stages",
                        "the stages add up to less than one message",
                    ));
                }
                mode
            }
            ModeArg::Capacity => Mode::Capacity {
                search: capacity_spec(&a)?,
                workers: workers(DEFAULT_SUSTAINED_WORKERS)?,
            },
            ModeArg::Sustained => {
                if !a.rate.is_finite() || a.rate <= 0.0 || a.rate > MAX_RATE {
                    return Err(invalid(
                        "rate",
                        format!("{} must be in (0, 1000000]", a.rate),
                    ));
                }
                let duration =
                    duration_flag("duration", &a.duration, Plain::Seconds, DURATION_RANGE)?;
                if (a.rate * duration.as_secs_f64()).round() < 1.0 {
                    return Err(invalid(
                        "duration",
                        "rate × duration is less than one message",
                    ));
                }
                Mode::Sustained {
                    rate: a.rate,
                    duration: duration.as_secs_f64(),
                    workers: workers(DEFAULT_SUSTAINED_WORKERS)?,
                }
            }
        };
        let (arrivals, seed, warmup) = load_shape(&a, &mode)?;
        let slo_gates = slo_gates(&a, &mode)?;
        let size = parse_size_spec(&a.size).map_err(|e| invalid("size", e))?;
        let tls = tls_settings(&a, &servers)?;
        let auth = auth_settings(&a)?;
        if a.msgs_per_conn == 0 {
            return Err(invalid("msgs-per-conn", "must be at least 1"));
        }
        if a.rcpts == 0 || a.rcpts > MAX_RCPTS {
            return Err(invalid("rcpts", format!("must be 1..={MAX_RCPTS}")));
        }
        let timeout = duration_flag("timeout", &a.timeout, Plain::Seconds, TIMEOUT_RANGE)?;
        let late_tolerance = duration_flag(
            "late-tolerance-ms",
            &a.late_tolerance_ms,
            Plain::Millis,
            LATE_TOLERANCE_RANGE,
        )?;
        if a.threads > 1024 {
            return Err(invalid("threads", "must be 0..=1024"));
        }
        let drain_timeout = duration_flag(
            "drain-timeout",
            &a.drain_timeout,
            Plain::Seconds,
            DRAIN_RANGE,
        )?;
        let (from_local, from_domain) = mailbox("from", &a.from, "loadgen")?;
        let (to_local, to_domain) = mailbox("to", &a.to, "user")?;
        let recipients = if a.rcpts == 1 {
            vec![format!("{to_local}@{to_domain}")]
        } else {
            (1..=a.rcpts)
                .map(|i| format!("{to_local}{i}@{to_domain}"))
                .collect()
        };
        let helo = a.helo.trim().to_string();
        if helo.is_empty() || helo.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "helo",
                "must be one word (a domain or an address literal)",
            ));
        }
        let test_type = a
            .test_type
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|| mode.name().to_string());
        if test_type.is_empty()
            || !test_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "test-type",
                "use letters, digits, '-', '_' or '.' (it becomes part of a file name)",
            ));
        }
        let gates = a
            .require
            .iter()
            .map(|g| report::Gate::parse(g).map_err(|e| invalid("require", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let sources = a
            .source_ips
            .as_deref()
            .map(|spec| {
                let sources = SourceAddrs::parse(spec)?;
                sources.check_local()?;
                Ok(sources)
            })
            .transpose()
            .map_err(|e: crate::source_addrs::SourceAddrsError| {
                invalid("source-ips", e.to_string())
            })?;
        let monitor_containers = a
            .monitor_containers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Config {
            servers_given,
            servers,
            port: a.port,
            mode,
            size,
            output: a.output,
            test_type,
            msgs_per_conn: a.msgs_per_conn,
            rcpts: a.rcpts,
            pipelining: a.pipelining,
            timeout,
            from: format!("{from_local}@{from_domain}"),
            recipients,
            helo,
            quiet: a.quiet,
            progress: false,
            monitor_containers,
            late_tolerance,
            drain_timeout,
            preflight: !a.no_preflight,
            source_ips: a.source_ips.map(|s| s.trim().to_string()),
            sources,
            threads: a.threads,
            tls,
            auth,
            arrivals,
            seed,
            warmup,
            require: a.require,
            abort_on_fail: a.abort_on_fail,
            gates,
            slo_gates,
        })
    }

    /// The timetable's arrivals: uniform, or Poisson with the run's seed.
    pub fn arrivals(&self) -> Arrivals {
        match self.arrivals {
            ArrivalsArg::Uniform => Arrivals::Uniform,
            ArrivalsArg::Poisson => Arrivals::Poisson { seed: self.seed },
        }
    }

    /// Parses and checks a command line (first item: the program name).
    pub fn from_cli<I, T>(args: I) -> anyhow::Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let args = Args::try_parse_from(args)?;
        Ok(Config::from_args(args)?)
    }

    /// The domain of the envelope sender, used in Message-IDs.
    pub fn from_domain(&self) -> &str {
        self.from
            .rsplit_once('@')
            .map_or("stampede.test", |(_, d)| d)
    }

    /// `results/<YYYYMMDD-HHMMSS>-<test_type>.json`, in UTC.
    pub fn default_output(&self, start: chrono::DateTime<chrono::Utc>) -> PathBuf {
        PathBuf::from("results").join(format!(
            "{}-{}.json",
            start.format("%Y%m%d-%H%M%S"),
            self.test_type
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_and_without_port() {
        assert_eq!(
            parse_server("a", 2525).unwrap(),
            ServerAddr {
                host: "a".into(),
                port: 2525
            }
        );
        assert_eq!(parse_server("a:25", 2525).unwrap().port, 25);
        assert_eq!(parse_server("[::1]:26", 2525).unwrap().host, "::1");
        assert_eq!(parse_server("::1", 2525).unwrap().port, 2525);
        assert!(parse_server("a:0", 2525).is_err());
        assert!(parse_server("a:x", 2525).is_err());
        assert_eq!(parse_server("[::1]:26", 1).unwrap().to_string(), "[::1]:26");
    }

    #[test]
    fn sizes_parse_named_exact_and_units() {
        assert_eq!(parse_size("small").unwrap(), 1024);
        assert_eq!(parse_size("XLarge").unwrap(), 1 << 20);
        assert_eq!(parse_size("2500").unwrap(), 2500);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10kb").unwrap(), 10_000);
        assert_eq!(parse_size("1.5MiB").unwrap(), 1_572_864);
        assert!(parse_size("10").is_err());
        assert!(parse_size("huge").is_err());
    }

    #[test]
    fn mixes_parse_with_weights() {
        let m = parse_size_spec("small=70,medium=25,large=5").unwrap();
        assert_eq!(m.choices.len(), 3);
        assert_eq!(m.choices[2].weight, 5);
        assert_eq!(m.mean_bytes(), (1024 * 70 + 10240 * 25 + 102400 * 5) / 100);
        assert!(parse_size_spec("small=x").is_err());
        assert!(parse_size_spec("small=0").is_err());
    }

    fn cli(extra: &[&str]) -> Result<Config, String> {
        let mut v = vec!["loadgen", "--servers", "127.0.0.1"];
        v.extend_from_slice(extra);
        Config::from_cli(v).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert!(
            cli(&["--messages", "0"])
                .unwrap_err()
                .contains("--messages")
        );
        assert!(cli(&["--size", "huge"]).unwrap_err().contains("--size"));
        assert!(
            cli(&["--mode", "sustained", "--rate", "0"])
                .unwrap_err()
                .contains("--rate")
        );
        assert!(cli(&["--workers", "0"]).unwrap_err().contains("--workers"));
        assert!(cli(&["--to", "a@b@c"]).unwrap_err().contains("--to"));
        assert!(
            cli(&["--test-type", "a/b"])
                .unwrap_err()
                .contains("--test-type")
        );
    }

    #[test]
    fn durations_take_units_or_plain_seconds() {
        let c = cli(&["--timeout", "150ms", "--drain-timeout", "2m"]).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(150));
        assert_eq!(c.drain_timeout, Duration::from_secs(120));
        let c = cli(&[
            "--mode",
            "sustained",
            "--duration",
            "1h30m",
            "--timeout",
            "30",
        ])
        .unwrap();
        assert_eq!(
            c.mode,
            Mode::Sustained {
                rate: 50.0,
                duration: 5400.0,
                workers: DEFAULT_SUSTAINED_WORKERS
            }
        );
        assert_eq!(c.timeout, Duration::from_secs(30));
        let c = cli(&["--mode", "sustained", "--duration", "1.5"]).unwrap();
        assert!(matches!(c.mode, Mode::Sustained { duration, .. } if duration == 1.5));
        // A plain number is milliseconds, as the flag's name says; a unit is honoured.
        let tolerance = |v| cli(&["--late-tolerance-ms", v]).unwrap().late_tolerance;
        assert_eq!(tolerance("25"), Duration::from_millis(25));
        assert_eq!(tolerance("0.5"), Duration::from_micros(500));
        assert_eq!(tolerance("1s"), Duration::from_secs(1));
        let err = cli(&["--timeout", "soon"]).unwrap_err();
        assert!(
            err.contains("--timeout") && err.contains("\"soon\" is not a duration"),
            "{err}"
        );
        let err = cli(&["--timeout", "2h"]).unwrap_err();
        assert_eq!(err, "--timeout: 2h is outside 0.001..=3600 s");
        let err = cli(&["--late-tolerance-ms", "2m"]).unwrap_err();
        assert_eq!(err, "--late-tolerance-ms: 2m is outside 0..=60000 ms");
    }

    #[test]
    fn sizes_use_the_shared_grammar_and_refuse_a_bare_k() {
        assert_eq!(parse_size("10KB").unwrap(), 10_000);
        assert_eq!(parse_size("10KiB").unwrap(), 10_240);
        let err = cli(&["--size", "10k"]).unwrap_err();
        assert!(
            err.contains("--size")
                && err.contains("10KiB (10240 bytes)")
                && err.contains("10KB (10000 bytes)"),
            "{err}"
        );
        let err = cli(&["--size", "small=1,2m=1"]).unwrap_err();
        assert!(err.contains("--size") && err.contains("ambiguous"), "{err}");
    }

    #[test]
    fn tls_and_auth_flags_are_checked_and_name_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, "alice:one\nbob\n").unwrap();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let rows: Vec<(Vec<String>, &str)> = vec![
            (vec!["--tls-insecure".into()], "--tls-insecure: needs --tls"),
            (
                vec![
                    "--tls".into(),
                    "starttls".into(),
                    "--tls-ca".into(),
                    path(&empty),
                ],
                "--tls-ca: ",
            ),
            (
                vec![
                    "--tls".into(),
                    "implicit".into(),
                    "--tls-sni".into(),
                    "a b".into(),
                ],
                "--tls-sni: \"a b\" is neither",
            ),
            (
                vec!["--auth".into(), "plain".into()],
                "--auth: needs credentials",
            ),
            (
                vec![
                    "--auth".into(),
                    "login".into(),
                    "--auth-user".into(),
                    "u".into(),
                ],
                "--auth-password: needed with --auth-user",
            ),
            (
                vec!["--auth-user".into(), "u".into()],
                "--auth-user: needs --auth",
            ),
            (
                vec![
                    "--auth".into(),
                    "plain".into(),
                    "--auth-file".into(),
                    path(&users),
                ],
                "users: line 2: expected user:password",
            ),
        ];
        for (flags, want) in rows {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let err = cli(&flags).unwrap_err();
            assert!(err.contains(want), "{flags:?}: {err}");
        }
        let err = cli(&["--tls", "starttls", "--tls-insecure", "--tls-ca", "x"]).unwrap_err();
        assert!(
            err.contains("'--tls-insecure' cannot be used with"),
            "{err}"
        );
        let err = cli(&["--tls", "starttls", "--tls-ca", &path(&empty)]).unwrap_err();
        assert!(err.ends_with("empty.pem holds no PEM certificate"), "{err}");
    }

    #[test]
    fn tls_names_default_to_the_server_and_the_password_is_not_echoed() {
        let c = cli(&[
            "--tls",
            "starttls",
            "--auth",
            "plain",
            "--auth-user",
            "alice",
            "--auth-password",
            "hunter2",
        ])
        .unwrap();
        assert_eq!(c.tls.server_names.len(), 1);
        assert!(c.tls.resume);
        let echo = serde_json::to_string(&c).unwrap();
        assert!(!echo.contains("hunter2"), "{echo}");
        assert!(echo.contains("\"mechanism\":\"plain\""), "{echo}");
        assert!(echo.contains("\"mode\":\"starttls\""), "{echo}");
        // A plaintext run does not care whether a host could be a TLS name.
        assert!(cli(&["--tls-resume", "off"]).is_ok());
    }

    #[test]
    fn stages_parse_in_the_k6_grammar_with_unit_durations() {
        let c = cli(&[
            "--mode",
            "stages",
            "--stages",
            "30s:100, 2m:500,0s:2000,1m30s:0",
            "--start-rate",
            "10",
        ])
        .unwrap();
        let want = [(30.0, 100.0), (120.0, 500.0), (0.0, 2000.0), (90.0, 0.0)];
        let Mode::Stages {
            stages, start_rate, ..
        } = &c.mode
        else {
            panic!("{:?}", c.mode)
        };
        assert_eq!(*start_rate, 10.0);
        let got: Vec<_> = stages.iter().map(|s| (s.duration_s, s.target)).collect();
        assert_eq!(got, want);
        assert_eq!(c.test_type, "stages");
        assert_eq!(c.mode.workers(), DEFAULT_SUSTAINED_WORKERS);
        let curve = c.mode.rate_curve().unwrap();
        assert_eq!(curve.duration(), 240.0);
        assert_eq!(curve.integral(), 1650.0 + 36000.0 + 90000.0);
    }

    #[test]
    fn load_shape_flags_are_checked_against_the_mode() {
        let stages = |extra: &[&str]| {
            let mut v = vec!["--mode", "stages"];
            v.extend_from_slice(extra);
            cli(&v)
        };
        let rows: [(Result<Config, String>, &str); 10] = [
            (stages(&[]), "--stages: needed with --mode stages"),
            (
                stages(&["--stages", "30s"]),
                "--stages: \"30s\": a stage is DURATION:TARGET",
            ),
            (
                stages(&["--stages", "soon:5"]),
                "--stages: \"soon:5\": \"soon\" is not a duration",
            ),
            (
                stages(&["--stages", "1s:-5"]),
                "--stages: \"1s:-5\": rate -5 is outside",
            ),
            (
                stages(&["--stages", "1s:0,0s:100"]),
                "--stages: the stages add up to less than one message",
            ),
            (
                stages(&["--stages", "1s:10", "--start-rate", "2e6"]),
                "--start-rate: rate 2000000 is outside",
            ),
            (
                stages(&["--stages", "1s:10", "--warmup", "1s"]),
                "--warmup: 1s is not shorter than the run",
            ),
            (cli(&["--stages", "1s:10"]), "--stages: needs --mode stages"),
            (
                cli(&["--arrivals", "poisson"]),
                "--arrivals: needs --mode sustained or stages",
            ),
            (
                cli(&["--warmup", "1s"]),
                "--warmup: needs --mode sustained or stages",
            ),
        ];
        for (got, want) in rows {
            let err = got.err().unwrap_or_default();
            assert!(err.contains(want), "want {want:?}, got {err:?}");
        }
        let c = cli(&[
            "--mode",
            "sustained",
            "--arrivals",
            "poisson",
            "--seed",
            "42",
            "--warmup",
            "10s",
        ])
        .unwrap();
        assert_eq!(c.arrivals(), Arrivals::Poisson { seed: 42 });
        assert_eq!(c.warmup, Duration::from_secs(10));
        let echo = serde_json::to_value(&c).unwrap();
        assert_eq!(echo["seed"], 42);
        assert_eq!(echo["arrivals"], "poisson");
        assert_eq!(echo["warmup"], 10.0);
        // Without --seed each run draws one, recorded in the config.
        let (a, b) = (cli(&[]).unwrap().seed, cli(&[]).unwrap().seed);
        assert_ne!(a, b);
    }

    #[test]
    fn defaults_follow_the_mode() {
        let c = cli(&[]).unwrap();
        assert_eq!(
            c.mode,
            Mode::Burst {
                messages: 1000,
                workers: 10
            }
        );
        assert_eq!(c.test_type, "burst");
        let c = cli(&["--mode", "sustained", "--rcpts", "3", "--to", "x@y"]).unwrap();
        assert_eq!(c.mode.workers(), DEFAULT_SUSTAINED_WORKERS);
        assert_eq!(c.recipients, ["x1@y", "x2@y", "x3@y"]);
        assert_eq!(c.from, "loadgen@stampede.test");
    }
}
