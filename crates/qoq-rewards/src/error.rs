use thiserror::Error;

/// Errors of configuration and ground truth. Responses never produce errors: a response
/// that cannot be read simply scores 0 where the spec says so.
#[derive(Debug, Error)]
pub enum RewardError {
    /// A weight string or reward table that cannot be used; the message names the key.
    #[error("reward configuration: {0}")]
    Config(String),
    /// A mask that cannot be decoded or has an unusable size.
    #[error("mask: {0}")]
    Mask(String),
}
