//! What an idle TLS connection costs the server process: a measurement, run by hand
//! in a release build (it opens 2,000 connections):
//!
//! ```text
//! cargo test --release -p server --test tls_memory -- --ignored --nocapture
//! ```
//!
//! The server runs as its own process (the `smtp-server` binary), so that the
//! client's TLS state is not in the figure; its RSS is read from /proc before and
//! after `IDLE_CONNECTIONS` connections have each finished a handshake and an EHLO
//! and then stay idle. Target (issue 10): under 64 KiB per connection.

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
