//! `compare`: a baseline against a candidate, figure by figure.
//!
//! Each side is one run or several repeats of the same run. Each figure is the
//! median of its side. With repeats on both sides, a Mann-Whitney U test (see
//! [`crate::significance`]) decides whether the sides differ at all: a figure
//! *regresses* only when the difference is **significant** (two-sided p < 0.05)
//! **and** its median moved in the bad direction by more than its threshold; a
//! difference the test cannot tell from run-to-run noise is `not significant`,
//! whatever its size. When the runs are too few for the test ever to reach
//! p < 0.05 (one run on a side, or 3 against 3), significance is not judged: the
//! verdict uses the threshold alone, and a note says so and how many runs it takes.
//!
//! Thresholds are relative to the baseline median (`5%`), or absolute for latency
//! (`2ms`, `0.1s`); `off` exempts a figure. A figure whose baseline is 0 and whose
//! new value is worse (0 failures → 3) has an infinite relative change, so it
//! regresses under any relative threshold.

use std::collections::BTreeMap;
use std::path::PathBuf;

use report::RunResult;
use serde::Serialize;

use crate::catalog::stem;
use crate::figures::{self, Better, FIGURES, Figure, Unit};
use crate::output::{self, Format, TestCase};
use crate::significance::{self, ALPHA, UTest};
use crate::tables::new_table;

/// The threshold applied when none is given.
pub const DEFAULT_THRESHOLD_PERCENT: f64 = 5.0;

/// How far a figure may move in its bad direction before it is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// Percent of the baseline.
    Relative(f64),
    /// In the figure's unit (milliseconds for latency).
    Absolute(f64),
    /// This figure never fails the comparison.
    Off,
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Relative(p) => write!(f, "{p}%"),
            Threshold::Absolute(v) => write!(f, "{v}"),
            Threshold::Off => write!(f, "off"),
        }
    }
}

/// The global threshold and the per-figure overrides.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub global: Threshold,
    pub per_figure: BTreeMap<&'static str, Threshold>,
}

impl Thresholds {
    /// Reads `--threshold` values: `5%` sets the global threshold, `p99=10%`,
    /// `p99=2ms` or `timeouts=off` a figure's own.
    pub fn parse(specs: &[String]) -> Result<Thresholds, String> {
        let mut t = Thresholds {
            global: Threshold::Relative(DEFAULT_THRESHOLD_PERCENT),
            per_figure: BTreeMap::new(),
        };
        for spec in specs {
            match spec.split_once('=') {
                None => t.global = parse_threshold(spec, None)?,
                Some((name, value)) => {
                    let figure = figures::find(name).ok_or_else(|| {
                        format!(
                            "--threshold {spec}: unknown figure {name:?}; known figures: {}",
                            figures::known_names()
                        )
                    })?;
                    let value = parse_threshold(value, Some(figure))
                        .map_err(|e| format!("--threshold {spec}: {e}"))?;
                    t.per_figure.insert(figure.name, value);
                }
            }
        }
        Ok(t)
    }

    pub fn for_figure(&self, figure: &Figure) -> Threshold {
        self.per_figure
            .get(figure.name)
            .copied()
            .unwrap_or(self.global)
    }
}

fn parse_threshold(text: &str, figure: Option<&Figure>) -> Result<Threshold, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("none") {
        return Ok(Threshold::Off);
    }
    let relative = |n: &str| -> Result<Threshold, String> {
        let v: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage like 5%"))?;
        if v < 0.0 || !v.is_finite() {
            return Err(format!(
                "{text:?}: a threshold is a non-negative percentage"
            ));
        }
        Ok(Threshold::Relative(v))
    };
    if let Some(n) = text.strip_suffix('%') {
        return relative(n);
    }
    match figure {
        Some(f) if matches!(f.unit, Unit::Millis | Unit::Seconds) && text.ends_with('s') => {
            let v = figures::parse_value(f, text)?;
            Ok(Threshold::Absolute(v.abs()))
        }
        // A bare number is a percentage, as for the global threshold.
        _ => relative(text),
    }
}

