//! Server configuration: defaults, TOML file, environment and flags.
//!
//! Every setting has one key name (`max_connections`, `idle_timeout`, ...). The same
//! name is used in the TOML file (inside its section), as a flag (`--max-connections`)
//! and as an environment variable (`SMTP_MAX_CONNECTIONS`). Precedence is
//! flag > env > file > default; the binary merges flag and env (clap does that) and
//! hands the result to [`Config::load`] as string overrides, so all three sources go
//! through the same value parsers and every error names the key it is about.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What happens to a message after the final `250`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Count and drop (the default for stress tests).
    Discard,
    /// Keep the last `memory_store_capacity` messages in memory (for tests).
    Memory,
    /// Write each message to `spool_dir`, fsynced before the `250`.
    Spool,
}

impl StoreKind {
    fn parse(value: &str) -> Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "discard" => Ok(Self::Discard),
            "memory" => Ok(Self::Memory),
            "spool" => Ok(Self::Spool),
            _ => Err("expected one of discard, memory, spool".into()),
        }
    }
}

/// The complete, validated server configuration.
///
/// `Config::default()` is the production default set from the design document. Fields
/// are public so that tests and embedders can adjust them directly; [`crate::start`]
/// validates the result again.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    // [server]
    /// Address the SMTP listener binds to.
    pub bind: IpAddr,
    /// SMTP port; 0 picks a free port (see `RunningServer::smtp_addr`).
    pub port: u16,
    /// Length of the kernel's queue of connections not yet accepted (capped by
    /// `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Admin HTTP listener: `None` disables it, `Some(0)` picks a free port.
    pub admin_port: Option<u16>,
    /// Address the admin listener binds to; `None` means the same as `bind`.
    pub admin_bind: Option<IpAddr>,
    /// Where the server writes the admin address it bound when `admin_port` is
    /// `auto`, for `smtp-server healthcheck` to read; removed at a clean stop. `None`
    /// (an empty value) writes nothing.
    pub admin_addr_file: Option<PathBuf>,
    /// The host name in the banner and the EHLO reply.
    pub domain: String,
    pub store: StoreKind,
    /// Directory for `store = spool` (created when missing).
    pub spool_dir: PathBuf,
    /// How many messages `store = memory` keeps (the oldest are dropped first).
    pub memory_store_capacity: usize,
    /// How long a graceful shutdown lets running sessions finish.
    pub shutdown_grace: Duration,

    // [resources]
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The token-bucket window for the connection-rate limits.
    pub rate_limit_window: Duration,
    /// New connections allowed per window, all peers together.
    pub max_requests_per_window: u32,
    /// New connections allowed per window from one IP address (default: 1/10 of the
    /// global figure, at least 1).
    pub max_requests_per_window_per_ip: u32,
    /// Time allowed from connect to the client's EHLO/HELO.
    pub connection_timeout: Duration,
    /// Time allowed between two reads once the client has said hello.
    pub idle_timeout: Duration,
    /// Time allowed for the whole session.
    pub session_timeout: Duration,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Bytes one session may hold (input buffer plus a message being received).
    pub per_connection_memory_limit: u64,

    // [memory]
    /// The process memory budget: accounted session bytes or RSS, whichever is larger.
    pub max_memory_usage: u64,
    pub memory_warning_threshold: f64,
    pub memory_critical_threshold: f64,
    /// How often the process RSS is sampled.
    pub monitoring_interval: Duration,
}

const MIB: u64 = 1024 * 1024;

/// A fixed place that the server and `smtp-server healthcheck` agree on without being
/// told, in the same host or container.
pub const DEFAULT_ADMIN_ADDR_FILE: &str = "/tmp/smtp-server-admin.addr";

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 2525,
            listen_backlog: 4096,
            admin_port: Some(8080),
            admin_bind: None,
            admin_addr_file: Some(PathBuf::from(DEFAULT_ADMIN_ADDR_FILE)),
            domain: "localhost".into(),
            store: StoreKind::Discard,
            spool_dir: PathBuf::from("spool"),
            memory_store_capacity: 1000,
            shutdown_grace: Duration::from_secs(8),
            max_connections: 1000,
            max_connections_per_ip: 50,
            rate_limit_window: Duration::from_secs(60),
            max_requests_per_window: 1000,
            max_requests_per_window_per_ip: 100,
            connection_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            session_timeout: Duration::from_secs(300),
            max_message_size: 10 * MIB,
            max_recipients: 100,
            per_connection_memory_limit: 50 * MIB,
            max_memory_usage: 512 * MIB,
            memory_warning_threshold: 0.75,
            memory_critical_threshold: 0.90,
            monitoring_interval: Duration::from_secs(1),
        }
    }
}

