//! The connection-count cases: hold the limit and a few more sessions open, and
//! count banners and 421s. The global case spreads its sessions over enough source
//! addresses that no per-IP limit trips; the per-IP case holds them all from one
//! address, then checks that another address is still served.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::limits::judge::{self, DoorCounts, Judgement, Skip};
use crate::limits::plan::{self, MAX_CASE_CONNECTIONS};
use crate::limits::probe::{Door, Probe, Seen, knock};
use crate::limits::{Ctx, Observed};

/// A held session says NOOP this often (or at a third of the idle timeout), so that
/// no idle timeout ends it while the case runs.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Per attempt, for the estimate of a case's length.
const ATTEMPT_COST_S: f64 = 0.02;

#[derive(Debug)]
pub struct Plan {
    limit: u64,
    per_ip: bool,
    /// Source address and start offset (seconds) of each attempt.
    attempts: Vec<(Option<IpAddr>, f64)>,
    /// Per-IP case: the address that must still be served.
    other: Option<Option<IpAddr>>,
    keepalive: Duration,
}

fn skip(expected: String, reason: impl Into<String>) -> Skip {
    Skip {
        expected,
        reason: reason.into(),
    }
}

fn keepalive(ctx: &Ctx<'_>) -> Duration {
    ctx.expect.idle_timeout_s.map_or(KEEPALIVE, |s| {
        KEEPALIVE.min(Duration::from_secs_f64(s / 3.0))
    })
}

/// Room for `n` more sockets in this process (and an in-process server's).
fn fits_open_files(n: u64) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let available = limit.rlim_cur.saturating_sub(128);
    if ok && (n * 2) as libc::rlim_t > available {
        return Err(format!(
            "{n} held connections need more open files than the limit ({}) allows",
            limit.rlim_cur
        ));
    }
    Ok(())
}

fn bounded(n: u64) -> Result<(), String> {
    if n > MAX_CASE_CONNECTIONS {
        return Err(format!(
            "would open {n} connections, more than the suite's bound of {MAX_CASE_CONNECTIONS}"
        ));
    }
    fits_open_files(n)
}

/// Global connections: limit + 10% held open, spread over addresses.
pub fn global(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(limit) = ctx.expect.max_connections else {
        return Err(skip(String::new(), "no max-connections expectation"));
    };
    let n = limit + limit.div_ceil(10).max(1);
    let expected = format!("{limit} banners, 421 for the other {}", n - limit);
    bounded(n).map_err(|r| skip(expected.clone(), r))?;
    let sources = ctx
        .spread_sources(n)
        .map_err(|r| skip(expected.clone(), r))?;
    let offsets = plan::open_offsets(n, limit, &[ctx.expect.rate]);
    let estimate = offsets.last().copied().unwrap_or(0.0) + n as f64 * ATTEMPT_COST_S + 1.0;
    if let Some(r) = plan::too_long(estimate, ctx.settings.max_case_time.as_secs_f64()) {
        return Err(skip(expected, r));
    }
    ctx.advance_past(&sources);
    Ok(super::Plan::Connections(Plan {
        limit,
        per_ip: false,
        attempts: sources.into_iter().zip(offsets).collect(),
        other: None,
        keepalive: keepalive(ctx),
    }))
}

/// Per-IP connections: the per-IP limit + 10 from one address, then one from another.
pub fn per_ip(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(limit) = ctx.expect.max_connections_per_ip else {
        return Err(skip(String::new(), "no max-connections-per-ip expectation"));
    };
    let n = limit + 10;
    let expected =
        format!("{limit} banners from one address, 421 for the other 10; another address served");
    if ctx.settings.sources.len() < 2 {
        return Err(skip(
            expected,
            "one source address (the system's choice, or one container's): the case needs a second; give --source-ips",
        ));
    }
    bounded(n).map_err(|r| skip(expected.clone(), r))?;
    if let Some(global) = ctx.expect.max_connections.filter(|g| *g < limit + 1) {
        return Err(skip(
            expected,
            format!("the global limit ({global}) would trip before the per-IP one ({limit})"),
        ));
    }
    let offsets = plan::open_offsets(n, limit, &[ctx.expect.rate, ctx.expect.rate_per_ip]);
    let estimate = offsets.last().copied().unwrap_or(0.0) + n as f64 * ATTEMPT_COST_S + 1.0;
    if let Some(r) = plan::too_long(estimate, ctx.settings.max_case_time.as_secs_f64()) {
        return Err(skip(expected, r));
    }
    let pair = ctx.fresh_sources(2);
    Ok(super::Plan::Connections(Plan {
        limit,
        per_ip: true,
        attempts: offsets.into_iter().map(|o| (pair[0], o)).collect(),
        other: Some(pair[1]),
        keepalive: keepalive(ctx),
    }))
}

impl Plan {
    pub fn expected(&self) -> String {
        let beyond = self.attempts.len() as u64 - self.limit;
        if self.per_ip {
            format!(
                "{} banners from one address, 421 for the other {beyond}; another address served",
                self.limit
            )
        } else {
            format!("{} banners, 421 for the other {beyond}", self.limit)
        }
    }

