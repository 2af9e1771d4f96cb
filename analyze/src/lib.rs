//! Stampede's result analyzer as a library: the `analyze` binary is a thin command
//! line over it, and tests call it directly.
//!
//! - [`catalog`](Catalog): finding and loading result files.
//! - tables ([`show_table`], [`list_table`], [`summary_table`]): one result or many, as text.
//!   `sources`: the per-source-address table of `show` (`loadgen --source-ips`).
//! - [`compare`]: a baseline against a candidate, figure by figure, with a
//!   Mann-Whitney U test for repeated runs ([`u_test`]).
//! - [`evaluate_gates`]: absolute gates on one result (the grammar is
//!   [`report::gate`]'s, shared with `loadgen --require`).
//! - output [`Format`]s of `check` and `compare`: text, markdown, JSON, JUnit XML.
//! - [`draw_charts`]: PNG and SVG charts.
//! - [`merge`]: one result from several generators' results.
//! - [`show_limits`]: a `loadgen limits` document (`stampede.limits.v1`) as a table.
//! - [`render_html`]: one self-contained HTML page of one run or a comparison.
//!
//! The modules stay private and only what the binary and the tests use is
//! re-exported, so the compiler still reports dead code.

mod catalog;
mod chart;
mod check;
mod compare;
mod figures;
mod html;
mod limits;
mod merge;
mod output;
mod significance;
mod sources;
mod tables;

pub use catalog::{Catalog, Entry, load};
pub use chart::{ChartReport, draw_all as draw_charts};
pub use check::{CheckReport, evaluate as evaluate_gates, parse_gates, render as render_check};
pub use compare::{
    Comparison, Row, Side, Significance, Threshold, Thresholds, Verdict, compare,
    render as render_comparison,
};
pub use figures::format_ms;
pub use html::{ReportRun, render as render_html, write_atomic};
pub use limits::show as show_limits;
pub use merge::merge;
pub use output::Format;
pub use significance::{ALPHA, Method, UTest, u_test};
pub use tables::{list as list_table, show as show_table, summary as summary_table};
