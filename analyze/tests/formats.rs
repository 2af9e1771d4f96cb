//! `check` and `compare` in every `--format`: JUnit XML read back by a real XML
//! parser (python3's xml.etree), markdown tables, JSON shapes.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Builder, analyze, s, spread};

/// Parses `xml` with python3's xml.etree and returns what a CI system reads: the
/// root, its counts, the suite's name and each test case.
fn parse_junit(xml: &str) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.buffer.read())
suite = root.find("testsuite")
cases = []
for c in root.iter("testcase"):
    f = c.find("failure")
    cases.append({"name": c.get("name"), "failed": f is not None,
                  "message": None if f is None else f.get("message")})
print(json.dumps({"root": root.tag, "tests": root.get("tests"),
                  "failures": root.get("failures"), "suite": suite.get("name"),
                  "suite_out": suite.findtext("system-out"), "cases": cases}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not well-formed XML: {}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A file name with every character XML must escape.
const AWKWARD: &str = "run <&\"'>.json";

#[test]
fn check_junit_has_one_failed_case_per_missed_gate_and_escapes_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = Builder::burst(&spread(1000, 1_000, 40_000), 2.0)
        .failing_last(5)
        .write(dir.path(), AWKWARD);
    let out = analyze(&[
        "check",
        s(&path),
        "--require",
        "p99<=25ms",
        "--require",
        "success_rate>=99",
        "--require",
        "corrected_p99<=1s",
        "--format",
        "junit",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let v = parse_junit(&out.stdout);
    assert_eq!(v["root"], "testsuites");
    assert_eq!(
        (v["tests"].as_str(), v["failures"].as_str()),
        (Some("3"), Some("2"))
    );
    assert!(
        v["suite"].as_str().unwrap().ends_with(AWKWARD),
        "the file name survives escaping: {}",
        v["suite"]
    );
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases[0]["name"], "p99 <= 25.00 ms");
    assert_eq!(cases[0]["failed"], true);
    assert!(
        cases[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("actual 39.")
    );
    assert_eq!(cases[1]["failed"], false);
    assert_eq!(cases[2]["message"], "actual not in this result");
    assert_eq!(v["suite_out"], "2 of 3 gates missed");
}

#[test]
fn check_markdown_and_json_report_each_gate() {
    let dir = tempfile::tempdir().unwrap();
    let path = Builder::burst(&spread(1000, 1_000, 20_000), 2.0).write(dir.path(), "run.json");
    let gates = [
        "check",
        s(&path),
        "--require",
        "p99<=25ms",
        "--require",
        "msg/s>=600",
    ];

    let out = analyze(&[&gates[..], &["--format", "markdown"]].concat());
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.contains(&"| | gate | figure | limit | actual |"),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("| PASS | `p99<=25ms` | p99 | <= 25.00 ms |")),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("| **FAIL** | `msg/s>=600` | messages_per_second |")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("**1 of 2 gates missed**"));

    let out = analyze(&[&gates[..], &["--format", "json"]].concat());
    assert_eq!(out.code, 1);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["file"], s(&path));
    assert_eq!(
        (v["passed"].as_bool(), v["missed"].as_u64()),
        (Some(false), Some(1))
    );
    let rate = &v["gates"][1];
    assert_eq!(rate["gate"], "msg/s>=600");
    assert_eq!(rate["figure"], "messages_per_second");
    assert_eq!(rate["op"], ">=");
    assert_eq!(rate["limit"], 600.0);
    assert_eq!(rate["observed"], 500.0);
    assert_eq!(rate["passed"], false);

    // Text stays the default, as before.
    let out = analyze(&gates);
    assert!(
        out.stdout.starts_with("PASS  p99 <= 25.00 ms"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1 of 2 gates missed"));
}

#[test]
fn compare_junit_fails_the_regressed_figures_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = Builder::burst(&spread(1000, 1_000, 20_000), 10.0).write(dir.path(), "base.json");
    let new = Builder::burst(&spread(1000, 1_000, 30_000), 10.0).write(dir.path(), AWKWARD);
    let out = analyze(&["compare", s(&base), s(&new), "--format", "junit"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let v = parse_junit(&out.stdout);
    let cases = v["cases"].as_array().unwrap();
    let case = |name: &str| {
        cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {cases:?}"))
    };
    assert_eq!(case("p99")["failed"], true);
    assert!(
        case("p99")["message"]
            .as_str()
            .unwrap()
            .starts_with("regression: +"),
        "{}",
        case("p99")
    );
    assert_eq!(case("messages_per_second")["failed"], false);
    assert_eq!(case("success_rate")["failed"], false);
    let failed = cases.iter().filter(|c| c["failed"] == true).count();
    assert_eq!(v["failures"].as_str(), Some(failed.to_string().as_str()));
    assert_eq!(v["tests"].as_str(), Some(cases.len().to_string().as_str()));
    // The sources and the notes are in the suite's output, the file name intact.
    let suite_out = v["suite_out"].as_str().unwrap();
    assert!(suite_out.contains(AWKWARD), "{suite_out}");
    assert!(suite_out.contains("note: 1 vs 1 runs"), "{suite_out}");
    // Warnings are in the document, not on stderr.
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    // `table`, the old name of the default, still works.
    let out = analyze(&["compare", s(&base), s(&new), "--format", "table"]);
    assert_eq!(out.code, 1);
    let text = analyze(&["compare", s(&base), s(&new)]);
    assert_eq!(out.stdout, text.stdout);
}
