//! The `capacity` key of a result: what `loadgen --mode capacity` found. The search
//! runs constant-rate steps of the open model, judges each on its own figures
//! with the SLO gates, and reports the highest offered rate that met them, the
//! lowest that broke them, and every step on the way.

use serde::{Deserialize, Serialize};

use crate::LatencySummary;

/// The outcome of a capacity search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacitySummary {
    /// The SLO gates, as given (`p99<=250ms`), each judged on a step alone.
    pub slo: Vec<String>,
    /// The highest offered rate (msg/s) whose step met every gate; `null` when
    /// not even the first step did.
    pub max_rate_meeting_slo: Option<f64>,
    /// The lowest offered rate whose step broke a gate; `null` when none did
    /// (the search reached `--max-rate`, or the generator gave out first).
    pub first_rate_breaking_slo: Option<f64>,
    /// The gate that broke at `first_rate_breaking_slo` (the first one listed,
    /// when several did).
    pub which_slo_broke: Option<String>,
    /// The search ended because the generator could not offer more load: the
    /// capacity is then at least `max_rate_meeting_slo`, not equal to it.
    #[serde(default)]
    pub generator_limited: bool,
    /// How close the last passing and the first failing rate are when the
    /// search stops, in percent of the passing one.
    pub resolution_percent: f64,
    /// Every step, in the order run.
    #[serde(default)]
    pub steps: Vec<CapacityStep>,
}

/// One step of a capacity search: `rate` messages per second offered for
/// `end_s - start_s` seconds, and how that step alone did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityStep {
    /// Position in the search, from 0.
    pub index: u32,
    /// Offered rate, messages per second.
    pub rate: f64,
    /// Seconds from the start of the search.
    pub start_s: f64,
    pub end_s: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Started later than due plus the late tolerance.
    pub late: u64,
    /// Successful messages per second of the step.
    pub achieved_rate: f64,
    /// Successful / sent, percent.
    pub success_rate: f64,
    pub latency_ms: LatencySummary,
    /// Completion minus due time (coordinated-omission corrected): what the SLO's
    /// latency gates are judged on.
    pub latency_corrected_ms: LatencySummary,
    /// The step met every SLO gate.
    pub passed: bool,
    /// The gates it missed, as written.
    #[serde(default)]
    pub broke: Vec<String>,
    /// The generator, not the server, decided this step (its timers ran behind,
    /// its CPU was full, or its sessions were all busy while the server answered
    /// within the SLO): the search ends here with "at least".
    #[serde(default)]
    pub generator_saturated: bool,
}

impl CapacitySummary {
    /// One line for a reader: `at least 400 msg/s`, `about 190 msg/s`,
    /// `below 100 msg/s`.
    pub fn verdict(&self) -> String {
        let rate = |r: f64| format!("{} msg/s", format_rate(r));
        match (
            self.max_rate_meeting_slo,
            self.first_rate_breaking_slo,
            self.generator_limited,
        ) {
            (Some(good), _, true) => format!(
                "at least {} (the generator was the limit: its CPU or timers fell behind, or every \
                 session was busy while the server answered within the SLO; raise --workers)",
                rate(good)
            ),
            (None, _, true) => {
                "unknown: the generator could not offer even the first step's rate".to_string()
            }
            (Some(good), Some(bad), false) => format!(
                "{} meets the SLO; {} broke it ({})",
                rate(good),
                rate(bad),
                self.which_slo_broke.as_deref().unwrap_or("?")
            ),
            (Some(good), None, false) => {
                format!(
                    "at least {} (--max-rate reached with the SLO met)",
                    rate(good)
                )
            }
            (None, Some(bad), false) => format!(
                "below {}: the first step already broke the SLO ({})",
                rate(bad),
                self.which_slo_broke.as_deref().unwrap_or("?")
            ),
            (None, None, false) => "no step was run".to_string(),
        }
    }

    /// The step whose figures stand for the whole search at the top level: the
    /// passing step at the highest rate, else the first step.
    pub fn headline_step(&self) -> Option<&CapacityStep> {
        self.steps
            .iter()
            .filter(|s| s.passed)
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .or_else(|| self.steps.first())
    }
}

/// A rate without needless decimals: `200`, `187.5`.
pub fn format_rate(r: f64) -> String {
    let s = format!("{r:.1}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(index: u32, rate: f64, passed: bool) -> CapacityStep {
        CapacityStep {
            index,
            rate,
            passed,
            ..CapacityStep::default()
        }
    }

    #[test]
    fn the_verdict_says_at_least_when_the_search_could_not_go_on() {
        let mut c = CapacitySummary {
            max_rate_meeting_slo: Some(400.0),
            ..CapacitySummary::default()
        };
        assert!(c.verdict().starts_with("at least 400 msg/s (--max-rate"));
        c.generator_limited = true;
        assert!(c.verdict().starts_with("at least 400 msg/s (the generator"));
        c.generator_limited = false;
        c.first_rate_breaking_slo = Some(412.5);
        c.which_slo_broke = Some("p99<=250ms".into());
        assert_eq!(
            c.verdict(),
            "400 msg/s meets the SLO; 412.5 msg/s broke it (p99<=250ms)"
        );
        c.max_rate_meeting_slo = None;
        assert!(c.verdict().starts_with("below 412.5 msg/s"));
    }

    #[test]
    fn the_headline_step_is_the_fastest_passing_one() {
        let c = CapacitySummary {
            steps: vec![
                step(0, 100.0, true),
                step(1, 200.0, true),
                step(2, 400.0, false),
                step(3, 300.0, true),
                step(4, 350.0, false),
            ],
            ..CapacitySummary::default()
        };
        assert_eq!(c.headline_step().map(|s| s.index), Some(3));
        let none_passed = CapacitySummary {
            steps: vec![step(0, 100.0, false)],
            ..CapacitySummary::default()
        };
        assert_eq!(none_passed.headline_step().map(|s| s.index), Some(0));
    }
}
