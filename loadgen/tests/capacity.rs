//! `--mode capacity` against a server whose capacity is known by construction:
//! it accepts every connection but lets at most `N` messages be served at a time
//! (a semaphore; the rest wait, unserved, at their final dot) and answers each
//! final dot after `D`. Its capacity is exactly `N / D` messages a second
//! whatever the protocol costs around it: nothing else is rationed.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

/// A running known-capacity server; dropping it stops accepting.
struct KnownCapacityServer {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl KnownCapacityServer {
    /// At most `sessions` messages in service at once, each for `delay`.
    async fn start(sessions: usize, delay: Duration) -> KnownCapacityServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let permits = Arc::new(Semaphore::new(sessions));
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, Arc::clone(&permits), delay));
            }
        });
        KnownCapacityServer { addr, accept }
    }

    /// Messages a second it can serve: `sessions / delay`.
    fn capacity(sessions: usize, delay: Duration) -> f64 {
        sessions as f64 / delay.as_secs_f64()
    }
}

impl Drop for KnownCapacityServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One SMTP session: every command accepted; the final dot waits for a permit,
/// holds it for `delay`, then gets its 250.
async fn session(socket: TcpStream, permits: Arc<Semaphore>, delay: Duration) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    if write
        .write_all(b"220 known-capacity ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut in_data = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let reply: &[u8] = if in_data {
            if line != "." {
                continue;
            }
            in_data = false;
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            tokio::time::sleep(delay).await;
            b"250 2.0.0 queued\r\n"
        } else {
            match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                Some("EHLO") | Some("HELO") => b"250 known-capacity\r\n",
                Some("DATA") => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                Some("QUIT") => {
                    let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
                    return;
                }
                _ => b"250 2.0.0 ok\r\n",
            }
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn config(server: SocketAddr, extra: &[&str]) -> loadgen::Config {
    let server = server.to_string();
    let mut args = vec![
        "loadgen",
        "--servers",
        &server,
        "--quiet",
        "--mode",
        "capacity",
        "--size",
        "small",
        "--timeout",
        "5",
    ];
    args.extend_from_slice(extra);
    loadgen::Config::from_cli(args).unwrap()
}

async fn search(config: loadgen::Config) -> report::RunResult {
    loadgen::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap()
}

