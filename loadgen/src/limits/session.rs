//! The one-session cases: idle and session timeouts (how long until the server's
//! 421), and the message-size and recipient limits (a scripted transaction whose
//! every reply is checked).

use std::time::{Duration, Instant};

use crate::limits::judge::{self, Ending, Judgement, Skip, Step};
use crate::limits::plan;
use crate::limits::probe::{Door, Heard, Probe, Seen, knock};
use crate::limits::{Ctx, Observed};

/// A session case opens one connection; a timeout case watches it this much longer
/// than the expectation (plus the tolerance) before it calls it "did not end".
const OVERTIME: f64 = 1.0;
/// The session case says NOOP this often (or at a third of the idle timeout).
const ACTIVITY: Duration = Duration::from_secs(1);
/// Largest message the size case sends (it sends a little more than the limit).
const MAX_SIZE_SENT: u64 = 256 * 1024 * 1024;
/// Assumed loopback throughput for the size case's estimate, bytes per second.
const SEND_RATE: f64 = 20e6;
/// Most recipients the recipients case names.
const MAX_RECIPIENTS_SENT: u64 = 10_000;
/// Bytes per write of a large body.
const CHUNK: usize = 64 * 1024;

const SENDER: &str = "MAIL FROM:<limits@stampede.test>";
/// The recipients case's step beyond the limit.
const RCPT_EXTRA: &str = "RCPT limit+1";

#[derive(Debug)]
pub enum Plan {
    Idle { expected_s: f64 },
    Session { expected_s: f64, activity: Duration },
    Size { limit: u64 },
    Recipients { limit: u64 },
}

fn skip(expected: String, reason: impl Into<String>) -> Skip {
    Skip {
        expected,
        reason: reason.into(),
    }
}

fn timed(ctx: &Ctx<'_>, plan: Plan, estimate_s: f64) -> Result<super::Plan, Skip> {
    match plan::too_long(estimate_s, ctx.settings.max_case_time.as_secs_f64()) {
        Some(r) => Err(skip(plan.expected(), r)),
        None => Ok(super::Plan::Session(plan)),
    }
}

pub fn idle(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(expected_s) = ctx.expect.idle_timeout_s else {
        return Err(skip(String::new(), "no idle-timeout expectation"));
    };
    timed(
        ctx,
        Plan::Idle { expected_s },
        expected_s * 1.1 + OVERTIME + 1.0,
    )
}

pub fn session(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(expected_s) = ctx.expect.session_timeout_s else {
        return Err(skip(String::new(), "no session-timeout expectation"));
    };
    let activity = ctx
        .expect
        .idle_timeout_s
        .map_or(ACTIVITY, |s| ACTIVITY.min(Duration::from_secs_f64(s / 3.0)));
    timed(
        ctx,
        Plan::Session {
            expected_s,
            activity,
        },
        expected_s * 1.1 + OVERTIME + 1.0,
    )
}

pub fn size(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(limit) = ctx.expect.max_message_size else {
        return Err(skip(String::new(), "no max-message-size expectation"));
    };
    let plan = Plan::Size { limit };
    if limit > MAX_SIZE_SENT {
        return Err(skip(
            plan.expected(),
            format!("the limit ({limit} bytes) is above what the suite sends ({MAX_SIZE_SENT})"),
        ));
    }
    timed(ctx, plan, limit as f64 / SEND_RATE + 3.0)
}

pub fn recipients(ctx: &mut Ctx<'_>) -> Result<super::Plan, Skip> {
    let Some(limit) = ctx.expect.max_recipients else {
        return Err(skip(String::new(), "no max-recipients expectation"));
    };
    let plan = Plan::Recipients { limit };
    if limit >= MAX_RECIPIENTS_SENT {
        return Err(skip(
            plan.expected(),
            format!("the limit ({limit}) is above what the suite sends ({MAX_RECIPIENTS_SENT})"),
        ));
    }
    timed(ctx, plan, limit as f64 * 0.01 + 2.0)
}

impl Plan {
    pub fn expected(&self) -> String {
        match self {
            Plan::Idle { expected_s } => format!(
                "421 after {expected_s:.1} s of silence after EHLO (± {:.2} s)",
                plan::timeout_tolerance(*expected_s)
            ),
            Plan::Session { expected_s, .. } => format!(
                "421 {expected_s:.1} s into an active session (± {:.2} s)",
                plan::timeout_tolerance(*expected_s)
            ),
            Plan::Size { limit } => format!(
                "552 at MAIL SIZE={}; 552 after a {}-byte DATA; then RSET 250 and a message 250",
                limit + 1,
                limit + 1024
            ),
            Plan::Recipients { limit } => {
                format!("{limit} RCPT 250, the next 452 (4.5.3); the message still 250")
            }
        }
    }

