use thiserror::Error;

#[derive(Debug, Error)]
pub enum DistError {
    /// The torchrun-style environment is incomplete or malformed.
    #[error("distributed environment: {0}")]
    Environment(String),
    /// The rendezvous (TCPStore) or the process group could not be set up.
    #[error("rank {rank}: could not join the process group at {addr}: {message}")]
    Init { rank: usize, addr: String, message: String },
    /// A collective failed or timed out; `peers` says what the other ranks reported.
    #[error("rank {rank}: {op} failed: {message}{peers}")]
    Collective { rank: usize, op: &'static str, message: String, peers: String },
    /// Tensors of the wrong shape, kind or device for a collective.
    #[error("rank {rank}: {op}: {message}")]
    Usage { rank: usize, op: &'static str, message: String },
}
