//! Stampede's SMTP load generator as a library: [`run`] drives the servers of a
//! [`Config`] and returns the [`RunResult`]; the `loadgen` binary is a thin wrapper
//! (flags, Ctrl-C, writing the file, the summary).
//!
//! Generation ([`schedule`], [`client`], [`message`], [`worker`]), measurement
//! ([`stats`]) and presentation ([`progress`], [`result`]) are separate modules:
//! the printer never measures and the client never formats.

pub mod cli;
pub mod client;
pub mod config;
mod containers;
pub mod message;
pub mod progress;
pub mod result;
pub mod schedule;
pub mod stats;
pub mod worker;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use report::RunResult;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Mode};

use crate::client::{Envelope, PhaseTimings, Session, SessionSettings};
use crate::message::MessageFactory;
use crate::result::{ProcessUsage, RunFacts};
use crate::schedule::{Dispatcher, Plan, Timetable, workers_for};
use crate::stats::Stats;
use crate::worker::RunShared;

/// Longest the check before the run waits for each server's banner.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often server containers are sampled with `--monitor-containers`.
const CONTAINER_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the load test `config` describes. Cancelling `interrupt` (Ctrl-C) stops
/// taking new messages, gives the ones in flight up to the drain timeout, and
/// returns a complete result marked interrupted.
///
/// Errors are for a run that cannot start (an unknown host, a server that does not
/// answer, no Docker engine with `--monitor-containers`); what goes wrong during a
/// run is counted in the result instead.
pub async fn run(config: Config, interrupt: CancellationToken) -> anyhow::Result<RunResult> {
    let addrs = resolve(&config).await?;
    if config.preflight {
        for (addr, name) in addrs.iter().zip(&config.servers) {
            preflight(*addr, &config.helo).await.with_context(|| {
                if name.to_string() == addr.to_string() {
                    format!("server {name} is not usable")
                } else {
                    format!("server {name} ({addr}) is not usable")
                }
            })?;
        }
    }
    let monitor = if config.monitor_containers.is_empty() {
        None
    } else {
        Some(
            containers::ContainerMonitor::start(
                config.monitor_containers.clone(),
                CONTAINER_SAMPLE_INTERVAL,
            )
            .await
            .context("--monitor-containers")?,
        )
    };

    let run_id = format!(
        "{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        rand::random::<u32>()
    );
    let factory = MessageFactory::new(&config, &run_id).context("building the message template")?;
    let settings = SessionSettings {
        helo: config.helo.clone(),
        from: config.from.clone(),
        recipients: config.recipients.clone(),
        timeout: config.timeout,
        pipelining: config.pipelining,
    };
    let envelopes = factory
        .bodies()
        .iter()
        .map(|b| Envelope::new(&settings, Some(b.size)))
        .collect();

    let usage_before = ProcessUsage::now();
    let start_wall = chrono::Utc::now();
    let origin = Instant::now();
    let servers = config.servers.len();
    let (total, timetable, window) = match config.mode {
        Mode::Burst { messages, .. } => (messages, None, None),
        Mode::Sustained { rate, duration, .. } => (
            (rate * duration).round() as u64,
            Some(Timetable {
                start: origin,
                rate,
            }),
            Some(Duration::from_secs_f64(duration)),
        ),
    };
    let pools: Vec<u32> = (0..servers)
        .map(|s| workers_for(s, servers, config.mode.workers()))
        .collect();
    let (dispatcher, gates) = match timetable {
        Some(tt) => {
            let (d, g) = Dispatcher::spawn(tt, total, pools.clone(), config.late_tolerance)
                .context("starting the dispatcher thread")?;
            (Some(d), Some(g))
        }
        None => (None, None),
    };
    let shared = Arc::new(RunShared {
        plan: Plan::new(total, servers, timetable),
        addrs,
        settings,
        factory,
        envelopes,
        msgs_per_conn: config.msgs_per_conn,
        late_tolerance: config.late_tolerance,
        stats: Mutex::new(Stats::new(origin, servers, timetable.is_some())),
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        gates,
    });

    let mut set = JoinSet::new();
    let mut seed = 0u64;
    for (s, &pool) in pools.iter().enumerate() {
        for _ in 0..pool {
            seed += 1;
            set.spawn(worker::run_worker(Arc::clone(&shared), s, seed));
        }
    }
    let progress_done = CancellationToken::new();
    let progress = config
        .progress
        .then(|| progress::spawn(Arc::clone(&shared), progress_done.clone()));

    // Sustained runs end on time: whatever is still in flight at the end of the
    // window plus the drain timeout is aborted and counted.
    let mut abort_at = window.map(|w| origin + w + config.drain_timeout);
    let mut interrupted_at = None;
    loop {
        let abort_sleep = async {
            match abort_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(_) => {}
            },
            _ = interrupt.cancelled(), if interrupted_at.is_none() => {
                let now = Instant::now();
                interrupted_at = Some(now);
                shared.stop.cancel();
                if let Some(d) = &dispatcher {
                    d.stop();
                }
                let t = now + config.drain_timeout;
                abort_at = Some(abort_at.map_or(t, |a| a.min(t)));
            }
            _ = abort_sleep, if !shared.abort.is_cancelled() => shared.abort.cancel(),
        }
    }
    progress_done.cancel();
    // Every worker has ended, so the dispatcher has nothing left to release.
    let generator_late = dispatcher.map_or(0, |d| {
        d.stop();
        d.join()
    });
    if let Some(p) = progress {
        let _ = p.await;
    }
    let usage_after = ProcessUsage::now();
    let resources = match monitor {
        Some(m) => m.finish().await,
        None => Default::default(),
    };

    let mut stats = Arc::try_unwrap(shared)
        .ok()
        .expect("every worker has ended")
        .stats
        .into_inner()
        .expect("stats lock poisoned");
    stats.generator_late_sends = generator_late;
    // The run lasts until its last message completed; a sustained run that kept up
    // lasts exactly its window, so the achieved rate is completed / window.
    let last = stats.last_completion.unwrap_or(origin);
    let end = match (window, interrupted_at) {
        (_, Some(i)) => last.max(i),
        (Some(w), None) => last.max(origin + w),
        (None, None) => last,
    };
    let facts = RunFacts {
        config: &config,
        run_id: &run_id,
        start: start_wall,
        duration: end - origin,
        interrupted: interrupted_at.is_some(),
        usage_before,
        usage_after,
        resources,
    };
    result::build(&mut stats, facts)
}

