//! Resource sampling of the server containers during a run.
//!
//! A throughput figure means little without knowing what was busy: when the five
//! server containers sit at 30% CPU while the generator is pegged, the generator was
//! the limit. [`ContainerMonitor`] asks the Docker Engine API (through bollard) for
//! each named container's CPU and memory once per interval while the run goes on,
//! and hands back one series per container for the result's `resources` section.
//!
//! The figures are computed the way `docker stats` computes them, so the numbers in a
//! result and on the `docker stats` screen agree:
//! - CPU% = container CPU time delta / host CPU time delta × online CPUs × 100, with the
//!   deltas taken between two consecutive samples of the series;
//! - memory = usage minus the page cache that the kernel can drop
//!   (`total_inactive_file` on cgroup v1, `inactive_file` on cgroup v2).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptionsBuilder;
use futures_util::StreamExt;
use report::ResourceSample;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long connecting to the engine and finding the containers may take before the
/// monitor gives up (a hung socket must not hold up the load run).
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Samples CPU% and memory of named Docker containers once per `interval` until finished.
pub struct ContainerMonitor {
    /// Set to `true` by [`ContainerMonitor::finish`]; every sampling task watches it.
    stop: watch::Sender<bool>,
    /// One sampling task per container, in the order the names were given.
    tasks: Vec<(String, JoinHandle<Vec<ResourceSample>>)>,
}

impl ContainerMonitor {
    /// Connects to the local Docker engine (unix socket) and starts one sampling task per container.
    ///
    /// Fails when no engine answers or when a named container does not exist, so a
    /// typo in `--monitor-containers` is reported before the run rather than showing
    /// up as an empty chart after it.
    pub async fn start(names: Vec<String>, interval: Duration) -> anyhow::Result<ContainerMonitor> {
        if interval.is_zero() {
            bail!("the container sampling interval must be longer than zero");
        }
        let docker = tokio::time::timeout(ENGINE_TIMEOUT, connect())
            .await
            .context("the Docker engine did not answer within 10 s")??;
        for name in &names {
            tokio::time::timeout(ENGINE_TIMEOUT, docker.inspect_container(name, None))
                .await
                .with_context(|| {
                    format!("the Docker engine did not answer about container {name:?}")
                })?
                .with_context(|| format!("cannot monitor container {name:?}"))?;
        }

        let started = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let tasks = names
            .into_iter()
            .map(|name| {
                let task = tokio::spawn(sample_container(
                    docker.clone(),
                    name.clone(),
                    interval,
                    started,
                    stopped.clone(),
                ));
                (name, task)
            })
            .collect();
        Ok(ContainerMonitor { stop, tasks })
    }

    /// Stops sampling and returns samples per container name, t_s = seconds since start.
    pub async fn finish(self) -> BTreeMap<String, Vec<ResourceSample>> {
        // Send fails only when every task has already ended (all containers gone).
        let _ = self.stop.send(true);
        let mut series = BTreeMap::new();
        for (name, task) in self.tasks {
            // A panicked sampling task loses its own series, never the run's result.
            let samples = task.await.unwrap_or_default();
            series.insert(name, samples);
        }
        series
    }
}

/// Connects to the engine named by `DOCKER_HOST`, or the local unix socket, and
/// agrees on an API version: bollard speaks a newer API than many installed engines
/// (Docker 20.10 stops at 1.41) and an engine refuses requests above its own version.
async fn connect() -> anyhow::Result<Docker> {
    let docker = Docker::connect_with_local_defaults()
        .context("cannot connect to the Docker engine socket")?;
    docker.negotiate_version().await.context(
        "the Docker engine does not answer (is it running, and may this user use its socket?)",
    )
}

/// How long a series that is still empty when the run ends waits for one more
/// document: a run shorter than the engine's 1 s tick (a quick test) would otherwise
/// carry no sample at all. Longer than two ticks, since the first document only
/// primes the CPU counters.
const LAST_SAMPLE_WAIT: Duration = Duration::from_millis(2500);

