//! Admission control: whether a new connection may start a session at all.
//!
//! Checked in the accept loop, before any session task exists, in this order: process
//! memory (critical → `452 4.3.1`), global and per-IP concurrent connections, per-IP
//! and global connection rate (token buckets) → `421 4.7.0`.
//!
//! A refused connection spends no allowance. The concurrency limits are checked
//! before any bucket. The per-IP bucket is checked before the global one, so that one
//! noisy peer's refused attempts cannot drain the global bucket for everyone, but it
//! is charged only once the global bucket has let the connection in, so that a
//! global refusal does not also use up the peer's own allowance. `governor` cannot
//! look at a bucket without charging it (boinkor-net/governor#15), so the per-IP
//! bucket is a small GCRA kept beside the peer's connection count, under one lock;
//! the global bucket stays a `governor` limiter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::memory::MemoryBudget;
use crate::protocol::Reply;

/// Why a connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MemoryCritical,
    GlobalConnections,
    PerIpConnections,
    GlobalRate,
    PerIpRate,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::MemoryCritical,
        Refusal::GlobalConnections,
        Refusal::PerIpConnections,
        Refusal::GlobalRate,
        Refusal::PerIpRate,
    ];

    /// The label used in metrics, stats and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MemoryCritical => "memory_critical",
            Refusal::GlobalConnections => "max_connections",
            Refusal::PerIpConnections => "max_connections_per_ip",
            Refusal::GlobalRate => "rate_limit",
            Refusal::PerIpRate => "rate_limit_per_ip",
        }
    }

    pub fn reply(self) -> Reply {
        match self {
            Refusal::MemoryCritical => Reply::insufficient_storage(),
            Refusal::GlobalConnections | Refusal::PerIpConnections => Reply::too_busy(),
            Refusal::GlobalRate | Refusal::PerIpRate => Reply::rate_limited(),
        }
    }
}

/// The admission state shared by the accept loop and every connection permit.
pub struct Admission {
    connections: Arc<Semaphore>,
    max_per_ip: usize,
    peers: Mutex<HashMap<IpAddr, Peer>>,
    peer_rate: PeerRate,
    global_rate: DefaultDirectRateLimiter,
    memory: Arc<MemoryBudget>,
}

/// What admission keeps about one peer address.
struct Peer {
    connections: usize,
    /// The GCRA "theoretical arrival time": the peer's bucket is full again once
    /// this is not after now.
    bucket_full_at: Instant,
}

/// The per-IP token bucket as a GCRA: one token every `interval`, up to `burst`.
struct PeerRate {
    interval: Duration,
    /// How far `bucket_full_at` may run ahead of now: `interval × (burst − 1)`.
    tolerance: Duration,
}

impl PeerRate {
    fn new(per_window: u32, window: Duration) -> Self {
        let burst = per_window.max(1);
        let interval = window / burst;
        Self {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
        }
    }

    /// Whether a bucket full at `full_at` holds a token at `now` (nothing is charged).
    fn allows(&self, full_at: Instant, now: Instant) -> bool {
        now.checked_add(self.tolerance)
            .is_none_or(|latest| full_at <= latest)
    }

    /// The bucket's `full_at` after one token is taken at `now`.
    fn charge(&self, full_at: Instant, now: Instant) -> Instant {
        full_at.max(now) + self.interval
    }
}

/// Held by a session for its whole life; dropping it frees the connection slots.
pub struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    ip: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut peers = self.admission.peers();
        if let Some(peer) = peers.get_mut(&self.ip) {
            peer.connections -= 1;
            if peer.connections == 0 && peer.bucket_full_at <= Instant::now() {
                peers.remove(&self.ip);
            }
        }
    }
}

