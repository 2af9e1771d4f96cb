//! One SMTP session: the per-connection state machine.
//!
//! The session reads whatever the peer has sent, answers every complete command (or
//! message) in the buffer in order, and writes the collected replies only when the
//! buffer holds no further complete input. That single rule is what makes
//! PIPELINING (RFC 2920) both correct (replies in order) and fast (one write per
//! batch of commands).
//!
//! Limits are checked where each phase begins: memory at MAIL, size at MAIL
//! (`SIZE=`) and during DATA, recipients at RCPT, line lengths while framing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use memchr::memchr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::Shared;
use crate::data::DataReader;
use crate::memory::MemoryCharge;
use crate::metrics::{message_rejection, session_end};
use crate::protocol::{self, Command, MAX_COMMAND_LINE, Reply};
use crate::store::StoredMessage;

/// Input buffer size between messages: room for a full command line plus a
/// pipelined batch of commands, small so that idle sessions stay cheap.
const COMMAND_BUFFER: usize = 4 * 1024;
/// Input buffer size while a message is arriving: large reads for throughput.
const DATA_BUFFER: usize = 64 * 1024;
/// The smallest allocation for a message body.
const MIN_BODY_ALLOCATION: usize = 4 * 1024;

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

/// The envelope of the transaction in progress (after MAIL).
#[derive(Debug)]
struct Envelope {
    mail_from: String,
    rcpt_to: Vec<String>,
}

/// Why a message being received will be refused once its end arrives.
#[derive(Debug, Clone, Copy)]
enum MessageRefusal {
    TooBig,
    ConnectionMemory,
    ProcessMemory,
}

/// A message being received (between 354 and the final dot).
struct Incoming {
    reader: DataReader,
    body: Vec<u8>,
    /// Bytes of `body` capacity charged to the memory budget.
    body_charged: u64,
    keep: bool,
    refusal: Option<MessageRefusal>,
}

enum Flow {
    NeedInput,
    /// End the session; `replied` when the closing reply is already queued.
    Close {
        end: SessionEnd,
        replied: bool,
    },
}

