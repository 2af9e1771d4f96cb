//! Server configuration: one typed structure, layered defaults → file → environment →
//! flags.
//!
//! [`Config`] is the one place a setting is declared. Its field gives the key name,
//! the type, the help text (the doc comment), the flag (`#[arg(long)]`, so
//! `--max-connections`) and the TOML section (the help heading); its value in
//! `Default` is the default. Everything else is derived from it:
//! - the TOML file is read by serde (`deny_unknown_fields`), each key inside the
//!   section its field names;
//! - flags and the `SMTP_<KEY>` environment variables are read by clap (see
//!   [`Config::add_args`]), which gives flag > env; the help shows each default, taken by
//!   serializing `Config::default()`;
//! - sizes and durations go through the workspace's `units` grammar everywhere.
//!
//! Every error names the key it is about.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

/// Help headings, which are also the TOML sections (without the brackets).
const SERVER: &str = "[server]";
const RESOURCES: &str = "[resources]";
const MEMORY: &str = "[memory]";
const TLS: &str = "[tls]";
const AUTH: &str = "[auth]";

/// What happens to a message after the final `250`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Count and drop (the default for stress tests).
    Discard,
    /// Keep the last `memory_store_capacity` messages in memory (for tests).
    Memory,
    /// Write each message to `spool_dir`, fsynced before the `250`.
    Spool,
}

