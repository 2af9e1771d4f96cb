//! Stampede's reference ESMTP server (`smtp-server`).
//!
//! A real RFC 5321 receiver built to stay up and answer correctly under overload:
//! connection and rate limits at the door, timeouts, size and memory budgets per
//! message, per session and per process, Prometheus metrics, graceful shutdown.
//!
//! How the crate is laid out:
//! - `config`: the one typed [`Config`], layered defaults → file → env → flags;
//! - `listener`: the accept loop on its own thread, handing sockets to
//!   - `admission`: memory, connection and rate limits before any session exists;
//! - `session`: one connection: an I/O-free state machine (`Dialogue`) speaking
//!   `protocol`, fed by the `input` buffer, reading message content through `data`;
//!   on any stream, plaintext or `tls` (STARTTLS, the implicit TLS port); AUTH's
//!   users file, SASL decoding and brute-force guard are in `auth`;
//! - `memory`: the process memory budget; `store`: what happens to a message;
//! - `admin` and `metrics`: `/health`, `/metrics`, `/api/stats`;
//! - `healthcheck`: the probe behind `smtp-server healthcheck`;
//! - `fuzzing` (hidden): the checks behind the cargo-fuzz targets in `fuzz/`.
//!
//! The library API lets tests (and the load generator's tests) run the server in
//! process:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = server::Config::default();
//! config.bind = "127.0.0.1".parse()?;
//! config.port = 0; // any free port
//! config.admin_port = None; // no admin listener (Some(0): any free port)
//! let running = server::start(config).await?;
//! println!("SMTP on {}", running.smtp_addr());
//! running.shutdown();
//! running.wait().await?;
//! # Ok(()) }
//! ```

mod admin;
mod admission;
pub mod auth;
mod config;
mod data;
#[doc(hidden)]
pub mod fuzzing;
mod healthcheck;
mod input;
mod listener;
mod memory;
mod metrics;
mod protocol;
mod session;
mod store;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, StoreKind};
pub use healthcheck::{ProbeError, TargetError, health_url, probe_health};
pub use memory::MemoryLevel;
pub use store::StoredMessage;

use admission::Admission;
use memory::MemoryBudget;
use metrics::Metrics;
use store::Store;

/// How long sessions get to send their `421 4.3.2` after the grace period.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The two phases of a graceful shutdown.
#[derive(Debug, Default, Clone)]
pub struct Shutdown {
    /// Stop accepting; sessions finish their transaction. `/health` turns 503.
    pub draining: CancellationToken,
    /// The grace period is over: every remaining session gets `421 4.3.2`.
    pub force: CancellationToken,
}

/// State shared by the listener, every session and the admin endpoints.
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    pub memory: Arc<MemoryBudget>,
    pub admission: Arc<Admission>,
    pub store: Store,
    pub shutdown: Shutdown,
    pub started: Instant,
    /// The TLS setup, when a certificate is configured.
    pub(crate) tls: Option<tls::Tls>,
    /// The users file, when AUTH is configured.
    pub(crate) credentials: Option<Arc<auth::Credentials>>,
    /// Failed AUTH attempts per address, shared by every session.
    pub(crate) auth_guard: auth::FailureGuard,
    /// Password checks that may run at once. An argon2 check takes its hash's memory
    /// cost (19 MiB with the defaults) and milliseconds of CPU: without a bound, a
    /// few hundred connections sending wrong passwords at once would take gigabytes
    /// before the failure guard blocks anyone.
    pub(crate) password_checks: tokio::sync::Semaphore,
}

/// Concurrent password checks: one per CPU, since each one keeps a CPU busy.
fn password_check_slots() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Memory figures in [`Stats`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryStats {
    pub level: MemoryLevel,
    pub accounted_bytes: u64,
    pub rss_bytes: u64,
    pub limit_bytes: u64,
    pub usage_ratio: f64,
    pub warning_threshold: f64,
    pub critical_threshold: f64,
}

/// Rate-limiter settings and state in [`Stats`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RateLimitStats {
    pub window_seconds: f64,
    pub max_requests_per_window: u32,
    pub max_requests_per_window_per_ip: u32,
    pub tracked_peers: usize,
}

