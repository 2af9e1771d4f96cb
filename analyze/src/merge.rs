//! `merge`: one result from the results of several generators that drove the same
//! servers at the same time.
//!
//! Counts add. Every percentile is recomputed from the merged HdrHistograms
//! (histograms add bucket by bucket, so the merge is exact within the histograms'
//! 3 significant digits); percentiles are never averaged. The run spans from the
//! earliest start to the latest end, and throughput is successful messages over
//! that span.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use report::{
    Histograms, HostInfo, LatencyHistogram, LatencySummary, Metrics, RunInfo, RunResult, SCHEMA_V1,
    ServerMetrics, SourceMetrics, TimelinePoint, TlsSummary, decode_histogram, encode_histogram,
    format_timestamp, new_latency_histogram,
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
    let hists = histograms_of(inputs)?;
    let span = Span::of(inputs)?;
    let sums = HistogramSums::add_up(inputs, &hists, &mut notes)?;
    let metrics = merged_metrics(inputs, &span, &sums);
    let (per_server, server_hists) = merge_servers(inputs, span.duration, &mut notes)?;
    let first = &inputs[0].1;
    let sum_opt = |f: fn(&RunResult) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = inputs.iter().filter_map(|(_, r)| f(r)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    let merged = RunResult {
        schema: Some(SCHEMA_V1.to_string()),
        test_type: common_test_type(inputs),
        servers: union_of_servers(inputs),
        port: first.port,
        message_size: weighted_message_size(inputs, metrics.total_messages),
        // N generators with W workers each kept N×W sessions open.
        concurrent_workers: sum_opt(|r| r.concurrent_workers.map(|w| w as f64)).map(|w| w as u64),
        target_rate: sum_opt(|r| r.target_rate),
        metrics,
        generator_saturated: inputs.iter().any(|(_, r)| r.generator_saturated),
        run: Some(merged_run_info(inputs)),
        per_server,
        per_source: merge_sources(inputs),
        timeline: merge_timelines(inputs, &span.offsets),
        timeline_bucket_s: Some(merged_bucket_s(inputs)),
        histograms: Some(sums.encode(server_hists)?),
        resources: merge_resources(inputs, &span.offsets),
        tls: merge_tls(inputs, &mut notes),
        stages: merge_stages(inputs, &mut notes),
        warmup_s: None,
        // Each generator judged its own share; the merged run has not been judged.
        gates: None,
        // A capacity search is one generator's sequence of steps; not merged.
        capacity: None,
    };
    Ok((merged, notes))
}

/// The per-source counts of every input, summed by address (generators on one
/// host with the same `--source-ips` share addresses), in address order.
fn merge_sources(inputs: &[(PathBuf, RunResult)]) -> Vec<SourceMetrics> {
    let mut by_address: BTreeMap<&str, SourceMetrics> = BTreeMap::new();
    for s in inputs.iter().flat_map(|(_, r)| &r.per_source) {
        by_address
            .entry(s.address.as_str())
            .or_insert_with(|| SourceMetrics {
                address: s.address.clone(),
                ..Default::default()
            })
            .add(s);
    }
    let mut merged: Vec<SourceMetrics> = by_address.into_values().collect();
    // Numeric order (127.0.0.9 before 127.0.0.10) where the addresses parse.
    merged.sort_by_key(|s| s.address.parse::<std::net::IpAddr>().ok());
    merged
}

/// Per-stage figures are not merged yet: the key is left out, with a note,
/// rather than show one shard's share as the whole.
fn merge_stages(
    inputs: &[(PathBuf, RunResult)],
    notes: &mut Vec<String>,
) -> Vec<report::StageSummary> {
    if inputs.iter().any(|(_, r)| !r.stages.is_empty()) {
        notes.push("stages dropped: per-stage figures are not merged".to_string());
    }
    Vec::new()
}

/// The handshakes of every input added up, when all ran over TLS in one mode;
/// otherwise the key is left out, with a note, rather than describe half the runs.
fn merge_tls(inputs: &[(PathBuf, RunResult)], notes: &mut Vec<String>) -> Option<TlsSummary> {
    let all: Vec<&TlsSummary> = inputs.iter().filter_map(|(_, r)| r.tls.as_ref()).collect();
    let first = *all.first()?;
    if all.len() < inputs.len() || all.iter().any(|t| t.mode != first.mode) {
        notes.push("tls dropped: not every input ran over TLS in the same mode".to_string());
        return None;
    }
    let mut sum = TlsSummary {
        mode: first.mode.clone(),
        ..TlsSummary::default()
    };
    for t in all {
        sum.add(t);
    }
    Some(sum)
}