pub struct Session<S> {
    stream: S,
    shared: Arc<Shared>,
    peer: SocketAddr,
    input: Vec<u8>,
    /// Bytes of `input` already handled.
    pos: usize,
    output: Vec<u8>,
    charge: MemoryCharge,
    /// The name given in EHLO/HELO, once the client has said hello.
    client_name: Option<String>,
    envelope: Option<Envelope>,
    incoming: Option<Incoming>,
    /// Skipping the rest of a command line that exceeded [`MAX_COMMAND_LINE`].
    discarding_line: bool,
    /// When the client must have said EHLO/HELO (`connection_timeout` after connect).
    handshake_deadline: Instant,
    session_deadline: Instant,
    messages: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, shared: Arc<Shared>) -> Self {
        let charge = MemoryCharge::new(shared.memory.clone());
        let now = Instant::now();
        let session_deadline = now + shared.config.session_timeout;
        let handshake_deadline = now + shared.config.connection_timeout;
        Self {
            stream,
            shared,
            peer,
            input: Vec::new(),
            pos: 0,
            output: Vec::with_capacity(256),
            charge,
            client_name: None,
            envelope: None,
            incoming: None,
            discarding_line: false,
            handshake_deadline,
            session_deadline,
            messages: 0,
        }
    }

    /// Runs the session to its end; returns how it ended and how many messages were
    /// accepted.
    pub async fn run(mut self) -> (SessionEnd, u64) {
        protocol::greeting(&self.shared.config.domain).write_to(&mut self.output);
        let end = loop {
            if let Flow::Close { end, replied } = self.process_input().await {
                break (end, replied);
            }
            if !self.output.is_empty() && self.flush().await.is_err() {
                break (SessionEnd::IoError, false);
            }
            if let Some(end) = self.read_more().await {
                break (end, false);
            }
        };
        let (end, replied) = end;
        if let Some(reply) = end.reply().filter(|_| !replied) {
            self.shared.metrics.close_session(end.as_str());
            reply.write_to(&mut self.output);
        }
        if !self.output.is_empty() {
            let _ = self.flush().await;
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            self.stream.shutdown(),
        )
        .await;
        (end, self.messages)
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
        self.prepare_input_buffer();
        let config = &self.shared.config;
        let now = Instant::now();
        let (mut deadline, mut end) = (now + config.idle_timeout, SessionEnd::IdleTimeout);
        if self.client_name.is_none() && self.handshake_deadline <= deadline {
            deadline = self.handshake_deadline;
            end = SessionEnd::HandshakeTimeout;
        }
        if self.session_deadline <= deadline {
            deadline = self.session_deadline;
            end = SessionEnd::SessionTimeout;
        }
        // While draining, a session with no transaction open has nothing left to
        // finish; one in a transaction may complete it within the grace period.
        let between_transactions = self.envelope.is_none() && self.incoming.is_none();
        let shutdown = &self.shared.shutdown;
        tokio::select! {
            biased;
            _ = shutdown.force.cancelled() => Some(SessionEnd::Shutdown),
            _ = shutdown.draining.cancelled(), if between_transactions => Some(SessionEnd::Shutdown),
            read = timeout_at(deadline.into(), self.stream.read_buf(&mut self.input)) => match read {
                Err(_) => Some(end),
                Ok(Ok(0)) => Some(SessionEnd::PeerClosed),
                Ok(Ok(_)) => None,
                Ok(Err(_)) => Some(SessionEnd::IoError),
            },
        }
    }

    /// Compacts the input buffer and sizes it for the current phase, charging its
    /// capacity to the memory budget before anything is read into it.
    fn prepare_input_buffer(&mut self) {
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        let target = if self.incoming.is_some() {
            DATA_BUFFER
        } else {
            COMMAND_BUFFER
        };
        let before = self.input.capacity();
        if before < target {
            self.input.reserve_exact(target - self.input.len());
        } else if before > target && self.input.len() <= target / 2 {
            self.input.shrink_to(target);
        }
        let after = self.input.capacity();
        if after > before {
            self.charge.grow((after - before) as u64);
        } else {
            self.charge.shrink((before - after) as u64);
        }
    }

    /// Handles every complete command or message in the input buffer.
    async fn process_input(&mut self) -> Flow {
        loop {
            if self.incoming.is_some() {
                if !self.feed_message() {
                    return Flow::NeedInput;
                }
                let reply = self.finish_message().await;
                reply.write_to(&mut self.output);
                continue;
            }
            let rest = &self.input[self.pos..];
            let Some(lf) = memchr(b'\n', rest) else {
                if rest.len() >= MAX_COMMAND_LINE {
                    // Too long to be a command: drop what we have, answer once the
                    // line ends.
                    self.discarding_line = true;
                    self.pos = self.input.len();
                }
                return Flow::NeedInput;
            };
            let line_len = lf + 1;
            if self.discarding_line || line_len > MAX_COMMAND_LINE {
                self.discarding_line = false;
                self.pos += line_len;
                Reply::command_line_too_long().write_to(&mut self.output);
                continue;
            }
            let command = protocol::parse_command(&rest[..line_len]);
            self.pos += line_len;
            let reply = match command {
                Ok(command) => self.handle(command),
                Err(e) => Some(e.reply()),
            };
            let Some(reply) = reply else { continue };
            reply.write_to(&mut self.output);
            match reply.code {
                221 => {
                    return Flow::Close {
                        end: SessionEnd::Quit,
                        replied: true,
                    };
                }
                421 => {
                    self.shared.metrics.close_session(session_end::SHUTDOWN);
                    return Flow::Close {
                        end: SessionEnd::Shutdown,
                        replied: true,
                    };
                }
                _ => {}
            }
        }
    }

    /// Applies one command to the session state and returns its reply (`None` when
    /// the reply, multi-line, was written directly).
    fn handle(&mut self, command: Command) -> Option<Reply> {
        let config = &self.shared.config;
        let reply = match command {
            Command::Ehlo { host } => {
                protocol::write_ehlo(
                    &mut self.output,
                    &config.domain,
                    &host,
                    config.max_message_size,
                );
                self.client_name = Some(host);
                self.envelope = None;
                return None;
            }
            Command::Helo { host } => {
                let reply = Reply::new(250, "", format!("{} greets {host}", config.domain));
                self.client_name = Some(host);
                self.envelope = None;
                reply
            }
            Command::Mail { from, size } => {
                if self.client_name.is_none() {
                    return Some(Reply::bad_sequence("Send EHLO/HELO first"));
                }
                if self.envelope.is_some() {
                    return Some(Reply::bad_sequence("Nested MAIL command"));
                }
                if self.shared.shutdown.draining.is_cancelled() {
                    return Some(Reply::shutting_down());
                }
                if size.is_some_and(|s| s > config.max_message_size) {
                    self.shared.metrics.reject_message(message_rejection::SIZE);
                    return Some(Reply::message_too_big());
                }
                if self.shared.memory.is_critical() {
                    self.shared
                        .metrics
                        .reject_message(message_rejection::MEMORY_CRITICAL);
                    tracing::info!(peer = %self.peer, "transaction refused: memory critical");
                    return Some(Reply::insufficient_storage());
                }
                self.envelope = Some(Envelope {
                    mail_from: from,
                    rcpt_to: Vec::new(),
                });
                Reply::sender_ok()
            }
            Command::Rcpt { to } => {
                let Some(envelope) = self.envelope.as_mut() else {
                    return Some(Reply::bad_sequence("Need MAIL before RCPT"));
                };
                if envelope.rcpt_to.len() >= config.max_recipients {
                    return Some(Reply::too_many_recipients());
                }
                envelope.rcpt_to.push(to);
                Reply::recipient_ok()
            }
            Command::Data => match &self.envelope {
                None => Reply::bad_sequence("Need MAIL command"),
                Some(e) if e.rcpt_to.is_empty() => Reply::bad_sequence("Need RCPT command"),
                Some(_) => {
                    self.incoming = Some(Incoming {
                        reader: DataReader::new(),
                        body: Vec::new(),
                        body_charged: 0,
                        keep: self.shared.store.keeps_content(),
                        refusal: None,
                    });
                    Reply::start_data()
                }
            },
            Command::Rset => {
                self.envelope = None;
                Reply::ok()
            }
            Command::Noop => Reply::ok(),
            Command::Quit => Reply::bye(),
            Command::Vrfy => Reply::vrfy(),
            Command::Help => Reply::help(),
            Command::NotImplemented(name) => Reply::not_implemented(name),
        };
        Some(reply)
    }

    /// Feeds buffered input to the message being received. True when the final
    /// `<CRLF>.<CRLF>` was reached.
    fn feed_message(&mut self) -> bool {
        let Some(incoming) = self.incoming.as_mut() else {
            return false;
        };
        let config = &self.shared.config;
        let max_size = config.max_message_size;
        let per_connection = config.per_connection_memory_limit;
        let charge = &mut self.charge;
        let Incoming {
            reader,
            body,
            body_charged,
            keep,
            refusal,
        } = incoming;
        let mut seen = reader.size();
        let (used, done) = reader.feed(&self.input[self.pos..], |segment| {
            seen += segment.len() as u64;
            if refusal.is_some() {
                return;
            }
            let failed = if seen > max_size {
                Some(MessageRefusal::TooBig)
            } else if !*keep {
                None
            } else {
                let needed = body.len() + segment.len();
                if needed > body.capacity() {
                    let new_capacity = needed
                        .max(body.capacity() * 2)
                        .max(MIN_BODY_ALLOCATION)
                        .min(max_size as usize);
                    let extra = (new_capacity - body.capacity()) as u64;
                    if charge.bytes() + extra > per_connection {
                        Some(MessageRefusal::ConnectionMemory)
                    } else if !charge.try_grow(extra) {
                        Some(MessageRefusal::ProcessMemory)
                    } else {
                        body.reserve_exact(new_capacity - body.len());
                        *body_charged += extra;
                        body.extend_from_slice(segment);
                        None
                    }
                } else {
                    body.extend_from_slice(segment);
                    None
                }
            };
            if failed.is_some() {
                *refusal = failed;
                // The message is refused: give its memory back now, not at the end.
                *body = Vec::new();
                charge.shrink(*body_charged);
                *body_charged = 0;
            }
        });
        self.pos += used;
        done
    }

    /// Decides the one reply to a complete message and hands it to the store.
    async fn finish_message(&mut self) -> Reply {
        let envelope = self.envelope.take();
        let Some(incoming) = self.incoming.take() else {
            return Reply::storage_failed();
        };
        let metrics = &self.shared.metrics;
        let size = incoming.reader.size();
        let reply = if let Some(refusal) = incoming.refusal {
            let (reason, reply) = match refusal {
                MessageRefusal::TooBig => (message_rejection::SIZE, Reply::message_too_big()),
                MessageRefusal::ConnectionMemory => (
                    message_rejection::CONNECTION_MEMORY,
                    Reply::connection_memory_exceeded(),
                ),
                MessageRefusal::ProcessMemory => (
                    message_rejection::MEMORY_CRITICAL,
                    Reply::insufficient_storage(),
                ),
            };
            metrics.reject_message(reason);
            tracing::info!(peer = %self.peer, size, reason, "message refused");
            reply
        } else if incoming.reader.line_too_long() {
            metrics.reject_message(message_rejection::LINE_TOO_LONG);
            tracing::info!(peer = %self.peer, size, reason = "line_too_long", "message refused");
            Reply::data_line_too_long()
        } else {
            let envelope = envelope.unwrap_or(Envelope {
                mail_from: String::new(),
                rcpt_to: Vec::new(),
            });
            let message = StoredMessage {
                mail_from: envelope.mail_from,
                rcpt_to: envelope.rcpt_to,
                data: incoming.body,
                peer: self.peer,
                received_at: SystemTime::now(),
            };
            match self.shared.store.store(message).await {
                Ok(()) => {
                    metrics.messages_accepted.inc();
                    metrics.bytes_received.inc_by(size);
                    self.messages += 1;
                    tracing::debug!(peer = %self.peer, size, "message accepted");
                    Reply::message_accepted()
                }
                Err(e) => {
                    metrics.reject_message(message_rejection::STORE_ERROR);
                    tracing::error!(peer = %self.peer, error = %e, "cannot store message");
                    Reply::storage_failed()
                }
            }
        };
        self.charge.shrink(incoming.body_charged);
        reply
    }
}
