//! `chart`: files written, their sizes, and what is skipped.

mod common;

use std::path::Path;

use common::{Builder, analyze, prixfixe, s, spread};

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        path.display()
    );
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// An RGB(A) pixel colour.
type Rgb = [u8; 3];

/// The first two series colours (`base` and `new`, or the first two servers).
const SERIES: [Rgb; 2] = [[0, 114, 178], [213, 94, 0]];

/// How many pixels of a chart have exactly `colour`.
fn pixels_of(path: &Path, colour: Rgb) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("PNG data");
    let step = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("{}: unexpected colour type {other:?}", path.display()),
    };
    buf[..frame.buffer_size()]
        .chunks_exact(step)
        .filter(|px| px[..3] == colour)
        .count()
}

/// Each series' colour covers more of the chart than its legend swatches can (per
/// panel a 20 px line or a 12 px square, under 200 pixels): the series itself was
/// drawn in the plot area, twice over.
fn assert_series_drawn(path: &Path, panels: usize) {
    const SWATCH: usize = 200;
    for colour in SERIES {
        let n = pixels_of(path, colour);
        assert!(
            n > 2 * SWATCH * panels,
            "{}: only {n} pixels of {colour:?}: an empty plot with a legend",
            path.display()
        );
    }
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("<svg"), "{}", path.display());
    assert!(text.len() > 500, "{} is nearly empty", path.display());
}

