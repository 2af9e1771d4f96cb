//! The Stampede result-file model: one JSON document per load-generator run.
//!
//! This crate is the single definition of a result in the workspace. `loadgen`
//! builds and writes results with it; `analyze` reads, compares and merges them.
//! It is also the home of the result's named [`figures`] and of the [`gate`]
//! grammar (`p99<=25ms`) that `loadgen --require` and `analyze check` share.
//!
//! The layout keeps the fields that the seed project's PrixFixe generator wrote in
//! their names and places (`.metrics.messages_per_second`, `.metrics.latency_ms.p99`,
//! `.servers`), so existing jq scripts keep working; everything Stampede adds sits in
//! new keys beside them. Files without a `schema` key are read as PrixFixe files.

pub mod capacity;
mod error;
pub mod figures;
pub mod gate;
mod histogram;
mod io;
pub mod limits;
mod phase;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

pub use capacity::{CapacityStep, CapacitySummary};
pub use error::ReportError;
pub use gate::{Gate, GateError, GateOutcome, LatencyBasis};
pub use histogram::{
    LATENCY_HISTOGRAM_MAX_US, LATENCY_SIGFIG, LatencyHistogram, decode_histogram, encode_histogram,
    new_latency_histogram, record_latency,
};
pub use io::{load, load_str};
pub use phase::{PHASES, Phase};

/// The value of the `schema` key in every result Stampede writes.
pub const SCHEMA_V1: &str = "stampede.result.v1";

/// One run of the load generator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `stampede.result.v1`; absent in the seed generator's (PrixFixe) files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// `burst`, `sustained`, or a name given by the caller (`quick`, `heavy`, ...).
    pub test_type: String,
    /// Servers as given on the command line (`host` or `host:port`).
    pub servers: Vec<String>,
    /// Default SMTP port applied to servers given without one.
    pub port: u16,
    /// Bytes on the wire per message; for a mix, the weighted mean.
    pub message_size: u64,
    /// Concurrent sessions in burst mode; `null` in sustained mode.
    pub concurrent_workers: Option<u64>,
    /// Messages per second in sustained mode; `null` in burst mode.
    pub target_rate: Option<f64>,
    pub metrics: Metrics,
    /// True when the generator itself, not the server, limited the run.
    #[serde(default)]
    pub generator_saturated: bool,
    /// How the run was made; absent in PrixFixe files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    #[serde(default)]
    pub per_server: Vec<ServerMetrics>,
    /// `loadgen --source-ips`: the connections opened from each local address
    /// that opened any, and how the server answered them; absent otherwise and in
    /// older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_source: Vec<SourceMetrics>,
    /// One point per bucket of the run, in order.
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
    /// Width of the timeline's buckets in seconds: 1 for runs of ten seconds or
    /// more, less for shorter runs. Absent in older files, which meant 1; read it
    /// through [`RunResult::timeline_bucket_s`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_bucket_s: Option<f64>,
    /// Serialized histograms that make results exactly mergeable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histograms: Option<Histograms>,
    /// CPU and memory samples per server container, when they were monitored.
    #[serde(default)]
    pub resources: BTreeMap<String, Vec<ResourceSample>>,
    /// What the TLS handshakes negotiated, in runs over TLS; absent otherwise and
    /// in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSummary>,
    /// The gates the run was judged on (`loadgen --require`) and their outcomes;
    /// absent when none were given and in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<GateOutcome>>,
    /// Stages mode: one entry per `--stages` point, in order; absent otherwise
    /// and in older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSummary>,
    /// `--warmup`, seconds: messages due this early were sent (and are in the
    /// timeline) but are left out of every other figure. Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_s: Option<f64>,
    /// Capacity mode: the search's steps and its answer. The top-level figures
    /// are those of its headline step (the passing step at the highest rate, or
    /// the first step when none passed); absent otherwise and in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySummary>,
}

/// One stage of a stages run: the rate ramped linearly from `rate_from` to
/// `rate_to` between `start_s` and `end_s` (seconds from the start; equal for a
/// step), and what became of the messages due in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSummary {
    /// Position in `--stages`, from 0.
    pub index: u32,
    pub start_s: f64,
    pub end_s: f64,
    pub rate_from: f64,
    pub rate_to: f64,
    /// Messages due in the stage (outside the warmup) that were attempted.
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Started later than due plus the late tolerance.
    pub late: u64,
    pub latency_ms: LatencySummary,
    /// Completion minus due time (coordinated-omission corrected).
    pub latency_corrected_ms: LatencySummary,
    pub histograms: StageHistograms,
}