/// The sampling loop of one container. The engine pushes a stats document about once
/// a second on a long-lived stream (Docker collects stats for all containers on one
/// 1 s tick; even a one-shot request waits for that tick, so polling would only
/// halve the rate). The first document primes the CPU counters; after that one
/// sample is kept per `interval`, with CPU% taken over the time since the previous
/// kept sample. Ends when `stop` turns true (after one last sample if there is none
/// yet) or the container goes away.
async fn sample_container(
    docker: Docker,
    name: String,
    interval: Duration,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<ResourceSample> {
    let mut samples = Vec::new();
    let mut schedule = SampleSchedule::new(started, interval);
    let mut previous: Option<CpuReading> = None;
    // Set when the run has ended with the series still empty: keep the next
    // document whatever the schedule says, and give up at this instant.
    let mut last_call: Option<Instant> = None;
    'reconnect: loop {
        let options = StatsOptionsBuilder::default().stream(true).build();
        let mut stream = docker.stats(&name, Some(options));
        loop {
            let next = tokio::select! {
                biased;
                _ = run_over(&mut stop, last_call) => {
                    if last_call.is_some() || !samples.is_empty() {
                        break 'reconnect;
                    }
                    last_call = Some(Instant::now() + LAST_SAMPLE_WAIT);
                    continue;
                }
                next = stream.next() => next,
            };
            let stats = match next {
                Some(Ok(stats)) => stats,
                // The stream ends when the container stops or is removed.
                None => break 'reconnect,
                Some(Err(error)) if is_gone(&error) => break 'reconnect,
                // Anything else (an engine hiccup) loses a sample, not the series:
                // wait one interval and open a new stream.
                Some(Err(_)) => {
                    tokio::select! {
                        biased;
                        _ = run_over(&mut stop, last_call) => break 'reconnect,
                        _ = tokio::time::sleep(interval) => continue 'reconnect,
                    }
                }
            };
            let reading = CpuReading::from_stats(&stats);
            let Some(before) = previous else {
                previous = reading;
                continue;
            };
            let now = Instant::now();
            if !schedule.is_due(now) && last_call.is_none() {
                continue;
            }
            let cpu_percent = reading.map_or(0.0, |reading| cpu_percent(before, reading));
            if reading.is_some() {
                previous = reading;
            }
            samples.push(ResourceSample {
                t_s: now.duration_since(started).as_secs_f64(),
                cpu_percent,
                memory_bytes: memory_bytes(&stats),
            });
            if last_call.is_some() {
                break 'reconnect;
            }
        }
    }
    samples
}

/// Resolves when sampling is to end: `stop` turned true (or its sender is gone), or,
/// once the last call for an empty series has begun, at its deadline.
async fn run_over(stop: &mut watch::Receiver<bool>, last_call: Option<Instant>) {
    match last_call {
        None => {
            let _ = stop.changed().await;
        }
        Some(deadline) => tokio::time::sleep_until(deadline).await,
    }
}

/// Decides which of the engine's (roughly 1 s apart) documents become samples, so a
/// series has one sample per `interval` whatever the engine's cadence.
struct SampleSchedule {
    next_due: Instant,
    interval: Duration,
    /// How early a document may arrive and still count for its slot: the engine's
    /// tick jitters by a few milliseconds around whole seconds.
    tolerance: Duration,
}

impl SampleSchedule {
    fn new(started: Instant, interval: Duration) -> SampleSchedule {
        SampleSchedule {
            next_due: started + interval,
            interval,
            tolerance: (interval / 4).min(Duration::from_millis(250)),
        }
    }

    /// True when a document arriving at `now` is to be kept; moves to the next slot.
    fn is_due(&mut self, now: Instant) -> bool {
        if now + self.tolerance < self.next_due {
            return false;
        }
        while self.next_due <= now + self.tolerance {
            self.next_due += self.interval;
        }
        true
    }
}

