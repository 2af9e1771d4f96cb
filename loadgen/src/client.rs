//! One SMTP client session, timed phase by phase.
//!
//! Written by hand rather than with lettre's SMTP transport because every phase
//! (connect, banner, EHLO, STARTTLS and the handshake, AUTH, MAIL, RCPT, DATA,
//! end-of-data, QUIT) must be timed on its own, pipelining must be optional, and
//! no per-message allocation may happen on the hot path. Replies are parsed by
//! their three-digit code (RFC 5321 4.2); the text is only looked at in the EHLO
//! reply, for the extensions the client uses.
//!
//! The protocol is written once, in [`SmtpConnection`], generic over the stream;
//! TLS is a layer under it ([`crate::tls`]), put in after the connect (implicit
//! TLS) or after STARTTLS.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use report::Phase;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::auth::Login;
use crate::cli::AuthMechanism;
use crate::source_addrs::connect_from;
use crate::tls::{Handshake, TlsClient, TlsStart};

/// Longest reply line we accept (RFC 5321 4.5.3.1.5: 512 octets; be lenient).
const MAX_REPLY_LINE: u64 = 4096;
/// Most lines in one multiline reply (EHLO lists a dozen extensions).
const MAX_REPLY_LINES: usize = 256;
/// Writes up to this size are gathered before going out; a 1 MiB body bypasses it.
const WRITE_BUFFER: usize = 64 * 1024;
/// After QUIT's 221, how long we wait for the server to close first, so the socket's
/// TIME_WAIT lands on the server side and a long run does not exhaust local ports.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

/// Duration of each phase a message went through, microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimings(pub [Option<u64>; Phase::COUNT]);

impl PhaseTimings {
    fn set(&mut self, phase: Phase, since: Instant) -> Instant {
        let now = Instant::now();
        self.0[phase.index()] = Some(micros(now - since));
        now
    }

    /// Adds the time since `since` to `phase` (the two EHLOs of a STARTTLS session).
    fn add(&mut self, phase: Phase, since: Instant) {
        let d = micros(since.elapsed());
        let slot = &mut self.0[phase.index()];
        *slot = Some(slot.unwrap_or(0).saturating_add(d));
    }

    /// How long `phase` took, if it got its reply.
    pub fn get(&self, phase: Phase) -> Option<u64> {
        self.0[phase.index()]
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Why a message did not get its 250.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server answered with this (non-success) code.
    Reply(u16),
    ConnectionRefused,
    ConnectionReset,
    /// The server closed the connection without a reply.
    ConnectionClosed,
    Timeout,
    /// A reply we could not parse.
    Protocol,
    /// Any other socket error (for example: no local port left).
    Io,
    /// Still running when the run's drain time ran out.
    Aborted,
    /// TLS was asked for and could not be set up.
    Tls(TlsFailure),
}

/// Why a session asked to use TLS could not: the detail of a `tls:<detail>` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsFailure {
    /// `--tls starttls`, and the EHLO reply did not advertise STARTTLS: the
    /// message fails rather than go on in plaintext.
    NotOffered,
    /// The server's certificate did not check out (unknown issuer, wrong name,
    /// expired).
    Certificate,
    /// Any other failure during the handshake (an alert, a reset, no common
    /// protocol version or cipher suite).
    Handshake,
    /// `--timeout` ran out during the handshake.
    Timeout,
}

impl TlsFailure {
    pub const fn as_str(self) -> &'static str {
        match self {
            TlsFailure::NotOffered => "not_offered",
            TlsFailure::Certificate => "certificate",
            TlsFailure::Handshake => "handshake",
            TlsFailure::Timeout => "timeout",
        }
    }
}

