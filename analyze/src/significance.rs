//! Is the difference between two groups of repeated runs more than run-to-run
//! noise? The Mann-Whitney U test answers, as benchstat does: it needs no
//! assumption about the shape of the runs' distribution (throughput and latency of
//! repeated runs are skewed and few), only that the runs of a side are independent.
//!
//! - The p-value is two-sided, compared with [`ALPHA`]. It is exact when a side
//!   has at most 8 runs and no value is tied (scipy's rule); otherwise it is the
//!   normal approximation with tie and continuity correction, from `statrs`.
//! - The size of the change is the Hodges–Lehmann estimate (the median of every
//!   pairwise difference new − base) with its distribution-free confidence
//!   interval, read off the same U distribution the test uses, so the interval
//!   leaves out 0 when the test finds a difference and holds it when not (exactly
//!   so for the exact test, up to rounding for the approximation). A
//!   bootstrap was not chosen: with 3–10 runs a side it resamples too few values
//!   to be trusted, and its interval would change from one invocation to the next.
//!
//! The exact distribution of U is counted here rather than taken from `statrs`:
//! statrs 0.19.1 (the newest, and its repository's head) returns the complement of
//! the exact p-value whenever the first sample is not the larger one, equal sizes
//! included (4 runs fully apart from 4 others give p = 1 instead of 2/70), and it
//! enumerates every split of the runs, which grows as C(m+n, m). The counts below
//! come from a short product of polynomials and serve the interval as well.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu};

/// The significance level: a two-sided p below it is a significant difference.
pub const ALPHA: f64 = 0.05;

/// The exact test is used while a side has at most this many runs (scipy's rule;
/// past it the normal approximation is close).
const EXACT_MAX_SMALLER_SIDE: usize = 8;

/// The exact U distribution is counted in `i128`; past this many pooled runs the
/// counts (up to C(m+n, m)) could overflow and the interval uses the normal
/// approximation instead.
const EXACT_COUNTS_MAX_RUNS: usize = 120;

/// How the p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The exact distribution of U (no ties, small samples).
    Exact,
    /// The normal approximation with tie and continuity correction.
    NormalApproximation,
}

/// The Mann-Whitney U test of `new` against `base`, and the shift it implies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UTest {
    /// Two-sided.
    pub p_value: f64,
    pub method: Method,
    /// Hodges–Lehmann estimate of new − base.
    pub shift: f64,
    /// The distribution-free interval of the shift, at [`UTest::ci_confidence`];
    /// `None` when so few runs cannot reach 1 − [`ALPHA`].
    pub shift_ci: Option<[f64; 2]>,
    /// The interval's exact confidence: the discrete U distribution gives the
    /// nearest level at or above 1 − α (97.1% for 4 runs against 4).
    pub ci_confidence: Option<f64>,
}

/// Tests `new` against `base`; `None` when a side has fewer than two runs (a
/// single run says nothing about its own spread) or holds a value that cannot be
/// ranked.
pub fn u_test(base: &[f64], new: &[f64]) -> Option<UTest> {
    if base.len() < 2 || new.len() < 2 || base.iter().chain(new).any(|v| !v.is_finite()) {
        return None;
    }
    let ties = has_ties(base, new);
    let (m, n) = (base.len(), new.len());
    let (method, p_value) = if !ties && m.min(n) <= EXACT_MAX_SMALLER_SIDE {
        (Method::Exact, exact_p(base, new))
    } else {
        let (_, p) = mannwhitneyu(
            new,
            base,
            MannWhitneyUMethod::AsymptoticInclContinuityCorrection,
            Alternative::TwoSided,
        )
        .ok()?;
        (Method::NormalApproximation, p)
    };
    let mut diffs: Vec<f64> = new
        .iter()
        .flat_map(|n| base.iter().map(move |b| n - b))
        .collect();
    diffs.sort_by(f64::total_cmp);
    let (shift_ci, ci_confidence) = match interval_rank(base, new, ties) {
        Some((k, confidence)) => (
            Some([diffs[k - 1], diffs[diffs.len() - k]]),
            Some(confidence),
        ),
        None => (None, None),
    };
    Some(UTest {
        p_value,
        method,
        shift: median_of_sorted(&diffs),
        shift_ci,
        ci_confidence,
    })
}