/// The complete server configuration.
///
/// `Config::default()` is the production default set from the design document. Fields
/// are public so that tests and embedders can adjust them directly; [`crate::start`]
/// validates the result.
///
/// `admin_port` and `admin_addr_file` are spelled `::std::option::Option` so that
/// clap takes them as single values with their own parsers (`auto`, `""`) rather than
/// as optional flags.
#[derive(Debug, Clone, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the SMTP listener binds to.
    #[arg(long, help_heading = SERVER)]
    pub bind: IpAddr,
    /// SMTP port; 0 picks a free port (logged as smtp_addr=...).
    #[arg(long, help_heading = SERVER)]
    pub port: u16,
    /// Connections the kernel queues before the server accepts them; capped by
    /// net.core.somaxconn, the length in effect is logged at start.
    #[arg(long, help_heading = SERVER)]
    pub listen_backlog: u32,
    // In code: `None` disables, `Some(0)` is auto.
    /// Admin HTTP port (/health, /metrics, /api/stats); 0 disables it, `auto` picks a
    /// free port (logged as admin_addr=...).
    #[arg(long, help_heading = SERVER, value_parser = text::parse_admin_port)]
    #[serde(with = "text::admin_port")]
    pub admin_port: ::std::option::Option<u16>,
    /// Address the admin listener binds to [default: the same as bind].
    #[arg(long, help_heading = SERVER)]
    pub admin_bind: Option<IpAddr>,
    /// With admin_port `auto`, the file the bound admin address is written to (and
    /// removed from at a clean stop) for `smtp-server healthcheck`; "" writes none.
    #[arg(long, help_heading = SERVER, value_parser = text::parse_optional_path)]
    #[serde(with = "text::optional_path")]
    pub admin_addr_file: ::std::option::Option<PathBuf>,
    /// Host name in the banner and the EHLO reply.
    #[arg(long, help_heading = SERVER)]
    pub domain: String,
    /// What happens to accepted messages.
    #[arg(long, help_heading = SERVER, value_enum, ignore_case = true)]
    pub store: StoreKind,
    /// Directory for store = spool (created when missing).
    #[arg(long, help_heading = SERVER)]
    pub spool_dir: PathBuf,
    /// How many messages store = memory keeps (the oldest are dropped first).
    #[arg(long, help_heading = SERVER)]
    pub memory_store_capacity: usize,
    /// How long a graceful shutdown (SIGTERM/SIGINT) lets running sessions finish.
    #[arg(long, help_heading = SERVER, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub shutdown_grace: Duration,

    /// Concurrent sessions, all peers together.
    #[arg(long, help_heading = RESOURCES)]
    pub max_connections: usize,
    /// Concurrent sessions from one IP address.
    #[arg(long, help_heading = RESOURCES)]
    pub max_connections_per_ip: usize,
    /// The token-bucket window for the connection-rate limits.
    #[arg(long, help_heading = RESOURCES, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub rate_limit_window: Duration,
    /// New connections allowed per window, all peers together.
    #[arg(long, help_heading = RESOURCES)]
    pub max_requests_per_window: u32,
    /// New connections allowed per window from one IP address (unless set: a tenth of
    /// max_requests_per_window, at least 1).
    #[arg(long, help_heading = RESOURCES)]
    pub max_requests_per_window_per_ip: u32,
    /// Time allowed from connect to the client's EHLO/HELO.
    #[arg(long, help_heading = RESOURCES, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub connection_timeout: Duration,
    /// Time allowed between two reads once the client has said hello.
    #[arg(long, help_heading = RESOURCES, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub idle_timeout: Duration,
    /// Time allowed for the whole session.
    #[arg(long, help_heading = RESOURCES, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub session_timeout: Duration,
    /// Largest message accepted (advertised in EHLO).
    #[arg(long, help_heading = RESOURCES, value_parser = units::parse_size)]
    #[serde(with = "text::size")]
    pub max_message_size: u64,
    /// Recipients per transaction.
    #[arg(long, help_heading = RESOURCES)]
    pub max_recipients: usize,
    /// Bytes one session may hold (input buffer plus a message being received).
    #[arg(long, help_heading = RESOURCES, value_parser = units::parse_size)]
    #[serde(with = "text::size")]
    pub per_connection_memory_limit: u64,

    /// The process memory budget: accounted session bytes or RSS, whichever is larger.
    #[arg(long, help_heading = MEMORY, value_parser = units::parse_size)]
    #[serde(with = "text::size")]
    pub max_memory_usage: u64,
    /// Fraction of the budget above which a warning is logged.
    #[arg(long, help_heading = MEMORY)]
    pub memory_warning_threshold: f64,
    /// Fraction of the budget above which new connections and transactions get 452.
    #[arg(long, help_heading = MEMORY)]
    pub memory_critical_threshold: f64,
    /// How often the process RSS is sampled.
    #[arg(long, help_heading = MEMORY, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub monitoring_interval: Duration,

    /// PEM certificate chain (leaf first) for STARTTLS and implicit TLS; needs tls_key.
    #[arg(long, help_heading = TLS, value_parser = text::parse_optional_path)]
    #[serde(with = "text::optional_path")]
    pub tls_cert: ::std::option::Option<PathBuf>,
    /// PEM private key for tls_cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, help_heading = TLS, value_parser = text::parse_optional_path)]
    #[serde(with = "text::optional_path")]
    pub tls_key: ::std::option::Option<PathBuf>,
    /// Generate a throwaway CA and a certificate for `domain`, localhost and 127.0.0.1
    /// at start (its SHA-256 is logged as tls_certificate_sha256=...); instead of
    /// tls_cert.
    #[arg(long, help_heading = TLS, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub tls_self_signed: bool,
    /// With tls_self_signed: write the generated CA certificate (PEM) to this file, for
    /// clients that verify (loadgen --tls-ca, swaks --tls-ca-path); "" writes none.
    #[arg(long, help_heading = TLS, value_parser = text::parse_optional_path)]
    #[serde(with = "text::optional_path")]
    pub tls_ca_out: ::std::option::Option<PathBuf>,
    /// Port for implicit TLS (RFC 8314, usually 465), on the same limits as the SMTP
    /// port; 0 picks a free port (logged as implicit_tls_addr=...); "" (the default)
    /// disables it.
    #[arg(long, help_heading = TLS, value_parser = text::parse_optional_port)]
    #[serde(with = "text::optional_port")]
    pub implicit_tls_port: ::std::option::Option<u16>,
    /// Refuse MAIL before STARTTLS (530 5.7.0).
    #[arg(long, help_heading = TLS, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub require_tls: bool,
    /// Time allowed for a TLS handshake (after STARTTLS, or from connect on the
    /// implicit TLS port).
    #[arg(long, help_heading = TLS, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub tls_handshake_timeout: Duration,

    /// Users for AUTH PLAIN and LOGIN: lines `user:password` or `user:$argon2id$...`
    /// (PHC, see `smtp-server hash-password`); `#` comments. Unset: no AUTH.
    #[arg(long, help_heading = AUTH, value_parser = text::parse_optional_path)]
    #[serde(with = "text::optional_path")]
    pub auth_users: ::std::option::Option<PathBuf>,
    /// Offer and accept AUTH without TLS (otherwise AUTH before TLS gets 538 5.7.11).
    #[arg(long, help_heading = AUTH, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub auth_allow_plaintext: bool,
    /// Refuse MAIL before a successful AUTH (530 5.7.0).
    #[arg(long, help_heading = AUTH, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub require_auth: bool,
    /// Failed AUTH attempts one IP address may make within auth_failure_window; the
    /// last one, and any AUTH from that address until the window ends, gets 421 4.7.0.
    #[arg(long, help_heading = AUTH)]
    pub auth_max_failures: u32,
    /// The window in which auth_max_failures are counted.
    #[arg(long, help_heading = AUTH, value_parser = units::parse_duration)]
    #[serde(with = "text::duration")]
    pub auth_failure_window: Duration,
}

