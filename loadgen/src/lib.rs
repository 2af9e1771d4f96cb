//! Stampede's SMTP load generator as a library: [`run`] drives the servers of a
//! [`Config`] and returns the [`RunResult`]; the `loadgen` binary is a thin wrapper
//! (flags, Ctrl-C, writing the file, the [`summary`]).
//!
//! A map of the crate (modules are private; what the binary and the tests use is
//! re-exported here):
//! - settings: `cli` (the flags), `config` (checked, every error naming its flag);
//! - generation: `timetable` (the open model's due times: rate curve, stages,
//!   arrivals), `schedule` (closed and open models, the dispatcher), `worker` (one session at a time to one server), `client` (one SMTP
//!   connection, timed phase by phase), `tls` (the TLS layer under it), `auth`
//!   (the logins it sends), `message` (bodies prepared once),
//!   `runtime` (one single-threaded runtime per core, the sessions dealt over them);
//! - measurement: `stats` (histograms and counters), `containers` (the servers' CPU
//!   and memory);
//! - presentation: `progress` (the live line and the summary), `result` (the
//!   [`report`] model filled in);
//! - judging: `require` (the `--require` gates on the result, and the
//!   `--abort-on-fail` watch during the run);
//! - searching: `capacity` (`--mode capacity`: the rates to try, decided apart
//!   from the runs, and each step run as a sustained run of its own).
//! - `limits`: the `loadgen limits` suite (does a server enforce its resource
//!   limits?), with its own small SMTP probe.
//!
//! The printer never measures and the client never formats.

mod auth;
mod capacity;
mod cli;
mod client;
mod config;
mod containers;
pub mod limits;
mod message;
mod progress;
mod require;
mod result;
mod runtime;
mod schedule;
mod source_addrs;
mod stats;
mod timetable;
mod tls;
mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use report::RunResult;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use capacity::{Search, SearchOutcome, StepVerdict};
pub use config::{Config, ConfigError, Mode};
pub use progress::summary;
pub use require::table as gates_table;
pub use runtime::main_runtime;
pub use source_addrs::{
    MAX_SOURCE_ADDRS, SourceAddrs, SourceAddrsError, check_bindable, connect_from,
};

use crate::auth::Logins;
use crate::client::{
    ClientSettings, Connection, Dial, FailureKind, PhaseTimings, PreparedCommands,
};
use crate::containers::ContainerMonitor;
use crate::message::MessageFactory;
use crate::require::GateWatch;
use crate::result::{ProcessUsage, RunFacts};
use crate::runtime::Shards;
use crate::schedule::{Dispatcher, Gates, Plan, workers_for};
use crate::stats::Stats;
use crate::timetable::Timetable;
use crate::tls::TlsClient;
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
    if matches!(config.mode, Mode::Capacity { .. }) {
        return capacity::run(config, interrupt).await;
    }
    let run_id = new_run_id();
    run_with_id(config, interrupt, &run_id).await
}

