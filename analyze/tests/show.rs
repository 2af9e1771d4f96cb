//! `show`, `list`, `latest`, `summary`, and how bad files are reported.

mod common;

use common::{Builder, analyze, analyze_in, prixfixe, row, s, spread};

#[test]
fn show_prints_every_section_with_the_recorded_figures() {
    let dir = tempfile::tempdir().unwrap();
    // 1000 messages, 1..100 ms, over 10 s: 100 msg/s, 1 MB/s at 10240 B each.
    let mut b = Builder::burst(&spread(1000, 1_000, 100_000), 10.0).failing_last(10);
    b.corrected_extra_us = Some(5_000);
    let path = b.write(dir.path(), "run.json");
    let out = analyze(&["show", s(&path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = &out.stdout;
    assert!(t.contains("stampede.result.v1"));
    assert_eq!(row(t, "msg/s"), ["msg/s", "99.00"]);
    assert_eq!(row(t, "MB/s"), ["MB/s", "1.02"]);
    assert_eq!(row(t, "total"), ["total", "1000"]);
    assert_eq!(row(t, "successful"), ["successful", "990"]);
    assert_eq!(row(t, "failed"), ["failed", "10"]);
    assert_eq!(row(t, "success rate"), ["success rate", "99.00%"]);
    assert_eq!(row(t, "workers"), ["workers", "10"]);
    // Latency: measured and corrected columns, from the histograms.
    let built = b.build();
    let p99 = row(t, "p99");
    assert_eq!(p99[1], format!("{:.2}", built.metrics.latency_ms.p99));
    assert_eq!(
        p99[2],
        format!("{:.2}", built.metrics.latency_corrected_ms.unwrap().p99)
    );
    assert!(t.contains("corrected ms"));
    // Phases, servers, replies.
    assert_eq!(row(t, "connect")[0], "connect");
    assert_eq!(row(t, "eod")[0], "eod");
    let server = row(t, "127.0.0.1:2525");
    assert_eq!(&server[..4], ["127.0.0.1:2525", "500", "495", "5"]);
    assert_eq!(row(t, "250"), ["250", "990", "99.00%"]);
    assert_eq!(row(t, "421"), ["421", "10", "1.00%"]);
}

#[test]
fn show_prints_the_tls_summary_and_the_tls_and_auth_phases() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Builder::burst(&spread(100, 1_000, 5_000), 1.0).build();
    let phase = |ms: f64| report::LatencySummary {
        avg: ms,
        p50: ms,
        p99: ms,
        max: ms,
        ..Default::default()
    };
    r.metrics.phases_ms.insert("tls".into(), phase(3.5));
    r.metrics.phases_ms.insert("auth".into(), phase(1.25));
    r.tls = Some(report::TlsSummary {
        mode: "starttls".into(),
        versions: [("TLSv1.3".to_string(), 80), ("TLSv1.2".to_string(), 20)].into(),
        cipher_suites: [("TLS13_AES_128_GCM_SHA256".to_string(), 100)].into(),
        handshakes: 100,
        resumed: 75,
    });
    if let Some(run) = r.run.as_mut() {
        run.config["auth"] = serde_json::json!({"mechanism": "plain", "users": 3});
    }
    let path = dir.path().join("tls.json");
    r.save(&path).unwrap();
    let out = analyze(&["show", s(&path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = &out.stdout;
    assert_eq!(row(t, "mode"), ["mode", "starttls"]);
    assert_eq!(row(t, "handshakes"), ["handshakes", "100"]);
    assert_eq!(row(t, "resumed"), ["resumed", "75 (75.00%)"]);
    assert_eq!(row(t, "TLSv1.3"), ["TLSv1.3", "80 (80.00%)"]);
    assert_eq!(
        row(t, "TLS13_AES_128_GCM_SHA256"),
        ["TLS13_AES_128_GCM_SHA256", "100 (100.00%)"]
    );
    assert_eq!(row(t, "auth")[1], "plain, 3 users");
    // The phases table (the last table naming them) lists tls and auth in
    // protocol order, between connect and eod.
    let cells = |l: &str| -> Vec<String> {
        l.split(['│', '┆'])
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    let last = |name: &str| {
        t.lines()
            .enumerate()
            .filter(|(_, l)| cells(l).first().map(String::as_str) == Some(name))
            .map(|(i, l)| (i, cells(l)))
            .last()
            .unwrap_or_else(|| panic!("no row {name:?} in\n{t}"))
    };
    let (tls_at, tls_row) = last("tls");
    assert_eq!(tls_row[..3], ["tls", "3.50", "3.50"]);
    let (auth_at, auth_row) = last("auth");
    assert_eq!(auth_row[..2], ["auth", "1.25"]);
    assert!(
        last("connect").0 < tls_at && tls_at < auth_at && auth_at < last("eod").0,
        "{t}"
    );
}

#[test]
fn legacy_files_are_shown_and_marked() {
    let path = prixfixe("v0.2.0-burst-small-1k.json");
    let out = analyze(&["show", s(&path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("PrixFixe v0.2 (legacy)"));
    assert_eq!(row(&out.stdout, "msg/s"), ["msg/s", "546.04"]);
    assert_eq!(row(&out.stdout, "p99"), ["p99", "18.42"]);
    assert_eq!(row(&out.stdout, "timeouts"), ["timeouts", "not recorded"]);
}

#[test]
fn list_and_summary_are_newest_first_and_skip_temp_and_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let lat = spread(100, 1_000, 5_000);
    Builder::burst(&lat, 1.0)
        .start("2026-11-20T10:00:00Z")
        .write(dir.path(), "old.json");
    Builder::burst(&lat, 1.0)
        .start("2026-11-22T10:00:00Z")
        .write(dir.path(), "new.json");
    let legacy = "v0.2.0-burst-small-1k.json";
    std::fs::copy(prixfixe(legacy), dir.path().join(legacy)).unwrap();
    std::fs::write(dir.path().join(".stampede-result-x.tmp.json"), "{").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();

    let out = analyze(&["summary", "--dir", s(dir.path())]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let new = out.stdout.find("new ").unwrap();
    let old = out.stdout.find("old ").unwrap();
    let legacy = out.stdout.find("v0.2.0-burst-small-1k").unwrap();
    assert!(new < old && old < legacy, "{}", out.stdout);
    assert!(out.stdout.contains("PrixFixe v0.2 (legacy)"));
    assert_eq!(row(&out.stdout, "new")[5], "100.00");

    let out = analyze(&["list", "--dir", s(dir.path())]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.find("new.json").unwrap() < out.stdout.find("old.json").unwrap());
    assert!(!out.stdout.contains("notes.txt") && !out.stdout.contains(".stampede"));

    // `latest` shows the newest, and the default directory is results/.
    std::fs::create_dir(dir.path().join("results")).unwrap();
    Builder::burst(&lat, 2.0).write(&dir.path().join("results"), "only.json");
    let out = analyze_in(Some(dir.path()), &["latest"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("only.json"));
    assert_eq!(row(&out.stdout, "msg/s"), ["msg/s", "50.00"]);
}

#[test]
fn a_directory_with_bad_files_lists_the_good_ones_and_names_each_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = Builder::burst(&spread(10, 1_000, 2_000), 1.0).write(dir.path(), "good.json");
    let text = std::fs::read_to_string(&good).unwrap();
    std::fs::write(dir.path().join("truncated.json"), &text[..text.len() / 2]).unwrap();
    std::fs::write(dir.path().join("notjson.json"), "hello").unwrap();
    std::fs::write(
        dir.path().join("future.json"),
        text.replace("stampede.result.v1", "stampede.result.v9"),
    )
    .unwrap();

    for verb in ["list", "summary"] {
        let out = analyze(&[verb, "--dir", s(dir.path())]);
        assert_eq!(out.code, 2, "{verb}");
        assert!(out.stdout.contains("good"), "{verb}: {}", out.stdout);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 3, "{verb}: {}", out.stderr);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("truncated.json: truncated"))
        );
        assert!(lines.iter().any(|l| l.contains("notjson.json: not JSON")));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("future.json: unknown schema \"stampede.result.v9\""))
        );
    }
    let out = analyze(&["latest", "--dir", s(dir.path())]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.contains("good.json"));
}

#[test]
fn a_bad_file_argument_gets_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = Builder::burst(&spread(10, 1_000, 2_000), 1.0).write(dir.path(), "good.json");
    let text = std::fs::read_to_string(&good).unwrap();
    let cases = [
        (
            "truncated.json",
            text[..text.len() - 40].to_string(),
            "truncated",
        ),
        ("notjson.json", "hello".to_string(), "not JSON"),
        (
            "future.json",
            text.replace("stampede.result.v1", "stampede.result.v9"),
            "unknown schema",
        ),
        (
            "missing.json",
            r#"{"test_type": "burst"}"#.to_string(),
            "not a result file: missing field",
        ),
    ];
    for (name, content, problem) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        for args in [
            vec!["show", s(&path)],
            vec!["compare", s(&good), s(&path)],
            vec!["check", s(&path), "--require", "p99<=1s"],
        ] {
            let out = analyze(&args);
            assert_eq!(out.code, 2, "{args:?}");
            assert!(out.stdout.is_empty(), "{args:?}");
            assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains(&format!("{name}: {problem}")),
                "{args:?}: {}",
                out.stderr
            );
        }
    }
    let out = analyze(&["show", "/nonexistent/run.json"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/run.json: cannot read"));
    // The reason is said once, not once per error in the chain.
    assert_eq!(
        out.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        out.stderr
    );
    let out = analyze(&["list", "--dir", "/nonexistent"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent"), "{}", out.stderr);
}

#[test]
fn usage_errors_name_the_flag_and_exit_2() {
    let out = analyze(&["compare", "a.json", "b.json", "--format", "html"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--format"), "{}", out.stderr);
    let out = analyze(&["check", "x.json"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--require"), "{}", out.stderr);
    let out = analyze(&["--help"]);
    assert_eq!(out.code, 0);
    for verb in [
        "list", "latest", "show", "summary", "compare", "check", "chart", "merge",
    ] {
        assert!(out.stdout.contains(verb), "{verb}");
    }
}

#[test]
fn an_empty_directory_says_so_and_a_closed_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = analyze(&["list", "--dir", s(dir.path())]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("no results in"));

    for i in 0..30 {
        Builder::burst(&spread(10, 1_000, 2_000), 1.0).write(dir.path(), &format!("r{i}.json"));
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(["summary", "--dir", s(dir.path())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once, like `| head -0`.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn show_prints_a_row_per_stage_and_the_warmup() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Builder::burst(&spread(300, 1_000, 5_000), 3.0).build();
    r.warmup_s = Some(1.0);
    let stage = |index, start_s, end_s, rate_from, rate_to, sent, p99| report::StageSummary {
        index,
        start_s,
        end_s,
        rate_from,
        rate_to,
        sent,
        ok: sent,
        failed: 0,
        late: index as u64,
        latency_ms: report::LatencySummary {
            p50: 1.0,
            p99,
            ..Default::default()
        },
        latency_corrected_ms: report::LatencySummary {
            p99: p99 * 2.0,
            ..Default::default()
        },
        histograms: Default::default(),
    };
    r.stages = vec![
        stage(0, 0.0, 1.0, 0.0, 200.0, 100, 2.5),
        stage(1, 1.0, 1.0, 200.0, 50.0, 0, 0.0),
        stage(2, 1.0, 3.0, 50.0, 50.0, 100, 4.0),
    ];
    if let Some(run) = r.run.as_mut() {
        run.config["arrivals"] = serde_json::json!("poisson");
        run.config["seed"] = serde_json::json!(42);
    }
    let path = dir.path().join("stages.json");
    r.save(&path).unwrap();
    let out = analyze(&["show", s(&path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = &out.stdout;
    assert_eq!(
        row(t, "stage 0"),
        [
            "stage 0",
            "0–1",
            "0 → 200",
            "100",
            "100",
            "0",
            "0",
            "100.0",
            "1.00",
            "2.50",
            "5.00"
        ]
    );
    assert_eq!(
        row(t, "stage 1"),
        [
            "stage 1",
            "1–1",
            "200 → 50",
            "0",
            "0",
            "0",
            "1",
            "step",
            "-",
            "-",
            "-"
        ]
    );
    assert_eq!(row(t, "stage 2")[..4], ["stage 2", "1–3", "50", "100"]);
    assert_eq!(row(t, "stage 2")[7], "50.0");
    assert_eq!(row(t, "arrivals"), ["arrivals", "poisson (seed 42)"]);
    assert!(row(t, "warmup")[1].starts_with("1 s (sent, left out"));
}

#[test]
fn show_prints_the_gates_the_run_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Builder::burst(&spread(100, 1_000, 5_000), 1.0).build();
    let gates: Vec<report::Gate> = ["success_rate>=99.9", "p99<=1ms"]
        .iter()
        .map(|g| report::Gate::parse(g).unwrap())
        .collect();
    let mut outcomes = report::gate::evaluate(&r, &gates, report::LatencyBasis::AsNamed);
    outcomes[1].aborted_run = true;
    r.gates = Some(outcomes);
    let path = dir.path().join("gated.json");
    r.save(&path).unwrap();
    let out = analyze(&["show", s(&path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = &out.stdout;
    let success = row(t, "success_rate>=99.9");
    assert_eq!(success[1..], ["success_rate >= 99.90%", "100.00%", "PASS"]);
    let p99 = row(t, "p99<=1ms");
    assert_eq!(p99[3], "FAIL (stopped the run)", "{t}");
}
