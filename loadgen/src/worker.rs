//! A worker: one session at a time to one server, sending the messages the
//! [`Plan`] gives it and recording what happened to each.
//!
//! A failed message never stops a worker: a 421 or a dropped connection is counted
//! and the next message opens a new connection, as a real MTA client would. Every
//! wait is bounded: each operation by `--timeout`, the whole worker by the run's
//! `abort` token (the end of the drain time), which cuts whatever is in flight and
//! counts it as `aborted`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio_util::sync::CancellationToken;

use crate::auth::Logins;
use crate::client::{
    ClientSettings, Connection, Dial, Failure, FailureKind, Phase, PhaseTimings, PreparedCommands,
};
use crate::message::{DateClock, MessageFactory};
use crate::schedule::{Gate, Plan, Slot};
use crate::source_addrs::SourceAddrs;
use crate::stats::{MessageRecord, Stats};
use crate::tls::{Handshake, TlsClient};

/// A connection idle longer than this is closed and reopened rather than reused:
/// servers close idle sessions (the reference server after 120 s, some after far
/// less), and a reply of theirs to a dead session would be miscounted as a failure.
const MAX_IDLE_REUSE: Duration = Duration::from_secs(10);

/// What all workers of a run share.
pub struct RunShared {
    pub plan: Plan,
    pub addrs: Vec<SocketAddr>,
    /// `--source-ips`: each new connection is bound to the next of these.
    pub sources: Option<SourceAddrs>,
    pub settings: ClientSettings,
    /// The run's TLS client, when it uses TLS.
    pub tls: Option<TlsClient>,
    /// The logins handed out one per connection, when the run uses AUTH.
    pub logins: Option<Logins>,
    pub factory: MessageFactory,
    /// One per prepared body (they differ in `SIZE=`).
    pub commands: Vec<PreparedCommands>,
    pub msgs_per_conn: u32,
    pub late_tolerance: Duration,
    pub stats: Mutex<Stats>,
    /// Take no new message (Ctrl-C).
    pub stop: CancellationToken,
    /// Give up on messages in flight (end of the drain time).
    pub abort: CancellationToken,
    /// Open model: the messages due, per server.
    pub gates: Option<crate::schedule::Gates>,
}