/// Whether `m` runs against `n` can ever give p < [`ALPHA`]. The most extreme
/// outcome (every run of one side above every run of the other) has the exact
/// two-sided p = 2 / C(m+n, m); ties only raise it. With 3 against 3 that is 0.1.
pub fn can_reach_alpha(m: usize, n: usize) -> bool {
    m >= 2 && n >= 2 && smallest_p(m, n) < ALPHA
}

/// The smallest two-sided p that `m` runs against `n` can give.
pub fn smallest_p(m: usize, n: usize) -> f64 {
    (2.0 / binomial(m + n, m)).min(1.0)
}

/// The fewest runs on each side (the same on both) that can show a significant
/// difference: 4, since 2 / C(8, 4) = 0.029 < 0.05 and 2 / C(6, 3) = 0.1.
pub fn min_runs_each_side() -> usize {
    (2..).find(|&n| can_reach_alpha(n, n)).unwrap_or(2)
}

fn has_ties(base: &[f64], new: &[f64]) -> bool {
    let mut pooled: Vec<f64> = base.iter().chain(new).copied().collect();
    pooled.sort_by(f64::total_cmp);
    pooled.windows(2).any(|w| w[0] == w[1])
}

/// The exact two-sided p of samples without ties: twice the chance, under no
/// difference, of a U at least as far from mn/2 as the one observed.
fn exact_p(base: &[f64], new: &[f64]) -> f64 {
    let (m, n) = (base.len(), new.len());
    let u_new = new
        .iter()
        .map(|y| base.iter().filter(|x| y > x).count())
        .sum::<usize>();
    let u = u_new.max(m * n - u_new);
    let counts = u_null_counts(m, n);
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    let tail: f64 = counts[u..].iter().map(|&c| c as f64).sum();
    (2.0 * tail / total).min(1.0)
}

