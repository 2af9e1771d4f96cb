//! Turns what a run measured into a [`report::RunResult`], the one result model
//! of the workspace.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use report::{
    GeneratorUsage, Histograms, HostInfo, LatencySummary, Metrics, Phase, RunInfo, RunResult,
    SCHEMA_V1, ServerMetrics, SourceMetrics, StageHistograms, StageSummary, TlsSummary,
    encode_histogram, format_timestamp,
};

use crate::cli::TlsMode;
use crate::config::{Config, Mode};
use crate::stats::{Stats, TlsTally};

/// Above this share of all cores the generator, not the server, is taken to be
/// the limit (DESIGN: "for example above 90% of its cores").
pub const SATURATED_CPU_PERCENT: f64 = 90.0;
/// Above this share of sends that were late although a session was free (the
/// generator's timers ran behind), the generator is taken to be the limit.
pub const SATURATED_LATE_SHARE: f64 = 0.01;

/// CPU time and peak RSS of this process so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessUsage {
    pub cpu: Duration,
    pub max_rss_bytes: u64,
}

impl ProcessUsage {
    pub fn now() -> Self {
        // SAFETY: getrusage only writes into the zeroed struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return Self::default();
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        ProcessUsage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            // Linux reports kilobytes.
            max_rss_bytes: ru.ru_maxrss as u64 * 1024,
        }
    }
}

/// How the run went, besides the statistics.
pub struct RunFacts<'a> {
    pub config: &'a Config,
    pub run_id: &'a str,
    pub start: DateTime<Utc>,
    pub duration: Duration,
    pub interrupted: bool,
    pub usage_before: ProcessUsage,
    pub usage_after: ProcessUsage,
    pub resources: BTreeMap<String, Vec<report::ResourceSample>>,
}

pub fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The machine the run was made on. In a container the generator would see the
/// container's id and CPU share; scripts/stress-test.sh passes the host's name and
/// CPU count in `STAMPEDE_HOST_NAME` and `STAMPEDE_HOST_CPUS` (as it passes
/// `STAMPEDE_GIT_SHA`). Provenance only: a value that does not parse falls back to
/// what the generator sees rather than failing a finished run.
fn host_info(generator_cpus: u32) -> HostInfo {
    let given = |name| {
        std::env::var(name)
            .ok()
            .filter(|s: &String| !s.trim().is_empty())
    };
    HostInfo {
        hostname: given("STAMPEDE_HOST_NAME")
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
        cpus: given("STAMPEDE_HOST_CPUS")
            .and_then(|s| s.trim().parse().ok())
            .filter(|&n: &u32| n > 0)
            .unwrap_or(generator_cpus),
        os: std::env::consts::OS.to_string(),
    }
}

/// The commit the generator was built from, best effort: `STAMPEDE_GIT_SHA` at run
/// time or at build time, else `git rev-parse HEAD` in the working directory or in
/// the directory of the binary (a `target/` inside the checkout).
fn git_sha() -> Option<String> {
    let given = std::env::var("STAMPEDE_GIT_SHA")
        .ok()
        .or_else(|| option_env!("STAMPEDE_GIT_SHA").map(str::to_owned));
    if let Some(s) = given.filter(|s| !s.trim().is_empty()) {
        return Some(s.trim().to_string());
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf));
    [Some(std::path::PathBuf::from(".")), exe_dir]
        .into_iter()
        .flatten()
        .find_map(|dir| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(["rev-parse", "HEAD"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !sha.is_empty()).then_some(sha)
        })
}

/// The phases this run's sessions go through: `tls` and `auth` only when the
/// run uses them, so a plaintext run's tables have no empty rows.
fn phases_of(c: &Config) -> impl Iterator<Item = Phase> + '_ {
    Phase::ALL.into_iter().filter(|p| match p {
        Phase::Tls => c.tls.mode != TlsMode::None,
        Phase::Auth => c.auth.is_some(),
        _ => true,
    })
}

/// The result's `tls` key, in runs over TLS.
fn tls_summary(c: &Config, tally: &TlsTally) -> Option<TlsSummary> {
    let mode = match c.tls.mode {
        TlsMode::None => return None,
        TlsMode::Starttls => "starttls",
        TlsMode::Implicit => "implicit",
    };
    let named = |m: &BTreeMap<&'static str, u64>| {
        m.iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>()
    };
    Some(TlsSummary {
        mode: mode.to_string(),
        versions: named(&tally.versions),
        cipher_suites: named(&tally.cipher_suites),
        handshakes: tally.handshakes,
        resumed: tally.resumed,
    })
}

fn encode(h: &report::LatencyHistogram) -> anyhow::Result<String> {
    Ok(encode_histogram(h)?)
}

/// The result's `stages` key: each stage of the curve with its messages' figures.
fn stage_summaries(c: &Config, stats: &Stats) -> anyhow::Result<Vec<StageSummary>> {
    let Some(curve) = c.mode.rate_curve().filter(|_| !stats.stages.is_empty()) else {
        return Ok(Vec::new());
    };
    (0u32..)
        .zip(curve.segments().iter().zip(&stats.stages))
        .map(|(index, (seg, s))| {
            Ok(StageSummary {
                index,
                start_s: seg.start_s,
                end_s: seg.end_s,
                rate_from: seg.rate_from,
                rate_to: seg.rate_to,
                sent: s.counts.total,
                ok: s.counts.ok,
                failed: s.counts.failed,
                late: s.late,
                latency_ms: LatencySummary::from_histogram(&s.total),
                latency_corrected_ms: LatencySummary::from_histogram(&s.corrected),
                histograms: StageHistograms {
                    total: encode(&s.total)?,
                    corrected: encode(&s.corrected)?,
                },
            })
        })
        .collect()
}

