//! The SMTP dialogue of one session: its state and every decision, without I/O.
//!
//! [`Dialogue::step`] takes the next complete command or message out of the input
//! buffer and says what to do: read more, send a response (and maybe end the
//! session), or hand a message to the store. The caller ([`super::Session`]) does the
//! reading, writing and storing, so this part runs the same under a socket, a test or
//! a fuzzer.
//!
//! The input mode is one [`State`], so a new mode is one new variant: AUTH's SASL
//! exchange (its lines are responses, not commands) is `State::Sasl`. STARTTLS is
//! one [`Then`]: after its 220 the driver swaps the stream for a TLS one and the
//! dialogue starts over at [`State::Greeting`] (RFC 3207 4.2). Checking a password
//! is one [`Step`]: argon2 costs milliseconds of CPU, so the driver runs
//! [`Verification::check`] off the async threads and gives the answer back to
//! [`Dialogue::verified`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::SessionEnd;
use crate::Shared;
use crate::auth::{
    self, Credentials, LOGIN_PASSWORD_CHALLENGE, LOGIN_USER_CHALLENGE, Mechanism, SaslError,
};
use crate::data::DataReader;
use crate::input::{Expecting, InputBuffer, Line};
use crate::memory::MemoryCharge;
use crate::metrics::{auth_attempt, message_rejection, recipient_rejection};
use crate::protocol::{self, Command, Reply, Response};
use crate::store::{StoreError, StoredMessage};

/// The smallest allocation for a message body.
const MIN_BODY_ALLOCATION: usize = 4 * 1024;

/// Where the session stands; what the next input means.
#[derive(Debug)]
enum State {
    /// Connected: commands, but no transaction before EHLO/HELO.
    Greeting,
    /// Said hello, no transaction open.
    Ready,
    /// MAIL accepted: collecting recipients.
    Mail(Envelope),
    /// DATA accepted (so at least one recipient): the message content is arriving.
    Data {
        envelope: Envelope,
        message: Incoming,
    },
    /// AUTH sent a `334` challenge: the next line is the client's SASL response.
    Sasl(Sasl),
}

/// Which SASL response the server waits for.
#[derive(Debug)]
enum Sasl {
    /// PLAIN without an initial response: the whole PLAIN message.
    Plain,
    /// LOGIN: the user name.
    LoginUser,
    /// LOGIN: the password of `user`.
    LoginPassword { user: String },
}

/// The envelope of the transaction in progress.
#[derive(Debug)]
struct Envelope {
    mail_from: String,
    rcpt_to: Vec<String>,
}

/// A message being received (between 354 and the final dot).
#[derive(Debug)]
struct Incoming {
    reader: DataReader,
    content: Content,
}

/// What is kept of a message being received.
#[derive(Debug)]
enum Content {
    /// The store keeps messages: the content so far, its capacity charged.
    Kept {
        bytes: Vec<u8>,
        charge: MemoryCharge,
    },
    /// The store discards messages: only the size is counted.
    Counted,
    /// The message will be refused when it ends; the rest is read and dropped.
    Refused(MessageRefusal),
}

/// Why a message being received will be refused once its end arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageRefusal {
    TooBig,
    ConnectionMemory,
    ProcessMemory,
}

/// What the session does after sending a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Continue,
    Close(SessionEnd),
    /// Start a TLS handshake; input already buffered after the command is discarded
    /// (RFC 3207 4.2: nothing sent before the handshake may act after it), then
    /// [`Dialogue::tls_started`].
    StartTls,
}

/// The answer to one command or message: what to send, and whether the session goes
/// on afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Outcome {
    pub response: Response,
    pub then: Then,
}

impl Outcome {
    fn reply(response: impl Into<Response>) -> Self {
        Self {
            response: response.into(),
            then: Then::Continue,
        }
    }

    fn close(reply: Reply, end: SessionEnd) -> Self {
        Self {
            response: reply.into(),
            then: Then::Close(end),
        }
    }
}

/// What [`Dialogue::step`] found in the input.
#[derive(Debug)]
#[must_use]
pub enum Step {
    /// No complete command or message: read more.
    NeedInput,
    /// Send this, then go on or close.
    Answer(Outcome),
    /// A message passed every check: store it, then [`Dialogue::stored`] gives the
    /// reply.
    Deliver(Delivery),
    /// Credentials to check: run [`Verification::check`] where blocking is allowed,
    /// then [`Dialogue::verified`] gives the reply.
    Verify(Verification),
}

