//! `chart`: PNG and SVG charts of one or several results, one series per file.
//!
//! Text is drawn with DejaVu Sans compiled into the binary and registered with
//! plotters' `ab_glyph` backend, so charts render on a bare machine or a `FROM
//! scratch` container with no fonts installed.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use report::{RunResult, decode_histogram};

use crate::catalog::stem;

/// DejaVu Sans (Bitstream Vera license, see `assets/DejaVuSans.LICENSE`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The family name plotters asks for by default (`FontFamily::SansSerif`).
const FONT_FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Cannot fail for the embedded file; a broken build would show in the
        // chart tests at once.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

/// What `chart` did.
#[derive(Default)]
pub struct ChartReport {
    pub written: Vec<PathBuf>,
    /// One line per chart or file left out, with the reason.
    pub skipped: Vec<String>,
}

/// A series of one input file.
struct Series<'a> {
    name: String,
    result: &'a RunResult,
    color: RGBColor,
}

/// A chart that can draw itself on any plotters backend.
trait Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static;
}

/// Colors that stay apart on white and for common color blindness (Okabe-Ito).
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Draws every chart the inputs allow into `out`, as `NAME.png` and `NAME.svg`.
pub fn draw_all(
    inputs: &[(PathBuf, RunResult)],
    out: &Path,
    size: (u32, u32),
) -> anyhow::Result<ChartReport> {
    draw_on_canvas(inputs, &Canvas::files(out, size))
}

/// One chart drawn as an SVG document in memory.
pub struct SvgChart {
    /// The chart's name, as its file would be named (`throughput`, `spectrum`).
    pub name: String,
    pub svg: String,
}

/// Every chart the inputs allow, as SVG documents in memory (for a page that
/// embeds them), with the notes on what was left out.
pub fn draw_svgs(
    inputs: &[(PathBuf, RunResult)],
    size: (u32, u32),
) -> anyhow::Result<(Vec<SvgChart>, Vec<String>)> {
    let canvas = Canvas {
        out: Output::Svg(RefCell::new(Vec::new())),
        size,
    };
    let report = draw_on_canvas(inputs, &canvas)?;
    let charts = match canvas.out {
        Output::Svg(charts) => charts.into_inner(),
        Output::Files(_) => Vec::new(),
    };
    Ok((charts, report.skipped))
}

/// The charts the inputs allow, each drawn on `canvas`; the same choice of
/// charts (and the same notes) whether they go to files or into a page.
fn draw_on_canvas(inputs: &[(PathBuf, RunResult)], canvas: &Canvas) -> anyhow::Result<ChartReport> {
    register_font();
    let series: Vec<Series> = inputs
        .iter()
        .enumerate()
        .map(|(i, (path, result))| Series {
            name: stem(path),
            result,
            color: color(i),
        })
        .collect();
    let mut report = ChartReport::default();

    let has_timeline = |r: &RunResult| !r.timeline.is_empty();
    report.note_lacking(
        &series,
        has_timeline,
        "timeline: left out of throughput and latency over time",
    );
    // A timeline of zeros (no message finished) would draw an empty grid.
    let has_traffic = |r: &RunResult| r.timeline.iter().any(|p| p.ok + p.failed > 0);
    if let Some(fed) = report.fed_by(
        &series,
        has_traffic,
        "throughput: no input's timeline has a finished message",
    ) {
        canvas.render(&Throughput(&fed), "throughput", &mut report)?;
    }
    let has_latency = |r: &RunResult| r.timeline.iter().any(|p| p.p99_ms > 0.0);
    if let Some(fed) = report.fed_by(
        &series,
        has_latency,
        "latency: no input's timeline has a successful message",
    ) {
        canvas.render(&LatencyOverTime(&fed), "latency", &mut report)?;
    }

    report.note_lacking(
        &series,
        |r| r.histograms.is_some(),
        "histogram: its spectrum is drawn through the summary percentiles only",
    );
    // A run where every message failed has no latency: its spectrum would be an
    // empty grid.
    let has_spectrum = |s: &Series| {
        spectrum_points(s)
            .iter()
            .any(|(_, points)| points.iter().any(|&(_, ms)| ms > 0.0))
    };
    if series.iter().any(has_spectrum) {
        canvas.render(&Spectrum(&series), "spectrum", &mut report)?;
    } else {
        report
            .skipped
            .push("spectrum: no input has the latency of a successful message".into());
    }

    let has_servers = |r: &RunResult| !r.per_server.is_empty();
    if let Some(fed) = report.fed_by(
        &series,
        has_servers,
        "servers: no input has per-server figures",
    ) {
        report.note_lacking(&series, has_servers, "per-server figures");
        // Bars of zero height only would draw an empty grid.
        let any_success = fed
            .iter()
            .flat_map(|s| &s.result.per_server)
            .any(|m| m.successful_messages > 0);
        if any_success {
            canvas.render(&Servers(&fed), "servers", &mut report)?;
        } else {
            report
                .skipped
                .push("servers: no server had a successful message".into());
        }
    }

    // Only capacity searches have a knee; other runs need no note about it.
    let fed: Vec<&Series> = series
        .iter()
        .filter(|s| {
            s.result
                .capacity
                .as_ref()
                .is_some_and(|c| !c.steps.is_empty())
        })
        .collect();
    if !fed.is_empty() {
        canvas.render(&Knee(&fed), "capacity", &mut report)?;
    }

    let has_resources = |r: &RunResult| r.resources.values().any(|v| !v.is_empty());
    if let Some(fed) = report.fed_by(
        &series,
        has_resources,
        "resources: no input has server CPU/memory samples",
    ) {
        canvas.render(&Resources(&fed), "resources", &mut report)?;
    }
    Ok(report)
}

