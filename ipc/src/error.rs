//! [`IpcError`].

use mooncake_proto::ErrorCode;

/// Errors of the ipc crate.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// Socket-level failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol (bad magic, truncated or oversized message).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer did not answer `what` in time.
    #[error("no answer to the {0} in time")]
    Timeout(&'static str),
    /// The peer refused us, with its error code.
    #[error("refused ({code}): {message}")]
    Refused {
        /// Code given by the peer.
        code: ErrorCode,
        /// Reason given by the peer.
        message: String,
    },
    /// A shared-memory operation failed.
    #[error(transparent)]
    Shm(#[from] mooncake_shm::ShmError),
}

impl IpcError {
    /// The upstream error code to report.
    pub fn code(&self) -> ErrorCode {
        match self {
            IpcError::Refused { code, .. } => *code,
            IpcError::Shm(e) => e.code(),
            IpcError::Timeout(_) => ErrorCode::RpcTimeout,
            IpcError::Io(_) | IpcError::Protocol(_) => ErrorCode::RpcFail,
        }
    }
}
