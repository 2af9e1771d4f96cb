//! One SMTP session: the per-connection driver around the I/O-free [`Dialogue`].
//!
//! The session reads whatever the peer has sent, lets the dialogue answer every
//! complete command (or message) in the buffer in order, and writes the collected
//! replies only when the buffer holds no further complete input. That single rule is
//! what makes PIPELINING (RFC 2920) both correct (replies in order) and fast (one
//! write per batch of commands).
//!
//! Limits are checked where each phase begins: memory at MAIL, size at MAIL
//! (`SIZE=`) and during DATA, recipients at RCPT, line lengths while framing. This
//! module adds only what needs a clock or a socket: timeouts, shutdown, the store,
//! and TLS.
//!
//! TLS is a layer under one protocol code path: [`Session`] runs on any stream `S`.
//! On STARTTLS the dialogue's `220` is sent, whatever the client pipelined after the
//! command is discarded, and the session's state without its stream ([`Core`]) moves
//! into a `Session<TlsStream<S>>` once the handshake is done. On the implicit TLS port
//! the handshake comes first and the session starts on the TLS stream.

mod dialogue;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::Shared;
use crate::input::InputBuffer;
use crate::metrics::session_end;
use crate::protocol::Reply;
use crate::tls::{self, HandshakeFailure};

pub use dialogue::{Delivery, Dialogue, Step, Then, Verification};

/// How a session ended (for the close log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    Quit,
    PeerClosed,
    IdleTimeout,
    SessionTimeout,
    HandshakeTimeout,
    Shutdown,
    IoError,
    /// Too many failed AUTH attempts from the peer's address.
    AuthFailures,
    /// The TLS handshake failed (not TLS, bad record, unsupported offer).
    TlsFailed,
    /// The TLS handshake took longer than `tls_handshake_timeout`.
    TlsTimeout,
}

impl SessionEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Quit => "quit",
            SessionEnd::PeerClosed => "peer_closed",
            SessionEnd::IdleTimeout => session_end::IDLE_TIMEOUT,
            SessionEnd::SessionTimeout => session_end::SESSION_TIMEOUT,
            SessionEnd::HandshakeTimeout => session_end::HANDSHAKE_TIMEOUT,
            SessionEnd::Shutdown => session_end::SHUTDOWN,
            SessionEnd::IoError => "io_error",
            SessionEnd::AuthFailures => session_end::AUTH_FAILURES,
            SessionEnd::TlsFailed => "tls_handshake_failed",
            SessionEnd::TlsTimeout => "tls_handshake_timeout",
        }
    }

    /// The 421 that goes with a server-side close, if any.
    fn reply(self) -> Option<Reply> {
        match self {
            SessionEnd::IdleTimeout => Some(Reply::idle_timeout()),
            SessionEnd::SessionTimeout => Some(Reply::session_timeout()),
            SessionEnd::HandshakeTimeout => Some(Reply::handshake_timeout()),
            SessionEnd::Shutdown => Some(Reply::shutting_down()),
            SessionEnd::AuthFailures => Some(Reply::auth_blocked()),
            _ => None,
        }
    }
}

/// How long closing the stream (TLS close_notify, then FIN) may take.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

/// A session's state apart from its stream: what carries over a STARTTLS.
pub struct Core {
    shared: Arc<Shared>,
    input: InputBuffer,
    output: Vec<u8>,
    dialogue: Dialogue,
    /// When the client must have said EHLO/HELO (`connection_timeout` after connect,
    /// and again after a STARTTLS handshake).
    handshake_deadline: Instant,
    session_deadline: Instant,
}

impl Core {
    pub fn new(peer: SocketAddr, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        Self {
            input: InputBuffer::new(shared.memory.clone()),
            output: Vec::with_capacity(256),
            dialogue: Dialogue::new(shared.clone(), peer),
            handshake_deadline: now + shared.config.connection_timeout,
            session_deadline: now + shared.config.session_timeout,
            shared,
        }
    }