impl ChartReport {
    /// Notes each series that lacks what a chart needs (`has`), and why.
    fn note_lacking(&mut self, series: &[Series], has: fn(&RunResult) -> bool, what: &str) {
        for s in series.iter().filter(|s| !has(s.result)) {
            let legacy = if s.result.is_legacy() {
                " (PrixFixe v0.2 (legacy) file)"
            } else {
                ""
            };
            self.skipped.push(format!("{}: no {what}{legacy}", s.name));
        }
    }

    /// The series that hold what a chart needs; `None`, with `none` noted as
    /// skipped, when no series does.
    fn fed_by<'a>(
        &mut self,
        series: &'a [Series<'a>],
        has: fn(&RunResult) -> bool,
        none: &str,
    ) -> Option<Vec<&'a Series<'a>>> {
        let fed: Vec<&Series> = series.iter().filter(|s| has(s.result)).collect();
        if fed.is_empty() {
            self.skipped.push(none.to_string());
            None
        } else {
            Some(fed)
        }
    }
}

/// Where and how large the charts are drawn.
struct Canvas<'a> {
    out: Output<'a>,
    size: (u32, u32),
}

/// Where the drawn charts go.
enum Output<'a> {
    /// `NAME.png` and `NAME.svg` in this directory.
    Files(&'a Path),
    /// SVG documents kept in memory, in the order drawn.
    Svg(RefCell<Vec<SvgChart>>),
}

