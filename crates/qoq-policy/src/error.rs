//! The policy crate's errors.

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("sample {sample}: the prompt has {found} `{token}` placeholder tokens but its media give {expected}; rebuild the prompt from the preprocessed media")]
    PlaceholderMismatch { sample: String, token: String, found: usize, expected: usize },
    #[error("vision inputs disagree in patch size: {0} and {1} values per row")]
    RowWidth(usize, usize),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A checkpoint folder, config or weight file that cannot be used; names the file.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Model inputs whose shapes or ids disagree; says which.
    #[error("model input: {0}")]
    Input(String),
    /// A sharding gate's collective failed (the message names the rank).
    #[error("sharded parameters: {0}")]
    Gate(String),
}
