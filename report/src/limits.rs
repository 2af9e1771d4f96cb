//! The `loadgen limits` document (`stampede.limits.v1`): which resource limits a
//! server was expected to enforce, what each case of the suite observed, and the
//! verdicts. `loadgen` writes it, `analyze show` reads it; both print it with
//! [`LimitsDocument::table`], so the terminal and the file say the same thing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ReportError;

/// The value of the `schema` key of every limits document.
pub const LIMITS_SCHEMA_V1: &str = "stampede.limits.v1";

/// The cases of the suite, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitCase {
    GlobalConnections,
    PerIpConnections,
    GlobalRate,
    PerIpRate,
    RateRecovery,
    IdleTimeout,
    SessionTimeout,
    MessageSize,
    Recipients,
    MonitoringTruth,
}

impl LimitCase {
    pub const ALL: [LimitCase; 10] = [
        LimitCase::GlobalConnections,
        LimitCase::PerIpConnections,
        LimitCase::GlobalRate,
        LimitCase::PerIpRate,
        LimitCase::RateRecovery,
        LimitCase::IdleTimeout,
        LimitCase::SessionTimeout,
        LimitCase::MessageSize,
        LimitCase::Recipients,
        LimitCase::MonitoringTruth,
    ];

    /// The name in tables (the issue's wording).
    pub fn title(self) -> &'static str {
        match self {
            LimitCase::GlobalConnections => "global connections",
            LimitCase::PerIpConnections => "per-IP connections",
            LimitCase::GlobalRate => "global rate",
            LimitCase::PerIpRate => "per-IP rate",
            LimitCase::RateRecovery => "rate recovery",
            LimitCase::IdleTimeout => "idle timeout",
            LimitCase::SessionTimeout => "session timeout",
            LimitCase::MessageSize => "message size",
            LimitCase::Recipients => "recipients",
            LimitCase::MonitoringTruth => "monitoring truth",
        }
    }
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run: its expectation is unknown, it would take longer than
    /// `--max-case-time`, or the setup cannot run it (the reason says which).
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// A connection-rate limit: `count` new connections per `window_s` seconds, read
/// as a token bucket (burst `count`, refilled evenly over the window).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub count: u64,
    pub window_s: f64,
}

impl RateLimit {
    /// Seconds for the bucket to earn one token back.
    pub fn refill_interval_s(&self) -> f64 {
        self.window_s / self.count.max(1) as f64
    }

    /// The most connections a bucket that starts full lets in over `elapsed_s`.
    pub fn allowance(&self, elapsed_s: f64) -> f64 {
        self.count as f64 + elapsed_s.max(0.0) / self.refill_interval_s()
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}s", self.count, self.window_s)
    }
}

/// The limits the server is expected to enforce; an unknown one skips its case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Expectations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_ip: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recipients: Option<u64>,
    /// Where each expectation came from (`flag` or `admin`), by its key above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, String>,
}

/// One case's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseOutcome {
    pub case: LimitCase,
    pub verdict: Verdict,
    /// What passes, in words (`10 banners, 421 for the other 1`).
    pub expected: String,
    /// What happened, in words.
    pub observed: String,
    /// Why the case failed or was skipped; absent when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Replies seen, by code and enhanced status (`220`, `421 4.7.0`), plus
    /// `closed without reply`, `no reply (timeout)` and `connect failed`.
    #[serde(default)]
    pub replies: BTreeMap<String, u64>,
    /// Connections the case opened.
    #[serde(default)]
    pub connections: u64,
    /// Seconds the case took (0 when skipped).
    #[serde(default)]
    pub duration_s: f64,
}

impl CaseOutcome {
    pub fn skipped(
        case: LimitCase,
        expected: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            case,
            verdict: Verdict::Skip,
            expected: expected.into(),
            observed: String::new(),
            reason: Some(reason.into()),
            replies: BTreeMap::new(),
            connections: 0,
            duration_s: 0.0,
        }
    }
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsDocument {
    pub schema: String,
    /// `HOST:PORT` as given.
    pub server: String,
    /// The admin URL the expectations and counters were read from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_s: f64,
    /// The source addresses the suite connected from (empty: the system's choice).
    #[serde(default)]
    pub source_addresses: Vec<String>,
    pub max_case_time_s: f64,
    pub expectations: Expectations,
    pub cases: Vec<CaseOutcome>,
}

impl LimitsDocument {
    pub fn count(&self, verdict: Verdict) -> usize {
        self.cases.iter().filter(|c| c.verdict == verdict).count()
    }

    /// True when every case that ran passed (the exit status 0 of `loadgen limits`).
    pub fn passed(&self) -> bool {
        self.count(Verdict::Fail) == 0
    }

    /// Writes the document as pretty JSON, atomically, as a result file is written.
    pub fn save(&self, path: &Path) -> Result<(), ReportError> {
        crate::io::save_atomic(self, path)
    }

    /// Reads a limits document; every failure names the file.
    pub fn load(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ReportError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::load_str(&text, path)
    }

