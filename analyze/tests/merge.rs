//! `merge`: several generators' results into one.

mod common;

use common::{Builder, Sample, analyze, prixfixe, s, spread};
use report::{LatencySummary, decode_histogram};

/// Percentiles exactly equal (the merged histogram is the whole's, bucket for
/// bucket); the mean up to floating-point summation order.
fn assert_same_latency(a: &LatencySummary, b: &LatencySummary) {
    assert!(
        (a.avg - b.avg).abs() <= 1e-9 * b.avg.abs().max(1.0),
        "{a:?} vs {b:?}"
    );
    assert_eq!(
        (a.min, a.max, a.p50, a.p90, a.p95, a.p99, a.p99_9),
        (b.min, b.max, b.p50, b.p90, b.p95, b.p99, b.p99_9)
    );
}

/// 4000 messages over 20 s and three servers, some failing, with a long tail.
fn whole() -> Builder {
    let mut lat = spread(4000, 800, 30_000);
    for (i, l) in lat.iter_mut().enumerate() {
        if i % 97 == 0 {
            *l *= 20;
        }
    }
    let mut b = Builder::burst(&lat, 20.0);
    b.servers.push("127.0.0.1:2527".into());
    for (i, smp) in b.samples.iter_mut().enumerate() {
        smp.server = i % 3;
        smp.ok = i % 250 != 7;
    }
    b.corrected_extra_us = Some(3_000);
    b.resources = true;
    b
}

fn part(whole: &Builder, keep: impl Fn(usize) -> bool, host: &str) -> Builder {
    let mut b = whole.clone();
    b.samples = whole
        .samples
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, s)| *s)
        .collect::<Vec<Sample>>();
    b.host = host.into();
    b
}