/// C(n, k) as a float (exact while it fits in 53 bits, which covers its uses).
fn binomial(n: usize, k: usize) -> f64 {
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The rank `k` (1-based) of the pairwise difference that bounds the interval
/// from below (the upper bound has rank mn + 1 − k), and the interval's
/// confidence: `k` is the largest with P(U ≤ k − 1) ≤ α/2. `None` when even
/// k = 1 (the extreme differences) cannot reach 1 − α.
fn interval_rank(base: &[f64], new: &[f64], ties: bool) -> Option<(usize, f64)> {
    let (m, n) = (base.len(), new.len());
    if !ties && m + n <= EXACT_COUNTS_MAX_RUNS {
        let counts = u_null_counts(m, n);
        let total: f64 = counts.iter().map(|&c| c as f64).sum();
        let mut below = 0.0; // P(U ≤ k − 1)
        let mut k = 0;
        for &c in &counts[..=m * n / 2] {
            let next = below + c as f64 / total;
            if next > ALPHA / 2.0 {
                break;
            }
            below = next;
            k += 1;
        }
        return (k >= 1).then_some((k, 1.0 - 2.0 * below));
    }
    // Normal approximation of the same quantile, with the tie and continuity
    // corrections of the test.
    let (mf, nf) = (m as f64, n as f64);
    let pooled = mf + nf;
    let sigma = (mf * nf / 12.0
        * ((pooled + 1.0) - tie_term(base, new) / (pooled * (pooled - 1.0))))
        .sqrt();
    let z = Normal::standard().inverse_cdf(1.0 - ALPHA / 2.0);
    let k = (mf * nf / 2.0 - z * sigma + 0.5).floor();
    (k >= 1.0).then_some((k as usize, 1.0 - ALPHA))
}

/// Σ (t³ − t) over the groups of tied values in the pooled runs.
fn tie_term(base: &[f64], new: &[f64]) -> f64 {
    let mut pooled: Vec<f64> = base.iter().chain(new).copied().collect();
    pooled.sort_by(f64::total_cmp);
    pooled
        .chunk_by(|a, b| a == b)
        .map(|g| {
            let t = g.len() as f64;
            t * t * t - t
        })
        .sum()
}

/// How many of the C(m+n, m) splits of m+n distinct runs give each U = 0..=mn.
///
/// Counted by hand (see the module comment for why not with statrs): the counts are
/// the coefficients of the Gaussian binomial Π_{i=1..m} (1 − q^(n+i)) / (1 − q^i),
/// built one factor at a time as power series truncated past q^(mn).
fn u_null_counts(m: usize, n: usize) -> Vec<i128> {
    let top = m * n;
    let mut c = vec![0i128; top + 1];
    c[0] = 1;
    for i in 1..=m {
        // × (1 − q^(n+i))
        for j in (n + i..=top).rev() {
            c[j] -= c[j - n - i];
        }
        // ÷ (1 − q^i), that is × (1 + q^i + q^2i + …)
        for j in i..=top {
            c[j] += c[j - i];
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Reference p-values: scipy 1.17.1,
    /// `scipy.stats.mannwhitneyu(new, base, alternative="two-sided")` with the
    /// default `method="auto"` (exact when a side has at most 8 runs and there are
    /// no ties, else the normal approximation with continuity correction), run in
    /// a venv with `pip install scipy`. The Hodges–Lehmann references were
    /// computed in the same Python session by brute force: every pairwise
    /// difference sorted, and the interval's rank from the U distribution counted
    /// by enumerating all splits with `itertools.combinations` (for the tied case,
    /// from the normal quantile ⌊mn/2 − z·σ + ½⌋ with the tie-corrected σ and
    /// `scipy.stats.norm.ppf(0.975)`).
    struct Case {
        base: &'static [f64],
        new: &'static [f64],
        p: f64,
        method: Method,
        shift: f64,
        ci: Option<[f64; 2]>,
    }

    const CASES: &[Case] = &[
        // 4 against 4, fully apart: the smallest p of 4 vs 4, 2/70.
        Case {
            base: &[1.0, 2.0, 3.0, 4.0],
            new: &[11.0, 12.0, 13.0, 14.0],
            p: 0.028_571_428_571_428_57,
            method: Method::Exact,
            shift: 10.0,
            ci: Some([7.0, 13.0]),
        },
        // 5 against 5, new higher with one overlap: significant.
        Case {
            base: &[10.1, 10.4, 9.8, 10.0, 10.3],
            new: &[10.6, 10.2, 10.9, 11.0, 10.7],
            p: 0.031_746_031_746_031_744,
            method: Method::Exact,
            shift: 0.6,
            ci: Some([0.1, 1.0]),
        },
        // 5 against 5, interleaved: no difference.
        Case {
            base: &[100.0, 98.5, 101.2, 99.1, 100.4],
            new: &[99.8, 101.0, 100.9, 98.9, 100.1],
            p: 0.841_269_841_269_841_3,
            method: Method::Exact,
            shift: 0.4,
            ci: Some([-1.4, 1.9]),
        },
        // Ties: the normal approximation with tie and continuity correction.
        Case {
            base: &[1.0, 2.0, 2.0, 3.0, 4.0],
            new: &[2.0, 3.0, 4.0, 4.0, 5.0],
            p: 0.162_586_850_726_354_93,
            method: Method::NormalApproximation,
            shift: 1.0,
            ci: Some([-1.0, 3.0]),
        },
        // 10 against 12: both sides past 8 runs, the normal approximation.
        Case {
            base: &[20.1, 19.7, 20.4, 21.0, 19.9, 20.6, 20.2, 20.8, 19.5, 20.0],
            new: &[
                21.3, 20.9, 21.8, 20.5, 21.1, 22.0, 21.5, 20.7, 21.6, 21.2, 22.3, 21.4,
            ],
            p: 0.000_419_209_861_319_227_1,
            method: Method::NormalApproximation,
            shift: 1.2,
            ci: Some([0.6, 1.6]),
        },
        // 4 against 10 without ties: exact, as one side has at most 8 runs.
        Case {
            base: &[5.0, 5.2, 4.9, 5.1],
            new: &[5.3, 5.05, 5.6, 5.4, 5.8, 5.25, 5.5, 5.7, 5.35, 5.45],
            p: 0.007_992_007_992_007_992,
            method: Method::Exact,
            shift: 0.4,
            ci: Some([0.15, 0.7]),
        },
    ];

    #[test]
    fn p_values_and_shifts_match_the_references() {
        for (i, c) in CASES.iter().enumerate() {
            let t = u_test(c.base, c.new).unwrap();
            assert!(
                close(t.p_value, c.p, 1e-9),
                "case {i}: p {} vs {}",
                t.p_value,
                c.p
            );
            assert_eq!(t.method, c.method, "case {i}");
            assert!(close(t.shift, c.shift, 1e-9), "case {i}: shift {}", t.shift);
            match (t.shift_ci, c.ci) {
                (Some(a), Some(b)) => assert!(
                    close(a[0], b[0], 1e-9) && close(a[1], b[1], 1e-9),
                    "case {i}: ci {a:?} vs {b:?}"
                ),
                (a, b) => assert_eq!(a, b, "case {i}"),
            }
        }
    }

    #[test]
    fn three_against_three_can_never_be_significant_and_four_against_four_can() {
        assert!(close(smallest_p(3, 3), 0.1, 1e-12));
        assert!(!can_reach_alpha(3, 3));
        assert!(can_reach_alpha(4, 4));
        assert!(!can_reach_alpha(3, 4), "2/35 = 0.057");
        assert!(can_reach_alpha(3, 5), "2/56 = 0.036");
        assert!(!can_reach_alpha(1, 30));
        assert_eq!(min_runs_each_side(), 4);
        // The most extreme 3 vs 3 outcome really gives that p.
        let t = u_test(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        assert!(close(t.p_value, 0.1, 1e-12), "{}", t.p_value);
        assert_eq!(t.shift_ci, None, "no 95% interval exists at 3 vs 3");
    }

    #[test]
    fn one_run_on_a_side_is_not_tested() {
        assert_eq!(u_test(&[1.0], &[2.0, 3.0, 4.0]), None);
        assert_eq!(u_test(&[1.0, 2.0], &[3.0]), None);
    }

    #[test]
    fn the_counted_distribution_matches_enumerating_every_split() {
        for m in 1..=6 {
            for n in 1..=6 {
                // Every way to give m of the ranks 1..=m+n to one side.
                let mut brute = vec![0i128; m * n + 1];
                for mask in 0u32..1 << (m + n) {
                    if mask.count_ones() as usize != m {
                        continue;
                    }
                    let rank_sum: usize = (0..m + n)
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| i + 1)
                        .sum();
                    brute[rank_sum - m * (m + 1) / 2] += 1;
                }
                assert_eq!(u_null_counts(m, n), brute, "{m} vs {n}");
            }
        }
    }

    #[test]
    fn exact_p_agrees_with_the_tail_of_the_distribution_for_every_u() {
        // 3 vs 4: C(7, 3) = 35 splits; the two-sided p of U is 2 × P(U' ≥ max(U, 12 − U)).
        let counts = u_null_counts(3, 4);
        for u in 0..=12 {
            let (base, new) = samples_with_u(3, 4, u);
            let hi = u.max(12 - u);
            let tail: i128 = counts[hi..].iter().sum();
            let expected = (2.0 * tail as f64 / 35.0).min(1.0);
            assert!(close(exact_p(&base, &new), expected, 1e-12), "U = {u}");
        }
    }

    /// A canary: statrs' exact branch returns the complement of the p-value when
    /// the first sample is not the larger one, which is why `exact_p` counts the
    /// distribution itself. When this fails, statrs is fixed and may be used.
    #[test]
    fn statrs_exact_p_is_still_wrong_for_equal_sizes() {
        let (_, p) = mannwhitneyu(
            &[11.0, 12.0, 13.0, 14.0],
            &[1.0, 2.0, 3.0, 4.0],
            MannWhitneyUMethod::Exact,
            Alternative::TwoSided,
        )
        .unwrap();
        assert!(close(p, 1.0, 1e-12), "statrs now gives {p} (scipy: 2/70)");
    }

    /// Distinct values where exactly `u` of the (new, base) pairs have new > base.
    fn samples_with_u(m: usize, n: usize, u: usize) -> (Vec<f64>, Vec<f64>) {
        // Base runs at 0, 10, 20, …; each new run sits just above some base
        // runs. Distributing u over the n new runs greedily realises any U.
        let base: Vec<f64> = (0..m).map(|i| i as f64 * 10.0).collect();
        let mut left = u;
        let new = (0..n)
            .map(|j| {
                let above = left.min(m);
                left -= above;
                above as f64 * 10.0 - 5.0 + j as f64 * 0.01
            })
            .collect();
        (base, new)
    }
}
