//! The accept loop: admission before any session exists.
//!
//! The loop runs on its own thread with its own single-threaded runtime, so that no
//! amount of session work on the main runtime can keep it from emptying the kernel's
//! accept queue: under a connection storm a server that refuses must refuse fast. A
//! connection whose handshake finds the accept queue full is dropped by the kernel
//! after the client already believes it is connected, and that client then waits for
//! a banner that never comes.
//!
//! Each accepted socket is checked against the limits (see [`crate::admission`]). An
//! admitted socket is handed to the main runtime, where its session runs. A refused
//! socket stays on the accept thread: its one-line reply is written by a small task
//! with a short, bounded timeout, which then reads what the peer may already have sent
//! so that the close does not turn into a reset that destroys the reply. Those tasks
//! are bounded in number; beyond that a refusal is a non-blocking write and a close
//! (a fresh socket's send buffer is empty, so the write does not wait). Refusals never
//! create unbounded work.
//!
//! The implicit TLS port (RFC 8314) has its own accept loop on the same thread, with
//! the same admission. A connection refused there is closed without a reply: the
//! reply would have to be sent inside TLS, and a handshake costs more CPU than the
//! session being refused, on the one thread that must stay fast under a storm. The
//! client sees its handshake fail on a closed connection, counted by the server under
//! `connections_rejected` like any refusal.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::admission::Refusal;
use crate::session;

/// Concurrent refusals that get a lingering close.
const MAX_LINGERING_REFUSALS: usize = 1024;
/// How long writing a refusal may take before the socket is simply closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a refused connection is kept open to drain the peer's input.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// Where the kernel keeps the ceiling for any listen backlog.
const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// A bound SMTP listening socket, not yet accepting.
pub struct BoundListener {
    socket: std::net::TcpListener,
    port: Port,
}

/// What a listening port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// SMTP, plaintext first (STARTTLS when configured).
    Smtp,
    /// TLS from the first byte (RFC 8314).
    ImplicitTls,
}

impl BoundListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// The accept-queue length the kernel will grant for `requested`: it silently caps
/// every backlog at `net.core.somaxconn`.
pub fn effective_backlog(requested: u32, somaxconn: Option<u32>) -> u32 {
    somaxconn.map_or(requested, |cap| requested.min(cap))
}

fn somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN_PATH)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Binds the SMTP listener with an explicit accept-queue length (the standard
/// library's and tokio's `bind` use a fixed 1024) and logs the length in effect.
pub fn bind(addr: SocketAddr, requested_backlog: u32, port: Port) -> io::Result<BoundListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let kernel_cap = somaxconn();
    let backlog = effective_backlog(requested_backlog, kernel_cap);
    let listener = socket.listen(backlog)?;
    tracing::info!(
        listen_backlog = backlog,
        requested = requested_backlog,
        somaxconn = kernel_cap.map_or_else(|| "unknown".to_string(), |c| c.to_string()),
        port = ?port,
        "SMTP accept queue"
    );
    // Deregistered from this runtime: the accept thread registers it with its own.
    Ok(BoundListener {
        socket: listener.into_std()?,
        port,
    })
}

/// The running accept loop. It stops when draining begins, or when this handle is
/// dropped: the handle lives in a task on the main runtime, so a runtime shut down
/// without a graceful stop (a test that just ends) does not leave the thread behind.
pub struct AcceptLoop {
    stopped: oneshot::Receiver<()>,
    abandoned: CancellationToken,
}

impl AcceptLoop {
    /// Resolves when the accept loop has stopped (after draining began).
    pub async fn stopped(&mut self) {
        // An error means the thread ended without signalling, which is a stop too.
        let _ = (&mut self.stopped).await;
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.abandoned.cancel();
    }
}

