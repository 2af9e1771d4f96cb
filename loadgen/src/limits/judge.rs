//! The verdicts: expectation and observations in, pass or fail with the reason out.
//! Nothing here does I/O; the drivers gather the observations.

use std::collections::BTreeMap;
use std::time::Duration;

use report::limits::{CaseOutcome, LimitCase, RateLimit, Verdict};

use crate::limits::admin::Counters;
use crate::limits::plan::timeout_tolerance;
use crate::limits::probe::{CLOSED_WITHOUT_REPLY, Seen};

/// A case that cannot run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub expected: String,
    pub reason: String,
}

/// A verdict with what was observed and, unless it passed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub observed: String,
    pub reason: Option<String>,
}

impl Judgement {
    pub fn pass(observed: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Pass,
            observed: observed.into(),
            reason: None,
        }
    }

    pub fn fail(observed: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            observed: observed.into(),
            reason: Some(reason.into()),
        }
    }

    /// Pass when `problems` is empty, else fail naming them all.
    pub fn from_problems(observed: String, problems: Vec<String>) -> Self {
        if problems.is_empty() {
            Self::pass(observed)
        } else {
            Self::fail(observed, problems.join("; "))
        }
    }

    pub fn into_outcome(
        self,
        case: LimitCase,
        expected: String,
        seen: Seen,
        connections: u64,
        took: Duration,
    ) -> CaseOutcome {
        CaseOutcome {
            case,
            verdict: self.verdict,
            expected,
            observed: self.observed,
            reason: self.reason,
            replies: seen.0,
            connections,
            duration_s: took.as_secs_f64(),
        }
    }
}

/// How the attempts of a connection case met the door.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoorCounts {
    pub attempts: u64,
    /// 220 banners: sessions.
    pub banners: u64,
    /// 421 replies.
    pub refused: u64,
    /// Closed (or reset) without any reply.
    pub closed: u64,
    /// Another reply, no reply in time, not SMTP, or the connect failed.
    pub other: u64,
}

impl DoorCounts {
    pub fn observed(&self) -> String {
        let mut s = format!("{} banners, {} × 421", self.banners, self.refused);
        if self.closed > 0 {
            s += &format!(", {} {CLOSED_WITHOUT_REPLY}", self.closed);
        }
        if self.other > 0 {
            s += &format!(", {} other", self.other);
        }
        s
    }

    /// Everything that was neither a banner nor a 421, as reasons.
    fn stray(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.closed > 0 {
            p.push(format!(
                "{} attempts were {CLOSED_WITHOUT_REPLY} (a refusal must be a 421 reply)",
                self.closed
            ));
        }
        if self.other > 0 {
            p.push(format!(
                "{} attempts got neither a banner nor a 421 (see the replies)",
                self.other
            ));
        }
        p
    }
}

/// Global or per-IP connections: exactly `limit` banners, a 421 for every other
/// attempt; `held_lost` sessions that ended before the case did make the count
/// meaningless, and say so.
pub fn connection_limit(
    limit: u64,
    c: &DoorCounts,
    held_lost: &BTreeMap<String, u64>,
) -> Judgement {
    let mut p = Vec::new();
    let beyond = c.attempts.saturating_sub(limit);
    if c.banners > limit {
        p.push(format!(
            "{} sessions beyond the limit of {limit} got a banner: the limit is not enforced",
            c.banners - limit
        ));
    } else if c.banners < limit {
        p.push(format!(
            "only {} sessions got a banner, {} fewer than the limit of {limit}",
            c.banners,
            limit - c.banners
        ));
    }
    if c.refused != beyond && c.banners <= limit {
        p.push(format!(
            "{} of the {beyond} attempts beyond the limit got a 421",
            c.refused
        ));
    }
    p.extend(c.stray());
    for (how, n) in held_lost {
        p.push(format!("{n} held sessions ended early ({how})"));
    }
    Judgement::from_problems(c.observed(), p)
}