/// One side's values of one figure.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many runs hold this figure.
    pub runs: usize,
}

impl Side {
    fn of(values: &[f64]) -> Option<Side> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Side {
            median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        })
    }
}

/// The verdict on one figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Same,
    Better,
    /// Worse, but within the threshold.
    Worse,
    /// The U test cannot tell the two sides apart.
    NotSignificant,
    /// Worse past the threshold.
    Regression,
    /// No direction (informational figure).
    Informational,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Better => "better",
            Verdict::Worse => "worse (within threshold)",
            Verdict::NotSignificant => "not significant",
            Verdict::Regression => "REGRESSION",
            Verdict::Informational => "-",
        }
    }
}

/// What the U test says about a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Significance {
    /// p < α: the sides differ.
    Significant,
    /// p ≥ α: the difference is within the runs' own spread.
    NotSignificant,
    /// Too few runs for the test to reach α; the threshold alone decides.
    NotJudged,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub base: Side,
    pub new: Side,
    /// new − base (medians).
    pub delta: f64,
    /// Percent of the baseline; `None` when the baseline is 0 and the value moved.
    pub relative_percent: Option<f64>,
    pub threshold: Threshold,
    /// The U test of the two sides' runs; `None` with one run on a side.
    pub test: Option<UTest>,
    pub significance: Significance,
    pub verdict: Verdict,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub base: Vec<String>,
    pub new: Vec<String>,
    pub warnings: Vec<String>,
    /// The significance level of the U test.
    pub alpha: f64,
    /// Why significance was not judged, and what it would take.
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
    /// The figures that regressed; non-empty means exit 1.
    pub regressions: Vec<&'static str>,
}

/// Compares the loaded runs of each side.
pub fn compare(
    base: &[(PathBuf, RunResult)],
    new: &[(PathBuf, RunResult)],
    thresholds: &Thresholds,
) -> Comparison {
    let mut rows = Vec::new();
    for figure in FIGURES.iter().filter(|f| f.headline) {
        let values = |side: &[(PathBuf, RunResult)]| -> Vec<f64> {
            side.iter().filter_map(|(_, r)| (figure.get)(r)).collect()
        };
        let (base_values, new_values) = (values(base), values(new));
        let (Some(b), Some(n)) = (Side::of(&base_values), Side::of(&new_values)) else {
            continue;
        };
        let test = significance::u_test(&base_values, &new_values);
        rows.push(judge(figure, b, n, thresholds.for_figure(figure), test));
    }
    let regressions = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Regression)
        .map(|r| r.figure)
        .collect();
    Comparison {
        base: base.iter().map(|(p, _)| p.display().to_string()).collect(),
        new: new.iter().map(|(p, _)| p.display().to_string()).collect(),
        warnings: settings_warnings(base, new),
        alpha: ALPHA,
        notes: significance_notes(&rows),
        rows,
        regressions,
    }
}

fn judge(
    figure: &'static Figure,
    base: Side,
    new: Side,
    threshold: Threshold,
    test: Option<UTest>,
) -> Row {
    let significance = match &test {
        Some(t) if significance::can_reach_alpha(base.runs, new.runs) => {
            if t.p_value < ALPHA {
                Significance::Significant
            } else {
                Significance::NotSignificant
            }
        }
        _ => Significance::NotJudged,
    };
    let delta = new.median - base.median;
    let relative_percent = if base.median != 0.0 {
        Some(delta * 100.0 / base.median.abs())
    } else if delta == 0.0 {
        Some(0.0)
    } else {
        None
    };
    let worse = match figure.better {
        Better::Higher => delta < 0.0,
        Better::Lower => delta > 0.0,
        Better::Neither => false,
    };
    let verdict = if figure.better == Better::Neither {
        Verdict::Informational
    } else if delta == 0.0 {
        Verdict::Same
    } else if significance == Significance::NotSignificant {
        Verdict::NotSignificant
    } else if !worse {
        Verdict::Better
    } else {
        let past = match threshold {
            Threshold::Off => false,
            Threshold::Absolute(limit) => delta.abs() > limit,
            Threshold::Relative(limit) => relative_percent.is_none_or(|p| p.abs() > limit),
        };
        if past {
            Verdict::Regression
        } else {
            Verdict::Worse
        }
    };
    Row {
        figure: figure.name,
        label: figure.label,
        unit: figure.unit.suffix().trim(),
        base,
        new,
        delta,
        relative_percent,
        threshold,
        test,
        significance,
        verdict,
    }
}

