//! `loadgen limits`: does a server enforce its resource limits?
//!
//! The suite runs the cases of [`LimitCase::ALL`] one after another against one
//! server. Each case is a pure judge (expectation and observations in, verdict
//! out; unit-tested without sockets) and an I/O driver that makes the
//! observations, bounded in connections ([`plan::MAX_CASE_CONNECTIONS`]) and in
//! time (`--max-case-time`). Between cases the suite waits for the connection-rate
//! buckets to refill, computed from the expectations, so one case's refusals do
//! not spill into the next.
//!
//! - `settings`: the flags, checked; `admin`: smtp-server's `/api/stats` and
//!   `/metrics`; `probe`: a small SMTP client that reports exactly what came back;
//! - `plan`: source addresses, pacing, pauses; `judge`: the verdicts;
//! - the drivers: `connections` (global and per-IP), `rate` (global, per-IP,
//!   recovery), `session` (idle and session timeouts, message size, recipients),
//!   and the monitoring truth in this module (counters before and after).
//!
//! The document is [`report::limits::LimitsDocument`].

mod admin;
mod connections;
mod judge;
mod plan;
mod probe;
mod rate;
mod session;
mod settings;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use report::limits::{
    CaseOutcome, Expectations, LIMITS_SCHEMA_V1, LimitCase, LimitsDocument, RateLimit,
};

pub use settings::{LimitsArgs, Settings, UsageError};

use crate::limits::admin::{AdminUrl, Counters};
use crate::limits::judge::Judgement;
use crate::limits::probe::Seen;

/// Extra wait after a bucket is due full again, and the least pause between
/// cases: lingering refusals and session teardown settle.
const SETTLE: Duration = Duration::from_millis(300);

/// The state the cases share.
pub(crate) struct Ctx<'a> {
    pub settings: &'a Settings,
    pub expect: Expectations,
    /// What the client saw, by the server's counter names (see [`admin::Counters`]).
    pub tally: Counters,
    /// The next source address a case starts from, so each case starts on
    /// addresses the previous one spent least.
    cursor: usize,
    /// When the global and per-address buckets are full again.
    global_full_at: Instant,
    per_ip_full_at: Instant,
    /// The bucket the last rate case emptied, and from which address (for recovery).
    pub drained: Option<Drained>,
    log: bool,
}

/// A bucket a rate case left empty.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drained {
    pub bucket: RateLimit,
    pub source: Option<IpAddr>,
    pub per_ip: bool,
    /// When the case that emptied it began, and when it ended.
    pub began: Instant,
    pub at: Instant,
    /// 421s the case saw: none means the bucket never emptied.
    pub refusals: u64,
}

impl<'a> Ctx<'a> {
    /// `n` consecutive source addresses starting at the cursor, which moves past them.
    pub fn fresh_sources(&mut self, n: usize) -> Vec<Option<IpAddr>> {
        let s = &self.settings.sources;
        let out = (0..n).map(|i| s[(self.cursor + i) % s.len()]).collect();
        self.cursor = (self.cursor + n) % s.len();
        out
    }

    /// `n` attempts spread from the cursor over as few source addresses as keep
    /// each under the expected per-IP limits ([`plan::spread`]). The cursor stays
    /// until [`Ctx::advance_past`]: a case may still be skipped.
    pub fn spread_sources(&self, n: u64) -> Result<Vec<Option<IpAddr>>, String> {
        let cap = plan::per_address_cap(&self.expect);
        plan::spread(n, &self.settings.sources, self.cursor, cap)
    }

    /// Moves the cursor past the addresses `sources` (from
    /// [`Ctx::spread_sources`]) uses.
    pub fn advance_past(&mut self, sources: &[Option<IpAddr>]) {
        let used = sources.iter().collect::<BTreeSet<_>>().len();
        self.cursor = (self.cursor + used) % self.settings.sources.len();
    }

