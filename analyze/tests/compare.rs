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

/// One run per `hi`, latencies spanning 1 ms..`hi` µs (so p99 ≈ 0.99 × hi).
fn runs(dir: &Path, prefix: &str, his: &[u64]) -> Vec<PathBuf> {
    his.iter()
        .enumerate()
        .map(|(i, hi)| run(dir, &format!("{prefix}{i}.json"), 1_000, *hi))
        .collect()
}

/// `analyze compare --base BASE... --new NEW... EXTRA...`
fn compare_groups(base: &[PathBuf], new: &[PathBuf], extra: &[&str]) -> common::Run {
    let mut args = vec!["compare", "--base"];
    args.extend(base.iter().map(|p| s(p)));
    args.push("--new");
    args.extend(new.iter().map(|p| s(p)));
    args.extend(extra);
    analyze(&args)
}

#[test]
fn three_runs_a_side_are_not_judged_and_the_output_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // Base p99 ≈ 19.8..21.8 ms, new ≈ 20.8..22.8 ms: ranges overlap, +4.7%.
    let base = runs(dir.path(), "b", &[20_000, 21_000, 22_000]);
    let new = runs(dir.path(), "n", &[21_000, 22_000, 23_000]);
    let out = compare_groups(&base, &new, &[]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    // Not silently called noise: the threshold decides, and a note says why.
    assert_eq!(
        verdict_of(&out.stdout, "latency p99 (ms)"),
        "worse (within threshold)"
    );
    assert!(
        out.stdout.contains(
            "Note: 3 vs 3 runs: significance cannot be judged, since the smallest p-value \
             these runs can give is 0.100"
        ) && out
            .stdout
            .contains("At least 4 runs on each side are needed."),
        "{}",
        out.stdout
    );
    // The median and the range of each side.
    assert!(out.stdout.contains("(19."), "{}", out.stdout);

    // Far apart: a regression even with repeats.
    let slow = runs(dir.path(), "s", &[40_000, 41_000, 42_000]);
    let out = compare_groups(&base, &slow, &[]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "latency p99 (ms)"), "REGRESSION");
}

#[test]
fn five_runs_a_side_are_judged_by_the_u_test() {
    let dir = tempfile::tempdir().unwrap();
    let base = runs(dir.path(), "b", &[20_000, 20_500, 21_000, 21_500, 22_000]);
    // Interleaved with the base, median +6.7% (past the 5% threshold): U = 16 of
    // 25, exact p = 138/252 = 0.548.
    let mixed = runs(dir.path(), "m", &[19_700, 20_300, 22_400, 23_000, 24_000]);
    let out = compare_groups(&base, &mixed, &[]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        verdict_of(&out.stdout, "latency p99 (ms)"),
        "not significant"
    );
    assert!(!out.stdout.contains("Note:"), "{}", out.stdout);
    let p99 = common::row(&out.stdout, "latency p99 (ms)");
    assert!(p99.contains(&"0.548"), "{p99:?}");

    // Every new run slower than every base run: p = 2/252 = 0.008, +14%.
    let slow = runs(dir.path(), "s", &[23_000, 23_500, 24_000, 24_500, 25_000]);
    let out = compare_groups(&base, &slow, &[]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "latency p99 (ms)"), "REGRESSION");
    let p99 = common::row(&out.stdout, "latency p99 (ms)");
    assert!(p99.contains(&"0.008"), "{p99:?}");
    let header = out.stdout.lines().find(|l| l.contains("figure")).unwrap();
    assert!(
        header.contains(" p ") && header.contains("shift (95% CI)"),
        "{header}"
    );
    // The shift and its interval: new − base, about +3 ms, all above 0.
    let shift = p99[6];
    assert!(shift.starts_with('+') && shift.contains("[+"), "{shift}");

    // Significant, but within a 20% threshold: worse, exit 0.
    let out = compare_groups(&base, &slow, &["--threshold", "20%"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        verdict_of(&out.stdout, "latency p99 (ms)"),
        "worse (within threshold)"
    );

    let out = compare_groups(&base, &slow, &["--format", "markdown"]);
    assert_eq!(out.code, 1);
    let cells =
        |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_string()).collect() };
    let header = out
        .stdout
        .lines()
        .find(|l| l.starts_with("| figure"))
        .map(cells)
        .unwrap();
    assert!(
        header.contains(&"p".to_string()) && header.contains(&"shift (95% CI)".to_string()),
        "{header:?}"
    );
    let p99 = out
        .stdout
        .lines()
        .find(|l| l.starts_with("| latency p99 "))
        .map(cells)
        .unwrap();
    assert!(p99.contains(&"0.008".to_string()), "{p99:?}");

    let out = compare_groups(&base, &slow, &["--format", "json"]);
    assert_eq!(out.code, 1);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json output parses");
    assert_eq!(v["alpha"], 0.05);
    assert_eq!(v["notes"].as_array().unwrap().len(), 0);
    let rows = v["rows"].as_array().unwrap();
    let p99 = rows.iter().find(|r| r["figure"] == "p99").unwrap();
    assert_eq!(p99["significance"], "significant");
    assert_eq!(p99["verdict"], "regression");
    assert_eq!(p99["test"]["method"], "exact");
    let p = p99["test"]["p_value"].as_f64().unwrap();
    assert!((p - 2.0 / 252.0).abs() < 1e-12, "{p}");
    let ci = p99["test"]["shift_ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    let shift = p99["test"]["shift"].as_f64().unwrap();
    assert!(0.0 < lo && lo <= shift && shift <= hi, "{lo} {shift} {hi}");
    // 5 vs 5: the next level at or above 95% is 1 − 2 × P(U ≤ 2) = 1 − 2 × 4/252.
    let confidence = p99["test"]["ci_confidence"].as_f64().unwrap();
    assert!(
        (confidence - (1.0 - 8.0 / 252.0)).abs() < 1e-12,
        "{confidence}"
    );
}

