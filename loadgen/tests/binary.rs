//! The `loadgen` binary, run as a user would.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_bad_flag_value_names_the_flag_and_fails() {
    for (args, flag) in [
        (&["--servers", "127.0.0.1", "--size", "huge"][..], "--size"),
        (&["--servers", "127.0.0.1", "--mode", "fast"][..], "--mode"),
        (
            &["--servers", "127.0.0.1", "--messages", "0"][..],
            "--messages",
        ),
        (
            &[
                "--servers",
                "127.0.0.1",
                "--rate",
                "0",
                "--mode",
                "sustained",
            ][..],
            "--rate",
        ),
        (&["--bogus"][..], "--bogus"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn tls_and_auth_usage_errors_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    std::fs::write(&users, "# none yet\n").unwrap();
    let users = users.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    for (args, want) in [
        (&["--auth", "plain"][..], "--auth: needs credentials"),
        (
            &["--auth", "login", "--auth-file", users][..],
            "--auth-file: ",
        ),
        (
            &["--tls", "starttls", "--tls-ca", missing][..],
            "--tls-ca: cannot read",
        ),
        (
            &["--tls", "implicit", "--tls-sni", "bad name"][..],
            "--tls-sni: ",
        ),
        (&["--tls", "sometimes"][..], "--tls"),
    ] {
        let out = Command::new(BIN)
            .args(["--servers", "127.0.0.1"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = Command::new(BIN)
        .args([
            "--servers",
            "127.0.0.1",
            "--auth",
            "plain",
            "--auth-file",
            users,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("users.txt: no user:password line"),
        "the file and the problem are named: {err}"
    );
}

#[test]
fn an_out_of_range_value_is_quoted_as_given() {
    let out = Command::new(BIN)
        .args([
            "--servers",
            "127.0.0.1",
            "--mode",
            "sustained",
            "--late-tolerance-ms",
            "70000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--late-tolerance-ms") && err.contains("70000") && err.contains("60000 ms"),
        "{err}"
    );
    assert!(!err.contains("70 is"), "{err}");
}

#[test]
fn a_bare_k_size_is_refused_naming_both_spellings() {
    let out = Command::new(BIN)
        .args(["--servers", "127.0.0.1", "--size", "10k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--size") && err.contains("10KiB") && err.contains("10KB"),
        "{err}"
    );
}

#[tokio::test]
async fn durations_with_units_are_recorded_in_seconds() {
    let server = TestServer::start(TestServer::accepting()).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.json");
    let out = tokio::process::Command::new(BIN)
        .args([
            "--servers",
            &server.addr.to_string(),
            "--mode",
            "sustained",
            "--rate",
            "20",
            "--duration",
            "1500ms",
            "--timeout",
            "2s",
            "--drain-timeout",
            "500ms",
            "--late-tolerance-ms",
            "25",
            "--size",
            "2KB",
            "--quiet",
            "--output",
        ])
        .arg(&out_file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report::load(&out_file).unwrap();
    assert_eq!(r.metrics.total_messages, 30);
    assert_eq!(r.message_size, 2000);
    let cfg = &r.run.as_ref().unwrap().config;
    assert_eq!(cfg["duration"], 1.5);
    assert_eq!(cfg["timeout"], 2.0);
    assert_eq!(cfg["drain_timeout"], 0.5);
    assert_eq!(cfg["late_tolerance"], 0.025);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.json");
    let addr = format!("127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["--servers", &addr, "--messages", "5", "--output"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("refused"), "{err}");
    assert!(!out_file.exists());
}

#[tokio::test]
async fn a_run_writes_a_valid_result_file() {
    let server = TestServer::start(TestServer::accepting()).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("sub").join("r.json");
    let out = tokio::process::Command::new(BIN)
        .args([
            "--servers",
            &server.addr.to_string(),
            "--messages",
            "20",
            "--workers",
            "2",
            "--size",
            "small",
            "--test-type",
            "quick",
            "--output",
        ])
        .arg(&out_file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("throughput"), "summary on stdout: {stdout}");
    let r = report::load(&out_file).unwrap();
    assert_eq!(r.schema.as_deref(), Some(report::SCHEMA_V1));
    assert_eq!(r.test_type, "quick");
    assert_eq!(r.metrics.successful_messages, 20);
    assert_eq!(r.concurrent_workers, Some(2));
    assert!(!r.interrupted());
    let cfg = &r.run.as_ref().unwrap().config;
    assert_eq!(cfg["workers"], 2);
    assert_eq!(cfg["msgs_per_conn"], 1);
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert!(raw["metrics"]["latency_ms"]["p99"].is_number());
    assert!(raw["histograms"]["phases"]["eod"].is_string());
}

#[tokio::test]
async fn sigint_ends_the_run_with_an_interrupted_result() {
    let server = TestServer::start(TestServer::accepting()).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.json");
    let child = spawn_loadgen(
        &server,
        &[
            "--mode",
            "sustained",
            "--rate",
            "50",
            "--duration",
            "60",
            "--size",
            "small",
        ],
        &out_file,
    );
    // Wait until messages flow: the Ctrl-C handler is installed before the run starts.
    wait_for_messages(&server, 5).await;
    let r = interrupt_and_load(child, &out_file).await;
    assert!(r.interrupted());
    assert!(r.metrics.total_messages > 0);
    assert!(r.metrics.duration_seconds < 5.0);
}

/// Starts the loadgen binary against `server` with `args`, writing `out_file`.
fn spawn_loadgen(
    server: &TestServer,
    args: &[&str],
    out_file: &std::path::Path,
) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args(["--servers", &server.addr.to_string()])
        .args(args)
        .arg("--output")
        .arg(out_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until `server` has taken `n` messages (so the run, and its signal
/// handling, is under way).
async fn wait_for_messages(server: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.eods.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "no message arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(child: &tokio::process::Child, sig: libc::c_int) {
    let pid = child.id().expect("the child runs") as i32;
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Sends SIGINT (Ctrl-C) to a running loadgen, checks that it ends soon and cleanly,
/// and returns the result it wrote.
async fn interrupt_and_load(
    child: tokio::process::Child,
    out_file: &std::path::Path,
) -> report::RunResult {
    signal(&child, libc::SIGINT);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("loadgen ends after SIGINT")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(7));
    // 130 (DESIGN.md): interrupted, the result still written.
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report::load(out_file).unwrap()
}

#[tokio::test]
async fn sigint_ends_a_burst_run_with_an_interrupted_result() {
    const ASKED: u64 = 10_000_000;
    let server = TestServer::start(TestServer::accepting()).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.json");
    let asked = ASKED.to_string();
    let child = spawn_loadgen(
        &server,
        &["--messages", &asked, "--workers", "2", "--size", "small"],
        &out_file,
    );
    wait_for_messages(&server, 20).await;
    let r = interrupt_and_load(child, &out_file).await;
    assert!(r.interrupted());
    let m = &r.metrics;
    assert!(
        m.total_messages >= 20 && m.total_messages < ASKED,
        "{} of {ASKED} messages",
        m.total_messages
    );
    // What was sent by the interrupt is accounted for, nothing lost in between.
    assert_eq!(m.successful_messages + m.failed_messages, m.total_messages);
    assert_eq!(r.concurrent_workers, Some(2));
}

/// A generator that cannot keep its schedule (here: the whole process stopped for
/// 600 ms, as a starved machine would) releases the messages due meanwhile late,
/// and the result says its figures are the generator's, not the server's.
#[tokio::test]
async fn a_generator_stalled_past_its_schedule_is_marked_saturated() {
    let server = TestServer::start(TestServer::accepting()).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.json");
    let child = spawn_loadgen(
        &server,
        &[
            "--mode",
            "sustained",
            "--rate",
            "100",
            "--duration",
            "2",
            "--size",
            "small",
        ],
        &out_file,
    );
    wait_for_messages(&server, 5).await;
    signal(&child, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(600)).await;
    signal(&child, libc::SIGCONT);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("loadgen ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = report::load(&out_file).unwrap();
    assert!(r.generator_saturated, "{:?}", r.metrics);
    // About 60 of the 200 messages fell due while it was stopped.
    assert!(r.metrics.late_sends >= 20, "{:?}", r.metrics);
    // The summary a person reads says so too.
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("WARNING") && summary.contains("the generator was saturated"),
        "{summary}"
    );
}
