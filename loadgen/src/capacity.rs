//! `--mode capacity`: the highest rate a server takes while meeting an SLO.
//!
//! The search runs steps, each a sustained run of its own at one offered rate
//! (the same timetable, dispatcher and coordinated-omission correction as
//! `--mode sustained`, nothing rescheduled here), judges each step on its own
//! figures with the `--slo` gates ([`report::gate`], latency judged corrected),
//! and picks the next rate:
//!
//! - from `--start-rate`, the rate doubles after every passing step until one
//!   breaks the SLO or `--max-rate` passes;
//! - then the rate bisects between the highest passing and the lowest breaking
//!   rate until they are within [`RESOLUTION`] of each other;
//! - when the very first step breaks, the rate halves until one passes (down to
//!   [`MIN_RATE`]), and bisection follows as above.
//!
//! Honesty: a step in which the generator, not the server, was the limit (its
//! dispatcher ran behind the timetable, its CPU was full, or every session was
//! busy while the server's own service time met the SLO) ends the search with
//! `generator_limited`: the answer is then "at least" the best passing rate,
//! never a rate the server was not shown to break.
//!
//! The decisions ([`Search`], [`judge`], [`assemble`]) are I/O-free and
//! unit-tested; [`run`] only runs steps and waits out the cool-downs.

use std::time::Instant;

use anyhow::Context;
use report::gate::{self, Gate, LatencyBasis};
use report::{CapacityStep, CapacitySummary, RunResult};
use tokio_util::sync::CancellationToken;

use crate::config::{CapacitySpec, Config, Mode};
use crate::result::too_late;

/// The search stops when the lowest breaking rate is within this share of the
/// highest passing one (the 5% resolution).
pub const RESOLUTION: f64 = 0.05;
/// The lowest rate the search goes down to when the first step already breaks
/// the SLO: below one message a second a server has no capacity worth the name.
pub const MIN_RATE: f64 = 1.0;
/// A bound on the steps of one search, whatever the rates: doubling from 1 to
/// 1,000,000 is 20 steps and bisecting a doubling to 5% is 5 more.
pub const MAX_STEPS: usize = 64;

/// What the search needs to know about a finished step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepVerdict {
    /// The step met every SLO gate.
    pub passed: bool,
    /// The generator, not the server, decided the step: it could not offer
    /// more, or the SLO broke only on time its sends spent in the generator.
    pub generator_was_the_limit: bool,
}

/// Where a finished search stands: the rates that bracket the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SearchOutcome {
    pub max_rate_meeting_slo: Option<f64>,
    pub first_rate_breaking_slo: Option<f64>,
    pub generator_limited: bool,
}

/// The capacity search as a state machine: it names the next rate to try and
/// is told each step's verdict. No I/O, no clock.
#[derive(Debug, Clone)]
pub struct Search {
    max_rate: f64,
    min_rate: f64,
    resolution: f64,
    good: Option<f64>,
    bad: Option<f64>,
    generator_limited: bool,
    next: Option<f64>,
    steps: usize,
}

impl Search {
    /// A search from `start_rate` up to `max_rate`, never below `min_rate`,
    /// bisecting to `resolution` (0.05 = 5%).
    pub fn new(start_rate: f64, max_rate: f64, min_rate: f64, resolution: f64) -> Search {
        Search {
            max_rate,
            min_rate,
            resolution,
            good: None,
            bad: None,
            generator_limited: false,
            next: Some(start_rate.min(max_rate)),
            steps: 0,
        }
    }

    /// The search `--mode capacity` runs for `spec`.
    pub fn for_spec(spec: &CapacitySpec) -> Search {
        // A step has at least one message.
        let min_rate = MIN_RATE.max(1.0 / spec.step_duration).min(spec.start_rate);
        Search::new(spec.start_rate, spec.max_rate, min_rate, RESOLUTION)
    }

    /// The rate of the next step; `None` once the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Takes the verdict of the step run at `rate` and decides the next rate.
    pub fn record(&mut self, rate: f64, verdict: StepVerdict) {
        self.steps += 1;
        if verdict.passed {
            self.good = Some(self.good.map_or(rate, |g| g.max(rate)));
        } else if !verdict.generator_was_the_limit {
            // A step the generator could not offer says nothing about the server.
            self.bad = Some(self.bad.map_or(rate, |b| b.min(rate)));
        }
        if verdict.generator_was_the_limit {
            self.generator_limited = true;
            self.next = None;
            return;
        }
        self.next = if self.steps >= MAX_STEPS {
            None
        } else {
            self.decide()
        };
    }

