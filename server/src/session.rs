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
//! module adds only what needs a clock or a socket: timeouts, shutdown, the store.

mod dialogue;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::Shared;
use crate::input::InputBuffer;
use crate::metrics::session_end;
use crate::protocol::Reply;

pub use dialogue::{Delivery, Dialogue, Step, Then};

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
        }
    }

    /// The 421 that goes with a server-side close, if any.
    fn reply(self) -> Option<Reply> {
        match self {
            SessionEnd::IdleTimeout => Some(Reply::idle_timeout()),
            SessionEnd::SessionTimeout => Some(Reply::session_timeout()),
            SessionEnd::HandshakeTimeout => Some(Reply::handshake_timeout()),
            SessionEnd::Shutdown => Some(Reply::shutting_down()),
            _ => None,
        }
    }
}

pub struct Session<S> {
    stream: S,
    shared: Arc<Shared>,
    input: InputBuffer,
    output: Vec<u8>,
    dialogue: Dialogue,
    /// When the client must have said EHLO/HELO (`connection_timeout` after connect).
    handshake_deadline: Instant,
    session_deadline: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        Self {
            stream,
            input: InputBuffer::new(shared.memory.clone()),
            output: Vec::with_capacity(256),
            dialogue: Dialogue::new(shared.clone(), peer),
            handshake_deadline: now + shared.config.connection_timeout,
            session_deadline: now + shared.config.session_timeout,
            shared,
        }
    }

    /// Runs the session to its end; returns how it ended and how many messages were
    /// accepted.
    pub async fn run(mut self) -> (SessionEnd, u64) {
        self.dialogue.greeting().write_to(&mut self.output);
        let (end, replied) = loop {
            if let Some(end) = self.answer_input().await {
                break (end, true);
            }
            if !self.output.is_empty() && self.flush().await.is_err() {
                break (SessionEnd::IoError, false);
            }
            if let Some(end) = self.read_more().await {
                break (end, false);
            }
        };
        if let Some(reply) = end.reply() {
            self.shared.metrics.close_session(end.as_str());
            if !replied {
                reply.write_to(&mut self.output);
            }
        }
        if !self.output.is_empty() {
            let _ = self.flush().await;
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            self.stream.shutdown(),
        )
        .await;
        (end, self.dialogue.messages())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + self.shared.config.idle_timeout;
        let result = match timeout_at(deadline, self.stream.write_all(&self.output)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        self.output.clear();
        result
    }

    /// Waits for more input, a timeout or shutdown. `None` means input arrived.
    async fn read_more(&mut self) -> Option<SessionEnd> {
        self.input.prepare(self.dialogue.expecting());
        let config = &self.shared.config;
        let now = Instant::now();
        let (mut deadline, mut end) = (now + config.idle_timeout, SessionEnd::IdleTimeout);
        if !self.dialogue.said_hello() && self.handshake_deadline <= deadline {
            deadline = self.handshake_deadline;
            end = SessionEnd::HandshakeTimeout;
        }
        if self.session_deadline <= deadline {
            deadline = self.session_deadline;
            end = SessionEnd::SessionTimeout;
        }
        // While draining, a session with no transaction open has nothing left to
        // finish; one in a transaction may complete it within the grace period.
        let between_transactions = !self.dialogue.in_transaction();
        let shutdown = &self.shared.shutdown;
        tokio::select! {
            biased;
            _ = shutdown.force.cancelled() => Some(SessionEnd::Shutdown),
            _ = shutdown.draining.cancelled(), if between_transactions => Some(SessionEnd::Shutdown),
            read = timeout_at(deadline.into(), self.input.read_from(&mut self.stream)) => match read {
                Err(_) => Some(end),
                Ok(Ok(0)) => Some(SessionEnd::PeerClosed),
                Ok(Ok(_)) => None,
                Ok(Err(_)) => Some(SessionEnd::IoError),
            },
        }
    }

    /// Answers every complete command or message in the input buffer, queueing the
    /// responses. `Some` when a response ended the session (it is queued).
    async fn answer_input(&mut self) -> Option<SessionEnd> {
        loop {
            let outcome = match self.dialogue.step(&mut self.input) {
                Step::NeedInput => return None,
                Step::Answer(outcome) => outcome,
                Step::Deliver(Delivery { message, receipt }) => {
                    let result = self.shared.store.store(message).await;
                    self.dialogue.stored(receipt, result)
                }
            };
            outcome.response.write_to(&mut self.output);
            if let Then::Close(end) = outcome.then {
                return Some(end);
            }
        }
    }
}