/// The limits the server enforces, as configured (in `/api/stats` under `limits`), so
/// that a client such as `loadgen limits --admin URL` can learn what to expect
/// without being told. Numbers only: durations in seconds, sizes in bytes. The two
/// rate limits are token buckets holding `max_requests_per_window` (per IP:
/// `max_requests_per_window_per_ip`) and refilled evenly over `rate_limit_window_s`
/// (see `admission`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LimitsStats {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub rate_limit_window_s: f64,
    pub max_requests_per_window: u32,
    pub max_requests_per_window_per_ip: u32,
    pub idle_timeout_s: f64,
    pub session_timeout_s: f64,
    pub max_message_size: u64,
    pub max_recipients: usize,
}

impl LimitsStats {
    fn of(config: &Config) -> Self {
        Self {
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            rate_limit_window_s: config.rate_limit_window.as_secs_f64(),
            max_requests_per_window: config.max_requests_per_window,
            max_requests_per_window_per_ip: config.max_requests_per_window_per_ip,
            idle_timeout_s: config.idle_timeout.as_secs_f64(),
            session_timeout_s: config.session_timeout.as_secs_f64(),
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
        }
    }
}

/// A snapshot of the server's counters (also served as JSON on `/api/stats`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stats {
    pub uptime_seconds: f64,
    pub draining: bool,
    pub active_connections: u64,
    pub connections_accepted: u64,
    /// Connections refused at admission, by reason (`max_connections`,
    /// `max_connections_per_ip`, `rate_limit`, `rate_limit_per_ip`, `memory_critical`).
    pub connections_rejected: BTreeMap<String, u64>,
    /// Sessions the server closed with a 421, by reason (`idle_timeout`,
    /// `session_timeout`, `connection_timeout`, `shutdown`).
    pub sessions_closed: BTreeMap<String, u64>,
    pub messages_accepted: u64,
    /// Messages refused, by reason (`size`, `connection_memory`, `memory_critical`,
    /// `line_too_long`, `store_error`).
    pub messages_rejected: BTreeMap<String, u64>,
    /// Recipients refused by a limit, by reason (`max_recipients`).
    pub recipients_rejected: BTreeMap<String, u64>,
    /// Message content bytes of accepted messages.
    pub bytes_received: u64,
    pub memory: MemoryStats,
    pub rate_limit: RateLimitStats,
    /// The limits enforced, as configured.
    pub limits: LimitsStats,
    pub tls: TlsStats,
    /// AUTH attempts by result (`success`, `failure`, `malformed`, `blocked`).
    pub auth: BTreeMap<String, u64>,
}

/// TLS figures in [`Stats`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TlsStats {
    /// Handshakes by result (`ok`, `failed`, `timeout`).
    pub handshakes: BTreeMap<String, u64>,
    /// Established sessions by protocol version (`TLSv1.2`, `TLSv1.3`).
    pub versions: BTreeMap<String, u64>,
}

impl Shared {
    /// Copies the memory figures into the gauges (done before each scrape).
    pub fn refresh_gauges(&self) {
        self.metrics
            .memory_accounted_bytes
            .set(self.memory.accounted());
        self.metrics.memory_rss_bytes.set(self.memory.rss());
        self.metrics.memory_limit_bytes.set(self.memory.limit());
    }

