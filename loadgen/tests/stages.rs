//! Stages, Poisson arrivals and warmup against the real reference server, started
//! in-process.

mod common;

use common::{config, run};
use report::{RunResult, decode_histogram};

async fn start() -> server::RunningServer {
    server::start(server::Config::for_local_testing())
        .await
        .unwrap()
}

/// Sends the timeline puts in `[from_s, to_s)` (by due time).
fn sent_between(r: &RunResult, from_s: f64, to_s: f64) -> u64 {
    let width = r.timeline_bucket_s();
    r.timeline
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let start = *i as f64 * width;
            start >= from_s - 1e-9 && start < to_s - 1e-9
        })
        .map(|(_, p)| p.sent)
        .sum()
}

#[tokio::test]
async fn each_stage_sends_the_integral_of_its_ramp() {
    let server = start().await;
    // 0 → 200/s over 1 s (100), 200/s for 1 s (200), a step down to 50/s (a
    // zero-length stage: none), 50/s for 1 s (50).
    let r = run(config(
        &[server.smtp_addr()],
        &[
            "--mode",
            "stages",
            "--stages",
            "1s:200,1s:200,0s:50,1s:50",
            "--size",
            "small",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!((m.total_messages, m.successful_messages), (350, 350));
    assert_eq!(server.stats().messages_accepted, 350);
    assert_eq!(r.test_type, "stages");
    assert_eq!(r.target_rate, None, "the rate varies; `stages` holds it");
    let shape: Vec<_> = r
        .stages
        .iter()
        .map(|s| (s.index, s.start_s, s.end_s, s.rate_from, s.rate_to, s.sent))
        .collect();
    assert_eq!(
        shape,
        [
            (0, 0.0, 1.0, 0.0, 200.0, 100),
            (1, 1.0, 2.0, 200.0, 200.0, 200),
            (2, 2.0, 2.0, 200.0, 50.0, 0),
            (3, 2.0, 3.0, 50.0, 50.0, 50),
        ]
    );
    for s in &r.stages {
        assert_eq!((s.ok, s.failed), (s.sent, 0), "stage {}", s.index);
        let h = decode_histogram(&s.histograms.total).unwrap();
        let c = decode_histogram(&s.histograms.corrected).unwrap();
        assert_eq!((h.len(), c.len()), (s.ok, s.ok), "stage {}", s.index);
        if s.ok > 0 {
            assert!(s.latency_ms.p50 > 0.0);
            // Measured from the due time, never from a later start.
            assert!(s.latency_corrected_ms.max >= s.latency_ms.max);
        }
    }
    // The timeline, by due time, holds the curve: 100 in the ramp's second (a
    // quarter of them in its first half), 200 in the hold, 50 at the end.
    assert_eq!(sent_between(&r, 0.0, 1.0), 100);
    assert_eq!(sent_between(&r, 0.0, 0.5), 25);
    assert_eq!(sent_between(&r, 1.0, 2.0), 200);
    assert_eq!(sent_between(&r, 2.0, 3.0), 50);
    // The result file keeps the stages.
    let text = serde_json::to_string(&r).unwrap();
    let back = report::load_str(&text, std::path::Path::new("stages.json")).unwrap();
    assert_eq!(back.stages.len(), 4);
    for (b, s) in back.stages.iter().zip(&r.stages) {
        assert_eq!(
            (b.index, b.sent, b.ok, b.late),
            (s.index, s.sent, s.ok, s.late)
        );
        assert_eq!(b.histograms, s.histograms);
        // serde_json reads decimals to within an ulp, not always exactly.
        assert!((b.latency_corrected_ms.p99 - s.latency_corrected_ms.p99).abs() < 1e-9);
    }
}

#[tokio::test]
async fn the_warmup_is_sent_but_left_out_of_the_figures() {
    let server = start().await;
    let r = run(config(
        &[server.smtp_addr()],
        &[
            "--mode",
            "stages",
            "--stages",
            "1s:200,1s:200",
            "--warmup",
            "1s",
            "--size",
            "small",
        ],
    ))
    .await;
    // All 300 were sent; the 100 due in the first second are only in the timeline.
    assert_eq!(server.stats().messages_accepted, 300);
    let m = &r.metrics;
    assert_eq!((m.total_messages, m.successful_messages), (200, 200));
    assert_eq!(r.per_server[0].total_messages, 200);
    assert_eq!(m.replies.get("250"), Some(&200));
    let h = r.histograms.as_ref().unwrap();
    assert_eq!(decode_histogram(&h.total).unwrap().len(), 200);
    assert_eq!(
        decode_histogram(h.corrected.as_ref().unwrap())
            .unwrap()
            .len(),
        200
    );
    assert_eq!(r.warmup_s, Some(1.0));
    assert_eq!(r.timeline.iter().map(|p| p.sent).sum::<u64>(), 300);
    assert_eq!(sent_between(&r, 0.0, 1.0), 100);
    // The rate is over the measured second (to the last reply), not the whole run.
    assert!(
        (1.0..2.0).contains(&m.duration_seconds),
        "{}",
        m.duration_seconds
    );
    assert!(
        (m.messages_per_second * m.duration_seconds - 200.0).abs() < 1e-6,
        "{} msg/s over {} s",
        m.messages_per_second,
        m.duration_seconds
    );
    let sent: Vec<_> = r.stages.iter().map(|s| s.sent).collect();
    assert_eq!(sent, [0, 200]);
}

#[tokio::test]
async fn poisson_arrivals_record_their_seed_and_send_the_integral() {
    let server = start().await;
    let r = run(config(
        &[server.smtp_addr()],
        &[
            "--mode",
            "sustained",
            "--rate",
            "400",
            "--duration",
            "1",
            "--arrivals",
            "poisson",
            "--seed",
            "1234",
            "--size",
            "small",
        ],
    ))
    .await;
    assert_eq!(r.metrics.successful_messages, 400);
    assert_eq!(server.stats().messages_accepted, 400);
    let config = &r.run.as_ref().unwrap().config;
    assert_eq!(config["arrivals"], "poisson");
    assert_eq!(config["seed"], 1234);
    assert!(r.stages.is_empty() && r.warmup_s.is_none());
}

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

#[test]
fn bad_stage_flags_exit_2_naming_the_flag() {
    for (args, want) in [
        (
            &["--mode", "stages"][..],
            "--stages: needed with --mode stages",
        ),
        (&["--mode", "stages", "--stages", "10s"][..], "--stages: "),
        (
            &["--mode", "stages", "--stages", "10s:0"][..],
            "less than one message",
        ),
        (&["--arrivals", "poisson"][..], "--arrivals: needs --mode"),
        (
            &["--mode", "sustained", "--warmup", "2m"][..],
            "--warmup: 2m is not shorter",
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["--servers", "127.0.0.1", "--no-preflight"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// User and system CPU time of process `pid` so far, from /proc.
fn cpu_of(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    std::time::Duration::from_millis(ticks * 1000 / hz)
}

#[tokio::test]
async fn a_zero_rate_stretch_idles_and_ctrl_c_ends_it_with_a_result() {
    use std::time::{Duration, Instant};
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("r.json");
    // 100 messages in the first second, then a minute at rate 0.
    let child = tokio::process::Command::new(BIN)
        .args(["--servers", &server.smtp_addr().to_string(), "--quiet"])
        .args(["--mode", "stages", "--stages", "0s:100,1s:100,0s:0,60s:0"])
        .args(["--size", "small", "--threads", "1"])
        .arg("--output")
        .arg(&out_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.stats().messages_accepted < 100 {
        assert!(Instant::now() < deadline, "the first stage never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // In the zero-rate stretch: nothing to send, so (next to) no CPU.
    let before = cpu_of(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = cpu_of(pid) - before;
    assert!(
        idle < Duration::from_millis(150),
        "{idle:?} of CPU in 1 s at rate 0"
    );
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("loadgen ends after SIGINT")
        .unwrap();
    // 130: interrupted, the result still written (DESIGN's exit codes).
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let r = report::load(&out_file).unwrap();
    assert!(r.run.as_ref().unwrap().interrupted);
    assert_eq!(r.metrics.successful_messages, 100);
    let sent: Vec<_> = r.stages.iter().map(|s| s.sent).collect();
    assert_eq!(sent, [0, 100, 0, 0]);
    assert_eq!(server.stats().messages_accepted, 100);
}
