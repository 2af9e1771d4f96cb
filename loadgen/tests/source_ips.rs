//! `--source-ips`: connections from many local addresses, round-robin, in every
//! mode, over real sockets on loopback (on Linux all of 127.0.0.0/8 is on `lo`).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::{config, run, start_reference, stop_reference as stop};

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

/// A minimal accepting SMTP server that remembers the peer address of every
/// connection, in the order they were accepted.
struct PeerLog {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<IpAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerLog {
    async fn start() -> PeerLog {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&peers);
        let task = tokio::spawn(async move {
            while let Ok((sock, peer)) = listener.accept().await {
                log.lock().unwrap().push(peer.ip());
                tokio::spawn(serve(sock));
            }
        });
        PeerLog { addr, peers, task }
    }

    /// Connections accepted per peer address.
    fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for ip in self.peers.lock().unwrap().iter() {
            *counts.entry(ip.to_string()).or_default() += 1;
        }
        counts
    }

    fn first(&self) -> Option<IpAddr> {
        self.peers.lock().unwrap().first().copied()
    }
}

impl Drop for PeerLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts every message: 220, 250 to every command, 354 to DATA, 221 to QUIT.
async fn serve(sock: TcpStream) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    if w.write_all(b"220 peerlog ESMTP\r\n").await.is_err() {
        return;
    }
    let mut line = Vec::new();
    let mut in_data = false;
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply: &[u8] = if in_data {
            if line != b".\r\n" {
                continue;
            }
            in_data = false;
            b"250 2.0.0 queued\r\n"
        } else {
            let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
            match &verb[..] {
                b"DATA" => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                b"QUIT" => {
                    let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
                    return;
                }
                _ => b"250 ok\r\n",
            }
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn per_source(r: &report::RunResult) -> BTreeMap<String, (u64, u64)> {
    r.per_source
        .iter()
        .map(|s| (s.address.clone(), (s.connections, s.banners)))
        .collect()
}

#[tokio::test]
async fn connections_go_round_robin_over_the_addresses_and_the_result_counts_them() {
    let server = PeerLog::start().await;
    let r = run(config(
        &[server.addr],
        &[
            "--messages",
            "12",
            "--workers",
            "3",
            "--source-ips",
            "127.0.0.2-127.0.0.4,127.0.0.9",
        ],
    ))
    .await;
    assert_eq!(r.metrics.successful_messages, 12, "{:?}", r.metrics);
    // The preflight connects once, from the first address, before the run.
    assert_eq!(server.first(), Some("127.0.0.2".parse().unwrap()));
    let seen = server.counts();
    let want: BTreeMap<String, u64> = [
        ("127.0.0.2", 4),
        ("127.0.0.3", 3),
        ("127.0.0.4", 3),
        ("127.0.0.9", 3),
    ]
    .into_iter()
    .map(|(a, n)| (a.to_string(), n))
    .collect();
    assert_eq!(seen, want, "twelve connections dealt over four addresses");
    let counted: BTreeMap<String, (u64, u64)> =
        ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
            .into_iter()
            .map(|a| (a.to_string(), (3, 3)))
            .collect();
    assert_eq!(per_source(&r), counted);
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains("\"per_source\""), "{text}");
    let recorded = &r.run.as_ref().unwrap().config["source_ips"];
    assert_eq!(recorded, "127.0.0.2-127.0.0.4,127.0.0.9");
}

#[tokio::test]
async fn every_mode_binds_its_connections_to_the_sources() {
    for extra in [
        &["--mode", "burst", "--messages", "8", "--workers", "2"][..],
        &[
            "--mode",
            "sustained",
            "--rate",
            "16",
            "--duration",
            "500ms",
            "--workers",
            "2",
        ][..],
        &["--mode", "stages", "--stages", "500ms:32", "--workers", "2"][..],
    ] {
        let server = PeerLog::start().await;
        let mut args = extra.to_vec();
        args.extend(["--source-ips", "127.0.0.16/30", "--no-preflight"]);
        let r = run(config(&[server.addr], &args)).await;
        let m = &r.metrics;
        assert!(m.total_messages >= 8, "{extra:?}: {m:?}");
        assert_eq!(m.failed_messages, 0, "{extra:?}: {m:?}");
        // A /30 holds two hosts; one message per connection.
        let seen = server.counts();
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["127.0.0.17", "127.0.0.18"],
            "{extra:?}"
        );
        let (a, b) = (seen["127.0.0.17"], seen["127.0.0.18"]);
        assert_eq!(a + b, m.total_messages, "{extra:?}");
        assert!(a.abs_diff(b) <= 1, "{extra:?}: {seen:?}");
        let counted: u64 = r.per_source.iter().map(|s| s.connections).sum();
        assert_eq!(counted, m.total_messages, "{extra:?}");
    }
}