/// A user and password to check against the users file.
pub struct Verification {
    credentials: Arc<Credentials>,
    pub user: String,
    password: Vec<u8>,
}

impl Verification {
    /// Checks the password (blocking: argon2, unless cached). Returns the user and
    /// whether the password is right.
    pub fn check(self) -> (String, bool) {
        let ok = self.credentials.verify(&self.user, &self.password);
        (self.user, ok)
    }
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verification")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A message to store, with what [`Dialogue::stored`] needs afterwards.
#[derive(Debug)]
pub struct Delivery {
    pub message: StoredMessage,
    pub receipt: Receipt,
}

/// Proof that a message was handed to the store; holds the message's memory charge
/// until the store is done with it.
#[derive(Debug)]
pub struct Receipt {
    size: u64,
    _charge: Option<MemoryCharge>,
}

/// One session's SMTP state machine.
pub struct Dialogue {
    shared: Arc<Shared>,
    peer: SocketAddr,
    state: State,
    /// Messages accepted so far.
    messages: u64,
    /// TLS is up on this connection (after STARTTLS, or from the start on the implicit
    /// TLS port).
    tls_active: bool,
    /// The user, once AUTH succeeded.
    authenticated: Option<String>,
}

impl Dialogue {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        Self {
            shared,
            peer,
            state: State::Greeting,
            messages: 0,
            tls_active: false,
            authenticated: None,
        }
    }

    /// TLS is now up: the dialogue starts over, as RFC 3207 4.2 requires ("the server
    /// MUST discard any knowledge obtained from the client ... not obtained from the
    /// TLS negotiation itself"): the client must say EHLO again.
    pub fn tls_started(&mut self) {
        self.state = State::Greeting;
        self.tls_active = true;
        self.authenticated = None;
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The banner sent on connect.
    pub fn greeting(&self) -> Response {
        protocol::greeting(&self.shared.config.domain).into()
    }

    /// What the next bytes from the client are.
    pub fn expecting(&self) -> Expecting {
        match self.state {
            State::Data { .. } => Expecting::MessageContent,
            State::Greeting | State::Ready | State::Mail(_) | State::Sasl(_) => Expecting::Commands,
        }
    }

    /// True once the client has said EHLO/HELO.
    pub fn said_hello(&self) -> bool {
        !matches!(self.state, State::Greeting)
    }

    /// True while a transaction is open (from MAIL to the end of its message).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Mail(_) | State::Data { .. })
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Handles the next complete command or message in `input`.
    pub fn step(&mut self, input: &mut InputBuffer) -> Step {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::Data { envelope, message } => self.receive_message(envelope, message, input),
            State::Sasl(sasl) => self.sasl_response(sasl, input),
            commands => {
                self.state = commands;
                self.next_command(input)
            }
        }
    }

    fn next_command(&mut self, input: &mut InputBuffer) -> Step {
        let outcome = match input.next_line() {
            None => return Step::NeedInput,
            Some(Line::TooLong) => Outcome::reply(Reply::command_line_too_long()),
            Some(Line::Command(line)) => match protocol::parse_command(line) {
                Ok(Command::Auth {
                    mechanism,
                    initial_response,
                }) => return self.auth(mechanism, initial_response),
                Ok(command) => self.handle(command),
                Err(e) => Outcome::reply(e.reply()),
            },
        };
        Step::Answer(outcome)
    }

    /// The reply to a message once the store has taken it (or failed to).
    pub fn stored(&mut self, receipt: Receipt, result: Result<(), StoreError>) -> Outcome {
        let size = receipt.size;
        let metrics = &self.shared.metrics;
        match result {
            Ok(()) => {
                metrics.messages_accepted.inc();
                metrics.bytes_received.inc_by(size);
                self.messages += 1;
                tracing::debug!(peer = %self.peer, size, "message accepted");
                Outcome::reply(Reply::message_accepted())
            }
            Err(e) => {
                metrics.reject_message(message_rejection::STORE_ERROR);
                tracing::error!(peer = %self.peer, error = %e, "cannot store message");
                Outcome::reply(Reply::storage_failed())
            }
        }
    }

