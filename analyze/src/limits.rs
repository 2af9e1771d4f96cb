//! `analyze show` for a `loadgen limits` document (`stampede.limits.v1`): told
//! from a result file by its schema, shown as the suite printed it, with the
//! expectations it was judged against.

use std::fmt::Write as _;
use std::path::Path;

use report::ReportError;
use report::limits::{LimitsDocument, is_limits_document};

/// The text of `analyze show FILE` when FILE is a limits document; `None` when it
/// is something else (a result file is then read as one).
pub fn show(path: &Path) -> Result<Option<String>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ReportError::Read {
        path: path.to_owned(),
        cause,
    })?;
    if !is_limits_document(&text) {
        return Ok(None);
    }
    let doc = LimitsDocument::load_str(&text, path)?;
    Ok(Some(render(path, &doc)))
}

/// The document's header, its expectations and the case table.
pub fn render(path: &Path, doc: &LimitsDocument) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})", path.display(), doc.schema);
    let _ = writeln!(
        out,
        "server {}{}, started {}, {:.1} s, --max-case-time {:.0} s",
        doc.server,
        doc.admin
            .as_ref()
            .map(|a| format!(" (admin {a})"))
            .unwrap_or_default(),
        doc.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        doc.duration_s,
        doc.max_case_time_s
    );
    if !doc.source_addresses.is_empty() {
        let _ = writeln!(out, "source addresses {}", doc.source_addresses.join(", "));
    }
    let e = &doc.expectations;
    let from = |k: &str| {
        e.sources
            .get(k)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    };
    let mut expected = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            expected.push(format!("{k} {v}{}", from(k)));
        }
    };
    add("max_connections", e.max_connections.map(|v| v.to_string()));
    add(
        "max_connections_per_ip",
        e.max_connections_per_ip.map(|v| v.to_string()),
    );
    add("rate", e.rate.map(|r| r.to_string()));
    add("rate_per_ip", e.rate_per_ip.map(|r| r.to_string()));
    add("idle_timeout_s", e.idle_timeout_s.map(|v| v.to_string()));
    add(
        "session_timeout_s",
        e.session_timeout_s.map(|v| v.to_string()),
    );
    add(
        "max_message_size",
        e.max_message_size.map(|v| v.to_string()),
    );
    add("max_recipients", e.max_recipients.map(|v| v.to_string()));
    let _ = writeln!(
        out,
        "expected: {}\n",
        if expected.is_empty() {
            "nothing (every case skipped)".to_string()
        } else {
            expected.join(", ")
        }
    );
    out.push_str(&doc.table());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use report::limits::{CaseOutcome, Expectations, LIMITS_SCHEMA_V1, LimitCase, Verdict};

    use super::*;

    #[test]
    fn a_limits_document_is_shown_with_its_expectations_and_a_result_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.json");
        let doc = LimitsDocument {
            schema: LIMITS_SCHEMA_V1.into(),
            server: "127.0.0.1:2525".into(),
            admin: Some("http://127.0.0.1:8081".into()),
            started_at: chrono::Utc::now(),
            duration_s: 61.0,
            source_addresses: vec![],
            max_case_time_s: 60.0,
            expectations: Expectations {
                max_recipients: Some(10),
                sources: BTreeMap::from([("max_recipients".into(), "admin".into())]),
                ..Expectations::default()
            },
            cases: vec![CaseOutcome {
                case: LimitCase::Recipients,
                verdict: Verdict::Pass,
                expected: "10 RCPT 250".into(),
                observed: "RCPT limit+1 452 4.5.3".into(),
                reason: None,
                replies: BTreeMap::from([("452 4.5.3".into(), 1)]),
                connections: 1,
                duration_s: 0.1,
            }],
        };
        doc.save(&path).unwrap();
        let shown = show(&path).unwrap().expect("shown as a limits document");
        assert!(shown.contains("max_recipients 10 (admin)"), "{shown}");
        assert!(shown.contains("recipients"), "{shown}");
        assert!(shown.contains("1 passed, 0 failed, 0 skipped"), "{shown}");

        let result = dir.path().join("result.json");
        report::RunResult::default().save(&result).unwrap();
        assert!(show(&result).unwrap().is_none());
        assert!(show(&dir.path().join("missing.json")).is_err());
    }
}
