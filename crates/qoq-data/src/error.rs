//! Typed errors of the data crate. Every variant names the file (and where it applies the
//! column, row or line) and says what to do, because users meet these on their own data.

use std::path::PathBuf;

/// Anything that stops the data pipeline. Bad single rows are not errors: they are
/// skipped and reported as [`crate::BadRow`]s until the configured fraction is exceeded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: not a readable parquet file ({detail}); re-create it, or move it out of the shard directory")]
    Parquet { path: PathBuf, detail: String },

    #[error("{path}: writing the shard failed ({detail}); nothing under this name is complete, check the disk and run again")]
    Write { path: PathBuf, detail: String },

    #[error("{path}: required column `{column}` is missing; see data/FORMAT.md for the schema")]
    MissingColumn { path: PathBuf, column: String },

    #[error("{path}: column `{column}` has type {found}, expected {expected}; cast it (e.g. pyarrow `table.cast(...)`) to the schema in data/FORMAT.md")]
    ColumnType { path: PathBuf, column: String, expected: String, found: String },

    #[error("{path}: no *.parquet shards found; write some with `make-synthetic` or `convert-data`")]
    NoShards { path: PathBuf },

    #[error("{path}: line {line}: {detail}")]
    Jsonl { path: PathBuf, line: usize, detail: String },

    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },

    #[error("too many bad rows: {bad} of {seen} ({percent:.1}%) exceed max_bad_fraction = {max_fraction}; first: {first}. Fix or drop those rows, or raise max_bad_fraction")]
    TooManyBadRows { bad: u64, seen: u64, percent: f64, max_fraction: f64, first: String },

    #[error("loader configuration: {0}")]
    Config(String),

    #[error("image preprocessing: {0}")]
    Preprocess(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
    pub(crate) fn parquet(path: impl Into<PathBuf>, detail: impl ToString) -> Self {
        DataError::Parquet { path: path.into(), detail: detail.to_string() }
    }
    pub(crate) fn write(path: impl Into<PathBuf>, detail: impl ToString) -> Self {
        DataError::Write { path: path.into(), detail: detail.to_string() }
    }
    pub(crate) fn invalid(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::Invalid { path: path.into(), detail: detail.into() }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