    pub fn stats(&self) -> Stats {
        let m = &self.metrics;
        let usage = self.memory.usage();
        let limit = self.memory.limit();
        Stats {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            draining: self.shutdown.draining.is_cancelled(),
            active_connections: m.active_connections.get().max(0) as u64,
            connections_accepted: m.connections_accepted.get(),
            connections_rejected: Metrics::by_reason(&m.connections_rejected),
            sessions_closed: Metrics::by_reason(&m.sessions_closed_by_server),
            messages_accepted: m.messages_accepted.get(),
            messages_rejected: Metrics::by_reason(&m.messages_rejected),
            recipients_rejected: Metrics::by_reason(&m.recipients_rejected),
            bytes_received: m.bytes_received.get(),
            memory: MemoryStats {
                level: self.memory.level(),
                accounted_bytes: self.memory.accounted(),
                rss_bytes: self.memory.rss(),
                limit_bytes: limit,
                usage_ratio: usage as f64 / limit as f64,
                warning_threshold: self.config.memory_warning_threshold,
                critical_threshold: self.config.memory_critical_threshold,
            },
            rate_limit: RateLimitStats {
                window_seconds: self.config.rate_limit_window.as_secs_f64(),
                max_requests_per_window: self.config.max_requests_per_window,
                max_requests_per_window_per_ip: self.config.max_requests_per_window_per_ip,
                tracked_peers: self.admission.rate_limited_peers(),
            },
            limits: LimitsStats::of(&self.config),
            tls: TlsStats {
                handshakes: Metrics::by_result(&m.tls_handshakes, &metrics::tls_handshake::ALL),
                versions: m.by_version(),
            },
            auth: Metrics::by_result(&m.auth_attempts, &metrics::auth_attempt::ALL),
        }
    }
}

/// A started server. Dropping it does not stop the server; call
/// [`shutdown`](Self::shutdown) and [`wait`](Self::wait).
pub struct RunningServer {
    shared: Arc<Shared>,
    smtp_addr: SocketAddr,
    implicit_tls_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    supervisor: JoinHandle<()>,
}

impl RunningServer {
    /// The address the SMTP listener is bound to (with the real port when 0 was asked).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// The implicit TLS listener's address, `None` when there is none.
    pub fn implicit_tls_addr(&self) -> Option<SocketAddr> {
        self.implicit_tls_addr
    }

    /// SHA-256 (hex) of the certificate served, `None` without TLS.
    pub fn tls_certificate_sha256(&self) -> Option<&str> {
        self.shared.tls.as_ref().map(|t| t.fingerprint.as_str())
    }

    /// The admin listener's address, `None` when disabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Begins a graceful shutdown: stop accepting, let transactions in progress finish
    /// for up to `shutdown_grace`, then `421 4.3.2` to the rest.
    pub fn shutdown(&self) {
        self.shared.shutdown.draining.cancel();
    }

    /// Resolves when the server has fully stopped (after [`shutdown`](Self::shutdown)).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.supervisor
            .await
            .context("server supervisor task failed")
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Charges `bytes` to the process memory budget until the returned charge is
    /// dropped, as if sessions held them. For tests that need to push the server over
    /// its memory thresholds without allocating that memory.
    #[doc(hidden)]
    pub fn hold_memory(&self, bytes: u64) -> memory::MemoryCharge {
        let mut charge = memory::MemoryCharge::new(self.shared.memory.clone());
        charge.grow(bytes);
        charge
    }

    /// The messages kept by `store = memory`, oldest first.
    pub fn stored_messages(&self) -> Vec<StoredMessage> {
        self.shared.store.messages()
    }
}