impl<'a> Canvas<'a> {
    fn files(dir: &'a Path, size: (u32, u32)) -> Canvas<'a> {
        Canvas {
            out: Output::Files(dir),
            size,
        }
    }

    /// Draws `chart` to the canvas's output.
    fn render<C: Chart>(
        &self,
        chart: &C,
        name: &str,
        report: &mut ChartReport,
    ) -> anyhow::Result<()> {
        match &self.out {
            Output::Files(dir) => self.render_files(dir, chart, name, report),
            Output::Svg(charts) => {
                let mut svg = String::new();
                {
                    let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
                    draw_on(chart, &root, Path::new(name))?;
                }
                charts.borrow_mut().push(SvgChart {
                    name: name.to_string(),
                    svg,
                });
                Ok(())
            }
        }
    }

    /// Draws `chart` as `NAME.png` and `NAME.svg` in `dir`.
    fn render_files<C: Chart>(
        &self,
        dir: &Path,
        chart: &C,
        name: &str,
        report: &mut ChartReport,
    ) -> anyhow::Result<()> {
        let png = dir.join(format!("{name}.png"));
        {
            let root = BitMapBackend::new(&png, self.size).into_drawing_area();
            draw_on(chart, &root, &png)?;
        }
        report.written.push(png);
        let svg = dir.join(format!("{name}.svg"));
        {
            let root = SVGBackend::new(&svg, self.size).into_drawing_area();
            draw_on(chart, &root, &svg)?;
        }
        report.written.push(svg);
        Ok(())
    }
}

/// Fills `root` white, draws `chart` on it and writes it out to `path`.
fn draw_on<C: Chart, DB: DrawingBackend>(
    chart: &C,
    root: &DrawingArea<DB, Shift>,
    path: &Path,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    chart
        .draw(root)
        .with_context(|| format!("{}: cannot draw", path.display()))?;
    root.present()
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// The top of a value axis: room above the highest value for the legend, and a
/// range plotters can draw even when every value is 0.
fn upper(max: f64) -> f64 {
    if max > 0.0 && max.is_finite() {
        max * 1.3
    } else {
        1.0
    }
}

fn caption_style() -> TextStyle<'static> {
    (FONT_FAMILY, 24).into_font().into()
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

fn line_legend(c: RGBColor, width: u32) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(width))
}

/// Radius of the markers of a line of few points.
const POINT_RADIUS: u32 = 4;

/// Lines of at most this many points mark each point: a short run or a container
/// sampled a few times gives lines too short to read, or (one point) no line.
const FEW_POINTS: usize = 12;

/// A line through `points`, with a filled marker on each point when there are few
/// of them (a line of one point has no length and would draw nothing else).
fn line<DB: DrawingBackend>(
    points: impl IntoIterator<Item = (f64, f64)>,
    style: ShapeStyle,
) -> LineSeries<DB, (f64, f64)> {
    let points: Vec<(f64, f64)> = points.into_iter().collect();
    if points.len() <= FEW_POINTS {
        LineSeries::new(points, style.filled()).point_size(POINT_RADIUS)
    } else {
        LineSeries::new(points, style)
    }
}

/// Where a bucket of a timeline is drawn: at its end, in seconds since the start.
fn bucket_end(s: &Series, p: &report::TimelinePoint) -> f64 {
    p.t_s as f64 * s.result.timeline_bucket_s()
}

/// The end of the time axis: the last time drawn plus a margin, so a marker on
/// the last point is not cut in half; 1 s when nothing is drawn.
fn time_axis_end(last: f64) -> f64 {
    if last > 0.0 && last.is_finite() {
        last * 1.03
    } else {
        1.0
    }
}

/// `1 s`, `20 ms`: a bucket width for a title.
fn bucket_label(width_s: f64) -> String {
    if width_s >= 1.0 {
        format!("{width_s} s")
    } else {
        format!("{} ms", (width_s * 1000.0 * 1000.0).round() / 1000.0)
    }
}

/// The bucket width shared by every series, or `None` when they differ.
fn common_bucket_s(series: &[&Series]) -> Option<f64> {
    let first = series.first()?.result.timeline_bucket_s();
    series
        .iter()
        .all(|s| s.result.timeline_bucket_s() == first)
        .then_some(first)
}

type TimeChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Where a chart is drawn: the whole image, or one panel of several.
#[derive(Clone, Copy)]
enum Frame {
    Whole,
    Panel,
}

/// Axes for a figure over the run: seconds since start against `y_desc`, the value
/// axis from 0 with room for the legend. A panel gets a smaller title and tighter
/// margins.
fn time_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    (title, frame): (&str, Frame),
    y_desc: &str,
    max_t: f64,
    max_y: f64,
) -> anyhow::Result<TimeChart<'a, DB>>
where
    DB::ErrorType: 'static,
{
    let (title_style, margin, x_labels) = match frame {
        Frame::Whole => (caption_style(), 15, 45),
        Frame::Panel => ((FONT_FAMILY, 20).into_font().into(), 10, 35),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, title_style)
        .margin(margin)
        .x_label_area_size(x_labels)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..time_axis_end(max_t), 0f64..upper(max_y))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// Every timeline bucket of every series, with the series it belongs to.