/// Every input's histograms; an input without them is refused.
fn histograms_of(inputs: &[(PathBuf, RunResult)]) -> anyhow::Result<Vec<&Histograms>> {
    if inputs.is_empty() {
        bail!("merge needs at least one result");
    }
    inputs
        .iter()
        .map(|(path, r)| match &r.histograms {
            Some(h) => Ok(h),
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
        })
        .collect()
}

/// The merged run's time line: from the earliest start to the latest end.
struct Span {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    duration: f64,
    /// Each input's start, in seconds after the earliest one.
    offsets: Vec<f64>,
}

impl Span {
    fn of(inputs: &[(PathBuf, RunResult)]) -> anyhow::Result<Span> {
        let stamp = |p: &Path, r: &RunResult, end: bool| {
            let (name, text, value) = if end {
                ("end_time", &r.metrics.end_time, r.end_time())
            } else {
                ("start_time", &r.metrics.start_time, r.start_time())
            };
            value.with_context(|| format!("{}: {name} {text:?} is not a timestamp", p.display()))
        };
        let starts: Vec<_> = inputs
            .iter()
            .map(|(p, r)| stamp(p, r, false))
            .collect::<anyhow::Result<_>>()?;
        let ends: Vec<_> = inputs
            .iter()
            .map(|(p, r)| stamp(p, r, true))
            .collect::<anyhow::Result<_>>()?;
        let start = *starts
            .iter()
            .min()
            .context("merge needs at least one result")?;
        let end = *ends
            .iter()
            .max()
            .context("merge needs at least one result")?;
        let seconds = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1e6;
        Ok(Span {
            start,
            end,
            duration: seconds(end - start).max(0.0),
            offsets: starts.iter().map(|s| seconds(*s - start)).collect(),
        })
    }
}

/// The run-wide histograms added up: total, corrected (when every input has it)
/// and each phase every input has.
struct HistogramSums {
    total: HistogramSum,
    corrected: Option<HistogramSum>,
    phases: BTreeMap<String, HistogramSum>,
}

impl HistogramSums {
    fn add_up(
        inputs: &[(PathBuf, RunResult)],
        hists: &[&Histograms],
        notes: &mut Vec<String>,
    ) -> anyhow::Result<HistogramSums> {
        let each = || {
            inputs
                .iter()
                .map(|(p, _)| p.as_path())
                .zip(hists.iter().copied())
        };
        let mut total = HistogramSum::new();
        for (path, h) in each() {
            total.add(path, "total", &h.total)?;
        }
        let corrected = if hists.iter().all(|h| h.corrected.is_some()) {
            let mut sum = HistogramSum::new();
            for (path, h) in each() {
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
        let mut phases = BTreeMap::new();
        let phase_names: BTreeSet<&String> = hists.iter().flat_map(|h| h.phases.keys()).collect();
        for name in phase_names {
            if !hists.iter().all(|h| h.phases.contains_key(name)) {
                notes.push(format!("phase {name:?} dropped: not every input has it"));
                continue;
            }
            let mut sum = HistogramSum::new();
            for (path, h) in each() {
                sum.add(path, &format!("phases.{name}"), &h.phases[name])?;
            }
            phases.insert(name.clone(), sum);
        }
        Ok(HistogramSums {
            total,
            corrected,
            phases,
        })
    }

    fn encode(&self, per_server: BTreeMap<String, String>) -> anyhow::Result<Histograms> {
        Ok(Histograms {
            total: self.total.encode()?,
            corrected: self
                .corrected
                .as_ref()
                .map(HistogramSum::encode)
                .transpose()?,
            phases: self
                .phases
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.encode()?)))
                .collect::<anyhow::Result<_>>()?,
            per_server,
        })
    }
}

