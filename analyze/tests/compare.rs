//! `compare`: verdicts, exit codes, formats, repeats and settings warnings.

mod common;

use std::path::{Path, PathBuf};

use common::{Builder, analyze, prixfixe, s, spread};

/// A run of 1000 messages over 10 s whose latencies span `lo..hi` µs.
fn run(dir: &Path, name: &str, lo: u64, hi: u64) -> PathBuf {
    Builder::burst(&spread(1000, lo, hi), 10.0).write(dir, name)
}

fn verdict_of<'a>(table: &'a str, label: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no {label} row in\n{table}"))
        .split(['│', '┆'])
        .map(str::trim)
        .rfind(|c| !c.is_empty())
        .unwrap()
}

#[test]
fn slower_new_run_is_a_regression_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    let new = run(dir.path(), "new.json", 1_000, 30_000);
    let out = analyze(&["compare", s(&base), s(&new), "--threshold", "5%"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(verdict_of(&out.stdout, "latency p99 (ms)"), "REGRESSION");
    // Throughput did not change: same count, same duration.
    assert_eq!(verdict_of(&out.stdout, "msg/s"), "same");
    assert!(out.stdout.contains("Regression in"));
}

#[test]
fn faster_new_run_is_better_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 30_000);
    let new = run(dir.path(), "new.json", 1_000, 20_000);
    let out = analyze(&["compare", s(&base), s(&new)]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "latency p99 (ms)"), "better");
    assert!(out.stdout.contains("No regression"));
}

#[test]
fn change_within_threshold_passes_and_a_per_figure_override_changes_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    // About 10% slower everywhere.
    let new = run(dir.path(), "new.json", 1_100, 22_000);
    let out = analyze(&["compare", s(&base), s(&new), "--threshold", "20%"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        verdict_of(&out.stdout, "latency p99 (ms)"),
        "worse (within threshold)"
    );
    let out = analyze(&[
        "compare",
        s(&base),
        s(&new),
        "--threshold",
        "20%",
        "--threshold",
        "p99=5%",
    ]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "latency p99 (ms)"), "REGRESSION");
    assert_eq!(
        verdict_of(&out.stdout, "latency p50 (ms)"),
        "worse (within threshold)"
    );
    // An absolute allowance in milliseconds.
    let out = analyze(&[
        "compare",
        s(&base),
        s(&new),
        "--threshold",
        "1%",
        "--threshold",
        "avg=5ms",
        "--threshold",
        "p50=5ms",
        "--threshold",
        "p90=5ms",
        "--threshold",
        "p95=5ms",
        "--threshold",
        "p99=5ms",
        "--threshold",
        "p99.9=5ms",
        "--threshold",
        "max=5ms",
    ]);
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn new_failures_regress_unless_exempted() {
    let dir = tempfile::tempdir().unwrap();
    let lat = spread(1000, 1_000, 20_000);
    let base = Builder::burst(&lat, 10.0).write(dir.path(), "base.json");
    let new = Builder::burst(&lat, 10.0)
        .failing_last(1)
        .write(dir.path(), "new.json");
    let out = analyze(&["compare", s(&base), s(&new)]);
    assert_eq!(out.code, 1);
    assert_eq!(verdict_of(&out.stdout, "failed"), "REGRESSION");
    let out = analyze(&["compare", s(&base), s(&new), "--threshold", "failed=off"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn markdown_has_a_table_header_and_json_parses() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    let new = run(dir.path(), "new.json", 1_000, 30_000);
    let out = analyze(&["compare", s(&base), s(&new), "--format", "markdown"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("| figure") && l.contains(" verdict |")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("|--")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("**REGRESSION**"));

    let out = analyze(&["compare", s(&base), s(&new), "--format", "json"]);
    assert_eq!(out.code, 1);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json output parses");
    let rows = v["rows"].as_array().unwrap();
    let p99 = rows.iter().find(|r| r["figure"] == "p99").unwrap();
    assert_eq!(p99["verdict"], "regression");
    assert!(p99["new"]["median"].as_f64().unwrap() > p99["base"]["median"].as_f64().unwrap());
    assert!(
        v["regressions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "p99")
    );
}

#[test]
fn repeats_report_medians_and_noise() {
    let dir = tempfile::tempdir().unwrap();
    // Base p99 ≈ 19.8..21.8 ms, new ≈ 20.8..22.8 ms: ranges overlap.
    let base: Vec<PathBuf> = [20_000, 21_000, 22_000]
        .iter()
        .enumerate()
        .map(|(i, hi)| run(dir.path(), &format!("b{i}.json"), 1_000, *hi))
        .collect();
    let new: Vec<PathBuf> = [21_000, 22_000, 23_000]
        .iter()
        .enumerate()
        .map(|(i, hi)| run(dir.path(), &format!("n{i}.json"), 1_000, *hi))
        .collect();
    let mut args = vec!["compare", "--base"];
    args.extend(base.iter().map(|p| s(p)));
    args.push("--new");
    args.extend(new.iter().map(|p| s(p)));
    let out = analyze(&args);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "latency p99 (ms)"), "within noise");
    // The median and the range of each side.
    assert!(out.stdout.contains("(19."), "{}", out.stdout);

    // Far apart: a regression even with repeats.
    let slow: Vec<PathBuf> = [40_000, 41_000, 42_000]
        .iter()
        .enumerate()
        .map(|(i, hi)| run(dir.path(), &format!("s{i}.json"), 1_000, *hi))
        .collect();
    let mut args = vec!["compare", "--base"];
    args.extend(base.iter().map(|p| s(p)));
    args.push("--new");
    args.extend(slow.iter().map(|p| s(p)));
    let out = analyze(&args);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "latency p99 (ms)"), "REGRESSION");
}

#[test]
fn different_settings_are_warned_about_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    let mut other = Builder::burst(&spread(500, 1_000, 20_000), 10.0);
    other.workers = Some(50);
    other.size = 1024;
    let new = other.write(dir.path(), "new.json");
    let out = analyze(&["compare", s(&base), s(&new)]);
    for what in ["workers", "message size", "message count"] {
        assert!(
            out.stderr
                .contains(&format!("WARNING: the runs differ in {what}")),
            "{what}: {}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .contains("the runs differ in workers: base base = 10, new new = 50"),
        "{}",
        out.stderr
    );
}

#[test]
fn legacy_files_compare_with_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let new = run(dir.path(), "new.json", 1_000, 20_000);
    let out = analyze(&[
        "compare",
        s(&prixfixe("v0.2.0-burst-small-1k.json")),
        s(&new),
        "--threshold",
        "off",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("546.04"));
}

#[test]
fn bad_thresholds_and_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    let out = analyze(&["compare", s(&base), s(&base), "--threshold", "p98=5%"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("unknown figure \"p98\"") && out.stderr.contains("p99_9"));
    let out = analyze(&["compare", s(&base)]);
    assert_eq!(out.code, 2);
    let out = analyze(&["compare", "--base", s(&base)]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--new"), "{}", out.stderr);
}