    pub async fn drive(&self, ctx: &mut Ctx<'_>) -> Observed {
        let source = ctx.fresh_sources(1)[0];
        let settings = ctx.settings;
        let mut seen = Seen::default();
        let connected = Instant::now();
        let door = knock(source, settings.server, settings.reply_timeout).await;
        seen.note(door.label());
        ctx.spent(1, 1);
        let mut probe = match door {
            Door::Banner(p) => p,
            d => {
                if d.is_refusal() {
                    seen.note("(refused at the door: a limit of an earlier case spilled over?)");
                }
                return Observed {
                    judgement: Judgement::fail(d.label(), format!("no session ({})", d.label())),
                    seen,
                    connections: 1,
                };
            }
        };
        ctx.note_accepted(1);
        let ehlo = probe.command("EHLO limits.stampede.test").await;
        seen.heard(&ehlo);
        if ehlo.code() != Some(250) {
            return Observed {
                judgement: Judgement::fail(ehlo.label(), format!("EHLO got {}", ehlo.label())),
                seen,
                connections: 1,
            };
        }
        let judgement = match self {
            Plan::Idle { expected_s } => {
                let end = idle_ending(&mut probe, *expected_s).await;
                seen.note(end.how.clone());
                if end.code == Some(421) {
                    ctx.count("sessions_closed.idle_timeout", 1);
                }
                judge::timeout(*expected_s, &end)
            }
            Plan::Session {
                expected_s,
                activity,
            } => {
                let end = session_ending(&mut probe, *expected_s, *activity, connected).await;
                seen.note(end.how.clone());
                if end.code == Some(421) {
                    ctx.count("sessions_closed.session_timeout", 1);
                }
                judge::timeout(*expected_s, &end)
            }
            Plan::Size { limit } => {
                let steps = size_script(&mut probe, *limit).await;
                tally_script(ctx, &steps, &mut seen);
                judge::script(&steps)
            }
            Plan::Recipients { limit } => {
                let steps = recipients_script(&mut probe, *limit).await;
                tally_script(ctx, &steps, &mut seen);
                judge::script(&steps)
            }
        };
        probe.quit().await;
        Observed {
            judgement,
            seen,
            connections: 1,
        }
    }
}

fn tally_script(ctx: &mut Ctx<'_>, steps: &[Step], seen: &mut Seen) {
    for s in steps {
        seen.note(s.heard.clone());
        if s.code == Some(552) {
            ctx.count("messages_rejected.size", 1);
        }
        if s.code == Some(452) && s.what == RCPT_EXTRA {
            ctx.count("recipients_rejected.max_recipients", 1);
        }
        if s.what.ends_with("final dot") && s.code == Some(250) {
            ctx.count("messages_accepted", 1);
        }
    }
}

fn ending(heard: &Heard, since: Instant) -> Ending {
    Ending {
        how: heard.label(),
        code: heard.code(),
        after: since.elapsed(),
    }
}

/// Silence after EHLO until the server speaks or closes.
async fn idle_ending(probe: &mut Probe, expected_s: f64) -> Ending {
    let since = Instant::now();
    let wait = expected_s + plan::timeout_tolerance(expected_s) + OVERTIME;
    let heard = probe.reply_within(Duration::from_secs_f64(wait)).await;
    ending(&heard, since)
}

/// NOOP every `activity` until something other than 250 comes; a reply the server
/// sends on its own between NOOPs is seen when it arrives.
async fn session_ending(
    probe: &mut Probe,
    expected_s: f64,
    activity: Duration,
    connected: Instant,
) -> Ending {
    let give_up = connected
        + Duration::from_secs_f64(expected_s + plan::timeout_tolerance(expected_s) + OVERTIME);
    loop {
        let unsolicited = probe.reply_within(activity).await;
        if unsolicited != Heard::Silence {
            return ending(&unsolicited, connected);
        }
        if Instant::now() > give_up {
            return Ending {
                how: "still answering NOOP".into(),
                code: None,
                after: connected.elapsed(),
            };
        }
        let heard = probe.command("NOOP").await;
        if heard.code() != Some(250) {
            return ending(&heard, connected);
        }
    }
}