    /// Applies one command to the state and returns its answer.
    fn handle(&mut self, command: Command) -> Outcome {
        let config = &self.shared.config;
        match command {
            Command::Ehlo { host } => {
                self.state = State::Ready;
                let starttls = self.shared.tls.is_some() && !self.tls_active;
                Outcome::reply(
                    Response::ehlo(&config.domain, &host, config.max_message_size)
                        .offering(starttls, self.offers_auth()),
                )
            }
            Command::Helo { host } => {
                self.state = State::Ready;
                Outcome::reply(Reply::new(
                    250,
                    "",
                    format!("{} greets {host}", config.domain),
                ))
            }
            Command::Mail { from, size } => self.mail(from, size),
            Command::Rcpt { to } => Outcome::reply(self.rcpt(to)),
            Command::Data => Outcome::reply(self.data()),
            Command::Rset => {
                if self.in_transaction() {
                    self.state = State::Ready;
                }
                Outcome::reply(Reply::ok())
            }
            Command::Noop => Outcome::reply(Reply::ok()),
            Command::Quit => Outcome::close(Reply::bye(), SessionEnd::Quit),
            Command::Vrfy => Outcome::reply(Reply::vrfy()),
            Command::Help => Outcome::reply(Reply::help()),
            Command::StartTls => self.start_tls(),
            // Not reached: `next_command` hands AUTH to `auth`, whose answer may first
            // need a password check (a `Step`, not an `Outcome`).
            Command::Auth { .. } => Outcome::reply(Reply::bad_sequence("AUTH out of sequence")),
            Command::NotImplemented(name) => Outcome::reply(Reply::not_implemented(name)),
        }
    }

    /// STARTTLS: offered once, outside a transaction, when a certificate is configured.
    fn start_tls(&mut self) -> Outcome {
        if self.shared.tls.is_none() {
            return Outcome::reply(Reply::not_implemented("STARTTLS"));
        }
        if self.tls_active {
            return Outcome::reply(Reply::bad_sequence("TLS already active"));
        }
        if self.in_transaction() {
            return Outcome::reply(Reply::bad_sequence("Mail transaction in progress"));
        }
        Outcome {
            response: Reply::ready_to_start_tls().into(),
            then: Then::StartTls,
        }
    }

    /// AUTH PLAIN LOGIN is offered: users are configured, and TLS is up unless
    /// plaintext AUTH is allowed.
    fn offers_auth(&self) -> bool {
        self.shared.credentials.is_some()
            && (self.tls_active || self.shared.config.auth_allow_plaintext)
    }

    /// AUTH (RFC 4954 4): the checks in the RFC's order of precedence, then the first
    /// step of the mechanism.
    fn auth(&mut self, mechanism: Option<Mechanism>, initial: Option<String>) -> Step {
        let answer = |outcome| Step::Answer(outcome);
        let Some(credentials) = self.shared.credentials.clone() else {
            return answer(Outcome::reply(Reply::not_implemented("AUTH")));
        };
        match self.state {
            State::Greeting => {
                return answer(Outcome::reply(Reply::bad_sequence("Send EHLO first")));
            }
            State::Mail(_) | State::Data { .. } => {
                return answer(Outcome::reply(Reply::bad_sequence(
                    "Mail transaction in progress",
                )));
            }
            State::Ready | State::Sasl(_) => {}
        }
        if self.authenticated.is_some() {
            return answer(Outcome::reply(Reply::bad_sequence("Already authenticated")));
        }
        if !self.offers_auth() {
            return answer(Outcome::reply(Reply::encryption_required()));
        }
        if self.shared.auth_guard.is_blocked(self.peer.ip()) {
            self.shared.metrics.auth_attempt(auth_attempt::BLOCKED);
            tracing::info!(peer = %self.peer, "AUTH refused: too many failures from this address");
            return answer(Outcome::close(
                Reply::auth_blocked(),
                SessionEnd::AuthFailures,
            ));
        }
        let Some(mechanism) = mechanism else {
            return answer(Outcome::reply(Reply::auth_unknown_mechanism()));
        };
        match (mechanism, initial) {
            (Mechanism::Plain, None) => answer(self.challenge("", Sasl::Plain)),
            (Mechanism::Plain, Some(response)) => match auth::decode_plain(&response) {
                Ok(plain) => self.verify(&credentials, plain.authzid, plain.user, plain.password),
                Err(e) => answer(self.malformed(&e)),
            },
            (Mechanism::Login, None) => {
                answer(self.challenge(LOGIN_USER_CHALLENGE, Sasl::LoginUser))
            }
            (Mechanism::Login, Some(response)) => answer(self.login_user(&response)),
        }
    }

