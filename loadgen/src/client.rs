//! One SMTP client session, timed phase by phase.
//!
//! Written by hand rather than with lettre's SMTP transport because every phase
//! (connect, banner, EHLO, MAIL, RCPT, DATA, end-of-data, QUIT) must be timed on its
//! own, pipelining must be optional, and no per-message allocation may happen on the
//! hot path. Replies are parsed by their three-digit code (RFC 5321 4.2); the text is
//! only looked at in the EHLO reply, for PIPELINING.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use report::Phase;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;

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
/// (`421`), or a failure class and the phase it happened in (`timeout:banner`,
/// `refused:connect`), so a stalled accept queue and a slow disk read apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKey {
    Code(u16),
    Class(&'static str, Phase),
}

impl std::fmt::Display for ErrorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKey::Code(c) => write!(f, "{c}"),
            ErrorKey::Class(class, phase) => write!(f, "{class}:{phase}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub phase: Phase,
    pub kind: FailureKind,
}

impl Failure {
    /// The `error_breakdown` key: the reply code, or `<class>:<phase>`.
    pub fn key(&self) -> ErrorKey {
        match self.kind {
            FailureKind::Reply(c) => ErrorKey::Code(c),
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

/// The client side of an open SMTP connection, after a successful EHLO.
pub struct SmtpConnection {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
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

impl SmtpConnection {
    /// Connects, reads the banner and says EHLO, timing each step into `t`.
    pub async fn open(
        addr: SocketAddr,
        s: &ClientSettings,
        cmds: &PreparedCommands,
        t: &mut PhaseTimings,
    ) -> Result<SmtpConnection, Failure> {
        let start = Instant::now();
        let stream = timed(s.timeout, Phase::Connect, async {
            TcpStream::connect(addr).await.map_err(io)
        })
        .await?;
        let _ = stream.set_nodelay(true);
        let mut at = t.set(Phase::Connect, start);
        let (r, w) = stream.into_split();
        let mut session = SmtpConnection {
            reader: BufReader::new(r),
            writer: BufWriter::with_capacity(WRITE_BUFFER, w),
            line: Vec::with_capacity(256),
            pipelining: false,
            timeout: s.timeout,
            broken: false,
        };
        let (code, _) = session.reply(Phase::Banner, false).await?;
        at = t.set(Phase::Banner, at);
        if code != 220 {
            return Err(Failure {
                phase: Phase::Banner,
                kind: FailureKind::Reply(code),
            });
        }
        session.send(Phase::Ehlo, &cmds.ehlo).await?;
        let (code, pipelining) = session.reply(Phase::Ehlo, true).await?;
        t.set(Phase::Ehlo, at);
        check(Phase::Ehlo, code, 2)?;
        session.pipelining = s.pipelining && pipelining;
        Ok(session)
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
            self.writer
                .write_all(&cmds.mail)
                .await
                .map_err(|e| Failure {
                    phase: Phase::Mail,
                    kind: io(e),
                })?;
            for r in &cmds.rcpts {
                self.writer.write_all(r).await.map_err(|e| Failure {
                    phase: Phase::Rcpt,
                    kind: io(e),
                })?;
            }
            self.send(Phase::Data, b"DATA\r\n").await?;
            // Read every reply before judging, so the stream stays in step.
            let (mail, _) = self.reply(Phase::Mail, false).await?;
            closing(Phase::Mail, mail)?;
            at = t.set(Phase::Mail, at);
            let mut rcpt_fail = None;
            for _ in &cmds.rcpts {
                let (c, _) = self.reply(Phase::Rcpt, false).await?;
                closing(Phase::Rcpt, c)?;
                if c / 100 != 2 && rcpt_fail.is_none() {
                    rcpt_fail = Some(c);
                }
            }
            at = t.set(Phase::Rcpt, at);
            let (data, _) = self.reply(Phase::Data, false).await?;
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
            let (c, _) = self.reply(Phase::Mail, false).await?;
            at = t.set(Phase::Mail, at);
            check(Phase::Mail, c, 2)?;
            for r in &cmds.rcpts {
                self.send(Phase::Rcpt, r).await?;
                let (c, _) = self.reply(Phase::Rcpt, false).await?;
                check(Phase::Rcpt, c, 2)?;
            }
            at = t.set(Phase::Rcpt, at);
            self.send(Phase::Data, b"DATA\r\n").await?;
            let (c, _) = self.reply(Phase::Data, false).await?;
            at = t.set(Phase::Data, at);
            check(Phase::Data, c, 3)?;
        }
        let at = if self.pipelining { Instant::now() } else { at };
        let limit = self.timeout;
        let w = &mut self.writer;
        timed(limit, Phase::Eod, async {
            w.write_all(headers).await.map_err(io)?;
            w.write_all(body).await.map_err(io)?;
            w.flush().await.map_err(io)
        })
        .await?;
        let (c, _) = self.reply(Phase::Eod, false).await?;
        t.set(Phase::Eod, at);
        check(Phase::Eod, c, 2)?;
        Ok(c)
    }

    /// RSET after a refused transaction, so the session can carry the next one.
    pub async fn reset(&mut self) -> Result<(), Failure> {
        self.send(Phase::Mail, b"RSET\r\n").await?;
        let (c, _) = self.reply(Phase::Mail, false).await?;
        check(Phase::Mail, c, 2)
    }

    /// QUIT, timed into `t`: the phase (and a message's total) ends at the 221.
    /// Waiting for the server to close is [`SmtpConnection::close`]'s job, done after
    /// message is recorded, so a server that keeps the socket open does not look
    /// slower.
    pub async fn quit(&mut self, t: &mut PhaseTimings) -> Result<(), Failure> {
        let at = Instant::now();
        self.send(Phase::Quit, b"QUIT\r\n").await?;
        let (c, _) = self.reply(Phase::Quit, false).await?;
        t.set(Phase::Quit, at);
        check(Phase::Quit, c, 2)
    }

    /// After QUIT: waits briefly for the server to close first, so the socket's
    /// TIME_WAIT lands on the server side and a long run does not exhaust local
    /// ports; then drops the connection.
    pub async fn close(mut self) {
        let mut sink = [0u8; 64];
        let _ = timeout(CLOSE_WAIT.min(self.timeout), self.reader.read(&mut sink)).await;
    }

    /// QUIT and close, untimed: for sessions that carry no message.
    pub async fn quit_and_close(mut self) {
        if self.quit(&mut PhaseTimings::default()).await.is_ok() {
            self.close().await;
        }
    }

    async fn send(&mut self, phase: Phase, bytes: &[u8]) -> Result<(), Failure> {
        let w = &mut self.writer;
        timed(self.timeout, phase, async {
            w.write_all(bytes).await.map_err(io)?;
            w.flush().await.map_err(io)
        })
        .await
    }

    /// Reads one reply (all lines of a multiline one). Returns its code and, when
    /// `ehlo`, whether a line advertised PIPELINING.
    async fn reply(&mut self, phase: Phase, ehlo: bool) -> Result<(u16, bool), Failure> {
        let reader = &mut self.reader;
        let line = &mut self.line;
        timed(self.timeout, phase, async move {
            let mut pipelining = false;
            for _ in 0..MAX_REPLY_LINES {
                line.clear();
                let n = (&mut *reader)
                    .take(MAX_REPLY_LINE)
                    .read_until(b'\n', line)
                    .await
                    .map_err(io)?;
                if n == 0 {
                    return Err(FailureKind::ConnectionClosed);
                }
                let (code, last) = parse_reply_line(line).ok_or(FailureKind::Protocol)?;
                if ehlo && line.len() >= 14 && line[4..14].eq_ignore_ascii_case(b"PIPELINING") {
                    pipelining = true;
                }
                if last {
                    return Ok((code, pipelining));
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
    }
}