/// One run of a fixed load (burst, sustained, stages) under the id `run_id`:
/// what [`run`] does, and what a capacity search does once per step.
async fn run_with_id(
    config: Config,
    interrupt: CancellationToken,
    run_id: &str,
) -> anyhow::Result<RunResult> {
    let addrs = resolve(&config).await?;
    if let Some(sources) = &config.sources {
        for addr in &addrs {
            sources.check_reaches(*addr).context("--source-ips")?;
        }
    }
    let sessions = config.mode.workers() as usize;
    let tls = TlsClient::new(&config.tls, sessions).context("setting up TLS")?;
    if config.preflight {
        preflight_all(&config, &addrs, tls.as_ref()).await?;
    }
    let monitor = start_monitor(&config).await?;
    let load = prepare(&config, run_id)?;

    // Before the clock starts: a Poisson timetable draws its gaps once here.
    let plan = RunPlan::new(&config);
    let usage_before = ProcessUsage::now();
    let start = chrono::Utc::now();
    let origin = Instant::now();
    let (dispatcher, gates) = start_dispatcher(&plan, origin, config.late_tolerance)?;
    let shared = Arc::new(RunShared {
        plan: Plan::new(plan.total, plan.pools.len()),
        addrs,
        sources: config.sources.clone(),
        settings: load.settings,
        tls,
        logins: config
            .auth
            .as_ref()
            .and_then(|a| Logins::new(a.mechanism, &a.credentials)),
        factory: load.factory,
        commands: load.commands,
        msgs_per_conn: config.msgs_per_conn,
        late_tolerance: config.late_tolerance,
        stats: Mutex::new(new_stats(&config, &plan, origin)),
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        gates,
    });
    let shards = start_shards(&config, &plan)?;
    let workers = spawn_workers(&shards, &shared, &plan.pools);
    let progress = config.progress.then(|| Progress::start(&shared));
    let watch = (config.abort_on_fail && !config.gates.is_empty())
        .then(|| GateWatch::start(Arc::clone(&shared), config.gates.clone(), plan.total));

    // Sustained runs end on time: whatever is still in flight at the end of the
    // window plus the drain timeout is aborted and counted.
    let abort_at = plan.window.map(|w| origin + w + config.drain_timeout);
    let drain = config.drain_timeout;
    let stopped_at = wait_for_workers(
        workers,
        &shared,
        dispatcher.as_ref(),
        Stoppers {
            interrupt: &interrupt,
            gate_missed: watch.as_ref().map(|w| &w.missed),
        },
        abort_at,
        drain,
    )
    .await;
    // Every worker has ended: the shard threads stop.
    drop(shards);
    let aborted_by_gate = match watch {
        Some(w) => w.finish().await,
        None => None,
    };

    let done = teardown(shared, dispatcher, progress, monitor).await;
    let mut stats = done.stats;
    let end = run_end(&stats, origin, plan.window, stopped_at);
    let facts = RunFacts {
        config: &config,
        run_id,
        start,
        duration: end - origin,
        // A run a gate stopped is recorded as such in `gates`, not as interrupted.
        interrupted: stopped_at.is_some() && aborted_by_gate.is_none(),
        usage_before,
        usage_after: done.usage_after,
        resources: done.resources,
    };
    let mut result = result::build(&mut stats, facts)?;
    if !config.gates.is_empty() {
        result.gates = Some(require::judge(&result, &config.gates, aborted_by_gate));
    }
    Ok(result)
}

/// What ends a run early: Ctrl-C, or with `--abort-on-fail` a gate already lost.
struct Stoppers<'a> {
    interrupt: &'a CancellationToken,
    gate_missed: Option<&'a CancellationToken>,
}

impl Stoppers<'_> {
    async fn stopped(&self) {
        match self.gate_missed {
            Some(g) => tokio::select! {
                _ = self.interrupt.cancelled() => {}
                _ = g.cancelled() => {}
            },
            None => self.interrupt.cancelled().await,
        }
    }
}

/// Checks every server before the run; the error names the server as given.
/// With `--source-ips` the check connects from the first address (every address
/// was bound once already), leaving the round-robin where it starts.
async fn preflight_all(
    config: &Config,
    addrs: &[SocketAddr],
    tls: Option<&TlsClient>,
) -> anyhow::Result<()> {
    let tls = tls.map(TlsClient::without_resumption);
    for (server, (addr, name)) in addrs.iter().zip(&config.servers).enumerate() {
        let dial = Dial {
            addr: *addr,
            source: config.sources.as_ref().map(|s| s.addrs()[0]),
            server,
            tls: tls.as_ref(),
            login: None,
        };
        preflight(&dial, &config.helo).await.with_context(|| {
            if name.to_string() == addr.to_string() {
                format!("server {name} is not usable")
            } else {
                format!("server {name} ({addr}) is not usable")
            }
        })?;
    }
    Ok(())
}

/// Starts sampling the containers of `--monitor-containers`, if any.
async fn start_monitor(config: &Config) -> anyhow::Result<Option<ContainerMonitor>> {
    if config.monitor_containers.is_empty() {
        return Ok(None);
    }
    let names = config.monitor_containers.clone();
    let monitor = ContainerMonitor::start(names, CONTAINER_SAMPLE_INTERVAL)
        .await
        .context("--monitor-containers")?;
    Ok(Some(monitor))
}