/// One note for each pair of run counts whose figures could not be judged.
fn significance_notes(rows: &[Row]) -> Vec<String> {
    let sizes: std::collections::BTreeSet<(usize, usize)> = rows
        .iter()
        .filter(|r| r.significance == Significance::NotJudged)
        .map(|r| (r.base.runs, r.new.runs))
        .collect();
    let need = significance::min_runs_each_side();
    sizes
        .into_iter()
        .map(|(b, n)| {
            if b == 1 || n == 1 {
                format!(
                    "{b} vs {n} runs: with one run on a side, significance cannot be judged; \
                     the verdicts use the threshold alone. For a Mann-Whitney U test at \
                     alpha = {ALPHA}, repeat each side at least {need} times \
                     (--base A1 A2 ... --new B1 B2 ...)."
                )
            } else {
                format!(
                    "{b} vs {n} runs: significance cannot be judged, since the smallest \
                     p-value these runs can give is {:.3}, not below alpha = {ALPHA}; the \
                     verdicts use the threshold alone. At least {need} runs on each side \
                     are needed.",
                    significance::smallest_p(b, n)
                )
            }
        })
        .collect()
}

/// The settings that make two runs comparable. A difference is worth a loud
/// warning: comparing 50 workers with 100 says little about the code.
fn settings_warnings(base: &[(PathBuf, RunResult)], new: &[(PathBuf, RunResult)]) -> Vec<String> {
    /// A setting's value, or `None` where the setting does not apply to a run.
    type Setting = (&'static str, fn(&RunResult) -> Option<String>);
    let settings: [Setting; 6] = [
        ("test type", |r| Some(r.test_type.clone())),
        ("workers", |r| {
            Some(
                r.concurrent_workers
                    .map_or("none".into(), |w| w.to_string()),
            )
        }),
        ("target rate", |r| {
            Some(r.target_rate.map_or("none".into(), |v| v.to_string()))
        }),
        ("message size", |r| Some(r.message_size.to_string())),
        ("servers", |r| {
            let mut s = r.servers.clone();
            s.sort();
            Some(s.join(","))
        }),
        // In sustained mode the count follows from rate × duration and may
        // legitimately differ by a few; in burst mode it is the setting.
        ("message count", |r| {
            r.target_rate
                .is_none()
                .then(|| r.metrics.total_messages.to_string())
        }),
    ];
    let all: Vec<(&str, &PathBuf, &RunResult)> = base
        .iter()
        .map(|(p, r)| ("base", p, r))
        .chain(new.iter().map(|(p, r)| ("new", p, r)))
        .collect();
    let mut warnings = Vec::new();
    for (name, get) in settings {
        let applicable: Vec<(&str, &PathBuf, String)> = all
            .iter()
            .filter_map(|(side, p, r)| get(r).map(|v| (*side, *p, v)))
            .collect();
        let Some((first_side, first_path, reference)) = applicable.first() else {
            continue;
        };
        let differing: Vec<String> = applicable
            .iter()
            .filter(|(_, _, v)| v != reference)
            .map(|(side, p, v)| format!("{side} {} = {v}", stem(p)))
            .collect();
        if !differing.is_empty() {
            warnings.push(format!(
                "the runs differ in {name}: {first_side} {} = {reference}, {}",
                stem(first_path),
                differing.join(", ")
            ));
        }
    }
    for (side, p, r) in &all {
        if r.interrupted() {
            warnings.push(format!(
                "{side} {} was interrupted; its figures cover part of a run",
                stem(p)
            ));
        }
        if r.generator_saturated {
            warnings.push(format!(
                "{side} {} was limited by the generator, not the server",
                stem(p)
            ));
        }
    }
    warnings
}

fn format_side(figure: &str, side: &Side) -> String {
    let unit = figures::find(figure).map_or(Unit::Count, |f| f.unit);
    if side.runs > 1 {
        format!(
            "{} ({}..{})",
            unit.format(side.median),
            unit.format(side.min),
            unit.format(side.max)
        )
    } else {
        unit.format(side.median)
    }
}

/// `0.029`, `<0.001`.
fn format_p(p: f64) -> String {
    if p < 0.001 {
        "<0.001".to_string()
    } else {
        format!("{p:.3}")
    }
}

fn signed(unit: Unit, v: f64) -> String {
    format!("{}{}", if v > 0.0 { "+" } else { "" }, unit.format(v))
}

/// The Hodges–Lehmann shift and its interval: `+1.20 [+0.60, +1.60]`.
fn format_shift(row: &Row, test: &UTest) -> String {
    let unit = figures::find(row.figure).map_or(Unit::Count, |f| f.unit);
    let ci = match test.shift_ci {
        Some([lo, hi]) => format!("[{}, {}]", signed(unit, lo), signed(unit, hi)),
        None => "[n/a]".to_string(),
    };
    format!("{} {ci}", signed(unit, test.shift))
}

fn format_delta(row: &Row) -> (String, String) {
    let unit = figures::find(row.figure).map_or(Unit::Count, |f| f.unit);
    let sign = if row.delta > 0.0 { "+" } else { "" };
    let abs = format!("{sign}{}", unit.format(row.delta));
    let rel = match row.relative_percent {
        Some(p) => format!("{}{p:.1}%", if p > 0.0 { "+" } else { "" }),
        None => "new".to_string(),
    };
    (abs, rel)
}

/// Renders the comparison.
pub fn render(c: &Comparison, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(c).unwrap_or_default() + "\n",
        Format::Text => render_text(c, false),
        Format::Markdown => render_text(c, true),
        Format::Junit => render_junit(c),
    }
}