fn timeline_points<'s>(
    series: &'s [&'s Series<'s>],
) -> impl Iterator<Item = (&'s Series<'s>, &'s report::TimelinePoint)> + 's {
    series
        .iter()
        .flat_map(|s| s.result.timeline.iter().map(move |p| (*s, p)))
}

/// Successful messages per second over the run, bucket by bucket.
struct Throughput<'a>(&'a [&'a Series<'a>]);

impl Chart for Throughput<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        // Counts per bucket as rates, so buckets of any width read as msg/s.
        let per_s = |s: &Series, n: u64| n as f64 / s.result.timeline_bucket_s();
        let points = || timeline_points(self.0);
        let max_t = points().map(|(s, p)| bucket_end(s, p)).fold(0.0, f64::max);
        let max_y = points()
            .map(|(s, p)| per_s(s, p.ok.max(p.failed)))
            .chain(
                self.0
                    .iter()
                    .flat_map(|s| target_curve(s.result))
                    .map(|(_, r)| r),
            )
            .fold(0.0, f64::max);
        let max_t = self
            .0
            .iter()
            .flat_map(|s| target_curve(s.result))
            .map(|(t, _)| t)
            .fold(max_t, f64::max);
        let title = match common_bucket_s(self.0) {
            Some(w) if w != 1.0 => format!("Throughput over time ({} buckets)", bucket_label(w)),
            _ => "Throughput over time".to_string(),
        };
        let mut chart = time_chart(
            root,
            (&title, Frame::Whole),
            "successful msg/s",
            max_t,
            max_y,
        )?;
        // Stages are shaded in turn, under the lines, from the first series that
        // has them (several files of one shape share them).
        if let Some(s) = self.0.iter().find(|s| !s.result.stages.is_empty()) {
            let top = upper(max_y);
            chart.draw_series(
                s.result
                    .stages
                    .iter()
                    .filter(|st| st.end_s > st.start_s)
                    .map(|st| {
                        let shade = if st.index % 2 == 0 { 0.10 } else { 0.04 };
                        Rectangle::new(
                            [(st.start_s, 0.0), (st.end_s, top)],
                            BLACK.mix(shade).filled(),
                        )
                    }),
            )?;
        }
        for s in self.0 {
            let c = s.color;
            let timeline = &s.result.timeline;
            let target = target_curve(s.result);
            if !target.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(
                        target,
                        6,
                        4,
                        c.mix(0.7).stroke_width(1),
                    ))?
                    .label(format!("{} target msg/s", s.name))
                    .legend(line_legend(c, 1));
            }
            chart
                .draw_series(line(
                    timeline.iter().map(|p| (bucket_end(s, p), per_s(s, p.ok))),
                    c.stroke_width(2),
                ))?
                .label(s.name.clone())
                .legend(line_legend(c, 2));
            if timeline.iter().any(|p| p.failed > 0) {
                chart
                    .draw_series(line(
                        timeline
                            .iter()
                            .map(|p| (bucket_end(s, p), per_s(s, p.failed))),
                        c.mix(0.5).stroke_width(1),
                    ))?
                    .label(format!("{} failed/s", s.name))
                    .legend(line_legend(c, 1));
            }
        }
        legend(&mut chart)
    }
}

/// The offered rate a stages run aimed at, as points of a line (a step is two
/// points at one time); none for other runs.
fn target_curve(r: &RunResult) -> Vec<(f64, f64)> {
    r.stages
        .iter()
        .flat_map(|st| [(st.start_s, st.rate_from), (st.end_s, st.rate_to)])
        .collect()
}

/// p50 and p99 of each bucket over the run.
struct LatencyOverTime<'a>(&'a [&'a Series<'a>]);