    /// Records that a case took `global` tokens from the global bucket and at most
    /// `per_ip` from one address's.
    pub fn spent(&mut self, global: u64, per_ip: u64) {
        let now = Instant::now();
        let g = Duration::from_secs_f64(plan::refill_time(self.expect.rate, global));
        let p = Duration::from_secs_f64(plan::refill_time(self.expect.rate_per_ip, per_ip));
        self.global_full_at = self.global_full_at.max(now + g);
        self.per_ip_full_at = self.per_ip_full_at.max(now + p);
    }

    /// Waits until the buckets are full again (and at least the settle time).
    async fn wait_for_full_buckets(&self) {
        let until = self.global_full_at.max(self.per_ip_full_at) + SETTLE;
        tokio::time::sleep_until(until.into()).await;
    }

    pub fn note_accepted(&mut self, n: u64) {
        self.count("connections_accepted", n);
    }

    pub fn count(&mut self, key: &str, n: u64) {
        if n > 0 {
            *self.tally.entry(key.to_string()).or_default() += n;
        }
    }

    pub fn progress(&self, line: &str) {
        if self.log {
            eprintln!("loadgen limits: {line}");
        }
    }
}

/// What a driver returns: its judgement, the replies it saw and its connections.
pub(crate) struct Observed {
    pub judgement: Judgement,
    pub seen: Seen,
    pub connections: u64,
}