/// One test case per figure, failed when it regressed; the warnings and notes go
/// to the suite's output.
fn render_junit(c: &Comparison) -> String {
    let cases: Vec<TestCase> = c
        .rows
        .iter()
        .map(|row| {
            let (abs, rel) = format_delta(row);
            let detail = format!(
                "base {} new {} change {abs} ({rel}) threshold {}: {}",
                format_side(row.figure, &row.base),
                format_side(row.figure, &row.new),
                row.threshold,
                row.verdict.label()
            );
            TestCase {
                name: row.figure.to_string(),
                failure: (row.verdict == Verdict::Regression)
                    .then(|| format!("regression: {abs} ({rel}), past {}", row.threshold)),
                detail,
            }
        })
        .collect();
    let mut suite_out = format!("base: {}\nnew: {}\n", c.base.join(" "), c.new.join(" "));
    for w in &c.warnings {
        suite_out.push_str(&format!("warning: {w}\n"));
    }
    for n in &c.notes {
        suite_out.push_str(&format!("note: {n}\n"));
    }
    output::junit("analyze compare", &cases, &suite_out)
}

/// The sources, the markdown document's warnings, the table, the notes and the
/// outcome.
fn render_text(c: &Comparison, markdown: bool) -> String {
    let (bullet, bold, note) = if markdown {
        ("- ", "**", "> **Note:** ")
    } else {
        ("", "", "Note: ")
    };
    let mut out = format!(
        "{bullet}base: {}\n{bullet}new:  {}\n\n",
        c.base.join(" "),
        c.new.join(" ")
    );
    if markdown {
        for w in &c.warnings {
            // A blank line keeps each warning its own quote block.
            out.push_str(&format!("> **Warning:** {w}\n\n"));
        }
    }
    out.push_str(&figures_table(c, markdown).to_string());
    out.push_str("\n\n");
    for n in &c.notes {
        out.push_str(&format!("{note}{n}\n\n"));
    }
    if c.regressions.is_empty() {
        out.push_str(&format!("{bold}No regression past the threshold.{bold}\n"));
    } else {
        out.push_str(&format!(
            "{bold}Regression{bold} in {}.\n",
            c.regressions.join(", ")
        ));
    }
    out
}

