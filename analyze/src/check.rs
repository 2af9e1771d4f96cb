//! `check`: absolute gates on one result, in the manner of k6 thresholds
//! (`p99<=25ms`, `success_rate>=99.9`).

use report::RunResult;

use crate::figures::{self, Figure};

/// A comparison operator of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Eq => "==",
        }
    }

    fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Op::Le => value <= limit,
            Op::Lt => value < limit,
            Op::Ge => value >= limit,
            Op::Gt => value > limit,
            Op::Eq => (value - limit).abs() <= f64::EPSILON * limit.abs().max(1.0),
        }
    }
}

/// One `--require` gate.
pub struct Gate {
    pub figure: &'static Figure,
    pub op: Op,
    /// In the figure's unit (milliseconds for latency).
    pub limit: f64,
}

impl Gate {
    /// Parses `figure OP value[unit]`. An unknown figure is an error that lists
    /// the known ones.
    pub fn parse(text: &str) -> Result<Gate, String> {
        // Two-character operators first, so `<=` is not read as `<`.
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
            .min_by_key(|(at, s, _)| (*at, std::cmp::Reverse(s.len())))
            .ok_or_else(|| {
                format!("--require {text:?}: expected FIGURE OP VALUE, e.g. 'p99<=25ms' (OP is one of <= < >= > ==)")
            })?;
        let name = text[..at].trim();
        let value = text[at + symbol.len()..].trim();
        let figure = figures::find(name).ok_or_else(|| {
            format!(
                "--require {text:?}: unknown figure {name:?}; known figures: {}",
                figures::known_names()
            )
        })?;
        let limit =
            figures::parse_value(figure, value).map_err(|e| format!("--require {text:?}: {e}"))?;
        Ok(Gate { figure, op, limit })
    }
}

/// The outcome of one gate.
pub struct Outcome {
    pub line: String,
    pub passed: bool,
}

/// Evaluates every gate; a figure the result does not hold fails its gate.
pub fn evaluate(result: &RunResult, gates: &[Gate]) -> Vec<Outcome> {
    gates
        .iter()
        .map(|g| {
            let want = format!(
                "{} {} {}",
                g.figure.name,
                g.op.symbol(),
                g.figure.format_with_unit(g.limit)
            );
            match (g.figure.get)(result) {
                Some(v) => {
                    let passed = g.op.holds(v, g.limit);
                    let verdict = if passed { "PASS" } else { "FAIL" };
                    Outcome {
                        line: format!(
                            "{verdict}  {want:<40} actual {}",
                            g.figure.format_with_unit(v)
                        ),
                        passed,
                    }
                }
                None => Outcome {
                    line: format!("FAIL  {want:<40} actual: not in this result"),
                    passed: false,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = Gate::parse("p98<=1ms").err().unwrap();
        assert!(e.contains("unknown figure \"p98\""), "{e}");
        assert!(
            e.contains("messages_per_second") && e.contains("p99_9"),
            "{e}"
        );
        assert!(Gate::parse("p99 25ms").is_err());
        assert!(Gate::parse("p99<=fast").is_err());
    }
}
