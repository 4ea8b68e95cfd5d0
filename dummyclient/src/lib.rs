//! The dummy client: the light, stateless client an inference process embeds. It
//! talks to the host's real client over its Unix socket and moves bytes through the
//! real client's segment, which it maps: a same-host put or get is one copy made in
//! the caller's own process, and bytes never cross a socket. Replicas on other hosts
//! are moved by the real client straight from or into this process's registered
//! buffers (memory from [`HostMemAllocator`], whose fds the real client maps).
//!
//! The API is blocking (it owns a small runtime) so it can back the Python module
//! directly; every batch call returns one result per key, and no call fails by
//! panicking or hanging: a real client that went away gives `RPC_FAIL` (-900) until
//! the background pinger has reconnected and re-registered every buffer.
//!
//! # Layout
//!
//! - this file: [`DummyClient`] and [`DummyError`], the connection (reconnecting
//!   pinger, call ring attachment) and `dispatch`, the one place a call chooses the
//!   ring or the socket.
//! - `buffers`: registering memory and resolving caller addresses.
//! - `writes`, `reads`: the data path (one `put_core`, one `get_core`).
//! - `metadata`: existence, size, removes, replica tasks, segments.
//! - `ranges`: ranged and session reads and writes (`batch_put_session_*`,
//!   `batch_get_session_*`, `get_into_ranges`).
//! - [`hostmem`]: [`HostMemAllocator`], shareable host memory.

mod buffers;
pub mod hostmem;
mod metadata;
mod ranges;
mod reads;
mod staging;
mod writes;

pub use ranges::{KeyRanges, ObjectRange};
pub use reads::{OpenRead, StagedRead, StartedRead};

pub use hostmem::HostMemAllocator;
pub use mooncake_proto::realclient::BufRef;
pub use mooncake_shm::RegionOptions;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use mooncake_ipc::IpcClient;
use mooncake_ipc::client::control_transport;
use mooncake_proto::realclient::{
    GetOutcome, PutCompletion, RealClientInfo, RealClientServiceClient, RingRequest, RingResponse,
};
use mooncake_proto::*;
use mooncake_shm::blocksums::{BlockSums, Counters};
use mooncake_shm::callring::RingShape;
use mooncake_shm::{CallRing, CallRingClient, Region, ShmError};

use staging::{Staging, StagingPool};
use tarpc::context;

