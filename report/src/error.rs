use std::path::PathBuf;

/// Why a result file could not be read or written. Every variant names the file,
/// so a user reading one line knows which file and what is wrong with it.
///
/// The I/O error is part of the message and deliberately not exposed as a `source`:
/// `anyhow`'s `{:#}` prints the chain, and the reason would then appear twice.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: cannot read: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: cannot write: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not JSON: {detail}")]
    NotJson { path: PathBuf, detail: String },
    #[error("{path}: truncated: the JSON ends early ({detail})")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path}: unknown schema {schema:?} (this analyze reads {known:?} and PrixFixe files)")]
    UnknownSchema {
        path: PathBuf,
        schema: String,
        known: &'static str,
    },
    #[error("{path}: not a result file: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{path}: histogram {name:?}: {detail}")]
    Histogram {
        path: PathBuf,
        name: String,
        detail: String,
    },
    #[error("cannot encode histogram: {0}")]
    Encode(String),
}