/// The step table, for a failing assertion's message.
fn steps_text(c: &report::CapacitySummary) -> String {
    c.steps
        .iter()
        .map(|s| {
            format!(
                "{} @{}/s: ok/s {:.1} p99 {:.1} corr {:.1} late {} {} {:?}{}",
                s.index,
                s.rate,
                s.achieved_rate,
                s.latency_ms.p99,
                s.latency_corrected_ms.p99,
                s.late,
                if s.passed { "pass" } else { "FAIL" },
                s.broke,
                if s.generator_saturated {
                    " saturated"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_search_finds_a_known_capacity_within_ten_percent() {
    // 10 messages at a time, 50 ms each: 200 msg/s. Under it a message takes
    // 50 ms (60-90 ms at p99 on a loaded machine); over it the queue grows
    // without end, by 2 × (rate − 200) messages in a two-second step, each adding
    // 5 ms: at 210 msg/s the p99 is past 150 ms. So the knee is sharp, and a
    // stall of the machine must add 60 ms to a passing step's p99 to break it.
    let (sessions, delay) = (10, Duration::from_millis(50));
    let truth = KnownCapacityServer::capacity(sessions, delay);
    let server = KnownCapacityServer::start(sessions, delay).await;
    let started = Instant::now();
    let r = search(config(
        server.addr,
        &[
            "--slo",
            "p99<=150ms,success_rate>=99.9",
            "--start-rate",
            "25",
            "--step-duration",
            "2s",
            "--cooldown",
            "500ms",
            "--drain-timeout",
            "1s",
            // The machine running the tests is loaded: a timer waking a little
            // late is not the generator failing to keep up.
            "--late-tolerance-ms",
            "50",
        ],
    ))
    .await;
    let took = started.elapsed();
    let c = r.capacity.clone().expect("a capacity result");
    let table = steps_text(&c);
    eprintln!(
        "known capacity {truth} msg/s, found in {took:?}:\n{table}\n{}",
        c.verdict()
    );
    assert!(!c.generator_limited, "{table}");
    let found = c.max_rate_meeting_slo.expect("a rate met the SLO");
    let broke = c.first_rate_breaking_slo.expect("a rate broke the SLO");
    assert!(
        (found - truth).abs() <= 0.1 * truth,
        "found {found} msg/s against a true {truth}:\n{table}"
    );
    assert!(
        broke <= found * 1.05 + 1e-9,
        "bisected to 5%: {found}..{broke}"
    );
    assert!(c.steps.len() >= 5, "grew and then bisected:\n{table}");
    // Doubling from 25 reaches 200 on the fourth step.
    let rates: Vec<f64> = c.steps.iter().map(|s| s.rate).collect();
    assert_eq!(rates[..3], [25.0, 50.0, 100.0], "{table}");
    assert!(c.which_slo_broke.is_some());
    // The top-level figures are the fastest passing step's.
    assert_eq!(r.target_rate, Some(found));
    assert_eq!(r.test_type, "capacity");
    let head = c.headline_step().unwrap();
    assert_eq!(r.metrics.total_messages, head.sent);
    assert!(head.sent as f64 >= found * 2.0 - 1.0);
    let config = &r.run.as_ref().unwrap().config;
    assert_eq!(config["mode"], "capacity");
    assert_eq!(config["slo"][0], "p99<=150ms");
    // Steps follow each other with the cool-down between them.
    for w in c.steps.windows(2) {
        assert!(w[1].start_s >= w[0].end_s + 0.4, "{:?}", w);
    }
}

#[tokio::test]
async fn reaching_max_rate_with_the_slo_met_says_at_least() {
    // 50 at a time, 2 ms each: 25,000 msg/s, far above the 100 msg/s allowed.
    let server = KnownCapacityServer::start(50, Duration::from_millis(2)).await;
    let r = search(config(
        server.addr,
        &[
            "--slo",
            "p99<=500ms,success_rate>=99",
            "--start-rate",
            "40",
            "--max-rate",
            "100",
            "--step-duration",
            "1s",
            "--cooldown",
            "0s",
        ],
    ))
    .await;
    let c = r.capacity.expect("a capacity result");
    let rates: Vec<f64> = c.steps.iter().map(|s| s.rate).collect();
    assert_eq!(rates, [40.0, 80.0, 100.0], "{}", steps_text(&c));
    assert_eq!(c.max_rate_meeting_slo, Some(100.0));
    assert_eq!(c.first_rate_breaking_slo, None);
    assert!(!c.generator_limited);
    assert!(
        c.verdict().starts_with("at least 100 msg/s"),
        "{}",
        c.verdict()
    );
    assert_eq!(r.target_rate, Some(100.0));
    assert_eq!(r.metrics.successful_messages, 100);
}

#[tokio::test]
async fn too_few_sessions_make_the_answer_at_least_not_a_capacity() {
    // The server takes 200 msg/s, but 4 sessions of 50 ms each carry 80 msg/s:
    // past that the sends queue in the generator while the server still answers
    // in 50 ms. The search must say "at least", never that the server broke.
    let delay = Duration::from_millis(50);
    let server = KnownCapacityServer::start(10, delay).await;
    let r = search(config(
        server.addr,
        &[
            "--slo",
            "p99<=100ms",
            "--workers",
            "4",
            "--start-rate",
            "30",
            "--step-duration",
            "2s",
            "--cooldown",
            "200ms",
            "--drain-timeout",
            "1s",
            "--late-tolerance-ms",
            "50",
        ],
    ))
    .await;
    let c = r.capacity.expect("a capacity result");
    let table = steps_text(&c);
    assert!(c.generator_limited, "{table}");
    assert_eq!(c.first_rate_breaking_slo, None, "{table}");
    assert_eq!(c.max_rate_meeting_slo, Some(60.0), "{table}");
    let last = c.steps.last().unwrap();
    assert_eq!(last.rate, 120.0, "{table}");
    assert!(last.generator_saturated && !last.passed, "{table}");
    assert!(r.generator_saturated, "the top level says so too");
    assert!(
        c.verdict().starts_with("at least 60 msg/s"),
        "{}",
        c.verdict()
    );
}

#[test]
fn bad_capacity_flags_exit_2_naming_the_flag() {
    let rows: [(&[&str], &str); 6] = [
        (
            &["--mode", "capacity", "--slo", "p99<=fast"],
            "--slo: \"p99<=fast\"",
        ),
        (
            &["--mode", "capacity", "--slo", "p99<=1s,speed>=3"],
            "--slo: \"speed>=3\": unknown figure",
        ),
        (
            &["--mode", "capacity"],
            "--slo: needed with --mode capacity",
        ),
        (&["--slo", "p99<=1s"], "--slo: needs --mode capacity"),
        (
            &[
                "--mode",
                "capacity",
                "--slo",
                "p99<=1s",
                "--start-rate",
                "500",
                "--max-rate",
                "100",
            ],
            "--max-rate: 100 is below --start-rate 500",
        ),
        (
            &[
                "--mode",
                "capacity",
                "--slo",
                "p99<=1s",
                "--require",
                "p99<=1s",
            ],
            "--require: not with --mode capacity",
        ),
    ];
    for (flags, want) in rows {
        let out = Command::new(BIN)
            .args(["--servers", "127.0.0.1:1"])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{flags:?}: want {want:?} in {stderr}"
        );
    }
}

#[tokio::test]
async fn the_binary_writes_the_capacity_key_and_prints_the_step_table() {
    let server = KnownCapacityServer::start(50, Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("capacity.json");
    let out = tokio::process::Command::new(BIN)
        .args(["--servers", &server.addr.to_string()])
        .args(["--mode", "capacity", "--slo", "p99<=500ms,success_rate>=99"])
        .args(["--start-rate", "20", "--max-rate", "40"])
        .args([
            "--step-duration",
            "1s",
            "--cooldown",
            "0s",
            "--size",
            "small",
        ])
        .arg("-o")
        .arg(&out_file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("capacity search (SLO p99<=500ms, success_rate>=99)"),
        "{stdout}"
    );
    assert!(stdout.contains("at least 40 msg/s"), "{stdout}");
    assert!(stderr.contains("capacity step 1 at 40 msg/s"), "{stderr}");
    let r = report::load(&out_file).unwrap();
    assert_eq!(r.schema.as_deref(), Some(report::SCHEMA_V1));
    let c = r.capacity.unwrap();
    assert_eq!(c.steps.len(), 2);
    assert_eq!(c.resolution_percent, 5.0);
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(raw["capacity"]["max_rate_meeting_slo"], 40.0);
    assert!(raw["capacity"]["first_rate_breaking_slo"].is_null());
    assert_eq!(raw["capacity"]["steps"][1]["broke"], serde_json::json!([]));
}
