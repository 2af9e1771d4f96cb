//! `merge`: one result from the results of several generators that drove the same
//! servers at the same time.
//!
//! Counts add. Every percentile is recomputed from the merged HdrHistograms
//! (histograms add bucket by bucket, so the merge is exact within the histograms'
//! 3 significant digits); percentiles are never averaged. The run spans from the
//! earliest start to the latest end, and throughput is successful messages over
//! that span.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use report::{
    Histograms, HostInfo, LatencyHistogram, LatencySummary, Metrics, RunInfo, RunResult, SCHEMA_V1,
    ServerMetrics, TimelinePoint, decode_histogram, encode_histogram, format_timestamp,
    new_latency_histogram,
};

/// Adds decoded histograms into one.
struct HistogramSum {
    sum: LatencyHistogram,
}

impl HistogramSum {
    fn new() -> Self {
        let mut sum = new_latency_histogram();
        // A histogram from another encoder may have a wider range; grow rather than fail.
        sum.auto(true);
        HistogramSum { sum }
    }

    fn add(&mut self, path: &Path, name: &str, text: &str) -> anyhow::Result<()> {
        let h = decode_histogram(text)
            .map_err(|e| anyhow::anyhow!("{}: histogram {name:?}: {e}", path.display()))?;
        self.sum.add(&h).map_err(|e| {
            anyhow::anyhow!("{}: histogram {name:?}: cannot add: {e:?}", path.display())
        })
    }

    fn summary(&self) -> LatencySummary {
        LatencySummary::from_histogram(&self.sum)
    }

    fn encode(&self) -> anyhow::Result<String> {
        Ok(encode_histogram(&self.sum)?)
    }
}