impl FailureKind {
    /// The class of a failure other than a reply, the first half of its
    /// `<class>:<phase>` key.
    fn class(self) -> &'static str {
        match self {
            FailureKind::Reply(_) => "reply",
            FailureKind::ConnectionRefused => "refused",
            FailureKind::ConnectionReset => "reset",
            FailureKind::ConnectionClosed => "closed",
            FailureKind::Timeout => "timeout",
            FailureKind::Protocol => "protocol",
            FailureKind::Io => "io",
            FailureKind::Aborted => "aborted",
            FailureKind::Tls(_) => "tls",
        }
    }

    /// A few words for a person.
    pub fn describe(self) -> String {
        match self {
            FailureKind::Reply(c) => format!("reply {c}"),
            FailureKind::ConnectionRefused => "connection refused".into(),
            FailureKind::ConnectionReset => "connection reset".into(),
            FailureKind::ConnectionClosed => "connection closed without a reply".into(),
            FailureKind::Timeout => "timed out".into(),
            FailureKind::Protocol => "malformed reply".into(),
            FailureKind::Io => "socket error".into(),
            FailureKind::Aborted => "aborted".into(),
            FailureKind::Tls(TlsFailure::NotOffered) => "STARTTLS not offered".into(),
            FailureKind::Tls(TlsFailure::Certificate) => "TLS certificate not accepted".into(),
            FailureKind::Tls(TlsFailure::Handshake) => "TLS handshake failed".into(),
            FailureKind::Tls(TlsFailure::Timeout) => "TLS handshake timed out".into(),
        }
    }

    /// Counted in `connection_errors`: the connection failed, not the server's logic.
    pub fn is_connection_error(self) -> bool {
        matches!(
            self,
            FailureKind::ConnectionRefused
                | FailureKind::ConnectionReset
                | FailureKind::ConnectionClosed
                | FailureKind::Io
        )
    }

    /// Counted in `timeouts`: an operation hit `--timeout`, the handshake included.
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            FailureKind::Timeout | FailureKind::Tls(TlsFailure::Timeout)
        )
    }

    fn from_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => FailureKind::ConnectionRefused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                FailureKind::ConnectionReset
            }
            K::UnexpectedEof => FailureKind::ConnectionClosed,
            K::TimedOut => FailureKind::Timeout,
            _ => FailureKind::Io,
        }
    }
}

/// A key of `error_breakdown`, kept allocation-free until the end: a reply code
/// (`421`), a failure class and the phase it happened in (`timeout:banner`,
/// `refused:connect`), so a stalled accept queue and a slow disk read apart, or
/// a TLS failure by its detail (`tls:certificate`), whose phase is always `tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKey {
    Code(u16),
    Class(&'static str, Phase),
    Tls(TlsFailure),
}

impl std::fmt::Display for ErrorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKey::Code(c) => write!(f, "{c}"),
            ErrorKey::Class(class, phase) => write!(f, "{class}:{phase}"),
            ErrorKey::Tls(detail) => write!(f, "tls:{}", detail.as_str()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub phase: Phase,
    pub kind: FailureKind,
}

impl Failure {
    /// The `error_breakdown` key: the reply code, `tls:<detail>` or
    /// `<class>:<phase>`.
    pub fn key(&self) -> ErrorKey {
        match self.kind {
            FailureKind::Reply(c) => ErrorKey::Code(c),
            FailureKind::Tls(detail) => ErrorKey::Tls(detail),
            kind => ErrorKey::Class(kind.class(), self.phase),
        }
    }

    /// The connection cannot be used after this failure.
    pub fn kills_connection(&self) -> bool {
        !matches!(self.kind, FailureKind::Reply(c) if c != 421)
    }
}

/// What every connection of a run is opened with (from the flags).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub helo: String,
    pub from: String,
    pub recipients: Vec<String>,
    pub timeout: Duration,
    pub pipelining: bool,
}

/// The command lines a connection sends, built once per run (and message size)
/// so the hot path only copies bytes: `EHLO`, `MAIL FROM` with `SIZE=`, the
/// `RCPT TO`s.
#[derive(Debug, Clone)]
pub struct PreparedCommands {
    ehlo: Vec<u8>,
    mail: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
}