#[tokio::test]
async fn without_the_flag_there_is_no_per_source_key() {
    let server = PeerLog::start().await;
    let r = run(config(&[server.addr], &["--messages", "3"])).await;
    assert_eq!(r.metrics.successful_messages, 3);
    assert!(r.per_source.is_empty());
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains("per_source") && !text.contains("source_ips"));
}

/// Eight sessions, each keeping its connection for all its messages, against a
/// per-IP limit of two.
fn held_burst(server: SocketAddr, sources: &str) -> loadgen::Config {
    config(
        &[server],
        &[
            "--messages",
            "40",
            "--workers",
            "8",
            "--msgs-per-conn",
            "1000",
            "--no-preflight",
            "--source-ips",
            sources,
        ],
    )
}

#[tokio::test]
async fn a_per_ip_limit_refuses_one_address_and_serves_eight() {
    let server = start_reference(|c| c.max_connections_per_ip = 2).await;
    let one = run(held_burst(server.smtp_addr(), "127.0.0.2")).await;
    let refused = server.stats().connections_rejected["max_connections_per_ip"];
    let m = &one.metrics;
    assert!(
        refused >= 1,
        "8 sessions from one address over a limit of 2"
    );
    assert_eq!(m.error_breakdown.get("421"), Some(&refused), "{m:?}");
    let s = &one.per_source[..];
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].address, "127.0.0.2");
    assert_eq!(s[0].refused_421, refused, "{s:?}");
    assert_eq!(s[0].connections, s[0].banners + s[0].refused_421, "{s:?}");

    // Other addresses than the first run's, whose sessions the server may still
    // be closing.
    let eight = run(held_burst(server.smtp_addr(), "127.0.0.3-127.0.0.10")).await;
    let m = &eight.metrics;
    assert_eq!((m.successful_messages, m.failed_messages), (40, 0), "{m:?}");
    assert_eq!(
        server.stats().connections_rejected["max_connections_per_ip"],
        refused,
        "no new refusal"
    );
    assert_eq!(eight.per_source.len(), 8);
    for s in &eight.per_source {
        assert_eq!(
            (s.connections, s.banners, s.refused_421),
            (1, 1, 0),
            "{s:?}"
        );
    }
    stop(server).await;
}

fn loadgen(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["--quiet", "--messages", "1"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_list_exits_2_naming_the_flag_and_the_item() {
    for (spec, want) in [
        ("", "is empty"),
        (
            "127.0.0.9-127.0.0.2",
            "\"127.0.0.9-127.0.0.2\": the range runs backwards",
        ),
        (
            "127.0.0.2,::1",
            "\"::1\" is IPv6 but the list began with IPv4",
        ),
        ("127.0.0.2,bogus", "\"bogus\" is not an address"),
        (
            "127.0.0.0/15",
            "\"127.0.0.0/15\" brings the list over 65536 addresses",
        ),
        // TEST-NET-1 (RFC 5737): never an address of this host.
        (
            "127.0.0.2,192.0.2.7",
            "192.0.2.7 is not an address of this host",
        ),
    ] {
        let (code, err) = loadgen(&["--servers", "127.0.0.1:1", "--source-ips", spec]);
        assert_eq!(code, Some(2), "{spec:?}: {err}");
        assert!(err.contains("--source-ips: "), "{spec:?}: {err}");
        assert!(err.contains(want), "{spec:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn the_environment_variable_sets_the_list_and_is_checked_like_the_flag() {
    let out = Command::new(BIN)
        .args(["--quiet", "--servers", "127.0.0.1:1"])
        .env("LOADGEN_SOURCE_IPS", "127.0.0.300")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--source-ips: \"127.0.0.300\""), "{err}");
}

#[test]
fn sources_of_the_wrong_family_for_the_server_are_a_startup_error() {
    let (code, err) = loadgen(&["--servers", "[::1]:1", "--source-ips", "127.0.0.2"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--source-ips: 127.0.0.2 is IPv4 but the server [::1]:1 is IPv6"),
        "{err}"
    );
}
