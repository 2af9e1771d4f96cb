//! Admission control: whether a new connection may start a session at all.
//!
//! Checked in the accept loop, before any session task exists, in this order: process
//! memory (critical → `452 4.3.1`), global and per-IP concurrent connections, per-IP
//! and global connection rate (token buckets from `governor`) → `421 4.7.0`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
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
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    global_rate: DefaultDirectRateLimiter,
    ip_rate: DefaultKeyedRateLimiter<IpAddr>,
    memory: Arc<MemoryBudget>,
}

/// Held by a session for its whole life; dropping it frees the connection slots.
pub struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    ip: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A token bucket holding `per_window` tokens, refilled evenly over `window`.
fn quota(per_window: u32, window: std::time::Duration) -> Quota {
    let burst = NonZeroU32::new(per_window.max(1)).unwrap_or(NonZeroU32::MIN);
    let period = window / burst.get();
    Quota::with_period(period.max(std::time::Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

impl Admission {
    pub fn new(config: &Config, memory: Arc<MemoryBudget>) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            max_per_ip: config.max_connections_per_ip,
            per_ip: Mutex::new(HashMap::new()),
            global_rate: RateLimiter::direct(quota(
                config.max_requests_per_window,
                config.rate_limit_window,
            )),
            ip_rate: RateLimiter::keyed(quota(
                config.max_requests_per_window_per_ip,
                config.rate_limit_window,
            )),
            memory,
        }
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
        {
            let per_ip = self
                .per_ip
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
                return Err(Refusal::PerIpConnections);
            }
        }
        // Rate is checked after the concurrency limits so that refused attempts do not
        // also use up tokens; per IP first so one noisy peer cannot drain the global
        // bucket for everyone.
        self.ip_rate
            .check_key(&ip)
            .map_err(|_| Refusal::PerIpRate)?;
        self.global_rate.check().map_err(|_| Refusal::GlobalRate)?;
        let mut per_ip = self
            .per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *per_ip.entry(ip).or_insert(0) += 1;
        Ok(ConnectionPermit {
            _global: global,
            ip,
            admission: self.clone(),
        })
    }

    /// Forgets rate-limiter state for peers whose buckets are full again, so the
    /// per-IP table does not grow without bound.
    pub fn housekeeping(&self) {
        self.ip_rate.retain_recent();
        self.ip_rate.shrink_to_fit();
    }

    /// Peers currently tracked by the per-IP rate limiter.
    pub fn rate_limited_peers(&self) -> usize {
        self.ip_rate.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
