//! `--require` and `--abort-on-fail`: the `loadgen` binary, run as a user would,
//! against the reference server started in-process; the exit code and the
//! result's `gates` key are what a CI job reads.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use report::GateOutcome;

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

async fn start(config: server::Config) -> server::RunningServer {
    server::start(config).await.unwrap()
}

/// A server that takes every message.
async fn accepting() -> server::RunningServer {
    start(server::Config::for_local_testing()).await
}

/// A server that refuses every message of the size the tests send (552 after
/// the data: larger than it takes).
async fn refusing() -> server::RunningServer {
    start(server::Config {
        max_message_size: 2000,
        ..server::Config::for_local_testing()
    })
    .await
}

async fn loadgen(server: &server::RunningServer, out: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args([
            "--servers",
            &server.smtp_addr().to_string(),
            "--timeout",
            "5s",
        ])
        .args(["--output"])
        .arg(out)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn gates_of(path: &Path) -> (report::RunResult, Vec<GateOutcome>) {
    let r = report::load(path).unwrap();
    let gates = r.gates.clone().expect("the result records its gates");
    (r, gates)
}

async fn stop(server: server::RunningServer) {
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn met_gates_exit_0_and_are_recorded_as_passed() {
    let server = accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("met.json");
    let out = loadgen(
        &server,
        &out_file,
        &[
            "--messages",
            "40",
            "--workers",
            "4",
            "--size",
            "small",
            "--require",
            "success_rate>=99.9",
            // A comma list, as in LOADGEN_REQUIRE.
            "--require",
            "p99<=10s,failed==0",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (r, gates) = gates_of(&out_file);
    assert_eq!(r.metrics.successful_messages, 40);
    let judged: Vec<(&str, &str, bool)> = gates
        .iter()
        .map(|g| (g.gate.as_str(), g.figure.as_str(), g.passed))
        .collect();
    // Burst mode measures no corrected latency: p99 is the service time.
    assert_eq!(
        judged,
        [
            ("success_rate>=99.9", "success_rate", true),
            ("p99<=10s", "p99", true),
            ("failed==0", "failed_messages", true),
        ]
    );
    assert_eq!(gates[0].observed, Some(100.0));
    assert_eq!(gates[1].limit, 10_000.0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("PASS  success_rate >= 99.90%"), "{stdout}");
    stop(server).await;
}

#[tokio::test]
async fn a_missed_gate_exits_99_after_writing_the_result() {
    let server = accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("missed.json");
    // A sustained run: latency gates are judged on the corrected latency. No
    // SMTP transaction over TCP takes under a microsecond.
    let out = loadgen(
        &server,
        &out_file,
        &[
            "--mode",
            "sustained",
            "--rate",
            "40",
            "--duration",
            "1s",
            "--size",
            "small",
            "--require",
            "success_rate>=99.9",
            "--require",
            "p99<=1us",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(99), "{}", text(&out.stderr));
    let (r, gates) = gates_of(&out_file);
    assert_eq!(r.metrics.successful_messages, 40);
    assert!(!r.interrupted());
    assert!(gates[0].passed, "{gates:?}");
    let p99 = &gates[1];
    assert_eq!((p99.figure.as_str(), p99.passed), ("corrected_p99", false));
    let corrected = r.metrics.latency_corrected_ms.unwrap().p99;
    assert_eq!(p99.observed, Some(corrected));
    assert!(corrected > 0.001);
    assert!(!p99.aborted_run, "a gate judged at the end stopped nothing");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL  corrected_p99 <= 0.001 ms") && stdout.contains("[p99<=1us]"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("1 of 2 gates missed (exit 99): p99<=1us (corrected_p99 "),
        "{}",
        text(&out.stderr)
    );
    // analyze check agrees with the figure recorded.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(raw["gates"][1]["op"], "<=");
    assert_eq!(raw["gates"][1]["passed"], false);
    stop(server).await;
}

#[tokio::test]
async fn abort_on_fail_stops_a_run_against_a_refusing_server() {
    let server = refusing().await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("aborted.json");
    let began = Instant::now();
    // 60 s at 100/s planned: 6,000 messages; the gate allows 6 failures.
    let out = loadgen(
        &server,
        &out_file,
        &[
            "--mode",
            "sustained",
            "--rate",
            "100",
            "--duration",
            "60s",
            "--size",
            "10KiB",
            "--require",
            "p99<=10s",
            "--require",
            "success_rate>=99.9",
            "--abort-on-fail",
        ],
    )
    .await;
    let took = began.elapsed();
    assert_eq!(out.status.code(), Some(99), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(30), "stopped early: {took:?}");
    let (r, gates) = gates_of(&out_file);
    assert!(
        r.metrics.total_messages < 600,
        "{} sent",
        r.metrics.total_messages
    );
    assert!(r.metrics.failed_messages > 6);
    assert_eq!(
        r.metrics.error_breakdown.get("552").copied(),
        Some(r.metrics.failed_messages)
    );
    assert!(!r.interrupted(), "stopped by the gate, not by Ctrl-C");
    let rate = &gates[1];
    assert!(rate.aborted_run && !rate.passed, "{gates:?}");
    // Nothing succeeded, so no latency was measured: the p99 gate is not met.
    assert!(!gates[0].aborted_run && !gates[0].passed);
    assert_eq!(gates[0].observed, None);
    assert_eq!(r.run.unwrap().config["abort_on_fail"], true);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("\"success_rate>=99.9\" could no longer be met"),
        "{stderr}"
    );
    stop(server).await;
}

#[tokio::test]
async fn abort_on_fail_stops_a_burst_at_the_first_failure_past_the_limit() {
    let server = refusing().await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("burst.json");
    let out = loadgen(
        &server,
        &out_file,
        &[
            "--messages",
            "200000",
            "--workers",
            "2",
            "--size",
            "10KiB",
            "--require",
            "failed<=3",
            "--abort-on-fail",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(99), "{}", text(&out.stderr));
    let (r, gates) = gates_of(&out_file);
    assert!(r.metrics.total_messages < 200_000);
    assert!(r.metrics.failed_messages > 3);
    assert!(gates[0].aborted_run && !gates[0].passed);
    stop(server).await;
}

#[test]
fn a_bad_gate_is_bad_usage_naming_the_flag_and_the_figures() {
    for (gate, want) in [
        ("p98<=25ms", "unknown figure \"p98\""),
        ("p99 25ms", "expected FIGURE OP VALUE"),
        ("p99<=25%", "p99 takes"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["--servers", "127.0.0.1", "--require", gate])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{gate}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--require") && err.contains(want),
            "{gate}: {err}"
        );
        if gate.starts_with("p98") {
            for known in ["success_rate", "p99_9", "corrected_p99", "late_sends"] {
                assert!(err.contains(known), "{known}: {err}");
            }
        }
    }
    let out = std::process::Command::new(BIN)
        .args(["--servers", "127.0.0.1", "--abort-on-fail"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--require"));
}

#[test]
fn help_documents_every_exit_code_and_the_latency_basis() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for code in ["0 ", "1 ", "2 ", "99 ", "130 "] {
        assert!(help.contains(&format!("\n  {code}")), "{code}: {help}");
    }
    assert!(help.contains("corrected"), "{help}");
}
