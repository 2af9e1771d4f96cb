//! `compare`: a baseline against a candidate, figure by figure.
//!
//! Each side is one run or several repeats of the same run. With repeats, each
//! figure is the median of its side, and the spread of a side is the range
//! (min..max) of its repeats. A difference is **within noise** when the two ranges
//! overlap: the repeats alone already vary that much, so the difference is not
//! evidence of a change. A figure *regresses* when it moved in its bad direction by
//! more than its threshold and is not within noise.
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
    /// The repeats' ranges overlap.
    WithinNoise,
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
            Verdict::WithinNoise => "within noise",
            Verdict::Regression => "REGRESSION",
            Verdict::Informational => "-",
        }
    }
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
    pub verdict: Verdict,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub base: Vec<String>,
    pub new: Vec<String>,
    pub warnings: Vec<String>,
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
    let repeats = base.len() > 1 || new.len() > 1;
    let mut rows = Vec::new();
    for figure in FIGURES.iter().filter(|f| f.headline) {
        let values = |side: &[(PathBuf, RunResult)]| -> Vec<f64> {
            side.iter().filter_map(|(_, r)| (figure.get)(r)).collect()
        };
        let (Some(b), Some(n)) = (Side::of(&values(base)), Side::of(&values(new))) else {
            continue;
        };
        rows.push(judge(figure, b, n, thresholds.for_figure(figure), repeats));
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
        rows,
        regressions,
    }
}

fn judge(
    figure: &'static Figure,
    base: Side,
    new: Side,
    threshold: Threshold,
    repeats: bool,
) -> Row {
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
    } else if repeats && base.min <= new.max && new.min <= base.max {
        Verdict::WithinNoise
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
        verdict,
    }
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

/// Output formats of `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Markdown,
    Json,
}

/// Renders the comparison.
pub fn render(c: &Comparison, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(c).unwrap_or_default() + "\n",
        Format::Table | Format::Markdown => {
            let mut t = new_table(&["figure", "base", "new", "change", "change %", "verdict"]);
            if format == Format::Markdown {
                t.load_preset(comfy_table::presets::ASCII_MARKDOWN);
            }
            for row in &c.rows {
                let (abs, rel) = format_delta(row);
                let label = if row.unit.is_empty() || row.unit == row.label {
                    row.label.to_string()
                } else {
                    format!("{} ({})", row.label, row.unit)
                };
                let verdict = match (format, row.verdict) {
                    (Format::Markdown, Verdict::Regression) => "**REGRESSION**".to_string(),
                    (_, v) => v.label().to_string(),
                };
                t.add_row(vec![
                    label,
                    format_side(row.figure, &row.base),
                    format_side(row.figure, &row.new),
                    abs,
                    rel,
                    verdict,
                ]);
            }
            let mut out = String::new();
            let (warn, bold) = if format == Format::Markdown {
                ("> **Warning:** ", "**")
            } else {
                ("WARNING: ", "")
            };
            let bullet = if format == Format::Markdown { "- " } else { "" };
            out.push_str(&format!(
                "{bullet}base: {}\n{bullet}new:  {}\n\n",
                c.base.join(" "),
                c.new.join(" ")
            ));
            for w in &c.warnings {
                out.push_str(&format!("{warn}{w}\n"));
                if format == Format::Markdown {
                    // A blank line keeps each warning its own quote block.
                    out.push('\n');
                }
            }
            if !c.warnings.is_empty() {
                out.push('\n');
            }
            out.push_str(&t.to_string());
            out.push_str("\n\n");
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
    }
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

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(side(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(side(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn latency_up_past_threshold_is_a_regression() {
        let r = judge(
            p99(),
            side(&[10.0]),
            side(&[11.0]),
            Threshold::Relative(5.0),
            false,
        );
        assert_eq!(r.verdict, Verdict::Regression);
        let r = judge(
            p99(),
            side(&[10.0]),
            side(&[10.4]),
            Threshold::Relative(5.0),
            false,
        );
        assert_eq!(r.verdict, Verdict::Worse);
        let r = judge(
            p99(),
            side(&[10.0]),
            side(&[9.0]),
            Threshold::Relative(5.0),
            false,
        );
        assert_eq!(r.verdict, Verdict::Better);
    }

    #[test]
    fn throughput_down_is_worse_and_up_is_better() {
        let rate = figures::find("msg/s").unwrap();
        let r = judge(
            rate,
            side(&[100.0]),
            side(&[80.0]),
            Threshold::Relative(5.0),
            false,
        );
        assert_eq!(r.verdict, Verdict::Regression);
        let r = judge(
            rate,
            side(&[100.0]),
            side(&[120.0]),
            Threshold::Relative(5.0),
            false,
        );
        assert_eq!(r.verdict, Verdict::Better);
    }

    #[test]
    fn overlapping_repeats_are_noise() {
        let r = judge(
            p99(),
            side(&[10.0, 12.0, 14.0]),
            side(&[13.0, 15.0, 16.0]),
            Threshold::Relative(5.0),
            true,
        );
        assert_eq!(r.verdict, Verdict::WithinNoise);
        let r = judge(
            p99(),
            side(&[10.0, 11.0, 12.0]),
            side(&[15.0, 16.0, 17.0]),
            Threshold::Relative(5.0),
            true,
        );
        assert_eq!(r.verdict, Verdict::Regression);
    }

    #[test]
    fn errors_appearing_from_zero_regress() {
        let failed = figures::find("failed").unwrap();
        let r = judge(
            failed,
            side(&[0.0]),
            side(&[3.0]),
            Threshold::Relative(5.0),
            false,
        );
        assert_eq!(r.verdict, Verdict::Regression);
        assert_eq!(r.relative_percent, None);
        let r = judge(failed, side(&[0.0]), side(&[3.0]), Threshold::Off, false);
        assert_eq!(r.verdict, Verdict::Worse);
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