#[test]
fn one_run_a_side_says_significance_cannot_be_judged() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    let new = run(dir.path(), "new.json", 1_000, 30_000);
    let out = analyze(&["compare", s(&base), s(&new)]);
    assert!(
        out.stdout.contains(
            "Note: 1 vs 1 runs: with one run on a side, significance cannot be judged; the \
             verdicts use the threshold alone."
        ),
        "{}",
        out.stdout
    );
    // No p column when nothing was tested.
    let header = out.stdout.lines().find(|l| l.contains("figure")).unwrap();
    assert!(!header.contains("shift"), "{header}");
    let out = analyze(&["compare", s(&base), s(&new), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["notes"].as_array().unwrap().len(), 1);
    let p99 = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["figure"] == "p99")
        .unwrap();
    assert_eq!(p99["significance"], "not_judged");
    assert!(p99["test"].is_null());
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
fn each_settings_warning_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    let mut other = Builder::burst(&spread(1000, 1_000, 20_000), 10.0);
    other.workers = Some(50);
    let new = other.write(dir.path(), "new.json");
    let warning = "the runs differ in workers";
    let count = |text: &str| text.matches(warning).count();

    // The table is for a terminal: the warning goes to stderr, not again on stdout.
    let out = analyze(&["compare", s(&base), s(&new)]);
    assert_eq!(count(&out.stderr), 1, "{}", out.stderr);
    assert_eq!(count(&out.stdout), 0, "{}", out.stdout);

    // A markdown document (a CI step summary) carries it itself.
    let out = analyze(&["compare", s(&base), s(&new), "--format", "markdown"]);
    assert_eq!(count(&out.stdout), 1, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("> **Warning:** the runs differ in workers")
    );
    assert_eq!(count(&out.stderr), 0, "{}", out.stderr);

    // JSON keeps it as data, and a person running it still sees it once.
    let out = analyze(&["compare", s(&base), s(&new), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(count(&out.stderr), 1, "{}", out.stderr);
}

/// A PrixFixe file's figures are read and judged like a new one's, both ways round,
/// at the default threshold: the legacy run did 546.04 msg/s, this one 100, so the
/// legacy file is the better run on throughput and the worse on its 1 s maximum.
#[test]
fn legacy_files_compare_with_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let new = run(dir.path(), "new.json", 1_000, 20_000);
    let legacy = prixfixe("v0.2.0-burst-small-1k.json");
    let out = analyze(&["compare", s(&legacy), s(&new)]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("546.04"), "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "msg/s"), "REGRESSION");
    assert_eq!(verdict_of(&out.stdout, "latency max"), "better");
    assert_eq!(verdict_of(&out.stdout, "success rate"), "same");

    let out = analyze(&["compare", s(&new), s(&legacy)]);
    assert_eq!(verdict_of(&out.stdout, "msg/s"), "better", "{}", out.stdout);
    assert_eq!(verdict_of(&out.stdout, "latency max"), "REGRESSION");
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

/// Sets `pointer` (a JSON pointer) in a written result file to `value`.
fn edit(path: &Path, pointer: &str, value: serde_json::Value) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer} in {}", path.display())) = value;
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn settings_warnings_name_what_differs_and_stay_quiet_when_nothing_does() {
    let dir = tempfile::tempdir().unwrap();
    let base = run(dir.path(), "base.json", 1_000, 20_000);
    let same = run(dir.path(), "same.json", 1_000, 20_000);
    let out = analyze(&["compare", s(&base), s(&same)]);
    assert!(!out.stderr.contains("WARNING"), "{}", out.stderr);

    let mut other = Builder::burst(&spread(1000, 1_000, 20_000), 10.0);
    other.test_type = "custom".into();
    other.workers = None;
    other.rate = Some(100.0);
    let other = other.write(dir.path(), "other.json");
    edit(&other, "/servers", serde_json::json!(["mx.example:25"]));
    edit(&other, "/generator_saturated", true.into());
    edit(&other, "/run/interrupted", true.into());
    let out = analyze(&["compare", s(&base), s(&other)]);
    for expected in [
        "WARNING: the runs differ in test type",
        "WARNING: the runs differ in target rate: base base = none, new other = 100",
        "WARNING: the runs differ in servers",
        "WARNING: the runs differ in workers: base base = 10, new other = none",
        "WARNING: new other was interrupted",
        "WARNING: new other was limited by the generator",
    ] {
        assert!(out.stderr.contains(expected), "{expected}: {}", out.stderr);
    }
}