/// How often the real client is pinged (and a lost one reconnected).
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of every call to the real client.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of a ping and of a reconnection attempt.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors of connecting.
#[derive(Debug, thiserror::Error)]
pub enum DummyError {
    /// The real client could not be reached or refused us.
    #[error("cannot connect to the real client: {0}")]
    Connect(#[from] mooncake_ipc::IpcError),
    /// The runtime could not start.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The real client did not answer.
    #[error("real client did not answer: {0}")]
    Rpc(#[from] tarpc::client::RpcError),
    /// The staging pool (`local_buffer_size`) could not be created.
    #[error("cannot create the {0}-byte staging pool: {1}")]
    Staging(u64, #[source] ShmError),
}

/// Why no call ring could be set up; the dummy then calls over the socket.
#[derive(Debug, thiserror::Error)]
enum RingError {
    #[error("creating the ring: {0}")]
    Create(#[from] mooncake_shm::ShmError),
    #[error("registering the ring: {0}")]
    Register(#[from] mooncake_ipc::IpcError),
    #[error("asking the real client: {0}")]
    Rpc(#[from] tarpc::client::RpcError),
    #[error("the real client refused the ring: {0}")]
    Refused(#[from] ErrorCode),
}

impl DummyError {
    /// The upstream error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            DummyError::Connect(e) => e.code(),
            _ => ErrorCode::RpcFail,
        }
    }
}

fn rpc_code(e: &tarpc::client::RpcError) -> ErrorCode {
    match e {
        tarpc::client::RpcError::DeadlineExceeded => ErrorCode::RpcTimeout,
        _ => ErrorCode::RpcFail,
    }
}

fn ctx(timeout: Duration) -> context::Context {
    let mut c = context::current();
    c.deadline = Instant::now() + timeout;
    c
}

/// One connection to the real client; replaced wholesale on reconnect.
struct Conn {
    ipc: IpcClient,
    rpc: RealClientServiceClient,
    /// The shared-memory fast path, when the real client accepted it.
    ring: Option<CallRingClient>,
    info: RealClientInfo,
    segment: Option<Region>,
    /// The real client's disk tier, mapped: objects there are read and checked
    /// here, as objects in the segment are copied here.
    disk: Option<(BlockSums, SegmentId)>,
    broken: AtomicBool,
    /// Where this connection registered the staging pool, when there is one.
    staging_base: Option<u64>,
    /// The pid of this process when the real client runs in it and serves
    /// this connection's calls from the process's own memory
    /// (`use_process_memory`).
    process_pid: Option<u32>,
    /// Read grants this side is done with, sent along with the next `get_into`
    /// (or by the pinger within a second).
    released: Mutex<Vec<(String, u64)>>,
}

impl Conn {
    /// Whether the real client reads and writes this process's own memory where
    /// it is (no staging). Not in a child forked after the connection: its
    /// addresses would name the parent's memory there.
    fn process_memory(&self) -> bool {
        self.process_pid
            .is_some_and(|pid| pid == std::process::id())
    }

    /// After a call that ended without its answer (a timeout, a broken
    /// connection) while the real client may still be copying to or from this
    /// process's memory: waits until it no longer is, so the caller does not
    /// free memory a copy still touches.
    fn settle<T>(&self, result: &MResult<T>) {
        if self.process_memory()
            && matches!(result, Err(ErrorCode::RpcTimeout | ErrorCode::RpcFail))
        {
            while !mooncake_shm::process::wait_spans_released(Duration::from_secs(10)) {
                tracing::warn!(
                    "a call ended early; waiting for the real client to release this process's memory"
                );
            }
        }
    }

    fn local_segment(&self) -> Option<(&Region, SegmentId)> {
        Some((self.segment.as_ref()?, self.info.segment.as_ref()?.id))
    }
}

/// Maps the real client's disk tier (its data file, block sums and counters);
/// `None` when it has none or a part cannot be mapped (its reads then go
/// through the real client, as before).
async fn map_disk(ipc: &IpcClient, info: &RealClientInfo) -> Option<(BlockSums, SegmentId)> {
    use mooncake_proto::realclient::{DISK_DATA_EXPORT, DISK_STATS_EXPORT, DISK_SUMS_EXPORT};
    let desc = info.disk.as_ref()?;
    let mapped = async {
        let data = ipc.open_file(DISK_DATA_EXPORT).await?;
        let sums = ipc.open_file(DISK_SUMS_EXPORT).await?;
        let stats = ipc
            .open(DISK_STATS_EXPORT, &RegionOptions::default())
            .await?;
        Ok::<_, mooncake_ipc::IpcError>((data, sums, stats))
    };
    let (data, sums, stats) = match mapped.await {
        Ok(m) => m,
        Err(e) => {
            tracing::info!("the disk tier is read through the real client ({e})");
            return None;
        }
    };
    if data.len() as u64 != desc.size {
        return None;
    }
    let sums = BlockSums::new(
        Arc::new(data),
        Arc::new(sums),
        Counters::from_region(stats)?,
    )?;
    Some((sums, desc.id))
}

/// A buffer registered with the real client.
#[derive(Clone)]
struct Registration {
    addr: u64,
    len: u64,
    /// The shared memory holding it; `None` for this process's own memory, which
    /// only an in-process real client accepts (bytes for other hosts are staged).
    region: Option<Arc<Region>>,
    offset: u64,
}

/// A range of registered memory.
#[derive(Clone)]
struct Span {
    /// `None`: process memory at `addr` (see [`Registration::region`]).
    region: Option<Arc<Region>>,
    offset: u64,
    len: u64,
    addr: u64,
}

impl Span {
    /// Copies this span into `dst` at `at`.
    fn copy_into(&self, dst: &Region, at: u64) -> MResult<()> {
        // Into a segment or staging space this process does not read back: large
        // copies write past the caches.
        match &self.region {
            Some(r) => r.copy_to_uncached(self.offset, dst, at, self.len),
            // SAFETY: the caller registered `[addr, addr + len)` as memory of this
            // process (upstream's contract for `register_buffer`), and `resolve`
            // checked the span lies inside that registration.
            None => unsafe { dst.write_from_raw_uncached(at, self.addr as *const u8, self.len) },
        }
        .map_err(|e| e.code())
    }

    /// Fills the first `n` bytes of this span from `src` at `at`.
    fn fill_from(&self, src: &Region, at: u64, n: u64) -> MResult<()> {
        match &self.region {
            Some(r) => src.copy_to(at, r, self.offset, n),
            // SAFETY: as in `copy_into`; `n` is at most the span's length.
            None => unsafe { src.read_into_raw(at, self.addr as *mut u8, n.min(self.len)) },
        }
        .map_err(|e| e.code())
    }

    /// The address the real client can reach, when it maps this memory.
    fn shared_ref(&self) -> Option<BufRef> {
        self.region.as_ref().map(|_| BufRef {
            addr: self.addr,
            len: self.len,
        })
    }

    /// The address the real client can reach: mapped memory, or any memory of
    /// this process when the real client runs in it (`process`, see
    /// [`Conn::process_memory`]).
    fn reachable_ref(&self, process: bool) -> Option<BufRef> {
        (self.region.is_some() || process).then_some(BufRef {
            addr: self.addr,
            len: self.len,
        })
    }
}

/// The real client's references to `spans`, when it can reach all of them.
fn reachable_refs(spans: &[Span], process: bool) -> Option<Vec<BufRef>> {
    spans.iter().map(|s| s.reachable_ref(process)).collect()
}

/// Where a value comes from.
#[derive(Clone)]
enum Src<'a> {
    Registered(Vec<Span>),
    Bytes(Vec<&'a [u8]>),
}

impl Src<'_> {
    /// The real client's references to the value, when it can read it where it
    /// is: registered shared memory, or with `process` any memory of this process.
    fn reachable_refs(&self, process: bool) -> Option<Vec<BufRef>> {
        match self {
            Src::Registered(spans) => reachable_refs(spans, process),
            Src::Bytes(parts) => process.then(|| {
                parts
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| BufRef {
                        addr: p.as_ptr() as u64,
                        len: p.len() as u64,
                    })
                    .collect()
            }),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Src::Registered(spans) => spans.iter().map(|s| s.len).sum(),
            Src::Bytes(parts) => parts.iter().map(|p| p.len() as u64).sum(),
        }
    }

    /// Copies the value into `dst` at `at` (a segment or staging space: large
    /// copies write past the caches).
    fn copy_into(&self, dst: &Region, at: u64) -> MResult<()> {
        let mut pos = at;
        match self {
            Src::Registered(spans) => {
                for s in spans {
                    s.copy_into(dst, pos)?;
                    pos += s.len;
                }
            }
            Src::Bytes(parts) => {
                for p in parts {
                    // SAFETY: `p` is a live slice of this process for the whole call.
                    unsafe { dst.write_from_raw_uncached(pos, p.as_ptr(), p.len() as u64) }
                        .map_err(|e| e.code())?;
                    pos += p.len() as u64;
                }
            }
        }
        Ok(())
    }
}

/// Where a value goes.
enum Dst<'a> {
    Registered(Vec<Span>),
    Slice(&'a mut [u8]),
    Owned(Vec<u8>),
}

impl Dst<'_> {
    /// The real client's references to the destination, when it can write it
    /// where it is (see [`Src::reachable_refs`]); never for a value of unknown size.
    fn reachable_refs(&mut self, process: bool) -> Option<Vec<BufRef>> {
        match self {
            Dst::Registered(spans) => reachable_refs(spans, process),
            Dst::Slice(s) if process && !s.is_empty() => Some(vec![BufRef {
                addr: s.as_mut_ptr() as u64,
                len: s.len() as u64,
            }]),
            Dst::Slice(_) | Dst::Owned(_) => None,
        }
    }

    fn capacity(&self) -> u64 {
        match self {
            Dst::Registered(spans) => spans.iter().map(|s| s.len).sum(),
            Dst::Slice(s) => s.len() as u64,
            Dst::Owned(_) => u64::MAX,
        }
    }

    /// Copies `size` bytes at `at` in `src` into this destination.
    fn fill_from(&mut self, src: &Region, at: u64, size: u64) -> MResult<()> {
        match self {
            Dst::Registered(spans) => {
                let mut pos = at;
                let mut left = size;
                for s in spans.iter() {
                    let n = s.len.min(left);
                    if n == 0 {
                        break;
                    }
                    s.fill_from(src, pos, n)?;
                    pos += n;
                    left -= n;
                }
                Ok(())
            }
            Dst::Slice(s) => src.read(at, &mut s[..size as usize]).map_err(|e| e.code()),
            Dst::Owned(v) => {
                v.resize(size as usize, 0);
                src.read(at, v).map_err(|e| e.code())
            }
        }
    }

    /// Reads the `size`-byte object at `at` of a checked file (the disk tier)
    /// into this destination, every block checked on the way:
    /// `CHECKSUM_MISMATCH` when one fails (the destination then holds part of
    /// the object, as after any failed read).
    fn fill_checked(&mut self, file: &BlockSums, at: u64, size: u64) -> MResult<()> {
        if self.capacity() < size {
            return Err(ErrorCode::InvalidParams);
        }
        // Where each piece of the destination starts in the object; the two
        // halves of a large read write disjoint pieces from two threads.
        let mut pieces: Vec<(u64, Piece<'_>)> = Vec::new();
        match self {
            Dst::Registered(spans) => {
                let mut start = 0;
                for s in spans.iter() {
                    pieces.push((start, Piece::Span(s)));
                    start += s.len;
                }
            }
            Dst::Slice(s) => pieces.push((0, Piece::Raw(s.as_mut_ptr() as usize, s.len() as u64))),
            Dst::Owned(v) => {
                v.resize(size as usize, 0);
                pieces.push((0, Piece::Raw(v.as_mut_ptr() as usize, size)));
            }
        }
        let read = file.read_checked(at, size, |mut pos, mut chunk| {
            while !chunk.is_empty() {
                let k = pieces.partition_point(|(s, _)| *s <= pos).saturating_sub(1);
                let Some((start, piece)) = pieces.get(k) else {
                    return false;
                };
                let within = pos - start;
                let n = piece.len().saturating_sub(within).min(chunk.len() as u64) as usize;
                if n == 0 || !piece.write(within, &chunk[..n]) {
                    return false;
                }
                chunk = &chunk[n..];
                pos += n as u64;
            }
            true
        });
        if read {
            Ok(())
        } else {
            Err(ErrorCode::ChecksumMismatch)
        }
    }
}

/// A piece of a destination [`Dst::fill_checked`] writes, from either of two
/// threads.
enum Piece<'a> {
    Span(&'a Span),
    /// Memory of this process: address and length.
    Raw(usize, u64),
}

// SAFETY: a `Piece` is written at disjoint positions by at most two threads at
// once (`read_checked` hands each position out once), into memory the `Dst` it
// came from borrows exclusively (`Slice`, `Owned`) or that the caller registered
// (`Span`), for the whole read.
unsafe impl Sync for Piece<'_> {}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Span(s) => s.len,
            Piece::Raw(_, len) => *len,
        }
    }

