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
//! - what each TLS handshake negotiated, counted by version and cipher suite.
//! - per bucket of time (by completion time; one second, or less in a short run)
//!   for the timeline, per server for `per_server`.
//! - with `--source-ips`, each new connection by its source address and by how
//!   the server greeted it, for `per_source`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use report::{LatencyHistogram, Phase, new_latency_histogram, record_latency};

use crate::client::{ErrorKey, Failure, FailureKind, PhaseTimings, micros};
use crate::tls::Handshake;

/// What happened to one message.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    pub server: usize,
    /// When the timetable wanted it sent (open model).
    pub scheduled: Option<Instant>,
    /// The stage it was due in (open model).
    pub stage: Option<u32>,
    pub started: Instant,
    pub finished: Instant,
    pub timings: PhaseTimings,
    /// The final reply code on success.
    pub outcome: Result<u16, Failure>,
    /// Bytes of DATA content written for it (0 when it never got that far).
    pub bytes: u64,
    /// Started later than its scheduled time plus the tolerance.
    pub late: bool,
    /// The TLS handshake of the connection this message opened, if it did one.
    pub handshake: Option<Handshake>,
    /// The source address of the connection this message opened, when it opened
    /// one and the run has `--source-ips`.
    pub source: Option<IpAddr>,
}

/// How the server met one new connection, as `per_source` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// A 220 banner.
    Banner,
    /// A 421 in place of the banner: a limit refused the connection.
    Refused421,
    /// Another code in place of the banner, garbage, or a close without any.
    RefusedOther,
    /// The TCP connect itself failed (refused, timed out, no route).
    ConnectFailed,
    /// No banner before the timeout or the drain time, or an implicit-TLS
    /// handshake that failed before any banner.
    Unanswered,
}

impl Greeting {
    /// The greeting of the connection a message opened, from how far it got
    /// (`timings` tell whether a banner was read before a TLS failure: STARTTLS
    /// comes after it, implicit TLS before).
    pub fn of(timings: &PhaseTimings, outcome: &Result<u16, Failure>) -> Greeting {
        let Err(f) = outcome else {
            return Greeting::Banner;
        };
        match (f.phase, f.kind) {
            (Phase::Connect, _) => Greeting::ConnectFailed,
            (Phase::Banner, FailureKind::Reply(421)) => Greeting::Refused421,
            (
                Phase::Banner,
                FailureKind::Reply(_)
                | FailureKind::ConnectionClosed
                | FailureKind::ConnectionReset
                | FailureKind::Protocol,
            ) => Greeting::RefusedOther,
            (Phase::Banner, _) => Greeting::Unanswered,
            (Phase::Tls, _) if timings.get(Phase::Banner).is_none() => Greeting::Unanswered,
            // Every later phase follows a 220.
            _ => Greeting::Banner,
        }
    }
}

/// The connections of one source address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub connections: u64,
    pub banners: u64,
    pub refused_421: u64,
    pub refused_other: u64,
    pub connect_failed: u64,
    pub unanswered: u64,
}

