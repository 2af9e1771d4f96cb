//! Terminal tables for `show`, `list` and `summary`. Presentation only: every
//! figure comes from the result as written, or from [`crate::figures`].

use std::fmt::Write as _;
use std::path::Path;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use report::capacity::format_rate;
use report::{CapacitySummary, GateOutcome, LatencySummary, PHASES, RunResult, TlsSummary};

use crate::catalog::{Entry, stem};
use crate::figures::{format_ms, megabytes_per_second};

/// How the format of a file is named to the user.
pub fn format_name(r: &RunResult) -> String {
    match &r.schema {
        None => "PrixFixe v0.2 (legacy)".to_string(),
        Some(s) => s.clone(),
    }
}

/// A table with the house style; columns after the first are right-aligned.
pub fn new_table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    for i in 1..header.len() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

pub(crate) fn key_value(title: &str, rows: Vec<(&str, String)>) -> Table {
    let mut t = new_table(&[title, ""]);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    t
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// `10240 (10.0 KiB)`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{n} ({v:.1} {})", UNITS[unit])
    }
}

fn percent_of(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.2}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Everything one result holds, as a sequence of tables.
pub fn show(path: &Path, r: &RunResult) -> String {
    let m = &r.metrics;
    let mut out = String::new();
    let _ = writeln!(out, "{}  [{}]", path.display(), format_name(r));
    let _ = writeln!(out, "{} .. {}", m.start_time, m.end_time);
    if r.is_legacy() {
        let _ = writeln!(
            out,
            "PrixFixe v0.2 (legacy) file: headline figures only; it holds no per-phase, \
             per-server, reply-code, timeline or histogram data."
        );
    }

    let _ = writeln!(out, "{}", key_value("config", config_rows(r)));

    let _ = writeln!(out, "{}", key_value("messages", message_rows(r)));

    let _ = writeln!(out, "{}", key_value("performance", performance_rows(r)));
    show_figures(&mut out, r);
    out
}

