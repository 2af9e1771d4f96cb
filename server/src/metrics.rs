//! Counters and gauges: one set, read by `/metrics` (Prometheus text, `smtp_` prefix),
//! `/api/stats` (JSON) and [`crate::RunningServer::stats`].

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::admission::Refusal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// How a TLS handshake ended (label values).
pub mod tls_handshake {
    pub const OK: &str = "ok";
    pub const FAILED: &str = "failed";
    pub const TIMEOUT: &str = "timeout";
    pub const ALL: [&str; 3] = [OK, FAILED, TIMEOUT];
}

/// TLS protocol versions of established sessions (label values; others are counted
/// as `other`, which rustls as configured here never negotiates).
pub mod tls_version {
    pub const TLS12: &str = "TLSv1.2";
    pub const TLS13: &str = "TLSv1.3";
    pub const ALL: [&str; 2] = [TLS12, TLS13];
}

/// How an AUTH attempt ended (label values).
pub mod auth_attempt {
    /// 235: the credentials were right.
    pub const SUCCESS: &str = "success";
    /// 535: wrong user or password (and the failure that trips the guard).
    pub const FAILURE: &str = "failure";
    /// 501: bad base64, a bad PLAIN message, or cancelled with `*`.
    pub const MALFORMED: &str = "malformed";
    /// 421: the address has too many recent failures.
    pub const BLOCKED: &str = "blocked";
    pub const ALL: [&str; 4] = [SUCCESS, FAILURE, MALFORMED, BLOCKED];
}

/// Why a message was not accepted (label values).
pub mod message_rejection {
    pub const SIZE: &str = "size";
    pub const CONNECTION_MEMORY: &str = "connection_memory";
    pub const MEMORY_CRITICAL: &str = "memory_critical";
    pub const LINE_TOO_LONG: &str = "line_too_long";
    pub const STORE_ERROR: &str = "store_error";
    pub const ALL: [&str; 5] = [
        SIZE,
        CONNECTION_MEMORY,
        MEMORY_CRITICAL,
        LINE_TOO_LONG,
        STORE_ERROR,
    ];
}

/// Why a recipient was refused (label values). Only the server's own limits: a
/// malformed address is a syntax error, not a refusal.
pub mod recipient_rejection {
    /// 452 4.5.3: the transaction already holds `max_recipients`.
    pub const MAX_RECIPIENTS: &str = "max_recipients";
    pub const ALL: [&str; 1] = [MAX_RECIPIENTS];
}

/// Why a session was closed by the server (label values).
pub mod session_end {
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    pub const SESSION_TIMEOUT: &str = "session_timeout";
    pub const HANDSHAKE_TIMEOUT: &str = "connection_timeout";
    pub const SHUTDOWN: &str = "shutdown";
    /// Too many failed AUTH attempts from the peer's address.
    pub const AUTH_FAILURES: &str = "auth_failures";
    pub const ALL: [&str; 5] = [
        IDLE_TIMEOUT,
        SESSION_TIMEOUT,
        HANDSHAKE_TIMEOUT,
        SHUTDOWN,
        AUTH_FAILURES,
    ];
}