/// One row per figure; the `p` and shift columns only when a figure was tested.
pub(crate) fn figures_table(c: &Comparison, markdown: bool) -> comfy_table::Table {
    let tested = c.rows.iter().any(|r| r.test.is_some());
    let mut header = vec!["figure", "base", "new", "change", "change %"];
    if tested {
        header.extend(["p", "shift (95% CI)"]);
    }
    header.push("verdict");
    let mut t = new_table(&header);
    if markdown {
        t.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    }
    for row in &c.rows {
        let (abs, rel) = format_delta(row);
        let label = if row.unit.is_empty() || row.unit == row.label {
            row.label.to_string()
        } else {
            format!("{} ({})", row.label, row.unit)
        };
        let mut cells = vec![
            label,
            format_side(row.figure, &row.base),
            format_side(row.figure, &row.new),
            abs,
            rel,
        ];
        if tested {
            match &row.test {
                Some(test) => cells.extend([format_p(test.p_value), format_shift(row, test)]),
                None => cells.extend(["-".to_string(), "-".to_string()]),
            }
        }
        cells.push(match (markdown, row.verdict) {
            (true, Verdict::Regression) => "**REGRESSION**".to_string(),
            (_, v) => v.label().to_string(),
        });
        t.add_row(cells);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(values: &[f64]) -> Side {
        Side::of(values).unwrap()
    }

    fn p99() -> &'static Figure {
        figures::find("p99").unwrap()
    }

    /// Judges `figure` over the given runs of each side, as `compare` does.
    fn judge_runs(figure: &'static Figure, base: &[f64], new: &[f64], t: Threshold) -> Row {
        judge(
            figure,
            side(base),
            side(new),
            t,
            significance::u_test(base, new),
        )
    }

    fn verdict(figure: &'static Figure, base: &[f64], new: &[f64], t: Threshold) -> Verdict {
        judge_runs(figure, base, new, t).verdict
    }

    const FIVE: Threshold = Threshold::Relative(5.0);

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(side(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(side(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn latency_up_past_threshold_is_a_regression() {
        assert_eq!(verdict(p99(), &[10.0], &[11.0], FIVE), Verdict::Regression);
        assert_eq!(verdict(p99(), &[10.0], &[10.4], FIVE), Verdict::Worse);
        assert_eq!(verdict(p99(), &[10.0], &[9.0], FIVE), Verdict::Better);
    }

    #[test]
    fn throughput_down_is_worse_and_up_is_better() {
        let rate = figures::find("msg/s").unwrap();
        assert_eq!(verdict(rate, &[100.0], &[80.0], FIVE), Verdict::Regression);
        assert_eq!(verdict(rate, &[100.0], &[120.0], FIVE), Verdict::Better);
    }

    #[test]
    fn one_run_on_a_side_is_not_judged_and_falls_back_to_the_threshold() {
        let r = judge_runs(p99(), &[10.0], &[11.0, 12.0, 13.0], FIVE);
        assert_eq!(r.test, None);
        assert_eq!(r.significance, Significance::NotJudged);
        assert_eq!(r.verdict, Verdict::Regression);
        let notes = significance_notes(&[r]);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("1 vs 3 runs: with one run on a side, significance cannot be judged")
                && notes[0].contains("at least 4 times"),
            "{notes:?}"
        );
    }

    #[test]
    fn three_against_three_is_not_judged_and_says_so() {
        // Overlapping ranges, median +25%: the old range rule called this noise.
        let r = judge_runs(p99(), &[10.0, 12.0, 14.0], &[13.0, 15.0, 16.0], FIVE);
        assert_eq!(r.significance, Significance::NotJudged);
        assert!(r.test.is_some(), "the p-value is still shown");
        assert_eq!(r.verdict, Verdict::Regression);
        let notes = significance_notes(&[r]);
        assert!(
            notes[0].contains("smallest p-value these runs can give is 0.100")
                && notes[0].contains("At least 4 runs on each side"),
            "{notes:?}"
        );
        // Far apart, still past the threshold: a regression, as before.
        let r = judge_runs(p99(), &[10.0, 11.0, 12.0], &[15.0, 16.0, 17.0], FIVE);
        assert_eq!(r.verdict, Verdict::Regression);
    }

    #[test]
    fn an_insignificant_difference_is_not_a_regression_whatever_its_size() {
        // Interleaved runs, median +18%: p = 0.548 (scipy.stats.mannwhitneyu).
        let base = [10.0, 11.0, 30.0, 12.0, 10.5];
        let new = [13.0, 10.2, 14.0, 11.5, 29.0];
        let r = judge_runs(p99(), &base, &new, FIVE);
        assert_eq!(r.significance, Significance::NotSignificant);
        assert_eq!(r.verdict, Verdict::NotSignificant);
        assert!(significance_notes(&[r]).is_empty());
    }

    #[test]
    fn one_outlier_no_longer_hides_a_real_shift() {
        // Seven runs each side; one new run is an outlier that overlaps the base
        // range, which the range rule took for noise. U = 42 of 49, exact p =
        // 90/3432 = 0.026.
        let base = [10.0, 10.1, 10.2, 10.3, 10.4, 10.5, 10.6];
        let new = [11.0, 11.1, 11.2, 11.3, 11.4, 11.5, 9.0];
        let r = judge_runs(p99(), &base, &new, FIVE);
        let test = r.test.as_ref().unwrap();
        assert!(
            (test.p_value - 90.0 / 3432.0).abs() < 1e-12,
            "{}",
            test.p_value
        );
        assert_eq!(r.significance, Significance::Significant);
        assert_eq!(r.verdict, Verdict::Regression);
        // Significant but within a generous threshold: worse, not a regression.
        assert_eq!(
            verdict(p99(), &base, &new, Threshold::Relative(20.0)),
            Verdict::Worse
        );
        // Significant and in the good direction.
        assert_eq!(verdict(p99(), &new, &base, FIVE), Verdict::Better);
    }

    #[test]
    fn errors_appearing_from_zero_regress() {
        let failed = figures::find("failed").unwrap();
        let r = judge_runs(failed, &[0.0], &[3.0], FIVE);
        assert_eq!(r.verdict, Verdict::Regression);
        assert_eq!(r.relative_percent, None);
        assert_eq!(
            verdict(failed, &[0.0], &[3.0], Threshold::Off),
            Verdict::Worse
        );
    }

    #[test]
    fn thresholds_parse_global_relative_absolute_and_off() {
        let t = Thresholds::parse(&[
            "10%".into(),
            "p99=20%".into(),
            "p50=2ms".into(),
            "timeouts=off".into(),
        ])
        .unwrap();
        assert_eq!(t.global, Threshold::Relative(10.0));
        assert_eq!(t.for_figure(p99()), Threshold::Relative(20.0));
        assert_eq!(
            t.for_figure(figures::find("p50").unwrap()),
            Threshold::Absolute(2.0)
        );
        assert_eq!(
            t.for_figure(figures::find("timeouts").unwrap()),
            Threshold::Off
        );
        let err = Thresholds::parse(&["p98=1%".into()]).unwrap_err();
        assert!(
            err.contains("unknown figure") && err.contains("p99_9"),
            "{err}"
        );
        assert!(Thresholds::parse(&["fast".into()]).is_err());
    }
}
