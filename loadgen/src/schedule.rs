//! When each message is sent, and to which server.
//!
//! Messages are numbered `0..total` (their `X-Stampede-Seq`) and message `i` goes to
//! server `i % servers`: an exact round-robin split, whatever the servers' speeds.
//! Each server has its own pool of workers (sessions) that claim that server's
//! messages in order, so a session with `--msgs-per-conn` > 1 can keep its
//! connection.
//!
//! - Closed model (burst): a free worker takes the next message at once.
//! - Open model (sustained, stages): a fixed [`Timetable`] (`timetable.rs`: a
//!   constant rate or stages, uniform or Poisson arrivals); message `i` is due
//!   when the rate curve's integral reaches it (`start + i / rate` at a constant
//!   rate), however fast the server answers. A [`Dispatcher`] thread sleeps until
//!   each due time (an absolute deadline, so errors never accumulate) and opens
//!   that server's [`Gate`] by one, handing the message over; a free worker passes
//!   the gate and sends.
//!   When every worker of a server is busy the message waits for one and starts
//!   late; it is counted late, never skipped, and its corrected latency
//!   (completion − due time) carries the wait, as in wrk2.
//!
//! Why a thread and not tokio's timers: tokio's timer wheel ticks in whole
//! milliseconds, so every send would start up to 1–2 ms after its due time and the
//! corrected latency of a fast server would be mostly the generator's own timer
//! error. `std::thread::sleep` wakes within about 0.1 ms; the gate is a tokio
//! semaphore, which a plain thread can open.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::timetable::Timetable;

/// The dispatcher sleeps at most this long at a time, so it notices a stop.
const DISPATCH_POLL: Duration = Duration::from_millis(20);

/// One message to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    /// Due time in the open model; `None` in the closed model.
    pub due: Option<Instant>,
    /// The stage (segment of the rate curve) it is due in; `None` in the closed
    /// model. Carried from the timetable so no message is put in a stage by
    /// comparing floating-point times twice.
    pub stage: Option<u32>,
}

/// The closed model's messages, claimed by workers per server.
#[derive(Debug)]
pub struct Plan {
    total: u64,
    /// Next unclaimed round of each server.
    next: Vec<AtomicU64>,
}