    fn refusal_counter(&self) -> &'static str {
        if self.per_ip {
            "connections_rejected.max_connections_per_ip"
        } else {
            "connections_rejected.max_connections"
        }
    }

    pub async fn drive(&self, ctx: &mut Ctx<'_>) -> Observed {
        let settings = ctx.settings;
        let start = Instant::now();
        let deadline = start + settings.max_case_time;
        let stop = CancellationToken::new();
        // Held sessions end when the case does, even when it is cut short.
        let _stop_on_drop = stop.clone().drop_guard();
        let mut held = JoinSet::new();
        let mut seen = Seen::default();
        let mut counts = DoorCounts::default();
        let mut out_of_time = false;
        for (source, offset) in &self.attempts {
            let at = start + Duration::from_secs_f64(*offset);
            if at > deadline || Instant::now() > deadline {
                out_of_time = true;
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let door = knock(*source, settings.server, settings.reply_timeout).await;
            if let Some(probe) = tally(door, &mut counts, &mut seen) {
                held.spawn(hold(probe, self.keepalive, stop.clone()));
            }
        }
        let other = match self.other {
            Some(source) => Some(serve_other(source, ctx, &mut seen).await),
            None => None,
        };
        let other_banner = u64::from(matches!(other, Some(Ok(()))));
        stop.cancel();
        let mut lost = BTreeMap::new();
        while let Some(ended) = held.join_next().await {
            if let Ok(Some(how)) = ended {
                *lost.entry(how).or_insert(0) += 1;
            }
        }
        ctx.note_accepted(counts.banners + other_banner);
        ctx.count(self.refusal_counter(), counts.refused);
        ctx.spent(counts.attempts + 1, most_from_one(&self.attempts));
        let mut judgement = judge::connection_limit(self.limit, &counts, &lost);
        let mut extra = Vec::new();
        if out_of_time {
            extra.push(format!(
                "ran out of --max-case-time after {} of {} attempts",
                counts.attempts,
                self.attempts.len()
            ));
        }
        extra.extend(other.and_then(Result::err));
        if self.per_ip && other_banner == 1 {
            judgement.observed += "; other address served";
        }
        add_problems(&mut judgement, extra);
        Observed {
            judgement,
            seen,
            connections: counts.attempts + u64::from(self.other.is_some()),
        }
    }
}

/// Counts one attempt of a connection case by what met it at the door, and notes
/// it; a banner's session is handed back to be held or ended.
pub fn tally(door: Door, counts: &mut DoorCounts, seen: &mut Seen) -> Option<Probe> {
    counts.attempts += 1;
    seen.note(door.label());
    match door {
        Door::Banner(probe) => {
            counts.banners += 1;
            return Some(probe);
        }
        Door::Reply(r) if r.code == 421 => counts.refused += 1,
        Door::Closed => counts.closed += 1,
        _ => counts.other += 1,
    }
    None
}

/// The per-IP cases' last check: a session from another address, which must be
/// served (its banner, then QUIT). Err: what came instead.
pub async fn serve_other(
    source: Option<IpAddr>,
    ctx: &Ctx<'_>,
    seen: &mut Seen,
) -> Result<(), String> {
    let door = knock(source, ctx.settings.server, ctx.settings.reply_timeout).await;
    seen.note(format!("other address: {}", door.label()));
    match door {
        Door::Banner(probe) => {
            probe.quit().await;
            Ok(())
        }
        d => Err(format!("the other address was not served ({})", d.label())),
    }
}

/// The most attempts made from one address.
pub fn most_from_one<T>(attempts: &[(Option<IpAddr>, T)]) -> u64 {
    let mut per: BTreeMap<Option<IpAddr>, u64> = BTreeMap::new();
    for (s, _) in attempts {
        *per.entry(*s).or_default() += 1;
    }
    per.into_values().max().unwrap_or(0)
}

/// Adds reasons to a judgement, failing it.
pub fn add_problems(j: &mut Judgement, problems: Vec<String>) {
    if problems.is_empty() {
        return;
    }
    let mut all: Vec<String> = j.reason.take().into_iter().collect();
    all.extend(problems);
    j.reason = Some(all.join("; "));
    j.verdict = report::limits::Verdict::Fail;
}

/// Keeps a session open until `stop`: EHLO, then NOOP every `keepalive`. Returns
/// what ended it when that was not `stop` (a 421, a close).
async fn hold(mut probe: Probe, keepalive: Duration, stop: CancellationToken) -> Option<String> {
    let heard = probe.command("EHLO limits.stampede.test").await;
    if heard.code() != Some(250) {
        return Some(heard.label());
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                probe.quit().await;
                return None;
            }
            () = tokio::time::sleep(keepalive) => {
                let heard = probe.command("NOOP").await;
                if heard.code() != Some(250) {
                    return Some(heard.label());
                }
            }
        }
    }
}