/// Binds the SMTP listener (and the admin listener when enabled), starts serving and
/// returns at once.
///
/// A configuration error (including an unusable certificate, key or users file) is
/// returned as a [`ConfigError`] inside the `anyhow::Error`, for the caller to tell it
/// from a runtime failure.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let tls = tls::Tls::from_config(&config)?;
    let credentials = load_credentials(&config)?;
    if let Some(tls) = &tls {
        tracing::info!(tls_certificate_sha256 = %tls.fingerprint, "TLS certificate");
    }
    let smtp_listener = listener::bind(
        config.smtp_listen_addr(),
        config.listen_backlog,
        listener::Port::Smtp,
    )
    .with_context(|| format!("cannot bind SMTP listener on {}", config.smtp_listen_addr()))?;
    let smtp_addr = smtp_listener.local_addr()?;
    let mut listeners = vec![smtp_listener];
    let mut implicit_tls_addr = None;
    if let Some(addr) = config.implicit_tls_listen_addr() {
        let bound = listener::bind(addr, config.listen_backlog, listener::Port::ImplicitTls)
            .with_context(|| format!("cannot bind the implicit TLS listener on {addr}"))?;
        implicit_tls_addr = Some(bound.local_addr()?);
        listeners.push(bound);
    }
    let admin_listener = match config.admin_listen_addr() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind admin listener on {addr}"))?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let store = Store::open(&config).context("cannot open the message store")?;
    let published_admin = publish_admin_addr(&config, admin_addr)?;
    let memory = Arc::new(MemoryBudget::new(
        config.max_memory_usage,
        config.memory_warning_threshold,
        config.memory_critical_threshold,
    ));
    let admission = Arc::new(Admission::new(&config, memory.clone()));
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        memory,
        admission,
        store,
        shutdown: Shutdown::default(),
        started: Instant::now(),
        auth_guard: auth::FailureGuard::new(config.auth_max_failures, config.auth_failure_window),
        password_checks: tokio::sync::Semaphore::new(password_check_slots()),
        config,
        tls,
        credentials,
    });
    shared.refresh_gauges();

    let sessions = TaskTracker::new();
    let mut accept_loop = listener::spawn(
        listeners,
        shared.clone(),
        sessions.clone(),
        tokio::runtime::Handle::current(),
    )
    .context("cannot start the accept loop")?;
    let stop_aux = CancellationToken::new();
    let admin_task =
        admin_listener.map(|l| tokio::spawn(admin::serve(l, shared.clone(), stop_aux.clone())));
    let monitor = tokio::spawn(monitor(shared.clone(), stop_aux.clone()));

    let supervisor = {
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.shutdown.draining.cancelled().await;
            accept_loop.stopped().await;
            sessions.close();
            let grace = shared.config.shutdown_grace;
            if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
                tracing::info!(
                    remaining = sessions.len(),
                    "grace period over, closing remaining sessions"
                );
                shared.shutdown.force.cancel();
                let _ = tokio::time::timeout(FORCED_CLOSE_WAIT, sessions.wait()).await;
            }
            stop_aux.cancel();
            if let Some(task) = admin_task {
                let _ = task.await;
            }
            let _ = monitor.await;
            if let Some(published) = published_admin {
                published.remove();
            }
            tracing::info!("server stopped");
        })
    };

    Ok(RunningServer {
        shared,
        smtp_addr,
        implicit_tls_addr,
        admin_addr,
        supervisor,
    })
}

/// Reads `auth_users`, when set; an unusable file is a configuration error naming the
/// file and line.
fn load_credentials(config: &Config) -> Result<Option<Arc<auth::Credentials>>, ConfigError> {
    let Some(path) = &config.auth_users else {
        return Ok(None);
    };
    let credentials = auth::Credentials::load(path).map_err(|e| ConfigError::KeyFile {
        key: "auth_users".into(),
        reason: e.to_string(),
    })?;
    tracing::info!(users = credentials.len(), file = %path.display(), "AUTH users loaded");
    Ok(Some(Arc::new(credentials)))
}

/// Writes the admin address to `admin_addr_file` when the port was picked by the
/// system (`admin_port = auto`), the one case where a health check cannot know it.
fn publish_admin_addr(
    config: &Config,
    admin_addr: Option<SocketAddr>,
) -> anyhow::Result<Option<admin::PublishedAddr>> {
    let (Some(addr), Some(path), Some(0)) =
        (admin_addr, &config.admin_addr_file, config.admin_port)
    else {
        return Ok(None);
    };
    let published = admin::PublishedAddr::write(path, addr)
        .with_context(|| format!("cannot write admin_addr_file {}", path.display()))?;
    Ok(Some(published))
}

/// Samples RSS and keeps the rate-limiter table small, every `monitoring_interval`.
async fn monitor(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.monitoring_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                shared.memory.sample_rss();
                shared.admission.housekeeping();
                shared.auth_guard.housekeeping();
                shared.refresh_gauges();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn running_server_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::RunningServer>();
        assert_send_sync::<super::Stats>();
    }
}