impl Chart for LatencyOverTime<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let points = || timeline_points(self.0);
        let max_t = points().map(|(s, p)| bucket_end(s, p)).fold(0.0, f64::max);
        let max_y = points()
            .map(|(_, p)| p.p99_ms.max(p.p50_ms))
            .fold(0.0, f64::max);
        let title = match common_bucket_s(self.0) {
            Some(1.0) => "Latency over time (per second)".to_string(),
            Some(w) => format!("Latency over time (per {})", bucket_label(w)),
            None => "Latency over time (per bucket)".to_string(),
        };
        let mut chart = time_chart(root, (&title, Frame::Whole), "latency (ms)", max_t, max_y)?;
        for s in self.0 {
            let c = s.color;
            let timeline = &s.result.timeline;
            chart
                .draw_series(line(
                    timeline.iter().map(|p| (bucket_end(s, p), p.p99_ms)),
                    c.stroke_width(2),
                ))?
                .label(format!("{} p99", s.name))
                .legend(line_legend(c, 2));
            chart
                .draw_series(line(
                    timeline.iter().map(|p| (bucket_end(s, p), p.p50_ms)),
                    c.mix(0.6).stroke_width(1),
                ))?
                .label(format!("{} p50", s.name))
                .legend(line_legend(c, 1));
        }
        legend(&mut chart)
    }
}

/// The percentile spectrum: latency against percentile, the percentile on a log
/// scale of 1/(1−q) so the tail (99%, 99.9%, 99.99%) gets as much room as the body,
/// as HdrHistogram's plotter draws it.
struct Spectrum<'a>(&'a [Series<'a>]);

/// `(x = 1/(1−q), latency ms)` points of a series, with its label.
fn spectrum_points(s: &Series) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out = Vec::new();
    match &s.result.histograms {
        Some(h) => {
            let named = std::iter::once((s.name.clone(), Some(&h.total))).chain(
                h.corrected
                    .as_ref()
                    .map(|c| (format!("{} (corrected)", s.name), Some(c))),
            );
            for (label, text) in named {
                let Some(Ok(hist)) = text.map(|t| decode_histogram(t)) else {
                    continue;
                };
                if hist.is_empty() {
                    continue;
                }
                let mut points: Vec<(f64, f64)> = hist
                    .iter_quantiles(5)
                    .filter(|v| v.quantile_iterated_to() < 1.0)
                    .map(|v| {
                        (
                            1.0 / (1.0 - v.quantile_iterated_to()),
                            v.value_iterated_to() as f64 / 1000.0,
                        )
                    })
                    .collect();
                // End the line at the maximum, placed at the last sample's quantile.
                points.push((hist.len().max(2) as f64, hist.max() as f64 / 1000.0));
                out.push((label, points));
            }
        }
        None => {
            let l = &s.result.metrics.latency_ms;
            let points = [
                (0.0, l.min),
                (0.5, l.p50),
                (0.9, l.p90),
                (0.95, l.p95),
                (0.99, l.p99),
                (0.999, l.p99_9),
            ]
            .into_iter()
            .map(|(q, v)| (1.0 / (1.0 - q), v))
            .collect();
            out.push((format!("{} (summary points)", s.name), points));
        }
    }
    out
}

/// `90%`, `99.9%` for a spectrum x coordinate.
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{p:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

impl Chart for Spectrum<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        // (file color, 0 = measured / 1 = corrected, label, points)
        type Line = (RGBColor, usize, String, Vec<(f64, f64)>);
        let series: Vec<Line> = self
            .0
            .iter()
            .flat_map(|s| {
                spectrum_points(s)
                    .into_iter()
                    .enumerate()
                    .map(|(k, (label, pts))| (s.color, k, label, pts))
            })
            .collect();
        let max_x = series
            .iter()
            .flat_map(|(_, _, _, p)| p)
            .map(|p| p.0)
            .fold(1000.0, f64::max);
        let max_y = series
            .iter()
            .flat_map(|(_, _, _, p)| p)
            .map(|p| p.1)
            .fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(root)
            .caption("Latency by percentile", caption_style())
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((1f64..max_x * 1.2).log_scale(), 0f64..upper(max_y))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()?;
        for (c, k, label, points) in series {
            // The corrected spectrum is drawn thinner in the file's color.
            let (style, width) = if k == 0 {
                (c.stroke_width(2), 2)
            } else {
                (c.mix(0.6).stroke_width(1), 1)
            };
            chart
                .draw_series(line(points, style))?
                .label(label)
                .legend(line_legend(c, width));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    }
}