/// Global or per-IP rate: at least the bucket's burst and at most its allowance over
/// the elapsed time accepted, a 421 for the rest.
pub fn rate(bucket: RateLimit, elapsed_s: f64, c: &DoorCounts) -> Judgement {
    let allowance = bucket.allowance(elapsed_s).floor() as u64;
    let mut p = Vec::new();
    if c.banners > allowance {
        p.push(format!(
            "{} accepted in {elapsed_s:.2} s, more than the bucket allows ({allowance}: {} + refill): the rate limit is not enforced",
            c.banners, bucket.count
        ));
    } else if c.banners < bucket.count {
        p.push(format!(
            "only {} accepted, fewer than the burst of {}",
            c.banners, bucket.count
        ));
    }
    let rest = c.attempts.saturating_sub(c.banners);
    if c.refused != rest {
        p.push(format!(
            "{} of the {rest} other attempts got a 421",
            c.refused
        ));
    }
    p.extend(c.stray());
    Judgement::from_problems(format!("{} in {elapsed_s:.2} s", c.observed()), p)
}

/// The last line of a timeout case: the reply (or close) and when it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The label of what ended the session (`421 4.4.2`, `closed without reply`,
    /// `no reply (timeout)`).
    pub how: String,
    pub code: Option<u16>,
    pub after: Duration,
}

/// Idle or session timeout: a 421 within the tolerance of the expectation.
pub fn timeout(expected_s: f64, end: &Ending) -> Judgement {
    let after = end.after.as_secs_f64();
    let tolerance = timeout_tolerance(expected_s);
    let observed = format!("{} after {after:.2} s", end.how);
    let mut p = Vec::new();
    match end.code {
        Some(421) => {}
        Some(_) => p.push(format!("ended by {}, not a 421", end.how)),
        None if end.how == CLOSED_WITHOUT_REPLY => p.push(format!(
            "{CLOSED_WITHOUT_REPLY} (a timeout must be announced with a 421)"
        )),
        None => p.push(format!("the session did not end ({})", end.how)),
    }
    let ended = end.code.is_some() || end.how == CLOSED_WITHOUT_REPLY;
    if ended && (after - expected_s).abs() > tolerance {
        p.push(format!(
            "after {after:.2} s, outside {expected_s:.2} s ± {tolerance:.2} s"
        ));
    }
    Judgement::from_problems(observed, p)
}

/// One step of a scripted session and the reply classes that pass it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: &'static str,
    pub wanted: u16,
    pub heard: String,
    pub code: Option<u16>,
}

/// A scripted session (message size, recipients): every step got its reply. The
/// observation names the steps that test a limit, and any that went wrong.
pub fn script(steps: &[Step]) -> Judgement {
    let observed: Vec<String> = steps
        .iter()
        .filter(|s| {
            s.wanted >= 400
                || s.what.ends_with("final dot")
                || s.what == "RSET after"
                || s.code != Some(s.wanted)
        })
        .map(|s| format!("{} {}", s.what, s.heard))
        .collect();
    let p: Vec<String> = steps
        .iter()
        .filter(|s| s.code != Some(s.wanted))
        .map(|s| format!("{}: {} instead of {}", s.what, s.heard, s.wanted))
        .collect();
    Judgement::from_problems(observed.join(", "), p)
}