const MIB: u64 = 1024 * 1024;

/// A fixed place that the server and `smtp-server healthcheck` agree on without being
/// told, in the same host or container.
const DEFAULT_ADMIN_ADDR_FILE: &str = "/tmp/smtp-server-admin.addr";

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
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            tls_ca_out: None,
            implicit_tls_port: None,
            require_tls: false,
            tls_handshake_timeout: Duration::from_secs(10),
            auth_users: None,
            auth_allow_plaintext: false,
            require_auth: false,
            auth_max_failures: 5,
            auth_failure_window: Duration::from_secs(300),
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
    #[error("invalid value for `{key}` in {file}: {reason}")]
    InvalidFileValue {
        key: String,
        file: String,
        reason: String,
    },
    #[error("unknown configuration key `{key}` in {file}")]
    UnknownKey { key: String, file: String },
    #[error("`{key}` in {file} belongs in the [{section}] section")]
    MisplacedKey {
        key: String,
        file: String,
        section: String,
    },
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config file {file} is not valid TOML: {message}")]
    Toml { file: String, message: String },
    /// A file a key names cannot be used (unreadable, malformed).
    #[error("`{key}`: {reason}")]
    KeyFile { key: String, reason: String },
}

/// The per-IP rate follows a changed global rate unless it is set itself.
const PER_IP_RATE: &str = "max_requests_per_window_per_ip";

/// `SMTP_<KEY>`: the environment variable for a key.
fn env_name(key: &str) -> String {
    format!("SMTP_{}", key.to_ascii_uppercase())
}

/// Every key with its TOML section, in declaration order.
fn keys() -> Vec<(String, String)> {
    Config::augment_args(Command::new("keys"))
        .get_arguments()
        .filter_map(|arg| {
            let section = arg.get_help_heading()?.trim_matches(['[', ']']).to_string();
            Some((section, arg.get_id().to_string()))
        })
        .collect()
}

fn is_key(name: &str) -> bool {
    keys().iter().any(|(_, key)| key == name)
}