    fn challenge(&mut self, text: &'static str, next: Sasl) -> Outcome {
        self.state = State::Sasl(next);
        Outcome::reply(Reply::sasl_challenge(text))
    }

    /// The client's line after a `334`.
    fn sasl_response(&mut self, sasl: Sasl, input: &mut InputBuffer) -> Step {
        let line = match input.next_line() {
            None => {
                self.state = State::Sasl(sasl);
                return Step::NeedInput;
            }
            Some(Line::TooLong) => {
                self.state = State::Ready;
                return Step::Answer(Outcome::reply(Reply::command_line_too_long()));
            }
            Some(Line::Command(line)) => line,
        };
        // Back to commands whatever the response says; a next challenge sets it again.
        self.state = State::Ready;
        let Some(response) = std::str::from_utf8(line)
            .ok()
            .map(|l| l.trim_end_matches(['\r', '\n']))
        else {
            return Step::Answer(self.malformed(&SaslError::NotUtf8));
        };
        let Some(credentials) = self.shared.credentials.clone() else {
            return Step::Answer(Outcome::reply(Reply::not_implemented("AUTH")));
        };
        match sasl {
            Sasl::Plain => match auth::decode_plain(response) {
                Ok(plain) => self.verify(&credentials, plain.authzid, plain.user, plain.password),
                Err(e) => Step::Answer(self.malformed(&e)),
            },
            Sasl::LoginUser => Step::Answer(self.login_user(response)),
            Sasl::LoginPassword { user } => match auth::decode_base64(response) {
                Ok(password) => self.verify(&credentials, String::new(), user, password),
                Err(e) => Step::Answer(self.malformed(&e)),
            },
        }
    }

    /// LOGIN's user name (initial response or answer to `Username:`).
    fn login_user(&mut self, response: &str) -> Outcome {
        match auth::decode_login_user(response) {
            Ok(user) => self.challenge(LOGIN_PASSWORD_CHALLENGE, Sasl::LoginPassword { user }),
            Err(e) => self.malformed(&e),
        }
    }

    /// A PLAIN message or LOGIN password to check. Acting as another identity (a
    /// PLAIN authzid other than the user) is not supported and fails like a wrong
    /// password.
    fn verify(
        &mut self,
        credentials: &Arc<Credentials>,
        authzid: String,
        user: String,
        password: Vec<u8>,
    ) -> Step {
        if !authzid.is_empty() && authzid != user {
            return Step::Answer(self.verified(user, false));
        }
        Step::Verify(Verification {
            credentials: credentials.clone(),
            user,
            password,
        })
    }

    /// The reply once [`Verification::check`] has run.
    pub fn verified(&mut self, user: String, ok: bool) -> Outcome {
        let shared = &self.shared;
        if ok {
            shared.metrics.auth_attempt(auth_attempt::SUCCESS);
            tracing::info!(peer = %self.peer, user, "AUTH succeeded");
            self.authenticated = Some(user);
            return Outcome::reply(Reply::auth_succeeded());
        }
        shared.metrics.auth_attempt(auth_attempt::FAILURE);
        tracing::info!(peer = %self.peer, user, "AUTH failed");
        if shared.auth_guard.record_failure(self.peer.ip()) {
            tracing::warn!(peer = %self.peer, "too many AUTH failures: address blocked");
            return Outcome::close(Reply::auth_blocked(), SessionEnd::AuthFailures);
        }
        Outcome::reply(Reply::auth_invalid())
    }

    /// A response that cannot be decoded, or `*`: 501, and the exchange is over.
    fn malformed(&mut self, error: &SaslError) -> Outcome {
        self.state = State::Ready;
        self.shared.metrics.auth_attempt(auth_attempt::MALFORMED);
        match error {
            SaslError::Cancelled => Outcome::reply(Reply::auth_cancelled()),
            _ => Outcome::reply(Reply::auth_malformed()),
        }
    }

