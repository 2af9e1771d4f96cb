//! Result fixtures made with the report crate's own types, from known latencies,
//! and a runner for the `analyze` binary.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use report::{
    Histograms, HostInfo, LatencyHistogram, LatencySummary, Metrics, ResourceSample, RunInfo,
    RunResult, SCHEMA_V1, ServerMetrics, TimelinePoint, encode_histogram, new_latency_histogram,
    parse_timestamp, record_latency,
};

/// One message of a synthetic run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Total latency in microseconds.
    pub us: u64,
    /// Index into the builder's servers.
    pub server: usize,
    /// Seconds after the run's start when the message completed.
    pub at_s: f64,
    /// False: the server answered 421.
    pub ok: bool,
}

/// Builds a `RunResult` whose every figure is computed from `samples`.
#[derive(Debug, Clone)]
pub struct Builder {
    pub samples: Vec<Sample>,
    pub servers: Vec<String>,
    pub test_type: String,
    pub start: String,
    pub duration_s: f64,
    pub workers: Option<u64>,
    pub rate: Option<f64>,
    pub size: u64,
    /// When set, a corrected histogram with this much extra latency per message.
    pub corrected_extra_us: Option<u64>,
    pub resources: bool,
    pub host: String,
    /// The timeline's bucket width in seconds; `None` writes no width (1 s).
    pub bucket_s: Option<f64>,
}

/// `n` latencies spread evenly between `lo_us` and `hi_us`.
pub fn spread(n: usize, lo_us: u64, hi_us: u64) -> Vec<u64> {
    (0..n)
        .map(|i| lo_us + (hi_us - lo_us) * i as u64 / (n.max(2) - 1) as u64)
        .collect()
}

impl Builder {
    /// A burst run over two servers, all messages successful, spread evenly over
    /// `duration_s` seconds and round-robin over the servers.
    pub fn burst(latencies_us: &[u64], duration_s: f64) -> Builder {
        let n = latencies_us.len();
        let samples = latencies_us
            .iter()
            .enumerate()
            .map(|(i, &us)| Sample {
                us,
                server: i % 2,
                at_s: duration_s * i as f64 / n as f64,
                ok: true,
            })
            .collect();
        Builder {
            samples,
            servers: vec!["127.0.0.1:2525".into(), "127.0.0.1:2526".into()],
            test_type: "burst".into(),
            start: "2026-11-22T12:00:00.000Z".into(),
            duration_s,
            workers: Some(10),
            rate: None,
            size: 10_240,
            corrected_extra_us: None,
            resources: false,
            host: "gen-1".into(),
            bucket_s: None,
        }
    }

    pub fn start(mut self, start: &str) -> Builder {
        self.start = start.into();
        self
    }

    /// Marks the last `n` messages as failed with 421.
    pub fn failing_last(mut self, n: usize) -> Builder {
        let len = self.samples.len();
        for s in &mut self.samples[len - n..] {
            s.ok = false;
        }
        self
    }

