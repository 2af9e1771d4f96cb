//! The connection-rate cases: open the bucket's size and half again as fast as the
//! server answers, closing each session at once (so no concurrency limit trips),
//! and count what was let in against the token bucket's allowance. Recovery then
//! waits for one token and expects a session again.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use report::limits::RateLimit;

use crate::limits::connections::{add_problems, most_from_one, serve_other, tally};
use crate::limits::judge::{self, DoorCounts, Judgement, Skip};
use crate::limits::plan::{self, MAX_CASE_CONNECTIONS};
use crate::limits::probe::{Door, Seen, knock};
use crate::limits::{Ctx, Drained, Observed};

/// Per attempt (connect, banner, QUIT, 221), for the estimate of a case's length.
const ATTEMPT_COST_S: f64 = 0.05;
/// Recovery waits this many refill intervals for its token.
const RECOVERY_WAIT: f64 = 1.5;
/// After a fixed window ends, before the last try. Postfix's anvil keeps time in
/// whole seconds and starts a new window only once `now > start + unit`: up to a
/// second after the window's end as measured from the case's start (and the first
/// connection may fall in the next second). Half a second failed about half the runs.
const SETTLE_AFTER_WINDOW: Duration = Duration::from_millis(1500);

#[derive(Debug)]
pub struct Plan {
    bucket: RateLimit,
    per_ip: bool,
    sources: Vec<Option<IpAddr>>,
    other: Option<Option<IpAddr>>,
}

fn skip(expected: &str, reason: impl Into<String>) -> Skip {
    Skip {
        expected: expected.to_string(),
        reason: reason.into(),
    }
}

fn attempts(bucket: RateLimit) -> u64 {
    bucket.count + bucket.count.div_ceil(2)
}

fn expected_text(bucket: RateLimit, per_ip: bool) -> String {
    let n = attempts(bucket);
    let base = format!(
        "{n} at once: {}..burst+refill accepted ({bucket} bucket), 421 for the rest",
        bucket.count
    );
    if per_ip {
        format!("{base}; another address served")
    } else {
        base
    }
}

fn check_bounds(n: u64, ctx: &Ctx<'_>, expected: &str) -> Result<(), Skip> {
    if n > MAX_CASE_CONNECTIONS {
        return Err(skip(
            expected,
            format!(
                "would open {n} connections, more than the suite's bound of {MAX_CASE_CONNECTIONS}"
            ),
        ));
    }
    let estimate = n as f64 * ATTEMPT_COST_S + 1.0;
    match plan::too_long(estimate, ctx.settings.max_case_time.as_secs_f64()) {
        Some(r) => Err(skip(expected, r)),
        None => Ok(()),
    }
}

/// Global rate: limit + 50% from many addresses.
pub fn global(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(bucket) = ctx.expect.rate else {
        return Err(skip("", "no rate expectation"));
    };
    let expected = expected_text(bucket, false);
    let n = attempts(bucket);
    check_bounds(n, ctx, &expected)?;
    let sources = ctx.spread_sources(n).map_err(|r| skip(&expected, r))?;
    ctx.advance_past(&sources);
    Ok(super::Plan::Rate(Plan {
        bucket,
        per_ip: false,
        sources,
        other: None,
    }))
}

/// Per-IP rate: the per-IP limit + 50% from one address, then one from another.
pub fn per_ip(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(bucket) = ctx.expect.rate_per_ip else {
        return Err(skip("", "no rate-per-ip expectation"));
    };
    let expected = expected_text(bucket, true);
    let n = attempts(bucket);
    if ctx.settings.sources.len() < 2 {
        return Err(skip(
            &expected,
            "one source address (the system's choice, or one container's): the case needs a second; give --source-ips",
        ));
    }
    check_bounds(n, ctx, &expected)?;
    if let Some(global) = ctx.expect.rate.filter(|g| g.count < bucket.count + 2) {
        return Err(skip(
            &expected,
            format!("the global bucket ({global}) would empty before the per-IP one ({bucket})"),
        ));
    }
    let pair = ctx.fresh_sources(2);
    Ok(super::Plan::Rate(Plan {
        bucket,
        per_ip: true,
        sources: vec![pair[0]; n as usize],
        other: Some(pair[1]),
    }))
}

impl Plan {
    pub fn expected(&self) -> String {
        expected_text(self.bucket, self.per_ip)
    }

