//! The trainer crate's errors.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration that cannot run; names the file and the key.
    #[error("configuration: {0}")]
    Config(String),
    /// A sample that cannot be turned into a prompt; names it.
    #[error("sample {id}: {message}")]
    Sample { id: String, message: String },
    /// A checkpoint folder that cannot be written or read; names the file.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Policy(#[from] qoq_policy::PolicyError),
    #[error(transparent)]
    Data(#[from] qoq_data::DataError),
    /// A collective failed: names the collective and the failed or silent rank.
    #[error(transparent)]
    Dist(#[from] qoq_dist::DistError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl TrainError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.display().to_string(), source }
    }
}
