//! A tiny scriptable SMTP server for tests: it can stall, refuse, drop connections
//! and records every message it receives.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the server does at the end of data of message number `n` (0-based,
/// counted over the whole server).
#[derive(Debug, Clone)]
pub enum Action {
    Accept,
    /// Wait, then accept.
    Stall(Duration),
    /// Answer this line (`"451 4.3.0 try later"`); a 421 also closes.
    Reply(&'static str),
    /// Close the connection without a reply.
    Drop,
}

pub type Script = Arc<dyn Fn(u64) -> Action + Send + Sync>;

/// How long a server with `hold_after_quit` keeps a socket open after its 221.
const HOLD_AFTER_QUIT: Duration = Duration::from_secs(5);

/// How a [`TestServer`] behaves.
pub struct Options {
    /// The reply at the end of data of the n-th message.
    pub eod: Script,
    /// The reply to the n-th MAIL.
    pub mail: Script,
    pub pipelining: bool,
    /// A reply to every RCPT instead of 250.
    pub rcpt_reply: Option<&'static str>,
    /// After 221, keep the socket open until the client closes it (or for
    /// [`HOLD_AFTER_QUIT`]), as some servers do, instead of closing first.
    pub hold_after_quit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            eod: TestServer::accepting(),
            mail: TestServer::accepting(),
            pipelining: true,
            rcpt_reply: None,
            hold_after_quit: false,
        }
    }
}

/// A message as received (dot-stuffed wire form, without the final `.CRLF`).
#[derive(Debug, Clone)]
pub struct Received {
    pub len: usize,
    pub headers: String,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicU64>,
    pub eods: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(script: Script) -> TestServer {
        Self::start_with(script, true, None).await
    }

    /// `rcpt_reply`: a reply to every RCPT instead of 250.
    pub async fn start_with(
        script: Script,
        pipelining: bool,
        rcpt_reply: Option<&'static str>,
    ) -> TestServer {
        Self::start_full(script, Arc::new(|_| Action::Accept), pipelining, rcpt_reply).await
    }

    /// `mail_script` decides the reply to the n-th MAIL command (0-based, whole
    /// server); `Action::Reply("421 ...")` closes the connection after it.
    pub async fn start_full(
        script: Script,
        mail_script: Script,
        pipelining: bool,
        rcpt_reply: Option<&'static str>,
    ) -> TestServer {
        Self::start_options(Options {
            eod: script,
            mail: mail_script,
            pipelining,
            rcpt_reply,
            hold_after_quit: false,
        })
        .await
    }

    pub async fn start_options(options: Options) -> TestServer {
        let Options {
            eod: script,
            mail: mail_script,
            pipelining,
            rcpt_reply,
            hold_after_quit,
        } = options;
        let mails = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let eods = Arc::new(AtomicU64::new(0));
        let (r, c, e) = (received.clone(), connections.clone(), eods.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (script, r, e) = (script.clone(), r.clone(), e.clone());
                let (mail_script, mails) = (mail_script.clone(), mails.clone());
                tokio::spawn(async move {
                    let mail = (mail_script, mails);
                    let behaviour = (pipelining, rcpt_reply, hold_after_quit);
                    let _ = session(sock, script, mail, r, e, behaviour).await;
                });
            }
        });
        TestServer {
            addr,
            received,
            connections,
            eods,
            task,
        }
    }

    pub fn accepting() -> Script {
        Arc::new(|_| Action::Accept)
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    script: Script,
    (mail_script, mails): (Script, Arc<AtomicU64>),
    received: Arc<Mutex<Vec<Received>>>,
    eods: Arc<AtomicU64>,
    (pipelining, rcpt_reply, hold_after_quit): (bool, Option<&'static str>, bool),
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 test ESMTP\r\n").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            if pipelining {
                b"250-test\r\n250-PIPELINING\r\n250 SIZE 104857600\r\n"
            } else {
                b"250-test\r\n250 SIZE 104857600\r\n"
            }
        } else if cmd.starts_with("MAIL") {
            match mail_script(mails.fetch_add(1, Ordering::SeqCst)) {
                Action::Reply(rep) => {
                    w.write_all(rep.as_bytes()).await?;
                    w.write_all(b"\r\n").await?;
                    if rep.starts_with("421") {
                        return Ok(());
                    }
                    continue;
                }
                Action::Drop => return Ok(()),
                _ => b"250 ok\r\n",
            }
        } else if cmd.starts_with("RSET") {
            b"250 ok\r\n"
        } else if cmd.starts_with("RCPT") {
            match rcpt_reply {
                Some(rep) => {
                    w.write_all(rep.as_bytes()).await?;
                    w.write_all(b"\r\n").await?;
                    continue;
                }
                None => b"250 ok\r\n",
            }
        } else if cmd.starts_with("DATA") {
            if rcpt_reply.is_some() {
                b"554 no valid recipients\r\n"
            } else {
                w.write_all(b"354 go\r\n").await?;
                let mut msg = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    msg.extend_from_slice(&line);
                }
                let n = eods.fetch_add(1, Ordering::SeqCst);
                let hend = msg
                    .windows(4)
                    .position(|x| x == b"\r\n\r\n")
                    .unwrap_or(msg.len());
                received.lock().unwrap().push(Received {
                    len: msg.len(),
                    headers: String::from_utf8_lossy(&msg[..hend]).into_owned(),
                });
                match script(n) {
                    Action::Accept => b"250 queued\r\n",
                    Action::Stall(d) => {
                        tokio::time::sleep(d).await;
                        b"250 queued\r\n"
                    }
                    Action::Reply(rep) => {
                        w.write_all(rep.as_bytes()).await?;
                        w.write_all(b"\r\n").await?;
                        if rep.starts_with("421") {
                            return Ok(());
                        }
                        continue;
                    }
                    Action::Drop => return Ok(()),
                }
            }
        } else if cmd.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            if hold_after_quit {
                let mut sink = [0u8; 64];
                let _ = tokio::time::timeout(HOLD_AFTER_QUIT, r.read(&mut sink)).await;
            }
            return Ok(());
        } else {
            b"502 unknown\r\n"
        };
        w.write_all(reply).await?;
    }
}

/// A config for tests: quiet, fast timeouts (unless `extra` sets one), the given
/// extra flags.
pub fn config(servers: &[SocketAddr], extra: &[&str]) -> loadgen::Config {
    let list = servers
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["loadgen", "--servers", &list, "--quiet"];
    if !extra.contains(&"--timeout") {
        args.extend_from_slice(&["--timeout", "5"]);
    }
    args.extend_from_slice(extra);
    loadgen::Config::from_cli(args).unwrap()
}

pub async fn run(config: loadgen::Config) -> report::RunResult {
    loadgen::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap()
}