/// Resolves every server once, before the run (no DNS lookups while timing).
async fn resolve(config: &Config) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::with_capacity(config.servers.len());
    for s in &config.servers {
        let found = tokio::time::timeout(
            PREFLIGHT_TIMEOUT,
            tokio::net::lookup_host((s.host.as_str(), s.port)),
        )
        .await
        .with_context(|| format!("--servers: looking up {s} timed out"))?
        .with_context(|| format!("--servers: cannot resolve {s}"))?
        .next();
        match found {
            Some(a) => out.push(a),
            None => bail!("--servers: {s} has no address"),
        }
    }
    Ok(out)
}

/// Connects to a server, expects its 220 banner and EHLO reply, and says QUIT, so a
/// wrong address fails before the run instead of as a run full of failures.
async fn preflight(addr: SocketAddr, helo: &str) -> anyhow::Result<()> {
    let settings = SessionSettings {
        helo: helo.to_string(),
        from: String::new(),
        recipients: Vec::new(),
        timeout: PREFLIGHT_TIMEOUT,
        pipelining: false,
    };
    let env = Envelope::new(&settings, None);
    let mut t = PhaseTimings::default();
    let session = Session::open(addr, &settings, &env, &mut t)
        .await
        .map_err(|f| anyhow::anyhow!("{} ({})", f.kind.describe(), f.phase))?;
    session.quit_and_close().await;
    Ok(())
}
