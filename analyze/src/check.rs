//! `check`: absolute gates on one result, in the manner of k6 thresholds
//! (`p99<=25ms`, `success_rate>=99.9`). The grammar and the judging are
//! [`report::gate`]'s, shared with `loadgen --require`; `check` judges each
//! figure as named (`p99` is the service time, `corrected_p99` the corrected one).

use std::path::Path;

use report::RunResult;
use report::gate::{self, Gate, GateOutcome, LatencyBasis};
use serde::Serialize;

use crate::output::{self, Format, TestCase, md_cell};

/// Parses the `--require` values; the error names the flag and, for an unknown
/// figure, lists the known ones.
pub fn parse_gates(texts: &[String]) -> Result<Vec<Gate>, String> {
    texts
        .iter()
        .map(|t| Gate::parse(t).map_err(|e| format!("--require {e}")))
        .collect()
}

/// Evaluates every gate; a figure the result does not hold fails its gate.
pub fn evaluate(result: &RunResult, gates: &[Gate]) -> Vec<GateOutcome> {
    gate::evaluate(result, gates, LatencyBasis::AsNamed)
}

/// What `check --format json` prints.
#[derive(Debug, Serialize)]
pub struct CheckReport<'a> {
    /// The result file checked.
    pub file: String,
    /// True when every gate passed.
    pub passed: bool,
    /// How many gates were missed.
    pub missed: usize,
    /// One entry per gate, in the order given, as a result's `gates` key.
    pub gates: &'a [GateOutcome],
}

/// Renders the outcomes of the gates on `file` in `format`.
pub fn render(file: &Path, outcomes: &[GateOutcome], format: Format) -> String {
    match format {
        Format::Text => text(outcomes),
        Format::Markdown => markdown(file, outcomes),
        Format::Json => json(file, outcomes),
        Format::Junit => junit(file, outcomes),
    }
}

fn missed(outcomes: &[GateOutcome]) -> usize {
    outcomes.iter().filter(|o| !o.passed).count()
}

/// `all 3 gates passed`, `1 of 3 gates missed`.
fn verdict(outcomes: &[GateOutcome]) -> String {
    match missed(outcomes) {
        0 => format!("all {} gates passed", outcomes.len()),
        n => format!("{n} of {} gates missed", outcomes.len()),
    }
}

fn text(outcomes: &[GateOutcome]) -> String {
    let mut out: String = outcomes.iter().map(|o| o.line() + "\n").collect();
    out.push_str(&verdict(outcomes));
    out.push('\n');
    out
}

fn markdown(file: &Path, outcomes: &[GateOutcome]) -> String {
    let mut out = format!(
        "**Gates** on `{}`\n\n",
        md_cell(&file.display().to_string())
    );
    out.push_str("| | gate | figure | limit | actual |\n|---|---|---|---|---|\n");
    for o in outcomes {
        let mark = if o.passed { "PASS" } else { "**FAIL**" };
        let limit = o
            .figure()
            .map_or(o.limit.to_string(), |f| f.format_with_unit(o.limit));
        out.push_str(&format!(
            "| {mark} | `{}` | {} | {} {} | {} |\n",
            md_cell(&o.gate),
            md_cell(&o.figure),
            o.op.symbol(),
            limit,
            md_cell(&o.observed_text())
        ));
    }
    let bold = if missed(outcomes) == 0 { "" } else { "**" };
    out.push_str(&format!("\n{bold}{}{bold}\n", verdict(outcomes)));
    out
}

fn json(file: &Path, outcomes: &[GateOutcome]) -> String {
    let report = CheckReport {
        file: file.display().to_string(),
        passed: missed(outcomes) == 0,
        missed: missed(outcomes),
        gates: outcomes,
    };
    serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
}

fn junit(file: &Path, outcomes: &[GateOutcome]) -> String {
    let cases: Vec<TestCase> = outcomes
        .iter()
        .map(|o| TestCase {
            name: o.requirement(),
            failure: (!o.passed).then(|| format!("actual {}", o.observed_text())),
            detail: format!("{}: actual {}", o.gate, o.observed_text()),
        })
        .collect();
    output::junit(
        &format!("analyze check {}", file.display()),
        &cases,
        &verdict(outcomes),
    )
}