    /// Copies `bytes` to `within` bytes into the piece (the caller keeps it in
    /// bounds).
    fn write(&self, within: u64, bytes: &[u8]) -> bool {
        match self {
            Piece::Span(s) => match &s.region {
                Some(r) => r.write(s.offset + within, bytes).is_ok(),
                None => {
                    // SAFETY: the caller registered `[addr, addr + len)` as memory
                    // of this process; `within + bytes.len() <= len` (see `Dst::fill_checked`).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            (s.addr + within) as *mut u8,
                            bytes.len(),
                        )
                    };
                    true
                }
            },
            Piece::Raw(addr, _) => {
                // SAFETY: `[addr, addr + len)` is memory the destination borrows
                // exclusively for the read; `within + bytes.len() <= len`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        (addr + within as usize) as *mut u8,
                        bytes.len(),
                    )
                };
                true
            }
        }
    }
}

/// A write opened by `batch_put_session_start`: space reserved, bytes written
/// range by range, made readable by `batch_put_session_end`.
#[derive(Clone)]
struct PutSession {
    /// The IPC session it was opened on: a reconnect ends it.
    ipc_session: u64,
    replicas: Vec<ReplicaDesc>,
    size: u64,
    local_failed: bool,
}

/// A read opened by `batch_get_session_start`: the replicas and the lease that
/// later range reads use without asking the master again.
#[derive(Clone)]
struct GetSession {
    ipc_session: u64,
    list: ReplicaList,
    granted: Instant,
}