impl PreparedCommands {
    pub fn new(s: &ClientSettings, message_size: Option<u64>) -> Self {
        let mail = match message_size {
            // RFC 1870: declare the size so a server can refuse early.
            Some(n) => format!("MAIL FROM:<{}> SIZE={n}\r\n", s.from),
            None => format!("MAIL FROM:<{}>\r\n", s.from),
        };
        PreparedCommands {
            ehlo: format!("EHLO {}\r\n", s.helo).into_bytes(),
            mail: mail.into_bytes(),
            rcpts: s
                .recipients
                .iter()
                .map(|r| format!("RCPT TO:<{r}>\r\n").into_bytes())
                .collect(),
        }
    }
}

/// What the server's EHLO reply advertised, of what the client uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
}

impl Extensions {
    /// Notes what one line of an EHLO reply (`250-AUTH PLAIN LOGIN\r\n`)
    /// advertises. The keyword is the first word after the code (RFC 5321
    /// 4.1.1.1); `AUTH=` is the form some old clients need, listed by some servers.
    fn note(&mut self, line: &[u8]) {
        let Some(text) = line.get(4..) else { return };
        let mut words = text
            .split(|b| b.is_ascii_whitespace() || *b == b'=')
            .filter(|w| !w.is_empty());
        let Some(keyword) = words.next() else { return };
        if keyword.eq_ignore_ascii_case(b"PIPELINING") {
            self.pipelining = true;
        } else if keyword.eq_ignore_ascii_case(b"STARTTLS") {
            self.starttls = true;
        } else if keyword.eq_ignore_ascii_case(b"AUTH") {
            for mechanism in words {
                self.auth_plain |= mechanism.eq_ignore_ascii_case(b"PLAIN");
                self.auth_login |= mechanism.eq_ignore_ascii_case(b"LOGIN");
            }
        }
    }

    fn offers(&self, mechanism: AuthMechanism) -> bool {
        match mechanism {
            AuthMechanism::Plain => self.auth_plain,
            AuthMechanism::Login => self.auth_login,
        }
    }
}

/// Where and how one connection is opened: the server, its TLS client (when the
/// run uses TLS) and the login for this connection (when it uses AUTH).
pub struct Dial<'a> {
    pub addr: SocketAddr,
    /// The local address to connect from (`--source-ips`); `None`: the kernel's
    /// choice.
    pub source: Option<IpAddr>,
    /// The server's index in the run, which picks its TLS name.
    pub server: usize,
    pub tls: Option<&'a TlsClient>,
    pub login: Option<&'a Login>,
}

/// An open SMTP connection, plaintext or over TLS. The protocol code is one,
/// [`SmtpConnection`], generic over the stream; this enum only lets a worker
/// hold either kind, and each call below is one branch, not one per read.
pub enum Connection {
    Plain(SmtpConnection<TcpStream>),
    Tls(Box<SmtpConnection<TlsStream<TcpStream>>>),
}

/// Forwards a method call to the connection inside.
macro_rules! each {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            Connection::Plain($c) => $call,
            Connection::Tls($c) => $call,
        }
    };
}

