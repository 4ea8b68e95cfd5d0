//! The transfer engine: moves bytes between memory mapped in this process (a
//! dummy's registered buffer, or this client's own segment) and other real clients'
//! segments.
//!
//! [`Transport`] is what the store operations use; [`tcp`] is the TCP
//! implementation (an RDMA one would implement the same trait behind the `rdma`
//! feature). Every call is bounded by a deadline — for reads, the read lease: bytes
//! that arrive after it could belong to a newer object and are reported as
//! `LEASE_EXPIRED`.

pub mod tcp;

use std::sync::Arc;
use std::time::Instant;

use mooncake_proto::{MResult, SegmentId};
use mooncake_shm::Region;

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Remote segment → local memory.
    Read,
    /// Local memory → remote segment.
    Write,
}

/// Bytes mapped in this process.
#[derive(Clone)]
pub struct LocalSpan {
    /// The mapping.
    pub region: Arc<Region>,
    /// First byte in `region`.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// One contiguous transfer between local memory and a remote segment.
#[derive(Clone)]
pub struct TransferJob {
    /// Read or write.
    pub direction: Direction,
    /// The peer's transfer endpoint (`ip:port`).
    pub endpoint: String,
    /// The peer's segment.
    pub segment_id: SegmentId,
    /// First byte in the peer's segment.
    pub remote_offset: u64,
    /// The local side.
    pub local: LocalSpan,
}

/// A way to move bytes between hosts.
pub trait Transport: Send + Sync + 'static {
    /// Runs `jobs` (blocking; in parallel where it helps), returning one result per
    /// job. Nothing is still moving once this returns; nothing runs past
    /// `deadline` (reads past it give `LEASE_EXPIRED`, writes `TRANSFER_FAIL`).
    fn run(&self, jobs: &[TransferJob], deadline: Instant) -> Vec<MResult<()>>;
}