impl GetSession {
    /// Milliseconds left on the lease (0 once it ran out).
    fn lease_left_ms(&self) -> u64 {
        self.list
            .lease_ttl_ms
            .saturating_sub(self.granted.elapsed().as_millis() as u64)
    }
}

/// Whether `[addr, addr + len)` is covered by mappings of this process that are
/// both readable and writable (from `/proc/self/maps`).
/// The `(key, version)` grant a replica list stands for.
fn grant_of(key: &str, list: &ReplicaList) -> Option<(String, u64)> {
    list.replicas.first().map(|r| (key.to_string(), r.version))
}

fn process_memory_is_accessible(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let mut ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (lo, hi) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            if !perms.starts_with("rw") {
                return None;
            }
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect();
    ranges.sort_unstable();
    let mut covered = addr;
    for (lo, hi) in ranges {
        if hi <= covered {
            continue;
        }
        if lo > covered {
            return false;
        }
        covered = hi;
        if covered >= end {
            return true;
        }
    }
    false
}

/// Ring layout: requests up to 32 KiB, answers up to 64 KiB (a 256-key batch fits);
/// anything larger goes over the socket.
const RING_SHAPE: RingShape = RingShape {
    slots: 64,
    slot_size: 32 << 10,
    resp_slots: 64,
    resp_size: 64 << 10,
};

async fn attach_ring(
    ipc: &IpcClient,
    rpc: &RealClientServiceClient,
    spin: Duration,
) -> Result<CallRingClient, RingError> {
    let ring = CallRing::create(RING_SHAPE)?;
    let region = ring.region().clone();
    let base = ipc.register(&region, 0, region.len() as u64).await?;
    rpc.attach_ring(ctx(PING_TIMEOUT), base).await??;
    Ok(ring.client().with_spin(spin))
}

/// Released read grants held back at most, before they are sent on their own.
const MAX_HELD_RELEASES: usize = 4096;