/// A configuration problem, always naming the key (or file) it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for `{key}`: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("unknown configuration key `{key}` in {file}")]
    UnknownKey { key: String, file: String },
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config file {file} is not valid TOML: {message}")]
    Toml { file: String, message: String },
    #[error("invalid configuration: {0}")]
    Inconsistent(String),
}

/// Every key, with the TOML section it belongs to. The flag is `--<key with dashes>`
/// and the environment variable `SMTP_<KEY IN UPPER CASE>`.
pub const KEYS: &[(&str, &str)] = &[
    ("server", "bind"),
    ("server", "port"),
    ("server", "listen_backlog"),
    ("server", "admin_port"),
    ("server", "admin_bind"),
    ("server", "admin_addr_file"),
    ("server", "domain"),
    ("server", "store"),
    ("server", "spool_dir"),
    ("server", "memory_store_capacity"),
    ("server", "shutdown_grace"),
    ("resources", "max_connections"),
    ("resources", "max_connections_per_ip"),
    ("resources", "rate_limit_window"),
    ("resources", "max_requests_per_window"),
    ("resources", "max_requests_per_window_per_ip"),
    ("resources", "connection_timeout"),
    ("resources", "idle_timeout"),
    ("resources", "session_timeout"),
    ("resources", "max_message_size"),
    ("resources", "max_recipients"),
    ("resources", "per_connection_memory_limit"),
    ("memory", "max_memory_usage"),
    ("memory", "memory_warning_threshold"),
    ("memory", "memory_critical_threshold"),
    ("memory", "monitoring_interval"),
];