    pub async fn drive(&self, ctx: &mut Ctx<'_>) -> Observed {
        let settings = ctx.settings;
        let deadline = Instant::now() + settings.max_case_time;
        let mut seen = Seen::default();
        let mut counts = DoorCounts::default();
        let start = Instant::now();
        for source in &self.sources {
            if Instant::now() > deadline {
                break;
            }
            let door = knock(*source, settings.server, settings.reply_timeout).await;
            if let Some(probe) = tally(door, &mut counts, &mut seen) {
                probe.quit().await;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut problems = Vec::new();
        if counts.attempts < self.sources.len() as u64 {
            problems.push(format!(
                "ran out of --max-case-time after {} of {} attempts",
                counts.attempts,
                self.sources.len()
            ));
        }
        let mut other_banner = 0;
        if let Some(source) = self.other {
            match serve_other(source, ctx, &mut seen).await {
                Ok(()) => other_banner = 1,
                Err(problem) => problems.push(problem),
            }
        }
        let reason = if self.per_ip {
            "connections_rejected.rate_limit_per_ip"
        } else {
            "connections_rejected.rate_limit"
        };
        ctx.note_accepted(counts.banners + other_banner);
        ctx.count(reason, counts.refused);
        let per_address = most_from_one(&self.sources.iter().map(|s| (*s, ())).collect::<Vec<_>>());
        ctx.spent(counts.attempts + 1, per_address);
        ctx.drained = Some(Drained {
            bucket: self.bucket,
            source: self.sources.first().copied().flatten(),
            per_ip: self.per_ip,
            began: start,
            at: Instant::now(),
            refusals: counts.refused,
        });
        let mut judgement = judge::rate(self.bucket, elapsed, &counts);
        if self.per_ip && other_banner == 1 {
            judgement.observed += "; other address served";
        }
        add_problems(&mut judgement, problems);
        Observed {
            judgement,
            seen,
            connections: counts.attempts + u64::from(self.other.is_some()),
        }
    }
}

/// Rate recovery: after the last rate case emptied its bucket, wait for one token.
#[derive(Debug)]
pub struct RecoveryPlan {
    drained: Drained,
    wait: Duration,
    /// The longest the case may wait (for a fixed window to end), from the drain.
    max_wait: Duration,
}

pub fn recovery(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(drained) = ctx.drained else {
        return Err(skip("", "no rate case ran, so no bucket is empty"));
    };
    let wait = Duration::from_secs_f64(drained.bucket.refill_interval_s() * RECOVERY_WAIT);
    let plan = RecoveryPlan {
        drained,
        wait,
        max_wait: ctx.settings.max_case_time,
    };
    if let Some(r) = plan::too_long(
        wait.as_secs_f64() + 1.0,
        ctx.settings.max_case_time.as_secs_f64(),
    ) {
        return Err(skip(&plan.expected(), r));
    }
    Ok(super::Plan::Recovery(plan))
}

impl RecoveryPlan {
    pub fn expected(&self) -> String {
        format!(
            "a session again {:.2} s (one token) after the {} bucket emptied, or after its {} s window",
            self.wait.as_secs_f64(),
            if self.drained.per_ip {
                "per-IP"
            } else {
                "global"
            },
            self.drained.bucket.window_s
        )
    }

    pub async fn drive(&self, ctx: &mut Ctx<'_>) -> Observed {
        let settings = ctx.settings;
        let source = self.drained.source;
        let mut seen = Seen::default();
        let reason = if self.drained.per_ip {
            "connections_rejected.rate_limit_per_ip"
        } else {
            "connections_rejected.rate_limit"
        };
        if self.drained.refusals == 0 {
            return Observed {
                judgement: Judgement::fail(
                    "nothing to recover from",
                    "the rate case before saw no 421: the bucket never emptied",
                ),
                seen,
                connections: 0,
            };
        }
        // Still empty? Only told, not judged: a token may already be back.
        let first = knock(source, settings.server, settings.reply_timeout).await;
        seen.note(format!("at once: {}", first.label()));
        let still_empty = first.is_refusal();
        match first {
            Door::Banner(p) => {
                ctx.note_accepted(1);
                p.quit().await;
            }
            Door::Reply(r) if r.code == 421 => ctx.count(reason, 1),
            _ => {}
        }
        // A token taken now must be earned back too.
        let from = if still_empty {
            self.drained.at
        } else {
            Instant::now()
        };
        tokio::time::sleep_until((from + self.wait).into()).await;
        let mut after = knock(source, settings.server, settings.reply_timeout).await;
        seen.note(format!("after one token: {}", after.label()));
        let mut observed = format!(
            "{} at once, {} after {:.2} s",
            if still_empty { "421" } else { "served" },
            after.label(),
            from.elapsed().as_secs_f64()
        );
        let mut connections = 2;
        if after.is_refusal() {
            ctx.count(reason, 1);
            // A fixed window (Postfix's anvil) gives nothing back before it ends.
            let window_end =
                self.drained.began + Duration::from_secs_f64(self.drained.bucket.window_s);
            if window_end + SETTLE_AFTER_WINDOW <= self.drained.at + self.max_wait {
                tokio::time::sleep_until((window_end + SETTLE_AFTER_WINDOW).into()).await;
                after = knock(source, settings.server, settings.reply_timeout).await;
                connections += 1;
                seen.note(format!("after the window: {}", after.label()));
                observed += &format!(
                    ", {} after the window ({:.1} s): a fixed window, not a token bucket",
                    after.label(),
                    self.drained.began.elapsed().as_secs_f64()
                );
            }
        }
        let judgement = match after {
            Door::Banner(p) => {
                ctx.note_accepted(1);
                p.quit().await;
                Judgement::pass(observed)
            }
            d => {
                if d.is_refusal() && connections == 3 {
                    ctx.count(reason, 1);
                }
                Judgement::fail(
                    observed,
                    format!("still refused after the refill ({})", d.label()),
                )
            }
        };
        ctx.spent(connections, connections);
        Observed {
            judgement,
            seen,
            connections,
        }
    }
}