    /// Runs a TLS handshake on `stream` under `tls_handshake_timeout`, its buffers
    /// charged to the connection while it runs; on success the dialogue starts over on
    /// the TLS stream (RFC 3207 4.2).
    async fn secure<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
    ) -> Result<tokio_rustls::server::TlsStream<S>, SessionEnd> {
        let shared = self.shared.clone();
        let Some(tls) = &shared.tls else {
            // The dialogue offers STARTTLS only with a certificate configured.
            return Err(SessionEnd::TlsFailed);
        };
        self.input.charge_transport(tls::HANDSHAKE_MEMORY);
        let limit = shared.config.tls_handshake_timeout;
        let handshake = tls.accept(stream, limit, &shared.metrics);
        let result = tokio::select! {
            biased;
            _ = shared.shutdown.force.cancelled() => return Err(SessionEnd::Shutdown),
            result = handshake => result,
        };
        match result {
            Ok(stream) => {
                self.input.charge_transport(tls::ESTABLISHED_MEMORY);
                self.dialogue.tls_started();
                self.handshake_deadline = Instant::now() + shared.config.connection_timeout;
                Ok(stream)
            }
            Err(HandshakeFailure::Failed) => Err(SessionEnd::TlsFailed),
            Err(HandshakeFailure::Timeout) => Err(SessionEnd::TlsTimeout),
        }
    }
}

/// Why [`Session::run`] returned.
enum Stop {
    /// The session is over; `replied` when the dialogue already queued its last reply.
    End { end: SessionEnd, replied: bool },
    /// The `220` to STARTTLS is sent and the input after it discarded: hand the stream
    /// to TLS.
    StartTls,
}

/// Serves one plaintext connection (the SMTP port), through STARTTLS when the client
/// asks for it. Returns how it ended and how many messages were accepted.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> (SessionEnd, u64) {
    let mut core = Core::new(peer, shared);
    core.dialogue.greeting().write_to(&mut core.output);
    let mut session = Session { stream, core };
    let stop = session.run().await;
    let Stop::StartTls = stop else {
        return session.close(stop).await;
    };
    let Session { stream, mut core } = session;
    match core.secure(stream).await {
        Ok(stream) => run_to_end(stream, core).await,
        Err(end) => handshake_failed(peer, end, &core),
    }
}

/// Serves one connection on the implicit TLS port (RFC 8314): the handshake first,
/// then the greeting and the same dialogue, TLS already active.
pub async fn serve_implicit_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> (SessionEnd, u64) {
    let mut core = Core::new(peer, shared);
    match core.secure(stream).await {
        Ok(stream) => {
            core.dialogue.greeting().write_to(&mut core.output);
            run_to_end(stream, core).await
        }
        Err(end) => handshake_failed(peer, end, &core),
    }
}

/// Runs a session on a TLS stream to its end.
async fn run_to_end<S: AsyncRead + AsyncWrite + Unpin>(stream: S, core: Core) -> (SessionEnd, u64) {
    let mut session = Session { stream, core };
    let stop = match session.run().await {
        // Cannot happen: the dialogue refuses STARTTLS once TLS is active.
        Stop::StartTls => Stop::End {
            end: SessionEnd::IoError,
            replied: true,
        },
        stop => stop,
    };
    session.close(stop).await
}

/// Runs a password check on the blocking pool (argon2 is milliseconds of CPU: never
/// on an async worker thread), at most `password_checks` at a time. A check that
/// cannot run counts as a wrong password.
async fn check_password(shared: &Shared, verification: Verification) -> (String, bool) {
    let user = verification.user.clone();
    let Ok(_slot) = shared.password_checks.acquire().await else {
        return (user, false);
    };
    tokio::task::spawn_blocking(move || verification.check())
        .await
        .unwrap_or((user, false))
}

/// After a failed handshake nothing can be said: neither plaintext nor TLS is
/// readable by the peer any more. The connection is simply closed.
fn handshake_failed(peer: SocketAddr, end: SessionEnd, core: &Core) -> (SessionEnd, u64) {
    tracing::info!(%peer, reason = end.as_str(), "TLS handshake did not complete");
    (end, core.dialogue.messages())
}

/// A session on one stream: plaintext `TcpStream`, or `TlsStream` over it.
pub struct Session<S> {
    stream: S,
    core: Core,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Runs the dialogue until the session ends or STARTTLS is accepted.
    async fn run(&mut self) -> Stop {
        loop {
            match self.answer_input().await {
                Some(Stop::StartTls) => return self.prepare_tls().await,
                Some(stop) => return stop,
                None => {}
            }
            if !self.core.output.is_empty() && self.flush().await.is_err() {
                return Stop::End {
                    end: SessionEnd::IoError,
                    replied: false,
                };
            }
            if let Some(end) = self.read_more().await {
                return Stop::End {
                    end,
                    replied: false,
                };
            }
        }
    }

