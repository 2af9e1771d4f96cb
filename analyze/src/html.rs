//! `report`: one self-contained HTML page of one run, or of several with a
//! comparison, for attaching to a ticket.
//!
//! Self-contained means the page fetches nothing: the style is inline, the charts
//! are inline SVG drawn by [`crate::chart`] (their `xmlns` URL, an identifier
//! that is never fetched, is dropped as HTML does not need it), and there is no
//! script, font, image or link. Every string that comes from a result file is
//! user input and is escaped. The tables are the ones `show` and `compare` print,
//! so the page and the terminal agree on every figure.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use comfy_table::Table;
use report::RunResult;
use serde_json::Value;

use crate::catalog::stem;
use crate::chart::{SvgChart, draw_svgs};
use crate::compare::{Thresholds, compare, figures_table};
use crate::figures::format_ms;
use crate::tables;

/// The size the charts are drawn at; the page scales them to its width.
const CHART_SIZE: (u32, u32) = (800, 460);

/// Keys of a result that the typed model may not hold (they are added by newer
/// generators) and that the page shows as tables when present.
const EXTRA_KEYS: [&str; 2] = ["stages", "gates"];

/// One result file, with the keys the page reads straight from its JSON.
pub struct ReportRun {
    pub path: PathBuf,
    pub result: RunResult,
    /// `stages`, `gates`, when the file has them (`capacity` is typed and
    /// shown by [`tables::capacity_table`]).
    extra: Vec<(&'static str, Value)>,
}

impl ReportRun {
    /// Reads a result file; every failure names the file.
    pub fn load(path: &Path) -> anyhow::Result<ReportRun> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let result = report::load_str(&text, path)?;
        // load_str has parsed the same text already, so this cannot fail on
        // JSON syntax; a failure would still name the file.
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let extra = EXTRA_KEYS
            .iter()
            .filter_map(|k| {
                value
                    .get(*k)
                    .filter(|v| !v.is_null())
                    .map(|v| (*k, v.clone()))
            })
            .collect();
        Ok(ReportRun {
            path: path.to_owned(),
            result,
            extra,
        })
    }
}

/// The page for `runs`: the first is the baseline of the comparison when there
/// are several. `generated` is printed as the time the page was made.
pub fn render(
    runs: &[ReportRun],
    thresholds: &Thresholds,
    generated: &str,
) -> anyhow::Result<String> {
    if runs.is_empty() {
        anyhow::bail!("report needs at least one result file");
    }
    let inputs: Vec<(PathBuf, RunResult)> = runs
        .iter()
        .map(|r| (r.path.clone(), r.result.clone()))
        .collect();
    let (charts, skipped) = draw_svgs(&inputs, CHART_SIZE)?;
    let charts = charts_section(&charts, &skipped);

    let names: Vec<String> = runs.iter().map(|r| stem(&r.path)).collect();
    let title = match runs {
        [_] => format!("Stampede report: {}", names.join("")),
        _ => format!("Stampede comparison: {}", names.join(" · ")),
    };
    let mut body = format!("<h1>{}</h1>\n{}", esc(&title), generated_line(generated));
    match runs {
        [] => {}
        [only] => body.push_str(&run_section(only, Some(&charts), false)),
        [base, others @ ..] => {
            body.push_str("<section>\n<h2>Comparison</h2>\n");
            for new in others {
                body.push_str(&comparison(base, new, thresholds));
            }
            body.push_str("</section>\n");
            body.push_str(&charts);
            for run in runs {
                body.push_str(&run_section(run, None, true));
            }
        }
    }
    Ok(page(&esc(&title), &body))
}

/// The document around `body`, with the inline style; `title` is escaped already.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <main>\n{body}</main>\n</body>\n</html>\n"
    )
}

/// The page's whole style. No `url(...)` and no web font: nothing is fetched.
const STYLE: &str = "\
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1a1a1a;
  background: #f6f7f9; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #0072b2; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