/// Each key's default as shown in the help (`None` for keys without one).
fn default_texts() -> BTreeMap<String, String> {
    let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(Config::default()) else {
        return BTreeMap::new();
    };
    defaults
        .into_iter()
        .filter_map(|(key, value)| {
            let text = match value {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            Some((key, text))
        })
        .collect()
}

impl ConfigError {
    /// Turns clap's error about a flag or `SMTP_*` value into one naming the key; `None`
    /// for any other clap error.
    pub fn from_clap(err: &clap::Error) -> Option<ConfigError> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if !matches!(
            err.kind(),
            ErrorKind::ValueValidation | ErrorKind::InvalidValue
        ) {
            return None;
        }
        let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
            return None;
        };
        let flag = arg.split_whitespace().next()?.strip_prefix("--")?;
        let key = flag.replace('-', "_");
        if !is_key(&key) {
            return None;
        }
        let value = match err.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(value)) => value.clone(),
            _ => String::new(),
        };
        let reason = match (
            std::error::Error::source(err),
            err.get(ContextKind::ValidValue),
        ) {
            (Some(source), _) => source.to_string(),
            (None, Some(ContextValue::Strings(valid))) => {
                format!("expected one of {}", valid.join(", "))
            }
            _ => "not accepted".to_string(),
        };
        Some(ConfigError::InvalidValue {
            reason: format!("{reason} (from --{flag} or {})", env_name(&key)),
            key,
            value,
        })
    }
}