/// True when the container no longer exists, so there is nothing left to sample.
fn is_gone(error: &DockerError) -> bool {
    matches!(
        error,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The cumulative CPU counters of one stats document.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuReading {
    /// CPU time used by the container, nanoseconds, all CPUs together.
    container_ns: u64,
    /// CPU time of the whole host, nanoseconds, all CPUs together.
    system_ns: u64,
    /// CPUs the container may run on (the scale of the percentage: 2 CPUs busy = 200%).
    online_cpus: u32,
}

impl CpuReading {
    /// `None` when the engine left out the counters (a stopped container, or an
    /// engine that does not report the host's CPU time).
    fn from_stats(stats: &ContainerStatsResponse) -> Option<CpuReading> {
        let cpu = stats.cpu_stats.as_ref()?;
        let usage = cpu.cpu_usage.as_ref()?;
        let online_cpus = match cpu.online_cpus {
            Some(n) if n > 0 => n,
            // Engines before API 1.27 only list per-CPU usage; docker stats counts it.
            _ => usage.percpu_usage.as_ref().map_or(0, |v| v.len() as u32),
        };
        Some(CpuReading {
            container_ns: usage.total_usage?,
            system_ns: cpu.system_cpu_usage?,
            online_cpus,
        })
    }
}

/// CPU% between two readings, as `docker stats` computes it: the container's share of
/// the host's CPU time, scaled to the number of CPUs (100% = one CPU fully busy).
/// Zero when either counter did not advance (or went backwards after a restart).
fn cpu_percent(before: CpuReading, now: CpuReading) -> f64 {
    let container_delta = now.container_ns.saturating_sub(before.container_ns) as f64;
    let system_delta = now.system_ns.saturating_sub(before.system_ns) as f64;
    if container_delta <= 0.0 || system_delta <= 0.0 {
        return 0.0;
    }
    container_delta / system_delta * f64::from(now.online_cpus) * 100.0
}

/// Memory in use, without the page cache the kernel can drop, as `docker stats`
/// shows it.
fn memory_bytes(stats: &ContainerStatsResponse) -> u64 {
    let Some(memory) = stats.memory_stats.as_ref() else {
        return 0;
    };
    let empty = HashMap::new();
    memory_without_cache(
        memory.usage.unwrap_or(0),
        memory.stats.as_ref().unwrap_or(&empty),
    )
}

/// `usage` minus inactive file pages: `total_inactive_file` on cgroup v1,
/// `inactive_file` on cgroup v2 (the docker CLI's `calculateMemUsageUnixNoCache`).
fn memory_without_cache(usage: u64, stats: &HashMap<String, u64>) -> u64 {
    let cache = stats
        .get("total_inactive_file")
        .or_else(|| stats.get("inactive_file"))
        .copied()
        .unwrap_or(0);
    if cache < usage { usage - cache } else { usage }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(container_ns: u64, system_ns: u64, online_cpus: u32) -> CpuReading {
        CpuReading {
            container_ns,
            system_ns,
            online_cpus,
        }
    }

    #[test]
    fn cpu_percent_is_the_share_of_host_time_scaled_to_online_cpus() {
        // Host: 2 CPUs for 1 s = 2e9 ns; the container used 0.5 s of CPU = one CPU at 50%.
        let before = reading(1_000_000_000, 10_000_000_000, 2);
        let now = reading(1_500_000_000, 12_000_000_000, 2);
        assert!((cpu_percent(before, now) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_percent_of_two_busy_cpus_is_two_hundred() {
        let before = reading(0, 0, 2);
        let now = reading(2_000_000_000, 2_000_000_000, 2);
        assert!((cpu_percent(before, now) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_percent_is_zero_when_counters_do_not_advance_or_reset() {
        let before = reading(5_000, 9_000, 4);
        assert_eq!(cpu_percent(before, reading(5_000, 10_000, 4)), 0.0);
        assert_eq!(cpu_percent(before, reading(6_000, 9_000, 4)), 0.0);
        // A restarted container starts its counter again from zero.
        assert_eq!(cpu_percent(before, reading(100, 20_000, 4)), 0.0);
    }

    #[test]
    fn cpu_reading_falls_back_to_per_cpu_list_when_online_cpus_is_missing() {
        let stats: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {
                "cpu_usage": {"total_usage": 300, "percpu_usage": [100, 100, 100]},
                "system_cpu_usage": 9000
            }
        }))
        .unwrap();
        assert_eq!(CpuReading::from_stats(&stats), Some(reading(300, 9000, 3)));
    }

    #[test]
    fn cpu_reading_is_absent_without_host_cpu_time() {
        let stats: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 300}, "online_cpus": 2}
        }))
        .unwrap();
        assert_eq!(CpuReading::from_stats(&stats), None);
    }

    #[test]
    fn schedule_keeps_one_document_per_interval_despite_jitter() {
        let started = Instant::now();
        let ms = Duration::from_millis;
        let mut schedule = SampleSchedule::new(started, Duration::from_secs(2));
        let kept: Vec<u64> = [990, 1990, 3010, 3990, 5000, 5990]
            .into_iter()
            .filter(|&t| schedule.is_due(started + ms(t)))
            .collect();
        assert_eq!(kept, vec![1990, 3990, 5990]);
    }

    #[test]
    fn schedule_skips_slots_missed_during_a_gap() {
        let started = Instant::now();
        let mut schedule = SampleSchedule::new(started, Duration::from_secs(1));
        assert!(schedule.is_due(started + Duration::from_millis(5_100)));
        assert!(!schedule.is_due(started + Duration::from_millis(5_500)));
        assert!(schedule.is_due(started + Duration::from_millis(6_000)));
    }

    #[test]
    fn memory_leaves_out_inactive_file_cache_on_cgroup_v1_and_v2() {
        let v1 = HashMap::from([("total_inactive_file".to_string(), 300)]);
        let v2 = HashMap::from([("inactive_file".to_string(), 200)]);
        assert_eq!(memory_without_cache(1000, &v1), 700);
        assert_eq!(memory_without_cache(1000, &v2), 800);
        assert_eq!(memory_without_cache(1000, &HashMap::new()), 1000);
        // A cache figure above usage (racy counters) is ignored rather than wrapping.
        assert_eq!(memory_without_cache(100, &v1), 100);
    }

    #[test]
    fn memory_is_read_from_an_engine_stats_document() {
        let stats: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "memory_stats": {"usage": 10_485_760, "stats": {"total_inactive_file": 485_760}}
        }))
        .unwrap();
        assert_eq!(memory_bytes(&stats), 10_000_000);
    }

    /// The image `scripts/stress-test.sh build` makes from the host's binaries.
    const LOCAL_IMAGE: &str = "stampede:local";

    /// Samples a container this test starts itself (the server from the local image,
    /// with no network), then removes it by id. Ignored by default because it needs a
    /// Docker engine and the local image, so a machine without them shows the test as
    /// "ignored" instead of a silent pass; run it with `cargo test -p loadgen --
    /// --ignored monitor_samples`, and then a missing engine or image is a failure.
    #[tokio::test]
    #[ignore = "needs a Docker engine and the stampede:local image (scripts/stress-test.sh build)"]
    async fn monitor_samples_a_container_the_test_started() {
        let docker = tokio::time::timeout(Duration::from_secs(10), connect())
            .await
            .expect("the Docker engine answers within 10 s")
            .expect("a Docker engine for this opted-in test");
        docker.inspect_image(LOCAL_IMAGE).await.unwrap_or_else(|e| {
            panic!("image {LOCAL_IMAGE} missing ({e}); build it: scripts/stress-test.sh build")
        });
        let unknown = ContainerMonitor::start(
            vec!["stampede-no-such-container".into()],
            Duration::from_millis(200),
        )
        .await;
        let error = format!(
            "{:#}",
            unknown.err().expect("an unknown container must fail")
        );
        assert!(error.contains("stampede-no-such-container"), "{error}");

        let id = start_server_container(&docker).await;
        // The body runs as its own task so that a failed assertion still reaches the
        // cleanup below; its panic is raised again once the container is gone.
        let sampled = tokio::spawn(sample_for_a_while(id.clone())).await;
        let removed = docker
            .remove_container(
                &id,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .build(),
                ),
            )
            .await;
        if let Err(panic) = sampled {
            std::panic::resume_unwind(panic.into_panic());
        }
        removed.expect("the test's container is removed");
    }

    /// Creates and starts `smtp-server` from the local image without a network
    /// (nothing to reach it: only its CPU and memory matter); returns its id.
    async fn start_server_container(docker: &Docker) -> String {
        let body = bollard::models::ContainerCreateBody {
            image: Some(LOCAL_IMAGE.into()),
            cmd: Some(vec!["--admin-port".into(), "0".into()]),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = docker
            .create_container(None, body)
            .await
            .expect("create a container from the local image")
            .id;
        if let Err(e) = docker.start_container(&id, None).await {
            let _ = docker.remove_container(&id, None).await;
            panic!("cannot start the test container: {e}");
        }
        id
    }

    /// Monitors the container for eight one-second intervals. The engine sends a
    /// document about once a second and the first only primes the CPU counters, so
    /// two samples leave the engine four times its usual time even on a loaded host.
    async fn sample_for_a_while(id: String) {
        let interval = Duration::from_secs(1);
        let started = Instant::now();
        let monitor = ContainerMonitor::start(vec![id.clone()], interval)
            .await
            .unwrap();
        tokio::time::sleep(interval * 8).await;
        let series = monitor.finish().await;
        let elapsed = started.elapsed().as_secs_f64();
        let samples = &series[&id];
        assert!(samples.len() >= 2, "{samples:?}");
        assert!(
            samples.windows(2).all(|w| w[0].t_s < w[1].t_s),
            "{samples:?}"
        );
        assert!(
            samples.iter().all(|s| s.t_s > 0.5 && s.t_s <= elapsed),
            "{samples:?} within {elapsed} s"
        );
        assert!(
            samples
                .iter()
                .all(|s| s.memory_bytes > 0 && s.cpu_percent >= 0.0),
            "{samples:?}"
        );
    }
}