impl Config {
    /// Production defaults, except: listens on 127.0.0.1 with a free port, no admin
    /// listener, `store = memory`, and connection-rate limits and the per-IP
    /// connection limit out of the way (every test client shares one IP). For
    /// in-process tests; read the port from `RunningServer::smtp_addr`.
    pub fn for_local_testing() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            admin_port: None,
            // Parallel test servers must not share (and clobber) one address file.
            admin_addr_file: None,
            store: StoreKind::Memory,
            max_connections_per_ip: 1000,
            max_requests_per_window: u32::MAX,
            max_requests_per_window_per_ip: u32::MAX,
            rate_limit_window: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            ..Self::default()
        }
    }

    /// Builds a configuration from the defaults, an optional TOML file, and overrides
    /// (key → raw string, already merged flag-over-env by the caller). Overrides win
    /// over the file, the file over the defaults.
    pub fn load(
        file: Option<&Path>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut raw: BTreeMap<String, String> = match file {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        for (key, value) in overrides {
            if !KEYS.iter().any(|(_, k)| k == key) {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    file: "overrides".into(),
                });
            }
            raw.insert(key.clone(), value.clone());
        }
        let mut config = Config::default();
        // The per-IP rate defaults to a tenth of the global one, so it must follow a
        // changed global figure unless it was set itself.
        let per_ip_set = raw.contains_key("max_requests_per_window_per_ip");
        for (key, value) in &raw {
            config.set(key, value)?;
        }
        if !per_ip_set {
            config.max_requests_per_window_per_ip = (config.max_requests_per_window / 10).max(1);
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets one key from its textual form (as in a flag or environment variable).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let v = value.trim();
        match key {
            "bind" => {
                self.bind = v
                    .parse()
                    .map_err(|_| bad("expected an IP address".into()))?
            }
            "port" => {
                self.port = v
                    .parse()
                    .map_err(|_| bad("expected a port 0-65535".into()))?
            }
            "listen_backlog" => self.listen_backlog = parse_count_u32(v).map_err(bad)?,
            "admin_port" => {
                self.admin_port = if v.eq_ignore_ascii_case("auto") {
                    Some(0)
                } else {
                    match v.parse::<u16>() {
                        Ok(0) => None,
                        Ok(port) => Some(port),
                        Err(_) => {
                            return Err(bad(
                                "expected a port 1-65535, 0 (disabled) or `auto` (free port)"
                                    .into(),
                            ));
                        }
                    }
                }
            }
            "admin_bind" => {
                self.admin_bind = Some(
                    v.parse()
                        .map_err(|_| bad("expected an IP address".into()))?,
                )
            }
            "admin_addr_file" => {
                self.admin_addr_file = (!v.is_empty()).then(|| PathBuf::from(v));
            }
            "domain" => {
                if v.is_empty()
                    || v.bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(bad("expected a host name without spaces".into()));
                }
                self.domain = v.to_string();
            }
            "store" => self.store = StoreKind::parse(v).map_err(bad)?,
            "spool_dir" => {
                if v.is_empty() {
                    return Err(bad("expected a directory path".into()));
                }
                self.spool_dir = PathBuf::from(v);
            }
            "memory_store_capacity" => self.memory_store_capacity = parse_count(v).map_err(bad)?,
            "shutdown_grace" => self.shutdown_grace = parse_duration(v).map_err(bad)?,
            "max_connections" => self.max_connections = parse_count(v).map_err(bad)?,
            "max_connections_per_ip" => {
                self.max_connections_per_ip = parse_count(v).map_err(bad)?
            }
            "rate_limit_window" => self.rate_limit_window = parse_duration(v).map_err(bad)?,
            "max_requests_per_window" => {
                self.max_requests_per_window = parse_count_u32(v).map_err(bad)?
            }
            "max_requests_per_window_per_ip" => {
                self.max_requests_per_window_per_ip = parse_count_u32(v).map_err(bad)?
            }
            "connection_timeout" => self.connection_timeout = parse_duration(v).map_err(bad)?,
            "idle_timeout" => self.idle_timeout = parse_duration(v).map_err(bad)?,
            "session_timeout" => self.session_timeout = parse_duration(v).map_err(bad)?,
            "max_message_size" => self.max_message_size = parse_size(v).map_err(bad)?,
            "max_recipients" => self.max_recipients = parse_count(v).map_err(bad)?,
            "per_connection_memory_limit" => {
                self.per_connection_memory_limit = parse_size(v).map_err(bad)?
            }
            "max_memory_usage" => self.max_memory_usage = parse_size(v).map_err(bad)?,
            "memory_warning_threshold" => {
                self.memory_warning_threshold = parse_ratio(v).map_err(bad)?
            }
            "memory_critical_threshold" => {
                self.memory_critical_threshold = parse_ratio(v).map_err(bad)?
            }
            "monitoring_interval" => self.monitoring_interval = parse_duration(v).map_err(bad)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                    file: "settings".into(),
                });
            }
        }
        Ok(())
    }

    /// Checks the relations between keys (each key's own range is checked by `set`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, reason: &str| ConfigError::InvalidValue {
            key: key.into(),
            value,
            reason: reason.into(),
        };
        if !(self.memory_warning_threshold > 0.0 && self.memory_warning_threshold <= 1.0) {
            return Err(bad(
                "memory_warning_threshold",
                self.memory_warning_threshold.to_string(),
                "expected a fraction in (0, 1]",
            ));
        }
        if !(self.memory_critical_threshold > 0.0 && self.memory_critical_threshold <= 1.0) {
            return Err(bad(
                "memory_critical_threshold",
                self.memory_critical_threshold.to_string(),
                "expected a fraction in (0, 1]",
            ));
        }
        if self.memory_warning_threshold > self.memory_critical_threshold {
            return Err(bad(
                "memory_warning_threshold",
                self.memory_warning_threshold.to_string(),
                "must not be above memory_critical_threshold",
            ));
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_recipients", self.max_recipients),
            ("memory_store_capacity", self.memory_store_capacity),
        ] {
            if value == 0 {
                return Err(bad(key, "0".into(), "must be at least 1"));
            }
        }
        for (key, value) in [
            ("listen_backlog", self.listen_backlog),
            ("max_requests_per_window", self.max_requests_per_window),
            (
                "max_requests_per_window_per_ip",
                self.max_requests_per_window_per_ip,
            ),
        ] {
            if value == 0 {
                return Err(bad(key, "0".into(), "must be at least 1"));
            }
        }
        for (key, value) in [
            ("rate_limit_window", self.rate_limit_window),
            ("connection_timeout", self.connection_timeout),
            ("idle_timeout", self.idle_timeout),
            ("session_timeout", self.session_timeout),
            ("monitoring_interval", self.monitoring_interval),
        ] {
            if value.is_zero() {
                return Err(bad(key, "0".into(), "must be longer than zero"));
            }
        }
        for (key, value) in [
            ("max_message_size", self.max_message_size),
            (
                "per_connection_memory_limit",
                self.per_connection_memory_limit,
            ),
            ("max_memory_usage", self.max_memory_usage),
        ] {
            if value == 0 {
                return Err(bad(key, "0".into(), "must be at least 1 byte"));
            }
        }
        Ok(())
    }

    /// The SMTP listen address.
    pub fn smtp_listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// The admin listen address, or `None` when the admin listener is disabled.
    pub fn admin_listen_addr(&self) -> Option<SocketAddr> {
        self.admin_port
            .map(|port| SocketAddr::new(self.admin_bind.unwrap_or(self.bind), port))
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            file: file.clone(),
            message: e.message().to_string(),
        })?;
    let mut raw = BTreeMap::new();
    for (section, body) in table {
        let Some(body) = body.as_table() else {
            return Err(ConfigError::UnknownKey {
                key: section,
                file: file.clone(),
            });
        };
        for (key, value) in body {
            if !KEYS.iter().any(|(s, k)| *s == section && k == key) {
                return Err(ConfigError::UnknownKey {
                    key: format!("{section}.{key}"),
                    file: file.clone(),
                });
            }
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::InvalidValue {
                        key: format!("{section}.{key}"),
                        value: other.to_string(),
                        reason: "expected a string or a number".into(),
                    });
                }
            };
            raw.insert(key.clone(), text);
        }
    }
    Ok(raw)
}

