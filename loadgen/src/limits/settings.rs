//! `loadgen limits` flags, and the expectations they give. Values are parsed by
//! clap with the workspace's `units` grammar, so a bad value names its flag and
//! exits 2 before anything connects.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use report::limits::{Expectations, RateLimit};

use crate::source_addrs::SourceAddrs;

/// Source addresses used against a loopback server when `--source-ips` is not
/// given: on Linux all of 127.0.0.0/8 answers on `lo`, so the global cases can
/// spread over many peers and the per-IP cases have a second address.
pub const DEFAULT_LOOPBACK_SOURCES: &str = "127.0.0.2-127.0.0.254";

/// Checks a server's resource limits: connection counts, connection rates,
/// timeouts, message size and recipients, and whether its counters tell the truth.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen limits",
    bin_name = "loadgen limits",
    about = "Checks that an SMTP server enforces its resource limits",
    after_help = LIMITS_HELP
)]
pub struct LimitsArgs {
    /// The server, HOST:PORT.
    #[arg(long, env = "LOADGEN_LIMITS_SERVER")]
    pub server: String,

    /// smtp-server's admin URL (`http://127.0.0.1:8080`): expectations are read from
    /// `/api/stats`'s "limits" (flags win), and the counters of `/api/stats` and
    /// `/metrics` are checked against what the suite observed.
    #[arg(long, env = "LOADGEN_LIMITS_ADMIN")]
    pub admin: Option<String>,

    /// Concurrent sessions the server allows, all peers together.
    #[arg(long, value_name = "N", help_heading = "Expectations")]
    pub expect_max_connections: Option<u64>,
    /// Concurrent sessions the server allows from one address.
    #[arg(long, value_name = "N", help_heading = "Expectations")]
    pub expect_max_connections_per_ip: Option<u64>,
    /// New connections per window, all peers together (`1000/60s`), a token bucket.
    #[arg(long, value_name = "N/DURATION", value_parser = parse_rate, help_heading = "Expectations")]
    pub expect_rate: Option<RateLimit>,
    /// New connections per window from one address (`100/60s`).
    #[arg(long, value_name = "N/DURATION", value_parser = parse_rate, help_heading = "Expectations")]
    pub expect_rate_per_ip: Option<RateLimit>,
    /// Silence after EHLO the server allows before it closes (`120s`).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Expectations")]
    pub expect_idle_timeout: Option<Duration>,
    /// Length of a session the server allows, however active (`300s`).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Expectations")]
    pub expect_session_timeout: Option<Duration>,
    /// Largest message the server accepts (`10MiB`).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size, help_heading = "Expectations")]
    pub expect_max_message_size: Option<u64>,
    /// Recipients per transaction the server accepts.
    #[arg(long, value_name = "N", help_heading = "Expectations")]
    pub expect_max_recipients: Option<u64>,

    /// A case that would take longer than this is skipped, with the reason.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = units::parse_duration)]
    pub max_case_time: Duration,

    /// How long each reply may take before it counts as "no reply".
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = units::parse_duration)]
    pub reply_timeout: Duration,

    /// Source addresses to connect from: addresses, ranges, CIDRs, comma separated
    /// [default: 127.0.0.2-127.0.0.254 for a loopback server, else the system's
    /// choice, one address].
    #[arg(long, env = "LOADGEN_SOURCE_IPS", value_name = "SPEC")]
    pub source_ips: Option<String>,

    /// Write the `stampede.limits.v1` document here (atomically).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print only the table (no progress lines).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

const LIMITS_HELP: &str = "\
Each case runs only when its expectation is known. Refusal means a 421 reply; a
connection closed without one fails its case.

Exit codes:
  0  every case that ran passed
  1  a case failed, or the suite could not run (unreachable server or admin URL)
  2  bad usage: a bad flag or value, named on stderr";

/// `1000/60s` → 1000 per 60 s.
pub fn parse_rate(value: &str) -> Result<RateLimit, String> {
    let (count, window) = value.split_once('/').ok_or_else(|| {
        format!("{value:?} is not a rate (expected COUNT/DURATION, e.g. 100/60s)")
    })?;
    let count: u64 = count
        .trim()
        .parse()
        .map_err(|_| format!("{count:?} is not a whole number of connections"))?;
    if count == 0 {
        return Err("the count must be at least 1".into());
    }
    let window = units::parse_duration(window).map_err(|e| e.to_string())?;
    if window.is_zero() {
        return Err("the window must be longer than 0".into());
    }
    Ok(RateLimit {
        count,
        window_s: window.as_secs_f64(),
    })
}

/// The checked settings of a suite run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: SocketAddr,
    pub server_text: String,
    pub admin: Option<String>,
    pub flags: Expectations,
    /// Where connections come from; `[None]` lets the system choose.
    pub sources: Vec<Option<IpAddr>>,
    pub max_case_time: Duration,
    pub reply_timeout: Duration,
    pub output: Option<PathBuf>,
    pub quiet: bool,
}

/// A bad flag, named.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct UsageError {
    pub flag: &'static str,
    pub problem: String,
}