/// Runs the suite and writes the document when `-o` is given.
pub async fn run(settings: Settings) -> anyhow::Result<LimitsDocument> {
    let started_at = chrono::Utc::now();
    let start = Instant::now();
    let admin = settings
        .admin
        .as_deref()
        .map(AdminUrl::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let before = match &admin {
        Some(url) => Some(snapshot(url).await?),
        None => None,
    };
    let from_admin = before
        .as_ref()
        .map(|s| admin::expectations(&s.stats))
        .unwrap_or_default();
    let expect = settings::merge(&settings.flags, &from_admin);
    let mut ctx = Ctx {
        settings: &settings,
        expect: expect.clone(),
        tally: Counters::new(),
        cursor: 0,
        global_full_at: start,
        per_ip_full_at: start,
        drained: None,
        log: !settings.quiet,
    };
    let mut cases = Vec::new();
    for case in LimitCase::ALL {
        if case == LimitCase::MonitoringTruth {
            continue;
        }
        if case != LimitCase::RateRecovery {
            ctx.wait_for_full_buckets().await;
        }
        ctx.progress(&format!("{} ...", case.title()));
        let outcome = run_case(&mut ctx, case).await;
        ctx.progress(&format!(
            "{}: {} {}",
            case.title(),
            outcome.verdict.as_str(),
            outcome.reason.as_deref().unwrap_or("")
        ));
        cases.push(outcome);
    }
    cases.push(monitoring_truth(&mut ctx, admin.as_ref(), before.as_ref()).await);
    let doc = LimitsDocument {
        schema: LIMITS_SCHEMA_V1.to_string(),
        server: settings.server_text.clone(),
        admin: settings.admin.clone(),
        started_at,
        duration_s: start.elapsed().as_secs_f64(),
        source_addresses: source_summary(&settings.sources),
        max_case_time_s: settings.max_case_time.as_secs_f64(),
        expectations: expect,
        cases,
    };
    if let Some(path) = &settings.output {
        doc.save(path).context("writing the limits document")?;
    }
    Ok(doc)
}

/// The source addresses, shortened to the first and last when there are many.
fn source_summary(sources: &[Option<IpAddr>]) -> Vec<String> {
    let all: Vec<String> = sources.iter().flatten().map(IpAddr::to_string).collect();
    match all.as_slice() {
        [first, .., last] if all.len() > 4 => vec![format!("{first}-{last} ({})", all.len())],
        _ => all,
    }
}

async fn run_case(ctx: &mut Ctx<'_>, case: LimitCase) -> CaseOutcome {
    let plan = match case {
        LimitCase::GlobalConnections => connections::global(ctx),
        LimitCase::PerIpConnections => connections::per_ip(ctx),
        LimitCase::GlobalRate => rate::global(ctx),
        LimitCase::PerIpRate => rate::per_ip(ctx),
        LimitCase::RateRecovery => rate::recovery(ctx),
        LimitCase::IdleTimeout => session::idle(ctx),
        LimitCase::SessionTimeout => session::session(ctx),
        LimitCase::MessageSize => session::size(ctx),
        LimitCase::Recipients => session::recipients(ctx),
        LimitCase::MonitoringTruth => Err(judge::Skip {
            expected: String::new(),
            reason: "runs last".into(),
        }),
    };
    let plan = match plan {
        Ok(p) => p,
        Err(skip) => return CaseOutcome::skipped(case, skip.expected, skip.reason),
    };
    let started = Instant::now();
    // A driver is bounded by its own waits; this is the backstop.
    let limit = ctx.settings.max_case_time + ctx.settings.reply_timeout * 2;
    let driven = tokio::time::timeout(limit, plan.drive(ctx)).await;
    let observed = driven.unwrap_or_else(|_| Observed {
        judgement: Judgement::fail(
            "did not finish",
            format!("the case ran out of time ({:.0} s)", limit.as_secs_f64()),
        ),
        seen: Seen::default(),
        connections: 0,
    });
    observed.judgement.into_outcome(
        case,
        plan.expected(),
        observed.seen,
        observed.connections,
        started.elapsed(),
    )
}

/// The admin documents at one moment.
struct Snapshot {
    stats: serde_json::Value,
    stats_counters: Counters,
    metrics_counters: Counters,
}

async fn snapshot(url: &AdminUrl) -> anyhow::Result<Snapshot> {
    let stats_text = admin::get(url, "/api/stats").await?;
    let stats: serde_json::Value = serde_json::from_str(&stats_text)
        .with_context(|| format!("{}/api/stats: not JSON", url.authority))?;
    let metrics = admin::get(url, "/metrics").await?;
    Ok(Snapshot {
        stats_counters: admin::stats_counters(&stats),
        metrics_counters: admin::metrics_counters(&metrics),
        stats,
    })
}

async fn monitoring_truth(
    ctx: &mut Ctx<'_>,
    admin: Option<&AdminUrl>,
    before: Option<&Snapshot>,
) -> CaseOutcome {
    let case = LimitCase::MonitoringTruth;
    let expected = "every counter moved by what the client saw";
    let (Some(url), Some(before)) = (admin, before) else {
        return CaseOutcome::skipped(
            case,
            expected,
            "no --admin URL: the server's counters are unknown",
        );
    };
    ctx.progress("monitoring truth ...");
    // Sessions the server is still closing are counted once they are gone.
    tokio::time::sleep(SETTLE).await;
    let started = Instant::now();
    let judgement = match snapshot(url).await {
        Ok(after) => judge::monitoring(
            &ctx.tally,
            &[
                ("/api/stats", &before.stats_counters, &after.stats_counters),
                (
                    "/metrics",
                    &before.metrics_counters,
                    &after.metrics_counters,
                ),
            ],
        ),
        Err(e) => Judgement::fail("no counters", format!("{e:#}")),
    };
    // "Replies seen" here: the client's own count under each counter's name.
    let mut seen = Seen::default();
    for (k, v) in &ctx.tally {
        seen.0.insert(k.clone(), *v);
    }
    judgement.into_outcome(case, expected.to_string(), seen, 0, started.elapsed())
}

/// A case ready to run: what passes, and the driver.
pub(crate) enum Plan {
    Connections(connections::Plan),
    Rate(rate::Plan),
    Recovery(rate::RecoveryPlan),
    Session(session::Plan),
}

impl Plan {
    fn expected(&self) -> String {
        match self {
            Plan::Connections(p) => p.expected(),
            Plan::Rate(p) => p.expected(),
            Plan::Recovery(p) => p.expected(),
            Plan::Session(p) => p.expected(),
        }
    }

    async fn drive(&self, ctx: &mut Ctx<'_>) -> Observed {
        match self {
            Plan::Connections(p) => p.drive(ctx).await,
            Plan::Rate(p) => p.drive(ctx).await,
            Plan::Recovery(p) => p.drive(ctx).await,
            Plan::Session(p) => p.drive(ctx).await,
        }
    }
}
