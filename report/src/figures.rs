//! The named figures of a result: what `analyze compare` puts side by side and
//! what a gate (`analyze check`, `loadgen --require`) judges. One table, so every
//! tool agrees on names, units and which direction is better.

use crate::{LatencySummary, RunResult};

/// What a figure counts, which decides how it is printed and which units a gate
/// may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Messages per second.
    PerSecond,
    /// Megabytes (10^6 bytes) per second.
    MegabytesPerSecond,
    /// Percent (0..100).
    Percent,
    /// A plain count of messages or events.
    Count,
    /// Milliseconds.
    Millis,
    /// Seconds.
    Seconds,
}

impl Unit {
    /// The suffix printed after a value.
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::PerSecond => " msg/s",
            Unit::MegabytesPerSecond => " MB/s",
            Unit::Percent => "%",
            Unit::Count => "",
            Unit::Millis => " ms",
            Unit::Seconds => " s",
        }
    }

    /// Formats a value in this unit, without the suffix.
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Count => format!("{v:.0}"),
            Unit::Percent => format!("{v:.2}"),
            Unit::Millis => format_ms(v),
            _ => format!("{v:.2}"),
        }
    }

    /// Units a gate value may carry, as `(suffix, multiplier into this unit)`.
    /// The empty suffix (a bare number) is always allowed.
    pub fn accepted_suffixes(self) -> &'static [(&'static str, f64)] {
        match self {
            Unit::Millis => &[("ms", 1.0), ("s", 1000.0), ("us", 0.001), ("µs", 0.001)],
            Unit::Seconds => &[("s", 1.0), ("ms", 0.001)],
            Unit::Percent => &[("%", 1.0)],
            Unit::PerSecond => &[("msg/s", 1.0), ("/s", 1.0)],
            Unit::MegabytesPerSecond => &[("MB/s", 1.0)],
            Unit::Count => &[],
        }
    }
}

/// Milliseconds with enough digits for sub-millisecond loopback latencies.
pub fn format_ms(v: f64) -> String {
    if v != 0.0 && v.abs() < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

/// Which way a figure should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Informational (duration, message count): no direction.
    Neither,
}

/// One named figure of a result.
#[derive(Debug)]
pub struct Figure {
    /// The canonical name, as in the result file (`messages_per_second`, `p99`).
    pub name: &'static str,
    /// Other names a user may type (`msg/s`, `p99.9`).
    pub aliases: &'static [&'static str],
    /// The short label in tables.
    pub label: &'static str,
    pub unit: Unit,
    pub better: Better,
    /// Shown by `compare`.
    pub headline: bool,
    /// The value in a result; `None` when the result does not hold it.
    pub get: fn(&RunResult) -> Option<f64>,
}

impl Figure {
    /// `12.34 ms`, `99.90%`.
    pub fn format_with_unit(&self, v: f64) -> String {
        format!("{}{}", self.unit.format(v), self.unit.suffix())
    }
}

fn corrected(r: &RunResult) -> Option<&LatencySummary> {
    r.metrics.latency_corrected_ms.as_ref()
}

/// Megabytes (10^6 bytes) sent per second of the run.
pub fn megabytes_per_second(r: &RunResult) -> f64 {
    if r.metrics.duration_seconds > 0.0 {
        r.metrics.total_bytes_sent as f64 / 1e6 / r.metrics.duration_seconds
    } else {
        0.0
    }
}

macro_rules! latency {
    ($name:literal, $aliases:expr, $label:literal, $field:ident, $headline:expr) => {
        Figure {
            name: $name,
            aliases: $aliases,
            label: $label,
            unit: Unit::Millis,
            better: Better::Lower,
            headline: $headline,
            get: |r| Some(r.metrics.latency_ms.$field),
        }
    };
}

macro_rules! corrected {
    ($name:literal, $label:literal, $field:ident, $headline:expr) => {
        Figure {
            name: $name,
            aliases: &[],
            label: $label,
            unit: Unit::Millis,
            better: Better::Lower,
            headline: $headline,
            get: |r| corrected(r).map(|c| c.$field),
        }
    };
}

