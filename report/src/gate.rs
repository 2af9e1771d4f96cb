//! The gate grammar shared by `analyze check` and `loadgen --require`: absolute
//! limits on the named [figures](crate::figures) of a result, in the manner of k6
//! thresholds (`p99<=25ms`, `success_rate>=99.9%`, `failed==0`).
//!
//! One implementation, so a gate means the same thing to the generator that
//! judges its own run and to the analyzer that judges the file afterwards. The
//! outcome of each gate is what a result records under `gates`.

use serde::{Deserialize, Serialize};

use crate::RunResult;
use crate::figures::{self, Figure};

/// A comparison operator of a gate. Serialized as its symbol (`"<="`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Eq => "==",
        }
    }

    /// Whether `value OP limit` holds.
    pub fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Op::Le => value <= limit,
            Op::Lt => value < limit,
            Op::Ge => value >= limit,
            Op::Gt => value > limit,
            Op::Eq => (value - limit).abs() <= f64::EPSILON * limit.abs().max(1.0),
        }
    }
}

/// Why a gate could not be read. The caller prefixes the flag (`--require`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    #[error("{text:?}: expected FIGURE OP VALUE, e.g. 'p99<=25ms' (OP is one of <= < >= > ==)")]
    Syntax { text: String },
    #[error("{text:?}: unknown figure {name:?}; known figures: {known}")]
    UnknownFigure {
        text: String,
        name: String,
        known: String,
    },
    #[error("{text:?}: {problem}")]
    Value { text: String, problem: String },
}

/// One gate, as parsed.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The gate as the user wrote it.
    pub text: String,
    pub figure: &'static Figure,
    pub op: Op,
    /// In the figure's unit (milliseconds for latency).
    pub limit: f64,
}

/// Which latency a plain latency figure (`p99`, `avg`, `max`) is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyBasis {
    /// The figure named: `p99` is the service time (`metrics.latency_ms.p99`).
    /// What `analyze check` does.
    AsNamed,
    /// The coordinated-omission corrected twin (`corrected_p99`) where the result
    /// has corrected latency (open-model runs); the service time otherwise. What
    /// `loadgen --require` does: in an open model the corrected latency is what a
    /// sender waited.
    CorrectedWhereMeasured,
}

/// The outcome of one gate: one entry of a result's `gates` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    /// The gate as written (`p99<=25ms`).
    pub gate: String,
    /// The canonical name of the figure judged (`corrected_p99` when the latency
    /// was judged corrected).
    pub figure: String,
    pub op: Op,
    /// In the figure's unit (milliseconds for latency, percent for rates).
    pub limit: f64,
    /// The run's value; `null` when the result does not hold the figure (the gate
    /// then fails).
    pub observed: Option<f64>,
    pub passed: bool,
    /// This gate stopped the run early (`loadgen --abort-on-fail`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aborted_run: bool,
}

impl GateOutcome {
    /// The figure judged, for its unit.
    pub fn figure(&self) -> Option<&'static Figure> {
        figures::find(&self.figure)
    }

    /// `p99 <= 25.00 ms`.
    pub fn requirement(&self) -> String {
        match self.figure() {
            Some(f) => format!(
                "{} {} {}",
                f.name,
                self.op.symbol(),
                f.format_with_unit(self.limit)
            ),
            None => format!("{} {} {}", self.figure, self.op.symbol(), self.limit),
        }
    }

    /// `12.30 ms`, or `not in this result`.
    pub fn observed_text(&self) -> String {
        match (self.observed, self.figure()) {
            (Some(v), Some(f)) => f.format_with_unit(v),
            (Some(v), None) => v.to_string(),
            (None, _) => "not in this result".to_string(),
        }
    }

    /// `PASS  p99 <= 25.00 ms    actual 12.30 ms`: the line `analyze check` prints.
    pub fn line(&self) -> String {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        match self.observed {
            Some(_) => format!(
                "{verdict}  {:<40} actual {}",
                self.requirement(),
                self.observed_text()
            ),
            None => format!(
                "{verdict}  {:<40} actual: not in this result",
                self.requirement()
            ),
        }
    }
}

/// The counts of a run still in progress, for [`Gate::already_missed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages the run is to send in all.
    pub planned: u64,
    pub failed: u64,
    pub connection_errors: u64,
    pub timeouts: u64,
    pub late_sends: u64,
}

impl Gate {
    /// Parses `FIGURE OP VALUE[unit]`; an unknown figure is an error that lists
    /// the known ones.
    pub fn parse(text: &str) -> Result<Gate, GateError> {
        let (name, op, value) = split(text).ok_or_else(|| GateError::Syntax {
            text: text.to_string(),
        })?;
        let figure = figures::find(name).ok_or_else(|| GateError::UnknownFigure {
            text: text.to_string(),
            name: name.to_string(),
            known: figures::known_names(),
        })?;
        let limit = figures::parse_value(figure, value).map_err(|problem| GateError::Value {
            text: text.to_string(),
            problem,
        })?;
        Ok(Gate {
            text: text.trim().to_string(),
            figure,
            op,
            limit,
        })
    }

