//! smtp-server's admin listener, as the suite reads it: `/api/stats` (the limits
//! it enforces, and its counters) and `/metrics` (the same counters, Prometheus
//! text). A plain HTTP/1.0 GET: the suite needs two documents, not an HTTP stack.

use std::collections::BTreeMap;
use std::time::Duration;

use report::limits::{Expectations, RateLimit};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin response read (the stats and metrics are a few KiB).
const MAX_RESPONSE: u64 = 4 * 1024 * 1024;

/// `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    pub authority: String,
    pub prefix: String,
}

impl AdminUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!("{url:?} has no HOST:PORT"));
        }
        Ok(Self {
            authority: authority.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }
}

/// Why an admin document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{url}: {problem}")]
    Request { url: String, problem: String },
}

/// GETs `path` and returns the body of a 200 response.
pub async fn get(base: &AdminUrl, path: &str) -> Result<String, AdminError> {
    let url = format!("http://{}{}{path}", base.authority, base.prefix);
    let fail = |problem: String| AdminError::Request {
        url: url.clone(),
        problem,
    };
    let request = async {
        let mut stream = TcpStream::connect(&base.authority).await?;
        let head = format!(
            "GET {}{path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            base.prefix, base.authority
        );
        stream.write_all(head.as_bytes()).await?;
        let mut body = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let raw = tokio::time::timeout(ADMIN_TIMEOUT, request)
        .await
        .map_err(|_| fail("no answer within 5 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("not an HTTP response".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(fail(format!("HTTP status {status}")));
    }
    Ok(body.to_string())
}

/// The expectations in `/api/stats`'s `limits` object (missing keys stay unknown).
pub fn expectations(stats: &Value) -> Expectations {
    let limits = &stats["limits"];
    let num = |k: &str| limits.get(k).and_then(Value::as_f64);
    let whole = |k: &str| num(k).filter(|v| *v >= 0.0).map(|v| v as u64);
    let window = num("rate_limit_window_s").filter(|w| *w > 0.0);
    let rate = |k: &str| {
        Some(RateLimit {
            count: whole(k).filter(|c| *c > 0)?,
            window_s: window?,
        })
    };
    let mut e = Expectations {
        max_connections: whole("max_connections"),
        max_connections_per_ip: whole("max_connections_per_ip"),
        rate: rate("max_requests_per_window"),
        rate_per_ip: rate("max_requests_per_window_per_ip"),
        idle_timeout_s: num("idle_timeout_s"),
        session_timeout_s: num("session_timeout_s"),
        max_message_size: whole("max_message_size"),
        max_recipients: whole("max_recipients"),
        ..Expectations::default()
    };
    e.sources = super::settings::known_keys(&e)
        .map(|k| (k.to_string(), "admin".to_string()))
        .collect();
    e
}

/// The counter families labelled by reason, as `/api/stats` names them (objects) and
/// `/metrics` (`smtp_<family>_total{reason=...}`).
const FAMILIES: [&str; 4] = [
    "connections_rejected",
    "messages_rejected",
    "recipients_rejected",
    "sessions_closed",
];

/// The counters the monitoring-truth case compares, by name: `connections_accepted`,
/// `connections_rejected.rate_limit`, `messages_rejected.size`, ...
pub type Counters = BTreeMap<String, u64>;

/// The counters of `/api/stats`.
pub fn stats_counters(stats: &Value) -> Counters {
    let mut out = Counters::new();
    for key in ["connections_accepted", "messages_accepted"] {
        if let Some(v) = stats.get(key).and_then(Value::as_u64) {
            out.insert(key.to_string(), v);
        }
    }
    for family in FAMILIES {
        if let Some(map) = stats.get(family).and_then(Value::as_object) {
            for (reason, v) in map {
                if let Some(v) = v.as_u64() {
                    out.insert(format!("{family}.{reason}"), v);
                }
            }
        }
    }
    out
}

/// The same counters in smtp-server's `/metrics` (`smtp_connections_rejected_total{reason="rate_limit"} 3`).
pub fn metrics_counters(text: &str) -> Counters {
    let mut out = Counters::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.trim_end_matches('}'))),
            None => (series, None),
        };
        let Some(family) = name
            .strip_prefix("smtp_")
            .and_then(|n| n.strip_suffix("_total"))
        else {
            continue;
        };
        let key = match (family, labels) {
            ("connections_accepted" | "messages_accepted", None) => family.to_string(),
            (family, Some(l)) if FAMILIES.contains(&family) => {
                let Some(reason) = label(l, "reason") else {
                    continue;
                };
                format!("{family}.{reason}")
            }
            _ => continue,
        };
        out.insert(key, value as u64);
    }
    out
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_need_a_host_and_port() {
        let u = AdminUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.prefix.as_str()),
            ("127.0.0.1:8080", "")
        );
        assert!(AdminUrl::parse("https://x:1").is_err());
        assert!(AdminUrl::parse("http://x").is_err());
    }

    #[test]
    fn the_limits_object_gives_the_expectations() {
        let stats = serde_json::json!({"limits": {
            "max_connections": 20, "max_connections_per_ip": 5,
            "rate_limit_window_s": 10.0, "max_requests_per_window": 30,
            "max_requests_per_window_per_ip": 10, "idle_timeout_s": 5.0,
            "session_timeout_s": 15.0, "max_message_size": 1048576, "max_recipients": 10}});
        let e = expectations(&stats);
        assert_eq!(e.max_connections, Some(20));
        assert_eq!(
            e.rate_per_ip.map(|r| (r.count, r.window_s)),
            Some((10, 10.0))
        );
        assert_eq!(e.session_timeout_s, Some(15.0));
        assert_eq!(e.sources.len(), 8);
        assert_eq!(
            expectations(&serde_json::json!({})),
            Expectations::default()
        );
    }

    #[test]
    fn stats_and_metrics_give_the_same_counter_names() {
        let stats = serde_json::json!({"connections_accepted": 3, "messages_accepted": 1,
            "connections_rejected": {"rate_limit": 2}, "messages_rejected": {"size": 1},
            "sessions_closed": {"idle_timeout": 1}, "recipients_rejected": {"max_recipients": 1}});
        let metrics = "# HELP x\nsmtp_connections_accepted_total 3\n\
            smtp_connections_rejected_total{reason=\"rate_limit\"} 2\n\
            smtp_messages_accepted_total 1\nsmtp_messages_rejected_total{reason=\"size\"} 1\n\
            smtp_sessions_closed_total{reason=\"idle_timeout\"} 1\nsmtp_active_connections 4\n\
            smtp_recipients_rejected_total{reason=\"max_recipients\"} 1\n# EOF\n";
        assert_eq!(stats_counters(&stats), metrics_counters(metrics));
        assert_eq!(stats_counters(&stats).len(), 6);
    }
}
