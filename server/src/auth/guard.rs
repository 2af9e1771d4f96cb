//! The brute-force defence: after `max_failures` failed AUTH attempts from one IP
//! address within `window`, that address is blocked for `window`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Addresses tracked at most. Past this the expired entries are dropped, then the
/// ones closest to expiring: an attacker spraying from many addresses cannot grow the
/// table without bound, and the blocks that go first are those about to end anyway.
const MAX_TRACKED: usize = 16_384;

/// Failed-AUTH counts per client IP.
///
/// A failure opens a window of `window`; failures inside it add up, and the one that
/// reaches `max_failures` blocks the address until `window` after that failure (so a
/// block always lasts a full window, however late in its window it came). A window
/// with no block simply expires. `max_failures = 0` disables the guard.
///
/// Thread-safe behind one `Mutex`: it is touched only when a client fails to
/// authenticate or starts AUTH, each of which costs far more (an argon2 check, a
/// round trip) than the lock, so contention is not a concern.
#[derive(Debug)]
pub struct FailureGuard {
    max_failures: u32,
    window: Duration,
    peers: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// When the first failure of the current window happened.
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl Failures {
    /// When this entry stops mattering and may be forgotten.
    fn expiry(&self, window: Duration) -> Instant {
        self.blocked_until
            .unwrap_or_else(|| self.window_start + window)
    }

    fn is_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }
}