/// Counts added up, latency from the merged histograms, rates over the span.
fn merged_metrics(inputs: &[(PathBuf, RunResult)], span: &Span, sums: &HistogramSums) -> Metrics {
    let mut metrics = Metrics {
        duration_seconds: span.duration,
        latency_ms: sums.total.summary(),
        start_time: format_timestamp(span.start),
        end_time: format_timestamp(span.end),
        latency_corrected_ms: sums.corrected.as_ref().map(HistogramSum::summary),
        phases_ms: sums
            .phases
            .iter()
            .map(|(k, v)| (k.clone(), v.summary()))
            .collect(),
        ..Metrics::default()
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
    metrics.messages_per_second = per_second(metrics.successful_messages, span.duration);
    metrics
}

/// The inputs' test type when they agree, else `merged`.
fn common_test_type(inputs: &[(PathBuf, RunResult)]) -> String {
    let first = &inputs[0].1.test_type;
    if inputs.iter().all(|(_, r)| &r.test_type == first) {
        first.clone()
    } else {
        "merged".to_string()
    }
}

/// Every server of any input, once, in order of first appearance.
fn union_of_servers(inputs: &[(PathBuf, RunResult)]) -> Vec<String> {
    let mut servers: Vec<String> = Vec::new();
    for s in inputs.iter().flat_map(|(_, r)| &r.servers) {
        if !servers.contains(s) {
            servers.push(s.clone());
        }
    }
    servers
}

/// The message size weighted by each input's message count.
fn weighted_message_size(inputs: &[(PathBuf, RunResult)], total_messages: u64) -> u64 {
    if total_messages == 0 {
        return inputs[0].1.message_size;
    }
    let weighted: u128 = inputs
        .iter()
        .map(|(_, r)| r.message_size as u128 * r.metrics.total_messages as u128)
        .sum();
    (weighted / total_messages as u128) as u64
}

/// `run` of the merged result: its sources under `config.merged_from`, the
/// generators' hosts joined.
fn merged_run_info(inputs: &[(PathBuf, RunResult)]) -> RunInfo {
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
    let runs = || inputs.iter().filter_map(|(_, r)| r.run.as_ref());
    RunInfo {
        name: "merged".to_string(),
        interrupted: inputs.iter().any(|(_, r)| r.interrupted()),
        config: serde_json::json!({ "merged_from": sources }),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        git_sha: None,
        host: HostInfo {
            hostname: runs()
                .map(|x| x.host.hostname.clone())
                .collect::<Vec<_>>()
                .join("+"),
            cpus: runs().map(|x| x.host.cpus).sum(),
            os: inputs[0]
                .1
                .run
                .as_ref()
                .map_or_else(String::new, |x| x.host.os.clone()),
        },
        generator: None,
    }
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
                        ..ServerMetrics::default()
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

/// The merged timeline's bucket width: the widest of the inputs', so every input's
/// buckets fit in it.
fn merged_bucket_s(inputs: &[(PathBuf, RunResult)]) -> f64 {
    inputs
        .iter()
        .map(|(_, r)| r.timeline_bucket_s())
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
}

/// Timelines aligned on wall time: each input's buckets are shifted by how much
/// later than the earliest input it started (rounded to a bucket), then counts
/// are summed bucket by bucket. The buckets of an input finer than the merged
/// width (a short run merged with longer ones) land in the bucket they end in.
///
/// The per-bucket p50/p99 are **approximate**: results keep no per-bucket
/// histograms, so each merged bucket takes the mean of the inputs' values weighted
/// by their message counts in that bucket. Use the run's overall percentiles
/// (exact, from the merged histograms) for anything that matters.
fn merge_timelines(inputs: &[(PathBuf, RunResult)], offsets: &[f64]) -> Vec<TimelinePoint> {
    let width = merged_bucket_s(inputs);
    // t_s → (point, weight sum)
    let mut buckets: BTreeMap<u64, (TimelinePoint, f64)> = BTreeMap::new();
    for ((_, r), offset) in inputs.iter().zip(offsets) {
        let input_width = r.timeline_bucket_s();
        let merged_bucket = |t_s: u64| -> u64 {
            if input_width == width {
                t_s + (offset / width).round() as u64
            } else {
                // A finer bucket lands in the merged bucket its end falls in;
                // the allowance keeps 10 × 0.1 s in bucket 1 despite rounding.
                let end = t_s as f64 * input_width + offset;
                ((end / width) - 1e-9).ceil().max(1.0) as u64
            }
        };
        for p in &r.timeline {
            let t_s = merged_bucket(p.t_s);
            let (acc, weight) = buckets.entry(t_s).or_insert_with(|| {
                (
                    TimelinePoint {
                        t_s,
                        ..TimelinePoint::default()
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
    buckets
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