#[test]
fn merging_two_halves_gives_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let whole = whole();
    let expected = whole.build();
    let a = part(&whole, |i| i % 2 == 0, "gen-1").write(dir.path(), "a.json");
    let b = part(&whole, |i| i % 2 == 1, "gen-2").write(dir.path(), "b.json");
    let out_path = dir.path().join("out/merged.json");
    let out = analyze(&["merge", s(&a), s(&b), "-o", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let merged = report::load(&out_path).unwrap();

    let (m, e) = (&merged.metrics, &expected.metrics);
    assert_eq!(m.total_messages, e.total_messages);
    assert_eq!(m.successful_messages, e.successful_messages);
    assert_eq!(m.failed_messages, e.failed_messages);
    assert_eq!(m.total_bytes_sent, e.total_bytes_sent);
    assert_eq!(m.error_breakdown, e.error_breakdown);
    assert_eq!(m.replies, e.replies);
    assert_eq!(m.start_time, e.start_time);
    assert_eq!(m.end_time, e.end_time);
    assert!((m.duration_seconds - e.duration_seconds).abs() < 1e-6);
    assert!((m.messages_per_second - e.messages_per_second).abs() < 1e-6);
    assert!((m.success_rate - e.success_rate).abs() < 1e-9);
    // Percentiles recomputed from the merged histogram equal the whole's.
    assert_same_latency(&m.latency_ms, &e.latency_ms);
    assert_same_latency(
        m.latency_corrected_ms.as_ref().unwrap(),
        e.latency_corrected_ms.as_ref().unwrap(),
    );
    assert_eq!(m.phases_ms.len(), 2);
    for (name, l) in &e.phases_ms {
        assert_same_latency(&m.phases_ms[name], l);
    }
    let (mh, eh) = (
        merged.histograms.as_ref().unwrap(),
        expected.histograms.as_ref().unwrap(),
    );
    assert_eq!(
        decode_histogram(&mh.total).unwrap(),
        decode_histogram(&eh.total).unwrap()
    );
    // Per server, merged by address.
    assert_eq!(merged.per_server.len(), 3);
    for (ms, es) in merged.per_server.iter().zip(&expected.per_server) {
        assert_eq!(ms.address, es.address);
        assert_eq!(ms.total_messages, es.total_messages);
        assert_eq!(ms.successful_messages, es.successful_messages);
        assert_same_latency(&ms.latency_ms, &es.latency_ms);
        assert!((ms.messages_per_second - es.messages_per_second).abs() < 1e-6);
    }
    // Timelines: counts per second add up exactly.
    assert_eq!(merged.timeline.len(), expected.timeline.len());
    for (mp, ep) in merged.timeline.iter().zip(&expected.timeline) {
        assert_eq!(
            (mp.t_s, mp.sent, mp.ok, mp.failed),
            (ep.t_s, ep.sent, ep.ok, ep.failed)
        );
    }
    // Bookkeeping: the run says where it came from.
    let run = merged.run.as_ref().unwrap();
    assert_eq!(run.name, "merged");
    assert_eq!(run.config["merged_from"].as_array().unwrap().len(), 2);
    assert_eq!(run.host.hostname, "gen-1+gen-2");
    assert_eq!(merged.concurrent_workers, Some(20));
    assert_eq!(merged.resources.len(), 3);
    assert_eq!(merged.resources["127.0.0.1:2525"].len(), 40);

    // The merged file is a result like any other.
    let out = analyze(&["show", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("merged from"), "{}", out.stdout);
    assert!(out.stdout.contains("a.json") && out.stdout.contains("b.json"));
}

#[test]
fn timelines_align_on_wall_time() {
    let dir = tempfile::tempdir().unwrap();
    let lat = spread(100, 1_000, 2_000);
    let a = Builder::burst(&lat, 10.0)
        .start("2026-11-22T12:00:00Z")
        .write(dir.path(), "a.json");
    let b = Builder::burst(&lat, 10.0)
        .start("2026-11-22T12:00:05Z")
        .write(dir.path(), "b.json");
    let out_path = dir.path().join("m.json");
    let out = analyze(&["merge", s(&a), s(&b), "-o", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m = report::load(&out_path).unwrap();
    assert!((m.metrics.duration_seconds - 15.0).abs() < 1e-9);
    assert!((m.metrics.messages_per_second - 200.0 / 15.0).abs() < 1e-9);
    let sent: Vec<u64> = m.timeline.iter().map(|p| p.sent).collect();
    // 10 per second from a in 1..=10, from b in 6..=15.
    assert_eq!(
        sent,
        [10, 10, 10, 10, 10, 20, 20, 20, 20, 20, 10, 10, 10, 10, 10]
    );
    assert_eq!(m.timeline[0].t_s, 1);
    assert_eq!(m.timeline[14].t_s, 15);
}

/// A short run's millisecond buckets merge into a longer run's seconds: the
/// merged file keeps the wider width and every message lands in the second it
/// happened in.
#[test]
fn timelines_of_different_bucket_widths_merge_into_the_wider() {
    let dir = tempfile::tempdir().unwrap();
    let lat = spread(100, 1_000, 2_000);
    let a = Builder::burst(&lat, 10.0)
        .start("2026-11-22T12:00:00Z")
        .write(dir.path(), "a.json");
    // 30 messages in 30 ms, starting 2.5 s after a: its third second.
    let mut b = Builder::burst(&spread(30, 1_000, 2_000), 0.03).start("2026-11-22T12:00:02.5Z");
    b.bucket_s = Some(0.001);
    let b = b.write(dir.path(), "b.json");
    let out_path = dir.path().join("m.json");
    let out = analyze(&["merge", s(&a), s(&b), "-o", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m = report::load(&out_path).unwrap();
    assert_eq!(m.timeline_bucket_s, Some(1.0));
    let sent: Vec<u64> = m.timeline.iter().map(|p| p.sent).collect();
    assert_eq!(sent, [10, 10, 40, 10, 10, 10, 10, 10, 10, 10]);
}

#[test]
fn legacy_inputs_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = Builder::burst(&spread(10, 1_000, 2_000), 1.0).write(dir.path(), "a.json");
    let legacy = prixfixe("v0.2.0-burst-small-1k.json");
    let out_path = dir.path().join("m.json");
    let out = analyze(&["merge", s(&a), s(&legacy), "-o", s(&out_path)]);
    assert_eq!(out.code, 2);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("v0.2.0-burst-small-1k.json: has no latency histograms")
    );
    assert!(!out_path.exists());
    let out = analyze(&["merge", s(&a)]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--output"), "{}", out.stderr);
}

#[test]
fn merging_tls_runs_adds_up_their_handshakes_and_drops_a_mixed_set() {
    let dir = tempfile::tempdir().unwrap();
    let whole = whole();
    let tls = |handshakes: u64, resumed: u64| report::TlsSummary {
        mode: "starttls".into(),
        versions: [("TLSv1.3".to_string(), handshakes)].into(),
        cipher_suites: [("TLS13_AES_128_GCM_SHA256".to_string(), handshakes)].into(),
        handshakes,
        resumed,
    };
    let save = |keep: fn(usize) -> bool, host: &str, t: Option<report::TlsSummary>| {
        let mut r = part(&whole, keep, host).build();
        r.tls = t;
        let path = dir.path().join(format!("{host}.json"));
        r.save(&path).unwrap();
        path
    };
    let a = save(|i| i % 3 == 0, "gen-1", Some(tls(10, 7)));
    let b = save(|i| i % 3 == 1, "gen-2", Some(tls(30, 20)));
    let plain = save(|i| i % 3 == 2, "gen-3", None);

    let out_path = dir.path().join("tls-merged.json");
    let out = analyze(&["merge", s(&a), s(&b), "-o", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let merged = report::load(&out_path).unwrap().tls.unwrap();
    assert_eq!((merged.handshakes, merged.resumed), (40, 27));
    assert_eq!(merged.versions["TLSv1.3"], 40);
    assert_eq!(merged.mode, "starttls");

    let out = analyze(&["merge", s(&a), s(&plain), "-o", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(report::load(&out_path).unwrap().tls.is_none());
    assert!(out.stderr.contains("tls dropped"), "{}", out.stderr);
}

#[test]
fn per_source_counts_add_up_by_address_and_show_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let whole = whole();
    let source = |address: &str, connections: u64, refused_421: u64| report::SourceMetrics {
        address: address.into(),
        connections,
        banners: connections - refused_421,
        refused_421,
        ..Default::default()
    };
    let save = |keep: fn(usize) -> bool, host: &str, sources: Vec<report::SourceMetrics>| {
        let mut r = part(&whole, keep, host).build();
        r.per_source = sources;
        let path = dir.path().join(format!("{host}.json"));
        r.save(&path).unwrap();
        path
    };
    // Two generators on one host share 127.0.0.10; each has one of its own.
    let a = save(
        |i| i % 2 == 0,
        "gen-1",
        vec![source("127.0.0.9", 5, 0), source("127.0.0.10", 5, 1)],
    );
    let b = save(
        |i| i % 2 == 1,
        "gen-2",
        vec![source("127.0.0.10", 4, 2), source("127.0.0.11", 4, 0)],
    );
    let out_path = dir.path().join("sources-merged.json");
    let out = analyze(&["merge", s(&a), s(&b), "-o", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let merged = report::load(&out_path).unwrap().per_source;
    assert_eq!(
        merged,
        vec![
            source("127.0.0.9", 5, 0),
            source("127.0.0.10", 9, 3),
            source("127.0.0.11", 4, 0)
        ],
        "summed by address, in numeric order"
    );

    let out = analyze(&["show", s(&out_path)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        common::row(&out.stdout, "127.0.0.10"),
        ["127.0.0.10", "9", "6", "3", "0", "0"],
        "{}",
        out.stdout
    );
    assert_eq!(
        common::row(&out.stdout, "total (3 addresses)"),
        ["total (3 addresses)", "18", "15", "3", "0", "0"],
        "{}",
        out.stdout
    );
}