/// Per-server bars: successful msg/s (top) and p99 latency (bottom), one bar per
/// file in each server's group.
struct Servers<'a>(&'a [&'a Series<'a>]);

impl Chart for Servers<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let mut addresses: Vec<String> = Vec::new();
        for s in self.0 {
            for m in &s.result.per_server {
                if !addresses.contains(&m.address) {
                    addresses.push(m.address.clone());
                }
            }
        }
        let panels = root.split_evenly((2, 1));
        type Value = fn(&report::ServerMetrics, &RunResult) -> f64;
        let figures: [(&str, &str, Value); 2] = [
            ("Successful msg/s per server", "msg/s", |m, r| {
                // A generator that left the per-server rate out still has the count.
                if m.messages_per_second > 0.0 || r.metrics.duration_seconds <= 0.0 {
                    m.messages_per_second
                } else {
                    m.successful_messages as f64 / r.metrics.duration_seconds
                }
            }),
            ("p99 latency per server", "p99 (ms)", |m, _| {
                m.latency_ms.p99
            }),
        ];
        let n = addresses.len();
        let width = 0.8 / self.0.len() as f64;
        for (panel, (title, y_desc, value)) in panels.iter().zip(figures) {
            let max_y = self
                .0
                .iter()
                .flat_map(|s| s.result.per_server.iter().map(|m| value(m, s.result)))
                .fold(0.0, f64::max);
            let mut chart = ChartBuilder::on(panel)
                .caption(title, (FONT_FAMILY, 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..upper(max_y))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n + 1)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                        addresses[i as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .y_desc(y_desc)
                .draw()?;
            for (j, s) in self.0.iter().enumerate() {
                let c = s.color;
                let bars = s.result.per_server.iter().filter_map(|m| {
                    let i = addresses.iter().position(|a| *a == m.address)? as f64;
                    let x0 = i - 0.4 + j as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.95, value(m, s.result))],
                        c.filled(),
                    ))
                });
                chart
                    .draw_series(bars)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled())
                    });
            }
            legend(&mut chart)?;
        }
        Ok(())
    }
}

/// A capacity search's knee: the corrected p99 (top) and the success rate
/// (bottom) of each step against its offered rate, steps in rate order, with
/// the SLO's limit on each figure drawn dashed. Steps that broke the SLO are
/// hollow markers.
struct Knee<'a>(&'a [&'a Series<'a>]);

