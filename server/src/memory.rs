//! The process memory budget.
//!
//! Two figures are kept: the bytes that sessions hold on purpose (input buffers and
//! messages being received), charged *before* they are read, and the process RSS,
//! sampled from `/proc/self/statm` every `monitoring_interval`. The larger of the two is
//! the usage compared against `max_memory_usage`: above the critical fraction new
//! connections and new transactions are refused with `452 4.3.1`; above the warning
//! fraction a warning is logged and nothing is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Where memory usage stands relative to the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryLevel {
    Normal,
    Warning,
    Critical,
}

/// The shared budget. Cheap to query on every connection and command.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    warning_bytes: u64,
    critical_bytes: u64,
    accounted: AtomicU64,
    rss: AtomicU64,
    /// The level at the last sample, so that transitions are logged once.
    logged_level: AtomicU8,
}

impl MemoryBudget {
    pub fn new(limit: u64, warning: f64, critical: f64) -> Self {
        let budget = Self {
            limit,
            warning_bytes: (limit as f64 * warning) as u64,
            critical_bytes: (limit as f64 * critical) as u64,
            accounted: AtomicU64::new(0),
            rss: AtomicU64::new(0),
            logged_level: AtomicU8::new(MemoryLevel::Normal as u8),
        };
        budget.sample_rss();
        budget
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes currently charged by sessions.
    pub fn accounted(&self) -> u64 {
        self.accounted.load(Ordering::Relaxed)
    }

    /// The process RSS at the last sample (0 where `/proc` is unavailable).
    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    /// The usage compared with the thresholds: the larger of accounted and RSS.
    pub fn usage(&self) -> u64 {
        self.accounted().max(self.rss())
    }

    pub fn level(&self) -> MemoryLevel {
        let usage = self.usage();
        if usage >= self.critical_bytes {
            MemoryLevel::Critical
        } else if usage >= self.warning_bytes {
            MemoryLevel::Warning
        } else {
            MemoryLevel::Normal
        }
    }

    pub fn is_critical(&self) -> bool {
        self.level() == MemoryLevel::Critical
    }

    /// Reads the RSS now and logs a threshold crossing (once per crossing).
    pub fn sample_rss(&self) {
        if let Some(rss) = read_rss() {
            self.rss.store(rss, Ordering::Relaxed);
        }
        let level = self.level();
        let previous = self.logged_level.swap(level as u8, Ordering::Relaxed);
        if previous != level as u8 {
            let (usage, limit) = (self.usage(), self.limit);
            match level {
                MemoryLevel::Critical => tracing::error!(
                    usage_bytes = usage,
                    limit_bytes = limit,
                    "memory above critical threshold: refusing new connections and transactions"
                ),
                MemoryLevel::Warning => tracing::warn!(
                    usage_bytes = usage,
                    limit_bytes = limit,
                    "memory above warning threshold"
                ),
                MemoryLevel::Normal => {
                    tracing::info!(
                        usage_bytes = usage,
                        limit_bytes = limit,
                        "memory back to normal"
                    )
                }
            }
        }
    }
}

/// Bytes charged to the budget by one session; released when dropped, so no path out
/// of a session can leak a charge.
#[derive(Debug)]
pub struct MemoryCharge {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl MemoryCharge {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Charges `n` more bytes if the process budget allows it; false otherwise (and
    /// nothing is charged).
    pub fn try_grow(&mut self, n: u64) -> bool {
        let limit = self.budget.limit;
        let ok = self
            .budget
            .accounted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                cur.checked_add(n).filter(|&next| next <= limit)
            })
            .is_ok();
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Charges `n` more bytes unconditionally (memory that is needed to keep the
    /// session working at all, such as its command buffer).
    pub fn grow(&mut self, n: u64) {
        self.budget.accounted.fetch_add(n, Ordering::Relaxed);
        self.bytes += n;
    }

    /// Releases up to `n` bytes.
    pub fn shrink(&mut self, n: u64) {
        let n = n.min(self.bytes);
        self.budget.accounted.fetch_sub(n, Ordering::Relaxed);
        self.bytes -= n;
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        self.budget
            .accounted
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The resident set size of this process in bytes, from `/proc/self/statm`.
fn read_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page_size = u64::try_from(page_size).ok().filter(|&p| p > 0)?;
    Some(pages * page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_released_on_drop() {
        let budget = Arc::new(MemoryBudget::new(u64::MAX / 2, 0.75, 0.9));
        {
            let mut charge = MemoryCharge::new(budget.clone());
            assert!(charge.try_grow(1000));
            charge.grow(24);
            assert_eq!(budget.accounted(), 1024);
        }
        assert_eq!(budget.accounted(), 0);
    }

    #[test]
    fn charges_beyond_the_limit_are_refused() {
        let budget = Arc::new(MemoryBudget::new(100, 0.75, 0.9));
        let mut charge = MemoryCharge::new(budget.clone());
        assert!(charge.try_grow(100));
        assert!(!charge.try_grow(1));
        assert_eq!(charge.bytes(), 100);
    }

    #[test]
    fn rss_above_the_budget_is_critical() {
        // Any running process has more than 4 KiB resident.
        let budget = MemoryBudget::new(4096, 0.75, 0.9);
        assert_eq!(budget.level(), MemoryLevel::Critical);
        let roomy = MemoryBudget::new(u64::MAX / 2, 0.75, 0.9);
        assert_eq!(roomy.level(), MemoryLevel::Normal);
    }
}