/// One object of a zero-copy batch: its key and where its bytes are in
/// registered memory (several buffers are concatenated, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: String,
    /// The buffers (each an address and a length in registered memory).
    pub buffers: Vec<BufRef>,
}

impl Item {
    /// An object in one buffer of `len` bytes at `addr`.
    pub fn new(key: impl Into<String>, addr: u64, len: u64) -> Item {
        Item {
            key: key.into(),
            buffers: vec![BufRef { addr, len }],
        }
    }

    /// An object spread over `buffers`.
    pub fn scattered(key: impl Into<String>, buffers: Vec<BufRef>) -> Item {
        Item {
            key: key.into(),
            buffers,
        }
    }
}

/// How long a caller spins on the call ring for its answer before it sleeps, by
/// default: calls to a real client on this host that holds the bytes mostly end
/// well within it.
const RING_SPIN: Duration = Duration::from_micros(50);
/// The same for a real client in this process (`setup()`). With no segment of
/// its own, its calls wait on the network (the master, the holder), tens to
/// hundreds of microseconds each. A caller that slept through them lets its
/// core go idle, and on a virtual machine whose idle cores halt, every wake-up
/// along the call then costs tens of microseconds more: measured on the 2-core
/// VM, 4 KiB `put_from` / `get_into` took 184–226 / 153–164 µs sleeping after 50
/// µs, and 58–68 / 55–60 µs spinning up to 200–400 µs.
const IN_PROCESS_RING_SPIN: Duration = Duration::from_micros(300);

/// Calls that move at least this many bytes through the real client spin no
/// longer than [`RING_SPIN`].
const BULK_CALL_BYTES: u64 = 1 << 20;

/// The payload bytes `request` asks the real client to move from or into this
/// process's memory (0 for calls that move none).
fn bulk_bytes(request: &RingRequest) -> u64 {
    let lens = |bufs: &[BufRef]| bufs.iter().map(|b| b.len).sum::<u64>();
    match request {
        RingRequest::GetInto { dests, .. } => dests.iter().map(|d| lens(d)).sum(),
        RingRequest::PutComplete(items) => items.iter().map(|i| lens(&i.sources)).sum(),
        RingRequest::PutDirect { items, .. } => items.iter().map(|(_, b)| lens(b)).sum(),
        _ => 0,
    }
}

/// How a dummy connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    call_ring: bool,
    staging_budget: Option<u64>,
    ring_spin: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            call_ring: true,
            staging_budget: None,
            ring_spin: None,
        }
    }
}

impl ConnectOptions {
    /// Whether to use the shared-memory call ring for small calls (default yes;
    /// without it every call goes over the socket).
    pub fn with_call_ring(mut self, on: bool) -> Self {
        self.call_ring = on;
        self
    }

    /// Upstream's `local_buffer_size`: the bytes this client stages values
    /// through. With a budget, values moved by the copying calls (`put`,
    /// `batch_put`, `put_parts`, `get`, `batch_get`, ...) larger than it are
    /// refused with `INVALID_PARAMS` (all of them with 0), as upstream, and
    /// staging comes from one registered pool of this size instead of a
    /// temporary buffer per call. `None` (the default): no limit, temporary
    /// buffers.
    pub fn with_staging_budget(mut self, bytes: Option<u64>) -> Self {
        self.staging_budget = bytes;
        self
    }

    /// How long a call spins for its answer on the call ring before the caller
    /// sleeps. `None` (the default): 50 µs, or 300 µs with a real client in this
    /// process ([`DummyClient::connect_in_process`]), whose calls wait on the
    /// network. Longer spins keep the caller's core busy while it waits; shorter
    /// ones pay a wake-up when the answer comes after them. Calls that move 1 MiB
    /// or more through the real client spin no longer than 50 µs (they last long
    /// anyway, and a spinning caller would take a core from the copy).
    pub fn with_ring_spin(mut self, spin: Option<Duration>) -> Self {
        self.ring_spin = spin;
        self
    }
}