impl Connection {
    /// Connects, says EHLO, and sets up TLS and AUTH as the run asks, timing
    /// each step into `t` and what the handshake negotiated into `handshake`
    /// (set as soon as it finishes, so a later failure keeps it).
    ///
    /// STARTTLS (RFC 3207): EHLO, STARTTLS, 220, handshake, EHLO again. Both EHLOs
    /// are counted in the `ehlo` phase, added up, so the phases still add up to
    /// the message's time; the `tls` phase is from sending STARTTLS to the
    /// finished handshake. Implicit TLS (RFC 8314): the handshake right after the
    /// connect, then the banner.
    pub async fn open(
        dial: &Dial<'_>,
        s: &ClientSettings,
        cmds: &PreparedCommands,
        t: &mut PhaseTimings,
        handshake: &mut Option<Handshake>,
    ) -> Result<Connection, Failure> {
        let tcp = connect(dial.source, dial.addr, s.timeout, t).await?;
        let Some(tls) = dial.tls else {
            let mut c = SmtpConnection::new(tcp, s.timeout);
            let ext = c.greet(cmds, t).await?;
            c.authenticate(dial.login, ext, t).await?;
            c.pipelining = s.pipelining && ext.pipelining;
            return Ok(Connection::Plain(c));
        };
        let mut c = match tls.start {
            TlsStart::Implicit => {
                let at = Instant::now();
                let stream = secure(tls, dial.server, tcp, s.timeout, handshake).await?;
                t.set(Phase::Tls, at);
                let mut c = SmtpConnection::new(stream, s.timeout);
                c.banner(t).await?;
                c
            }
            TlsStart::Starttls => {
                let mut plain = SmtpConnection::new(tcp, s.timeout);
                let offered = plain.greet(cmds, t).await?;
                let at = Instant::now();
                let tcp = plain.starttls(offered).await?;
                let stream = secure(tls, dial.server, tcp, s.timeout, handshake).await?;
                t.set(Phase::Tls, at);
                SmtpConnection::new(stream, s.timeout)
            }
        };
        // Whatever the server said before TLS is forgotten (RFC 3207 4.2): this
        // EHLO's reply is the one that counts.
        let ext = c.ehlo(cmds, t).await?;
        c.authenticate(dial.login, ext, t).await?;
        c.pipelining = s.pipelining && ext.pipelining;
        Ok(Connection::Tls(Box::new(c)))
    }

    /// After this failure, can the session carry another transaction?
    pub fn usable_after(&self, f: &Failure) -> bool {
        each!(self, c => c.usable_after(f))
    }

    /// See [`SmtpConnection::transaction`].
    pub async fn transaction(
        &mut self,
        cmds: &PreparedCommands,
        headers: &[u8],
        body: &[u8],
        t: &mut PhaseTimings,
    ) -> Result<u16, Failure> {
        each!(self, c => c.transaction(cmds, headers, body, t).await)
    }

    /// RSET after a refused transaction, so the session can carry the next one.
    pub async fn reset(&mut self) -> Result<(), Failure> {
        each!(self, c => c.reset().await)
    }

    /// See [`SmtpConnection::quit`].
    pub async fn quit(&mut self, t: &mut PhaseTimings) -> Result<(), Failure> {
        each!(self, c => c.quit(t).await)
    }

    /// See [`SmtpConnection::close`].
    pub async fn close(self) {
        each!(self, c => c.close().await)
    }

    /// QUIT and close, untimed: for sessions that carry no message.
    pub async fn quit_and_close(self) {
        each!(self, c => c.quit_and_close().await)
    }
}

/// The TCP connection from `source` (any local address when `None`), timed as
/// the `connect` phase.
async fn connect(
    source: Option<IpAddr>,
    addr: SocketAddr,
    limit: Duration,
    t: &mut PhaseTimings,
) -> Result<TcpStream, Failure> {
    let start = Instant::now();
    let stream = timed(limit, Phase::Connect, async {
        connect_from(source, addr).await.map_err(io)
    })
    .await?;
    let _ = stream.set_nodelay(true);
    t.set(Phase::Connect, start);
    Ok(stream)
}

/// The TLS handshake over `tcp`; a failure is a `tls:<detail>` in the `tls` phase.
async fn secure(
    tls: &TlsClient,
    server: usize,
    tcp: TcpStream,
    limit: Duration,
    handshake: &mut Option<Handshake>,
) -> Result<TlsStream<TcpStream>, Failure> {
    let (stream, done) = tls
        .handshake(server, tcp, limit)
        .await
        .map_err(|detail| Failure {
            phase: Phase::Tls,
            kind: FailureKind::Tls(detail),
        })?;
    *handshake = Some(done);
    Ok(stream)
}

/// The client side of an open SMTP connection over any stream (TCP, TLS).
/// Reads and writes are buffered over the one stream: replies are read line by
/// line, and a pipelined batch or a message goes out in as few writes (and TLS
/// records) as its size allows.
pub struct SmtpConnection<S> {
    stream: BufReader<BufWriter<S>>,
    line: Vec<u8>,
    /// The server advertised PIPELINING and the user asked for it.
    pipelining: bool,
    timeout: Duration,
    /// The session is out of step with the server and must be closed.
    broken: bool,
}

