use std::path::Path;

use super::*;

fn sample_result() -> RunResult {
    let mut total = new_latency_histogram();
    for us in [900, 1_500, 2_000, 2_500, 40_000] {
        record_latency(&mut total, us);
    }
    RunResult {
        schema: Some(SCHEMA_V1.into()),
        test_type: "burst".into(),
        servers: vec!["127.0.0.1:2525".into()],
        port: 2525,
        message_size: 10_240,
        concurrent_workers: Some(4),
        target_rate: None,
        metrics: Metrics {
            total_messages: 5,
            successful_messages: 5,
            failed_messages: 0,
            connection_errors: 0,
            total_bytes_sent: 51_200,
            duration_seconds: 1.0,
            messages_per_second: 5.0,
            latency_ms: LatencySummary::from_histogram(&total),
            error_breakdown: BTreeMap::new(),
            start_time: "2026-11-22T12:00:00.000Z".into(),
            end_time: "2026-11-22T12:00:01.000Z".into(),
            timeouts: 0,
            success_rate: 100.0,
            late_sends: 0,
            latency_corrected_ms: None,
            phases_ms: BTreeMap::new(),
            replies: BTreeMap::from([("250".into(), 5)]),
        },
        generator_saturated: false,
        run: None,
        per_server: vec![],
        per_source: vec![],
        timeline: vec![],
        timeline_bucket_s: None,
        histograms: Some(Histograms {
            total: encode_histogram(&total).unwrap(),
            ..Histograms::default()
        }),
        resources: BTreeMap::new(),
        tls: None,
        stages: Vec::new(),
        warmup_s: None,
        gates: None,
        capacity: None,
    }
}

#[test]
fn results_written_before_source_addresses_read_without_them_and_per_source_round_trips() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stampede/v1-before-tls.json");
    let r = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.per_source.is_empty());
    assert!(!serde_json::to_string(&r).unwrap().contains("per_source"));

    let mut spread = sample_result();
    spread.per_source = vec![
        crate::SourceMetrics {
            address: "127.0.0.2".into(),
            connections: 12,
            banners: 10,
            refused_421: 2,
            ..Default::default()
        },
        crate::SourceMetrics {
            address: "127.0.0.3".into(),
            connections: 12,
            banners: 9,
            refused_other: 1,
            connect_failed: 1,
            unanswered: 1,
            ..Default::default()
        },
    ];
    let text = serde_json::to_string(&spread).unwrap();
    // A source with nothing unanswered leaves the key out.
    assert_eq!(text.matches("\"unanswered\"").count(), 1, "{text}");
    let back = crate::load_str(&text, Path::new("spread.json")).unwrap();
    assert_eq!(back, spread);
}

#[test]
fn histogram_survives_encoding_bucket_for_bucket() {
    let mut h = new_latency_histogram();
    for us in 1..=10_000u64 {
        record_latency(&mut h, us * 37);
    }
    let back = decode_histogram(&encode_histogram(&h).unwrap()).unwrap();
    assert_eq!(back.len(), h.len());
    for q in [0.5, 0.9, 0.99, 0.999] {
        assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
    }
    assert_eq!(back, h);
}

#[test]
fn latency_beyond_an_hour_is_clamped_not_lost() {
    let mut h = new_latency_histogram();
    record_latency(&mut h, u64::MAX);
    record_latency(&mut h, 0);
    assert_eq!(h.len(), 2);
}

#[test]
fn summary_is_in_milliseconds() {
    let mut h = new_latency_histogram();
    for _ in 0..100 {
        record_latency(&mut h, 2_000);
    }
    let s = LatencySummary::from_histogram(&h);
    assert!((s.p50 - 2.0).abs() < 0.01, "{s:?}");
    assert!((s.avg - 2.0).abs() < 0.01, "{s:?}");
}

#[test]
fn saved_result_reads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/run.json");
    let result = sample_result();
    result.save(&path).unwrap();
    assert_eq!(load(&path).unwrap(), result);
    // Only the result is left behind, no temporary file.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("run.json")]);
}

#[test]
fn prixfixe_fields_keep_their_places() {
    let json = serde_json::to_value(sample_result()).unwrap();
    assert_eq!(json["metrics"]["messages_per_second"], 5.0);
    assert!(json["metrics"]["latency_ms"]["p99"].is_number());
    assert_eq!(json["servers"][0], "127.0.0.1:2525");
    assert_eq!(json["schema"], SCHEMA_V1);
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prixfixe")
        .join(name)
}

