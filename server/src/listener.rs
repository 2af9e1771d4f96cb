//! The accept loop: admission before any session exists.
//!
//! Each accepted socket is checked against the limits (see [`crate::limits`]). A
//! refused socket gets its one-line reply with a non-blocking write (a fresh socket's
//! send buffer is empty, so this does not wait) and is closed; a small, bounded pool
//! of "lingering close" tasks reads what the peer may already have sent so that the
//! close does not turn into a reset that destroys the reply. When that pool is full
//! the socket is simply closed: refusals never create unbounded work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::limits::Refusal;
use crate::session::Session;

/// Concurrent lingering closes of refused connections.
const MAX_LINGERING_REFUSALS: usize = 64;
/// How long a refused connection is kept open to drain the peer's input.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

pub struct Listener {
    pub listener: TcpListener,
    pub shared: Arc<Shared>,
    pub sessions: TaskTracker,
}

impl Listener {
    /// Accepts connections until draining starts.
    pub async fn run(self) {
        let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.shared.shutdown.draining.cancelled() => break,
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
                Ok(permit) => {
                    let _ = socket.set_nodelay(true);
                    let shared = self.shared.clone();
                    shared.metrics.connections_accepted.inc();
                    self.sessions.spawn(async move {
                        let _permit = permit;
                        serve(socket, peer, shared).await;
                    });
                }
                Err(refusal) => refuse(socket, peer, refusal, &self.shared, &lingering),
            }
        }
        tracing::info!("stopped accepting connections");
    }
}

async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let started = Instant::now();
    shared.metrics.active_connections.inc();
    tracing::info!(%peer, "connection opened");
    let (end, messages) = Session::new(socket, peer, shared.clone()).run().await;
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
    if socket.try_write(&bytes).is_err() {
        return;
    }
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut socket = socket;
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