impl SourceCounts {
    fn add(&mut self, g: Greeting) {
        self.connections += 1;
        *match g {
            Greeting::Banner => &mut self.banners,
            Greeting::Refused421 => &mut self.refused_421,
            Greeting::RefusedOther => &mut self.refused_other,
            Greeting::ConnectFailed => &mut self.connect_failed,
            Greeting::Unanswered => &mut self.unanswered,
        } += 1;
    }
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
                if f.kind.is_timeout() {
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

/// Counters of one bucket of the timeline.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    sent: u64,
    ok: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Figures per bucket of `width`; one small entry per bucket, nothing per message.
/// A timeline with a `cap` stops growing there: it only serves runs short enough
/// to fit, and costs nothing afterwards.
#[derive(Debug)]
struct Timeline {
    width: Duration,
    cap: Option<usize>,
    buckets: Vec<Bucket>,
    open: usize,
    hist: LatencyHistogram,
}

impl Timeline {
    fn new(width: Duration, cap: Option<usize>) -> Self {
        Timeline {
            width,
            cap,
            buckets: Vec::new(),
            open: 0,
            hist: new_latency_histogram(),
        }
    }

    /// The bucket of a time `micros` after the origin. In whole microseconds, so
    /// the five timelines cost five u64 divisions a message, not u128 ones.
    fn bucket_of(&self, micros: u64) -> usize {
        (micros / self.width.as_micros() as u64) as usize
    }

    /// The bucket `b`, or `None` past the cap.
    fn slot(&mut self, b: usize) -> Option<&mut Bucket> {
        if self.cap.is_some_and(|cap| b >= cap) {
            return None;
        }
        if self.buckets.len() <= b {
            self.buckets.resize(b + 1, Bucket::default());
        }
        Some(&mut self.buckets[b])
    }

    /// Counts a message sent at `sent` and finished at `done` (µs since the
    /// origin), with its latency when it succeeded.
    fn record(&mut self, sent: u64, done: u64, ok_latency_us: Option<u64>) {
        let (sent, done) = (self.bucket_of(sent), self.bucket_of(done));
        if let Some(b) = self.slot(sent) {
            b.sent += 1;
        }
        let Some(b) = self.slot(done) else { return };
        match ok_latency_us {
            Some(us) => {
                b.ok += 1;
                // Completions arrive nearly in order: percentiles are kept for the
                // newest bucket only, and a straggler counts in it.
                if done > self.open {
                    self.close_open_bucket();
                    self.open = done;
                }
                record_latency(&mut self.hist, us);
            }
            None => b.failed += 1,
        }
    }

    fn close_open_bucket(&mut self) {
        if !self.hist.is_empty() {
            let (p50, p99) = (
                self.hist.value_at_quantile(0.5) as f64 / 1000.0,
                self.hist.value_at_quantile(0.99) as f64 / 1000.0,
            );
            let open = self.open;
            if let Some(b) = self.slot(open) {
                b.p50_ms = p50;
                b.p99_ms = p99;
            }
            self.hist.reset();
        }
    }

    /// The points, `len` buckets long at least.
    fn points(&mut self, len: usize) -> Vec<report::TimelinePoint> {
        self.close_open_bucket();
        if len > 0 && self.buckets.len() < len {
            self.slot(len - 1);
        }
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| report::TimelinePoint {
                t_s: i as u64 + 1,
                sent: b.sent,
                ok: b.ok,
                failed: b.failed,
                p50_ms: b.p50_ms,
                p99_ms: b.p99_ms,
            })
            .collect()
    }
}

/// Runs at least this long keep one-second buckets.
const LONG_RUN: Duration = Duration::from_secs(10);
/// Bucket widths a shorter run may use, finest first; the finest that gives a
/// readable chart wins (see [`Stats::timeline`]).
const SHORT_RUN_WIDTHS_MS: [u64; 4] = [1, 5, 20, 100];
/// At most this many buckets in a short run's timeline (100 ms × 200 covers
/// [`LONG_RUN`] twice over).
const MAX_SHORT_BUCKETS: usize = 200;
/// A bucket width is fine enough to chart when its buckets average this many
/// messages; thinner ones draw noise (3 a bucket swings by a third at random).
const MIN_MESSAGES_PER_BUCKET: u64 = 10;

/// Buckets of `width` that cover `duration` (one at least).
fn buckets_in(duration: Duration, width: Duration) -> usize {
    (duration.as_nanos().div_ceil(width.as_nanos()) as usize).max(1)
}

/// The bucket width for a run of `duration` with `messages`: one second for long
/// runs, or for short runs with too few messages to fill finer buckets; else the
/// finest width that keeps the chart within [`MAX_SHORT_BUCKETS`] points of
/// [`MIN_MESSAGES_PER_BUCKET`] messages on average.
fn bucket_width(duration: Duration, messages: u64) -> Duration {
    if duration >= LONG_RUN {
        return Duration::from_secs(1);
    }
    SHORT_RUN_WIDTHS_MS
        .iter()
        .map(|&ms| Duration::from_millis(ms))
        .find(|&w| {
            let n = buckets_in(duration, w);
            n <= MAX_SHORT_BUCKETS && messages >= MIN_MESSAGES_PER_BUCKET * n as u64
        })
        .unwrap_or(Duration::from_secs(1))
}

/// The TLS handshakes of a run. Keyed by rustls' static names, so counting one
/// allocates only the first time a version or suite is seen.
#[derive(Debug, Default)]
pub struct TlsTally {
    pub handshakes: u64,
    pub resumed: u64,
    pub versions: BTreeMap<&'static str, u64>,
    pub cipher_suites: BTreeMap<&'static str, u64>,
}

impl TlsTally {
    fn add(&mut self, h: &Handshake) {
        self.handshakes += 1;
        self.resumed += u64::from(h.resumed);
        *self.versions.entry(h.version).or_default() += 1;
        *self.cipher_suites.entry(h.cipher_suite).or_default() += 1;
    }
}

/// The figures of one stage (stages mode): its messages by due time.
#[derive(Debug)]
pub struct StageStats {
    pub counts: Counts,
    pub late: u64,
    pub total: LatencyHistogram,
    pub corrected: LatencyHistogram,
}

impl StageStats {
    fn new() -> Self {
        StageStats {
            counts: Counts::default(),
            late: 0,
            total: new_latency_histogram(),
            corrected: new_latency_histogram(),
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
    pub tls: TlsTally,
    /// Stages mode: one entry per stage, the warmup left out as everywhere.
    pub stages: Vec<StageStats>,
    /// `--source-ips`: the connections opened from each address.
    pub sources: BTreeMap<IpAddr, SourceCounts>,
    /// Messages due before `origin + warmup` only count in the timeline.
    warmup: Duration,
    /// One-second buckets, for any run.
    timeline: Timeline,
    /// Finer buckets ([`SHORT_RUN_WIDTHS_MS`]), for the first seconds only.
    short_timelines: Vec<Timeline>,
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
            tls: TlsTally::default(),
            stages: Vec::new(),
            sources: BTreeMap::new(),
            warmup: Duration::ZERO,
            timeline: Timeline::new(Duration::from_secs(1), None),
            short_timelines: SHORT_RUN_WIDTHS_MS
                .iter()
                .map(|&ms| Timeline::new(Duration::from_millis(ms), Some(MAX_SHORT_BUCKETS)))
                .collect(),
        }
    }