/// Starts the accept loops (one per listener) on their own thread; sessions are
/// spawned on `sessions_on`.
pub fn spawn(
    bound: Vec<BoundListener>,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    sessions_on: Handle,
) -> io::Result<AcceptLoop> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, stopped) = oneshot::channel();
    let abandoned = CancellationToken::new();
    let abandoned_by_owner = abandoned.clone();
    std::thread::Builder::new()
        .name("smtp-accept".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut loops = tokio::task::JoinSet::new();
                for bound in bound {
                    match TcpListener::from_std(bound.socket) {
                        Ok(listener) => {
                            let accept = Listener {
                                listener,
                                port: bound.port,
                                shared: shared.clone(),
                                sessions: sessions.clone(),
                                sessions_on: sessions_on.clone(),
                                abandoned: abandoned_by_owner.clone(),
                            };
                            loops.spawn(accept.run());
                        }
                        Err(e) => tracing::error!(error = %e, "cannot register the SMTP listener"),
                    }
                }
                while loops.join_next().await.is_some() {}
            });
            let _ = done.send(());
        })?;
    Ok(AcceptLoop { stopped, abandoned })
}

struct Listener {
    listener: TcpListener,
    port: Port,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    sessions_on: Handle,
    abandoned: CancellationToken,
}

impl Listener {
    /// Accepts connections until draining starts.
    async fn run(self) {
        let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.shared.shutdown.draining.cancelled() => break,
                _ = self.abandoned.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match self.shared.admission.admit(peer.ip()) {
                Ok(permit) => self.start_session(socket, peer, permit),
                Err(refusal) => match self.port {
                    Port::Smtp => refuse(socket, peer, refusal, &self.shared, &lingering),
                    Port::ImplicitTls => {
                        self.shared.metrics.reject_connection(refusal);
                        tracing::info!(%peer, reason = refusal.reason(), port = "implicit_tls", "connection refused (closed)");
                        drop(socket);
                    }
                },
            }
        }
        tracing::info!(port = ?self.port, "stopped accepting connections");
    }

    /// Hands an admitted socket over to the main runtime, where its session runs.
    fn start_session(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        permit: crate::admission::ConnectionPermit,
    ) {
        let _ = socket.set_nodelay(true);
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection over");
                return;
            }
        };
        let shared = self.shared.clone();
        shared.metrics.connections_accepted.inc();
        let port = self.port;
        self.sessions.spawn_on(
            async move {
                let _permit = permit;
                match TcpStream::from_std(socket) {
                    Ok(socket) => serve(socket, peer, port, shared).await,
                    Err(e) => tracing::warn!(%peer, error = %e, "cannot register the connection"),
                }
            },
            &self.sessions_on,
        );
    }
}

async fn serve(socket: TcpStream, peer: SocketAddr, port: Port, shared: Arc<Shared>) {
    let started = Instant::now();
    shared.metrics.active_connections.inc();
    tracing::info!(%peer, ?port, "connection opened");
    let (end, messages) = match port {
        Port::Smtp => session::serve(socket, peer, shared.clone()).await,
        Port::ImplicitTls => session::serve_implicit_tls(socket, peer, shared.clone()).await,
    };
    shared.metrics.active_connections.dec();
    tracing::info!(
        %peer,
        reason = end.as_str(),
        messages,
        duration_ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
}

fn refuse(
    socket: TcpStream,
    peer: SocketAddr,
    refusal: Refusal,
    shared: &Shared,
    lingering: &Arc<Semaphore>,
) {
    shared.metrics.reject_connection(refusal);
    tracing::info!(%peer, reason = refusal.reason(), "connection refused");
    // The refusal stands in for the greeting, which names the server (RFC 5321 4.2).
    let mut reply = refusal.reply();
    reply.text = format!("{} {}", shared.config.domain, reply.text).into();
    let mut bytes = Vec::with_capacity(128);
    reply.write_to(&mut bytes);
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        // Too many refusals in flight: best effort, never waiting.
        let _ = socket.try_write(&bytes);
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut socket = socket;
        let written = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, socket.write_all(&bytes)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        let _ = socket.shutdown().await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            while let Ok(n) = socket.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_capped_by_somaxconn() {
        assert_eq!(effective_backlog(4096, Some(128)), 128);
        assert_eq!(effective_backlog(100, Some(4096)), 100);
        assert_eq!(effective_backlog(4096, None), 4096);
    }
}