    fn decide(&self) -> Option<f64> {
        match (self.good, self.bad) {
            // Growing: double, up to --max-rate, then stop there.
            (Some(good), None) => (good < self.max_rate).then(|| (good * 2.0).min(self.max_rate)),
            // The first step broke: halve until one passes.
            (None, Some(bad)) => (bad > self.min_rate).then(|| (bad / 2.0).max(self.min_rate)),
            // Bracketed: bisect until the bracket is narrow enough.
            (Some(good), Some(bad)) => {
                (bad > good * (1.0 + self.resolution)).then(|| (good + bad) / 2.0)
            }
            (None, None) => None,
        }
    }

    /// Where the search stands (its answer, once [`Search::next_rate`] is `None`).
    pub fn outcome(&self) -> SearchOutcome {
        SearchOutcome {
            max_rate_meeting_slo: self.good,
            first_rate_breaking_slo: self.bad,
            generator_limited: self.generator_limited,
        }
    }
}

/// Judges a finished step on its own result: the SLO gates with latency
/// corrected, and whether the generator, not the server, decided the outcome.
///
/// The generator decided it when it fell behind ([`RunResult::generator_saturated`]:
/// its dispatcher released sends late, or its CPU was full), pass or fail: a
/// dispatcher that catches up releases its overdue sends at once, so even the
/// server's own figures in that step may be the generator's doing. It also
/// decided a step that broke the SLO only on the corrected latency while the
/// server's own figures (the gates read as named) held and too many sends
/// started late ([`too_late`]: over 1% and at least 10): they waited for one of
/// `--workers` sessions (raise it). Either way the step is marked
/// `generator_saturated` and the search ends with "at least".
pub fn judge(
    step: &RunResult,
    slo: &[Gate],
    index: u32,
    rate: f64,
    span: (f64, f64),
) -> (CapacityStep, StepVerdict) {
    let outcomes = gate::evaluate(step, slo, LatencyBasis::CorrectedWhereMeasured);
    let broke: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.gate.clone())
        .collect();
    let passed = broke.is_empty();
    let m = &step.metrics;
    let server_broke = !passed
        && gate::evaluate(step, slo, LatencyBasis::AsNamed)
            .iter()
            .any(|o| !o.passed);
    let waited_in_the_generator =
        !passed && !server_broke && too_late(m.late_sends, m.total_messages);
    let generator_was_the_limit = step.generator_saturated || waited_in_the_generator;
    let verdict = StepVerdict {
        passed,
        generator_was_the_limit,
    };
    let summary = CapacityStep {
        index,
        rate,
        start_s: span.0,
        end_s: span.1,
        sent: m.total_messages,
        ok: m.successful_messages,
        failed: m.failed_messages,
        late: m.late_sends,
        achieved_rate: m.messages_per_second,
        success_rate: m.success_rate,
        latency_ms: m.latency_ms,
        latency_corrected_ms: m.latency_corrected_ms.unwrap_or_default(),
        passed,
        broke,
        generator_saturated: generator_was_the_limit,
    };
    (summary, verdict)
}

/// The `capacity` key of a finished search.
pub fn summary(
    spec: &CapacitySpec,
    outcome: SearchOutcome,
    steps: Vec<CapacityStep>,
) -> CapacitySummary {
    let which_slo_broke = outcome.first_rate_breaking_slo.and_then(|bad| {
        steps
            .iter()
            .find(|s| s.rate == bad && !s.passed)
            .and_then(|s| s.broke.first().cloned())
    });
    CapacitySummary {
        slo: spec.slo.clone(),
        max_rate_meeting_slo: outcome.max_rate_meeting_slo,
        first_rate_breaking_slo: outcome.first_rate_breaking_slo,
        which_slo_broke,
        generator_limited: outcome.generator_limited,
        resolution_percent: RESOLUTION * 100.0,
        steps,
    }
}