.meta, .path { color: #555; font-size: .9rem; margin: .2rem 0; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: 1rem 0; }
.card { background: #fff; border: 1px solid #d8dce2; border-radius: 6px; padding: .5rem .9rem;
  min-width: 8rem; }
.card .v { font-size: 1.35rem; font-weight: 600; }
.card .k { font-size: .8rem; color: #555; }
.tables { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
table { border-collapse: collapse; background: #fff; font-size: .85rem; margin: .3rem 0; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
th, td { border: 1px solid #d8dce2; padding: .2rem .5rem; }
th { background: #eef1f5; text-align: left; }
td + td { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fde2e1; }
tr.good td { background: #e3f4ea; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: .8rem; }
figure { background: #fff; border: 1px solid #d8dce2; border-radius: 6px; margin: 0;
  padding: .5rem; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { font-size: .85rem; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #e69f00; padding: .3rem .6rem; margin: .4rem 0;
  font-size: .9rem; }
.verdict { font-size: 1.1rem; margin: .5rem 0; }
.warn { background: #fde2e1; border-left: 4px solid #d55e00; padding: .3rem .6rem; margin: .4rem 0;
  font-size: .9rem; }
.outcome { font-weight: 600; }
details { margin: .8rem 0; }
pre { background: #fff; border: 1px solid #d8dce2; padding: .6rem; overflow-x: auto; font-size: .8rem; }
";

/// Text from a result file (or anything else) made safe for HTML text and
/// attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn generated_line(generated: &str) -> String {
    format!(
        "<p class=\"meta\">Made by analyze {} at {}</p>\n",
        esc(env!("CARGO_PKG_VERSION")),
        esc(generated)
    )
}

/// A terminal table as an HTML table. A table whose header is one title over a
/// blank column (the key/value tables of `show`) gets the title as its caption.
fn table_html(t: &Table) -> String {
    let header: Vec<String> = t
        .header()
        .map(|h| h.cell_iter().map(|c| c.content()).collect())
        .unwrap_or_default();
    let mut out = String::from("<table>\n");
    let key_value = header.len() == 2 && header[1].is_empty();
    if key_value {
        let _ = writeln!(out, "<caption>{}</caption>", esc(&header[0]));
    } else if !header.is_empty() {
        out.push_str("<thead><tr>");
        for h in &header {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr></thead>\n");
    }
    out.push_str("<tbody>\n");
    for row in t.row_iter() {
        let cells: Vec<String> = row.cell_iter().map(|c| c.content()).collect();
        out.push_str(&row_html(&cells, row_class(&cells)));
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// A comparison row is marked by its verdict (its last cell).
fn row_class(cells: &[String]) -> Option<&'static str> {
    match cells.last().map(String::as_str) {
        Some("REGRESSION") => Some("bad"),
        // A capacity step that broke the SLO.
        Some(v) if v.starts_with("FAIL") => Some("bad"),
        Some("better") => Some("good"),
        _ => None,
    }
}

fn row_html(cells: &[String], class: Option<&str>) -> String {
    let mut out = match class {
        Some(c) => format!("<tr class=\"{c}\">"),
        None => "<tr>".to_string(),
    };
    for c in cells {
        let _ = write!(out, "<td>{}</td>", esc(c));
    }
    out.push_str("</tr>\n");
    out
}

/// The base against one candidate, with `compare`'s figures, verdicts, warnings
/// and notes.
fn comparison(base: &ReportRun, new: &ReportRun, thresholds: &Thresholds) -> String {
    let c = compare(
        &[(base.path.clone(), base.result.clone())],
        &[(new.path.clone(), new.result.clone())],
        thresholds,
    );
    let mut out = format!(
        "<h3>{} → {}</h3>\n",
        esc(&stem(&base.path)),
        esc(&stem(&new.path))
    );
    for w in &c.warnings {
        let _ = writeln!(out, "<p class=\"warn\">Warning: {}</p>", esc(w));
    }
    out.push_str(&table_html(&figures_table(&c, false)));
    for n in &c.notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", esc(n));
    }
    let outcome = if c.regressions.is_empty() {
        "No regression past the threshold.".to_string()
    } else {
        format!("Regression in {}.", c.regressions.join(", "))
    };
    let _ = writeln!(out, "<p class=\"outcome\">{}</p>", esc(&outcome));
    out
}

/// Every chart, one figure each, and a note for each chart left out.
fn charts_section(charts: &[SvgChart], skipped: &[String]) -> String {
    let mut out = String::from("<section>\n<h2>Charts</h2>\n<div class=\"charts\">\n");
    for c in charts {
        let _ = write!(
            out,
            "<figure>\n{}<figcaption>{}</figcaption>\n</figure>\n",
            inline_svg(&c.svg),
            esc(&c.name)
        );
    }
    out.push_str("</div>\n");
    if charts.is_empty() {
        out.push_str("<p class=\"note\">No chart: the results hold nothing to draw.</p>\n");
    }
    for s in skipped {
        let _ = writeln!(out, "<p class=\"note\">Left out: {}</p>", esc(s));
    }
    out.push_str("</section>\n");
    out
}

/// An SVG document as an element of the page: HTML puts `<svg>` in the SVG
/// namespace by itself, so the namespace URL is dropped and the page holds no URL.
fn inline_svg(svg: &str) -> String {
    svg.replace(" xmlns=\"http://www.w3.org/2000/svg\"", "")
}

/// One run: where it came from, its headline figures, the charts (for a single
/// run), every table `show` prints and the tables of newer keys.
fn run_section(run: &ReportRun, charts: Option<&str>, titled: bool) -> String {
    let r = &run.result;
    let mut out = String::from("<section>\n");
    if titled {
        let _ = writeln!(out, "<h2>Run {}</h2>", esc(&stem(&run.path)));
    }
    let _ = writeln!(
        out,
        "<p class=\"path\">{} [{}] · {} .. {}</p>",
        esc(&run.path.display().to_string()),
        esc(&tables::format_name(r)),
        esc(&r.metrics.start_time),
        esc(&r.metrics.end_time)
    );
    for n in run_notes(r) {
        let _ = writeln!(out, "<p class=\"warn\">{}</p>", esc(&n));
    }
    if let Some(c) = &r.capacity {
        let _ = writeln!(
            out,
            "<p class=\"verdict\"><strong>Capacity:</strong> {}</p>",
            esc(&c.verdict())
        );
        if let Some(h) = c.headline_step() {
            let _ = writeln!(
                out,
                "<p class=\"note\">{}</p>",
                esc(&tables::headline_note(h))
            );
        }
    }
    out.push_str(&headline_cards(r));
    if let Some(charts) = charts {
        out.push_str(charts);
    }
    out.push_str("<h3>Tables</h3>\n<div class=\"tables\">\n");
    for t in run_tables(r) {
        out.push_str(&table_html(&t));
    }
    out.push_str("</div>\n");
    for (key, value) in &run.extra {
        out.push_str(&extra_section(key, value));
    }
    if let Some(info) = &r.run {
        let config = serde_json::to_string_pretty(&info.config).unwrap_or_default();
        let _ = write!(
            out,
            "<details>\n<summary>The run's configuration as recorded</summary>\n<pre>{}</pre>\n</details>\n",
            esc(&config)
        );
    }
    out.push_str("</section>\n");
    out
}

/// What a reader must know before trusting the figures.
fn run_notes(r: &RunResult) -> Vec<String> {
    let mut notes = Vec::new();
    if r.is_legacy() {
        notes.push(
            "PrixFixe v0.2 (legacy) file: headline figures only; it holds no per-phase, \
             per-server, reply-code, timeline or histogram data."
                .to_string(),
        );
    }
    if r.interrupted() {
        notes.push("The run was interrupted: its figures cover part of a run.".to_string());
    }
    if r.generator_saturated {
        notes.push("The generator, not the server, limited this run.".to_string());
    }
    notes
}

/// The figures a reader looks at first.
fn headline_cards(r: &RunResult) -> String {
    let m = &r.metrics;
    let mut cards = vec![
        ("messages", m.total_messages.to_string()),
        ("success rate", format!("{:.2}%", m.success_rate)),
        ("msg/s", format!("{:.2}", m.messages_per_second)),
        ("p50", format!("{} ms", format_ms(m.latency_ms.p50))),
        ("p99", format!("{} ms", format_ms(m.latency_ms.p99))),
    ];
    if let Some(c) = &m.latency_corrected_ms {
        cards.push(("p99 corrected", format!("{} ms", format_ms(c.p99))));
    }
    cards.push(("duration", format!("{:.2} s", m.duration_seconds)));
    let mut out = String::from("<div class=\"cards\">\n");
    for (k, v) in cards {
        let _ = writeln!(
            out,
            "<div class=\"card\"><div class=\"v\">{}</div><div class=\"k\">{}</div></div>",
            esc(&v),
            esc(k)
        );
    }
    out.push_str("</div>\n");
    out
}

/// The tables of `show`, in its order, each only when the run has its data.
fn run_tables(r: &RunResult) -> Vec<Table> {
    let m = &r.metrics;
    let mut t = vec![
        tables::key_value("config", tables::config_rows(r)),
        tables::key_value("messages", tables::message_rows(r)),
        tables::key_value("performance", tables::performance_rows(r)),
    ];
    if let Some(c) = &r.capacity {
        t.push(tables::capacity_table(c));
    }
    if let Some(tls) = &r.tls {
        t.push(tables::tls_table(tls));
    }
    t.push(tables::latency_table(
        &m.latency_ms,
        m.latency_corrected_ms.as_ref(),
    ));
    if !m.phases_ms.is_empty() {
        t.push(tables::phase_table(r));
    }
    if !r.per_server.is_empty() {
        t.push(tables::per_server_table(r));
    }
    if !r.per_source.is_empty() {
        t.push(crate::sources::source_table(&r.per_source));
    }
    if !m.replies.is_empty() || !m.error_breakdown.is_empty() {
        t.push(tables::reply_table(r));
    }
    if !r.resources.is_empty() {
        t.push(tables::resource_table(r));
    }
    t
}

/// `stages`, `gates` or `capacity` as tables: a list of objects is a table of
/// one row each; an object shows its plain values and its lists of objects.
fn extra_section(key: &str, value: &Value) -> String {
    let mut out = format!("<h3>{}</h3>\n", esc(key));
    match value {
        Value::Array(items) => out.push_str(&objects_table(items)),
        Value::Object(map) => {
            let plain: Vec<(String, String)> = map
                .iter()
                .filter_map(|(k, v)| cell(v).map(|c| (k.clone(), c)))
                .collect();
            if !plain.is_empty() {
                out.push_str("<table>\n<tbody>\n");
                for (k, v) in plain {
                    out.push_str(&row_html(&[k, v], None));
                }
                out.push_str("</tbody>\n</table>\n");
            }
            for (k, v) in map {
                if let Value::Array(items) = v {
                    let _ = writeln!(out, "<h3>{} {}</h3>", esc(key), esc(k));
                    out.push_str(&objects_table(items));
                }
            }
        }
        other => {
            let _ = writeln!(out, "<p>{}</p>", esc(&cell(other).unwrap_or_default()));
        }
    }
    out
}

/// Columns that read best first, in this order (JSON objects come back with
/// their keys sorted, which would put `end_s` before `start_s`).
const LEADING_COLUMNS: [&str; 17] = [
    "index",
    "name",
    "gate",
    "start_s",
    "end_s",
    "rate",
    "rate_from",
    "rate_to",
    "sent",
    "ok",
    "failed",
    "late",
    "success_rate",
    "latency_ms",
    "latency_corrected_ms",
    "value",
    "passed",
];

/// One row per object, one column per key that holds a plain value (the usual
/// ones first, then the rest by name); nested histograms and lists are left out.
fn objects_table(items: &[Value]) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for item in items {
        if let Value::Object(map) = item {
            for (k, v) in map {
                if cell(v).is_some() && !columns.contains(&k.as_str()) {
                    columns.push(k);
                }
            }
        }
    }
    let rank = |c: &str| {
        LEADING_COLUMNS
            .iter()
            .position(|l| *l == c)
            .unwrap_or(LEADING_COLUMNS.len())
    };
    columns.sort_by_key(|c| (rank(c), *c));
    let mut out = String::from("<table>\n<thead><tr>");
    for c in &columns {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for item in items {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| item.get(*c).and_then(cell).unwrap_or_else(|| "-".into()))
            .collect();
        let class = match item.get("passed").and_then(Value::as_bool) {
            Some(false) => Some("bad"),
            _ => None,
        };
        out.push_str(&row_html(&cells, class));
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// A JSON value as one table cell: numbers, strings and booleans as they are,
/// a latency summary as its p50 and p99; `None` for anything else.
fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.into()),
        Value::Number(n) => Some(match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) => format_number(f),
            _ => n.to_string(),
        }),
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => {
            let p = |k: &str| map.get(k).and_then(Value::as_f64);
            let (p50, p99) = (p("p50")?, p("p99")?);
            Some(format!("p50 {} / p99 {}", format_ms(p50), format_ms(p99)))
        }
        Value::Array(_) => None,
    }
}

/// A float with at most three decimals, trailing zeros dropped.
fn format_number(f: f64) -> String {
    let s = format!("{f:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Writes `text` to `path` atomically: a temporary file in the same directory is
/// written, synced and renamed over `path`, so a reader never sees half a page.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = || format!("{}: cannot write", path.display());
    std::fs::create_dir_all(dir).with_context(fail)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".stampede-report-").suffix(".tmp");
    // A page is an ordinary document: 0666 narrowed by the umask, like any file
    // the user writes (tempfile's own default is 0600).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).with_context(fail)?;
    tmp.write_all(text.as_bytes()).with_context(fail)?;
    tmp.as_file().sync_all().with_context(fail)?;
    tmp.persist(path).map_err(|e| e.error).with_context(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_markup_character_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn json_cells_read_as_figures() {
        assert_eq!(cell(&serde_json::json!(12)).as_deref(), Some("12"));
        assert_eq!(cell(&serde_json::json!(2.5)).as_deref(), Some("2.5"));
        assert_eq!(cell(&serde_json::json!(0.12345)).as_deref(), Some("0.123"));
        assert_eq!(
            cell(&serde_json::json!({"p50": 1.5, "p99": 12.0})).as_deref(),
            Some("p50 1.50 / p99 12.00")
        );
        // Encoded histograms are objects without percentiles: left out.
        assert_eq!(cell(&serde_json::json!({"total": "HISTFAAA"})), None);
        assert_eq!(cell(&serde_json::json!([1, 2])), None);
    }
}