/// A stage's latency histograms, encoded as in [`Histograms`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageHistograms {
    pub total: String,
    pub corrected: String,
}

/// The TLS handshakes of a run: how many, what they negotiated, how many resumed
/// a session, so a reader sees what was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsSummary {
    /// `starttls` or `implicit`.
    pub mode: String,
    /// Handshakes per protocol version (`TLSv1.3`, `TLSv1.2`).
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// Handshakes per cipher suite, by its IANA name (`TLS13_AES_128_GCM_SHA256`).
    #[serde(default)]
    pub cipher_suites: BTreeMap<String, u64>,
    /// Completed handshakes.
    #[serde(default)]
    pub handshakes: u64,
    /// Of those, the ones that resumed an earlier session.
    #[serde(default)]
    pub resumed: u64,
}

impl TlsSummary {
    /// Resumed handshakes as a share of all, in percent; 0 when there were none.
    pub fn resumed_percent(&self) -> f64 {
        if self.handshakes == 0 {
            0.0
        } else {
            self.resumed as f64 * 100.0 / self.handshakes as f64
        }
    }

    /// Adds the counts of `other` (same mode) to these.
    pub fn add(&mut self, other: &TlsSummary) {
        self.handshakes += other.handshakes;
        self.resumed += other.resumed;
        for (k, v) in &other.versions {
            *self.versions.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.cipher_suites {
            *self.cipher_suites.entry(k.clone()).or_default() += v;
        }
    }
}

/// The headline figures of a run. The first block is PrixFixe's layout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub total_messages: u64,
    pub successful_messages: u64,
    pub failed_messages: u64,
    /// Connections refused, reset or dropped before a reply.
    pub connection_errors: u64,
    pub total_bytes_sent: u64,
    pub duration_seconds: f64,
    /// Successful messages per second of the run's duration.
    pub messages_per_second: f64,
    /// Latency of the whole transaction, milliseconds.
    pub latency_ms: LatencySummary,
    /// Failures by reply code (`"421"`) or `<class>:<phase>` (`"refused:connect"`,
    /// `"timeout:banner"`); older files have bare classes (`"timeout"`).
    pub error_breakdown: BTreeMap<String, u64>,
    /// RFC 3339 (`2026-11-22T12:00:00Z`); PrixFixe wrote naive local timestamps.
    pub start_time: String,
    pub end_time: String,

    /// Operations that hit the client's timeout.
    #[serde(default)]
    pub timeouts: u64,
    /// Successful / total, in percent.
    #[serde(default)]
    pub success_rate: f64,
    /// Sustained mode: sends that started later than their scheduled time.
    #[serde(default)]
    pub late_sends: u64,
    /// Sustained mode: latency measured from the scheduled send time (coordinated
    /// omission corrected, as wrk2 does).
    #[serde(default)]
    pub latency_corrected_ms: Option<LatencySummary>,
    /// Latency of each protocol phase, keyed by [`PHASES`].
    #[serde(default)]
    pub phases_ms: BTreeMap<String, LatencySummary>,
    /// Every final reply code seen, successes included.
    #[serde(default)]
    pub replies: BTreeMap<String, u64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
}

/// How a run was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub name: String,
    /// True when the run was ended early (Ctrl-C); the figures cover what ran.
    pub interrupted: bool,
    /// Every loadgen setting, as the generator saw them.
    pub config: serde_json::Value,
    pub tool_version: String,
    #[serde(default)]
    pub git_sha: Option<String>,
    pub host: HostInfo,
    /// The generator's own resource use during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorUsage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub cpus: u32,
    pub os: String,
}

/// What the generator itself consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorUsage {
    /// User + system CPU seconds of the generator process.
    pub cpu_seconds: f64,
    /// CPU seconds per wall second per core, in percent of all cores.
    pub cpu_percent: f64,
    /// Peak resident set size of the generator process.
    pub max_rss_bytes: u64,
}

