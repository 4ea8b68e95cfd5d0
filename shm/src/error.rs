//! [`ShmError`]: every way a shared-memory operation can fail.

use mooncake_proto::ErrorCode;

/// Errors of the shm crate.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The fd is not backed by memory (tmpfs or hugetlbfs).
    #[error("fd is not a shared-memory file: {0}")]
    NotMemoryFile(String),
    /// A size or offset does not fit the underlying file or region.
    #[error("range {offset}+{len} outside of {limit} bytes")]
    OutOfBounds {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Size of what was addressed.
        limit: u64,
    },
    /// More memory than this host can hold (or has available to touch now).
    #[error("{size} bytes is more than this host can hold ({limit} bytes available)")]
    HostTooSmall {
        /// Bytes asked for.
        size: u64,
        /// What the host has.
        limit: u64,
    },
    /// A zero or otherwise unusable size.
    #[error("invalid size {0}")]
    InvalidSize(u64),
    /// The region (or ring) was closed.
    #[error("closed")]
    Closed,
    /// A ring's shared header is not what this version writes.
    #[error("corrupt or incompatible ring header: {0}")]
    BadHeader(&'static str),
    /// A ring or allocator is full.
    #[error("no space")]
    Full,
    /// A message is larger than the ring's slots.
    #[error("message of {len} bytes exceeds the slot size {max}")]
    TooLarge {
        /// Message length.
        len: usize,
        /// Slot capacity.
        max: usize,
    },
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
    /// A free of something that was not allocated.
    #[error("unknown allocation at offset {0}")]
    UnknownAllocation(u64),
}

impl ShmError {
    pub(crate) fn io(what: &'static str, source: impl Into<std::io::Error>) -> Self {
        ShmError::Io {
            what,
            source: source.into(),
        }
    }

    /// The upstream error code a caller should report.
    pub fn code(&self) -> ErrorCode {
        match self {
            ShmError::NotMemoryFile(_)
            | ShmError::OutOfBounds { .. }
            | ShmError::InvalidSize(_)
            | ShmError::TooLarge { .. }
            | ShmError::HostTooSmall { .. }
            | ShmError::UnknownAllocation(_)
            | ShmError::BadHeader(_) => ErrorCode::InvalidParams,
            ShmError::Full => ErrorCode::BufferOverflow,
            ShmError::Timeout => ErrorCode::RpcTimeout,
            ShmError::Closed => ErrorCode::RpcFail,
            ShmError::Io { .. } => ErrorCode::InternalError,
        }
    }
}