    /// Sends the `220` and drops whatever was pipelined after STARTTLS: those bytes
    /// arrived in plaintext and must never act inside the TLS session (the STARTTLS
    /// command injection of CVE-2011-0411).
    async fn prepare_tls(&mut self) -> Stop {
        let discarded = self.core.input.discard_pending();
        if discarded > 0 {
            tracing::info!(
                peer = %self.core.dialogue.peer(),
                bytes = discarded,
                "discarded input pipelined after STARTTLS"
            );
        }
        match self.flush().await {
            Ok(()) => Stop::StartTls,
            Err(_) => Stop::End {
                end: SessionEnd::IoError,
                replied: true,
            },
        }
    }

    /// Sends the closing reply, if any, and closes the stream.
    async fn close(mut self, stop: Stop) -> (SessionEnd, u64) {
        let Stop::End { end, replied } = stop else {
            return (SessionEnd::IoError, self.core.dialogue.messages());
        };
        if let Some(reply) = end.reply() {
            self.core.shared.metrics.close_session(end.as_str());
            if !replied {
                reply.write_to(&mut self.core.output);
            }
        }
        if !self.core.output.is_empty() {
            let _ = self.flush().await;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, self.stream.shutdown()).await;
        (end, self.core.dialogue.messages())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + self.core.shared.config.idle_timeout;
        let write = async {
            self.stream.write_all(&self.core.output).await?;
            // A TLS stream holds written records until flushed.
            self.stream.flush().await
        };
        let result = match timeout_at(deadline, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        self.core.output.clear();
        result
    }

    /// Waits for more input, a timeout or shutdown. `None` means input arrived.
    async fn read_more(&mut self) -> Option<SessionEnd> {
        let core = &mut self.core;
        core.input.prepare(core.dialogue.expecting());
        let config = &core.shared.config;
        let now = Instant::now();
        let (mut deadline, mut end) = (now + config.idle_timeout, SessionEnd::IdleTimeout);
        if !core.dialogue.said_hello() && core.handshake_deadline <= deadline {
            deadline = core.handshake_deadline;
            end = SessionEnd::HandshakeTimeout;
        }
        if core.session_deadline <= deadline {
            deadline = core.session_deadline;
            end = SessionEnd::SessionTimeout;
        }
        // While draining, a session with no transaction open has nothing left to
        // finish; one in a transaction may complete it within the grace period.
        let between_transactions = !core.dialogue.in_transaction();
        let shutdown = &core.shared.shutdown;
        tokio::select! {
            biased;
            _ = shutdown.force.cancelled() => Some(SessionEnd::Shutdown),
            _ = shutdown.draining.cancelled(), if between_transactions => Some(SessionEnd::Shutdown),
            read = timeout_at(deadline.into(), core.input.read_from(&mut self.stream)) => match read {
                Err(_) => Some(end),
                Ok(Ok(0)) => Some(SessionEnd::PeerClosed),
                Ok(Ok(_)) => None,
                Ok(Err(_)) => Some(SessionEnd::IoError),
            },
        }
    }

    /// Answers every complete command or message in the input buffer, queueing the
    /// responses. `Some` when a response ended the session or started TLS (it is
    /// queued; nothing after it in the buffer has been looked at).
    async fn answer_input(&mut self) -> Option<Stop> {
        let core = &mut self.core;
        loop {
            let outcome = match core.dialogue.step(&mut core.input) {
                Step::NeedInput => return None,
                Step::Answer(outcome) => outcome,
                Step::Deliver(Delivery { message, receipt }) => {
                    let result = core.shared.store.store(message).await;
                    core.dialogue.stored(receipt, result)
                }
                Step::Verify(verification) => {
                    let (user, ok) = check_password(&core.shared, verification).await;
                    core.dialogue.verified(user, ok)
                }
            };
            outcome.response.write_to(&mut core.output);
            match outcome.then {
                Then::Continue => {}
                Then::Close(end) => return Some(Stop::End { end, replied: true }),
                Then::StartTls => return Some(Stop::StartTls),
            }
        }
    }
}