#[test]
fn every_chart_is_drawn_as_png_and_svg_with_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Builder::burst(&spread(600, 1_000, 30_000), 6.0);
    a.resources = true;
    a.corrected_extra_us = Some(2_000);
    let a = a.write(dir.path(), "base.json");
    // A slower run, so that its throughput line does not hide the base's.
    let b = Builder::burst(&spread(480, 1_000, 40_000), 6.0).write(dir.path(), "new.json");
    let out_dir = dir.path().join("charts");
    let out = analyze(&[
        "chart",
        s(&a),
        s(&b),
        "--out",
        s(&out_dir),
        "--width",
        "640",
        "--height",
        "400",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for name in ["throughput", "latency", "spectrum", "servers", "resources"] {
        let png = out_dir.join(format!("{name}.png"));
        assert_eq!(png_size(&png), (640, 400), "{name}");
        assert!(std::fs::metadata(&png).unwrap().len() > 1000, "{name}");
        let svg = out_dir.join(format!("{name}.svg"));
        assert_svg(&svg);
        assert!(out.stdout.contains(&format!("{name}.png")));
        let panels = if matches!(name, "resources" | "servers") {
            2
        } else {
            1
        };
        assert_series_drawn(&png, panels);
    }
    // One series per file, named by its stem.
    let spectrum = std::fs::read_to_string(out_dir.join("spectrum.svg")).unwrap();
    assert!(spectrum.contains("base") && spectrum.contains("new"));
    assert!(spectrum.contains("base (corrected)"));
}

#[test]
fn default_size_and_legacy_files_draw_what_they_can() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("charts");
    let legacy = prixfixe("v0.2.0-burst-small-1k.json");
    let out = analyze(&["chart", s(&legacy), "--out", s(&out_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(png_size(&out_dir.join("spectrum.png")), (1200, 700));
    assert_svg(&out_dir.join("spectrum.svg"));
    assert!(!out_dir.join("throughput.png").exists());
    assert!(out.stderr.contains("no timeline"), "{}", out.stderr);
    assert!(
        out.stderr.contains("PrixFixe v0.2 (legacy)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("servers: no input has per-server figures")
    );
}

#[test]
fn a_resource_series_of_one_sample_is_drawn_as_a_point() {
    let dir = tempfile::tempdir().unwrap();
    // A one-second run: one CPU/memory sample per server.
    let mut a = Builder::burst(&spread(100, 1_000, 5_000), 1.0);
    a.resources = true;
    let a = a.write(dir.path(), "short.json");
    let out_dir = dir.path().join("charts");
    let out = analyze(&["chart", s(&a), "--out", s(&out_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let svg = std::fs::read_to_string(out_dir.join("resources.svg")).unwrap();
    // Two servers, each in the CPU and the memory panel, in its own color.
    let markers: Vec<&str> = svg.lines().filter(|l| l.contains("<circle")).collect();
    assert_eq!(markers.len(), 4, "{svg}");
    for color in ["#0072B2", "#D55E00"] {
        assert_eq!(
            markers.iter().filter(|l| l.contains(color)).count(),
            2,
            "{color}: {markers:?}"
        );
    }
}

#[test]
fn unreadable_input_draws_nothing_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"schema\": ").unwrap();
    let out_dir = dir.path().join("charts");
    let out = analyze(&["chart", s(&bad), "--out", s(&out_dir)]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("bad.json: truncated"), "{}", out.stderr);
    assert!(!out_dir.exists());
}

/// A run of 30 ms with 1 ms buckets (as loadgen writes a quick test): the charts
/// say the width, draw each series, and read its buckets as seconds of the run.
#[test]
fn a_short_run_is_charted_over_its_own_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::burst(&spread(300, 1_000, 6_000), 0.03);
    b.bucket_s = Some(0.001);
    let a = b.write(dir.path(), "base.json");
    let out_dir = dir.path().join("charts");
    let out = analyze(&["chart", s(&a), "--out", s(&out_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let throughput = std::fs::read_to_string(out_dir.join("throughput.svg")).unwrap();
    assert!(
        throughput.contains("Throughput over time (1 ms buckets)"),
        "the title names the bucket width"
    );
    // 10 messages per 1 ms bucket are 10,000 msg/s: the value axis reaches it.
    assert!(
        throughput.contains("10000"),
        "msg/s, not messages per bucket"
    );
    // The time axis ends with the run (0.03 s), not at bucket number 30.
    assert!(throughput.contains("0.03") && !throughput.contains(">30<"));
    let latency = std::fs::read_to_string(out_dir.join("latency.svg")).unwrap();
    assert!(latency.contains("Latency over time (per 1 ms)"));
    for name in ["throughput", "latency"] {
        let png = out_dir.join(format!("{name}.png"));
        let n = pixels_of(&png, SERIES[0]);
        assert!(n > 2 * 200, "{name}: only {n} pixels of the series");
    }
}

/// A run where no message succeeded has no latency to draw over time: that chart
/// is left out with a line saying why, not written as an empty grid.
#[test]
fn a_chart_with_nothing_to_draw_is_skipped_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let n = 50;
    let a = Builder::burst(&spread(n, 1_000, 6_000), 2.0)
        .failing_last(n)
        .build();
    let mut a = a;
    for p in &mut a.timeline {
        // A failed message has no latency: loadgen records none per bucket.
        (p.p50_ms, p.p99_ms) = (0.0, 0.0);
    }
    let path = dir.path().join("failed.json");
    a.save(&path).unwrap();
    let out_dir = dir.path().join("charts");
    let out = analyze(&["chart", s(&path), "--out", s(&out_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out_dir.join("throughput.png").exists(),
        "failures per second"
    );
    assert!(!out_dir.join("latency.png").exists());
    assert!(!out_dir.join("latency.svg").exists());
    assert!(
        out.stderr
            .contains("skipped: latency: no input's timeline has a successful message"),
        "{}",
        out.stderr
    );
}

/// A run where every message failed, as loadgen writes it (no latency recorded
/// anywhere): only the throughput chart (failed/s) has something to show.
#[test]
fn a_run_without_a_success_writes_only_the_failures_chart() {
    let dir = tempfile::tempdir().unwrap();
    let n = 50;
    let mut a = Builder::burst(&spread(n, 1_000, 6_000), 2.0)
        .failing_last(n)
        .build();
    let empty = report::encode_histogram(&report::new_latency_histogram()).unwrap();
    let h = a.histograms.as_mut().unwrap();
    h.total = empty.clone();
    h.phases.clear();
    h.per_server.values_mut().for_each(|v| *v = empty.clone());
    a.metrics.latency_ms = Default::default();
    for m in &mut a.per_server {
        m.latency_ms = Default::default();
    }
    for p in &mut a.timeline {
        (p.p50_ms, p.p99_ms) = (0.0, 0.0);
    }
    let path = dir.path().join("failed.json");
    a.save(&path).unwrap();
    let out_dir = dir.path().join("charts");
    let out = analyze(&["chart", s(&path), "--out", s(&out_dir)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out_dir.join("throughput.png").exists(),
        "failures per second"
    );
    for name in ["latency", "spectrum", "servers"] {
        assert!(!out_dir.join(format!("{name}.png")).exists(), "{name}");
        assert!(!out_dir.join(format!("{name}.svg")).exists(), "{name}");
    }
    for line in [
        "skipped: spectrum: no input has the latency of a successful message",
        "skipped: servers: no server had a successful message",
    ] {
        assert!(out.stderr.contains(line), "{}", out.stderr);
    }
}

/// A stages run's throughput chart draws its target curve beside the achieved
/// rate and shades the stages; a run without stages has neither.
#[test]
fn a_stages_run_draws_its_target_rate_and_shades_its_stages() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Builder::burst(&spread(300, 1_000, 6_000), 3.0).build();
    let stage = |index, start_s, end_s, rate_from, rate_to| report::StageSummary {
        index,
        start_s,
        end_s,
        rate_from,
        rate_to,
        ..Default::default()
    };
    r.stages = vec![
        stage(0, 0.0, 1.0, 0.0, 200.0),
        stage(1, 1.0, 3.0, 200.0, 200.0),
    ];
    let staged = dir.path().join("staged.json");
    r.save(&staged).unwrap();
    let plain = Builder::burst(&spread(300, 1_000, 6_000), 3.0).write(dir.path(), "plain.json");
    for (file, has) in [(&staged, true), (&plain, false)] {
        let out_dir = dir.path().join(format!("charts-{has}"));
        let out = analyze(&["chart", s(file), "--out", s(&out_dir)]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let svg = std::fs::read_to_string(out_dir.join("throughput.svg")).unwrap();
        assert_eq!(svg.contains("target msg/s"), has, "{file:?}");
        // The target reaches 200 msg/s, so the value axis does too.
        if has {
            assert!(svg.contains("200"), "the axis covers the target");
            assert!(
                svg.contains("opacity=\"0.1\"") || svg.contains("fill-opacity=\"0.1\""),
                "stage shading"
            );
        }
    }
}