impl FailureGuard {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` is blocked now: AUTH from it gets `421 4.7.0`.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    /// Counts one failed attempt from `ip`; true when `ip` is blocked after it (this
    /// failure reached the limit, or the address was already blocked).
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        self.record_failure_at(ip, Instant::now())
    }

    /// Forgets the entries whose window or block is over (for a periodic tick; the
    /// table also prunes itself when it fills up).
    pub fn housekeeping(&self) {
        self.housekeeping_at(Instant::now());
    }

    /// How many addresses have failures on record (for stats).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn housekeeping_at(&self, now: Instant) {
        let window = self.window;
        self.lock().retain(|_, f| f.expiry(window) > now);
    }

    fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock().get(&ip).is_some_and(|f| f.is_blocked(now))
    }

    fn record_failure_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let window = self.window;
        let mut peers = self.lock();
        if !peers.contains_key(&ip) && peers.len() >= MAX_TRACKED {
            make_room(&mut peers, window, now);
        }
        let fresh = Failures {
            window_start: now,
            count: 0,
            blocked_until: None,
        };
        let failures = peers.entry(ip).or_insert(fresh);
        if failures.is_blocked(now) {
            return true;
        }
        if failures.expiry(window) <= now {
            *failures = fresh;
        }
        failures.count += 1;
        if failures.count >= self.max_failures {
            failures.blocked_until = Some(now + window);
            return true;
        }
        false
    }

    /// The table stays usable even if a thread panicked while holding the lock: every
    /// update leaves the entries consistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drops expired entries, then, if the table is still full, the eighth of it that
/// expires soonest, so that the next inserts do not each pay a full scan.
fn make_room(peers: &mut HashMap<IpAddr, Failures>, window: Duration, now: Instant) {
    peers.retain(|_, f| f.expiry(window) > now);
    if peers.len() < MAX_TRACKED {
        return;
    }
    let mut expiries: Vec<Instant> = peers.values().map(|f| f.expiry(window)).collect();
    let cut = expiries.len() / 8;
    let (_, &mut threshold, _) = expiries.select_nth_unstable(cut);
    peers.retain(|_, f| f.expiry(window) > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const WINDOW: Duration = Duration::from_secs(300);

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
    }

    #[test]
    fn the_failure_that_reaches_the_limit_blocks() {
        let guard = FailureGuard::new(3, WINDOW);
        let t0 = Instant::now();
        assert!(!guard.record_failure_at(ip(1), t0));
        assert!(!guard.record_failure_at(ip(1), t0 + Duration::from_secs(1)));
        assert!(!guard.is_blocked_at(ip(1), t0 + Duration::from_secs(2)));
        assert!(guard.record_failure_at(ip(1), t0 + Duration::from_secs(2)));
        assert!(guard.is_blocked_at(ip(1), t0 + Duration::from_secs(3)));
        // Further failures while blocked keep reporting the block.
        assert!(guard.record_failure_at(ip(1), t0 + Duration::from_secs(4)));
    }

    #[test]
    fn addresses_are_counted_apart() {
        let guard = FailureGuard::new(2, WINDOW);
        let t0 = Instant::now();
        assert!(!guard.record_failure_at(ip(1), t0));
        assert!(!guard.record_failure_at(ip(2), t0));
        assert!(guard.record_failure_at(ip(1), t0));
        assert!(guard.is_blocked_at(ip(1), t0));
        assert!(!guard.is_blocked_at(ip(2), t0));
        assert!(!guard.is_blocked_at(ip(3), t0));
    }

    #[test]
    fn a_block_lasts_one_window_from_the_blocking_failure() {
        let guard = FailureGuard::new(2, WINDOW);
        let t0 = Instant::now();
        let late = t0 + WINDOW - Duration::from_secs(1);
        guard.record_failure_at(ip(1), t0);
        assert!(guard.record_failure_at(ip(1), late));
        assert!(guard.is_blocked_at(ip(1), t0 + WINDOW));
        assert!(guard.is_blocked_at(ip(1), late + WINDOW - Duration::from_millis(1)));
        assert!(!guard.is_blocked_at(ip(1), late + WINDOW));
        // After the block the count starts again from zero.
        assert!(!guard.record_failure_at(ip(1), late + WINDOW));
    }

    #[test]
    fn failures_in_an_expired_window_are_forgotten() {
        let guard = FailureGuard::new(3, WINDOW);
        let t0 = Instant::now();
        guard.record_failure_at(ip(1), t0);
        guard.record_failure_at(ip(1), t0 + Duration::from_secs(10));
        let next_window = t0 + WINDOW;
        assert!(!guard.record_failure_at(ip(1), next_window));
        assert!(!guard.record_failure_at(ip(1), next_window));
        assert!(guard.record_failure_at(ip(1), next_window));
    }

    #[test]
    fn zero_max_failures_never_blocks() {
        let guard = FailureGuard::new(0, WINDOW);
        for _ in 0..10 {
            assert!(!guard.record_failure(ip(1)));
        }
        assert!(!guard.is_blocked(ip(1)));
        assert_eq!(guard.tracked(), 0);
    }

    #[test]
    fn housekeeping_forgets_expired_entries_only() {
        let guard = FailureGuard::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        guard.record_failure_at(ip(1), t0); // window over at t0 + 60 s
        guard.record_failure_at(ip(2), t0 + Duration::from_secs(50));
        guard.record_failure_at(ip(2), t0 + Duration::from_secs(50)); // blocked to t0 + 110 s
        guard.record_failure_at(ip(3), t0 + Duration::from_secs(30)); // window to t0 + 90 s
        assert_eq!(guard.tracked(), 3);
        guard.housekeeping_at(t0 + Duration::from_secs(70));
        assert_eq!(guard.tracked(), 2);
        guard.housekeeping_at(t0 + Duration::from_secs(100));
        assert_eq!(guard.tracked(), 1);
        assert!(guard.is_blocked_at(ip(2), t0 + Duration::from_secs(100)));
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_latest_blocks() {
        let guard = FailureGuard::new(1, WINDOW);
        let t0 = Instant::now();
        let total = MAX_TRACKED as u32 * 2;
        for n in 0..total {
            // One new address per millisecond, each blocked by its first failure.
            assert!(guard.record_failure_at(ip(n), t0 + Duration::from_millis(n.into())));
            assert!(guard.tracked() <= MAX_TRACKED);
        }
        let now = t0 + Duration::from_millis(total.into());
        assert!(guard.is_blocked_at(ip(total - 1), now), "newest block kept");
        assert!(!guard.is_blocked_at(ip(0), now), "oldest block evicted");
    }

    #[test]
    fn the_guard_is_shared_across_threads() {
        let guard = std::sync::Arc::new(FailureGuard::new(100, WINDOW));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let guard = guard.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| guard.record_failure(ip(1)))
                        .filter(|&blocked| blocked)
                        .count()
                })
            })
            .collect();
        let blocking: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(blocking, 1, "exactly the 100th failure blocks");
        assert!(guard.is_blocked(ip(1)));
    }
}