fn step(what: &'static str, wanted: u16, heard: &Heard) -> Step {
    Step {
        what,
        wanted,
        heard: heard.label(),
        code: heard.code(),
    }
}

/// Whether the session can go on after this reply.
fn alive(heard: &Heard) -> bool {
    matches!(heard, Heard::Reply(r) if r.code != 421)
}

/// Runs (what, command, wanted) steps, stopping at a closed session.
async fn commands(
    probe: &mut Probe,
    steps: &mut Vec<Step>,
    script: &[(&'static str, String, u16)],
) -> bool {
    for (what, line, wanted) in script {
        let heard = probe.command(line).await;
        steps.push(step(what, *wanted, &heard));
        if !alive(&heard) {
            return false;
        }
    }
    true
}

/// A small message and its final dot.
async fn small_message(probe: &mut Probe, steps: &mut Vec<Step>, what: &'static str) {
    let body = b"Subject: limits\r\n\r\nStampede limits suite.\r\n.\r\n";
    let heard = if probe.send(body).await {
        probe.reply().await
    } else {
        Heard::Closed
    };
    steps.push(step(what, 250, &heard));
}

async fn size_script(probe: &mut Probe, limit: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    let script = [
        (
            "MAIL SIZE=limit+1",
            format!("{SENDER} SIZE={}", limit + 1),
            552,
        ),
        ("RSET", "RSET".to_string(), 250),
        ("MAIL", SENDER.to_string(), 250),
        ("RCPT", "RCPT TO:<limits@example.test>".to_string(), 250),
        ("DATA", "DATA".to_string(), 354),
    ];
    if !commands(probe, &mut steps, &script).await || steps.last().and_then(|s| s.code) != Some(354)
    {
        return steps;
    }
    let heard = send_oversized(probe, limit + 1024).await;
    steps.push(step("oversized DATA final dot", 552, &heard));
    if !alive(&heard) {
        return steps;
    }
    let after = [
        ("RSET after", "RSET".to_string(), 250),
        ("MAIL again", SENDER.to_string(), 250),
        (
            "RCPT again",
            "RCPT TO:<limits@example.test>".to_string(),
            250,
        ),
        ("DATA again", "DATA".to_string(), 354),
    ];
    if commands(probe, &mut steps, &after).await && steps.last().and_then(|s| s.code) == Some(354) {
        small_message(probe, &mut steps, "message final dot").await;
    }
    steps
}

/// Sends a body of about `size` bytes (76-character lines) and the final dot.
async fn send_oversized(probe: &mut Probe, size: u64) -> Heard {
    let line = [b"Subject: limits oversized\r\n\r\n".as_slice()].concat();
    if !probe.send(&line).await {
        return Heard::Closed;
    }
    let mut row = vec![b'x'; 76];
    row.extend_from_slice(b"\r\n");
    let chunk: Vec<u8> = row
        .iter()
        .copied()
        .cycle()
        .take(CHUNK / row.len() * row.len())
        .collect();
    let mut sent = 0u64;
    while sent < size {
        if !probe.send(&chunk).await {
            return Heard::Closed;
        }
        sent += chunk.len() as u64;
    }
    if !probe.send(b".\r\n").await {
        return Heard::Closed;
    }
    probe.reply().await
}

async fn recipients_script(probe: &mut Probe, limit: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    if !commands(probe, &mut steps, &[("MAIL", SENDER.to_string(), 250)]).await {
        return steps;
    }
    // The first recipient that is not accepted, if any, stands for all of them.
    for i in 1..=limit {
        let heard = probe
            .command(&format!("RCPT TO:<limits{i}@example.test>"))
            .await;
        if heard.code() != Some(250) || i == limit {
            steps.push(step("RCPT 1..limit", 250, &heard));
        }
        if heard.code() != Some(250) {
            if !alive(&heard) {
                return steps;
            }
            break;
        }
    }
    let script = [
        (
            "RCPT limit+1",
            "RCPT TO:<limits-extra@example.test>".to_string(),
            452,
        ),
        ("DATA", "DATA".to_string(), 354),
    ];
    if commands(probe, &mut steps, &script).await && steps.last().and_then(|s| s.code) == Some(354)
    {
        small_message(probe, &mut steps, "message final dot").await;
    }
    steps
}