fn parse_count(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .map_err(|_| "expected a whole number".to_string())
}

fn parse_count_u32(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .map_err(|_| "expected a whole number up to 4294967295".to_string())
}

fn parse_ratio(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err("expected a fraction in (0, 1], e.g. 0.9".into()),
    }
}

/// Parses a duration: `150ms`, `30s`, `2m`, `1h`, or a plain number of seconds
/// (`30`, `0.5`).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration such as 150ms, 30s, 2m, 1h or plain seconds";
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().map_err(|_| HINT.to_string())?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(HINT.into()),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|_| HINT.to_string())
}

/// Parses a byte size: `1048576`, `512KiB`, `10MiB`, `1GiB`, or decimal `10MB`, `1kB`.
pub fn parse_size(v: &str) -> Result<u64, String> {
    const HINT: &str = "expected a size such as 10485760, 64KiB, 10MiB, 1GiB or 10MB";
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: u64 = number.parse().map_err(|_| HINT.to_string())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => MIB,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * MIB,
        _ => return Err(HINT.into()),
    };
    number.checked_mul(scale).ok_or_else(|| HINT.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("150ms").unwrap(), Duration::from_millis(150));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("10MiB").unwrap(), 10 * MIB);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("2500").unwrap(), 2500);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("ten").is_err());
    }

    #[test]
    fn bad_value_error_names_the_key() {
        let mut o = BTreeMap::new();
        o.insert("idle_timeout".to_string(), "forever".to_string());
        let err = Config::load(None, &o).unwrap_err().to_string();
        assert!(err.contains("idle_timeout"), "{err}");
    }

    #[test]
    fn per_ip_rate_follows_global_rate_unless_set() {
        let mut o = BTreeMap::new();
        o.insert("max_requests_per_window".to_string(), "200".to_string());
        assert_eq!(
            Config::load(None, &o)
                .unwrap()
                .max_requests_per_window_per_ip,
            20
        );
        o.insert(
            "max_requests_per_window_per_ip".to_string(),
            "7".to_string(),
        );
        assert_eq!(
            Config::load(None, &o)
                .unwrap()
                .max_requests_per_window_per_ip,
            7
        );
    }

    #[test]
    fn example_config_documents_every_key_with_its_default() {
        let example = include_str!("../smtp-server.example.toml");
        // Uncomment "# key = value" lines: the result must load and equal the defaults
        // (except admin_bind, whose example value differs from its default).
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| KEYS.iter().any(|(_, key)| *key == k)) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (section, key) in KEYS {
            assert!(
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} = "))),
                "{section}.{key} missing from the example"
            );
        }
        let dir = std::env::temp_dir().join(format!("smtp-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("example.toml");
        std::fs::write(&path, uncommented).unwrap();
        let loaded = Config::load(Some(&path), &BTreeMap::new()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(Config {
                admin_bind: None,
                ..loaded
            })
            .unwrap(),
            serde_json::to_value(defaults).unwrap()
        );
    }

    #[test]
    fn overrides_beat_the_file_and_the_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("smtp-prec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[server]\ndomain = \"file.example\"\n[resources]\nidle_timeout = \"5s\"\nmax_message_size = \"1MiB\"\n",
        )
        .unwrap();
        let mut o = BTreeMap::new();
        o.insert("domain".to_string(), "flag.example".to_string());
        let c = Config::load(Some(&path), &o).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.domain, "flag.example");
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.max_message_size, MIB);
        assert_eq!(c.max_connections, 1000);
    }

    #[test]
    fn warning_above_critical_is_rejected() {
        let mut o = BTreeMap::new();
        o.insert("memory_warning_threshold".to_string(), "0.95".to_string());
        let err = Config::load(None, &o).unwrap_err().to_string();
        assert!(err.contains("memory_warning_threshold"), "{err}");
    }
}