impl Plan {
    /// `total` messages over `servers` servers.
    pub fn new(total: u64, servers: usize) -> Self {
        assert!(servers > 0, "at least one server");
        Plan {
            total,
            next: (0..servers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The next message of `server`, or `None` when it has none left.
    pub fn claim(&self, server: usize) -> Option<Slot> {
        let n = self.next.len() as u64;
        let round = self.next[server].fetch_add(1, Ordering::Relaxed);
        let seq = round.checked_mul(n)?.checked_add(server as u64)?;
        (seq < self.total).then_some(Slot {
            seq,
            due: None,
            stage: None,
        })
    }
}

/// What the dispatcher opens for one server: a permit per message that has
/// fallen due, and that message, queued. Poisson due times are made in order and
/// cannot be looked up by number, so the dispatcher hands each one over with its
/// permit; the queue holds only what is due and not yet taken (the backlog).
#[derive(Debug)]
pub struct Gate {
    permits: Semaphore,
    due: Mutex<VecDeque<Slot>>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            permits: Semaphore::new(0),
            due: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits for a message of this server to fall due and takes the oldest;
    /// `None` once the run has none left.
    pub async fn next_due(&self) -> Option<Slot> {
        self.permits.acquire().await.ok()?.forget();
        self.due.lock().ok()?.pop_front()
    }

    fn release(&self, slot: Slot) {
        if let Ok(mut q) = self.due.lock() {
            q.push_back(slot);
        }
        self.permits.add_permits(1);
    }

    /// Permits not yet taken (due messages, plus the final one per worker).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// The thread that opens each server's gate when a message falls due.
pub struct Dispatcher {
    thread: Option<std::thread::JoinHandle<u64>>,
    stop: Arc<AtomicBool>,
}

/// One gate per server: a permit per message that has fallen due, plus, after the
/// last one, a permit per worker so each finds the queue empty and ends.
pub type Gates = Arc<[Gate]>;

impl Dispatcher {
    /// Starts the dispatcher for the messages of `timetable`, due from `start`,
    /// until the end of its curve; `workers[s]` is the pool size of server `s`. A message that the thread
    /// itself releases more than `tolerance` after its due time is counted as late
    /// by the generator. Message `i` goes to server `i % servers`.
    pub fn spawn(
        timetable: Timetable,
        start: Instant,
        workers: Vec<u32>,
        tolerance: Duration,
    ) -> std::io::Result<(Dispatcher, Gates)> {
        let gates: Gates = workers.iter().map(|_| Gate::new()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (Arc::clone(&gates), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("loadgen-dispatch".into())
            .spawn(move || {
                let n = g.len() as u64;
                let mut late = 0u64;
                for (seq, d) in (0u64..).zip(timetable.due_times()) {
                    let due = start + Duration::from_secs_f64(d.offset_s);
                    if !sleep_until(due, &st) {
                        return late;
                    }
                    if Instant::now() > due + tolerance {
                        late += 1;
                    }
                    g[(seq % n) as usize].release(Slot {
                        seq,
                        due: Some(due),
                        stage: Some(d.segment),
                    });
                }
                // The run lasts the whole curve, a last stretch at rate 0 included
                // (a cool-down the servers' resources are still sampled in).
                let end = start + Duration::from_secs_f64(timetable.curve().duration());
                if !sleep_until(end, &st) {
                    return late;
                }
                for (gate, &w) in g.iter().zip(&workers) {
                    gate.permits.add_permits(w as usize);
                }
                late
            })?;
        Ok((
            Dispatcher {
                thread: Some(thread),
                stop,
            },
            gates,
        ))
    }

    /// Stops releasing messages (Ctrl-C or the end of the drain time).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the thread to release every message (or to notice a stop);
    /// returns how many it released late.
    pub fn join(mut self) -> u64 {
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

/// Sleeps until `due` (an absolute deadline, so errors never accumulate), in
/// steps short enough to notice `stop`; a long zero-rate stretch is slept
/// through the same way. False when stopped.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(DISPATCH_POLL));
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How many of `workers` serve server `s` of `servers`: an even split, the first
/// servers taking one more when it does not divide.
pub fn workers_for(s: usize, servers: usize, workers: u32) -> u32 {
    let (q, r) = (workers / servers as u32, workers % servers as u32);
    q + u32::from((s as u32) < r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timetable::{Arrivals, RateCurve};

    #[test]
    fn every_message_is_claimed_once_round_robin() {
        let plan = Plan::new(10, 3);
        let mut seen = Vec::new();
        for s in 0..3 {
            while let Some(slot) = plan.claim(s) {
                assert_eq!(slot.seq % 3, s as u64);
                seen.push(slot.seq);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(plan.claim(0), None);
    }

    #[tokio::test]
    async fn the_dispatcher_hands_out_due_messages_on_time_then_ends_every_worker() {
        let start = Instant::now();
        let tt = Timetable::new(RateCurve::constant(1000.0, 0.02), Arrivals::Uniform);
        let (d, gates) =
            Dispatcher::spawn(tt, start, vec![2, 1], Duration::from_millis(50)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let early = gates[0].available() + gates[1].available();
        assert!(early <= 10, "{early} released within 5 ms at 1000/s");
        assert_eq!(d.join(), 0);
        assert_eq!(gates[0].available(), 10 + 2);
        assert_eq!(gates[1].available(), 10 + 1);
        assert!(start.elapsed() >= Duration::from_millis(19));
        let mut seqs = Vec::new();
        while let Some(slot) = gates[1].next_due().await {
            assert_eq!(slot.seq % 2, 1);
            let due = (slot.due.unwrap() - start).as_secs_f64();
            assert!((due - slot.seq as f64 / 1000.0).abs() < 1e-6, "{slot:?}");
            assert_eq!(slot.stage, Some(0));
            seqs.push(slot.seq);
        }
        assert_eq!(seqs, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
        assert_eq!(
            gates[1].available(),
            0,
            "the one worker's final permit taken"
        );
    }

    #[test]
    fn a_stop_ends_the_dispatcher_in_a_zero_rate_stretch() {
        // 10 s of nothing, then 10 messages: the thread sleeps, does not spin.
        let tt = Timetable::new(
            RateCurve::stages(0.0, &[(10.0, 0.0), (0.0, 10.0), (1.0, 10.0)]),
            Arrivals::Uniform,
        );
        let (d, gates) =
            Dispatcher::spawn(tt, Instant::now(), vec![1], Duration::from_millis(50)).unwrap();
        let t = Instant::now();
        d.stop();
        assert_eq!(d.join(), 0);
        assert!(t.elapsed() < Duration::from_millis(500));
        assert_eq!(gates[0].available(), 0);
    }

    #[test]
    fn workers_split_evenly() {
        assert_eq!(
            (0..3).map(|s| workers_for(s, 3, 10)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..3).map(|s| workers_for(s, 3, 10)).sum::<u32>(), 10);
    }
}