/// The search's result: the top-level figures are those of one step's run (the
/// headline step, [`CapacitySummary::headline_step`]: the fastest passing step,
/// or the first when none passed), so every figure a reader sees at the top was
/// measured at one offered rate; `capacity` holds the search.
///
/// `runs` are the steps' results in the order of `summary.steps`; `config` and
/// `run_id` are the search's own.
pub fn assemble(
    config: &Config,
    run_id: &str,
    summary: CapacitySummary,
    mut runs: Vec<RunResult>,
    interrupted: bool,
) -> anyhow::Result<RunResult> {
    let headline = summary
        .headline_step()
        .map_or(0, |s| s.index as usize)
        .min(runs.len().saturating_sub(1));
    anyhow::ensure!(!runs.is_empty(), "the capacity search ran no step");
    let mut result = runs.swap_remove(headline);
    result.test_type = config.test_type.clone();
    result.target_rate = summary.steps.get(headline).map(|s| s.rate);
    result.concurrent_workers = None;
    result.generator_saturated = summary.generator_limited;
    result.gates = None;
    if let Some(run) = result.run.as_mut() {
        let mut echo = serde_json::to_value(config)?;
        if let Some(o) = echo.as_object_mut() {
            o.insert("run_id".into(), run_id.into());
        }
        run.config = echo;
        run.name = config.test_type.clone();
        run.interrupted = interrupted;
    }
    result.capacity = Some(summary);
    Ok(result)
}

/// The settings of step `index` at `rate`: a sustained run of the step's length,
/// with no gates of its own and a preflight only before the first.
fn step_config(config: &Config, spec: &CapacitySpec, index: u32, rate: f64) -> Config {
    let mut c = config.clone();
    c.mode = Mode::Sustained {
        rate,
        duration: spec.step_duration,
        workers: config.mode.workers(),
    };
    c.preflight = config.preflight && index == 0;
    c.require = Vec::new();
    c.gates = Vec::new();
    c.abort_on_fail = false;
    c.slo_gates = Vec::new();
    c
}

/// Runs the search `config` describes. Ctrl-C ends it after the step in flight
/// (which is left out of the search, its figures being partial).
pub async fn run(config: Config, interrupt: CancellationToken) -> anyhow::Result<RunResult> {
    let Mode::Capacity { search: spec, .. } = &config.mode else {
        anyhow::bail!("not a capacity search");
    };
    let run_id = crate::new_run_id();
    let mut search = Search::for_spec(spec);
    let origin = Instant::now();
    let mut steps = Vec::new();
    let mut runs = Vec::new();
    let mut interrupted = false;
    while let Some(rate) = search.next_rate() {
        let index = steps.len() as u32;
        if index > 0 && !cool_down(spec.cooldown, &interrupt).await {
            interrupted = true;
            break;
        }
        let begun = origin.elapsed().as_secs_f64();
        // Each step has an id of its own under the search's, so X-Stampede-Seq
        // stays unique within an id.
        let step_id = format!("{run_id}.{index}");
        let result = crate::run_with_id(
            step_config(&config, spec, index, rate),
            interrupt.clone(),
            &step_id,
        )
        .await
        .with_context(|| format!("capacity step {index} at {rate} msg/s"))?;
        if result.interrupted() {
            interrupted = true;
            if runs.is_empty() {
                // Nothing judged: the partial step is all there is to show.
                runs.push(result);
            }
            break;
        }
        let (step, verdict) = judge(
            &result,
            &config.slo_gates,
            index,
            rate,
            (begun, origin.elapsed().as_secs_f64()),
        );
        if !config.quiet {
            eprintln!("{}", crate::progress::capacity_step_line(&step));
        }
        search.record(rate, verdict);
        steps.push(step);
        runs.push(result);
    }
    let summary = summary(spec, search.outcome(), steps);
    assemble(&config, &run_id, summary, runs, interrupted)
}