/// State shared with the pinger task.
struct Shared {
    socket: PathBuf,
    token: String,
    options: ConnectOptions,
    /// How long a call spins on the ring (from the options, or by mode).
    ring_spin: Duration,
    /// Ring calls in flight now, from all threads.
    ring_calls: AtomicUsize,
    /// Room [`DummyClient::start_read`] offers a value of unknown size: the
    /// largest it found too large lately.
    read_room: AtomicU64,
    /// The pool values are staged through (`local_buffer_size`), when one is set.
    staging: Option<Arc<StagingPool>>,
    /// The real client runs in this process ([`DummyClient::connect_in_process`]):
    /// each connection asks it to serve the process's own memory.
    process_memory: bool,
    conn: RwLock<Option<Arc<Conn>>>,
    registrations: Mutex<Vec<Registration>>,
    reconnects: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Shared {
    async fn connect(&self) -> Result<Arc<Conn>, DummyError> {
        let (ipc, control) = IpcClient::connect(&self.socket, &self.token).await?;
        let rpc =
            RealClientServiceClient::new(Default::default(), control_transport(control)).spawn();
        let info = rpc.info(ctx(PING_TIMEOUT)).await.map_err(DummyError::Rpc)?;
        // Populate the page tables now so no copy pays first-touch faults.
        let options = RegionOptions::default().with_prefault(true);
        let segment = match &info.segment {
            Some(_) => Some(ipc.open(&info.segment_export, &options).await?),
            None => None,
        };
        let disk = map_disk(&ipc, &info).await;
        let regs = self.registrations.lock().clone();
        for r in &regs {
            if let Some(region) = &r.region {
                ipc.register(region, r.offset, r.len).await?;
            }
        }
        let staging_base = match &self.staging {
            Some(pool) => Some(ipc.register(pool.region(), 0, pool.capacity()).await?),
            None => None,
        };
        let process_pid = if self.process_memory {
            match rpc.use_process_memory(ctx(PING_TIMEOUT)).await {
                Ok(Ok(())) => Some(std::process::id()),
                other => {
                    tracing::info!(
                        "the real client does not serve this process's memory ({other:?}); staging it"
                    );
                    None
                }
            }
        } else {
            None
        };
        let ring = if !self.options.call_ring {
            None
        } else {
            match attach_ring(&ipc, &rpc, self.ring_spin).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::info!("no shared-memory call ring ({e}); using the socket");
                    None
                }
            }
        };
        Ok(Arc::new(Conn {
            ipc,
            rpc,
            ring,
            info,
            segment,
            disk,
            broken: AtomicBool::new(false),
            staging_base,
            process_pid,
            released: Mutex::new(Vec::new()),
        }))
    }

    async fn keep_alive(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PING_INTERVAL) => {}
                _ = self.wake.notified() => {}
            }
            let current = self.conn.read().clone();
            let alive = match &current {
                Some(c) if !c.broken.load(Ordering::Relaxed) => {
                    let released = std::mem::take(&mut *c.released.lock());
                    if !released.is_empty() {
                        let _ = c.rpc.release_reads(ctx(PING_TIMEOUT), released).await;
                    }
                    // A master problem (an error code) still means the real client is there.
                    c.rpc.ping(ctx(PING_TIMEOUT)).await.is_ok()
                }
                _ => false,
            };
            if alive {
                continue;
            }
            if let Some(c) = &current {
                // Calls waiting on the ring give up now.
                c.broken.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "lost the real client at {}; reconnecting",
                    self.socket.display()
                );
                *self.conn.write() = None;
            }
            match tokio::time::timeout(PING_TIMEOUT, self.connect()).await {
                Ok(Ok(conn)) => {
                    tracing::info!(
                        "reconnected to the real client at {}",
                        self.socket.display()
                    );
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    *self.conn.write() = Some(conn);
                }
                Ok(Err(e)) => tracing::debug!("reconnect failed: {e}"),
                Err(_) => tracing::debug!("reconnect timed out"),
            }
        }
    }
}

/// A connection to the local real client.
pub struct DummyClient {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Writes opened by `batch_put_session_start`, by key.
    put_sessions: Mutex<HashMap<String, PutSession>>,
    /// Reads opened by `batch_get_session_start`, by key.
    get_sessions: Mutex<HashMap<String, GetSession>>,
    /// The real client runs in this process, so any memory of it can be registered.
    process_memory: bool,
}

impl Drop for DummyClient {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DummyClient {
    /// Connects to the real client listening on `socket`.
    pub fn connect(socket: &Path, token: &str) -> Result<DummyClient, DummyError> {
        Self::connect_with(socket, token, ConnectOptions::default(), false)
    }

    /// Connects to a real client running in this very process (the Python
    /// `setup()`): `register_buffer` then also accepts any memory of the process,
    /// not only [`HostMemAllocator`]'s; bytes of such memory bound for other hosts
    /// go through a temporary shared buffer. The real client may also run in
    /// another process (a `setup()` with no segment calling the host's real
    /// client): it refuses to serve this process's memory, so such memory is
    /// always staged through the shared buffer.
    ///
    /// # Safety
    ///
    /// The real client behind `socket` must be a real client of this project
    /// (in this process or, as above, another). Reads through the
    /// returned client write into any range registered with `register_buffer`
    /// (checked only to be mapped read-write), so the caller must register only
    /// memory nothing else in the process relies on while it is registered: memory
    /// it owns, that stays allocated until `unregister_buffer`, and that no Rust
    /// reference points into while a read may write it.
    pub unsafe fn connect_in_process(
        socket: &Path,
        token: &str,
        options: ConnectOptions,
    ) -> Result<DummyClient, DummyError> {
        Self::connect_with(socket, token, options, true)
    }

