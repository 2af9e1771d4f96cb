//! A small SMTP test client and helpers for starting servers on ephemeral ports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use server::{Config, RunningServer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub mod tls;

/// Any stream a test client talks over: TCP, or TLS on top of it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long a test waits for any single reply before failing.
pub const REPLY_WAIT: Duration = Duration::from_secs(5);

/// A config for tests: loopback, ephemeral port, no admin listener, memory store,
/// no rate limits (tests that need them set them).
pub fn test_config() -> Config {
    Config {
        domain: "test.example".into(),
        shutdown_grace: Duration::from_millis(300),
        ..Config::for_local_testing()
    }
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = test_config();
    f(&mut config);
    server::start(config).await.expect("server starts")
}

/// A server with `store = spool` writing into `spool_dir`.
pub async fn start_spooling(spool_dir: &std::path::Path) -> RunningServer {
    let spool_dir = spool_dir.to_path_buf();
    start_with(move |c| {
        c.store = server::StoreKind::Spool;
        c.spool_dir = spool_dir;
    })
    .await
}

pub async fn stop(server: RunningServer) {
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("server stops in time")
        .expect("server stops cleanly");
}

/// One SMTP reply: the code and every line's text (after "NNN-" / "NNN ").
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code at the start of the last line, if any.
    pub fn status(&self) -> &str {
        self.lines
            .last()
            .and_then(|l| l.split_whitespace().next())
            .filter(|s| s.chars().next().is_some_and(|c| c.is_ascii_digit()) && s.contains('.'))
            .unwrap_or("")
    }

    #[track_caller]
    pub fn assert(&self, code: u16, status: &str) {
        assert_eq!(
            (self.code, self.status()),
            (code, status),
            "unexpected reply: {self:?}"
        );
    }
}

pub struct Client {
    reader: BufReader<Box<dyn Stream>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client::over(stream)
    }

    /// A client on an established stream.
    pub fn over(stream: impl Stream + 'static) -> Client {
        Client {
            reader: BufReader::new(Box::new(stream)),
        }
    }

    /// The stream under the client; panics if the server sent bytes not read yet.
    pub fn into_stream(self) -> Box<dyn Stream> {
        assert!(
            self.reader.buffer().is_empty(),
            "unread bytes from the server: {:?}",
            String::from_utf8_lossy(self.reader.buffer())
        );
        self.reader.into_inner()
    }

    /// Connects from a chosen loopback address (127.0.0.2, 127.0.0.3, ...), so that a
    /// test can be several clients as far as per-address limits go.
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .unwrap_or_else(|e| panic!("bind the client to {local}: {e}"));
        let stream = socket.connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client::over(stream)
    }

    /// Connects and reads the 220 banner.
    pub async fn connect_greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        c.reply().await.assert(220, "");
        c
    }

    /// Connects, reads the banner, says EHLO.
    pub async fn ready(addr: SocketAddr) -> Client {
        let mut c = Client::connect_greeted(addr).await;
        let r = c.cmd("EHLO client.test").await;
        assert_eq!(r.code, 250, "{r:?}");
        c
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.reader
            .get_mut()
            .write_all(bytes.as_ref())
            .await
            .expect("write");
    }

    /// Reads one (possibly multi-line) reply; panics on EOF or timeout.
    pub async fn reply(&mut self) -> Reply {
        self.try_reply()
            .await
            .expect("connection closed before a reply arrived")
    }

    /// Reads one reply; `None` when the server closed the connection first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(REPLY_WAIT, self.reader.read_line(&mut line))
                .await
                .expect("reply within the wait time")
                .ok()?;
            if n == 0 {
                return None;
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            assert!(line.len() >= 4, "short reply line: {line:?}");
            let code: u16 = line[..3].parse().expect("numeric reply code");
            let more = &line[3..4] == "-";
            lines.push(line[4..].trim_end().to_string());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Runs MAIL/RCPT/DATA for `body` (already dot-stuffed, without the final dot)
    /// and returns the reply to the end of data.
    pub async fn send_message(&mut self, body: &[u8]) -> Reply {
        self.cmd("MAIL FROM:<sender@client.test>")
            .await
            .assert(250, "2.1.0");
        self.cmd("RCPT TO:<rcpt@test.example>")
            .await
            .assert(250, "2.1.5");
        self.cmd("DATA").await.assert(354, "");
        self.send(body).await;
        self.send(b".\r\n").await;
        self.reply().await
    }

    /// True when nothing at all arrives from the server for `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 1];
        tokio::time::timeout(wait, self.reader.read(&mut buf))
            .await
            .is_err()
    }

    /// True when the server closes the connection (EOF or reset) within the wait.
    pub async fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(REPLY_WAIT, self.reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    }
}

impl Client {
    /// True when the server closes the connection within the wait, whatever it sends
    /// before (a TLS alert, say). Reads at most 64 KiB.
    pub async fn closes_after_any_output(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        let read_to_end = async {
            for _ in 0..64 {
                match self.reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
            false
        };
        tokio::time::timeout(REPLY_WAIT, read_to_end)
            .await
            .unwrap_or(false)
    }
}

/// Polls `condition` until it holds; panics after [`REPLY_WAIT`].
pub async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain HTTP/1.0 GET; returns the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect admin");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(REPLY_WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("admin answers")
        .expect("read admin answer");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A message body of about `size` bytes in lines of 76 characters, ending in CRLF.
pub fn body_of_size(size: usize) -> Vec<u8> {
    let mut body = b"Subject: test\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(&[b'x'; 76]);
        body.extend_from_slice(b"\r\n");
    }
    body
}
