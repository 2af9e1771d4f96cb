//! What TLS costs the server process: measurements, run by hand in a release build
//! (they open thousands of connections):
//!
//! ```text
//! cargo test --release -p server --test tls_figures -- --ignored --nocapture --test-threads 1
//! ```
//!
//! The server runs as its own process (the `smtp-server` binary), so that the
//! client's TLS work is not in the figures; its RSS and CPU time are read from /proc.
//! - `rss_per_idle_tls_connection`: RSS before and after `IDLE_CONNECTIONS`
//!   connections have each finished a handshake and an EHLO and then stay idle.
//!   Target (issue 10): under 64 KiB per connection.
//! - `server_cpu_per_10k_handshakes`: server CPU time for connect + handshake +
//!   banner + QUIT, full handshakes and resumed ones, minus the same without TLS.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Client;
use common::tls::connector;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-server");
const IDLE_CONNECTIONS: usize = 1000;
const TARGET_PER_CONNECTION: u64 = 64 * 1024;

struct Server {
    child: Child,
    smtp: SocketAddr,
    implicit: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(name)? + name.len() + 1;
    line[start..].split([' ', '"', ',']).next()
}

fn spawn_server(ca: &std::path::Path) -> Server {
    let limit = (4 * IDLE_CONNECTIONS).to_string();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("RUST_LOG", "info")
        .args(["--bind", "127.0.0.1", "--port", "0", "--admin-port", "0"])
        .args(["--tls-self-signed", "--tls-ca-out", ca.to_str().unwrap()])
        .args(["--implicit-tls-port", "0"])
        .args([
            "--max-connections",
            &limit,
            "--max-connections-per-ip",
            &limit,
        ])
        .args(["--max-requests-per-window", "1000000"])
        .args(["--max-requests-per-window-per-ip", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn smtp-server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the whole log, so that the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("smtp_addr") {
                let _ = tx.send(line);
            }
        }
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no startup line");
    };
    Server {
        smtp: field(&line, "smtp_addr").unwrap().parse().unwrap(),
        implicit: field(&line, "implicit_tls_addr").unwrap().parse().unwrap(),
        child,
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// RSS once it has stopped moving (the server finishes its last handshakes after
/// the clients saw theirs).
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_bytes(pid);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_bytes(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// The process's user + system CPU time so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

const HANDSHAKES: usize = 4000;
const CLIENTS: usize = 20;

/// Server CPU seconds for `HANDSHAKES` connections (20 clients at a time), each
/// connect, handshake (unless `connector` is `None`), banner, QUIT.
async fn server_cpu_for_connections(
    pid: u32,
    addr: SocketAddr,
    connector: Option<tokio_rustls::TlsConnector>,
) -> f64 {
    let before = cpu_seconds(pid);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let connector = connector.clone();
        clients.spawn(async move {
            for _ in 0..HANDSHAKES / CLIENTS {
                let mut c = match &connector {
                    Some(connector) => Client::connect_tls(addr, connector).await.0,
                    None => Client::connect(addr).await,
                };
                c.reply().await.assert(220, "");
                c.cmd("QUIT").await.assert(221, "2.0.0");
                assert!(c.is_closed().await);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    cpu_seconds(pid) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand in release mode"]
async fn server_cpu_per_10k_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = spawn_server(&ca);
    let pid = server.child.id();
    let resuming = connector(&ca);
    let mut full = common::tls::client_config(&ca, rustls::DEFAULT_VERSIONS);
    full.resumption = rustls::client::Resumption::disabled();
    let full = tokio_rustls::TlsConnector::from(std::sync::Arc::new(full));
    let plain = server_cpu_for_connections(pid, server.smtp, None).await;
    let full = server_cpu_for_connections(pid, server.implicit, Some(full)).await;
    let resumed = server_cpu_for_connections(pid, server.implicit, Some(resuming)).await;
    let per_10k = |cpu: f64| (cpu - plain) * 10_000.0 / HANDSHAKES as f64;
    println!(
        "server CPU for {HANDSHAKES} connections: plaintext {plain:.2}s, full TLS 1.3 handshakes {full:.2}s, resumed {resumed:.2}s"
    );
    println!(
        "server CPU per 10,000 handshakes (TLS minus plaintext): full {:.2}s, resumed {:.2}s",
        per_10k(full),
        per_10k(resumed)
    );
    assert!(full > plain, "a handshake costs something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand in release mode"]
async fn rss_per_idle_tls_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let server = spawn_server(&ca);
    let connector = connector(&ca);
    let pid = server.child.id();

    // Warm up: the first connections allocate the runtime's and allocator's pools.
    let mut warm = Vec::new();
    for _ in 0..20 {
        let (mut c, _) = Client::connect_tls(server.implicit, &connector).await;
        c.reply().await.assert(220, "");
        c.cmd("EHLO client.test").await;
        warm.push(c);
    }
    for (name, implicit) in [("implicit TLS", true), ("STARTTLS", false)] {
        let before = settled_rss(pid).await;
        let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
        for _ in 0..IDLE_CONNECTIONS {
            let c = if implicit {
                let (mut c, _) = Client::connect_tls(server.implicit, &connector).await;
                c.reply().await.assert(220, "");
                c
            } else {
                Client::ready(server.smtp)
                    .await
                    .start_tls(&connector)
                    .await
                    .0
            };
            let mut c = c;
            c.cmd("EHLO client.test").await;
            idle.push(c);
        }
        let after = settled_rss(pid).await;
        let per_connection = after.saturating_sub(before) / IDLE_CONNECTIONS as u64;
        println!(
            "{name}: RSS {} KiB -> {} KiB with {IDLE_CONNECTIONS} idle connections: {} bytes ({:.1} KiB) per connection",
            before / 1024,
            after / 1024,
            per_connection,
            per_connection as f64 / 1024.0
        );
        assert!(
            per_connection < TARGET_PER_CONNECTION,
            "{name}: {per_connection} bytes per idle TLS connection"
        );
        // Keep them open while the next kind is measured.
        warm.extend(idle);
    }
}