/// The steps of a series as `(offered rate, value, passed)`, in rate order.
fn knee_points(s: &Series, value: fn(&report::CapacityStep) -> f64) -> Vec<(f64, f64, bool)> {
    let mut points: Vec<(f64, f64, bool)> = s
        .result
        .capacity
        .iter()
        .flat_map(|c| &c.steps)
        .map(|st| (st.rate, value(st), st.passed))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// The limits the SLOs of `series` set on the figure named `names` (`p99`,
/// `corrected_p99`), one per distinct limit.
fn slo_limits(series: &[&Series], names: &[&str]) -> Vec<f64> {
    let mut limits: Vec<f64> = series
        .iter()
        .flat_map(|s| s.result.capacity.iter().flat_map(|c| &c.slo))
        .filter_map(|g| report::Gate::parse(g).ok())
        .filter(|g| names.contains(&g.figure.name))
        .map(|g| g.limit)
        .collect();
    limits.sort_by(f64::total_cmp);
    limits.dedup();
    limits
}

impl Chart for Knee<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let max_x = self
            .0
            .iter()
            .flat_map(|s| knee_points(s, |st| st.rate))
            .map(|p| p.0)
            .fold(0.0, f64::max);
        let panels = root.split_evenly((2, 1));
        type Value = fn(&report::CapacityStep) -> f64;
        let figures: [(&str, &str, Value, &[&str]); 2] = [
            (
                "Capacity search: p99 (corrected) against offered rate",
                "p99 corrected (ms)",
                |st| st.latency_corrected_ms.p99,
                &["p99", "corrected_p99"],
            ),
            (
                "Capacity search: success rate against offered rate",
                "success rate (%)",
                |st| st.success_rate,
                &["success_rate"],
            ),
        ];
        for (i, (panel, (title, y_desc, value, gate_names))) in
            panels.iter().zip(figures).enumerate()
        {
            let limits = slo_limits(self.0, gate_names);
            let values: Vec<f64> = self
                .0
                .iter()
                .flat_map(|s| knee_points(s, value))
                .map(|p| p.1)
                .chain(limits.iter().copied())
                .collect();
            // Latency from 0; the success rate near 100%, where its knee is.
            let y_range = if i == 0 {
                0.0..upper(values.iter().copied().fold(0.0, f64::max))
            } else {
                let low = values.iter().copied().fold(100.0, f64::min);
                let pad = ((100.0 - low) * 0.2).max(0.5);
                (low - pad).max(0.0)..100.0 + pad
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, (FONT_FAMILY, 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..time_axis_end(max_x), y_range)?;
            chart
                .configure_mesh()
                .x_desc("offered msg/s")
                .y_desc(y_desc)
                .draw()?;
            for limit in &limits {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0.0, *limit), (time_axis_end(max_x), *limit)],
                        6,
                        4,
                        BLACK.mix(0.6).stroke_width(1),
                    ))?
                    .label(format!("SLO {}", format_limit(*limit, i == 0)))
                    .legend(line_legend(BLACK, 1));
            }
            for s in self.0 {
                let c = s.color;
                let points = knee_points(s, value);
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(|p| (p.0, p.1)),
                        c.stroke_width(2),
                    ))?
                    .label(s.name.clone())
                    .legend(line_legend(c, 2));
                chart.draw_series(points.iter().map(|&(x, y, passed)| {
                    let style = if passed {
                        c.filled()
                    } else {
                        c.stroke_width(2)
                    };
                    Circle::new((x, y), POINT_RADIUS + 1, style)
                }))?;
            }
            legend(&mut chart)?;
        }
        Ok(())
    }
}

/// `250 ms`, `99.9%`: an SLO limit for a legend.
fn format_limit(limit: f64, millis: bool) -> String {
    if millis {
        format!("{limit} ms")
    } else {
        format!("{limit}%")
    }
}

/// Server CPU (top) and memory (bottom) over the run, one line per server and file.
struct Resources<'a>(&'a [&'a Series<'a>]);

impl Chart for Resources<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let several_files = self.0.len() > 1;
        let lines: Vec<(String, &[report::ResourceSample])> = self
            .0
            .iter()
            .flat_map(|s| {
                s.result
                    .resources
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(move |(server, v)| {
                        let label = if several_files {
                            format!("{} {server}", s.name)
                        } else {
                            server.clone()
                        };
                        (label, v.as_slice())
                    })
            })
            .collect();
        let max_t = lines
            .iter()
            .flat_map(|(_, v)| v.iter())
            .map(|p| p.t_s)
            .fold(0.0, f64::max);
        let panels = root.split_evenly((2, 1));
        type Value = fn(&report::ResourceSample) -> f64;
        let figures: [(&str, &str, Value); 2] = [
            ("Server CPU", "CPU %", |p| p.cpu_percent),
            ("Server memory", "memory (MiB)", |p| {
                p.memory_bytes as f64 / (1024.0 * 1024.0)
            }),
        ];
        for (panel, (title, y_desc, value)) in panels.iter().zip(figures) {
            let max_y = lines
                .iter()
                .flat_map(|(_, v)| v.iter())
                .map(value)
                .fold(0.0, f64::max);
            let mut chart = time_chart(panel, (title, Frame::Panel), y_desc, max_t, max_y)?;
            for (i, (label, samples)) in lines.iter().enumerate() {
                let c = color(i);
                chart
                    .draw_series(line(
                        samples.iter().map(|p| (p.t_s, value(p))),
                        c.stroke_width(2),
                    ))?
                    .label(label.clone())
                    .legend(line_legend(c, 2));
            }
            legend(&mut chart)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_read_as_percentiles() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
    }

    #[test]
    fn the_embedded_font_loads() {
        assert!(plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok());
    }
}
