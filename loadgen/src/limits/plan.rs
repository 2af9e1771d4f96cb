//! Pure planning for the cases: which source address each attempt uses, when each
//! attempt is made, how long a case would take, how long to wait between cases.
//! No I/O here, so every rule is unit-tested.

use std::net::IpAddr;

use report::limits::{Expectations, RateLimit};

/// Slack on a paced attempt, so the bucket has surely refilled.
const PACING_SLACK: f64 = 1.25;
/// Most connections one case may open (and hold): a bound on any case's work.
pub const MAX_CASE_CONNECTIONS: u64 = 5000;

/// The most attempts one address may make in a case that must not trip a per-IP
/// limit: half the per-IP allowance, so a bucket not quite full does not trip either.
pub fn per_address_cap(e: &Expectations) -> Option<u64> {
    let limits = [e.max_connections_per_ip, e.rate_per_ip.map(|r| r.count)];
    limits.into_iter().flatten().min().map(|l| (l / 2).max(1))
}

/// Deals `attempts` over as few of `sources` (from `start`) as keep each address at
/// or under `cap`; an error when there are not enough addresses.
pub fn spread(
    attempts: u64,
    sources: &[Option<IpAddr>],
    start: usize,
    cap: Option<u64>,
) -> Result<Vec<Option<IpAddr>>, String> {
    if sources.is_empty() {
        return Err("no source address".into());
    }
    let needed = match cap {
        Some(cap) => attempts.div_ceil(cap.max(1)).max(1),
        None => 1,
    };
    if needed > sources.len() as u64 {
        let have = match sources {
            [None] => "one (the system's choice; give --source-ips)".to_string(),
            _ => sources.len().to_string(),
        };
        return Err(format!(
            "{attempts} connections at most {} an address need {needed} source addresses, there are {have}",
            cap.unwrap_or(attempts)
        ));
    }
    let needed = needed as usize;
    Ok((0..attempts as usize)
        .map(|i| sources[(start + i % needed) % sources.len()])
        .collect())
}

/// Seconds from the start of a case at which each of `attempts` connections is
/// opened, so that the first `admitted` do not outrun `bucket`: its burst at once,
/// then one a refill interval apart (with slack). Attempts past `admitted` (the
/// ones meant to be refused) follow at once: a refusal spends no token.
pub fn open_offsets(attempts: u64, admitted: u64, buckets: &[Option<RateLimit>]) -> Vec<f64> {
    let offset = |i: u64| {
        buckets
            .iter()
            .flatten()
            .map(|b| {
                let free = b.count.saturating_sub(1);
                let paced = (i.min(admitted.saturating_sub(1)) + 1).saturating_sub(free);
                paced as f64 * b.refill_interval_s() * PACING_SLACK
            })
            .fold(0.0, f64::max)
    };
    (0..attempts).map(offset).collect()
}

/// Seconds until a bucket that gave `spent` tokens is full again.
pub fn refill_time(bucket: Option<RateLimit>, spent: u64) -> f64 {
    bucket.map_or(0.0, |b| (spent.min(b.count) as f64) * b.refill_interval_s())
}

/// ±10% of the expectation, and never under a quarter of a second (timer and
/// scheduling granularity on a loaded machine).
pub fn timeout_tolerance(expected_s: f64) -> f64 {
    (expected_s * 0.1).max(0.25)
}

/// The usual way to say "would take too long".
pub fn too_long(estimate_s: f64, max_s: f64) -> Option<String> {
    (estimate_s > max_s).then(|| {
        format!("would take about {estimate_s:.0} s, longer than --max-case-time {max_s:.0} s")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, n]))
    }

    #[test]
    fn attempts_are_spread_so_no_address_passes_the_cap() {
        let sources: Vec<_> = (2..12).map(ip).collect();
        let plan = spread(22, &sources, 0, Some(5)).unwrap();
        assert_eq!(plan.len(), 22);
        for s in &sources {
            assert!(plan.iter().filter(|p| *p == s).count() <= 5);
        }
        assert_eq!(
            plan.iter().collect::<std::collections::BTreeSet<_>>().len(),
            5
        );
        let err = spread(22, &[None], 0, Some(5)).unwrap_err();
        assert!(err.contains("need 5 source addresses"), "{err}");
        assert_eq!(spread(3, &[None], 0, None).unwrap(), vec![None; 3]);
    }

    #[test]
    fn the_cap_is_half_the_tightest_per_ip_limit() {
        let e = Expectations {
            max_connections_per_ip: Some(5),
            rate_per_ip: Some(RateLimit {
                count: 10,
                window_s: 10.0,
            }),
            ..Expectations::default()
        };
        assert_eq!(per_address_cap(&e), Some(2));
        assert_eq!(per_address_cap(&Expectations::default()), None);
    }

    #[test]
    fn attempts_within_the_burst_are_not_paced() {
        let b = Some(RateLimit {
            count: 30,
            window_s: 10.0,
        });
        assert!(open_offsets(22, 20, &[b]).iter().all(|o| *o == 0.0));
        assert!(open_offsets(5, 5, &[None]).iter().all(|o| *o == 0.0));
    }

    #[test]
    fn admissions_beyond_the_burst_wait_a_refill_each() {
        let b = Some(RateLimit {
            count: 3,
            window_s: 3.0,
        });
        let o = open_offsets(6, 4, &[b]);
        // two at once, then one a second (with slack) until the fourth admission;
        // the attempts meant to be refused follow at once.
        assert_eq!(o, vec![0.0, 0.0, 1.25, 2.5, 2.5, 2.5]);
    }

    #[test]
    fn a_bucket_refills_what_it_gave() {
        let b = Some(RateLimit {
            count: 10,
            window_s: 10.0,
        });
        assert_eq!(refill_time(b, 4), 4.0);
        assert_eq!(refill_time(b, 40), 10.0);
        assert_eq!(refill_time(None, 40), 0.0);
    }

    #[test]
    fn timeouts_are_judged_within_ten_percent() {
        assert_eq!(timeout_tolerance(10.0), 1.0);
        assert_eq!(timeout_tolerance(1.0), 0.25);
        assert!(too_long(61.0, 60.0).is_some());
        assert!(too_long(59.0, 60.0).is_none());
    }
}