    /// MAIL: the limits that apply to a whole transaction are checked here.
    fn mail(&mut self, from: String, size: Option<u64>) -> Outcome {
        let shared = &self.shared;
        match self.state {
            State::Greeting => return Outcome::reply(Reply::bad_sequence("Send EHLO/HELO first")),
            State::Mail(_) | State::Data { .. } => {
                return Outcome::reply(Reply::bad_sequence("Nested MAIL command"));
            }
            State::Ready | State::Sasl(_) => {}
        }
        if shared.shutdown.draining.is_cancelled() {
            return Outcome::close(Reply::shutting_down(), SessionEnd::Shutdown);
        }
        if shared.config.require_tls && !self.tls_active {
            return Outcome::reply(Reply::tls_required());
        }
        if shared.config.require_auth && self.authenticated.is_none() {
            return Outcome::reply(Reply::auth_required());
        }
        if size.is_some_and(|s| s > shared.config.max_message_size) {
            shared.metrics.reject_message(message_rejection::SIZE);
            return Outcome::reply(Reply::message_too_big());
        }
        if shared.memory.is_critical() {
            shared
                .metrics
                .reject_message(message_rejection::MEMORY_CRITICAL);
            tracing::info!(peer = %self.peer, "transaction refused: memory critical");
            return Outcome::reply(Reply::insufficient_storage());
        }
        self.state = State::Mail(Envelope {
            mail_from: from,
            rcpt_to: Vec::new(),
        });
        Outcome::reply(Reply::sender_ok())
    }

    fn rcpt(&mut self, to: String) -> Reply {
        let State::Mail(envelope) = &mut self.state else {
            return Reply::bad_sequence("Need MAIL before RCPT");
        };
        if envelope.rcpt_to.len() >= self.shared.config.max_recipients {
            self.shared
                .metrics
                .reject_recipient(recipient_rejection::MAX_RECIPIENTS);
            return Reply::too_many_recipients();
        }
        envelope.rcpt_to.push(to);
        Reply::recipient_ok()
    }

    fn data(&mut self) -> Reply {
        let envelope = match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(envelope) if !envelope.rcpt_to.is_empty() => envelope,
            other => {
                let reply = match other {
                    State::Mail(_) => Reply::bad_sequence("Need RCPT command"),
                    _ => Reply::bad_sequence("Need MAIL command"),
                };
                self.state = other;
                return reply;
            }
        };
        let content = if self.shared.store.keeps_content() {
            Content::Kept {
                bytes: Vec::new(),
                charge: MemoryCharge::new(self.shared.memory.clone()),
            }
        } else {
            Content::Counted
        };
        self.state = State::Data {
            envelope,
            message: Incoming {
                reader: DataReader::new(),
                content,
            },
        };
        Reply::start_data()
    }

    /// Feeds buffered input to the message being received; at its final dot, decides
    /// what becomes of it.
    fn receive_message(
        &mut self,
        envelope: Envelope,
        mut message: Incoming,
        input: &mut InputBuffer,
    ) -> Step {
        let (used, done) = message.feed(input.pending(), input.charged(), &self.shared);
        input.consume(used);
        if !done {
            self.state = State::Data { envelope, message };
            return Step::NeedInput;
        }
        let size = message.reader.size();
        let (reason, reply) = match message.content {
            Content::Refused(refusal) => refusal.reason_and_reply(),
            _ if message.reader.line_too_long() => (
                message_rejection::LINE_TOO_LONG,
                Reply::data_line_too_long(),
            ),
            Content::Kept { bytes, charge } => {
                return self.deliver(envelope, bytes, Some(charge), size);
            }
            Content::Counted => return self.deliver(envelope, Vec::new(), None, size),
        };
        self.shared.metrics.reject_message(reason);
        tracing::info!(peer = %self.peer, size, reason, "message refused");
        Step::Answer(Outcome::reply(reply))
    }

    fn deliver(
        &self,
        envelope: Envelope,
        data: Vec<u8>,
        charge: Option<MemoryCharge>,
        size: u64,
    ) -> Step {
        Step::Deliver(Delivery {
            message: StoredMessage {
                mail_from: envelope.mail_from,
                rcpt_to: envelope.rcpt_to,
                data,
                peer: self.peer,
                received_at: SystemTime::now(),
            },
            receipt: Receipt {
                size,
                _charge: charge,
            },
        })
    }
}

impl MessageRefusal {
    /// The metrics label and the reply.
    fn reason_and_reply(self) -> (&'static str, Reply) {
        match self {
            MessageRefusal::TooBig => (message_rejection::SIZE, Reply::message_too_big()),
            MessageRefusal::ConnectionMemory => (
                message_rejection::CONNECTION_MEMORY,
                Reply::connection_memory_exceeded(),
            ),
            MessageRefusal::ProcessMemory => (
                message_rejection::MEMORY_CRITICAL,
                Reply::insufficient_storage(),
            ),
        }
    }
}

