//! [`Error`]: why a real client could not start or reach its master. Store
//! operations answer with upstream's [`ErrorCode`]s instead; this type is for the
//! daemon's own life, and keeps the cause.

use mooncake_proto::ErrorCode;
use mooncake_proto::codec::ConnectError;
use mooncake_shm::ShmError;

/// Why a real client could not start or keep its master session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener or thread could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The segment could not be created or re-attached.
    #[error("{what}: {source}")]
    Segment {
        /// What was being done.
        what: String,
        /// The shared-memory error.
        #[source]
        source: ShmError,
    },
    /// The segment file is another running real client's, or cannot be locked.
    #[error(transparent)]
    SegmentLock(#[from] crate::segfiles::LockError),
    /// `--protocol rdma` without an RDMA build.
    #[error(
        "--protocol rdma: this build has no RDMA transport (build with the `rdma` feature); use tcp"
    )]
    RdmaNotBuilt,
    /// The master could not be reached.
    #[error("cannot reach the master at {address}: {source}")]
    MasterUnreachable {
        /// Its address.
        address: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The master answered with an error code.
    #[error("the master refused {what}: {code}")]
    MasterRefused {
        /// The call.
        what: &'static str,
        /// Its answer.
        code: ErrorCode,
    },
    /// Start-up did not complete (embedded master, runtime, readiness).
    #[error("{0}")]
    Startup(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub(crate) fn segment(what: impl Into<String>) -> impl FnOnce(ShmError) -> Error {
        let what = what.into();
        move |source| Error::Segment { what, source }
    }
}

/// Results of the real client's own life.
pub type Result<T> = std::result::Result<T, Error>;
