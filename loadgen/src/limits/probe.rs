//! A small SMTP client for the limits cases: one connection, one reply at a time,
//! every wait bounded. The load client (`crate::client`) times a transaction phase
//! by phase and treats anything unexpected as a failure; the cases need the
//! opposite: to see exactly which reply (or which silence) came, and when.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::client::parse_reply_line;
use crate::source_addrs::connect_from;

/// Longest reply line kept; the rest of a longer line is read and dropped.
const MAX_LINE: usize = 4096;

/// One SMTP reply: its code and the enhanced status code of its last line, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<String>,
    pub text: String,
}

impl Reply {
    /// How the reply is counted in "replies seen": `421 4.7.0`, or `220`; the
    /// enhanced status of a positive reply says nothing the cases judge.
    pub fn label(&self) -> String {
        match &self.status {
            Some(s) if self.code >= 400 => format!("{} {s}", self.code),
            _ => self.code.to_string(),
        }
    }
}

/// What came back when the client waited for a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Reply(Reply),
    /// The server closed the connection without a reply (or reset it).
    Closed,
    /// Nothing within the wait.
    Silence,
    /// Something that is not an SMTP reply.
    Garbage(String),
}

/// Labels for what is not a reply, as they appear in "replies seen".
pub const CLOSED_WITHOUT_REPLY: &str = "closed without reply";
pub const NO_REPLY: &str = "no reply (timeout)";
pub const CONNECT_FAILED: &str = "connect failed";
pub const NOT_SMTP: &str = "not an SMTP reply";

impl Heard {
    pub fn label(&self) -> String {
        match self {
            Heard::Reply(r) => r.label(),
            Heard::Closed => CLOSED_WITHOUT_REPLY.into(),
            Heard::Silence => NO_REPLY.into(),
            Heard::Garbage(_) => NOT_SMTP.into(),
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            Heard::Reply(r) => Some(r.code),
            _ => None,
        }
    }
}

/// The enhanced status code (RFC 3463) at the start of a reply's text: `4.7.0`.
pub fn enhanced_status(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    let parts: Vec<&str> = word.split('.').collect();
    let ok = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| word.to_string())
}

/// Replies seen by a case, counted by label.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen(pub BTreeMap<String, u64>);

impl Seen {
    pub fn note(&mut self, label: impl Into<String>) {
        *self.0.entry(label.into()).or_default() += 1;
    }
    pub fn heard(&mut self, heard: &Heard) {
        self.note(heard.label());
    }
}

/// One SMTP connection.
#[derive(Debug)]
pub struct Probe {
    stream: BufStream<TcpStream>,
    /// How long each reply may take.
    timeout: Duration,
}

impl Probe {
    /// Connects from `source` (the system's choice when `None`).
    pub async fn connect(
        source: Option<IpAddr>,
        server: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(timeout, connect_from(source, server))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        // Small commands answered one at a time: no Nagle delay.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufStream::new(stream),
            timeout,
        })
    }

    /// Waits for one (possibly multi-line) reply, up to the reply timeout.
    pub async fn reply(&mut self) -> Heard {
        self.reply_within(self.timeout).await
    }

    /// Waits for one reply, up to `wait`.
    pub async fn reply_within(&mut self, wait: Duration) -> Heard {
        match tokio::time::timeout(wait, self.read_reply()).await {
            Ok(heard) => heard,
            Err(_) => Heard::Silence,
        }
    }

    async fn read_reply(&mut self) -> Heard {
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line(&mut self.stream, &mut line).await {
                Ok(0) | Err(_) => return Heard::Closed,
                Ok(_) => {}
            }
            let Some((code, last)) = parse_reply_line(&line) else {
                return Heard::Garbage(String::from_utf8_lossy(&line).trim_end().to_string());
            };
            if last {
                let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default())
                    .trim_end()
                    .to_string();
                return Heard::Reply(Reply {
                    code,
                    status: enhanced_status(&text),
                    text,
                });
            }
        }
    }

    /// Sends raw bytes; false when the connection is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        matches!(tokio::time::timeout(self.timeout, write).await, Ok(Ok(())))
    }

    /// Sends one command line and waits for its reply.
    pub async fn command(&mut self, line: &str) -> Heard {
        if !self.send(format!("{line}\r\n").as_bytes()).await {
            return Heard::Closed;
        }
        self.reply().await
    }

    /// QUIT without waiting long for the 221; the connection is closed either way.
    pub async fn quit(mut self) {
        if self.send(b"QUIT\r\n").await {
            let _ = self.reply_within(Duration::from_secs(2)).await;
        }
    }
}

/// Reads one line (up to `\n`), keeping at most [`MAX_LINE`] bytes of it.
async fn read_line(
    stream: &mut BufStream<TcpStream>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = stream.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len()).min(take);
        line.extend_from_slice(&buf[..room]);
        stream.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

/// How a connection attempt met the server's door.
#[derive(Debug)]
pub enum Door {
    /// A 220 banner: a session.
    Banner(Probe),
    /// Any other reply (a `421` is a refusal).
    Reply(Reply),
    Closed,
    Silence,
    Garbage,
    ConnectFailed(String),
}

impl Door {
    pub fn label(&self) -> String {
        match self {
            Door::Banner(_) => "220".into(),
            Door::Reply(r) => r.label(),
            Door::Closed => CLOSED_WITHOUT_REPLY.into(),
            Door::Silence => NO_REPLY.into(),
            Door::Garbage => NOT_SMTP.into(),
            Door::ConnectFailed(e) => format!("{CONNECT_FAILED}: {e}"),
        }
    }

    pub fn is_refusal(&self) -> bool {
        matches!(self, Door::Reply(r) if r.code == 421)
    }
}

/// Connects and reads the banner.
pub async fn knock(source: Option<IpAddr>, server: SocketAddr, timeout: Duration) -> Door {
    let mut probe = match Probe::connect(source, server, timeout).await {
        Ok(p) => p,
        Err(e) => return Door::ConnectFailed(e.to_string()),
    };
    match probe.reply().await {
        Heard::Reply(r) if r.code == 220 => Door::Banner(probe),
        Heard::Reply(r) => Door::Reply(r),
        Heard::Closed => Door::Closed,
        Heard::Silence => Door::Silence,
        Heard::Garbage(_) => Door::Garbage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_codes_are_read_from_the_start_of_the_text() {
        assert_eq!(enhanced_status("4.7.0 Too busy").as_deref(), Some("4.7.0"));
        assert_eq!(
            enhanced_status("5.3.4 Message too big").as_deref(),
            Some("5.3.4")
        );
        assert_eq!(enhanced_status("Too busy"), None);
        assert_eq!(enhanced_status("1.2.3 no"), None);
        assert_eq!(enhanced_status(""), None);
    }

    #[test]
    fn replies_are_labelled_with_their_enhanced_status() {
        let r = Reply {
            code: 421,
            status: Some("4.7.0".into()),
            text: "4.7.0 busy".into(),
        };
        assert_eq!(r.label(), "421 4.7.0");
        assert_eq!(Heard::Closed.label(), CLOSED_WITHOUT_REPLY);
    }
}