fn usage(flag: &'static str, problem: impl Into<String>) -> UsageError {
    UsageError {
        flag,
        problem: problem.into(),
    }
}

impl Settings {
    pub fn from_args(a: LimitsArgs) -> Result<Self, UsageError> {
        let server = resolve(&a.server).map_err(|p| usage("server", p))?;
        if let Some(url) = &a.admin {
            crate::limits::admin::AdminUrl::parse(url).map_err(|p| usage("admin", p))?;
        }
        let spec = match (&a.source_ips, server.ip().is_loopback()) {
            (Some(spec), _) => Some(spec.as_str()),
            (None, true) if server.is_ipv4() => Some(DEFAULT_LOOPBACK_SOURCES),
            _ => None,
        };
        let sources = match spec {
            Some(spec) => SourceAddrs::parse(spec)
                .map_err(|e| usage("source-ips", e.to_string()))?
                .addrs()
                .iter()
                .copied()
                .map(Some)
                .collect(),
            None => vec![None],
        };
        Ok(Self {
            server,
            server_text: a.server.clone(),
            admin: a.admin.clone(),
            flags: flag_expectations(&a),
            sources,
            max_case_time: a.max_case_time,
            reply_timeout: a.reply_timeout,
            output: a.output,
            quiet: a.quiet,
        })
    }
}

fn resolve(server: &str) -> Result<SocketAddr, String> {
    if !server.contains(':') {
        return Err(format!("{server:?} has no port (expected HOST:PORT)"));
    }
    server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {server:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{server:?} resolves to no address"))
}

fn flag_expectations(a: &LimitsArgs) -> Expectations {
    let mut e = Expectations {
        max_connections: a.expect_max_connections,
        max_connections_per_ip: a.expect_max_connections_per_ip,
        rate: a.expect_rate,
        rate_per_ip: a.expect_rate_per_ip,
        idle_timeout_s: a.expect_idle_timeout.map(|d| d.as_secs_f64()),
        session_timeout_s: a.expect_session_timeout.map(|d| d.as_secs_f64()),
        max_message_size: a.expect_max_message_size,
        max_recipients: a.expect_max_recipients,
        ..Expectations::default()
    };
    e.sources = known_keys(&e)
        .map(|k| (k.to_string(), "flag".to_string()))
        .collect();
    e
}

/// The keys of the expectations that are set.
pub fn known_keys(e: &Expectations) -> impl Iterator<Item = &'static str> {
    [
        ("max_connections", e.max_connections.is_some()),
        ("max_connections_per_ip", e.max_connections_per_ip.is_some()),
        ("rate", e.rate.is_some()),
        ("rate_per_ip", e.rate_per_ip.is_some()),
        ("idle_timeout_s", e.idle_timeout_s.is_some()),
        ("session_timeout_s", e.session_timeout_s.is_some()),
        ("max_message_size", e.max_message_size.is_some()),
        ("max_recipients", e.max_recipients.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
}

/// Flags first, then what the server says about itself.
pub fn merge(flags: &Expectations, admin: &Expectations) -> Expectations {
    let mut e = Expectations {
        max_connections: flags.max_connections.or(admin.max_connections),
        max_connections_per_ip: flags
            .max_connections_per_ip
            .or(admin.max_connections_per_ip),
        rate: flags.rate.or(admin.rate),
        rate_per_ip: flags.rate_per_ip.or(admin.rate_per_ip),
        idle_timeout_s: flags.idle_timeout_s.or(admin.idle_timeout_s),
        session_timeout_s: flags.session_timeout_s.or(admin.session_timeout_s),
        max_message_size: flags.max_message_size.or(admin.max_message_size),
        max_recipients: flags.max_recipients.or(admin.max_recipients),
        sources: admin
            .sources
            .keys()
            .map(|k| (k.clone(), "admin".to_string()))
            .collect(),
    };
    e.sources.extend(flags.sources.clone());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_count_per_duration() {
        let r = parse_rate("100/60s").unwrap();
        assert_eq!((r.count, r.window_s), (100, 60.0));
        assert_eq!(parse_rate("30/1m").unwrap().window_s, 60.0);
        assert!(parse_rate("100").unwrap_err().contains("COUNT/DURATION"));
        assert!(parse_rate("0/10s").is_err());
        assert!(parse_rate("x/10s").is_err());
        assert!(parse_rate("10/0s").is_err());
    }

    #[test]
    fn flags_win_over_the_servers_own_figures() {
        let flags = Expectations {
            max_connections: Some(5),
            sources: [("max_connections".to_string(), "flag".to_string())].into(),
            ..Expectations::default()
        };
        let admin = Expectations {
            max_connections: Some(50),
            max_recipients: Some(10),
            sources: [
                ("max_connections".to_string(), "admin".to_string()),
                ("max_recipients".to_string(), "admin".to_string()),
            ]
            .into(),
            ..Expectations::default()
        };
        let e = merge(&flags, &admin);
        assert_eq!(e.max_connections, Some(5));
        assert_eq!(e.max_recipients, Some(10));
        assert_eq!(e.sources["max_connections"], "flag");
        assert_eq!(e.sources["max_recipients"], "admin");
    }
}