/// The result's `per_source` key: every source address that opened a connection
/// (none without `--source-ips`).
fn per_source(stats: &Stats) -> Vec<SourceMetrics> {
    stats
        .sources
        .iter()
        .map(|(ip, c)| SourceMetrics {
            address: ip.to_string(),
            connections: c.connections,
            banners: c.banners,
            refused_421: c.refused_421,
            refused_other: c.refused_other,
            connect_failed: c.connect_failed,
            unanswered: c.unanswered,
        })
        .collect()
}

pub fn build(stats: &mut Stats, f: RunFacts<'_>) -> anyhow::Result<RunResult> {
    let c = f.config;
    // The figures cover the run after its warmup; the timeline covers it all.
    let warmup = stats.warmup().min(f.duration);
    let measured = f.duration - warmup;
    let secs = measured.as_secs_f64();
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let breakdown = |m: &BTreeMap<crate::client::ErrorKey, u64>| {
        m.iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>()
    };
    let counts = &stats.counts;
    let open_model = c.mode.rate_curve().is_some();
    let mut metrics = Metrics {
        total_messages: counts.total,
        successful_messages: counts.ok,
        failed_messages: counts.failed,
        connection_errors: counts.connection_errors,
        total_bytes_sent: stats.bytes_sent,
        duration_seconds: secs,
        messages_per_second: per_sec(counts.ok),
        latency_ms: LatencySummary::from_histogram(&stats.total),
        error_breakdown: breakdown(&counts.errors),
        start_time: format_timestamp(
            f.start + chrono::Duration::from_std(warmup).unwrap_or_default(),
        ),
        end_time: format_timestamp(
            f.start + chrono::Duration::from_std(f.duration).unwrap_or_default(),
        ),
        timeouts: counts.timeouts,
        success_rate: 0.0,
        late_sends: stats.late_sends,
        latency_corrected_ms: stats.corrected.as_ref().map(LatencySummary::from_histogram),
        phases_ms: phases_of(c)
            .map(|p| {
                let h = &stats.phases[p.index()];
                (p.to_string(), LatencySummary::from_histogram(h))
            })
            .collect(),
        replies: stats
            .replies
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
    };
    metrics.success_rate = metrics.compute_success_rate();

    let per_server: Vec<ServerMetrics> = c
        .servers
        .iter()
        .zip(&stats.servers)
        .map(|(addr, s)| ServerMetrics {
            address: addr.to_string(),
            total_messages: s.counts.total,
            successful_messages: s.counts.ok,
            failed_messages: s.counts.failed,
            connection_errors: s.counts.connection_errors,
            timeouts: s.counts.timeouts,
            messages_per_second: per_sec(s.counts.ok),
            latency_ms: LatencySummary::from_histogram(&s.total),
            error_breakdown: breakdown(&s.counts.errors),
        })
        .collect();

    let per_source = per_source(stats);

    let histograms = Histograms {
        total: encode(&stats.total)?,
        corrected: stats.corrected.as_ref().map(encode).transpose()?,
        phases: phases_of(c)
            .map(|p| Ok((p.to_string(), encode(&stats.phases[p.index()])?)))
            .collect::<anyhow::Result<_>>()?,
        per_server: c
            .servers
            .iter()
            .zip(&stats.servers)
            .map(|(addr, s)| Ok((addr.to_string(), encode(&s.total)?)))
            .collect::<anyhow::Result<_>>()?,
    };

    let cpus = cpus();
    let cpu_seconds = f
        .usage_after
        .cpu
        .saturating_sub(f.usage_before.cpu)
        .as_secs_f64();
    let run_secs = f.duration.as_secs_f64();
    let cpu_percent = if run_secs > 0.0 {
        cpu_seconds / run_secs / f64::from(cpus) * 100.0
    } else {
        0.0
    };
    let generator = GeneratorUsage {
        cpu_seconds,
        cpu_percent,
        max_rss_bytes: f.usage_after.max_rss_bytes,
    };
    let generator_saturated = cpu_percent > SATURATED_CPU_PERCENT
        || (open_model
            && stats.generator_late_sends as f64
                > SATURATED_LATE_SHARE * counts.total.max(1) as f64);

    let mut config = serde_json::to_value(c)?;
    if let Some(o) = config.as_object_mut() {
        o.insert("run_id".into(), f.run_id.into());
    }
    let (timeline, bucket) = stats.timeline(f.duration);
    let (concurrent_workers, target_rate) = match c.mode {
        Mode::Burst { workers, .. } => (Some(u64::from(workers)), None),
        Mode::Sustained { rate, .. } => (None, Some(rate)),
        // The rate varies: the `stages` key holds it; a capacity search's steps
        // are sustained runs, and its result takes the headline step's rate.
        Mode::Stages { .. } | Mode::Capacity { .. } => (None, None),
    };
    let stages = stage_summaries(c, stats)?;
    Ok(RunResult {
        schema: Some(SCHEMA_V1.to_string()),
        test_type: c.test_type.clone(),
        servers: c.servers_given.clone(),
        port: c.port,
        message_size: c.size.mean_bytes(),
        concurrent_workers,
        target_rate,
        metrics,
        generator_saturated,
        run: Some(RunInfo {
            name: c.test_type.clone(),
            interrupted: f.interrupted,
            config,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            git_sha: git_sha(),
            host: host_info(cpus),
            generator: Some(generator),
        }),
        per_server,
        per_source,
        timeline,
        timeline_bucket_s: Some(bucket.as_secs_f64()),
        histograms: Some(histograms),
        resources: f.resources,
        tls: tls_summary(c, &stats.tls),
        stages,
        warmup_s: (!warmup.is_zero()).then_some(warmup.as_secs_f64()),
        gates: None,
        capacity: None,
    })
}