/// What was run and how: the `config` table of `show` and of the HTML report.
pub(crate) fn config_rows(r: &RunResult) -> Vec<(&'static str, String)> {
    let m = &r.metrics;
    let mut config = vec![
        ("test type", r.test_type.clone()),
        ("servers", r.servers.join(", ")),
        ("port", r.port.to_string()),
        ("workers", opt(r.concurrent_workers)),
        (
            "target rate",
            opt(r.target_rate.map(|v| format!("{v} msg/s"))),
        ),
        ("message size", format_bytes(r.message_size)),
        ("messages", m.total_messages.to_string()),
    ];
    if let Some(run) = &r.run {
        config.push(("run name", run.name.clone()));
        config.push(("interrupted", yes_no(run.interrupted)));
        config.push((
            "tool",
            format!(
                "{}{}",
                run.tool_version,
                run.git_sha
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
        ));
        config.push((
            "host",
            format!(
                "{} ({} CPUs, {})",
                run.host.hostname, run.host.cpus, run.host.os
            ),
        ));
        if let Some(sources) = run.config.get("merged_from").and_then(|v| v.as_array()) {
            let files: Vec<&str> = sources
                .iter()
                .filter_map(|s| s.get("file").and_then(|f| f.as_str()))
                .collect();
            config.push(("merged from", files.join(", ")));
        }
        if let Some(auth) = auth_setting(&run.config) {
            config.push(("auth", auth));
        }
        if let Some(arrivals) = arrivals_setting(&run.config) {
            config.push(("arrivals", arrivals));
        }
        if let Some(g) = &run.generator {
            config.push((
                "generator use",
                format!(
                    "{:.1}% CPU, {:.1}s CPU, {} peak RSS",
                    g.cpu_percent,
                    g.cpu_seconds,
                    format_bytes(g.max_rss_bytes)
                ),
            ));
        }
    }
    if let Some(w) = r.warmup_s {
        config.push((
            "warmup",
            format!("{w} s (sent, left out of every figure but the timeline)"),
        ));
    }
    config.push(("generator saturated", yes_no(r.generator_saturated)));
    config
}

/// Message counts and the success rate.
pub(crate) fn message_rows(r: &RunResult) -> Vec<(&'static str, String)> {
    let m = &r.metrics;
    let mut messages = vec![
        ("total", m.total_messages.to_string()),
        ("successful", m.successful_messages.to_string()),
        ("failed", m.failed_messages.to_string()),
        ("connection errors", m.connection_errors.to_string()),
        (
            "timeouts",
            if r.is_legacy() {
                "not recorded".to_string()
            } else {
                m.timeouts.to_string()
            },
        ),
        ("success rate", format!("{:.2}%", m.success_rate)),
    ];
    if !r.is_legacy() && (r.target_rate.is_some() || m.late_sends > 0) {
        messages.push(("late sends", m.late_sends.to_string()));
    }
    messages
}

/// Duration, throughput and bytes.
pub(crate) fn performance_rows(r: &RunResult) -> Vec<(&'static str, String)> {
    let m = &r.metrics;
    let performance = vec![
        ("duration", format!("{:.2} s", m.duration_seconds)),
        ("msg/s", format!("{:.2}", m.messages_per_second)),
        ("MB/s", format!("{:.2}", megabytes_per_second(r))),
        ("bytes sent", format_bytes(m.total_bytes_sent)),
    ];
    performance
}

/// The per-server table of `show`, for the HTML report.
pub(crate) fn per_server_table(r: &RunResult) -> Table {
    server_table(r)
}

/// The tables of `show` after the headline ones: TLS, latency, phases, servers,
/// replies, resources, each when the result holds it.
fn show_figures(out: &mut String, r: &RunResult) {
    let m = &r.metrics;
    if let Some(gates) = r.gates.as_deref().filter(|g| !g.is_empty()) {
        let _ = writeln!(out, "{}", gate_table(gates));
    }
    if let Some(tls) = &r.tls {
        let _ = writeln!(out, "{}", tls_table(tls));
    }

    let _ = writeln!(
        out,
        "{}",
        latency_table(&m.latency_ms, m.latency_corrected_ms.as_ref())
    );

    if !r.stages.is_empty() {
        let _ = writeln!(out, "{}", stage_table(r));
    }
    if let Some(c) = &r.capacity {
        let _ = writeln!(out, "{}", capacity_table(c));
        let _ = writeln!(out, "capacity: {}", c.verdict());
        if let Some(h) = c.headline_step() {
            let _ = writeln!(out, "{}", headline_note(h));
        }
    }
    if !m.phases_ms.is_empty() {
        let _ = writeln!(out, "{}", phase_table(r));
    }
    if !r.per_server.is_empty() {
        let _ = writeln!(out, "{}", server_table(r));
    }
    if !r.per_source.is_empty() {
        let _ = writeln!(out, "{}", crate::sources::source_table(&r.per_source));
    }
    if !m.replies.is_empty() || !m.error_breakdown.is_empty() {
        let _ = writeln!(out, "{}", reply_table(r));
    }
    if !r.resources.is_empty() {
        let _ = writeln!(out, "{}", resource_table(r));
    }
}

/// The gates `loadgen --require` judged at the end of the run, one row each, as
/// the run recorded them (so `show` says what the exit code of that run meant).
pub(crate) fn gate_table(gates: &[GateOutcome]) -> Table {
    let mut t = new_table(&["gate", "required", "observed", "verdict"]);
    for g in gates {
        let verdict = match (g.passed, g.aborted_run) {
            (true, _) => "PASS",
            (false, false) => "FAIL",
            (false, true) => "FAIL (stopped the run)",
        };
        t.add_row(vec![
            g.gate.clone(),
            g.requirement(),
            g.observed_text(),
            verdict.to_string(),
        ]);
    }
    t
}

/// One row per percentile; a second column when the corrected latency exists.
pub(crate) fn latency_table(l: &LatencySummary, corrected: Option<&LatencySummary>) -> Table {
    let mut header = vec!["latency", "ms"];
    if corrected.is_some() {
        header = vec!["latency", "measured ms", "corrected ms"];
    }
    let mut t = new_table(&header);
    type Percentile = (&'static str, fn(&LatencySummary) -> f64);
    let rows: [Percentile; 8] = [
        ("avg", |l| l.avg),
        ("min", |l| l.min),
        ("p50", |l| l.p50),
        ("p90", |l| l.p90),
        ("p95", |l| l.p95),
        ("p99", |l| l.p99),
        ("p99.9", |l| l.p99_9),
        ("max", |l| l.max),
    ];
    for (name, get) in rows {
        let mut row = vec![name.to_string(), format_ms(get(l))];
        if let Some(c) = corrected {
            row.push(format_ms(get(c)));
        }
        t.add_row(row);
    }
    t
}

/// `plain, 3 users`, from the run's config echo, when the run used AUTH.
fn auth_setting(config: &serde_json::Value) -> Option<String> {
    let auth = config.get("auth")?;
    let mechanism = auth.get("mechanism")?.as_str()?;
    let users = auth.get("users").and_then(|u| u.as_u64()).unwrap_or(1);
    let plural = if users == 1 { "user" } else { "users" };
    Some(format!("{mechanism}, {users} {plural}"))
}

/// What the run's TLS handshakes negotiated: mode, count, the share resumed,
/// and each version and cipher suite with its share.
pub(crate) fn tls_table(tls: &TlsSummary) -> Table {
    let share = |n: u64| format!("{n} ({})", percent_of(n, tls.handshakes));
    let mut rows = vec![
        ("mode", tls.mode.clone()),
        ("handshakes", tls.handshakes.to_string()),
        ("resumed", share(tls.resumed)),
    ];
    for (version, n) in &tls.versions {
        rows.push((version.as_str(), share(*n)));
    }
    for (suite, n) in &tls.cipher_suites {
        rows.push((suite.as_str(), share(*n)));
    }
    key_value("tls", rows)
}

pub(crate) fn phase_table(r: &RunResult) -> Table {
    let mut t = new_table(&["phase", "avg ms", "p50 ms", "p90 ms", "p99 ms", "max ms"]);
    let phases = &r.metrics.phases_ms;
    // Protocol order first, then anything else the generator recorded.
    let ordered = PHASES.iter().map(|p| p.to_string()).chain(
        phases
            .keys()
            .filter(|k| !PHASES.contains(&k.as_str()))
            .cloned(),
    );
    for name in ordered {
        if let Some(l) = phases.get(&name) {
            t.add_row(vec![
                name,
                format_ms(l.avg),
                format_ms(l.p50),
                format_ms(l.p90),
                format_ms(l.p99),
                format_ms(l.max),
            ]);
        }
    }
    t
}

/// `poisson (seed 42)`, from the run's config echo, for open-model runs.
fn arrivals_setting(config: &serde_json::Value) -> Option<String> {
    let arrivals = config.get("arrivals")?.as_str()?;
    match arrivals {
        "poisson" => Some(format!("poisson (seed {})", config.get("seed")?)),
        other => Some(other.to_string()),
    }
}

/// One row per stage of a stages run: its stretch of time and target rate,
/// what became of the messages due in it (`ok/s`: those that succeeded, per
/// second of the stage; whether they kept time shows in `late` and the corrected
/// p99), and their latency.
fn stage_table(r: &RunResult) -> Table {
    let mut t = new_table(&[
        "stage",
        "time s",
        "target msg/s",
        "sent",
        "ok",
        "failed",
        "late",
        "ok/s",
        "p50 ms",
        "p99 ms",
        "p99 corr. ms",
    ]);
    for s in &r.stages {
        let length = s.end_s - s.start_s;
        let target = if s.rate_from == s.rate_to {
            format!("{}", s.rate_to)
        } else {
            format!("{} → {}", s.rate_from, s.rate_to)
        };
        let achieved = if length > 0.0 {
            format!("{:.1}", s.ok as f64 / length)
        } else {
            "step".to_string()
        };
        let latency = |v: f64| if s.ok > 0 { format_ms(v) } else { "-".into() };
        t.add_row(vec![
            format!("stage {}", s.index),
            format!("{}–{}", s.start_s, s.end_s),
            target,
            s.sent.to_string(),
            s.ok.to_string(),
            s.failed.to_string(),
            s.late.to_string(),
            achieved,
            latency(s.latency_ms.p50),
            latency(s.latency_ms.p99),
            latency(s.latency_corrected_ms.p99),
        ]);
    }
    t
}

/// One row per step of a capacity search, in the order run: the offered rate,
/// what the step achieved, the latency the SLO was judged on (corrected), and
/// its verdict with the gates it broke.
pub(crate) fn capacity_table(c: &CapacitySummary) -> Table {
    let mut t = new_table(&[
        "step",
        "offered msg/s",
        "sent",
        "ok/s",
        "success",
        "late",
        "p50 ms",
        "p99 ms",
        "p99 corr. ms",
        &format!("SLO {}", c.slo.join(", ")),
    ]);
    for s in &c.steps {
        let latency = |v: f64| if s.ok > 0 { format_ms(v) } else { "-".into() };
        let mut verdict = if s.passed {
            "pass".to_string()
        } else {
            format!("FAIL {}", s.broke.join(", "))
        };
        if s.generator_saturated {
            verdict.push_str(" (generator saturated)");
        }
        t.add_row(vec![
            format!("step {}", s.index),
            format_rate(s.rate),
            s.sent.to_string(),
            format!("{:.1}", s.achieved_rate),
            format!("{:.2}%", s.success_rate),
            s.late.to_string(),
            latency(s.latency_ms.p50),
            latency(s.latency_ms.p99),
            latency(s.latency_corrected_ms.p99),
            verdict,
        ]);
    }
    t
}

/// Which step the top-level figures of a capacity result are.
pub(crate) fn headline_note(h: &report::CapacityStep) -> String {
    format!(
        "The headline figures are those of step {} at {} msg/s (the fastest step that met the SLO, or the first step when none did).",
        h.index,
        format_rate(h.rate)
    )
}

fn server_table(r: &RunResult) -> Table {
    let mut t = new_table(&[
        "server",
        "messages",
        "successful",
        "failed",
        "conn errors",
        "timeouts",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]);
    for s in &r.per_server {
        t.add_row(vec![
            s.address.clone(),
            s.total_messages.to_string(),
            s.successful_messages.to_string(),
            s.failed_messages.to_string(),
            s.connection_errors.to_string(),
            s.timeouts.to_string(),
            format!("{:.2}", s.messages_per_second),
            format_ms(s.latency_ms.p50),
            format_ms(s.latency_ms.p99),
            format_ms(s.latency_ms.max),
        ]);
    }
    t
}

pub(crate) fn reply_table(r: &RunResult) -> Table {
    let m = &r.metrics;
    let mut t = new_table(&["reply / error", "count", "share"]);
    for (code, n) in &m.replies {
        t.add_row(vec![
            code.clone(),
            n.to_string(),
            percent_of(*n, m.total_messages),
        ]);
    }
    // Failures that are not reply codes (connection refused, timeouts) and, for
    // PrixFixe files that had no `replies`, every failure.
    for (what, n) in &m.error_breakdown {
        if m.replies.contains_key(what) {
            continue;
        }
        t.add_row(vec![
            format!("{what} (error)"),
            n.to_string(),
            percent_of(*n, m.total_messages),
        ]);
    }
    t
}

pub(crate) fn resource_table(r: &RunResult) -> Table {
    let mut t = new_table(&[
        "server resources",
        "samples",
        "avg CPU %",
        "max CPU %",
        "max memory",
    ]);
    for (server, samples) in &r.resources {
        if samples.is_empty() {
            continue;
        }
        let avg = samples.iter().map(|s| s.cpu_percent).sum::<f64>() / samples.len() as f64;
        let max = samples.iter().map(|s| s.cpu_percent).fold(0.0, f64::max);
        let mem = samples.iter().map(|s| s.memory_bytes).max().unwrap_or(0);
        t.add_row(vec![
            server.clone(),
            samples.len().to_string(),
            format!("{avg:.1}"),
            format!("{max:.1}"),
            format_bytes(mem),
        ]);
    }
    t
}

/// `list`: which results there are, newest first.
pub fn list(entries: &[Entry]) -> Table {
    let mut t = new_table(&["file", "start", "type", "servers", "messages", "format"]);
    for e in entries {
        let r = &e.result;
        t.add_row(vec![
            file_name(&e.path),
            e.when.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.test_type.clone(),
            r.servers.len().to_string(),
            r.metrics.total_messages.to_string(),
            format_name(r),
        ]);
    }
    t
}

/// `summary`: one row of headline figures per result, newest first.
pub fn summary(entries: &[Entry]) -> Table {
    let mut t = new_table(&[
        "result", "start", "type", "messages", "success", "msg/s", "MB/s", "p50 ms", "p99 ms",
        "max ms", "notes",
    ]);
    for e in entries {
        let r = &e.result;
        let m = &r.metrics;
        let mut notes = Vec::new();
        if r.is_legacy() {
            notes.push("PrixFixe v0.2 (legacy)");
        }
        if r.interrupted() {
            notes.push("interrupted");
        }
        if r.generator_saturated {
            notes.push("generator saturated");
        }
        t.add_row(vec![
            stem(&e.path),
            e.when.format("%Y-%m-%d %H:%M").to_string(),
            r.test_type.clone(),
            m.total_messages.to_string(),
            format!("{:.2}%", m.success_rate),
            format!("{:.2}", m.messages_per_second),
            format!("{:.2}", megabytes_per_second(r)),
            format_ms(m.latency_ms.p50),
            format_ms(m.latency_ms.p99),
            format_ms(m.latency_ms.max),
            notes.join(", "),
        ]);
    }
    t
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
