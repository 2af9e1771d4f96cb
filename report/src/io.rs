//! Reading and writing result files.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use serde_json::error::Category;

use crate::{ReportError, RunResult, SCHEMA_V1, decode_histogram};

/// Reads one result file: a Stampede v1 result or a PrixFixe file (no `schema`).
/// Every failure names the file and the problem; nothing here panics on input.
pub fn load(path: &Path) -> Result<RunResult, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ReportError::Read {
        path: path.to_owned(),
        cause,
    })?;
    load_str(&text, path)
}

/// Parses result JSON; `path` only names the source in errors.
pub fn load_str(text: &str, path: &Path) -> Result<RunResult, ReportError> {
    let value: Value = serde_json::from_str(text).map_err(|e| json_error(e, path))?;
    let Some(object) = value.as_object() else {
        return Err(ReportError::Invalid {
            path: path.to_owned(),
            detail: "the top level is not a JSON object".into(),
        });
    };
    match object.get("schema") {
        None => {}
        Some(Value::String(s)) if s == SCHEMA_V1 => {}
        Some(other) => {
            return Err(ReportError::UnknownSchema {
                path: path.to_owned(),
                schema: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned),
                known: SCHEMA_V1,
            });
        }
    }
    let mut result: RunResult =
        serde_json::from_value(value).map_err(|e| ReportError::Invalid {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if result.is_legacy() {
        // PrixFixe did not write the success rate; derive it so every reader
        // sees the same figure for old and new files.
        result.metrics.success_rate = result.metrics.compute_success_rate();
    }
    check_histograms(&result, path)?;
    Ok(result)
}

fn json_error(e: serde_json::Error, path: &Path) -> ReportError {
    let detail = e.to_string();
    match e.classify() {
        Category::Eof => ReportError::Truncated {
            path: path.to_owned(),
            detail,
        },
        Category::Io | Category::Syntax => ReportError::NotJson {
            path: path.to_owned(),
            detail,
        },
        Category::Data => ReportError::Invalid {
            path: path.to_owned(),
            detail,
        },
    }
}

/// A result whose histograms cannot be decoded would fail later, in the middle of
/// a merge or a chart; refuse it at the door instead.
fn check_histograms(result: &RunResult, path: &Path) -> Result<(), ReportError> {
    let Some(h) = &result.histograms else {
        return Ok(());
    };
    let named = std::iter::once(("total".to_string(), &h.total))
        .chain(h.corrected.iter().map(|c| ("corrected".to_string(), c)))
        .chain(h.phases.iter().map(|(k, v)| (format!("phases.{k}"), v)))
        .chain(
            h.per_server
                .iter()
                .map(|(k, v)| (format!("per_server.{k}"), v)),
        );
    for (name, text) in named {
        decode_histogram(text).map_err(|detail| ReportError::Histogram {
            path: path.to_owned(),
            name,
            detail,
        })?;
    }
    Ok(())
}

/// Writes any document (a result, a limits document) as pretty JSON, atomically.
pub(crate) fn save_atomic<T: serde::Serialize>(result: &T, path: &Path) -> Result<(), ReportError> {
    let write_err = |cause| ReportError::Write {
        path: path.to_owned(),
        cause,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".stampede-result-").suffix(".tmp");
    // tempfile creates 0600 files; a result is an ordinary document, so ask for
    // 0666 and let the umask narrow it (0644 under the usual 022), as any file the
    // user writes.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(write_err)?;
    // Buffered: serde_json writes token by token, ~2,000 write(2) calls per result
    // file unbuffered.
    let mut out = std::io::BufWriter::new(&mut tmp);
    serde_json::to_writer_pretty(&mut out, result)
        .map_err(|e| write_err(std::io::Error::other(e)))?;
    out.write_all(b"\n").map_err(write_err)?;
    out.flush().map_err(write_err)?;
    drop(out);
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::RunResult;

    /// The process umask, read from /proc: umask(2) cannot read it without setting it,
    /// which would race with the other tests' threads.
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .expect("a Umask line in /proc/self/status");
        u32::from_str_radix(line.trim(), 8).expect("an octal umask")
    }

    #[test]
    fn saved_result_is_readable_by_others_as_the_umask_allows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        RunResult::default().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // 0644 under the usual umask 022: analyze in a container, a web server or
        // a colleague can read the result, as with any file the user writes.
        assert_eq!(mode, 0o666 & !umask(), "mode {mode:o}, umask {:o}", umask());
    }
}