async fn timed<T>(
    limit: Duration,
    phase: Phase,
    f: impl Future<Output = Result<T, FailureKind>>,
) -> Result<T, Failure> {
    match timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kind)) => Err(Failure { phase, kind }),
        Err(_) => Err(Failure {
            phase,
            kind: FailureKind::Timeout,
        }),
    }
}

fn io(e: std::io::Error) -> FailureKind {
    FailureKind::from_io(&e)
}

fn expect(code: u16, class: u16) -> Result<(), FailureKind> {
    if code / 100 == class {
        Ok(())
    } else {
        Err(FailureKind::Reply(code))
    }
}

impl SmtpConnection<TcpStream> {
    /// Sends STARTTLS, if `ext` offers it, and hands back the TCP stream for the
    /// handshake once the server said 220.
    async fn starttls(mut self, ext: Extensions) -> Result<TcpStream, Failure> {
        let fail = |kind| Failure {
            phase: Phase::Tls,
            kind,
        };
        if !ext.starttls {
            return Err(fail(FailureKind::Tls(TlsFailure::NotOffered)));
        }
        self.send(Phase::Tls, b"STARTTLS\r\n").await?;
        let code = self.reply(Phase::Tls).await?;
        if code != 220 {
            return Err(fail(FailureKind::Reply(code)));
        }
        // Bytes after the 220 were sent before TLS, yet would be read as if they
        // came through it: the response-injection attack RFC 3207 5 warns of.
        if !self.stream.buffer().is_empty() {
            return Err(fail(FailureKind::Protocol));
        }
        Ok(self.stream.into_inner().into_inner())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpConnection<S> {
    fn new(stream: S, timeout: Duration) -> Self {
        SmtpConnection {
            stream: BufReader::new(BufWriter::with_capacity(WRITE_BUFFER, stream)),
            line: Vec::with_capacity(256),
            pipelining: false,
            timeout,
            broken: false,
        }
    }

    /// Reads the banner, expecting 220.
    async fn banner(&mut self, t: &mut PhaseTimings) -> Result<(), Failure> {
        let at = Instant::now();
        let code = self.reply(Phase::Banner).await?;
        t.set(Phase::Banner, at);
        if code != 220 {
            return Err(Failure {
                phase: Phase::Banner,
                kind: FailureKind::Reply(code),
            });
        }
        Ok(())
    }

    /// The banner and EHLO.
    async fn greet(
        &mut self,
        cmds: &PreparedCommands,
        t: &mut PhaseTimings,
    ) -> Result<Extensions, Failure> {
        self.banner(t).await?;
        self.ehlo(cmds, t).await
    }

    /// EHLO, its time added to the `ehlo` phase; what the reply advertised.
    async fn ehlo(
        &mut self,
        cmds: &PreparedCommands,
        t: &mut PhaseTimings,
    ) -> Result<Extensions, Failure> {
        let at = Instant::now();
        self.send(Phase::Ehlo, &cmds.ehlo).await?;
        let mut ext = Extensions::default();
        let code = self.read_reply(Phase::Ehlo, Some(&mut ext)).await?;
        t.add(Phase::Ehlo, at);
        check(Phase::Ehlo, code, 2)?;
        Ok(ext)
    }

    /// AUTH with `login`, if any, timed as the `auth` phase: 235 or the message
    /// fails with the server's code. A mechanism the EHLO reply did not list is
    /// asked for bare, without credentials, and fails with the refusal.
    async fn authenticate(
        &mut self,
        login: Option<&Login>,
        ext: Extensions,
        t: &mut PhaseTimings,
    ) -> Result<(), Failure> {
        let Some(login) = login else { return Ok(()) };
        let at = Instant::now();
        let result = if ext.offers(login.mechanism) {
            self.sasl(login.steps.iter().map(Vec::as_slice)).await
        } else {
            self.sasl(std::iter::once(Login::bare(login.mechanism)))
                .await
        };
        if matches!(
            result,
            Ok(())
                | Err(Failure {
                    kind: FailureKind::Reply(_),
                    ..
                })
        ) {
            t.set(Phase::Auth, at);
        }
        result
    }

    /// Sends the AUTH command and then each answer to a 334 challenge. A 334
    /// with no answer left is cancelled (`*`, RFC 4954 4) and counted as a
    /// protocol failure; any final reply other than 235 fails with its code.
    async fn sasl<'b>(&mut self, steps: impl Iterator<Item = &'b [u8]>) -> Result<(), Failure> {
        let mut steps = steps.peekable();
        while let Some(step) = steps.next() {
            self.send(Phase::Auth, step).await?;
            match self.reply(Phase::Auth).await? {
                235 => return Ok(()),
                334 if steps.peek().is_some() => {}
                334 => {
                    self.send(Phase::Auth, b"*\r\n").await?;
                    self.reply(Phase::Auth).await?;
                    break;
                }
                code => {
                    return Err(Failure {
                        phase: Phase::Auth,
                        kind: FailureKind::Reply(code),
                    });
                }
            }
        }
        Err(Failure {
            phase: Phase::Auth,
            kind: FailureKind::Protocol,
        })
    }

    /// After this failure, can the session carry another transaction?
    pub fn usable_after(&self, f: &Failure) -> bool {
        !self.broken && !f.kills_connection()
    }

    /// One transaction: MAIL, RCPT × n, DATA, then `headers` and `body` (which ends
    /// with the end-of-data marker), up to the reply after the final dot, whose
    /// code it returns.
    pub async fn transaction(
        &mut self,
        cmds: &PreparedCommands,
        headers: &[u8],
        body: &[u8],
        t: &mut PhaseTimings,
    ) -> Result<u16, Failure> {
        let mut at = Instant::now();
        if self.pipelining {
            self.stream
                .write_all(&cmds.mail)
                .await
                .map_err(|e| Failure {
                    phase: Phase::Mail,
                    kind: io(e),
                })?;
            for r in &cmds.rcpts {
                self.stream.write_all(r).await.map_err(|e| Failure {
                    phase: Phase::Rcpt,
                    kind: io(e),
                })?;
            }
            self.send(Phase::Data, b"DATA\r\n").await?;
            // Read every reply before judging, so the stream stays in step.
            let mail = self.reply(Phase::Mail).await?;
            closing(Phase::Mail, mail)?;
            at = t.set(Phase::Mail, at);
            let mut rcpt_fail = None;
            for _ in &cmds.rcpts {
                let c = self.reply(Phase::Rcpt).await?;
                closing(Phase::Rcpt, c)?;
                if c / 100 != 2 && rcpt_fail.is_none() {
                    rcpt_fail = Some(c);
                }
            }
            at = t.set(Phase::Rcpt, at);
            let data = self.reply(Phase::Data).await?;
            t.set(Phase::Data, at);
            let refused = if mail / 100 != 2 {
                Some((Phase::Mail, mail))
            } else {
                rcpt_fail.map(|c| (Phase::Rcpt, c))
            };
            if let Some((phase, code)) = refused {
                if data == 354 {
                    // The server waits for a body we will not send, and ending it
                    // empty would deliver a message; closing aborts the transaction.
                    self.broken = true;
                }
                return Err(Failure {
                    phase,
                    kind: FailureKind::Reply(code),
                });
            }
            check(Phase::Data, data, 3)?;
        } else {
            self.send(Phase::Mail, &cmds.mail).await?;
            let c = self.reply(Phase::Mail).await?;
            at = t.set(Phase::Mail, at);
            check(Phase::Mail, c, 2)?;
            for r in &cmds.rcpts {
                self.send(Phase::Rcpt, r).await?;
                let c = self.reply(Phase::Rcpt).await?;
                check(Phase::Rcpt, c, 2)?;
            }
            at = t.set(Phase::Rcpt, at);
            self.send(Phase::Data, b"DATA\r\n").await?;
            let c = self.reply(Phase::Data).await?;
            at = t.set(Phase::Data, at);
            check(Phase::Data, c, 3)?;
        }
        let at = if self.pipelining { Instant::now() } else { at };
        let limit = self.timeout;
        let w = &mut self.stream;
        timed(limit, Phase::Eod, async {
            w.write_all(headers).await.map_err(io)?;
            w.write_all(body).await.map_err(io)?;
            w.flush().await.map_err(io)
        })
        .await?;
        let c = self.reply(Phase::Eod).await?;
        t.set(Phase::Eod, at);
        check(Phase::Eod, c, 2)?;
        Ok(c)
    }

    /// RSET after a refused transaction, so the session can carry the next one.
    pub async fn reset(&mut self) -> Result<(), Failure> {
        self.send(Phase::Mail, b"RSET\r\n").await?;
        let c = self.reply(Phase::Mail).await?;
        check(Phase::Mail, c, 2)
    }

    /// QUIT, timed into `t`: the phase (and a message's total) ends at the 221.
    /// Waiting for the server to close is [`SmtpConnection::close`]'s job, done after
    /// message is recorded, so a server that keeps the socket open does not look
    /// slower.
    pub async fn quit(&mut self, t: &mut PhaseTimings) -> Result<(), Failure> {
        let at = Instant::now();
        self.send(Phase::Quit, b"QUIT\r\n").await?;
        let c = self.reply(Phase::Quit).await?;
        t.set(Phase::Quit, at);
        check(Phase::Quit, c, 2)
    }

    /// After QUIT: waits briefly for the server to close first, so the socket's
    /// TIME_WAIT lands on the server side and a long run does not exhaust local
    /// ports; then drops the connection.
    pub async fn close(mut self) {
        let mut sink = [0u8; 64];
        let _ = timeout(CLOSE_WAIT.min(self.timeout), self.stream.read(&mut sink)).await;
    }

    /// QUIT and close, untimed: for sessions that carry no message.
    pub async fn quit_and_close(mut self) {
        if self.quit(&mut PhaseTimings::default()).await.is_ok() {
            self.close().await;
        }
    }

    async fn send(&mut self, phase: Phase, bytes: &[u8]) -> Result<(), Failure> {
        let w = &mut self.stream;
        timed(self.timeout, phase, async {
            w.write_all(bytes).await.map_err(io)?;
            w.flush().await.map_err(io)
        })
        .await
    }

    /// Reads one reply (all lines of a multiline one) and returns its code.
    async fn reply(&mut self, phase: Phase) -> Result<u16, Failure> {
        self.read_reply(phase, None).await
    }

    /// Reads one reply; with `ext`, notes what its lines advertise (EHLO).
    async fn read_reply(
        &mut self,
        phase: Phase,
        mut ext: Option<&mut Extensions>,
    ) -> Result<u16, Failure> {
        let stream = &mut self.stream;
        let line = &mut self.line;
        timed(self.timeout, phase, async move {
            for _ in 0..MAX_REPLY_LINES {
                line.clear();
                let n = (&mut *stream)
                    .take(MAX_REPLY_LINE)
                    .read_until(b'\n', line)
                    .await
                    .map_err(io)?;
                if n == 0 {
                    return Err(FailureKind::ConnectionClosed);
                }
                let (code, last) = parse_reply_line(line).ok_or(FailureKind::Protocol)?;
                if let Some(ext) = ext.as_deref_mut() {
                    ext.note(line);
                }
                if last {
                    return Ok(code);
                }
            }
            Err(FailureKind::Protocol)
        })
        .await
    }
}

/// A 421 means the server is closing the connection (RFC 5321 3.8): the replies
/// still pending in a pipelined batch will never come, so stop reading here.
fn closing(phase: Phase, code: u16) -> Result<(), Failure> {
    if code == 421 {
        Err(Failure {
            phase,
            kind: FailureKind::Reply(code),
        })
    } else {
        Ok(())
    }
}

fn check(phase: Phase, code: u16, class: u16) -> Result<(), Failure> {
    expect(code, class).map_err(|kind| Failure { phase, kind })
}

/// `250-text` → (250, false); `250 text` or `250` → (250, true).
pub fn parse_reply_line(line: &[u8]) -> Option<(u16, bool)> {
    if line.len() < 3 || !line.ends_with(b"\n") && line.len() as u64 >= MAX_REPLY_LINE {
        return None;
    }
    let d = &line[..3];
    if !d.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&d[0]) {
        return None;
    }
    let code = u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0');
    let last = line.get(3) != Some(&b'-');
    Some((code, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_parse_code_and_continuation() {
        assert_eq!(parse_reply_line(b"250-PIPELINING\r\n"), Some((250, false)));
        assert_eq!(parse_reply_line(b"250 OK\r\n"), Some((250, true)));
        assert_eq!(parse_reply_line(b"221\r\n"), Some((221, true)));
        assert_eq!(parse_reply_line(b"hello\r\n"), None);
        assert_eq!(parse_reply_line(b"650 x\r\n"), None);
    }

    #[test]
    fn failures_have_stable_keys() {
        let f = |kind| Failure {
            phase: Phase::Mail,
            kind,
        };
        let at = |phase, kind| Failure { phase, kind }.key().to_string();
        assert_eq!(f(FailureKind::Reply(421)).key().to_string(), "421");
        assert_eq!(at(Phase::Banner, FailureKind::Timeout), "timeout:banner");
        assert_eq!(at(Phase::Eod, FailureKind::Timeout), "timeout:eod");
        assert_eq!(
            at(Phase::Connect, FailureKind::ConnectionRefused),
            "refused:connect"
        );
        assert_eq!(
            at(Phase::Data, FailureKind::ConnectionClosed),
            "closed:data"
        );
        assert!(FailureKind::ConnectionRefused.is_connection_error());
        assert!(!FailureKind::Timeout.is_connection_error());
        assert!(!f(FailureKind::Reply(550)).kills_connection());
        assert!(f(FailureKind::Reply(421)).kills_connection());
        assert!(f(FailureKind::Timeout).kills_connection());
        let tls = |d| at(Phase::Tls, FailureKind::Tls(d));
        assert_eq!(tls(TlsFailure::NotOffered), "tls:not_offered");
        assert_eq!(tls(TlsFailure::Certificate), "tls:certificate");
        assert_eq!(tls(TlsFailure::Handshake), "tls:handshake");
        assert_eq!(tls(TlsFailure::Timeout), "tls:timeout");
        assert!(FailureKind::Tls(TlsFailure::Timeout).is_timeout());
        assert!(f(FailureKind::Tls(TlsFailure::Certificate)).kills_connection());
    }

    #[test]
    fn ehlo_lines_give_the_extensions_the_client_uses() {
        let rows: [(&[u8], Extensions); 6] = [
            (
                b"250-PIPELINING\r\n",
                Extensions {
                    pipelining: true,
                    ..Default::default()
                },
            ),
            (
                b"250-starttls\r\n",
                Extensions {
                    starttls: true,
                    ..Default::default()
                },
            ),
            (
                b"250-AUTH PLAIN LOGIN CRAM-MD5\r\n",
                Extensions {
                    auth_plain: true,
                    auth_login: true,
                    ..Default::default()
                },
            ),
            (
                b"250 AUTH=LOGIN\r\n",
                Extensions {
                    auth_login: true,
                    ..Default::default()
                },
            ),
            (b"250-AUTHX PLAIN\r\n", Extensions::default()),
            (b"250-mail.example.com STARTTLS\r\n", Extensions::default()),
        ];
        for (line, want) in rows {
            let mut ext = Extensions::default();
            ext.note(line);
            assert_eq!(ext, want, "{}", String::from_utf8_lossy(line));
        }
    }
}
