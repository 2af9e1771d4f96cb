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
//!   `start + i / rate`, however fast the server answers. A free worker claims the
//!   next message and sleeps until it is due (an absolute deadline, so timer errors
//!   never accumulate). When every worker of a server is busy the message waits for
//!   one and starts late; it is counted late, never skipped, and its corrected
//!   latency (completion − due time) carries the wait, as in wrk2.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    fn workers_split_evenly() {
        assert_eq!(
            (0..3).map(|s| workers_for(s, 3, 10)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..3).map(|s| workers_for(s, 3, 10)).sum::<u32>(), 10);
    }
}