/// Merges results (at least one). Inputs without histograms (PrixFixe files) are
/// refused: their percentiles cannot be combined honestly.
pub fn merge(inputs: &[(PathBuf, RunResult)]) -> anyhow::Result<(RunResult, Vec<String>)> {
    let mut notes = Vec::new();
    if inputs.is_empty() {
        bail!("merge needs at least one result");
    }
    let mut hists = Vec::new();
    for (path, r) in inputs {
        match &r.histograms {
            Some(h) => hists.push(h),
            None => bail!(
                "{}: has no latency histograms ({}), so its percentiles cannot be merged; \
                 only Stampede results can be merged",
                path.display(),
                if r.is_legacy() {
                    "a PrixFixe v0.2 (legacy) file"
                } else {
                    "written without them"
                }
            ),
        }
    }

    // The time line: every input's start, as an offset from the earliest one.
    let starts: Vec<_> = inputs
        .iter()
        .map(|(p, r)| {
            r.start_time().with_context(|| {
                format!(
                    "{}: start_time {:?} is not a timestamp",
                    p.display(),
                    r.metrics.start_time
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let ends: Vec<_> = inputs
        .iter()
        .map(|(p, r)| {
            r.end_time().with_context(|| {
                format!(
                    "{}: end_time {:?} is not a timestamp",
                    p.display(),
                    r.metrics.end_time
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let start = *starts.iter().min().expect("inputs are not empty");
    let end = *ends.iter().max().expect("inputs are not empty");
    let duration = ((end - start).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0);
    let offsets: Vec<f64> = starts
        .iter()
        .map(|s| (*s - start).num_microseconds().unwrap_or(0) as f64 / 1e6)
        .collect();

    // Histograms.
    let mut total = HistogramSum::new();
    for ((path, _), h) in inputs.iter().zip(&hists) {
        total.add(path, "total", &h.total)?;
    }
    let corrected = if hists.iter().all(|h| h.corrected.is_some()) {
        let mut sum = HistogramSum::new();
        for ((path, _), h) in inputs.iter().zip(&hists) {
            sum.add(
                path,
                "corrected",
                h.corrected.as_deref().unwrap_or_default(),
            )?;
        }
        Some(sum)
    } else {
        if hists.iter().any(|h| h.corrected.is_some()) {
            notes.push("corrected latency dropped: not every input has it".to_string());
        }
        None
    };
    let mut phases: BTreeMap<String, HistogramSum> = BTreeMap::new();
    let phase_names: std::collections::BTreeSet<&String> =
        hists.iter().flat_map(|h| h.phases.keys()).collect();
    for name in phase_names {
        if !hists.iter().all(|h| h.phases.contains_key(name)) {
            notes.push(format!("phase {name:?} dropped: not every input has it"));
            continue;
        }
        let mut sum = HistogramSum::new();
        for ((path, _), h) in inputs.iter().zip(&hists) {
            sum.add(path, &format!("phases.{name}"), &h.phases[name])?;
        }
        phases.insert(name.clone(), sum);
    }

    // Counts.
    let mut metrics = Metrics {
        total_messages: 0,
        successful_messages: 0,
        failed_messages: 0,
        connection_errors: 0,
        total_bytes_sent: 0,
        duration_seconds: duration,
        messages_per_second: 0.0,
        latency_ms: total.summary(),
        error_breakdown: BTreeMap::new(),
        start_time: format_timestamp(start),
        end_time: format_timestamp(end),
        timeouts: 0,
        success_rate: 0.0,
        late_sends: 0,
        latency_corrected_ms: corrected.as_ref().map(HistogramSum::summary),
        phases_ms: phases
            .iter()
            .map(|(k, v)| (k.clone(), v.summary()))
            .collect(),
        replies: BTreeMap::new(),
    };
    for (_, r) in inputs {
        let m = &r.metrics;
        metrics.total_messages += m.total_messages;
        metrics.successful_messages += m.successful_messages;
        metrics.failed_messages += m.failed_messages;
        metrics.connection_errors += m.connection_errors;
        metrics.total_bytes_sent += m.total_bytes_sent;
        metrics.timeouts += m.timeouts;
        metrics.late_sends += m.late_sends;
        add_counts(&mut metrics.error_breakdown, &m.error_breakdown);
        add_counts(&mut metrics.replies, &m.replies);
    }
    metrics.success_rate = metrics.compute_success_rate();
    metrics.messages_per_second = per_second(metrics.successful_messages, duration);

    let (per_server, server_hists) = merge_servers(inputs, duration, &mut notes)?;

    let first = &inputs[0].1;
    let all_same = |f: fn(&RunResult) -> String| inputs.iter().all(|(_, r)| f(r) == f(first));
    let mut servers: Vec<String> = Vec::new();
    for (_, r) in inputs {
        for s in &r.servers {
            if !servers.contains(s) {
                servers.push(s.clone());
            }
        }
    }
    let message_size = if metrics.total_messages > 0 {
        let weighted: u128 = inputs
            .iter()
            .map(|(_, r)| r.message_size as u128 * r.metrics.total_messages as u128)
            .sum();
        (weighted / metrics.total_messages as u128) as u64
    } else {
        first.message_size
    };
    let sum_opt = |f: fn(&RunResult) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = inputs.iter().filter_map(|(_, r)| f(r)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };

    let sources: Vec<serde_json::Value> = inputs
        .iter()
        .map(|(p, r)| {
            serde_json::json!({
                "file": p.display().to_string(),
                "run": r.run.as_ref().map(|x| x.name.clone()),
                "host": r.run.as_ref().map(|x| x.host.hostname.clone()),
                "start_time": r.metrics.start_time,
                "total_messages": r.metrics.total_messages,
                "config": r.run.as_ref().map(|x| x.config.clone()),
            })
        })
        .collect();
    let hostnames: Vec<String> = inputs
        .iter()
        .filter_map(|(_, r)| r.run.as_ref().map(|x| x.host.hostname.clone()))
        .collect();

    let merged = RunResult {
        schema: Some(SCHEMA_V1.to_string()),
        test_type: if all_same(|r| r.test_type.clone()) {
            first.test_type.clone()
        } else {
            "merged".to_string()
        },
        servers,
        port: first.port,
        message_size,
        // N generators with W workers each kept N×W sessions open.
        concurrent_workers: sum_opt(|r| r.concurrent_workers.map(|w| w as f64)).map(|w| w as u64),
        target_rate: sum_opt(|r| r.target_rate),
        metrics,
        generator_saturated: inputs.iter().any(|(_, r)| r.generator_saturated),
        run: Some(RunInfo {
            name: "merged".to_string(),
            interrupted: inputs.iter().any(|(_, r)| r.interrupted()),
            config: serde_json::json!({ "merged_from": sources }),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            git_sha: None,
            host: HostInfo {
                hostname: hostnames.join("+"),
                cpus: inputs
                    .iter()
                    .filter_map(|(_, r)| r.run.as_ref().map(|x| x.host.cpus))
                    .sum(),
                os: first
                    .run
                    .as_ref()
                    .map_or_else(String::new, |x| x.host.os.clone()),
            },
            generator: None,
        }),
        per_server,
        timeline: merge_timelines(inputs, &offsets),
        histograms: Some(Histograms {
            total: total.encode()?,
            corrected: corrected.as_ref().map(HistogramSum::encode).transpose()?,
            phases: phases
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.encode()?)))
                .collect::<anyhow::Result<_>>()?,
            per_server: server_hists,
        }),
        resources: merge_resources(inputs, &offsets),
    };
    Ok((merged, notes))
}

fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Per-server figures merged by address. Latency comes from the merged per-server
/// histograms; where an input lacks one, the merged summary takes the highest of
/// each percentile (an upper bound, never an average) and a note says so.
fn merge_servers(
    inputs: &[(PathBuf, RunResult)],
    duration: f64,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Vec<ServerMetrics>, BTreeMap<String, String>)> {
    let mut order: Vec<String> = Vec::new();
    let mut merged: BTreeMap<String, (ServerMetrics, Option<HistogramSum>, Vec<LatencySummary>)> =
        BTreeMap::new();
    for (path, r) in inputs {
        let hists = r.histograms.as_ref().map(|h| &h.per_server);
        for s in &r.per_server {
            let entry = merged.entry(s.address.clone()).or_insert_with(|| {
                order.push(s.address.clone());
                (
                    ServerMetrics {
                        address: s.address.clone(),
                        total_messages: 0,
                        successful_messages: 0,
                        failed_messages: 0,
                        connection_errors: 0,
                        timeouts: 0,
                        messages_per_second: 0.0,
                        latency_ms: LatencySummary::default(),
                        error_breakdown: BTreeMap::new(),
                    },
                    Some(HistogramSum::new()),
                    Vec::new(),
                )
            });
            let (m, sum, summaries) = entry;
            m.total_messages += s.total_messages;
            m.successful_messages += s.successful_messages;
            m.failed_messages += s.failed_messages;
            m.connection_errors += s.connection_errors;
            m.timeouts += s.timeouts;
            add_counts(&mut m.error_breakdown, &s.error_breakdown);
            summaries.push(s.latency_ms);
            match hists.and_then(|h| h.get(&s.address)) {
                Some(text) => {
                    if let Some(sum) = sum.as_mut() {
                        sum.add(path, &format!("per_server.{}", s.address), text)?;
                    }
                }
                None => *sum = None,
            }
        }
    }
    let mut servers = Vec::new();
    let mut encoded = BTreeMap::new();
    for address in order {
        let (mut m, sum, summaries) = merged.remove(&address).expect("address was recorded");
        m.messages_per_second = per_second(m.successful_messages, duration);
        match sum {
            Some(sum) => {
                m.latency_ms = sum.summary();
                encoded.insert(address.clone(), sum.encode()?);
            }
            None => {
                notes.push(format!(
                    "server {address}: an input has no per-server histogram; its latency is the \
                     highest of each percentile across inputs (an upper bound)"
                ));
                m.latency_ms = upper_bound(&summaries);
            }
        }
        servers.push(m);
    }
    Ok((servers, encoded))
}

fn upper_bound(summaries: &[LatencySummary]) -> LatencySummary {
    let max = |f: fn(&LatencySummary) -> f64| summaries.iter().map(f).fold(0.0, f64::max);
    LatencySummary {
        avg: max(|l| l.avg),
        min: summaries
            .iter()
            .map(|l| l.min)
            .reduce(f64::min)
            .unwrap_or(0.0),
        max: max(|l| l.max),
        p50: max(|l| l.p50),
        p90: max(|l| l.p90),
        p95: max(|l| l.p95),
        p99: max(|l| l.p99),
        p99_9: max(|l| l.p99_9),
    }
}

/// Timelines aligned on wall time: each input's seconds are shifted by how much
/// later than the earliest input it started (rounded to the second), then counts
/// are summed second by second.
///
/// The per-second p50/p99 are **approximate**: results keep no per-second
/// histograms, so each merged second takes the mean of the inputs' values weighted
/// by their message counts in that second. Use the run's overall percentiles
/// (exact, from the merged histograms) for anything that matters.
fn merge_timelines(inputs: &[(PathBuf, RunResult)], offsets: &[f64]) -> Vec<TimelinePoint> {
    // t_s → (point, weight sum)
    let mut seconds: BTreeMap<u64, (TimelinePoint, f64)> = BTreeMap::new();
    for ((_, r), offset) in inputs.iter().zip(offsets) {
        let shift = offset.round() as u64;
        for p in &r.timeline {
            let t_s = p.t_s + shift;
            let (acc, weight) = seconds.entry(t_s).or_insert_with(|| {
                (
                    TimelinePoint {
                        t_s,
                        sent: 0,
                        ok: 0,
                        failed: 0,
                        p50_ms: 0.0,
                        p99_ms: 0.0,
                    },
                    0.0,
                )
            });
            let w = (p.ok + p.failed).max(p.sent) as f64;
            acc.sent += p.sent;
            acc.ok += p.ok;
            acc.failed += p.failed;
            acc.p50_ms += p.p50_ms * w;
            acc.p99_ms += p.p99_ms * w;
            *weight += w;
        }
    }
    seconds
        .into_values()
        .map(|(mut p, weight)| {
            if weight > 0.0 {
                p.p50_ms /= weight;
                p.p99_ms /= weight;
            }
            p
        })
        .collect()
}

/// Resource samples of every input, shifted onto the merged time line. Two
/// generators that sampled the same server contribute both series, in time order.
fn merge_resources(
    inputs: &[(PathBuf, RunResult)],
    offsets: &[f64],
) -> BTreeMap<String, Vec<report::ResourceSample>> {
    let mut out: BTreeMap<String, Vec<report::ResourceSample>> = BTreeMap::new();
    for ((_, r), offset) in inputs.iter().zip(offsets) {
        for (server, samples) in &r.resources {
            out.entry(server.clone())
                .or_default()
                .extend(samples.iter().map(|s| report::ResourceSample {
                    t_s: s.t_s + offset,
                    ..*s
                }));
        }
    }
    for samples in out.values_mut() {
        samples.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    }
    out
}