/// Monitoring truth: every counter each source exposes moved by what the client
/// counted under the same name.
pub fn monitoring(client: &Counters, sources: &[(&str, &Counters, &Counters)]) -> Judgement {
    let mut p = Vec::new();
    let mut checked = 0;
    for (name, before, after) in sources {
        if after.is_empty() {
            p.push(format!("{name} exposes none of the counters"));
            continue;
        }
        for (key, now) in after.iter() {
            let delta = now.saturating_sub(before.get(key).copied().unwrap_or(0));
            let saw = client.get(key).copied().unwrap_or(0);
            checked += 1;
            if delta != saw {
                p.push(format!(
                    "{name} {key} moved by {delta}, the client saw {saw}"
                ));
            }
        }
        for (key, saw) in client {
            if !after.contains_key(key) {
                p.push(format!(
                    "{name} has no counter {key} (the client saw {saw})"
                ));
            }
        }
    }
    let sum = |prefix: &str| -> u64 {
        client
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    let observed = format!(
        "{checked} counters compared, {} off (the client saw {} accepted, {} refused, {} messages accepted, {} rejected, {} sessions closed)",
        p.len(),
        sum("connections_accepted"),
        sum("connections_rejected."),
        sum("messages_accepted"),
        sum("messages_rejected."),
        sum("sessions_closed.")
    );
    Judgement::from_problems(observed, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(attempts: u64, banners: u64, refused: u64, closed: u64) -> DoorCounts {
        DoorCounts {
            attempts,
            banners,
            refused,
            closed,
            other: 0,
        }
    }

    #[test]
    fn a_connection_limit_passes_with_exactly_limit_banners_and_421s_for_the_rest() {
        let none = BTreeMap::new();
        assert_eq!(
            connection_limit(20, &counts(22, 20, 2, 0), &none).verdict,
            Verdict::Pass
        );
        let j = connection_limit(20, &counts(22, 22, 0, 0), &none);
        assert!(j.reason.unwrap().contains("not enforced"));
        let j = connection_limit(20, &counts(22, 20, 0, 2), &none);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.reason.unwrap().contains("closed without reply"));
        let j = connection_limit(20, &counts(22, 18, 4, 0), &none);
        assert!(j.reason.unwrap().contains("2 fewer"));
        let lost = BTreeMap::from([("421 4.4.2".to_string(), 1)]);
        assert_eq!(
            connection_limit(20, &counts(22, 20, 2, 0), &lost).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn a_rate_passes_between_the_burst_and_the_allowance() {
        let b = RateLimit {
            count: 10,
            window_s: 10.0,
        };
        assert_eq!(rate(b, 0.5, &counts(15, 10, 5, 0)).verdict, Verdict::Pass);
        // one token back after a second
        assert_eq!(rate(b, 1.2, &counts(15, 11, 4, 0)).verdict, Verdict::Pass);
        let j = rate(b, 0.5, &counts(15, 15, 0, 0));
        assert!(j.reason.unwrap().contains("not enforced"));
        let j = rate(b, 0.5, &counts(15, 8, 7, 0));
        assert!(j.reason.unwrap().contains("fewer than the burst"));
    }

    #[test]
    fn a_timeout_passes_with_a_421_on_time() {
        let end = |how: &str, code, s| Ending {
            how: how.into(),
            code,
            after: Duration::from_secs_f64(s),
        };
        assert_eq!(
            timeout(5.0, &end("421 4.4.2", Some(421), 5.2)).verdict,
            Verdict::Pass
        );
        let j = timeout(5.0, &end("421 4.4.2", Some(421), 6.0));
        assert!(j.reason.unwrap().contains("outside"));
        let j = timeout(5.0, &end(CLOSED_WITHOUT_REPLY, None, 5.0));
        assert!(j.reason.unwrap().contains("closed without reply"));
        let j = timeout(5.0, &end("no reply (timeout)", None, 6.5));
        assert!(j.reason.unwrap().contains("did not end"));
    }

    #[test]
    fn a_script_names_each_step_that_missed() {
        let step = |what, wanted, code: u16| Step {
            what,
            wanted,
            heard: code.to_string(),
            code: Some(code),
        };
        assert_eq!(
            script(&[step("MAIL SIZE", 552, 552)]).verdict,
            Verdict::Pass
        );
        let j = script(&[step("MAIL SIZE", 552, 250), step("RSET", 250, 250)]);
        assert_eq!(j.reason.as_deref(), Some("MAIL SIZE: 250 instead of 552"));
    }

    #[test]
    fn counters_must_move_by_what_the_client_saw() {
        let client = Counters::from([("connections_accepted".to_string(), 3)]);
        let before = Counters::from([
            ("connections_accepted".to_string(), 10),
            ("connections_rejected.rate_limit".to_string(), 1),
        ]);
        let good = Counters::from([
            ("connections_accepted".to_string(), 13),
            ("connections_rejected.rate_limit".to_string(), 1),
        ]);
        assert_eq!(
            monitoring(&client, &[("s", &before, &good)]).verdict,
            Verdict::Pass
        );
        let lying = Counters::from([
            ("connections_accepted".to_string(), 10),
            ("connections_rejected.rate_limit".to_string(), 1),
        ]);
        let j = monitoring(&client, &[("s", &before, &lying)]);
        assert!(
            j.reason
                .unwrap()
                .contains("connections_accepted moved by 0, the client saw 3")
        );
        let j = monitoring(&client, &[("m", &Counters::new(), &Counters::new())]);
        assert_eq!(j.verdict, Verdict::Fail);
    }
}