impl Incoming {
    /// Feeds buffered input to the message. Returns the bytes used and whether the
    /// final `<CRLF>.<CRLF>` was reached. `input_charged` is what the session's input
    /// buffer holds against the per-connection memory limit.
    fn feed(&mut self, input: &[u8], input_charged: u64, shared: &Shared) -> (usize, bool) {
        let max_size = shared.config.max_message_size;
        let per_connection = shared.config.per_connection_memory_limit;
        let Incoming { reader, content } = self;
        let mut seen = reader.size();
        reader.feed(input, |segment| {
            seen += segment.len() as u64;
            let refusal = match content {
                Content::Refused(_) => return,
                _ if seen > max_size => MessageRefusal::TooBig,
                Content::Counted => return,
                Content::Kept { bytes, charge } => {
                    match keep(
                        bytes,
                        charge,
                        segment,
                        max_size,
                        per_connection,
                        input_charged,
                    ) {
                        Ok(()) => return,
                        Err(refusal) => refusal,
                    }
                }
            };
            // Replacing the content drops the body and its charge: a refused message
            // gives its memory back now, not at the end.
            *content = Content::Refused(refusal);
        })
    }
}

/// Appends `segment` to a kept message body, charging any growth first.
fn keep(
    body: &mut Vec<u8>,
    charge: &mut MemoryCharge,
    segment: &[u8],
    max_size: u64,
    per_connection: u64,
    input_charged: u64,
) -> Result<(), MessageRefusal> {
    let needed = body.len() + segment.len();
    if needed > body.capacity() {
        let new_capacity = needed
            .max(body.capacity() * 2)
            .max(MIN_BODY_ALLOCATION)
            .min(usize::try_from(max_size).unwrap_or(usize::MAX))
            .max(needed);
        let extra = (new_capacity - body.capacity()) as u64;
        if input_charged + charge.bytes() + extra > per_connection {
            return Err(MessageRefusal::ConnectionMemory);
        }
        if !charge.try_grow(extra) {
            return Err(MessageRefusal::ProcessMemory);
        }
        body.reserve_exact(new_capacity - body.len());
    }
    body.extend_from_slice(segment);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::{Config, StoreKind};
    use crate::memory::MemoryBudget;

    const KIB: u64 = 1024;

    fn dialogue(configure: impl FnOnce(&mut Config)) -> (Dialogue, InputBuffer, Arc<Shared>) {
        let mut config = Config {
            store: StoreKind::Memory,
            ..Config::for_local_testing()
        };
        configure(&mut config);
        let memory = Arc::new(MemoryBudget::new(1 << 40, 1.0, 1.0));
        let shared = crate::fuzzing::shared(config, memory.clone());
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 2525));
        let dialogue = Dialogue::new(shared.clone(), peer);
        (dialogue, InputBuffer::new(memory), shared)
    }

    /// Sends `bytes` as reads would and returns every answer's code.
    fn send(dialogue: &mut Dialogue, input: &mut InputBuffer, mut bytes: &[u8]) -> Vec<u16> {
        let mut codes = Vec::new();
        loop {
            loop {
                let outcome = match dialogue.step(input) {
                    Step::NeedInput => break,
                    Step::Answer(outcome) => outcome,
                    Step::Deliver(delivery) => dialogue.stored(delivery.receipt, Ok(())),
                    Step::Verify(verification) => {
                        let (user, ok) = verification.check();
                        dialogue.verified(user, ok)
                    }
                };
                codes.push(outcome.response.code());
            }
            if bytes.is_empty() {
                return codes;
            }
            input.prepare(dialogue.expecting());
            bytes = &bytes[input.extend_from_slice(bytes)..];
        }
    }

    /// A dialogue with AUTH configured: user `alice`, password `secret`.
    fn auth_dialogue(
        configure: impl FnOnce(&mut Config),
    ) -> (Dialogue, InputBuffer, Arc<Shared>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, "# test users\nalice:secret\n").unwrap();
        let (_, input, mut shared) = dialogue(|c| {
            c.auth_users = Some(users.clone());
            configure(c);
        });
        let credentials = Credentials::load(&users).unwrap();
        Arc::get_mut(&mut shared)
            .expect("not shared yet")
            .credentials = Some(Arc::new(credentials));
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 2525));
        (Dialogue::new(shared.clone(), peer), input, shared, dir)
    }

    /// The EHLO reply as sent.
    fn ehlo_text(d: &mut Dialogue, input: &mut InputBuffer) -> String {
        input.prepare(d.expecting());
        let _ = input.extend_from_slice(b"EHLO c\r\n");
        let Step::Answer(outcome) = d.step(input) else {
            panic!("EHLO is answered");
        };
        let mut out = Vec::new();
        outcome.response.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn auth_exchanges_get_the_rfc_4954_replies() {
        let plain_ok = b64(b"\0alice\0secret");
        let plain_bad = b64(b"\0alice\0wrong");
        let (alice, secret, wrong) = (b64(b"alice"), b64(b"secret"), b64(b"wrong"));
        let rows: Vec<(String, Vec<u16>)> = vec![
            (format!("AUTH PLAIN {plain_ok}\r\n"), vec![235]),
            (format!("AUTH PLAIN\r\n{plain_ok}\r\n"), vec![334, 235]),
            (format!("AUTH plain {plain_bad}\r\n"), vec![535]),
            (
                format!("AUTH LOGIN\r\n{alice}\r\n{secret}\r\n"),
                vec![334, 334, 235],
            ),
            (
                format!("AUTH LOGIN {alice}\r\n{secret}\r\n"),
                vec![334, 235],
            ),
            (format!("AUTH LOGIN {alice}\r\n{wrong}\r\n"), vec![334, 535]),
            ("AUTH LOGIN\r\n*\r\n".into(), vec![334, 501]),
            ("AUTH PLAIN\r\n*\r\n".into(), vec![334, 501]),
            ("AUTH PLAIN !!notbase64\r\n".into(), vec![501]),
            (
                format!("AUTH PLAIN {}\r\n", b64(b"alice\0secret")),
                vec![501],
            ),
            (
                format!("AUTH PLAIN {}\r\n", b64(b"bob\0alice\0secret")),
                vec![535],
            ),
            ("AUTH CRAM-MD5\r\n".into(), vec![504]),
            ("AUTH\r\n".into(), vec![501]),
            // Pipelined: the check happens in order, then the next command.
            (
                format!("AUTH PLAIN {plain_ok}\r\nMAIL FROM:<a@b>\r\n"),
                vec![235, 250],
            ),
            (
                format!("AUTH PLAIN {plain_ok}\r\nAUTH PLAIN {plain_ok}\r\n"),
                vec![235, 503],
            ),
            (
                format!("MAIL FROM:<a@b>\r\nAUTH PLAIN {plain_ok}\r\n"),
                vec![250, 503],
            ),
        ];
        for (input_text, expected) in rows {
            let (mut d, mut input, _, _dir) = auth_dialogue(|c| c.auth_allow_plaintext = true);
            assert_eq!(send(&mut d, &mut input, b"EHLO c\r\n"), [250]);
            assert_eq!(
                send(&mut d, &mut input, input_text.as_bytes()),
                expected,
                "{input_text:?}"
            );
        }
    }

    #[test]
    fn auth_needs_ehlo_and_tls_unless_plaintext_is_allowed_and_is_offered_accordingly() {
        let (mut d, mut input, shared, _dir) = auth_dialogue(|_| {});
        let plain_ok = format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0secret"));
        assert_eq!(send(&mut d, &mut input, plain_ok.as_bytes()), [503]);
        assert!(!ehlo_text(&mut d, &mut input).contains("AUTH"));
        assert_eq!(send(&mut d, &mut input, plain_ok.as_bytes()), [538]);
        d.tls_started();
        assert!(ehlo_text(&mut d, &mut input).contains("250-AUTH PLAIN LOGIN\r\n"));
        assert_eq!(send(&mut d, &mut input, plain_ok.as_bytes()), [235]);
        assert_eq!(shared.stats().auth["success"], 1);
    }

    #[test]
    fn require_auth_refuses_mail_until_auth_succeeds() {
        let (mut d, mut input, _, _dir) = auth_dialogue(|c| {
            c.auth_allow_plaintext = true;
            c.require_auth = true;
        });
        assert_eq!(
            send(&mut d, &mut input, b"EHLO c\r\nMAIL FROM:<a@b>\r\n"),
            [250, 530]
        );
        let plain_ok = format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0secret"));
        assert_eq!(send(&mut d, &mut input, plain_ok.as_bytes()), [235]);
        assert_eq!(send(&mut d, &mut input, b"MAIL FROM:<a@b>\r\n"), [250]);
    }

    #[test]
    fn the_failure_that_reaches_auth_max_failures_closes_with_421_and_later_auth_is_refused() {
        let (mut d, mut input, shared, _dir) = auth_dialogue(|c| {
            c.auth_allow_plaintext = true;
            c.auth_max_failures = 2;
        });
        let bad = format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0nope"));
        assert_eq!(send(&mut d, &mut input, b"EHLO c\r\n"), [250]);
        assert_eq!(send(&mut d, &mut input, bad.as_bytes()), [535]);
        input.prepare(d.expecting());
        let _ = input.extend_from_slice(bad.as_bytes());
        let Step::Verify(v) = d.step(&mut input) else {
            panic!("a password to check");
        };
        let (user, ok) = v.check();
        let outcome = d.verified(user, ok);
        assert_eq!(outcome.response.code(), 421);
        assert_eq!(outcome.then, Then::Close(SessionEnd::AuthFailures));
        // Another session from the same address.
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 2526));
        let mut other = Dialogue::new(shared.clone(), peer);
        let mut input = InputBuffer::new(shared.memory.clone());
        let good = format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0secret"));
        assert_eq!(send(&mut other, &mut input, b"EHLO c\r\n"), [250]);
        assert_eq!(send(&mut other, &mut input, good.as_bytes()), [421]);
        let auth = shared.stats().auth;
        assert_eq!(
            (auth["failure"], auth["blocked"], auth["success"]),
            (2, 1, 0)
        );
    }

    #[test]
    fn a_message_refused_for_connection_memory_gives_its_memory_back_before_it_ends() {
        let (mut d, mut input, shared) = dialogue(|c| c.per_connection_memory_limit = 80 * KIB);
        let start = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
        assert_eq!(send(&mut d, &mut input, start), [250, 250, 250, 354]);
        // 64 KiB of input buffer leave 16 KiB for the body: 40 KB cannot be kept.
        let body = b"x".repeat(76).into_iter().chain(*b"\r\n");
        let body: Vec<u8> = body.cycle().take(78 * 525).collect();
        assert_eq!(send(&mut d, &mut input, &body), Vec::<u16>::new());
        assert!(d.in_transaction());
        assert_eq!(shared.memory.accounted(), input.charged(), "body released");
        assert_eq!(send(&mut d, &mut input, b".\r\n"), [552]);
        assert_eq!(shared.stats().messages_rejected["connection_memory"], 1);
    }

    #[test]
    fn mail_while_draining_answers_421_and_ends_the_session() {
        let (mut d, mut input, shared) = dialogue(|_| {});
        assert_eq!(send(&mut d, &mut input, b"EHLO c\r\n"), [250]);
        shared.shutdown.draining.cancel();
        input.prepare(d.expecting());
        let _ = input.extend_from_slice(b"MAIL FROM:<a@b>\r\nNOOP\r\n");
        let Step::Answer(outcome) = d.step(&mut input) else {
            panic!("MAIL is answered");
        };
        assert_eq!(outcome.response.code(), 421);
        assert_eq!(outcome.then, Then::Close(SessionEnd::Shutdown));
    }

    #[test]
    fn only_quit_and_a_refusal_while_draining_end_the_session() {
        let (mut d, mut input, _) = dialogue(|_| {});
        let all = b"HELO c\r\nEHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\nNOOP\r\n\
            VRFY x\r\nHELP\r\nEXPN x\r\nFROB\r\nDATA\r\n";
        input.prepare(d.expecting());
        let _ = input.extend_from_slice(all);
        let mut answers = 0;
        while let Step::Answer(outcome) = d.step(&mut input) {
            assert_eq!(outcome.then, Then::Continue, "{outcome:?}");
            answers += 1;
        }
        assert_eq!(answers, 11);
        let _ = input.extend_from_slice(b"QUIT\r\n");
        let Step::Answer(outcome) = d.step(&mut input) else {
            panic!("QUIT is answered");
        };
        assert_eq!(outcome.then, Then::Close(SessionEnd::Quit));
    }
}