#[test]
fn reads_prixfixe_files() {
    for name in [
        "v0.2.0-burst-large-500.json",
        "v0.2.0-burst-small-1k.json",
        "v0.2.0-sustained-30s.json",
    ] {
        let r = load(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.is_legacy());
        assert!(r.start_time().is_some(), "{name}: start_time unparsed");
        assert!(r.metrics.latency_ms.p99 > 0.0);
    }
    let sustained = load(&fixture("v0.2.0-sustained-30s.json")).unwrap();
    assert_eq!(sustained.target_rate, Some(50.0));
    assert_eq!(sustained.concurrent_workers, None);
    assert_eq!(sustained.metrics.total_messages, 1283);
    assert!((sustained.metrics.success_rate - 100.0).abs() < 1e-9);
}

fn load_err(text: &str) -> String {
    load_str(text, Path::new("results/x.json"))
        .unwrap_err()
        .to_string()
}

#[test]
fn broken_files_get_one_clear_line_naming_file_and_problem() {
    let full = serde_json::to_string(&sample_result()).unwrap();

    let truncated = load_err(&full[..full.len() / 2]);
    assert!(
        truncated.starts_with("results/x.json: truncated"),
        "{truncated}"
    );

    let not_json = load_err("hello, world");
    assert!(
        not_json.starts_with("results/x.json: not JSON"),
        "{not_json}"
    );

    let schema = load_err(&full.replace(SCHEMA_V1, "stampede.result.v9"));
    assert!(
        schema.contains("unknown schema \"stampede.result.v9\""),
        "{schema}"
    );

    let missing = load_err(r#"{"test_type": "burst"}"#);
    assert!(missing.contains("missing field"), "{missing}");

    let array = load_err("[1, 2]");
    assert!(array.contains("not a JSON object"), "{array}");

    let bad_hist = load_err(&full.replace(
        &sample_result().histograms.unwrap().total,
        "bm90IGEgaGlzdG9ncmFt",
    ));
    assert!(bad_hist.contains("histogram \"total\""), "{bad_hist}");

    let missing_file = load(Path::new("/nonexistent/stampede.json"))
        .unwrap_err()
        .to_string();
    assert!(missing_file.starts_with("/nonexistent/stampede.json: cannot read"));

    for msg in [
        truncated,
        not_json,
        schema,
        missing,
        array,
        bad_hist,
        missing_file,
    ] {
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}

#[test]
fn timestamps_in_both_formats_parse() {
    assert!(parse_timestamp("2026-11-22T12:00:00Z").is_some());
    assert!(parse_timestamp("2026-11-22T12:00:00.123+01:00").is_some());
    assert!(parse_timestamp("2025-11-28T19:59:07.431015").is_some());
    assert!(parse_timestamp("yesterday").is_none());
    let t = parse_timestamp("2026-11-22T12:00:00Z").unwrap();
    assert_eq!(format_timestamp(t), "2026-11-22T12:00:00.000Z");
}

#[test]
fn the_tls_key_round_trips_and_is_absent_without_tls() {
    let plain = serde_json::to_value(sample_result()).unwrap();
    assert!(
        plain.get("tls").is_none(),
        "no tls key in a run without TLS"
    );

    let mut with_tls = sample_result();
    with_tls.tls = Some(TlsSummary {
        mode: "starttls".into(),
        versions: BTreeMap::from([("TLSv1.3".into(), 4)]),
        cipher_suites: BTreeMap::from([("TLS13_AES_128_GCM_SHA256".into(), 4)]),
        handshakes: 4,
        resumed: 3,
    });
    let json = serde_json::to_value(&with_tls).unwrap();
    assert_eq!(json["tls"]["mode"], "starttls");
    assert_eq!(json["tls"]["versions"]["TLSv1.3"], 4);
    assert_eq!(json["tls"]["cipher_suites"]["TLS13_AES_128_GCM_SHA256"], 4);
    assert_eq!(
        (
            json["tls"]["handshakes"].as_u64(),
            json["tls"]["resumed"].as_u64()
        ),
        (Some(4), Some(3))
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.json");
    with_tls.save(&path).unwrap();
    let back = load(&path).unwrap();
    assert_eq!(back, with_tls);
    assert_eq!(back.tls.unwrap().resumed_percent(), 75.0);
}

#[test]
fn results_written_before_the_tls_and_auth_phases_still_read() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stampede/v1-before-tls.json");
    let r = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!r.is_legacy());
    assert!(r.tls.is_none());
    let phases: Vec<&str> = r.metrics.phases_ms.keys().map(String::as_str).collect();
    assert!(
        phases.contains(&"ehlo") && phases.contains(&"mail"),
        "{phases:?}"
    );
    assert!(!phases.contains(&"tls") && !phases.contains(&"auth"));
    assert!(r.metrics.phases_ms["eod"].p50 > 0.0);
    let h = r.histograms.as_ref().unwrap();
    assert!(h.phases.contains_key("rcpt"));
}

#[test]
fn results_written_before_stages_read_without_them_and_stages_round_trip() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stampede/v1-before-tls.json");
    let r = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.stages.is_empty() && r.warmup_s.is_none());
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains("\"stages\"") && !text.contains("warmup_s"));

    let mut staged = sample_result();
    staged.warmup_s = Some(10.0);
    staged.stages = vec![crate::StageSummary {
        index: 0,
        start_s: 0.0,
        end_s: 30.0,
        rate_from: 0.0,
        rate_to: 100.0,
        sent: 1500,
        ok: 1499,
        failed: 1,
        late: 2,
        latency_ms: staged.metrics.latency_ms,
        latency_corrected_ms: staged.metrics.latency_ms,
        histograms: crate::StageHistograms {
            total: "x".into(),
            corrected: "y".into(),
        },
    }];
    let text = serde_json::to_string(&staged).unwrap();
    let back = crate::load_str(&text, Path::new("staged.json")).unwrap();
    assert_eq!(back, staged);
}

