//! `analyze`: turns Stampede result files into tables, comparisons, gates, charts,
//! merged results and HTML reports.
//!
//! Exit status: 0 success; 1 `compare` found a regression or `check` a missed
//! gate; 2 a usage error or a file that could not be read or written (including
//! a bad file met while listing a directory, after the good ones are shown).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use analyze::{Catalog, Entry, Format, Thresholds};

/// Exit status when a regression or a missed gate was found.
const EXIT_FAILED_GATE: u8 = 1;
/// Exit status for usage errors and unreadable files (clap uses 2 as well).
const EXIT_ERROR: u8 = 2;
/// Largest chart side in pixels: the PNG is drawn in memory (3 bytes a pixel).
const MAX_CHART_SIDE: u32 = 8000;

/// Writes to stdout. A closed pipe (`analyze list | head -1`) ends the output
/// quietly instead of panicking the way `print!` does.
fn write_stdout(text: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("analyze: cannot write to stdout: {e}");
        std::process::exit(i32::from(EXIT_ERROR));
    }
}

macro_rules! out {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*)) };
}

macro_rules! outln {
    ($($arg:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

#[derive(Parser)]
#[command(
    name = "analyze",
    version,
    about = "Summarize, compare, gate, chart and merge Stampede load-test results",
    after_help = "Exit status: 0 ok; 1 compare found a regression or check missed a gate; \
                  2 usage error or a file that could not be read (named on stderr)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DirArgs {
    /// The results directory.
    #[arg(long, env = "STAMPEDE_RESULTS_DIR", default_value = "results")]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Every result in the directory, newest first.
    List(DirArgs),
    /// The newest result in the directory, in full.
    Latest(DirArgs),
    /// One result in full: config, messages, performance, latency, phases, servers, replies.
    Show {
        /// A result file (Stampede or PrixFixe), or a `loadgen limits` document.
        file: PathBuf,
    },
    /// One row of headline figures per result in the directory, newest first.
    Summary(DirArgs),
    /// Headline figures of NEW against BASE; exit 1 when NEW regresses past the threshold.
    Compare(CompareArgs),
    /// Absolute gates on one result (k6-style thresholds); exit 1 on any miss.
    Check(CheckArgs),
    /// PNG and SVG charts; several files are overlaid for comparison.
    Chart(ChartArgs),
    /// One result from several generators' results of the same run.
    Merge(MergeArgs),
    /// One self-contained HTML page (inline CSS and SVG charts, no network fetch) of
    /// one result, or of several with a comparison against the first.
    Report(ReportArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// BASE and NEW result files (or use --base/--new for repeated runs).
    #[arg(num_args = 0..=2, value_names = ["BASE", "NEW"])]
    files: Vec<PathBuf>,
    /// Baseline runs (repeats of one configuration); medians are compared.
    #[arg(long, num_args = 1.., conflicts_with = "files", requires = "new")]
    base: Vec<PathBuf>,
    /// Candidate runs (repeats of one configuration); medians are compared.
    #[arg(long, num_args = 1.., conflicts_with = "files", requires = "base")]
    new: Vec<PathBuf>,
    /// Allowed change in the bad direction: `5%` for every figure (the default),
    /// `p99=10%` or `p99=2ms` for one figure, `timeouts=off` to exempt one. Repeatable.
    #[arg(long, value_name = "[FIGURE=]LIMIT")]
    threshold: Vec<String>,
    /// Output format: text (a terminal), markdown (a CI step summary), json, or
    /// junit (XML, one test case per figure, failed when it regressed).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
struct CheckArgs {
    /// The result file to check.
    file: PathBuf,
    /// A gate such as 'messages_per_second>=500', 'p99<=25ms', 'success_rate>=99.9%'.
    #[arg(long = "require", value_name = "GATE", required = true)]
    require: Vec<String>,
    /// Output format: text (a terminal), markdown (a CI step summary), json, or
    /// junit (XML, one test case per gate, failed when missed).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
struct ChartArgs {
    /// Result files; each becomes one series named by its file stem.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where the charts are written (created if missing).
    #[arg(long, default_value = "results/charts")]
    out: PathBuf,
    /// Chart width in pixels.
    #[arg(long, default_value_t = 1200)]
    width: u32,
    /// Chart height in pixels.
    #[arg(long, default_value_t = 700)]
    height: u32,
}

#[derive(Args)]
struct MergeArgs {
    /// Results of the generators of one run.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The merged result file.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
struct ReportArgs {
    /// Result files; with several, the first is the baseline of the comparison.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The HTML file to write (replaced atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Allowed change in the bad direction, as for `compare`. Repeatable.
    #[arg(long, value_name = "[FIGURE=]LIMIT")]
    threshold: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("analyze: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List(d) => list(&d.dir, |entries| analyze::list_table(entries).to_string()),
        Command::Summary(d) => list(&d.dir, |entries| {
            analyze::summary_table(entries).to_string()
        }),
        Command::Latest(d) => latest(&d.dir),
        Command::Show { file } => {
            if let Some(text) = analyze::show_limits(&file)? {
                out!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            let r = analyze::load(&file)?;
            out!("{}", analyze::show_table(&file, &r));
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare(args) => run_compare(args),
        Command::Check(args) => run_check(args),
        Command::Chart(args) => run_chart(args),
        Command::Merge(args) => run_merge(args),
        Command::Report(args) => run_report(args),
    }
}

/// `list` and `summary`: the good files are shown, each bad one gets a line on
/// stderr, and any bad one makes the exit status 2.
fn list(dir: &Path, render: impl Fn(&[Entry]) -> String) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::scan(dir)?;
    if catalog.entries.is_empty() {
        outln!("no results in {}", dir.display());
    } else {
        outln!("{}", render(&catalog.entries));
    }
    if !catalog.limits.is_empty() {
        let names: Vec<String> = catalog.limits.iter().map(|p| catalog_name(p)).collect();
        outln!("limits documents (analyze show FILE): {}", names.join(", "));
    }
    Ok(exit_for_bad_files(&catalog))
}

/// A file's name without its directory, as the tables show results.
fn catalog_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn exit_for_bad_files(catalog: &Catalog) -> ExitCode {
    if catalog.report_bad() {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

fn latest(dir: &Path) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::scan(dir)?;
    let Some(newest) = catalog.entries.first() else {
        catalog.report_bad();
        bail!("{}: no readable results", dir.display());
    };
    out!("{}", analyze::show_table(&newest.path, &newest.result));
    Ok(exit_for_bad_files(&catalog))
}

fn load_all(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, report::RunResult)>> {
    paths
        .iter()
        .map(|p| Ok((p.clone(), analyze::load(p)?)))
        .collect()
}

fn run_compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let (base, new) = match args.files.as_slice() {
        [base, new] => (vec![base.clone()], vec![new.clone()]),
        [] if !args.base.is_empty() => (args.base, args.new),
        _ => bail!("compare needs BASE and NEW files, or --base FILE... --new FILE..."),
    };
    let thresholds = Thresholds::parse(&args.threshold).map_err(anyhow::Error::msg)?;
    let base = load_all(&base)?;
    let new = load_all(&new)?;
    let comparison = analyze::compare(&base, &new, &thresholds);
    if args.format.warnings_on_stderr() {
        for w in &comparison.warnings {
            eprintln!("WARNING: {w}");
        }
    }
    out!("{}", analyze::render_comparison(&comparison, args.format));
    Ok(if comparison.regressions.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED_GATE)
    })
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let gates = analyze::parse_gates(&args.require).map_err(anyhow::Error::msg)?;
    let result = analyze::load(&args.file)?;
    let outcomes = analyze::evaluate_gates(&result, &gates);
    out!(
        "{}",
        analyze::render_check(&args.file, &outcomes, args.format)
    );
    Ok(if outcomes.iter().all(|o| o.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED_GATE)
    })
}

fn run_chart(args: ChartArgs) -> anyhow::Result<ExitCode> {
    if !(200..=MAX_CHART_SIDE).contains(&args.width)
        || !(150..=MAX_CHART_SIDE).contains(&args.height)
    {
        bail!("--width/--height: a chart is 200x150 to {MAX_CHART_SIDE}x{MAX_CHART_SIDE} pixels");
    }
    let inputs = load_all(&args.files)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the chart directory", args.out.display()))?;
    let report = analyze::draw_charts(&inputs, &args.out, (args.width, args.height))?;
    for path in &report.written {
        outln!("wrote {}", path.display());
    }
    for note in &report.skipped {
        eprintln!("skipped: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn run_merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let inputs = load_all(&args.files)?;
    let (merged, notes) = analyze::merge(&inputs)?;
    for n in notes {
        eprintln!("note: {n}");
    }
    merged.save(&args.output)?;
    outln!(
        "merged {} results into {}: {} messages, {:.2} msg/s, p99 {} ms",
        inputs.len(),
        args.output.display(),
        merged.metrics.total_messages,
        merged.metrics.messages_per_second,
        analyze::format_ms(merged.metrics.latency_ms.p99)
    );
    Ok(ExitCode::SUCCESS)
}

fn run_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let thresholds = Thresholds::parse(&args.threshold).map_err(anyhow::Error::msg)?;
    let runs = args
        .files
        .iter()
        .map(|p| analyze::ReportRun::load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let generated = report::format_timestamp(chrono::Utc::now());
    let page = analyze::render_html(&runs, &thresholds, &generated)?;
    analyze::write_atomic(&args.output, &page)?;
    outln!(
        "wrote {} ({} result{})",
        args.output.display(),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}
