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
use mooncake_shm::{ProcessSpan, Region, ShmError};

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
    /// The memory.
    pub memory: LocalMemory,
    /// First byte in `memory`.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// The memory a [`LocalSpan`] lies in.
#[derive(Clone)]
pub enum LocalMemory {
    /// A shared mapping: a caller's registered buffer, a segment, a staging area.
    Mapped(Arc<Region>),
    /// Memory of this very process, from a caller running in it (the Python
    /// `setup()`): it cannot be mapped, and needs no mapping.
    Process(Arc<ProcessSpan>),
}

impl From<Arc<Region>> for LocalMemory {
    fn from(region: Arc<Region>) -> Self {
        LocalMemory::Mapped(region)
    }
}

impl LocalMemory {
    /// Checks that `[offset, offset + len)` lies inside.
    pub fn check(&self, offset: u64, len: u64) -> Result<(), ShmError> {
        match self {
            LocalMemory::Mapped(r) => r.check(offset, len),
            LocalMemory::Process(p) => p.check(offset, len),
        }
    }

    /// Writes `len` bytes at `offset` to `sink` (a socket).
    pub fn send_to(
        &self,
        offset: u64,
        len: u64,
        sink: &mut impl std::io::Write,
    ) -> Result<(), ShmError> {
        match self {
            LocalMemory::Mapped(r) => r.send_to(offset, len, sink),
            LocalMemory::Process(p) => p.send_to(offset, len, sink),
        }
    }

    /// Fills `len` bytes at `offset` from `source` (a socket).
    pub fn recv_from(
        &self,
        offset: u64,
        len: u64,
        source: &mut impl std::io::Read,
    ) -> Result<(), ShmError> {
        match self {
            LocalMemory::Mapped(r) => r.recv_from(offset, len, source),
            LocalMemory::Process(p) => p.recv_from(offset, len, source),
        }
    }

    /// Copies `bytes` in at `offset`.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), ShmError> {
        match self {
            LocalMemory::Mapped(r) => r.write(offset, bytes),
            LocalMemory::Process(p) => p.recv_from(offset, bytes.len() as u64, &mut &bytes[..]),
        }
    }

    /// Copies `len` bytes at `offset` into `dst` (a segment: past the CPU caches
    /// when large).
    pub fn copy_to_segment(
        &self,
        offset: u64,
        dst: &Region,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), ShmError> {
        match self {
            LocalMemory::Mapped(r) => r.copy_to_uncached(offset, dst, dst_offset, len),
            LocalMemory::Process(p) => p.copy_to_region(offset, dst, dst_offset, len, true),
        }
    }

    /// Fills `len` bytes at `offset` from `src` at `src_offset`.
    pub fn copy_from(
        &self,
        offset: u64,
        src: &Region,
        src_offset: u64,
        len: u64,
    ) -> Result<(), ShmError> {
        match self {
            LocalMemory::Mapped(r) => src.copy_to(src_offset, r, offset, len),
            LocalMemory::Process(p) => p.copy_from_region(offset, src, src_offset, len),
        }
    }
}

/// Caller memory mapped in this process, held for as long as this value lives
/// (its owner's session cannot finish closing meanwhile).
pub struct HeldSpan {
    span: LocalSpan,
    _hold: Option<Box<dyn std::any::Any + Send>>,
}

impl HeldSpan {
    /// A span nothing else needs to hold.
    pub fn new(span: LocalSpan) -> Self {
        HeldSpan { span, _hold: None }
    }

    /// A span kept valid by `hold` (an IPC translation).
    pub fn holding(span: LocalSpan, hold: impl std::any::Any + Send) -> Self {
        HeldSpan {
            span,
            _hold: Some(Box::new(hold)),
        }
    }

    /// The mapped bytes.
    pub fn span(&self) -> &LocalSpan {
        &self.span
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.span.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }
}

/// Where a caller's addresses are mapped in this process: an IPC session's
/// registrations at the service edge, plain regions in tests. The store core
/// moves bytes only through memory this resolves.
pub trait CallerMemory: Send + Sync {
    /// The `len` bytes the caller has at `addr`, or `INVALID_PARAMS`.
    fn translate(&self, addr: u64, len: u64) -> MResult<HeldSpan>;
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
    /// For a write: the version of the object being put, or the version the
    /// master issued for a replica copy (0: none), so that the owner refuses a
    /// write started with an earlier master.
    pub version: u64,
}

/// Objects whose bytes a writer put into a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// First byte in the segment.
    pub offset: u64,
    /// Object size.
    pub size: u64,
    /// The master's version of the write.
    pub version: u64,
    /// Object key.
    pub key: String,
}

/// A way to move bytes between hosts.
pub trait Transport: Send + Sync + 'static {
    /// Runs `jobs` (blocking; in parallel where it helps), returning one result per
    /// job. Nothing is still moving once this returns; nothing runs past
    /// `deadline` (reads past it give `LEASE_EXPIRED`, writes `TRANSFER_FAIL`).
    fn run(&self, jobs: &[TransferJob], deadline: Instant) -> Vec<MResult<()>>;

    /// Bytes copied through peers' segments mapped in this process instead of
    /// sent to them (peers on this host): `(read, written)`.
    fn same_host_bytes(&self) -> (u64, u64) {
        (0, 0)
    }

    /// The Unix socket of the real client at `endpoint` when it runs on this
    /// host, in this network namespace, with its socket reachable from here
    /// (blocking); `None` otherwise, or when this transport cannot tell.
    fn local_socket(&self, _endpoint: &str, _deadline: Instant) -> Option<std::path::PathBuf> {
        None
    }

    /// Tells the owner of `segment` (at `endpoint`) which objects a finished write
    /// put there, so that its inventory has them before the write is acknowledged
    /// (blocking). `write_version` is the version the writes carried (0: none):
    /// an owner refuses a note older than its version floor, as it refuses such
    /// writes. A transport whose peers learn about writes some other way keeps
    /// this default.
    fn note_landed(
        &self,
        _endpoint: &str,
        _segment: SegmentId,
        _objects: &[Landed],
        _write_version: u64,
        _deadline: Instant,
    ) -> MResult<()> {
        Ok(())
    }

    /// Runs one write `job`, then tells the owner of its segment that `objects`
    /// landed (blocking): `(write, note)` results; the note is recorded only
    /// after a write that succeeded. A transport that can sends the note right
    /// behind the bytes, for one round trip instead of two.
    fn write_and_note(
        &self,
        job: &TransferJob,
        objects: &[Landed],
        deadline: Instant,
    ) -> (MResult<()>, MResult<()>) {
        write_then_note(self, job, objects, deadline)
    }
}

/// [`Transport::write_and_note`] in two round trips: the write, then the note.
pub fn write_then_note<T: Transport + ?Sized>(
    transport: &T,
    job: &TransferJob,
    objects: &[Landed],
    deadline: Instant,
) -> (MResult<()>, MResult<()>) {
    let written = transport
        .run(std::slice::from_ref(job), deadline)
        .pop()
        .unwrap_or(Err(mooncake_proto::ErrorCode::InternalError));
    let noted = match written {
        Ok(()) => transport.note_landed(
            &job.endpoint,
            job.segment_id,
            objects,
            job.version,
            deadline,
        ),
        Err(_) => Err(mooncake_proto::ErrorCode::TransferFail),
    };
    (written, noted)
}