/// Every figure, in the order `compare` prints them.
pub static FIGURES: &[Figure] = &[
    Figure {
        name: "messages_per_second",
        aliases: &["msg/s", "throughput", "rate"],
        label: "msg/s",
        unit: Unit::PerSecond,
        better: Better::Higher,
        headline: true,
        get: |r| Some(r.metrics.messages_per_second),
    },
    Figure {
        name: "megabytes_per_second",
        aliases: &["MB/s", "mb_per_second"],
        label: "MB/s",
        unit: Unit::MegabytesPerSecond,
        better: Better::Higher,
        headline: true,
        get: |r| Some(megabytes_per_second(r)),
    },
    Figure {
        name: "success_rate",
        aliases: &["success"],
        label: "success rate",
        unit: Unit::Percent,
        better: Better::Higher,
        headline: true,
        get: |r| Some(r.metrics.success_rate),
    },
    Figure {
        name: "failed_messages",
        aliases: &["failed"],
        label: "failed",
        unit: Unit::Count,
        better: Better::Lower,
        headline: true,
        get: |r| Some(r.metrics.failed_messages as f64),
    },
    Figure {
        name: "connection_errors",
        aliases: &[],
        label: "connection errors",
        unit: Unit::Count,
        better: Better::Lower,
        headline: true,
        get: |r| Some(r.metrics.connection_errors as f64),
    },
    Figure {
        name: "timeouts",
        aliases: &[],
        label: "timeouts",
        unit: Unit::Count,
        better: Better::Lower,
        headline: true,
        // PrixFixe did not count timeouts apart from other failures.
        get: |r| (!r.is_legacy()).then_some(r.metrics.timeouts as f64),
    },
    Figure {
        name: "late_sends",
        aliases: &[],
        label: "late sends",
        unit: Unit::Count,
        better: Better::Lower,
        headline: true,
        // Only an open-model (sustained) Stampede run schedules sends.
        get: |r| (!r.is_legacy() && r.target_rate.is_some()).then_some(r.metrics.late_sends as f64),
    },
    latency!("avg", &["latency_avg", "mean"], "latency avg", avg, true),
    latency!("min", &["latency_min"], "latency min", min, false),
    latency!("p50", &["latency_p50", "median"], "latency p50", p50, true),
    latency!("p90", &["latency_p90"], "latency p90", p90, true),
    latency!("p95", &["latency_p95"], "latency p95", p95, true),
    latency!("p99", &["latency_p99"], "latency p99", p99, true),
    latency!(
        "p99_9",
        &["p99.9", "p999", "latency_p99_9"],
        "latency p99.9",
        p99_9,
        true
    ),
    latency!("max", &["latency_max"], "latency max", max, true),
    corrected!("corrected_avg", "corrected avg", avg, false),
    corrected!("corrected_p50", "corrected p50", p50, false),
    corrected!("corrected_p90", "corrected p90", p90, false),
    corrected!("corrected_p95", "corrected p95", p95, false),
    corrected!("corrected_p99", "corrected p99", p99, true),
    corrected!("corrected_p99_9", "corrected p99.9", p99_9, false),
    corrected!("corrected_max", "corrected max", max, false),
    Figure {
        name: "total_messages",
        aliases: &["messages"],
        label: "messages",
        unit: Unit::Count,
        better: Better::Neither,
        headline: false,
        get: |r| Some(r.metrics.total_messages as f64),
    },
    Figure {
        name: "successful_messages",
        aliases: &["successful"],
        label: "successful",
        unit: Unit::Count,
        better: Better::Higher,
        headline: false,
        get: |r| Some(r.metrics.successful_messages as f64),
    },
    Figure {
        name: "duration_seconds",
        aliases: &["duration"],
        label: "duration",
        unit: Unit::Seconds,
        better: Better::Neither,
        headline: false,
        get: |r| Some(r.metrics.duration_seconds),
    },
];

/// The figure a user named, by canonical name or alias (case-insensitive).
pub fn find(name: &str) -> Option<&'static Figure> {
    let name = name.trim();
    FIGURES.iter().find(|f| {
        f.name.eq_ignore_ascii_case(name) || f.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// The canonical names, for error messages.
pub fn known_names() -> String {
    FIGURES
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `25ms`, `0.5s`, `99.9%`, `500` into the figure's unit.
pub fn parse_value(figure: &Figure, text: &str) -> Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    let suffix = suffix.trim();
    if suffix.is_empty() {
        return Ok(number);
    }
    let accepted = figure.unit.accepted_suffixes();
    accepted
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(suffix))
        .map(|(_, m)| number * m)
        .ok_or_else(|| {
            let list: Vec<_> = accepted.iter().map(|(s, _)| *s).collect();
            if list.is_empty() {
                format!("{} takes a plain number, not {suffix:?}", figure.name)
            } else {
                format!(
                    "{} takes a plain number or one of {}, not {suffix:?}",
                    figure.name,
                    list.join(", ")
                )
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_find_the_canonical_figure() {
        assert_eq!(find("msg/s").unwrap().name, "messages_per_second");
        assert_eq!(find("P99.9").unwrap().name, "p99_9");
        assert_eq!(find("p99").unwrap().name, "p99");
        assert!(find("p98").is_none());
    }

    #[test]
    fn values_convert_into_the_figure_unit() {
        let p99 = find("p99").unwrap();
        assert_eq!(parse_value(p99, "25ms").unwrap(), 25.0);
        assert_eq!(parse_value(p99, "0.5s").unwrap(), 500.0);
        assert_eq!(parse_value(p99, "250us").unwrap(), 0.25);
        assert_eq!(parse_value(p99, "25").unwrap(), 25.0);
        assert!(parse_value(p99, "25%").is_err());
        let rate = find("success_rate").unwrap();
        assert_eq!(parse_value(rate, "99.9%").unwrap(), 99.9);
        assert!(parse_value(find("failed").unwrap(), "3ms").is_err());
        assert!(parse_value(p99, "fast").is_err());
    }

    #[test]
    fn every_name_and_alias_is_unique() {
        let mut all: Vec<String> = FIGURES
            .iter()
            .flat_map(|f| std::iter::once(f.name).chain(f.aliases.iter().copied()))
            .map(str::to_ascii_lowercase)
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
