//! Measurement: what happened to every message, kept in histograms and counters so
//! memory stays flat however many messages a run sends.
//!
//! What goes where:
//! - `total`: for each successful message, from its start (connect, or MAIL on a
//!   reused connection) to its last reply: the 250 after the final dot, or the 221
//!   to QUIT when the message ends its session.
//! - `corrected` (sustained mode): completion minus the *scheduled* start (wrk2's
//!   coordinated-omission correction); a send that had to wait for a free session
//!   or a late timer carries that wait.
//! - phases: every phase that got a reply, whatever the outcome.
//! - failures by code or class; every final reply code in `replies`.
//! - per second (by completion time) for the timeline, per server for `per_server`.

use std::collections::BTreeMap;
use std::time::Instant;

use report::{LatencyHistogram, Phase, new_latency_histogram, record_latency};

use crate::client::{ErrorKey, Failure, PhaseTimings, micros};

/// What happened to one message.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    pub server: usize,
    /// When the timetable wanted it sent (sustained mode).
    pub scheduled: Option<Instant>,
    pub started: Instant,
    pub finished: Instant,
    pub timings: PhaseTimings,
    /// The final reply code on success.
    pub outcome: Result<u16, Failure>,
    /// Bytes of DATA content written for it (0 when it never got that far).
    pub bytes: u64,
    /// Started later than its scheduled time plus the tolerance.
    pub late: bool,
}

/// Counters of a run or of one server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub connection_errors: u64,
    pub timeouts: u64,
    pub errors: BTreeMap<ErrorKey, u64>,
}

impl Counts {
    fn add(&mut self, outcome: &Result<u16, Failure>) {
        self.total += 1;
        match outcome {
            Ok(_) => self.ok += 1,
            Err(f) => {
                self.failed += 1;
                if f.kind.is_connection_error() {
                    self.connection_errors += 1;
                }
                if f.kind == crate::client::FailureKind::Timeout {
                    self.timeouts += 1;
                }
                *self.errors.entry(f.key()).or_default() += 1;
            }
        }
    }
}

#[derive(Debug)]
pub struct ServerStats {
    pub counts: Counts,
    pub total: LatencyHistogram,
}

/// Counters of one second of the timeline.
#[derive(Debug, Clone, Copy, Default)]
struct Second {
    sent: u64,
    ok: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Per-second figures; one small entry per second, nothing per message.
#[derive(Debug)]
struct Timeline {
    seconds: Vec<Second>,
    open: usize,
    hist: LatencyHistogram,
}

impl Timeline {
    fn slot(&mut self, s: usize) -> &mut Second {
        if self.seconds.len() <= s {
            self.seconds.resize(s + 1, Second::default());
        }
        &mut self.seconds[s]
    }

    fn close_open_second(&mut self) {
        if !self.hist.is_empty() {
            let (p50, p99) = (
                self.hist.value_at_quantile(0.5) as f64 / 1000.0,
                self.hist.value_at_quantile(0.99) as f64 / 1000.0,
            );
            let open = self.open;
            let sec = self.slot(open);
            sec.p50_ms = p50;
            sec.p99_ms = p99;
            self.hist.reset();
        }
    }
}

/// Everything measured during a run.
#[derive(Debug)]
pub struct Stats {
    pub origin: Instant,
    pub counts: Counts,
    pub replies: BTreeMap<u16, u64>,
    pub total: LatencyHistogram,
    pub corrected: Option<LatencyHistogram>,
    pub phases: [LatencyHistogram; Phase::COUNT],
    pub servers: Vec<ServerStats>,
    pub bytes_sent: u64,
    pub late_sends: u64,
    /// Sends the dispatcher itself released late (the generator ran behind).
    pub generator_late_sends: u64,
    pub last_completion: Option<Instant>,
    timeline: Timeline,
}

impl Stats {
    pub fn new(origin: Instant, servers: usize, corrected: bool) -> Self {
        Stats {
            origin,
            counts: Counts::default(),
            replies: BTreeMap::new(),
            total: new_latency_histogram(),
            corrected: corrected.then(new_latency_histogram),
            phases: std::array::from_fn(|_| new_latency_histogram()),
            servers: (0..servers)
                .map(|_| ServerStats {
                    counts: Counts::default(),
                    total: new_latency_histogram(),
                })
                .collect(),
            bytes_sent: 0,
            late_sends: 0,
            generator_late_sends: 0,
            last_completion: None,
            timeline: Timeline {
                seconds: Vec::new(),
                open: 0,
                hist: new_latency_histogram(),
            },
        }
    }