/// Waits out the cool-down between steps; false when Ctrl-C came first.
async fn cool_down(seconds: f64, interrupt: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(std::time::Duration::from_secs_f64(seconds)) => true,
        _ = interrupt.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: StepVerdict = StepVerdict {
        passed: true,
        generator_was_the_limit: false,
    };
    const BREAK: StepVerdict = StepVerdict {
        passed: false,
        generator_was_the_limit: false,
    };

    /// Runs a search against a server that meets the SLO up to `capacity`,
    /// returning the rates tried and the outcome.
    fn against(capacity: f64, mut search: Search) -> (Vec<f64>, SearchOutcome) {
        let mut tried = Vec::new();
        while let Some(rate) = search.next_rate() {
            tried.push(rate);
            search.record(rate, if rate <= capacity { PASS } else { BREAK });
        }
        (tried, search.outcome())
    }

    #[test]
    fn it_doubles_until_a_step_breaks_then_bisects_to_five_percent() {
        let (tried, out) = against(190.0, Search::new(25.0, 100_000.0, 1.0, 0.05));
        assert_eq!(
            tried,
            [25.0, 50.0, 100.0, 200.0, 150.0, 175.0, 187.5, 193.75]
        );
        assert_eq!(out.max_rate_meeting_slo, Some(187.5));
        assert_eq!(out.first_rate_breaking_slo, Some(193.75));
        assert!(!out.generator_limited);
        // The bracket is within 5% and holds the true capacity.
        let (good, bad) = (
            out.max_rate_meeting_slo.unwrap(),
            out.first_rate_breaking_slo.unwrap(),
        );
        assert!(good <= 190.0 && 190.0 < bad && bad <= good * 1.05);
    }

    #[test]
    fn the_answer_is_within_resolution_of_any_capacity() {
        for capacity in [1.5, 7.0, 99.0, 100.0, 101.0, 333.0, 4321.0, 77_777.0] {
            let (tried, out) = against(capacity, Search::new(100.0, 100_000.0, 1.0, 0.05));
            let good = out.max_rate_meeting_slo.unwrap();
            let bad = out.first_rate_breaking_slo.unwrap();
            assert!(
                good <= capacity && capacity < bad,
                "{capacity}: {good}..{bad}"
            );
            assert!(
                bad <= good * 1.05,
                "{capacity}: {good}..{bad} wider than 5%"
            );
            assert!(tried.len() <= 25, "{capacity}: {} steps", tried.len());
        }
    }

    #[test]
    fn reaching_max_rate_with_the_slo_met_ends_at_max_rate() {
        let (tried, out) = against(f64::INFINITY, Search::new(100.0, 500.0, 1.0, 0.05));
        assert_eq!(tried, [100.0, 200.0, 400.0, 500.0]);
        assert_eq!(out.max_rate_meeting_slo, Some(500.0));
        assert_eq!(out.first_rate_breaking_slo, None);
        assert!(!out.generator_limited);
        // A start above the maximum starts at the maximum.
        let (tried, _) = against(f64::INFINITY, Search::new(900.0, 500.0, 1.0, 0.05));
        assert_eq!(tried, [500.0]);
    }

    #[test]
    fn a_first_step_that_breaks_halves_down_to_the_floor() {
        let (tried, out) = against(30.0, Search::new(100.0, 1000.0, 1.0, 0.05));
        assert_eq!(&tried[..3], [100.0, 50.0, 25.0]);
        assert!(out.max_rate_meeting_slo.unwrap() <= 30.0);
        assert!(out.first_rate_breaking_slo.unwrap() > 30.0);
        let (tried, out) = against(0.0, Search::new(8.0, 1000.0, 1.0, 0.05));
        assert_eq!(tried, [8.0, 4.0, 2.0, 1.0]);
        assert_eq!(out.max_rate_meeting_slo, None);
        assert_eq!(out.first_rate_breaking_slo, Some(1.0));
    }

    #[test]
    fn a_saturated_generator_ends_the_search_with_at_least() {
        let mut s = Search::new(100.0, 100_000.0, 1.0, 0.05);
        s.record(100.0, PASS);
        s.record(200.0, PASS);
        assert_eq!(s.next_rate(), Some(400.0));
        // 400 broke, but only because the generator could not keep up.
        s.record(
            400.0,
            StepVerdict {
                passed: false,
                generator_was_the_limit: true,
            },
        );
        assert_eq!(s.next_rate(), None);
        assert_eq!(
            s.outcome(),
            SearchOutcome {
                max_rate_meeting_slo: Some(200.0),
                first_rate_breaking_slo: None,
                generator_limited: true,
            }
        );
        // A saturated step that still met the SLO counts as met, and ends it too.
        let mut s = Search::new(100.0, 100_000.0, 1.0, 0.05);
        s.record(
            100.0,
            StepVerdict {
                passed: true,
                generator_was_the_limit: true,
            },
        );
        assert_eq!(s.next_rate(), None);
        assert_eq!(s.outcome().max_rate_meeting_slo, Some(100.0));
        assert!(s.outcome().generator_limited);
    }

    #[test]
    fn a_search_is_bounded_in_steps() {
        // A verdict that flips at random cannot make it run forever.
        let mut s = Search::new(100.0, 1e6, 1.0, 0.0);
        let mut n = 0;
        while let Some(rate) = s.next_rate() {
            n += 1;
            s.record(rate, if n % 2 == 0 { PASS } else { BREAK });
        }
        assert!(n <= MAX_STEPS, "{n} steps");
    }

    fn step_result(corrected_p99: f64, service_p99: f64, success: f64) -> RunResult {
        let mut r = RunResult::default();
        r.metrics.total_messages = 1000;
        // Sends waited when the corrected latency ran away from the service time.
        r.metrics.late_sends = if corrected_p99 > 2.0 * service_p99 {
            500
        } else {
            0
        };
        r.metrics.successful_messages = (success * 10.0) as u64;
        r.metrics.success_rate = success;
        r.metrics.latency_ms.p99 = service_p99;
        r.metrics.latency_corrected_ms = Some(report::LatencySummary {
            p99: corrected_p99,
            ..Default::default()
        });
        r
    }

    fn slo() -> Vec<Gate> {
        ["p99<=100ms", "success_rate>=99.9"]
            .iter()
            .map(|g| Gate::parse(g).unwrap())
            .collect()
    }

    /// Judges a step of `figures` (corrected p99, service p99, success %) at
    /// index 0, 100 msg/s.
    fn judged(figures: (f64, f64, f64)) -> (CapacityStep, StepVerdict) {
        judge(
            &step_result(figures.0, figures.1, figures.2),
            &slo(),
            0,
            100.0,
            (0.0, 2.0),
        )
    }

    #[test]
    fn a_step_is_judged_on_corrected_latency_and_names_what_broke() {
        let (ok, v) = judged((80.0, 60.0, 100.0));
        assert!(ok.passed && ok.broke.is_empty() && !ok.generator_saturated);
        assert_eq!(v, PASS);
        let (slow, v) = judged((300.0, 250.0, 100.0));
        assert!(!slow.passed);
        assert_eq!(slow.broke, ["p99<=100ms"]);
        assert!(!slow.generator_saturated, "the server was slow too");
        assert_eq!(v, BREAK);
        let (failing, _) = judged((300.0, 250.0, 95.0));
        assert_eq!(failing.broke, ["p99<=100ms", "success_rate>=99.9"]);
    }

    #[test]
    fn a_step_whose_sends_waited_in_the_generator_is_the_generators_limit() {
        // The server answered in 20 ms; the sends waited 300 ms for a session.
        let (s, v) = judged((300.0, 20.0, 100.0));
        assert!(!s.passed && s.generator_saturated);
        assert!(v.generator_was_the_limit);
        // A step that passed while the generator could offer no more.
        let mut r = step_result(10.0, 5.0, 100.0);
        r.generator_saturated = true;
        let (s, v) = judge(&r, &slo(), 0, 100.0, (0.0, 2.0));
        assert!(s.passed && s.generator_saturated);
        assert!(v.passed && v.generator_was_the_limit);
    }

    #[test]
    fn a_lagging_generator_decides_the_step_even_where_the_server_also_broke() {
        // The service time broke the SLO too, but the sends came late and then
        // at once: not a break the server can be held to.
        let mut r = step_result(3500.0, 1650.0, 100.0);
        r.generator_saturated = true;
        let (s, v) = judge(&r, &slo(), 5, 7000.0, (0.0, 5.0));
        assert!(!s.passed && s.generator_saturated);
        assert!(v.generator_was_the_limit);
        // Without the lag it is the server's break, late sends or not.
        r.generator_saturated = false;
        let (s, v) = judge(&r, &slo(), 5, 7000.0, (0.0, 5.0));
        assert!(!s.generator_saturated);
        assert_eq!(v, BREAK);
    }

    #[test]
    fn the_summary_names_the_gate_that_broke_at_the_first_breaking_rate() {
        let spec = CapacitySpec {
            slo: vec!["p99<=100ms".into(), "success_rate>=99.9".into()],
            start_rate: 100.0,
            max_rate: 1000.0,
            step_duration: 2.0,
            cooldown: 0.0,
        };
        let runs = [
            (step_result(80.0, 60.0, 100.0), 100.0),
            (step_result(80.0, 60.0, 95.0), 200.0),
            (step_result(300.0, 250.0, 100.0), 150.0),
        ];
        let mut search = Search::for_spec(&spec);
        let mut steps = Vec::new();
        for (i, (r, rate)) in runs.iter().enumerate() {
            let (step, verdict) = judge(r, &slo(), i as u32, *rate, (0.0, 2.0));
            search.record(*rate, verdict);
            steps.push(step);
        }
        let c = summary(&spec, search.outcome(), steps);
        assert_eq!(c.max_rate_meeting_slo, Some(100.0));
        assert_eq!(c.first_rate_breaking_slo, Some(150.0));
        assert_eq!(c.which_slo_broke.as_deref(), Some("p99<=100ms"));
        assert_eq!(c.resolution_percent, 5.0);
    }
}
