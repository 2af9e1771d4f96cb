//! `compare`'s verdicts on constructed runs agree with the Mann-Whitney U test.
//! Pure logic: calls the library, no binary.

mod common;

use std::path::PathBuf;

use analyze::{Significance, Thresholds, Verdict, compare};
use common::{Builder, spread};
use report::RunResult;

/// One run per `hi`: 1000 latencies spread over 1 ms..`hi` µs, so the p99 of
/// each run is ordered as the `hi` values are.
fn runs(prefix: &str, his: &[u64]) -> Vec<(PathBuf, RunResult)> {
    his.iter()
        .enumerate()
        .map(|(i, &hi)| {
            let result = Builder::burst(&spread(1000, 1_000, hi), 10.0).build();
            (PathBuf::from(format!("{prefix}{i}.json")), result)
        })
        .collect()
}

struct Case {
    what: &'static str,
    base: &'static [u64],
    new: &'static [u64],
    threshold: &'static str,
    /// scipy 1.17.1 `scipy.stats.mannwhitneyu(new, base)` on the same order of
    /// values (only the ranks matter to the test).
    p: f64,
    significance: Significance,
    verdict: Verdict,
}

const CASES: &[Case] = &[
    Case {
        what: "4 vs 4, every new run slower",
        base: &[20_000, 21_000, 22_000, 23_000],
        new: &[24_000, 25_000, 26_000, 27_000],
        threshold: "5%",
        p: 0.028_571_428_571_428_57,
        significance: Significance::Significant,
        verdict: Verdict::Regression,
    },
    Case {
        what: "4 vs 4, every new run faster",
        base: &[24_000, 25_000, 26_000, 27_000],
        new: &[20_000, 21_000, 22_000, 23_000],
        threshold: "5%",
        p: 0.028_571_428_571_428_57,
        significance: Significance::Significant,
        verdict: Verdict::Better,
    },
    Case {
        what: "4 vs 4 interleaved, median +2% past a 1% threshold",
        base: &[20_000, 21_000, 22_000, 23_000],
        new: &[20_500, 21_500, 22_500, 23_500],
        threshold: "1%",
        p: 0.685_714_285_714_285_7,
        significance: Significance::NotSignificant,
        verdict: Verdict::NotSignificant,
    },
    Case {
        what: "4 vs 4, every new run slower, within a 50% threshold",
        base: &[20_000, 21_000, 22_000, 23_000],
        new: &[24_000, 25_000, 26_000, 27_000],
        threshold: "50%",
        p: 0.028_571_428_571_428_57,
        significance: Significance::Significant,
        verdict: Verdict::Worse,
    },
    Case {
        what: "3 vs 3, every new run slower: p cannot go below 0.1",
        base: &[20_000, 21_000, 22_000],
        new: &[24_000, 25_000, 26_000],
        threshold: "5%",
        p: 0.1,
        significance: Significance::NotJudged,
        verdict: Verdict::Regression,
    },
];

#[test]
fn p99_verdicts_match_the_u_test() {
    for c in CASES {
        let thresholds = Thresholds::parse(&[c.threshold.to_string()]).unwrap();
        let comparison = compare(&runs("b", c.base), &runs("n", c.new), &thresholds);
        let row = comparison
            .rows
            .iter()
            .find(|r| r.figure == "p99")
            .expect("a p99 row");
        let test = row.test.as_ref().expect("repeats are tested");
        assert!(
            (test.p_value - c.p).abs() < 1e-12,
            "{}: p {} vs {}",
            c.what,
            test.p_value,
            c.p
        );
        assert_eq!(row.significance, c.significance, "{}", c.what);
        assert_eq!(row.verdict, c.verdict, "{}", c.what);
        let regressed = comparison.regressions.contains(&"p99");
        assert_eq!(regressed, c.verdict == Verdict::Regression, "{}", c.what);
    }
}