/// The run's id, in `X-Stampede-Run` and `run.config.run_id`: start time and a
/// random part, so two generators started in the same second differ.
fn new_run_id() -> String {
    format!(
        "{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        rand::random::<u32>()
    )
}

/// What every message of the run is made of, prepared before the clock starts.
struct PreparedLoad {
    factory: MessageFactory,
    settings: ClientSettings,
    /// One per prepared body (they differ in `SIZE=`).
    commands: Vec<PreparedCommands>,
}

fn prepare(config: &Config, run_id: &str) -> anyhow::Result<PreparedLoad> {
    let factory = MessageFactory::new(config, run_id).context("building the message template")?;
    let settings = ClientSettings {
        helo: config.helo.clone(),
        from: config.from.clone(),
        recipients: config.recipients.clone(),
        timeout: config.timeout,
        pipelining: config.pipelining,
    };
    let commands = factory
        .bodies()
        .iter()
        .map(|b| PreparedCommands::new(&settings, Some(b.size)))
        .collect();
    Ok(PreparedLoad {
        factory,
        settings,
        commands,
    })
}

/// How many messages, on which timetable, over how many sessions per server.
struct RunPlan {
    total: u64,
    /// The open model's due times; `None` in the closed model.
    timetable: Option<Timetable>,
    /// The open model's length.
    window: Option<Duration>,
    /// Sessions per server.
    pools: Vec<u32>,
}

impl RunPlan {
    fn new(config: &Config) -> Self {
        let servers = config.servers.len();
        let timetable = config
            .mode
            .rate_curve()
            .map(|curve| Timetable::new(curve, config.arrivals()));
        let (total, window) = match (config.mode.clone(), &timetable) {
            (Mode::Burst { messages, .. }, _) => (messages, None),
            (_, Some(t)) => (
                t.total(),
                Some(Duration::from_secs_f64(t.curve().duration())),
            ),
            (_, None) => (0, None),
        };
        let pools = (0..servers)
            .map(|s| workers_for(s, servers, config.mode.workers()))
            .collect();
        RunPlan {
            total,
            timetable,
            window,
            pools,
        }
    }
}

/// The open model's dispatcher thread and the gates it opens; nothing in the
/// closed model.
fn start_dispatcher(
    plan: &RunPlan,
    origin: Instant,
    late_tolerance: Duration,
) -> anyhow::Result<(Option<Dispatcher>, Option<Gates>)> {
    let Some(timetable) = plan.timetable.clone() else {
        return Ok((None, None));
    };
    let (dispatcher, gates) =
        Dispatcher::spawn(timetable, origin, plan.pools.clone(), late_tolerance)
            .context("starting the dispatcher thread")?;
    Ok((Some(dispatcher), Some(gates)))
}

/// The run's statistics: corrected latency in the open model, a share per stage
/// in stages mode, the warmup left out of the figures.
fn new_stats(config: &Config, plan: &RunPlan, origin: Instant) -> Stats {
    let stages = match (&config.mode, &plan.timetable) {
        (Mode::Stages { .. }, Some(t)) => t.curve().segments().len(),
        _ => 0,
    };
    Stats::new(origin, plan.pools.len(), plan.timetable.is_some())
        .with_stages(stages)
        .with_warmup(config.warmup)
}

/// The runtimes the sessions run on (`runtime.rs`): one per core by default, never
/// more than there are sessions; only the closed model polls before sleeping.
fn start_shards(config: &Config, plan: &RunPlan) -> anyhow::Result<Shards> {
    let sessions = plan.pools.iter().map(|&p| p as usize).sum::<usize>();
    let count = runtime::shard_count(config.threads).min(sessions.max(1));
    Shards::start(count, plan.timetable.is_none()).context("starting the runtime threads")
}

/// One task per session: `pools[s]` workers for server `s`, each with its own seed,
/// dealt over the shards one by one so each shard gets its share of every pool.
fn spawn_workers(shards: &Shards, shared: &Arc<RunShared>, pools: &[u32]) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let mut seed = 0u64;
    for (server, &pool) in pools.iter().enumerate() {
        for _ in 0..pool {
            let worker = worker::run_worker(Arc::clone(shared), server, seed + 1);
            shards.spawn(&mut set, seed as usize, worker);
            seed += 1;
        }
    }
    set
}