    /// Keeps figures for `count` stages.
    pub fn with_stages(mut self, count: usize) -> Self {
        self.stages = (0..count).map(|_| StageStats::new()).collect();
        self
    }

    /// Leaves the messages due in the first `warmup` out of every figure but the
    /// timeline.
    pub fn with_warmup(mut self, warmup: Duration) -> Self {
        self.warmup = warmup;
        self
    }

    pub fn warmup(&self) -> Duration {
        self.warmup
    }

    pub fn record(&mut self, r: &MessageRecord) {
        if self.last_completion.is_none_or(|l| r.finished > l) {
            self.last_completion = Some(r.finished);
        }
        let ok_latency_us = r.outcome.is_ok().then(|| micros(r.finished - r.started));
        let since = |t: Instant| micros(t.saturating_duration_since(self.origin));
        let sent_at = r.scheduled.unwrap_or(r.started);
        let (sent, done) = (since(sent_at), since(r.finished));
        for t in std::iter::once(&mut self.timeline).chain(&mut self.short_timelines) {
            t.record(sent, done, ok_latency_us);
        }
        if sent_at < self.origin + self.warmup {
            return;
        }
        self.record_figures(r, ok_latency_us);
    }

    /// Everything but the timeline.
    fn record_figures(&mut self, r: &MessageRecord, ok_latency_us: Option<u64>) {
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
        if let Some(h) = &r.handshake {
            self.tls.add(h);
        }
        if let Some(ip) = r.source {
            self.sources
                .entry(ip)
                .or_default()
                .add(Greeting::of(&r.timings, &r.outcome));
        }
        self.bytes_sent += r.bytes;
        self.late_sends += u64::from(r.late);
        let corrected_us = r
            .scheduled
            .map(|s| micros(r.finished.saturating_duration_since(s)));
        if let Some(us) = ok_latency_us {
            record_latency(&mut self.total, us);
            record_latency(&mut self.servers[r.server].total, us);
            if let (Some(h), Some(c)) = (&mut self.corrected, corrected_us) {
                record_latency(h, c);
            }
        }
        if let Some(stage) = r.stage.and_then(|i| self.stages.get_mut(i as usize)) {
            stage.counts.add(&r.outcome);
            stage.late += u64::from(r.late);
            if let (Some(us), Some(c)) = (ok_latency_us, corrected_us) {
                record_latency(&mut stage.total, us);
                record_latency(&mut stage.corrected, c);
            }
        }
    }

    /// The timeline of a run of `duration`, and its bucket width: one-second
    /// buckets for runs of ten seconds or more (at least `ceil(duration)` of
    /// them), finer ones for shorter runs so a run of a fraction of a second
    /// still shows its shape.
    pub fn timeline(&mut self, duration: Duration) -> (Vec<report::TimelinePoint>, Duration) {
        let width = bucket_width(duration, self.counts.total);
        let timeline = self
            .short_timelines
            .iter_mut()
            .find(|t| t.width == width)
            .unwrap_or(&mut self.timeline);
        let len = duration.as_nanos().div_ceil(width.as_nanos()) as usize;
        (timeline.points(len), width)
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
            stage: None,
            started,
            finished: started + Duration::from_millis(2),
            timings: PhaseTimings::default(),
            outcome,
            bytes: 100,
            late: false,
            handshake: None,
            source: None,
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
        let (t, width) = s.timeline(Duration::from_millis(3_500));
        assert_eq!(
            width,
            Duration::from_secs(1),
            "5 messages are too few to split"
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t.iter().map(|p| p.sent).sum::<u64>(), 5);
        assert_eq!((t[0].ok, t[0].failed, t[2].ok, t[2].failed), (1, 1, 1, 1));
        assert!(t[0].p99_ms >= 2.0 && t[3].sent == 0);
    }

