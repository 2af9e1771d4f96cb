//! A tiny scriptable SMTP server for tests: it can stall, refuse, drop connections,
//! speak STARTTLS or implicit TLS with a certificate made for the test, check
//! AUTH PLAIN/LOGIN, and records every message, command and login it receives.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

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

/// How long a server with `hold_after_quit` keeps a socket open after its 221,
/// and how long one told to stall its handshake holds the connection.
const HOLD: Duration = Duration::from_secs(5);

/// A throwaway CA and a leaf certificate it signed for `localhost` and
/// `127.0.0.1`, with the CA written as PEM for `--tls-ca`.
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub server: Arc<ServerConfig>,
    _dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Stampede test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TestPki {
            ca_pem,
            server: Arc::new(server),
            _dir: dir,
        }
    }

    /// `--tls-ca <the CA>`.
    pub fn ca_path(&self) -> &str {
        self.ca_pem.to_str().unwrap()
    }
}

/// How a [`TestServer`] speaks TLS.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// TLS from the first byte; otherwise STARTTLS.
    pub implicit: bool,
    /// List STARTTLS in the EHLO reply (a server can be told not to, and then
    /// refuses the command as unknown).
    pub offer_starttls: bool,
    /// Never answer the ClientHello: hold the connection for [`HOLD`].
    pub stall_handshake: bool,
    /// Send a plaintext line right behind the 220 to STARTTLS, in the same
    /// write, as a man in the middle injecting a reply would (RFC 3207 5).
    pub inject_after_starttls: bool,
}

impl ServerTls {
    pub fn starttls(pki: &TestPki) -> ServerTls {
        ServerTls {
            config: Arc::clone(&pki.server),
            implicit: false,
            offer_starttls: true,
            stall_handshake: false,
            inject_after_starttls: false,
        }
    }

    pub fn implicit(pki: &TestPki) -> ServerTls {
        ServerTls {
            implicit: true,
            ..ServerTls::starttls(pki)
        }
    }
}

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
    /// [`HOLD`]), as some servers do, instead of closing first.
    pub hold_after_quit: bool,
    pub tls: Option<ServerTls>,
    /// Accepted `(user, password)`s; AUTH PLAIN LOGIN is offered when set.
    pub auth: Option<Vec<(&'static str, &'static str)>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            eod: TestServer::accepting(),
            mail: TestServer::accepting(),
            pipelining: true,
            rcpt_reply: None,
            hold_after_quit: false,
            tls: None,
            auth: None,
        }
    }
}

/// A message as received (dot-stuffed wire form, without the final `.CRLF`).
#[derive(Debug, Clone)]
pub struct Received {
    pub len: usize,
    pub headers: String,
}