/// The live progress line and what stops it.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    done: CancellationToken,
}

impl Progress {
    fn start(shared: &Arc<RunShared>) -> Self {
        let done = CancellationToken::new();
        let task = progress::spawn(Arc::clone(shared), done.clone());
        Progress { task, done }
    }

    async fn finish(self) {
        self.done.cancel();
        let _ = self.task.await;
    }
}

/// Waits until every worker has ended. Ctrl-C or a lost gate (`stoppers`) stops
/// new messages and gives the ones in flight the drain time; at `abort_at` (or the
/// end of that drain time, whichever is first) whatever still runs is aborted.
/// Returns when the run was stopped early, if it was.
async fn wait_for_workers(
    mut workers: JoinSet<()>,
    shared: &RunShared,
    dispatcher: Option<&Dispatcher>,
    stoppers: Stoppers<'_>,
    mut abort_at: Option<Instant>,
    drain: Duration,
) -> Option<Instant> {
    let mut interrupted_at = None;
    loop {
        let abort_sleep = async {
            match abort_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(_) => {}
            },
            _ = stoppers.stopped(), if interrupted_at.is_none() => {
                let now = Instant::now();
                interrupted_at = Some(now);
                shared.stop.cancel();
                if let Some(d) = dispatcher {
                    d.stop();
                }
                let t = now + drain;
                abort_at = Some(abort_at.map_or(t, |a| a.min(t)));
            }
            _ = abort_sleep, if !shared.abort.is_cancelled() => shared.abort.cancel(),
        }
    }
    interrupted_at
}

/// What the run leaves once its workers have ended.
struct Finished {
    stats: Stats,
    usage_after: ProcessUsage,
    resources: BTreeMap<String, Vec<report::ResourceSample>>,
}

/// Stops the progress line, the dispatcher and the container monitor, and takes
/// the statistics. The generator's own usage is read before the monitor's last
/// sample, which may wait for the engine.
async fn teardown(
    shared: Arc<RunShared>,
    dispatcher: Option<Dispatcher>,
    progress: Option<Progress>,
    monitor: Option<ContainerMonitor>,
) -> Finished {
    if let Some(p) = progress {
        p.finish().await;
    }
    // Every worker has ended, so the dispatcher has nothing left to release.
    let generator_late = dispatcher.map_or(0, |d| {
        d.stop();
        d.join()
    });
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
    Finished {
        stats,
        usage_after,
        resources,
    }
}

/// The run lasts until its last message completed; a sustained run that kept up
/// lasts exactly its window, so the achieved rate is completed / window.
fn run_end(
    stats: &Stats,
    origin: Instant,
    window: Option<Duration>,
    interrupted_at: Option<Instant>,
) -> Instant {
    let last = stats.last_completion.unwrap_or(origin);
    match (window, interrupted_at) {
        (_, Some(i)) => last.max(i),
        (Some(w), None) => last.max(origin + w),
        (None, None) => last,
    }
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
/// wrong address fails before the run instead of as a run full of failures. A
/// server that answers but fails TLS passes: that is what the run is to count
/// (`tls:certificate`, `tls:not_offered`), message by message.
async fn preflight(dial: &Dial<'_>, helo: &str) -> anyhow::Result<()> {
    let settings = ClientSettings {
        helo: helo.to_string(),
        from: String::new(),
        recipients: Vec::new(),
        timeout: PREFLIGHT_TIMEOUT,
        pipelining: false,
    };
    let cmds = PreparedCommands::new(&settings, None);
    let mut t = PhaseTimings::default();
    match Connection::open(dial, &settings, &cmds, &mut t, &mut None).await {
        Ok(session) => session.quit_and_close().await,
        Err(f) if matches!(f.kind, FailureKind::Tls(_)) => {}
        Err(f) => anyhow::bail!("{} ({})", f.kind.describe(), f.phase),
    }
    Ok(())
}