    fn second_of(&self, t: Instant) -> usize {
        t.saturating_duration_since(self.origin).as_secs() as usize
    }

    pub fn record(&mut self, r: &MessageRecord) {
        self.counts.add(&r.outcome);
        self.servers[r.server].counts.add(&r.outcome);
        match r.outcome {
            Ok(code) => *self.replies.entry(code).or_default() += 1,
            Err(Failure {
                kind: crate::client::FailureKind::Reply(code),
                ..
            }) => *self.replies.entry(code).or_default() += 1,
            Err(_) => {}
        }
        for (h, t) in self.phases.iter_mut().zip(r.timings.0) {
            if let Some(us) = t {
                record_latency(h, us);
            }
        }
        self.bytes_sent += r.bytes;
        self.late_sends += u64::from(r.late);
        if self.last_completion.is_none_or(|l| r.finished > l) {
            self.last_completion = Some(r.finished);
        }

        let sent_second = self.second_of(r.scheduled.unwrap_or(r.started));
        let done_second = self.second_of(r.finished);
        self.timeline.slot(sent_second).sent += 1;
        if r.outcome.is_ok() {
            self.timeline.slot(done_second).ok += 1;
        } else {
            self.timeline.slot(done_second).failed += 1;
        }

        if r.outcome.is_ok() {
            let us = micros(r.finished - r.started);
            record_latency(&mut self.total, us);
            record_latency(&mut self.servers[r.server].total, us);
            if let (Some(h), Some(s)) = (&mut self.corrected, r.scheduled) {
                record_latency(h, micros(r.finished.saturating_duration_since(s)));
            }
            if done_second > self.timeline.open {
                self.timeline.close_open_second();
                self.timeline.open = done_second;
            }
            record_latency(&mut self.timeline.hist, us);
        }
    }

    /// One point per second, `seconds` long at least (the run's length).
    pub fn timeline(&mut self, seconds: usize) -> Vec<report::TimelinePoint> {
        self.timeline.close_open_second();
        if self.timeline.seconds.len() < seconds {
            self.timeline.slot(seconds - 1);
        }
        self.timeline
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| report::TimelinePoint {
                t_s: i as u64 + 1,
                sent: s.sent,
                ok: s.ok,
                failed: s.failed,
                p50_ms: s.p50_ms,
                p99_ms: s.p99_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::FailureKind;

    fn rec(
        origin: Instant,
        server: usize,
        at_ms: u64,
        outcome: Result<u16, Failure>,
    ) -> MessageRecord {
        let started = origin + Duration::from_millis(at_ms);
        MessageRecord {
            server,
            scheduled: Some(started),
            started,
            finished: started + Duration::from_millis(2),
            timings: PhaseTimings::default(),
            outcome,
            bytes: 100,
            late: false,
        }
    }

    #[test]
    fn counts_add_up_per_server_and_per_second() {
        let o = Instant::now();
        let mut s = Stats::new(o, 2, true);
        let fail = |kind| {
            Err(Failure {
                phase: Phase::Mail,
                kind,
            })
        };
        s.record(&rec(o, 0, 10, Ok(250)));
        s.record(&rec(o, 1, 20, fail(FailureKind::Reply(451))));
        s.record(&rec(o, 0, 1500, fail(FailureKind::ConnectionRefused)));
        s.record(&rec(o, 1, 2500, fail(FailureKind::Timeout)));
        s.record(&rec(o, 1, 2600, Ok(250)));
        assert_eq!((s.counts.total, s.counts.ok, s.counts.failed), (5, 2, 3));
        assert_eq!(s.counts.connection_errors, 1);
        assert_eq!(s.counts.timeouts, 1);
        assert_eq!(s.servers[0].counts.total + s.servers[1].counts.total, 5);
        assert_eq!(s.replies.get(&250), Some(&2));
        assert_eq!(s.replies.get(&451), Some(&1));
        assert_eq!(s.total.len(), 2);
        assert_eq!(s.corrected.as_ref().unwrap().len(), 2);
        let t = s.timeline(4);
        assert_eq!(t.len(), 4);
        assert_eq!(t.iter().map(|p| p.sent).sum::<u64>(), 5);
        assert_eq!((t[0].ok, t[0].failed, t[2].ok, t[2].failed), (1, 1, 1, 1));
        assert!(t[0].p99_ms >= 2.0 && t[3].sent == 0);
    }
}
