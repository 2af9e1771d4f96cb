//! What TLS costs the generator, measured rather than asserted: the `loadgen`
//! binary against the test server (in this process, on its own thread), the same
//! load in plaintext, over STARTTLS with and without resumption, and with 100
//! messages per connection. Run in release mode on a quiet machine:
//!
//! ```text
//! cargo test --release -p loadgen --test tls_figures -- --ignored --nocapture
//! ```
//!
//! It prints one line per variant: msg/s, the `tls` phase's p50/p99, the share of
//! resumed handshakes, and the generator's own CPU seconds per 10,000 messages
//! and, with one message per connection, how much of that the handshakes add
//! (the binary is a separate process, so the server's work is not in it). The
//! server is the test server on one thread, so the msg/s show its limit more
//! than the generator's.

mod common;

use common::{Options, ServerTls, TestPki, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");
const MESSAGES: &str = "4000";

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "a measurement: run it in release mode, see the module's comment"]
async fn tls_cost_figures() {
    let pki = TestPki::new();
    let server = TestServer::start_options(Options {
        tls: Some(ServerTls::starttls(&pki)),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let addr = server.addr.to_string();
    let variants: [(&str, &[&str]); 4] = [
        ("plaintext", &[]),
        (
            "starttls, resume on",
            &["--tls", "starttls", "--tls-resume", "on"],
        ),
        (
            "starttls, resume off",
            &["--tls", "starttls", "--tls-resume", "off"],
        ),
        (
            "starttls, 100 msgs/conn",
            &["--tls", "starttls", "--msgs-per-conn", "100"],
        ),
    ];
    // The plaintext run's CPU per 10,000 messages, the baseline (it runs first).
    let mut plain_cpu = None;
    for (name, extra) in variants {
        let out = dir.path().join("run.json");
        let ca_path = pki.ca_path();
        let ca: &[&str] = if extra.is_empty() {
            &[]
        } else {
            &["--tls-ca", ca_path]
        };
        let status = tokio::process::Command::new(BIN)
            .args(["--servers", &addr, "--quiet", "--threads", "1"])
            .args(["--messages", MESSAGES, "--workers", "20", "--size", "1KiB"])
            .args(ca)
            .args(extra)
            .arg("-o")
            .arg(&out)
            .status()
            .await
            .unwrap();
        assert!(status.success(), "{name}");
        let r = report::load(&out).unwrap();
        let m = &r.metrics;
        assert_eq!(m.failed_messages, 0, "{name}: {m:?}");
        let cpu = r
            .run
            .as_ref()
            .and_then(|run| run.generator)
            .unwrap()
            .cpu_seconds;
        let per_10k_messages = cpu * 10_000.0 / m.total_messages as f64;
        let plain = *plain_cpu.get_or_insert(per_10k_messages);
        let line = match (&r.tls, m.phases_ms.get("tls")) {
            (Some(tls), Some(phase)) => {
                // With one message per connection every message did a handshake:
                // its cost is what the message costs beyond a plaintext one.
                let extra = if tls.handshakes == m.total_messages {
                    format!(" (+{:.2} over plaintext)", per_10k_messages - plain)
                } else {
                    String::new()
                };
                format!(
                    "tls p50 {:.3} ms p99 {:.3} ms, {} handshakes, {:.0}% resumed, \
                     generator {per_10k_messages:.2} CPU s per 10,000 messages{extra}",
                    phase.p50,
                    phase.p99,
                    tls.handshakes,
                    tls.resumed_percent(),
                )
            }
            _ => format!("generator {per_10k_messages:.2} CPU s per 10,000 messages"),
        };
        let phases: Vec<String> = report::Phase::ALL
            .iter()
            .filter_map(|p| {
                let l = m.phases_ms.get(p.as_str())?;
                Some(format!("{p} {:.2}", l.p50))
            })
            .collect();
        println!(
            "{name:<26} {:>8.0} msg/s  latency p50 {:.3} ms  {line}\n{:<26} phase p50 ms: {}",
            m.messages_per_second,
            m.latency_ms.p50,
            "",
            phases.join(", ")
        );
    }
}