/// The figures of one server of a round-robin run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerMetrics {
    /// `host:port`.
    pub address: String,
    pub total_messages: u64,
    pub successful_messages: u64,
    #[serde(default)]
    pub failed_messages: u64,
    #[serde(default)]
    pub connection_errors: u64,
    #[serde(default)]
    pub timeouts: u64,
    #[serde(default)]
    pub messages_per_second: f64,
    pub latency_ms: LatencySummary,
    #[serde(default)]
    pub error_breakdown: BTreeMap<String, u64>,
}

/// The connections of one source address (`loadgen --source-ips`). Every
/// connection attempted is counted once in `connections` and in at most one of
/// the outcomes: a 220 banner, a 421 refusal, another refusal (another banner
/// code, or a close without any), a failed connect, or `unanswered` (no banner
/// before the timeout, the drain time or a failed implicit-TLS handshake).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMetrics {
    /// The local IP address the connections were bound to.
    pub address: String,
    pub connections: u64,
    pub banners: u64,
    pub refused_421: u64,
    pub refused_other: u64,
    pub connect_failed: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unanswered: u64,
}

impl SourceMetrics {
    /// Adds `other`'s counts (the same address seen by another generator).
    pub fn add(&mut self, other: &SourceMetrics) {
        self.connections += other.connections;
        self.banners += other.banners;
        self.refused_421 += other.refused_421;
        self.refused_other += other.refused_other;
        self.connect_failed += other.connect_failed;
        self.unanswered += other.unanswered;
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One bucket of the run's timeline. `t_s` numbers the buckets from the run's
/// start (1 = the first); the bucket ends `t_s × timeline_bucket_s` seconds in, so
/// with one-second buckets it is the second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t_s: u64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// HdrHistograms of latency in microseconds, each V2 + deflate, base64.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    pub total: String,
    #[serde(default)]
    pub corrected: Option<String>,
    #[serde(default)]
    pub phases: BTreeMap<String, String>,
    /// Total latency per server address.
    #[serde(default)]
    pub per_server: BTreeMap<String, String>,
}

/// One resource sample of a server container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSample {
    /// Seconds since the run started.
    pub t_s: f64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

impl RunResult {
    /// The width of the timeline's buckets in seconds (1 when the file does not say).
    pub fn timeline_bucket_s(&self) -> f64 {
        self.timeline_bucket_s
            .filter(|w| *w > 0.0 && w.is_finite())
            .unwrap_or(1.0)
    }

    /// True for the seed generator's (PrixFixe) files, which have no `schema` key.
    pub fn is_legacy(&self) -> bool {
        self.schema.is_none()
    }

    /// True when the run was ended early.
    pub fn interrupted(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.interrupted)
    }

    /// The run's start, parsed from `metrics.start_time`.
    pub fn start_time(&self) -> Option<DateTime<Utc>> {
        parse_timestamp(&self.metrics.start_time)
    }

    /// The run's end, parsed from `metrics.end_time`.
    pub fn end_time(&self) -> Option<DateTime<Utc>> {
        parse_timestamp(&self.metrics.end_time)
    }

    /// Writes the result as pretty JSON, atomically: a temporary file in the same
    /// directory is written, synced and renamed over `path`, so a reader never sees
    /// half a result and a crash never leaves one behind.
    pub fn save(&self, path: &std::path::Path) -> Result<(), ReportError> {
        io::save_atomic(self, path)
    }
}

impl Metrics {
    /// Successful / total in percent; 0 when nothing was sent.
    pub fn compute_success_rate(&self) -> f64 {
        if self.total_messages == 0 {
            0.0
        } else {
            self.successful_messages as f64 * 100.0 / self.total_messages as f64
        }
    }
}

impl LatencySummary {
    /// Percentiles of a latency histogram recorded in microseconds, in milliseconds.
    pub fn from_histogram(h: &LatencyHistogram) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            avg: h.mean() / 1000.0,
            min: ms(h.min()),
            max: ms(h.max()),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
        }
    }
}

/// Parses a result timestamp: RFC 3339 (what Stampede writes) or the naive
/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` that PrixFixe wrote, taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// Formats a timestamp the way Stampede writes it (RFC 3339, UTC, milliseconds).
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests;
