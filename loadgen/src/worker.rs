//! A worker: one session at a time to one server, sending the messages the
//! [`Plan`] gives it and recording what happened to each.
//!
//! A failed message never stops a worker: a 421 or a dropped connection is counted
//! and the next message opens a new connection, as a real MTA client would. Every
//! wait is bounded: each operation by `--timeout`, the whole worker by the run's
//! `abort` token (the end of the drain time), which cuts whatever is in flight and
//! counts it as `aborted`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio_util::sync::CancellationToken;

use crate::client::{
    Envelope, Failure, FailureKind, Phase, PhaseTimings, Session, SessionSettings,
};
use crate::message::{DateClock, MessageFactory};
use crate::schedule::Plan;
use crate::stats::{MessageRecord, Stats};

/// A connection idle longer than this is closed and reopened rather than reused:
/// servers close idle sessions (the reference server after 120 s, some after far
/// less), and a reply of theirs to a dead session would be miscounted as a failure.
const MAX_IDLE_REUSE: Duration = Duration::from_secs(10);

/// What all workers of a run share.
pub struct RunShared {
    pub plan: Plan,
    pub addrs: Vec<SocketAddr>,
    pub settings: SessionSettings,
    pub factory: MessageFactory,
    /// One per prepared body (they differ in `SIZE=`).
    pub envelopes: Vec<Envelope>,
    pub msgs_per_conn: u32,
    pub late_tolerance: Duration,
    pub stats: Mutex<Stats>,
    /// Take no new message (Ctrl-C).
    pub stop: CancellationToken,
    /// Give up on messages in flight (end of the drain time).
    pub abort: CancellationToken,
    /// Open model: a permit per message due, per server.
    pub gates: Option<crate::schedule::Gates>,
}

/// The state of one worker between messages.
struct Worker {
    shared: Arc<RunShared>,
    server: usize,
    conn: Option<Session>,
    on_conn: u32,
    /// When the connection last finished a message.
    idle_since: Instant,
    headers: Vec<u8>,
    clock: DateClock,
    rng: SmallRng,
}

/// Runs one worker for `server` until its messages run out, `stop` or `abort`.
pub async fn run_worker(shared: Arc<RunShared>, server: usize, seed: u64) {
    let mut w = Worker {
        shared,
        server,
        conn: None,
        on_conn: 0,
        idle_since: Instant::now(),
        headers: Vec::with_capacity(1024),
        clock: DateClock::new(),
        rng: SmallRng::seed_from_u64(seed),
    };
    w.run().await;
}

impl Worker {
    async fn run(&mut self) {
        let shared = Arc::clone(&self.shared);
        loop {
            if shared.stop.is_cancelled() || shared.abort.is_cancelled() {
                break;
            }
            if let Some(gates) = &shared.gates {
                // Wait until the next message of this server falls due.
                tokio::select! {
                    permit = gates[self.server].acquire() => match permit {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    },
                    // Not yet due when the run was stopped: never part of the run.
                    _ = shared.stop.cancelled() => break,
                    _ = shared.abort.cancelled() => break,
                }
            }
            let Some(slot) = shared.plan.claim(self.server) else {
                break;
            };
            if self.idle_since.elapsed() > MAX_IDLE_REUSE
                && let Some(conn) = self.conn.take()
            {
                let mut t = PhaseTimings::default();
                tokio::select! {
                    _ = conn.quit(&mut t) => {}
                    _ = shared.abort.cancelled() => {}
                }
            }
            let started = Instant::now();
            let late = slot
                .due
                .is_some_and(|d| started > d + shared.late_tolerance);

            let body_index = shared.factory.pick(&mut self.rng);
            self.clock.refresh();
            shared
                .factory
                .write_headers(&mut self.headers, slot.seq, &self.clock);
            let mut timings = PhaseTimings::default();
            let outcome = tokio::select! {
                r = self.send(body_index, &mut timings) => Some(r),
                _ = shared.abort.cancelled() => None,
            };
            let outcome = outcome.unwrap_or_else(|| {
                self.conn = None;
                Err(Failure {
                    phase: Phase::Eod,
                    kind: FailureKind::Aborted,
                })
            });
            let bytes = if timings.0[Phase::Eod as usize].is_some() {
                (self.headers.len() + shared.factory.bodies()[body_index].content_len()) as u64
            } else {
                0
            };
            self.idle_since = Instant::now();
            let record = MessageRecord {
                server: self.server,
                scheduled: slot.due,
                started,
                finished: Instant::now(),
                timings,
                outcome,
                bytes,
                late,
            };
            shared
                .stats
                .lock()
                .expect("stats lock poisoned")
                .record(&record);
        }
        if let Some(conn) = self.conn.take() {
            let mut t = PhaseTimings::default();
            tokio::select! {
                _ = conn.quit(&mut t) => {}
                _ = shared.abort.cancelled() => {}
            }
        }
    }

    /// One message on the current connection (opening one when needed), and the
    /// connection's QUIT when the message is its last.
    async fn send(&mut self, body_index: usize, t: &mut PhaseTimings) -> Result<u16, Failure> {
        let shared = Arc::clone(&self.shared);
        let env = &shared.envelopes[body_index];
        if self.conn.is_none() {
            let s = Session::open(shared.addrs[self.server], &shared.settings, env, t).await?;
            self.conn = Some(s);
            self.on_conn = 0;
        }
        let conn = self.conn.as_mut().expect("connection just opened");
        let body = &shared.factory.bodies()[body_index].wire;
        let result = conn.transaction(env, &self.headers, body, t).await;
        self.on_conn += 1;
        match &result {
            Ok(_) => {}
            Err(f) if conn.usable_after(f) && self.on_conn < shared.msgs_per_conn => {
                if conn.reset().await.is_err() {
                    self.conn = None;
                }
            }
            Err(f) if conn.usable_after(f) => {}
            Err(_) => {
                self.conn = None;
                return result;
            }
        }
        if self.on_conn >= shared.msgs_per_conn
            && let Some(conn) = self.conn.take()
        {
            // QUIT belongs to the message that ends the session; its failure does
            // not undo a message the server already accepted.
            let _ = conn.quit(t).await;
        }
        result
    }
}