pub struct Metrics {
    registry: Registry,
    pub connections_accepted: Counter,
    pub connections_rejected: Family<ReasonLabel, Counter>,
    pub sessions_closed_by_server: Family<ReasonLabel, Counter>,
    pub messages_accepted: Counter,
    pub messages_rejected: Family<ReasonLabel, Counter>,
    pub recipients_rejected: Family<ReasonLabel, Counter>,
    pub bytes_received: Counter,
    pub active_connections: Gauge,
    pub memory_accounted_bytes: Gauge<u64, AtomicU64>,
    pub memory_rss_bytes: Gauge<u64, AtomicU64>,
    pub memory_limit_bytes: Gauge<u64, AtomicU64>,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub tls_sessions: Family<VersionLabel, Counter>,
    pub auth_attempts: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("smtp");
        let m = Metrics {
            registry: Registry::default(),
            connections_accepted: Counter::default(),
            connections_rejected: Family::default(),
            sessions_closed_by_server: Family::default(),
            messages_accepted: Counter::default(),
            messages_rejected: Family::default(),
            recipients_rejected: Family::default(),
            bytes_received: Counter::default(),
            active_connections: Gauge::default(),
            memory_accounted_bytes: Gauge::default(),
            memory_rss_bytes: Gauge::default(),
            memory_limit_bytes: Gauge::default(),
            tls_handshakes: Family::default(),
            tls_sessions: Family::default(),
            auth_attempts: Family::default(),
        };
        // Create every labelled series up front so that scrapes show zeros rather
        // than missing series.
        for r in Refusal::ALL {
            let _ = m
                .connections_rejected
                .get_or_create(&ReasonLabel { reason: r.reason() });
        }
        for reason in message_rejection::ALL {
            let _ = m.messages_rejected.get_or_create(&ReasonLabel { reason });
        }
        for reason in recipient_rejection::ALL {
            let _ = m.recipients_rejected.get_or_create(&ReasonLabel { reason });
        }
        for reason in session_end::ALL {
            let _ = m
                .sessions_closed_by_server
                .get_or_create(&ReasonLabel { reason });
        }
        for result in tls_handshake::ALL {
            let _ = m.tls_handshakes.get_or_create(&ResultLabel { result });
        }
        for version in tls_version::ALL {
            let _ = m.tls_sessions.get_or_create(&VersionLabel { version });
        }
        for result in auth_attempt::ALL {
            let _ = m.auth_attempts.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "tls_handshakes",
            "TLS handshakes (STARTTLS and implicit TLS), by result",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "tls_sessions",
            "TLS sessions established, by protocol version",
            m.tls_sessions.clone(),
        );
        registry.register(
            "auth_attempts",
            "AUTH attempts, by result",
            m.auth_attempts.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections admitted to a session",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections refused at admission, by reason",
            m.connections_rejected.clone(),
        );
        registry.register(
            "sessions_closed",
            "Sessions closed by the server with a 421, by reason",
            m.sessions_closed_by_server.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages acknowledged with 250",
            m.messages_accepted.clone(),
        );
        registry.register(
            "messages_rejected",
            "Messages refused after DATA, by reason",
            m.messages_rejected.clone(),
        );
        registry.register(
            "recipients_rejected",
            "Recipients refused by a limit (452), by reason",
            m.recipients_rejected.clone(),
        );
        registry.register(
            "bytes_received",
            "Message content bytes of accepted messages",
            m.bytes_received.clone(),
        );
        registry.register(
            "active_connections",
            "Sessions currently open",
            m.active_connections.clone(),
        );
        registry.register(
            "memory_accounted_bytes",
            "Bytes charged to the memory budget by sessions",
            m.memory_accounted_bytes.clone(),
        );
        registry.register(
            "memory_rss_bytes",
            "Process resident set size at the last sample",
            m.memory_rss_bytes.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "The process memory budget (max_memory_usage)",
            m.memory_limit_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn reject_connection(&self, refusal: Refusal) {
        self.connections_rejected
            .get_or_create(&ReasonLabel {
                reason: refusal.reason(),
            })
            .inc();
    }

    pub fn reject_message(&self, reason: &'static str) {
        self.messages_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn reject_recipient(&self, reason: &'static str) {
        self.recipients_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn close_session(&self, reason: &'static str) {
        self.sessions_closed_by_server
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn tls_session(&self, version: &'static str) {
        self.tls_sessions
            .get_or_create(&VersionLabel { version })
            .inc();
    }

    pub fn auth_attempt(&self, result: &'static str) {
        self.auth_attempts
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The counters of a family labelled by result, for the labels in `results`.
    pub fn by_result(
        family: &Family<ResultLabel, Counter>,
        results: &[&'static str],
    ) -> BTreeMap<String, u64> {
        results
            .iter()
            .filter_map(|&result| {
                let count = family.get(&ResultLabel { result })?.get();
                Some((result.to_string(), count))
            })
            .collect()
    }

    /// Sessions by TLS version, including any version outside [`tls_version::ALL`].
    pub fn by_version(&self) -> BTreeMap<String, u64> {
        tls_version::ALL
            .iter()
            .chain(&["other"])
            .filter_map(|&version| {
                let count = self.tls_sessions.get(&VersionLabel { version })?.get();
                Some((version.to_string(), count))
            })
            .collect()
    }

    pub fn by_reason(family: &Family<ReasonLabel, Counter>) -> BTreeMap<String, u64> {
        let mut map = BTreeMap::new();
        for r in Refusal::ALL
            .iter()
            .map(|r| r.reason())
            .chain(message_rejection::ALL)
            .chain(recipient_rejection::ALL)
            .chain(session_end::ALL)
        {
            // Only read series that exist; get_or_create would add foreign labels.
            let label = ReasonLabel { reason: r };
            if let Some(c) = family.get(&label) {
                map.insert(r.to_string(), c.get());
            }
        }
        map
    }
}
