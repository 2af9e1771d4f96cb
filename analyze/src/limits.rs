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