/// What the server saw, shared with its sessions.
#[derive(Default)]
pub struct Seen {
    pub received: Mutex<Vec<Received>>,
    pub connections: AtomicU64,
    pub eods: AtomicU64,
    /// MAIL commands, whatever the answer.
    pub mails: AtomicU64,
    /// Every line sent during an AUTH exchange, as sent.
    pub auth_lines: Mutex<Vec<String>>,
    /// The user of every successful AUTH.
    pub logins: Mutex<Vec<String>>,
    pub handshakes: AtomicU64,
    pub resumed: AtomicU64,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicU64>,
    pub eods: Arc<AtomicU64>,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

/// One session's settings and the shared record.
struct Ctx {
    options: Options,
    seen: Arc<Seen>,
    received: Arc<Mutex<Vec<Received>>>,
    eods: Arc<AtomicU64>,
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
            ..Options::default()
        })
        .await
    }

    pub async fn start_options(options: Options) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let eods = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Seen::default());
        let ctx = Arc::new(Ctx {
            options,
            seen: Arc::clone(&seen),
            received: Arc::clone(&received),
            eods: Arc::clone(&eods),
        });
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                // As servers do: without it, a reply written behind the TLS 1.3
                // session tickets waits for their ACK (Nagle), 40 ms each time.
                let _ = sock.set_nodelay(true);
                c.fetch_add(1, Ordering::SeqCst);
                ctx.seen.connections.fetch_add(1, Ordering::SeqCst);
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    let _ = session(sock, ctx).await;
                });
            }
        });
        TestServer {
            addr,
            received,
            connections,
            eods,
            seen,
            task,
        }
    }

    pub fn accepting() -> Script {
        Arc::new(|_| Action::Accept)
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn logins(&self) -> Vec<String> {
        self.seen.logins.lock().unwrap().clone()
    }

    pub fn auth_lines(&self) -> Vec<String> {
        self.seen.auth_lines.lock().unwrap().clone()
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

/// How a dialogue ended.
enum Next<S> {
    Done,
    /// The client sent STARTTLS and got its 220: the handshake comes next.
    StartTls(BufReader<S>),
}

async fn session(sock: TcpStream, ctx: Arc<Ctx>) -> std::io::Result<()> {
    let tls = ctx.options.tls.clone();
    match tls {
        Some(tls) if tls.implicit => {
            let Some(stream) = handshake(&tls, sock, &ctx.seen).await? else {
                return Ok(());
            };
            dialogue(BufReader::new(stream), &ctx, true).await?;
        }
        _ => {
            if let Next::StartTls(r) = dialogue(BufReader::new(sock), &ctx, false).await?
                && let Some(tls) = &ctx.options.tls
                && let Some(stream) = handshake(tls, r.into_inner(), &ctx.seen).await?
            {
                dialogue(BufReader::new(stream), &ctx, true).await?;
            }
        }
    }
    Ok(())
}

/// The server side of the handshake, counted; `None` when told to stall.
async fn handshake(
    tls: &ServerTls,
    sock: TcpStream,
    seen: &Seen,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<TcpStream>>> {
    if tls.stall_handshake {
        let mut sock = sock;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(HOLD, async {
            while sock.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        return Ok(None);
    }
    let stream = TlsAcceptor::from(Arc::clone(&tls.config))
        .accept(sock)
        .await?;
    seen.handshakes.fetch_add(1, Ordering::SeqCst);
    if stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
        seen.resumed.fetch_add(1, Ordering::SeqCst);
    }
    Ok(Some(stream))
}

async fn write_line<S: AsyncWrite + Unpin>(w: &mut S, line: &str) -> std::io::Result<()> {
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\r\n").await
}

async fn read_line<S: AsyncRead + Unpin>(
    r: &mut BufReader<S>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    Ok(r.read_until(b'\n', line).await? > 0)
}

/// The SMTP dialogue over any stream; `secure` once TLS is up. The banner is sent
/// unless this is the dialogue after STARTTLS.
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    mut r: BufReader<S>,
    ctx: &Ctx,
    secure: bool,
) -> std::io::Result<Next<S>> {
    let o = &ctx.options;
    let seen = &ctx.seen;
    let after_starttls = secure && o.tls.as_ref().is_some_and(|t| !t.implicit);
    if !after_starttls {
        r.write_all(b"220 test ESMTP\r\n").await?;
    }
    let mut line = Vec::new();
    loop {
        if !read_line(&mut r, &mut line).await? {
            return Ok(Next::Done);
        }
        let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            let mut ehlo = String::from("250-test\r\n");
            if o.pipelining {
                ehlo.push_str("250-PIPELINING\r\n");
            }
            if !secure && o.tls.as_ref().is_some_and(|t| t.offer_starttls) {
                ehlo.push_str("250-STARTTLS\r\n");
            }
            if o.auth.is_some() {
                ehlo.push_str("250-AUTH PLAIN LOGIN\r\n");
            }
            ehlo.push_str("250 SIZE 104857600\r\n");
            r.write_all(ehlo.as_bytes()).await?;
            continue;
        } else if cmd.starts_with("STARTTLS")
            && !secure
            && let Some(tls) = &o.tls
        {
            if tls.inject_after_starttls {
                r.write_all(b"220 go ahead\r\n250 injected\r\n").await?;
                r.flush().await?;
                return Ok(Next::Done);
            }
            r.write_all(b"220 go ahead\r\n").await?;
            r.flush().await?;
            return Ok(Next::StartTls(r));
        } else if cmd.starts_with("AUTH") && o.auth.is_some() {
            let sent = String::from_utf8_lossy(&line).trim_end().to_string();
            seen.auth_lines.lock().unwrap().push(sent.clone());
            let reply = auth(&mut r, &sent, ctx).await?;
            write_line(&mut r, reply).await?;
            continue;
        } else if cmd.starts_with("MAIL") {
            match (o.mail)(seen.mails.fetch_add(1, Ordering::SeqCst)) {
                Action::Reply(rep) => {
                    write_line(&mut r, rep).await?;
                    if rep.starts_with("421") {
                        return Ok(Next::Done);
                    }
                    continue;
                }
                Action::Drop => return Ok(Next::Done),
                _ => b"250 ok\r\n",
            }
        } else if cmd.starts_with("RSET") {
            b"250 ok\r\n"
        } else if cmd.starts_with("RCPT") {
            match o.rcpt_reply {
                Some(rep) => {
                    write_line(&mut r, rep).await?;
                    continue;
                }
                None => b"250 ok\r\n",
            }
        } else if cmd.starts_with("DATA") {
            if o.rcpt_reply.is_some() {
                b"554 no valid recipients\r\n"
            } else {
                r.write_all(b"354 go\r\n").await?;
                let mut msg = Vec::new();
                loop {
                    if !read_line(&mut r, &mut line).await? {
                        return Ok(Next::Done);
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    msg.extend_from_slice(&line);
                }
                let n = ctx.eods.fetch_add(1, Ordering::SeqCst);
                let hend = msg
                    .windows(4)
                    .position(|x| x == b"\r\n\r\n")
                    .unwrap_or(msg.len());
                ctx.received.lock().unwrap().push(Received {
                    len: msg.len(),
                    headers: String::from_utf8_lossy(&msg[..hend]).into_owned(),
                });
                match (o.eod)(n) {
                    Action::Accept => b"250 queued\r\n",
                    Action::Stall(d) => {
                        tokio::time::sleep(d).await;
                        b"250 queued\r\n"
                    }
                    Action::Reply(rep) => {
                        write_line(&mut r, rep).await?;
                        if rep.starts_with("421") {
                            return Ok(Next::Done);
                        }
                        continue;
                    }
                    Action::Drop => return Ok(Next::Done),
                }
            }
        } else if cmd.starts_with("QUIT") {
            r.write_all(b"221 bye\r\n").await?;
            r.flush().await?;
            if o.hold_after_quit {
                let mut sink = [0u8; 64];
                let _ = tokio::time::timeout(HOLD, r.read(&mut sink)).await;
            }
            return Ok(Next::Done);
        } else {
            b"502 unknown\r\n"
        };
        r.write_all(reply).await?;
    }
}

/// One AUTH exchange, `command` being the AUTH line; the final reply to send.
async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    command: &str,
    ctx: &Ctx,
) -> std::io::Result<&'static str> {
    let mut words = command.split_ascii_whitespace().skip(1);
    let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
    let initial = words.next().map(str::to_string);
    // Reads the client's answer to a challenge; `None` when cancelled or gone.
    let mut line = Vec::new();
    let mut answer = async |challenge: &str| -> std::io::Result<Option<String>> {
        write_line(r, challenge).await?;
        if !read_line(r, &mut line).await? {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        ctx.seen.auth_lines.lock().unwrap().push(text.clone());
        Ok((text != "*").then_some(text))
    };
    let decode = |b64: &str| {
        BASE64
            .decode(b64)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
    };
    let (user, password) = match mechanism.as_str() {
        "PLAIN" => {
            let blob = match initial {
                Some(b) => b,
                None => match answer("334 ").await? {
                    Some(b) => b,
                    None => return Ok("501 5.5.2 cancelled"),
                },
            };
            let Some(text) = decode(&blob) else {
                return Ok("501 5.5.2 bad base64");
            };
            let mut parts = text.split('\0').skip(1);
            match (parts.next(), parts.next()) {
                (Some(u), Some(p)) => (u.to_string(), p.to_string()),
                _ => return Ok("501 5.5.2 bad PLAIN"),
            }
        }
        "LOGIN" => {
            let Some(u) = answer("334 VXNlcm5hbWU6").await? else {
                return Ok("501 5.5.2 cancelled");
            };
            let Some(p) = answer("334 UGFzc3dvcmQ6").await? else {
                return Ok("501 5.5.2 cancelled");
            };
            match (decode(&u), decode(&p)) {
                (Some(u), Some(p)) => (u, p),
                _ => return Ok("501 5.5.2 bad base64"),
            }
        }
        _ => return Ok("504 5.5.4 unknown mechanism"),
    };
    let users = ctx.options.auth.as_deref().unwrap_or_default();
    if users.iter().any(|(u, p)| *u == user && *p == password) {
        ctx.seen.logins.lock().unwrap().push(user);
        Ok("235 2.7.0 Authentication successful")
    } else {
        Ok("535 5.7.8 Authentication credentials invalid")
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

/// The reference smtp-server in this process, with its local-testing settings
/// changed by `tune` (the tests that need the real server's limits and replies).
pub async fn start_reference(tune: impl FnOnce(&mut server::Config)) -> server::RunningServer {
    let mut c = server::Config::for_local_testing();
    tune(&mut c);
    server::start(c).await.expect("reference server starts")
}

/// Stops a server from [`start_reference`]; fails the test if it does not stop
/// cleanly within 10 s.
pub async fn stop_reference(server: server::RunningServer) {
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("server stops in time")
        .expect("server stops cleanly");
}
