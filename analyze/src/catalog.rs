//! The results directory: which files are results, and in which order.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use chrono::{DateTime, Utc};
use report::{ReportError, RunResult};

/// A result read from disk, with the time it is sorted by.
pub struct Entry {
    pub path: PathBuf,
    pub result: RunResult,
    /// `metrics.start_time`, or the file's modification time when that does not parse.
    pub when: DateTime<Utc>,
}

/// What a directory holds: the readable results, newest first, the `loadgen limits`
/// documents (`stampede.limits.v1`, by name), and the files that could not be read
/// (each error names its file).
///
/// A limits document is not a result, but it is not a bad file either:
/// `stress-test.sh test-limits` writes it into `results/` beside the runs, and
/// `list` must not call that directory broken.
pub struct Catalog {
    pub entries: Vec<Entry>,
    pub limits: Vec<PathBuf>,
    pub bad: Vec<ReportError>,
}

impl Catalog {
    /// Reads every `*.json` file in `dir` except dot-files (the temporary files of
    /// an atomic write in progress). Subdirectories are not entered.
    pub fn scan(dir: &Path) -> anyhow::Result<Catalog> {
        let listing = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read the results directory", dir.display()))?;
        let mut paths = Vec::new();
        for item in listing {
            let item =
                item.with_context(|| format!("{}: cannot read the directory", dir.display()))?;
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") || !path.is_file() {
                continue;
            }
            paths.push(path);
        }
        let mut entries = Vec::new();
        let mut limits = Vec::new();
        let mut bad = Vec::new();
        for path in paths {
            match report::load(&path) {
                Ok(result) => {
                    let when = result.start_time().unwrap_or_else(|| modified(&path));
                    entries.push(Entry { path, result, when });
                }
                Err(ReportError::UnknownSchema { schema, .. })
                    if schema == report::limits::LIMITS_SCHEMA_V1 =>
                {
                    limits.push(path)
                }
                Err(e) => bad.push(e),
            }
        }
        limits.sort();
        // Newest first; the file name breaks ties so the order is stable.
        entries.sort_by(|a, b| b.when.cmp(&a.when).then_with(|| b.path.cmp(&a.path)));
        bad.sort_by_key(|e| e.to_string());
        Ok(Catalog {
            entries,
            limits,
            bad,
        })
    }

    /// Prints one line per unreadable file on stderr; true when there was any.
    pub fn report_bad(&self) -> bool {
        for e in &self.bad {
            eprintln!("analyze: skipped {e}");
        }
        !self.bad.is_empty()
    }
}

fn modified(path: &Path) -> DateTime<Utc> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .into()
}

/// The name a result goes by in tables and chart legends: the file stem.
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads one result named on the command line.
pub fn load(path: &Path) -> anyhow::Result<RunResult> {
    Ok(report::load(path)?)
}
