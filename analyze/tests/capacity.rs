//! A capacity search's result in `show`, `chart` and `report`: its step table,
//! its verdict and its knee chart.

mod common;

use std::path::{Path, PathBuf};

use common::{Builder, analyze, row, s, spread};
use report::{CapacityStep, CapacitySummary, LatencySummary};

fn step(index: u32, rate: f64, p99_corrected: f64, success: f64) -> CapacityStep {
    let passed = p99_corrected <= 150.0 && success >= 99.9;
    let mut broke = Vec::new();
    if p99_corrected > 150.0 {
        broke.push("p99<=150ms".to_string());
    }
    if success < 99.9 {
        broke.push("success_rate>=99.9".to_string());
    }
    let sent = (rate * 2.0) as u64;
    let ok = (sent as f64 * success / 100.0).round() as u64;
    CapacityStep {
        index,
        rate,
        start_s: f64::from(index) * 2.5,
        end_s: f64::from(index) * 2.5 + 2.0,
        sent,
        ok,
        failed: sent - ok,
        late: 0,
        achieved_rate: ok as f64 / 2.0,
        success_rate: success,
        latency_ms: LatencySummary {
            p50: 50.0,
            p99: p99_corrected - 2.0,
            ..Default::default()
        },
        latency_corrected_ms: LatencySummary {
            p50: 51.0,
            p99: p99_corrected,
            ..Default::default()
        },
        passed,
        broke,
        generator_saturated: false,
    }
}

/// A search that grew 25 → 200 and bisected to 187.5 / 193.75.
fn searched(dir: &Path) -> PathBuf {
    let mut r = Builder::burst(&spread(375, 50_000, 60_000), 2.0).build();
    r.test_type = "capacity".into();
    r.target_rate = Some(187.5);
    r.capacity = Some(CapacitySummary {
        slo: vec!["p99<=150ms".into(), "success_rate>=99.9".into()],
        max_rate_meeting_slo: Some(187.5),
        first_rate_breaking_slo: Some(193.75),
        which_slo_broke: Some("p99<=150ms".into()),
        generator_limited: false,
        resolution_percent: 5.0,
        steps: vec![
            step(0, 25.0, 60.0, 100.0),
            step(1, 50.0, 61.0, 100.0),
            step(2, 100.0, 64.0, 100.0),
            step(3, 200.0, 420.0, 99.5),
            step(4, 150.0, 66.0, 100.0),
            step(5, 175.0, 70.0, 100.0),
            step(6, 187.5, 90.0, 100.0),
            step(7, 193.75, 170.0, 100.0),
        ],
    });
    let path = dir.join("capacity.json");
    r.save(&path).unwrap();
    path
}

#[test]
fn show_prints_the_step_table_the_verdict_and_which_step_the_headline_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = searched(dir.path());
    let out = analyze(&["show", s(&path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = &out.stdout;
    assert!(t.contains("SLO p99<=150ms, success_rate>=99.9"), "{t}");
    assert_eq!(
        row(t, "step 3"),
        [
            "step 3",
            "200",
            "400",
            "199.0",
            "99.50%",
            "0",
            "50.00",
            "418.00",
            "420.00",
            "FAIL p99<=150ms, success_rate>=99.9"
        ]
    );
    assert_eq!(row(t, "step 6")[1], "187.5");
    assert_eq!(row(t, "step 6").last(), Some(&"pass"));
    assert!(
        t.contains("capacity: 187.5 msg/s meets the SLO; 193.8 msg/s broke it (p99<=150ms)"),
        "{t}"
    );
    assert!(t.contains("those of step 6 at 187.5 msg/s"), "{t}");
}

#[test]
fn chart_draws_the_knee_for_a_capacity_result_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = searched(dir.path());
    let out_dir = dir.path().join("charts");
    let out = analyze(&["chart", s(&path), "--out", s(&out_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let svg = std::fs::read_to_string(out_dir.join("capacity.svg")).unwrap();
    assert!(svg.contains("p99 (corrected) against offered rate"));
    assert!(svg.contains("success rate against offered rate"));
    assert!(
        svg.contains("SLO 150 ms") && svg.contains("SLO 99.9%"),
        "the SLO lines"
    );
    // The series' colour fills its line and markers in both panels.
    let png = out_dir.join("capacity.png");
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).unwrap();
    let step = if frame.color_type == png::ColorType::Rgba {
        4
    } else {
        3
    };
    let blue = buf[..frame.buffer_size()]
        .chunks_exact(step)
        .filter(|px| px[..3] == [0, 114, 178])
        .count();
    assert!(blue > 2000, "{blue} pixels of the series");

    let plain = Builder::burst(&spread(100, 1_000, 5_000), 1.0).write(dir.path(), "plain.json");
    let plain_dir = dir.path().join("plain-charts");
    let out = analyze(&["chart", s(&plain), "--out", s(&plain_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!plain_dir.join("capacity.svg").exists());
    assert!(
        !out.stderr.contains("capacity"),
        "no note for runs without a search"
    );
}

#[test]
fn the_html_report_shows_the_verdict_the_steps_and_the_knee() {
    let dir = tempfile::tempdir().unwrap();
    let path = searched(dir.path());
    let page = dir.path().join("report.html");
    let out = analyze(&["report", s(&path), "-o", s(&page)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<strong>Capacity:</strong> 187.5 msg/s meets the SLO; 193.8 msg/s broke it (p99&lt;=150ms)"),
        "verdict"
    );
    assert!(html.contains("<th>offered msg/s</th>"));
    assert!(
        html.contains("<tr class=\"bad\"><td>step 3</td><td>200</td>"),
        "a step that broke the SLO is marked"
    );
    assert!(html.contains("<tr><td>step 6</td><td>187.5</td>"));
    assert!(
        html.contains("p99 (corrected) against offered rate"),
        "the knee chart"
    );
    // Shown once, typed, not also as the raw key's table.
    assert!(!html.contains("<h3>capacity</h3>"));
}