impl Config {
    /// Adds a flag and an `SMTP_<KEY>` environment variable for every key to `command`,
    /// each help text ending with the key's real default.
    pub fn add_args(command: Command) -> Command {
        let defaults = default_texts();
        // augment_args would also put Config's doc comment in place of the command's own.
        let about = command.get_about().cloned();
        let long_about = command.get_long_about().cloned();
        let command = Config::augment_args(command)
            .about(about.unwrap_or_default())
            .long_about(long_about.unwrap_or_default());
        let keys = keys();
        command.mut_args(|arg| {
            let id = arg.get_id().to_string();
            if !keys.iter().any(|(_, key)| *key == id) {
                return arg;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let help = match defaults.get(&id) {
                Some(default) => format!("{help} [default: {default}]"),
                None => help,
            };
            // Unset keys keep the file's value or the default, so no key is required.
            arg.required(false).env(env_name(&id)).help(help)
        })
    }

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

    /// Builds the configuration from the defaults, an optional TOML file, and the
    /// flags and environment variables in `matches` (from a command given to
    /// [`Config::add_args`]; clap has already put flags over the environment). Each layer
    /// wins over the ones before it.
    pub fn load(file: Option<&Path>, matches: &ArgMatches) -> Result<Self, ConfigError> {
        let (mut config, mut per_ip_set) = Self::from_file(file)?;
        per_ip_set |= matches!(
            matches.value_source(PER_IP_RATE),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        config
            .update_from_arg_matches(matches)
            .map_err(|e| ConfigError::from_clap(&e).unwrap_or_else(|| internal(e)))?;
        if !per_ip_set {
            config.max_requests_per_window_per_ip = (config.max_requests_per_window / 10).max(1);
        }
        config.validate()?;
        Ok(config)
    }

    /// The defaults with the file's values over them, and whether the file set the
    /// per-IP rate.
    fn from_file(file: Option<&Path>) -> Result<(Self, bool), ConfigError> {
        let Some(path) = file else {
            return Ok((Self::default(), false));
        };
        let (flat, sections) = read_file(path)?;
        let per_ip_set = flat.contains_key(PER_IP_RATE);
        let config = serde_path_to_error::deserialize(toml::Value::Table(flat)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::InvalidFileValue {
                key: sections
                    .get(&key)
                    .map_or(key.clone(), |section| format!("{section}.{key}")),
                file: path.display().to_string(),
                reason: e.into_inner().message().to_string(),
            }
        })?;
        Ok((config, per_ip_set))
    }

    /// Checks each value's range and the relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, reason: &str| ConfigError::InvalidValue {
            key: key.into(),
            value,
            reason: reason.into(),
        };
        if self.domain.is_empty()
            || self
                .domain
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad(
                "domain",
                self.domain.clone(),
                "expected a host name without spaces",
            ));
        }
        if self.spool_dir.as_os_str().is_empty() {
            return Err(bad("spool_dir", String::new(), "expected a directory path"));
        }
        for (key, value) in [
            ("memory_warning_threshold", self.memory_warning_threshold),
            ("memory_critical_threshold", self.memory_critical_threshold),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(bad(
                    key,
                    value.to_string(),
                    "expected a fraction in (0, 1], e.g. 0.9",
                ));
            }
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
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("auth_failure_window", self.auth_failure_window),
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
        if self.auth_max_failures == 0 {
            return Err(bad("auth_max_failures", "0".into(), "must be at least 1"));
        }
        self.validate_tls_and_auth()
    }

    /// The [tls] and [auth] keys that only make sense together.
    fn validate_tls_and_auth(&self) -> Result<(), ConfigError> {
        let needs = |key: &str, value: String, reason: &str| ConfigError::InvalidValue {
            key: key.into(),
            value,
            reason: reason.into(),
        };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(needs(
                    "tls_cert",
                    path(&self.tls_cert),
                    "needs tls_key (the certificate's private key)",
                ));
            }
            (None, Some(_)) => {
                return Err(needs(
                    "tls_key",
                    path(&self.tls_key),
                    "needs tls_cert (the certificate chain)",
                ));
            }
            _ => {}
        }
        if self.tls_self_signed && self.tls_cert.is_some() {
            return Err(needs(
                "tls_self_signed",
                "true".into(),
                "cannot be used with tls_cert: choose one",
            ));
        }
        if self.tls_ca_out.is_some() && !self.tls_self_signed {
            return Err(needs(
                "tls_ca_out",
                path(&self.tls_ca_out),
                "applies only with tls_self_signed",
            ));
        }
        if !self.tls_enabled() {
            if self.require_tls {
                return Err(needs(
                    "require_tls",
                    "true".into(),
                    "needs TLS: set tls_cert and tls_key, or tls_self_signed",
                ));
            }
            if let Some(port) = self.implicit_tls_port {
                return Err(needs(
                    "implicit_tls_port",
                    port.to_string(),
                    "needs TLS: set tls_cert and tls_key, or tls_self_signed",
                ));
            }
        }
        if self.require_auth && self.auth_users.is_none() {
            return Err(needs("require_auth", "true".into(), "needs auth_users"));
        }
        if self.auth_allow_plaintext && self.auth_users.is_none() {
            return Err(needs(
                "auth_allow_plaintext",
                "true".into(),
                "needs auth_users",
            ));
        }
        if self.auth_users.is_some() && !self.tls_enabled() && !self.auth_allow_plaintext {
            return Err(needs(
                "auth_users",
                path(&self.auth_users),
                "AUTH is offered only under TLS: set tls_cert and tls_key or tls_self_signed, \
                 or auth_allow_plaintext",
            ));
        }
        Ok(())
    }

    /// True when a certificate is configured (STARTTLS and the implicit TLS port).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed
    }

    /// The implicit-TLS listen address, or `None` when there is no such listener.
    pub fn implicit_tls_listen_addr(&self) -> Option<SocketAddr> {
        self.implicit_tls_port
            .map(|port| SocketAddr::new(self.bind, port))
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

/// A clap error that is not about a key's value (it cannot happen for a command made
/// by [`Config::add_args`], whose values clap has already parsed).
fn internal(err: clap::Error) -> ConfigError {
    ConfigError::InvalidValue {
        key: "arguments".into(),
        value: String::new(),
        reason: err.to_string(),
    }
}

/// Reads a TOML file into one flat table of keys (checking each key's section) and
/// the section each key was found in.
fn read_file(path: &Path) -> Result<(toml::Table, BTreeMap<String, String>), ConfigError> {
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
    let known: BTreeMap<String, String> = keys().into_iter().map(|(s, k)| (k, s)).collect();
    let mut flat = toml::Table::new();
    let mut found_in = BTreeMap::new();
    for (section, body) in table {
        let toml::Value::Table(body) = body else {
            return Err(ConfigError::UnknownKey { key: section, file });
        };
        for (key, value) in body {
            match known.get(&key) {
                Some(home) if *home == section => {}
                Some(home) => {
                    return Err(ConfigError::MisplacedKey {
                        key: format!("{section}.{key}"),
                        file,
                        section: home.clone(),
                    });
                }
                None => {
                    return Err(ConfigError::UnknownKey {
                        key: format!("{section}.{key}"),
                        file,
                    });
                }
            }
            found_in.insert(key.clone(), section.clone());
            flat.insert(key, value);
        }
    }
    Ok((flat, found_in))
}

/// How values of the special kinds are written: parsers for flags and environment
/// variables, and serde for the file (which may hold a number or a string) and for
/// the defaults shown in the help.
mod text {
    use std::path::PathBuf;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    /// `auto` (or `Some(0)`): a free port; 0 (or `None`): disabled.
    pub fn parse_admin_port(value: &str) -> Result<Option<u16>, String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("auto") {
            return Ok(Some(0));
        }
        match value.parse::<u16>() {
            Ok(0) => Ok(None),
            Ok(port) => Ok(Some(port)),
            Err(_) => Err("expected a port 1-65535, 0 (disabled) or `auto` (free port)".into()),
        }
    }

    /// An empty value means no file.
    pub fn parse_optional_path(value: &str) -> Result<Option<PathBuf>, String> {
        Ok((!value.is_empty()).then(|| PathBuf::from(value)))
    }

    /// An empty value means no port; 0 picks a free one.
    pub fn parse_optional_port(value: &str) -> Result<Option<u16>, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        value
            .parse::<u16>()
            .map(Some)
            .map_err(|_| "expected a port 0-65535 (0 picks a free port) or \"\" (none)".into())
    }

    /// A number or a string from the file, kept as the text it stands for.
    enum Scalar {
        Integer(i128),
        Float(f64),
        Text(String),
    }

    impl<'de> de::Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ScalarVisitor;
            impl Visitor<'_> for ScalarVisitor {
                type Value = Scalar;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a number or a string")
                }
                fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                    Ok(Scalar::Integer(v.into()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                    Ok(Scalar::Integer(v.into()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                    Ok(Scalar::Float(v))
                }
                fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                    Ok(Scalar::Text(v.to_string()))
                }
            }
            deserializer.deserialize_any(ScalarVisitor)
        }
    }

    /// Durations: `"150ms"`, `"2m"`, or a number of seconds.
    pub mod duration {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            let text = match de::Deserialize::deserialize(d)? {
                Scalar::Integer(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(s) => s,
            };
            units::parse_duration(&text).map_err(de::Error::custom)
        }

        /// Whole seconds as `30s`, anything finer as `150ms`.
        pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
            let millis = value.as_millis();
            if millis.is_multiple_of(1000) {
                s.collect_str(&format_args!("{}s", millis / 1000))
            } else {
                s.collect_str(&format_args!("{millis}ms"))
            }
        }
    }

    /// Sizes: `"10MiB"`, `"10MB"`, or a number of bytes.
    pub mod size {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
            let text = match de::Deserialize::deserialize(d)? {
                Scalar::Integer(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(s) => s,
            };
            units::parse_size(&text).map_err(de::Error::custom)
        }

        /// The largest binary unit that divides the value: `10MiB`, `1536KiB`, `2500`.
        pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
            const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
            match UNITS
                .iter()
                .find(|(unit, _)| *value > 0 && value.is_multiple_of(*unit))
            {
                Some((unit, name)) => s.collect_str(&format_args!("{}{name}", value / unit)),
                None => s.serialize_u64(*value),
            }
        }
    }

    /// `admin_port`: a port, 0 (disabled) or `"auto"`.
    pub mod admin_port {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
            let text = match de::Deserialize::deserialize(d)? {
                Scalar::Integer(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(s) => s,
            };
            parse_admin_port(&text).map_err(de::Error::custom)
        }

        pub fn serialize<S: Serializer>(value: &Option<u16>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                None => s.serialize_u16(0),
                Some(0) => s.serialize_str("auto"),
                Some(port) => s.serialize_u16(*port),
            }
        }
    }

    /// A port where `""` means none.
    pub mod optional_port {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
            let text = match de::Deserialize::deserialize(d)? {
                Scalar::Integer(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(s) => s,
            };
            parse_optional_port(&text).map_err(de::Error::custom)
        }

        pub fn serialize<S: Serializer>(value: &Option<u16>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                None => s.serialize_str(""),
                Some(port) => s.serialize_u16(*port),
            }
        }
    }

    /// A path where `""` means none.
    pub mod optional_path {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
            let text: String = de::Deserialize::deserialize(d)?;
            Ok(parse_optional_path(&text).unwrap_or_default())
        }

        pub fn serialize<S: Serializer>(value: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                None => s.serialize_str(""),
                Some(path) => s.collect_str(&path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses command-line arguments (after the program name) into matches.
    fn args(list: &[&str]) -> Result<ArgMatches, clap::Error> {
        Config::add_args(Command::new("smtp-server"))
            .try_get_matches_from(std::iter::once("smtp-server").chain(list.iter().copied()))
    }

    fn load_args(list: &[&str]) -> Result<Config, ConfigError> {
        let matches = args(list).map_err(|e| ConfigError::from_clap(&e).expect("a key error"))?;
        Config::load(None, &matches)
    }

    /// Loads a file holding `[section]` and `key = value`.
    fn load_file_value(section: &str, key: &str, value: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("[{section}]\n{key} = {value}\n")).unwrap();
        Config::load(Some(&path), &args(&[]).unwrap())
    }

    fn idle_timeout(value: &str) -> Result<Duration, ConfigError> {
        load_file_value("resources", "idle_timeout", value).map(|c| c.idle_timeout)
    }

    fn max_message_size(value: &str) -> Result<u64, ConfigError> {
        load_file_value("resources", "max_message_size", value).map(|c| c.max_message_size)
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(
            idle_timeout("\"150ms\"").unwrap(),
            Duration::from_millis(150)
        );
        assert_eq!(idle_timeout("\"30s\"").unwrap(), Duration::from_secs(30));
        assert_eq!(idle_timeout("30").unwrap(), Duration::from_secs(30));
        assert_eq!(idle_timeout("\"2m\"").unwrap(), Duration::from_secs(120));
        assert_eq!(idle_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert!(idle_timeout("\"soon\"").is_err());
        assert!(idle_timeout("\"10 parsecs\"").is_err());
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(max_message_size("\"10MiB\"").unwrap(), 10 * MIB);
        assert_eq!(max_message_size("\"64KiB\"").unwrap(), 65536);
        assert_eq!(max_message_size("\"10MB\"").unwrap(), 10_000_000);
        assert_eq!(max_message_size("2500").unwrap(), 2500);
        assert!(max_message_size("-1").is_err());
        assert!(max_message_size("\"ten\"").is_err());
        let err = max_message_size("\"10k\"").unwrap_err().to_string();
        assert!(
            err.contains("resources.max_message_size") && err.contains("10KiB"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_error_names_the_key() {
        let err = load_args(&["--idle-timeout", "forever"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("idle_timeout"), "{err}");
        let err = idle_timeout("\"forever\"").unwrap_err().to_string();
        assert!(err.contains("resources.idle_timeout"), "{err}");
    }

    #[test]
    fn per_ip_rate_follows_global_rate_unless_set() {
        assert_eq!(
            load_args(&["--max-requests-per-window", "200"])
                .unwrap()
                .max_requests_per_window_per_ip,
            20
        );
        assert_eq!(
            load_args(&[
                "--max-requests-per-window",
                "200",
                "--max-requests-per-window-per-ip",
                "7"
            ])
            .unwrap()
            .max_requests_per_window_per_ip,
            7
        );
    }

    #[test]
    fn a_key_in_the_wrong_section_is_refused_naming_its_section() {
        let err = load_file_value("memory", "max_connections", "5")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("memory.max_connections") && err.contains("[resources]"),
            "{err}"
        );
    }

    #[test]
    fn help_shows_every_key_with_its_real_default() {
        let help = Config::add_args(Command::new("smtp-server"))
            .render_help()
            .to_string();
        for expected in [
            "--max-message-size <MAX_MESSAGE_SIZE>",
            "[default: 10MiB]",
            "[default: 120s]",
            "[default: 4096]",
            "[env: SMTP_MAX_CONNECTIONS=]",
            "[server]",
        ] {
            assert!(help.contains(expected), "{expected} missing in:\n{help}");
        }
        let fields = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(
            keys().len(),
            fields.as_object().unwrap().len(),
            "every field is a key"
        );
    }

    #[test]
    fn example_config_documents_every_key_with_its_default() {
        let example = include_str!("../smtp-server.example.toml");
        let keys = keys();
        // Uncomment "# key = value" lines: the result must load and equal the defaults
        // (except admin_bind, whose example value differs from its default).
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| keys.iter().any(|(_, key)| *key == k)) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (section, key) in &keys {
            assert!(
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} = "))),
                "{section}.{key} missing from the example"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.toml");
        std::fs::write(&path, uncommented).unwrap();
        let loaded = Config::load(Some(&path), &args(&[]).unwrap()).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\ndomain = \"file.example\"\n[resources]\nidle_timeout = \"5s\"\nmax_message_size = \"1MiB\"\n",
        )
        .unwrap();
        let matches = args(&["--domain", "flag.example"]).unwrap();
        let c = Config::load(Some(&path), &matches).unwrap();
        assert_eq!(c.domain, "flag.example");
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.max_message_size, MIB);
        assert_eq!(c.max_connections, 1000);
    }

    #[test]
    fn tls_and_auth_keys_load_from_their_sections_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[tls]\ntls_self_signed = true\nimplicit_tls_port = 465\nrequire_tls = true\n\
             tls_handshake_timeout = \"3s\"\n[auth]\nauth_users = \"users\"\n\
             auth_max_failures = 3\nauth_failure_window = \"1m\"\n",
        )
        .unwrap();
        let matches = args(&["--require-auth", "--implicit-tls-port", "0"]).unwrap();
        let c = Config::load(Some(&path), &matches).unwrap();
        assert!(c.tls_self_signed && c.require_tls && c.require_auth);
        assert_eq!(c.implicit_tls_port, Some(0));
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.auth_users, Some(PathBuf::from("users")));
        assert_eq!(
            (c.auth_max_failures, c.auth_failure_window),
            (3, Duration::from_secs(60))
        );
        // A flag set to false beats the file.
        let c = Config::load(Some(&path), &args(&["--require-tls=false"]).unwrap()).unwrap();
        assert!(!c.require_tls);
        let err = load_file_value("tls", "auth_users", "\"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[auth]"), "{err}");
    }

    #[test]
    fn tls_and_auth_keys_that_cannot_work_together_are_refused_naming_the_key() {
        let rows: [(&[&str], &str); 6] = [
            (&["--tls-key", "k.pem"], "tls_key"),
            (
                &["--tls-self-signed", "--tls-cert", "c", "--tls-key", "k"],
                "tls_self_signed",
            ),
            (&["--require-tls"], "require_tls"),
            (&["--auth-allow-plaintext"], "auth_allow_plaintext"),
            (&["--auth-max-failures", "0"], "auth_max_failures"),
            (
                &["--tls-self-signed", "--tls-handshake-timeout", "0s"],
                "tls_handshake_timeout",
            ),
        ];
        for (flags, key) in rows {
            let err = load_args(flags).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{flags:?}: {err}");
        }
    }

    #[test]
    fn warning_above_critical_is_rejected() {
        let err = load_args(&["--memory-warning-threshold", "0.95"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_warning_threshold"), "{err}");
    }
}