/// The state of one worker between messages.
struct Worker {
    shared: Arc<RunShared>,
    server: usize,
    conn: Option<Connection>,
    /// The connection that the last message ended with QUIT, waiting for the
    /// server to close it; closed after that message is recorded, so neither its
    /// latency nor the run's end include the wait.
    closing: Option<Connection>,
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
        closing: None,
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
            let slot = match &shared.gates {
                Some(gates) => self.wait_until_due(&gates[self.server]).await,
                None => shared.plan.claim(self.server),
            };
            let Some(slot) = slot else {
                break;
            };
            self.retire_stale_connection(shared.gates.is_some()).await;
            let record = self.message(slot).await;
            shared
                .stats
                .lock()
                .expect("stats lock poisoned")
                .record(&record);
            self.idle_since = record.finished;
            // The open model closes while it waits for its next message.
            if shared.gates.is_none()
                && let Some(conn) = self.closing.take()
            {
                self.until_abort(conn.close()).await;
            }
        }
        if let Some(conn) = self.closing.take() {
            self.until_abort(conn.close()).await;
        }
        if let Some(conn) = self.conn.take() {
            self.until_abort(conn.quit_and_close()).await;
        }
    }

    /// Sends the message of `slot` and measures it. Its time ends at its last
    /// reply; what follows (the wait for the server to close) is not part of it.
    async fn message(&mut self, slot: Slot) -> MessageRecord {
        let shared = Arc::clone(&self.shared);
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
        let mut handshake = None;
        let reused = self.conn.is_some();
        // Drawn here rather than at the connect, so a message the drain time cuts
        // mid-connect is still counted against its source address.
        let source = if reused {
            None
        } else {
            shared.sources.as_ref().map(SourceAddrs::next)
        };
        let outcome = tokio::select! {
            r = self.send(body_index, source, &mut timings, &mut handshake) => Some(r),
            _ = shared.abort.cancelled() => None,
        };
        let finished = Instant::now();
        let outcome = outcome.unwrap_or_else(|| {
            self.conn = None;
            let in_use = |p| match p {
                Phase::Tls => shared.tls.is_some(),
                Phase::Auth => shared.logins.is_some(),
                _ => true,
            };
            Err(Failure {
                phase: unfinished_phase(&timings, reused, in_use),
                kind: FailureKind::Aborted,
            })
        });
        let bytes = if timings.get(Phase::Eod).is_some() {
            (self.headers.len() + shared.factory.bodies()[body_index].content_len()) as u64
        } else {
            0
        };
        MessageRecord {
            server: self.server,
            scheduled: slot.due,
            stage: slot.stage,
            started,
            finished,
            timings,
            outcome,
            bytes,
            late,
            handshake,
            source,
        }
    }

    /// Open model: waits until the next message of this server falls due, and
    /// meanwhile tidies the connections up, so that neither the wait for a close
    /// nor the QUIT of a stale connection delays the message (or makes it late).
    /// The message, or `None` when the run ends first.
    async fn wait_until_due(&mut self, gate: &Gate) -> Option<Slot> {
        let shared = Arc::clone(&self.shared);
        tokio::select! {
            slot = gate.next_due() => slot,
            never = tidy_while_idle(&mut self.closing, &mut self.conn, self.idle_since) => match never {},
            // Not yet due when the run was stopped: never part of the run.
            _ = shared.stop.cancelled() => None,
            _ = shared.abort.cancelled() => None,
        }
    }

    /// A connection idle too long is not reused. In the closed model nothing waits
    /// between messages, so it says QUIT here, before the message starts; in the
    /// open model [`Worker::wait_until_due`] closed it already, unless the message
    /// fell due the moment it went stale: then it is dropped rather than make the
    /// message wait for QUIT.
    async fn retire_stale_connection(&mut self, open_model: bool) {
        if self.idle_since.elapsed() <= MAX_IDLE_REUSE {
            return;
        }
        if let Some(conn) = self.conn.take()
            && !open_model
        {
            self.until_abort(conn.quit_and_close()).await;
        }
    }

    /// Runs `f` unless the run is aborted first.
    async fn until_abort(&self, f: impl Future<Output = ()>) {
        tokio::select! {
            _ = f => {}
            _ = self.shared.abort.cancelled() => {}
        }
    }

    /// One message on the current connection (opening one when needed, with TLS
    /// and AUTH as the run asks: once per connection), and the connection's QUIT
    /// when the message is its last. A new connection is opened from `source`
    /// when there is one. The wait for the server to close is left in `closing`,
    /// for after the message is recorded.
    async fn send(
        &mut self,
        body_index: usize,
        source: Option<IpAddr>,
        t: &mut PhaseTimings,
        handshake: &mut Option<Handshake>,
    ) -> Result<u16, Failure> {
        let shared = Arc::clone(&self.shared);
        let cmds = &shared.commands[body_index];
        if self.conn.is_none() {
            let dial = Dial {
                addr: shared.addrs[self.server],
                source,
                server: self.server,
                tls: shared.tls.as_ref(),
                login: shared.logins.as_ref().map(Logins::next),
            };
            let s = Connection::open(&dial, &shared.settings, cmds, t, handshake).await?;
            self.conn = Some(s);
            self.on_conn = 0;
        }
        let conn = self.conn.as_mut().expect("connection just opened");
        let body = &shared.factory.bodies()[body_index].wire;
        let result = conn.transaction(cmds, &self.headers, body, t).await;
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
            && let Some(mut conn) = self.conn.take()
        {
            // QUIT belongs to the message that ends the session; its failure does
            // not undo a message the server already accepted.
            if conn.quit(t).await.is_ok() {
                self.closing = Some(conn);
            }
        }
        result
    }
}

/// What a worker does while it waits for its next message: finishes closing the
/// connection the last message ended, closes the open one once it has been idle
/// for [`MAX_IDLE_REUSE`], then waits forever. It is raced against the wait for
/// the message, which may cut it short (dropping a connection mid-close just
/// closes the socket).
async fn tidy_while_idle(
    closing: &mut Option<Connection>,
    conn: &mut Option<Connection>,
    idle_since: Instant,
) -> Infallible {
    if let Some(c) = closing.take() {
        c.close().await;
    }
    if conn.is_some() {
        tokio::time::sleep_until((idle_since + MAX_IDLE_REUSE).into()).await;
        if let Some(c) = conn.take() {
            c.quit_and_close().await;
        }
    }
    std::future::pending().await
}

/// The phase a message was in when the drain time cut it: the next phase the
/// run uses (`in_use`) after the last one that got its reply (a message on a
/// reused connection begins at MAIL). A STARTTLS session cut during its second
/// EHLO is put in the phase after `tls`, since the two EHLOs share one slot.
fn unfinished_phase(t: &PhaseTimings, reused: bool, in_use: impl Fn(Phase) -> bool) -> Phase {
    let first = if reused { Phase::Mail } else { Phase::Connect };
    let mut next = Phase::ALL
        .iter()
        .rev()
        .find(|&&p| t.get(p).is_some())
        .map_or(Some(first), |p| p.next());
    while let Some(p) = next
        && !in_use(p)
    {
        next = p.next();
    }
    next.unwrap_or(Phase::Quit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_message_is_put_in_the_next_phase_the_run_uses() {
        let mut t = PhaseTimings::default();
        let plain = |p| !matches!(p, Phase::Tls | Phase::Auth);
        assert_eq!(unfinished_phase(&t, false, plain), Phase::Connect);
        assert_eq!(unfinished_phase(&t, true, plain), Phase::Mail);
        t.0[Phase::Ehlo.index()] = Some(1);
        assert_eq!(unfinished_phase(&t, false, plain), Phase::Mail);
        assert_eq!(unfinished_phase(&t, false, |_| true), Phase::Tls);
    }
}