    /// The figure this gate is judged on in `result`.
    pub fn judged_figure(&self, result: &RunResult, basis: LatencyBasis) -> &'static Figure {
        let corrected_measured = result.metrics.latency_corrected_ms.is_some();
        match basis {
            LatencyBasis::CorrectedWhereMeasured if corrected_measured => {
                corrected_twin(self.figure).unwrap_or(self.figure)
            }
            _ => self.figure,
        }
    }

    /// Judges the gate on a finished run. A figure the result does not hold fails;
    /// so does a latency of a run in which no message succeeded, whose latency
    /// figures are zeros that measured nothing.
    pub fn evaluate(&self, result: &RunResult, basis: LatencyBasis) -> GateOutcome {
        let figure = self.judged_figure(result, basis);
        let measured =
            figure.unit != figures::Unit::Millis || result.metrics.successful_messages > 0;
        let observed = (figure.get)(result).filter(|_| measured);
        GateOutcome {
            gate: self.text.clone(),
            figure: figure.name.to_string(),
            op: self.op,
            limit: self.limit,
            observed,
            passed: observed.is_some_and(|v| self.op.holds(v, self.limit)),
            aborted_run: false,
        }
    }

    /// True when the run so far already decides that this gate will be missed,
    /// however the rest goes. Only figures that can only get worse are judged:
    /// counts of failures (which only grow) and the success of the planned total
    /// (`success_rate >= 99.9` of 1,000 planned is missed at the second failure).
    /// Latency and throughput may still recover, so they are never missed early.
    pub fn already_missed(&self, p: &Progress) -> bool {
        let growing = match self.figure.name {
            "failed_messages" => Some(p.failed),
            "connection_errors" => Some(p.connection_errors),
            "timeouts" => Some(p.timeouts),
            "late_sends" => Some(p.late_sends),
            _ => None,
        };
        if let Some(count) = growing {
            // A count above an upper limit (or an exact one) stays above it.
            let count = count as f64;
            return match self.op {
                Op::Le | Op::Eq => count > self.limit,
                Op::Lt => count >= self.limit,
                Op::Ge | Op::Gt => false,
            };
        }
        // The best the run can still do: every message not yet failed succeeds.
        let best = match self.figure.name {
            "success_rate" if p.planned > 0 => {
                p.planned.saturating_sub(p.failed) as f64 * 100.0 / p.planned as f64
            }
            "successful_messages" => p.planned.saturating_sub(p.failed) as f64,
            _ => return false,
        };
        matches!(self.op, Op::Ge | Op::Gt) && !self.op.holds(best, self.limit)
    }
}

/// `corrected_p99` for `p99`: the same percentile measured from the scheduled
/// send time. `None` for figures without one (`min`, counts, rates).
fn corrected_twin(figure: &Figure) -> Option<&'static Figure> {
    if figure.unit != figures::Unit::Millis || figure.name.starts_with("corrected_") {
        return None;
    }
    figures::find(&format!("corrected_{}", figure.name))
}