    /// [`connect`](Self::connect) with options.
    pub fn connect_with_options(
        socket: &Path,
        token: &str,
        options: ConnectOptions,
    ) -> Result<DummyClient, DummyError> {
        Self::connect_with(socket, token, options, false)
    }

    fn connect_with(
        socket: &Path,
        token: &str,
        options: ConnectOptions,
        process_memory: bool,
    ) -> Result<DummyClient, DummyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mooncake-dummy")
            .enable_all()
            .build()?;
        let staging = match options.staging_budget {
            Some(budget) if budget > 0 => Some(Arc::new(
                StagingPool::new(budget).map_err(|e| DummyError::Staging(budget, e))?,
            )),
            _ => None,
        };
        let ring_spin = options.ring_spin.unwrap_or(if process_memory {
            IN_PROCESS_RING_SPIN
        } else {
            RING_SPIN
        });
        let shared = Arc::new(Shared {
            socket: socket.to_path_buf(),
            token: token.to_string(),
            options,
            ring_spin,
            staging,
            process_memory,
            conn: RwLock::new(None),
            registrations: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            ring_calls: AtomicUsize::new(0),
            read_room: AtomicU64::new(0),
        });
        let conn = runtime.block_on(shared.connect())?;
        *shared.conn.write() = Some(conn);
        let stop = CancellationToken::new();
        runtime.spawn(shared.clone().keep_alive(stop.clone()));
        Ok(DummyClient {
            runtime,
            shared,
            stop,
            put_sessions: Mutex::new(HashMap::new()),
            get_sessions: Mutex::new(HashMap::new()),
            process_memory,
        })
    }

    /// The connection, or `RPC_FAIL` while the real client is away.
    fn conn(&self) -> MResult<Arc<Conn>> {
        self.shared.conn.read().clone().ok_or(ErrorCode::RpcFail)
    }

    /// Runs a call; a transport failure marks the connection for reconnection.
    fn call<T, F>(&self, conn: &Conn, f: F) -> MResult<T>
    where
        F: std::future::Future<Output = Result<T, tarpc::client::RpcError>>,
    {
        let result = self.runtime.block_on(f).map_err(|e| {
            if !matches!(e, tarpc::client::RpcError::DeadlineExceeded) {
                conn.broken.store(true, Ordering::Relaxed);
                self.shared.wake.notify_one();
            }
            rpc_code(&e)
        });
        conn.settle(&result);
        result
    }