    pub fn build(&self) -> RunResult {
        let start = parse_timestamp(&self.start).expect("builder start is a timestamp");
        let end = start + chrono::Duration::microseconds((self.duration_s * 1e6) as i64);

        let mut total = new_latency_histogram();
        let mut corrected = new_latency_histogram();
        let mut connect = new_latency_histogram();
        let mut eod = new_latency_histogram();
        let mut per_server: Vec<(ServerMetrics, LatencyHistogram)> = self
            .servers
            .iter()
            .map(|a| {
                (
                    ServerMetrics {
                        address: a.clone(),
                        total_messages: 0,
                        successful_messages: 0,
                        failed_messages: 0,
                        connection_errors: 0,
                        timeouts: 0,
                        messages_per_second: 0.0,
                        latency_ms: LatencySummary::default(),
                        error_breakdown: BTreeMap::new(),
                    },
                    new_latency_histogram(),
                )
            })
            .collect();
        let mut seconds: BTreeMap<u64, (u64, u64, LatencyHistogram)> = BTreeMap::new();
        let (mut ok, mut failed) = (0u64, 0u64);
        for s in &self.samples {
            record_latency(&mut total, s.us);
            record_latency(&mut corrected, s.us + self.corrected_extra_us.unwrap_or(0));
            record_latency(&mut connect, s.us / 10);
            record_latency(&mut eod, s.us / 2);
            let (m, h) = &mut per_server[s.server];
            record_latency(h, s.us);
            m.total_messages += 1;
            let second = seconds
                .entry((s.at_s / self.bucket_s.unwrap_or(1.0)).floor() as u64 + 1)
                .or_insert_with(|| (0, 0, new_latency_histogram()));
            record_latency(&mut second.2, s.us);
            if s.ok {
                ok += 1;
                m.successful_messages += 1;
                second.0 += 1;
            } else {
                failed += 1;
                m.failed_messages += 1;
                *m.error_breakdown.entry("421".into()).or_default() += 1;
                second.1 += 1;
            }
        }
        let n = self.samples.len() as u64;
        let per_second = |k: u64| k as f64 / self.duration_s;
        let mut replies = BTreeMap::from([("250".to_string(), ok)]);
        let mut error_breakdown = BTreeMap::new();
        if failed > 0 {
            replies.insert("421".into(), failed);
            error_breakdown.insert("421".to_string(), failed);
        }
        let histograms = Histograms {
            total: encode_histogram(&total).unwrap(),
            corrected: self
                .corrected_extra_us
                .map(|_| encode_histogram(&corrected).unwrap()),
            phases: BTreeMap::from([
                ("connect".to_string(), encode_histogram(&connect).unwrap()),
                ("eod".to_string(), encode_histogram(&eod).unwrap()),
            ]),
            per_server: per_server
                .iter()
                .map(|(m, h)| (m.address.clone(), encode_histogram(h).unwrap()))
                .collect(),
        };
        let per_server = per_server
            .into_iter()
            .map(|(mut m, h)| {
                m.latency_ms = LatencySummary::from_histogram(&h);
                m.messages_per_second = per_second(m.successful_messages);
                m
            })
            .collect();
        let timeline = seconds
            .into_iter()
            .map(|(t_s, (ok, failed, h))| TimelinePoint {
                t_s,
                sent: ok + failed,
                ok,
                failed,
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            })
            .collect();
        let resources = if self.resources {
            self.servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let samples = (0..self.duration_s as u64)
                        .map(|t| ResourceSample {
                            t_s: t as f64 + 0.5,
                            cpu_percent: 10.0 * (i + 1) as f64 + t as f64,
                            memory_bytes: (20 + t) * 1024 * 1024,
                        })
                        .collect();
                    (s.clone(), samples)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        RunResult {
            schema: Some(SCHEMA_V1.into()),
            test_type: self.test_type.clone(),
            servers: self.servers.clone(),
            port: 2525,
            message_size: self.size,
            concurrent_workers: self.workers,
            target_rate: self.rate,
            metrics: Metrics {
                total_messages: n,
                successful_messages: ok,
                failed_messages: failed,
                connection_errors: 0,
                total_bytes_sent: n * self.size,
                duration_seconds: self.duration_s,
                messages_per_second: per_second(ok),
                latency_ms: LatencySummary::from_histogram(&total),
                error_breakdown,
                start_time: report::format_timestamp(start),
                end_time: report::format_timestamp(end),
                timeouts: 0,
                success_rate: if n == 0 {
                    0.0
                } else {
                    ok as f64 * 100.0 / n as f64
                },
                late_sends: 0,
                latency_corrected_ms: self
                    .corrected_extra_us
                    .map(|_| LatencySummary::from_histogram(&corrected)),
                phases_ms: BTreeMap::from([
                    (
                        "connect".to_string(),
                        LatencySummary::from_histogram(&connect),
                    ),
                    ("eod".to_string(), LatencySummary::from_histogram(&eod)),
                ]),
                replies,
            },
            generator_saturated: false,
            run: Some(RunInfo {
                name: self.test_type.clone(),
                interrupted: false,
                config: serde_json::json!({"workers": self.workers, "rate": self.rate}),
                tool_version: "0.1.0".into(),
                git_sha: None,
                host: HostInfo {
                    hostname: self.host.clone(),
                    cpus: 2,
                    os: "linux".into(),
                },
                generator: None,
            }),
            per_server,
            per_source: Vec::new(),
            timeline,
            timeline_bucket_s: self.bucket_s,
            histograms: Some(histograms),
            resources,
            tls: None,
            stages: Vec::new(),
            warmup_s: None,
            gates: None,
            capacity: None,
        }
    }

    /// Builds and saves the result as `dir/file`.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        self.build().save(&path).unwrap();
        path
    }
}

/// The PrixFixe files kept by the report crate.
pub fn prixfixe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../report/tests/fixtures/prixfixe")
        .join(name)
}

/// What a run of the binary printed and how it ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `analyze` with `args`, in `cwd` when given.
pub fn analyze_in(cwd: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_analyze"));
    cmd.args(args).env_remove("STAMPEDE_RESULTS_DIR");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out: Output = cmd.output().expect("analyze runs");
    let run = Run {
        code: out.status.code().expect("analyze exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "analyze panicked: {}",
        run.stderr
    );
    run
}

pub fn analyze(args: &[&str]) -> Run {
    analyze_in(None, args)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The row of a table whose first cell is `name`, as its cells.
pub fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| {
            l.split(['│', '┆'])
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"))
}