/// A token bucket holding `per_window` tokens, refilled evenly over `window`.
fn quota(per_window: u32, window: Duration) -> Quota {
    let burst = NonZeroU32::new(per_window.max(1)).unwrap_or(NonZeroU32::MIN);
    let period = window / burst.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

impl Admission {
    pub fn new(config: &Config, memory: Arc<MemoryBudget>) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            max_per_ip: config.max_connections_per_ip,
            peers: Mutex::new(HashMap::new()),
            peer_rate: PeerRate::new(
                config.max_requests_per_window_per_ip,
                config.rate_limit_window,
            ),
            global_rate: RateLimiter::direct(quota(
                config.max_requests_per_window,
                config.rate_limit_window,
            )),
            memory,
        }
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decides whether a connection from `ip` may start a session.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        if self.memory.is_critical() {
            return Err(Refusal::MemoryCritical);
        }
        let global = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::GlobalConnections)?;
        let now = Instant::now();
        let mut peers = self.peers();
        let (connections, full_at) = peers
            .get(&ip)
            .map_or((0, now), |p| (p.connections, p.bucket_full_at));
        if connections >= self.max_per_ip {
            return Err(Refusal::PerIpConnections);
        }
        if !self.peer_rate.allows(full_at, now) {
            return Err(Refusal::PerIpRate);
        }
        self.global_rate.check().map_err(|_| Refusal::GlobalRate)?;
        // Admitted: only now is the peer's bucket charged.
        let peer = peers.entry(ip).or_insert(Peer {
            connections: 0,
            bucket_full_at: now,
        });
        peer.connections += 1;
        peer.bucket_full_at = self.peer_rate.charge(full_at, now);
        Ok(ConnectionPermit {
            _global: global,
            ip,
            admission: self.clone(),
        })
    }

    /// Forgets peers with no session whose buckets are full again, so the table does
    /// not grow without bound.
    pub fn housekeeping(&self) {
        let now = Instant::now();
        let mut peers = self.peers();
        peers.retain(|_, p| p.connections > 0 || p.bucket_full_at > now);
        peers.shrink_to_fit();
    }

    /// Peers whose per-IP bucket is not full (they have connected recently).
    pub fn rate_limited_peers(&self) -> usize {
        let now = Instant::now();
        self.peers()
            .values()
            .filter(|p| p.bucket_full_at > now)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(f: impl FnOnce(&mut Config)) -> Arc<Admission> {
        let mut config = Config::default();
        f(&mut config);
        let memory = Arc::new(MemoryBudget::new(u64::MAX / 2, 0.75, 0.9));
        Arc::new(Admission::new(&config, memory))
    }

    #[test]
    fn per_ip_slots_are_freed_when_permits_drop() {
        let a = admission(|c| c.max_connections_per_ip = 1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let permit = a.admit(ip).unwrap();
        assert_eq!(a.admit(ip).err(), Some(Refusal::PerIpConnections));
        assert!(a.admit("10.0.0.2".parse().unwrap()).is_ok());
        drop(permit);
        assert!(a.admit(ip).is_ok());
    }

    #[test]
    fn rate_limit_allows_the_window_budget_then_refuses() {
        let a = admission(|c| {
            c.max_requests_per_window = 3;
            c.max_requests_per_window_per_ip = 100;
            c.rate_limit_window = Duration::from_secs(3600);
        });
        for i in 0..3 {
            let ip: IpAddr = format!("10.0.0.{i}").parse().unwrap();
            drop(a.admit(ip).unwrap());
        }
        assert_eq!(
            a.admit("10.0.0.9".parse().unwrap()).err(),
            Some(Refusal::GlobalRate)
        );
    }

    #[test]
    fn a_connection_the_global_bucket_refuses_leaves_the_peers_allowance_untouched() {
        // Globally a token every 1.2 s (2 at most); per IP 1 token per 2.4 s.
        let a = admission(|c| {
            c.rate_limit_window = Duration::from_millis(2400);
            c.max_requests_per_window = 2;
            c.max_requests_per_window_per_ip = 1;
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        drop(a.admit(ip("10.0.0.1")).unwrap());
        drop(a.admit(ip("10.0.0.2")).unwrap());
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::GlobalRate));
        // The global bucket has a token again long before 10.0.0.3's own bucket
        // would have, had the refusal charged it.
        std::thread::sleep(Duration::from_millis(1800));
        assert!(a.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn per_ip_refusals_do_not_spend_the_global_bucket() {
        let a = admission(|c| {
            c.rate_limit_window = Duration::from_secs(3600);
            c.max_requests_per_window = 2;
            c.max_requests_per_window_per_ip = 1;
        });
        let noisy: IpAddr = "10.0.0.1".parse().unwrap();
        drop(a.admit(noisy).unwrap());
        for _ in 0..10 {
            assert_eq!(a.admit(noisy).err(), Some(Refusal::PerIpRate));
        }
        assert!(a.admit("10.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_per_ip_bucket_allows_its_burst_then_refills() {
        let a = admission(|c| {
            c.rate_limit_window = Duration::from_millis(600);
            c.max_requests_per_window = u32::MAX;
            c.max_requests_per_window_per_ip = 3;
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            drop(a.admit(ip).unwrap());
        }
        assert_eq!(a.admit(ip).err(), Some(Refusal::PerIpRate));
        assert_eq!(a.rate_limited_peers(), 1);
        std::thread::sleep(Duration::from_millis(300));
        assert!(a.admit(ip).is_ok(), "a token every 200 ms");
    }

    #[test]
    fn housekeeping_forgets_idle_peers_with_full_buckets() {
        let a = admission(|c| {
            c.rate_limit_window = Duration::from_millis(50);
            c.max_requests_per_window_per_ip = 1;
        });
        let permit = a.admit("10.0.0.1".parse().unwrap()).unwrap();
        drop(a.admit("10.0.0.2".parse().unwrap()).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        a.housekeeping();
        assert_eq!(a.peers().len(), 1, "only the peer with a session is kept");
        drop(permit);
        assert_eq!(a.peers().len(), 0);
    }
}