#[test]
fn results_written_before_capacity_read_without_it_and_capacity_round_trips() {
    for fixture in [
        "tests/fixtures/stampede/v1-before-tls.json",
        "tests/fixtures/prixfixe/v0.2.0-sustained-30s.json",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture);
        let r = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.capacity.is_none(), "{fixture}");
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains("\"capacity\""),
            "{fixture}: no key when absent"
        );
    }

    let mut searched = sample_result();
    let step = |index, rate, passed: bool| crate::CapacityStep {
        index,
        rate,
        start_s: f64::from(index) * 25.0,
        end_s: f64::from(index) * 25.0 + 20.0,
        sent: (rate * 20.0) as u64,
        ok: (rate * 20.0) as u64,
        achieved_rate: rate,
        success_rate: 100.0,
        passed,
        broke: if passed {
            vec![]
        } else {
            vec!["p99<=250ms".into()]
        },
        ..Default::default()
    };
    searched.capacity = Some(crate::CapacitySummary {
        slo: vec!["p99<=250ms".into(), "success_rate>=99.9".into()],
        max_rate_meeting_slo: Some(100.0),
        first_rate_breaking_slo: Some(200.0),
        which_slo_broke: Some("p99<=250ms".into()),
        generator_limited: false,
        resolution_percent: 5.0,
        steps: vec![step(0, 100.0, true), step(1, 200.0, false)],
    });
    let text = serde_json::to_string(&searched).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The layout of CONTRACT.md: nulls written, not left out.
    let c = &value["capacity"];
    for key in [
        "slo",
        "max_rate_meeting_slo",
        "first_rate_breaking_slo",
        "which_slo_broke",
        "generator_limited",
        "resolution_percent",
        "steps",
    ] {
        assert!(c.get(key).is_some(), "capacity.{key}");
    }
    for key in [
        "index",
        "rate",
        "start_s",
        "end_s",
        "sent",
        "ok",
        "failed",
        "late",
        "achieved_rate",
        "success_rate",
        "latency_ms",
        "latency_corrected_ms",
        "passed",
        "broke",
        "generator_saturated",
    ] {
        assert!(c["steps"][1].get(key).is_some(), "capacity.steps[].{key}");
    }
    let back = crate::load_str(&text, Path::new("capacity.json")).unwrap();
    assert_eq!(back, searched);
}