    /// Parses a limits document; `path` only names the source in errors.
    pub fn load_str(text: &str, path: &Path) -> Result<Self, ReportError> {
        let doc: Self = serde_json::from_str(text).map_err(|e| ReportError::Invalid {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        if doc.schema != LIMITS_SCHEMA_V1 {
            return Err(ReportError::UnknownSchema {
                path: path.to_owned(),
                schema: doc.schema,
                known: LIMITS_SCHEMA_V1,
            });
        }
        Ok(doc)
    }

    /// The table of cases (case, expected, observed, verdict, replies seen) and a
    /// closing line of counts, as plain text; long cells wrap.
    pub fn table(&self) -> String {
        let header = ["case", "expected", "observed", "verdict", "replies seen"];
        let rows: Vec<[Vec<String>; 5]> = self
            .cases
            .iter()
            .map(|c| row(c).map(|cell| wrap(&cell, CELL_WIDTH)))
            .collect();
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                for line in cell {
                    *w = (*w).max(line.chars().count());
                }
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: [&str; 5]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        };
        line(&mut out, header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "{}", rule.join("  "));
        for r in &rows {
            let height = r.iter().map(Vec::len).max().unwrap_or(1);
            for i in 0..height {
                let cell = |k: usize| r[k].get(i).map_or("", String::as_str);
                line(&mut out, [cell(0), cell(1), cell(2), cell(3), cell(4)]);
            }
        }
        let _ = writeln!(
            out,
            "{} passed, {} failed, {} skipped ({}, {:.1} s)",
            self.count(Verdict::Pass),
            self.count(Verdict::Fail),
            self.count(Verdict::Skip),
            self.server,
            self.duration_s
        );
        for c in &self.cases {
            if let Some(reason) = &c.reason {
                let _ = writeln!(out, "  {} {}: {reason}", c.case.title(), c.verdict.as_str());
            }
        }
        out
    }
}

/// Widest a table cell grows before it wraps.
const CELL_WIDTH: usize = 40;

/// Splits `text` into lines of at most `width` characters at spaces (a longer word
/// gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

fn row(c: &CaseOutcome) -> [String; 5] {
    let replies: Vec<String> = c.replies.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    [
        c.case.title().to_string(),
        c.expected.clone(),
        c.observed.clone(),
        c.verdict.as_str().to_string(),
        replies.join(", "),
    ]
}

/// Whether a JSON document is a limits document (by its `schema` key), so that a
/// reader can tell it from a result file before parsing either.
pub fn is_limits_document(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Schema {
        schema: Option<String>,
    }
    serde_json::from_str::<Schema>(text)
        .ok()
        .and_then(|s| s.schema)
        .is_some_and(|s| s == LIMITS_SCHEMA_V1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> LimitsDocument {
        LimitsDocument {
            schema: LIMITS_SCHEMA_V1.into(),
            server: "127.0.0.1:2525".into(),
            admin: None,
            started_at: Utc::now(),
            duration_s: 1.5,
            source_addresses: vec!["127.0.0.2".into()],
            max_case_time_s: 60.0,
            expectations: Expectations {
                max_connections: Some(10),
                ..Expectations::default()
            },
            cases: vec![
                CaseOutcome {
                    case: LimitCase::GlobalConnections,
                    verdict: Verdict::Fail,
                    expected: "10 banners".into(),
                    observed: "11 banners".into(),
                    reason: Some("1 banner too many".into()),
                    replies: BTreeMap::from([("220".to_string(), 11)]),
                    connections: 11,
                    duration_s: 0.2,
                },
                CaseOutcome::skipped(LimitCase::IdleTimeout, "", "no idle timeout expected"),
            ],
        }
    }

    #[test]
    fn a_document_survives_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.json");
        let d = doc();
        d.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(is_limits_document(&text));
        assert_eq!(LimitsDocument::load(&path).unwrap(), d);
        assert!(!d.passed());
    }

    #[test]
    fn a_result_file_is_not_taken_for_a_limits_document() {
        assert!(!is_limits_document(r#"{"schema":"stampede.result.v1"}"#));
        assert!(!is_limits_document("not json"));
        let err = LimitsDocument::load_str(r#"{"schema":"stampede.result.v1"}"#, Path::new("x"))
            .unwrap_err();
        assert!(err.to_string().starts_with("x: "), "{err}");
    }

    #[test]
    fn the_table_names_each_case_its_verdict_and_the_reasons() {
        let t = doc().table();
        assert!(t.contains("global connections"), "{t}");
        assert!(t.contains("FAIL"), "{t}");
        assert!(t.contains("220 ×11"), "{t}");
        assert!(t.contains("0 passed, 1 failed, 1 skipped"), "{t}");
        assert!(
            t.contains("idle timeout skip: no idle timeout expected"),
            "{t}"
        );
    }

    #[test]
    fn long_cells_wrap_at_spaces() {
        assert_eq!(wrap("a bb ccc", 4), vec!["a bb", "ccc"]);
        assert_eq!(wrap("", 4), vec![""]);
        assert_eq!(wrap("abcdef g", 4), vec!["abcdef", "g"]);
    }

    #[test]
    fn a_rate_limit_allows_its_burst_plus_the_refill() {
        let r = RateLimit {
            count: 10,
            window_s: 5.0,
        };
        assert_eq!(r.refill_interval_s(), 0.5);
        assert_eq!(r.allowance(0.0), 10.0);
        assert_eq!(r.allowance(2.0), 14.0);
    }
}