    #[test]
    fn short_runs_get_finer_buckets_and_long_runs_keep_seconds() {
        let ms = Duration::from_millis;
        // test-quick: 100 messages in 30 ms; 1 ms buckets would hold 3 or so.
        assert_eq!(bucket_width(ms(30), 100), ms(5));
        assert_eq!(bucket_width(ms(30), 300), ms(1));
        assert_eq!(bucket_width(ms(36), 300), ms(5), "37 buckets of under 10");
        assert_eq!(bucket_width(ms(2_000), 10_000), ms(20));
        assert_eq!(bucket_width(ms(9_900), 10_000), ms(100));
        // Too few messages to fill finer buckets: one point per second, as before.
        assert_eq!(bucket_width(ms(4_000), 100), ms(1_000));
        assert_eq!(bucket_width(Duration::ZERO, 0), ms(1_000));
        // Ten seconds or more: one-second buckets, whatever the count.
        assert_eq!(bucket_width(ms(10_000), 1_000_000), ms(1_000));
    }

    #[test]
    fn a_short_run_is_counted_in_millisecond_buckets() {
        let o = Instant::now();
        let mut s = Stats::new(o, 1, false);
        // 330 messages started over 30 ms, each finishing 2 ms after its start.
        for i in 0..330 {
            s.record(&rec(o, 0, i % 30, Ok(250)));
        }
        let (t, width) = s.timeline(Duration::from_millis(32));
        assert_eq!(width, Duration::from_millis(1));
        assert_eq!(t.len(), 32);
        assert_eq!(t.iter().map(|p| p.sent).sum::<u64>(), 330);
        assert_eq!((t[0].sent, t[0].ok, t[2].ok, t[31].ok), (11, 0, 11, 11));
        assert!(t[2].p50_ms >= 2.0 && t[2].p99_ms < 3.0, "{:?}", t[2]);
    }

    #[test]
    fn a_new_connection_is_counted_by_how_the_server_greeted_it() {
        use crate::client::TlsFailure;
        let at = |phase, kind| Err(Failure { phase, kind });
        let rows = [
            (Ok(250), Greeting::Banner),
            (
                at(Phase::Connect, FailureKind::ConnectionRefused),
                Greeting::ConnectFailed,
            ),
            (
                at(Phase::Connect, FailureKind::Timeout),
                Greeting::ConnectFailed,
            ),
            (
                at(Phase::Banner, FailureKind::Reply(421)),
                Greeting::Refused421,
            ),
            (
                at(Phase::Banner, FailureKind::Reply(554)),
                Greeting::RefusedOther,
            ),
            (
                at(Phase::Banner, FailureKind::ConnectionClosed),
                Greeting::RefusedOther,
            ),
            (
                at(Phase::Banner, FailureKind::ConnectionReset),
                Greeting::RefusedOther,
            ),
            (
                at(Phase::Banner, FailureKind::Timeout),
                Greeting::Unanswered,
            ),
            (
                at(Phase::Banner, FailureKind::Aborted),
                Greeting::Unanswered,
            ),
            (
                at(Phase::Tls, FailureKind::Tls(TlsFailure::Handshake)),
                Greeting::Unanswered,
            ),
            (at(Phase::Ehlo, FailureKind::Reply(421)), Greeting::Banner),
            (at(Phase::Rcpt, FailureKind::Reply(550)), Greeting::Banner),
        ];
        let none = PhaseTimings::default();
        for (outcome, want) in rows {
            assert_eq!(Greeting::of(&none, &outcome), want, "{outcome:?}");
        }
        // STARTTLS fails after the banner, implicit TLS before it.
        let mut greeted = PhaseTimings::default();
        greeted.0[Phase::Banner.index()] = Some(300);
        let handshake = at(Phase::Tls, FailureKind::Tls(TlsFailure::Handshake));
        assert_eq!(Greeting::of(&greeted, &handshake), Greeting::Banner);
    }

    #[test]
    fn connections_are_counted_per_source_and_reused_ones_are_not() {
        let o = Instant::now();
        let mut s = Stats::new(o, 1, false);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let refused = Err(Failure {
            phase: Phase::Banner,
            kind: FailureKind::Reply(421),
        });
        for (source, outcome) in [
            (Some(a), Ok(250)),
            (None, Ok(250)),
            (Some(b), refused),
            (Some(a), Ok(250)),
        ] {
            s.record(&MessageRecord {
                source,
                ..rec(o, 0, 1, outcome)
            });
        }
        assert_eq!(s.sources.len(), 2);
        let ca = s.sources[&a];
        assert_eq!((ca.connections, ca.banners, ca.refused_421), (2, 2, 0));
        let cb = s.sources[&b];
        assert_eq!((cb.connections, cb.banners, cb.refused_421), (1, 0, 1));
    }
}
