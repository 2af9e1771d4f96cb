//! When each message is sent, and to which server.
//!
//! Messages are numbered `0..total` (their `X-Stampede-Seq`) and message `i` goes to
//! server `i % servers`: an exact round-robin split, whatever the servers' speeds.
//! Each server has its own pool of workers (sessions) that claim that server's
//! messages in order, so a session with `--msgs-per-conn` > 1 can keep its
//! connection.
//!
//! - Closed model (burst): a free worker takes the next message at once.
//! - Open model (sustained): a fixed [`Timetable`]; message `i` is due at
//!   `start + i / rate`, however fast the server answers. A [`Dispatcher`] thread
//!   sleeps until each due time (an absolute deadline, so errors never accumulate)
//!   and opens that server's gate by one; a free worker passes the gate and sends.
//!   When every worker of a server is busy the message waits for one and starts
//!   late; it is counted late, never skipped, and its corrected latency
//!   (completion − due time) carries the wait, as in wrk2.
//!
//! Why a thread and not tokio's timers: tokio's timer wheel ticks in whole
//! milliseconds, so every send would start up to 1–2 ms after its due time and the
//! corrected latency of a fast server would be mostly the generator's own timer
//! error. `std::thread::sleep` wakes within about 0.1 ms; the gate is a tokio
//! semaphore, which a plain thread can open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// The dispatcher sleeps at most this long at a time, so it notices a stop.
const DISPATCH_POLL: Duration = Duration::from_millis(20);

/// The due times of the open model: message `i` at `start + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Timetable {
    pub start: Instant,
    pub rate: f64,
}

impl Timetable {
    pub fn due(&self, seq: u64) -> Instant {
        self.start + Duration::from_secs_f64(seq as f64 / self.rate)
    }
}

/// One message to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    /// Due time in the open model; `None` in the closed model.
    pub due: Option<Instant>,
}

/// The messages of a run, claimed by workers per server.
#[derive(Debug)]
pub struct Plan {
    total: u64,
    /// Next unclaimed round of each server.
    next: Vec<AtomicU64>,
    timetable: Option<Timetable>,
}

impl Plan {
    /// `total` messages over `servers` servers; with a timetable, the open model.
    pub fn new(total: u64, servers: usize, timetable: Option<Timetable>) -> Self {
        assert!(servers > 0, "at least one server");
        Plan {
            total,
            next: (0..servers).map(|_| AtomicU64::new(0)).collect(),
            timetable,
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
        (seq < self.total).then(|| Slot {
            seq,
            due: self.timetable.map(|t| t.due(seq)),
        })
    }
}

/// The thread that opens each server's gate when a message falls due.
pub struct Dispatcher {
    thread: Option<std::thread::JoinHandle<u64>>,
    stop: Arc<AtomicBool>,
}

/// One gate per server: a permit per message that has fallen due, plus, after the
/// last one, a permit per worker so each finds the plan empty and ends.
pub type Gates = Arc<[Semaphore]>;

impl Dispatcher {
    /// Starts the dispatcher for `total` messages on `timetable`; `workers[s]` is
    /// the pool size of server `s`. A message that the thread itself releases more
    /// than `tolerance` after its due time is counted as late by the generator.
    pub fn spawn(
        timetable: Timetable,
        total: u64,
        workers: Vec<u32>,
        tolerance: Duration,
    ) -> std::io::Result<(Dispatcher, Gates)> {
        let gates: Gates = workers.iter().map(|_| Semaphore::new(0)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (Arc::clone(&gates), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("loadgen-dispatch".into())
            .spawn(move || {
                let n = g.len() as u64;
                let mut late = 0u64;
                for seq in 0..total {
                    let due = timetable.due(seq);
                    loop {
                        if st.load(Ordering::Relaxed) {
                            return late;
                        }
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        std::thread::sleep((due - now).min(DISPATCH_POLL));
                    }
                    if Instant::now() > due + tolerance {
                        late += 1;
                    }
                    g[(seq % n) as usize].add_permits(1);
                }
                for (gate, &w) in g.iter().zip(&workers) {
                    gate.add_permits(w as usize);
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

    #[test]
    fn every_message_is_claimed_once_round_robin() {
        let plan = Plan::new(10, 3, None);
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

    #[test]
    fn timetable_spaces_sends_evenly() {
        let start = Instant::now();
        let plan = Plan::new(100, 2, Some(Timetable { start, rate: 50.0 }));
        let a = plan.claim(1).unwrap();
        let b = plan.claim(1).unwrap();
        assert_eq!((a.seq, b.seq), (1, 3));
        assert_eq!(a.due.unwrap() - start, Duration::from_millis(20));
        assert_eq!(b.due.unwrap() - a.due.unwrap(), Duration::from_millis(40));
    }

    #[test]
    fn the_dispatcher_opens_gates_on_time_then_once_per_worker() {
        let start = Instant::now();
        let tt = Timetable {
            start,
            rate: 1000.0,
        };
        let (d, gates) = Dispatcher::spawn(tt, 20, vec![2, 1], Duration::from_millis(50)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let early = gates[0].available_permits() + gates[1].available_permits();
        assert!(early <= 10, "{early} released within 5 ms at 1000/s");
        assert_eq!(d.join(), 0);
        assert_eq!(gates[0].available_permits(), 10 + 2);
        assert_eq!(gates[1].available_permits(), 10 + 1);
        assert!(start.elapsed() >= Duration::from_millis(19));
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
