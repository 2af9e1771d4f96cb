//! `check`: absolute gates.

mod common;

use common::{Builder, analyze, prixfixe, s, spread};

#[test]
fn passing_gates_exit_0_with_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    // 1000 messages over 2 s: 500 msg/s; p99 ≈ 19.8 ms.
    let path = Builder::burst(&spread(1000, 1_000, 20_000), 2.0).write(dir.path(), "run.json");
    let out = analyze(&[
        "check",
        s(&path),
        "--require",
        "messages_per_second>=500",
        "--require",
        "p99<=25ms",
        "--require",
        "success_rate>=99.9",
        "--require",
        "p99.9 < 0.1s",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("PASS") && lines[0].contains("messages_per_second >= 500.00 msg/s")
    );
    assert!(lines[0].contains("actual 500.00 msg/s"), "{}", lines[0]);
    assert!(lines[1].starts_with("PASS") && lines[1].contains("p99 <= 25.00 ms"));
    assert!(lines[2].contains("success_rate >= 99.90%") && lines[2].contains("actual 100.00%"));
    assert!(lines[3].contains("p99_9 < 100.00 ms"));
    assert!(out.stdout.contains("all 4 gates passed"));
}

#[test]
fn a_missed_gate_exits_1_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let path = Builder::burst(&spread(1000, 1_000, 40_000), 2.0)
        .failing_last(5)
        .write(dir.path(), "run.json");
    let out = analyze(&[
        "check",
        s(&path),
        "--require",
        "p99<=25ms",
        "--require",
        "success_rate>=99.9%",
        "--require",
        "failed==5",
        "--require",
        "corrected_p99<=1s",
    ]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("FAIL") && lines[0].contains("actual 39."),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("FAIL") && lines[1].contains("actual 99.50%"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("PASS"), "{}", lines[2]);
    // A figure the result does not hold misses its gate.
    assert!(lines[3].starts_with("FAIL") && lines[3].contains("not in this result"));
    assert!(out.stdout.contains("3 of 4 gates missed"));
}

#[test]
fn unknown_figure_is_an_error_listing_the_known_ones() {
    let path = prixfixe("v0.2.0-burst-small-1k.json");
    let out = analyze(&["check", s(&path), "--require", "p98<=25ms"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown figure \"p98\""),
        "{}",
        out.stderr
    );
    for known in [
        "messages_per_second",
        "success_rate",
        "p99",
        "p99_9",
        "corrected_p99",
    ] {
        assert!(out.stderr.contains(known), "{known}: {}", out.stderr);
    }
    let out = analyze(&["check", s(&path), "--require", "p99<=25%"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("p99 takes"), "{}", out.stderr);
}

#[test]
fn legacy_files_can_be_gated() {
    let path = prixfixe("v0.2.0-burst-small-1k.json");
    let out = analyze(&[
        "check",
        s(&path),
        "--require",
        "msg/s>=500",
        "--require",
        "p99<=20ms",
    ]);
    assert_eq!(out.code, 0, "{}", out.stdout);
}