    /// Sends `request` through the call ring. `None`: no ring, or the call must go
    /// over the socket (too large for the ring); `Some(Err)`: no answer.
    fn ring_call(&self, conn: &Conn, request: &RingRequest) -> Option<MResult<RingResponse>> {
        let ring = conn.ring.as_ref()?;
        // Encoded into this thread's buffer, kept from call to call: no allocation
        // (and no growth by doubling) per call.
        thread_local! {
            static REQUEST: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let mut buffer = REQUEST.take();
        buffer.clear();
        let bytes = postcard::to_extend(request, buffer).ok()?;
        let answer = self.ring_call_encoded(conn, ring, request, &bytes);
        REQUEST.set(bytes);
        answer
    }

    fn ring_call_encoded(
        &self,
        conn: &Conn,
        ring: &CallRingClient,
        request: &RingRequest,
        bytes: &[u8],
    ) -> Option<MResult<RingResponse>> {
        let alive = || !conn.broken.load(Ordering::Relaxed);
        // A call spins longer than the default 50 µs only while it is the only
        // one in flight: with several callers waiting at once, spinning ones take
        // the cores the real client needs to answer them (measured in-process:
        // half the throughput with 8 threads all spinning, -10 % with 4 and one
        // spinning). And a call that moves a lot of bytes through the real
        // client lasts long whatever happens: spinning through its start would
        // only take a core from the copy.
        let calls = &self.shared.ring_calls;
        calls.fetch_add(1, Ordering::AcqRel);
        let spin = if bulk_bytes(request) < BULK_CALL_BYTES {
            self.shared.ring_spin
        } else {
            self.shared.ring_spin.min(RING_SPIN)
        };
        let started = Instant::now();
        let keep_spinning = || started.elapsed() < RING_SPIN || calls.load(Ordering::Acquire) == 1;
        let answer = ring.call_spinning(bytes, CALL_TIMEOUT, &alive, spin, &keep_spinning);
        calls.fetch_sub(1, Ordering::AcqRel);
        match answer {
            Ok(answer) => match postcard::from_bytes::<RingResponse>(&answer) {
                Ok(RingResponse::TooLarge | RingResponse::Malformed) | Err(_) => None,
                Ok(r) => Some(Ok(r)),
            },
            Err(ShmError::TooLarge { .. }) => None,
            Err(ShmError::Timeout) => {
                conn.settle::<()>(&Err(ErrorCode::RpcTimeout));
                Some(Err(ErrorCode::RpcTimeout))
            }
            Err(_) => {
                conn.broken.store(true, Ordering::Relaxed);
                self.shared.wake.notify_one();
                conn.settle::<()>(&Err(ErrorCode::RpcFail));
                Some(Err(ErrorCode::RpcFail))
            }
        }
    }

    /// One call: through the call ring when it can carry it, else over the socket.
    /// This is the only place that chooses between them.
    fn dispatch(&self, conn: &Conn, request: RingRequest) -> MResult<RingResponse> {
        if let Some(answer) = self.ring_call(conn, &request) {
            return answer;
        }
        let rpc = &conn.rpc;
        let c = || ctx(CALL_TIMEOUT);
        Ok(match request {
            RingRequest::Ping => RingResponse::Unit(self.call(conn, rpc.ping(ctx(PING_TIMEOUT)))?),
            RingRequest::Exist(keys) => RingResponse::Bools(self.call(conn, rpc.exist(c(), keys))?),
            RingRequest::GetSize(key) => {
                RingResponse::Size(self.call(conn, rpc.get_size(c(), key))?)
            }
            RingRequest::GetInto {
                keys,
                dests,
                released,
                local_disk,
            } => RingResponse::Outcomes(
                self.call(conn, rpc.get_into(c(), keys, dests, released, local_disk))?,
            ),
            RingRequest::PutStart {
                keys,
                sizes,
                config,
                upsert,
                place,
            } => RingResponse::Started(
                self.call(conn, rpc.put_start(c(), keys, sizes, config, upsert, place))?,
            ),
            RingRequest::PutComplete(items) => {
                RingResponse::Units(self.call(conn, rpc.put_complete(c(), items))?)
            }
            RingRequest::PutDirect {
                items,
                config,
                upsert,
            } => RingResponse::Units(self.call(conn, rpc.put_direct(c(), items, config, upsert))?),
            RingRequest::Remove { keys, force } => {
                RingResponse::Units(self.call(conn, rpc.remove(c(), keys, force))?)
            }
            RingRequest::ReleaseReads(reads) => {
                self.call(conn, rpc.release_reads(c(), reads))?;
                RingResponse::Unit(Ok(()))
            }
        })
    }

    /// A batch call through [`dispatch`](Self::dispatch): one result per key, the
    /// answer taken out of the response by `answer`.
    fn dispatch_batch<T: Clone>(
        &self,
        conn: &Conn,
        n: usize,
        request: RingRequest,
        answer: impl FnOnce(RingResponse) -> Option<Vec<MResult<T>>>,
    ) -> Vec<MResult<T>> {
        let batch = self
            .dispatch(conn, request)
            .and_then(|r| answer(r).ok_or(ErrorCode::InternalError));
        per_key(n, batch)
    }

    /// The real client's segment name (upstream `get_hostname`); empty while
    /// disconnected.
    pub fn hostname(&self) -> String {
        self.conn()
            .map(|c| c.info.hostname.clone())
            .unwrap_or_default()
    }

    /// Whether a connection to the real client is up now (it may still break
    /// before the next call ends).
    pub fn is_connected(&self) -> bool {
        self.conn().is_ok_and(|c| !c.broken.load(Ordering::Relaxed))
    }

    /// The id of the real client's global segment; `None` without one or while
    /// disconnected.
    pub fn segment_id(&self) -> Option<SegmentId> {
        self.conn().ok()?.info.segment.as_ref().map(|s| s.id)
    }

    /// The IPC session id (changes on reconnect).
    pub fn session(&self) -> u64 {
        self.conn().map(|c| c.ipc.session()).unwrap_or(0)
    }

    /// Times this client reconnected after losing its real client.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Whether the real client is up and connected to its master.
    pub fn health(&self) -> MResult<()> {
        let conn = self.conn()?;
        match self.dispatch(&conn, RingRequest::Ping)? {
            RingResponse::Unit(r) => r,
            _ => Err(ErrorCode::InternalError),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_memory_check_accepts_heap_and_refuses_holes() {
        let v = vec![7u8; 1 << 20];
        let addr = v.as_ptr() as u64;
        assert!(super::process_memory_is_accessible(addr, v.len() as u64));
        assert!(!super::process_memory_is_accessible(0x1000, 4096));
        assert!(!super::process_memory_is_accessible(u64::MAX - 10, 100));
        static READ_ONLY: [u8; 4] = *b"text";
        assert!(!super::process_memory_is_accessible(
            READ_ONLY.as_ptr() as u64,
            4
        ));
    }
}