/// Splits `p99 <= 25ms` at its operator. The leftmost operator wins, and at one
/// place the two-character one, so `<=` is not read as `<`.
fn split(text: &str) -> Option<(&str, Op, &str)> {
    const OPS: [(&str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
        ("=", Op::Eq),
    ];
    let (at, symbol, op) = OPS
        .iter()
        .filter_map(|(s, op)| text.find(s).map(|at| (at, *s, *op)))
        .min_by_key(|(at, s, _)| (*at, std::cmp::Reverse(s.len())))?;
    Some((text[..at].trim(), op, text[at + symbol.len()..].trim()))
}

/// Judges every gate on a finished run.
pub fn evaluate(result: &RunResult, gates: &[Gate], basis: LatencyBasis) -> Vec<GateOutcome> {
    gates.iter().map(|g| g.evaluate(result, basis)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LatencySummary;

    #[test]
    fn gates_parse_with_units() {
        let g = Gate::parse("p99<=25ms").unwrap();
        assert_eq!((g.figure.name, g.op, g.limit), ("p99", Op::Le, 25.0));
        let g = Gate::parse("messages_per_second >= 500").unwrap();
        assert_eq!((g.op, g.limit), (Op::Ge, 500.0));
        let g = Gate::parse("success_rate>99.9%").unwrap();
        assert_eq!((g.op, g.limit), (Op::Gt, 99.9));
        let g = Gate::parse("p99.9<0.1s").unwrap();
        assert_eq!((g.figure.name, g.op, g.limit), ("p99_9", Op::Lt, 100.0));
        let g = Gate::parse("failed==0").unwrap();
        assert_eq!(
            (g.figure.name, g.op, g.limit),
            ("failed_messages", Op::Eq, 0.0)
        );
    }

    #[test]
    fn unknown_figure_lists_the_known_ones() {
        let e = Gate::parse("p98<=1ms").unwrap_err().to_string();
        assert!(e.contains("unknown figure \"p98\""), "{e}");
        assert!(
            e.contains("messages_per_second") && e.contains("p99_9"),
            "{e}"
        );
        assert!(matches!(
            Gate::parse("p99 25ms"),
            Err(GateError::Syntax { .. })
        ));
        assert!(matches!(
            Gate::parse("p99<=fast"),
            Err(GateError::Value { .. })
        ));
    }

    fn result(p99: f64, corrected_p99: Option<f64>) -> RunResult {
        let mut r = RunResult::default();
        r.metrics.successful_messages = 1;
        r.metrics.latency_ms = LatencySummary {
            p99,
            ..Default::default()
        };
        r.metrics.latency_corrected_ms = corrected_p99.map(|p99| LatencySummary {
            p99,
            ..Default::default()
        });
        r
    }

    #[test]
    fn latency_is_judged_corrected_only_where_asked_and_measured() {
        let g = Gate::parse("p99<=25ms").unwrap();
        let open = result(10.0, Some(40.0));
        let o = g.evaluate(&open, LatencyBasis::AsNamed);
        assert_eq!(
            (o.figure.as_str(), o.observed, o.passed),
            ("p99", Some(10.0), true)
        );
        let o = g.evaluate(&open, LatencyBasis::CorrectedWhereMeasured);
        assert_eq!(
            (o.figure.as_str(), o.observed, o.passed),
            ("corrected_p99", Some(40.0), false)
        );
        let closed = result(10.0, None);
        let o = g.evaluate(&closed, LatencyBasis::CorrectedWhereMeasured);
        assert_eq!((o.figure.as_str(), o.passed), ("p99", true));
        // A figure without a corrected twin stays as named.
        let min = Gate::parse("min<=1ms").unwrap();
        assert_eq!(
            min.judged_figure(&open, LatencyBasis::CorrectedWhereMeasured)
                .name,
            "min"
        );
    }

    #[test]
    fn a_figure_the_result_lacks_fails_and_says_so() {
        let g = Gate::parse("corrected_p99<=1s").unwrap();
        let o = g.evaluate(&result(1.0, None), LatencyBasis::AsNamed);
        assert!(!o.passed);
        assert_eq!(o.observed, None);
        assert!(o.line().contains("not in this result"), "{}", o.line());
        // Nothing succeeded: the zeros of the latency summary measured nothing.
        let mut none_ok = result(0.0, Some(0.0));
        none_ok.metrics.successful_messages = 0;
        let o = Gate::parse("p99<=1s")
            .unwrap()
            .evaluate(&none_ok, LatencyBasis::AsNamed);
        assert_eq!((o.observed, o.passed), (None, false));
    }

    #[test]
    fn outcomes_serialize_with_the_operator_symbol() {
        let g = Gate::parse("success_rate>=99.9").unwrap();
        let mut r = RunResult::default();
        r.metrics.success_rate = 99.5;
        let o = g.evaluate(&r, LatencyBasis::AsNamed);
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["op"], ">=");
        assert_eq!(json["observed"], 99.5);
        assert_eq!(json["passed"], false);
        assert!(json.get("aborted_run").is_none());
        let back: GateOutcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn only_figures_that_can_only_get_worse_are_missed_early() {
        let p = |failed| Progress {
            planned: 1000,
            failed,
            ..Default::default()
        };
        let rate = Gate::parse("success_rate>=99.9").unwrap();
        assert!(!rate.already_missed(&p(1)), "999 of 1000 still meets it");
        assert!(rate.already_missed(&p(2)));
        let ok = Gate::parse("successful_messages>=990").unwrap();
        assert!(!ok.already_missed(&p(10)));
        assert!(ok.already_missed(&p(11)));
        let failed = Gate::parse("failed<=3").unwrap();
        assert!(!failed.already_missed(&p(3)));
        assert!(failed.already_missed(&p(4)));
        assert!(Gate::parse("failed<3").unwrap().already_missed(&p(3)));
        assert!(Gate::parse("failed==0").unwrap().already_missed(&p(1)));
        assert!(!Gate::parse("failed>=5").unwrap().already_missed(&p(0)));
        // Latency and throughput may recover; never judged early.
        assert!(!Gate::parse("p99<=1ms").unwrap().already_missed(&p(1000)));
        assert!(!Gate::parse("msg/s>=1e9").unwrap().already_missed(&p(1000)));
        // Nothing planned: nothing to judge yet.
        let none = Progress::default();
        assert!(!rate.already_missed(&none));
    }
}
