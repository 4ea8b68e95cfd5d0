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
//! - [`hostmem`]: [`HostMemAllocator`], shareable host memory.
//! - `ranges`: ranged and session reads and writes (`batch_put_session_*`,
//!   `batch_get_session_*`, `get_into_ranges`).
//! - this file: [`DummyClient`] and [`DummyError`].

pub mod hostmem;
mod ranges;

pub use ranges::RangeResults;

pub use hostmem::HostMemAllocator;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use mooncake_ipc::IpcClient;
use mooncake_ipc::client::control_transport;
use mooncake_proto::realclient::{
    BufRef, GetOutcome, PutCompletion, RealClientInfo, RealClientServiceClient, RingRequest,
    RingResponse,
};
use mooncake_proto::*;
use mooncake_shm::callring::RingShape;
use mooncake_shm::{CallRing, CallRingClient, Region, RegionOptions, ShmError};
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
    Rpc(String),
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
    broken: AtomicBool,
    /// Read grants this side is done with, sent along with the next `get_into`
    /// (or by the pinger within a second).
    released: Mutex<Vec<(String, u64)>>,
}

impl Conn {
    fn local_segment(&self) -> Option<(&Region, SegmentId)> {
        Some((self.segment.as_ref()?, self.info.segment.as_ref()?.id))
    }
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
        match &self.region {
            Some(r) => r.copy_to(self.offset, dst, at, self.len),
            // SAFETY: the caller registered `[addr, addr + len)` as memory of this
            // process (upstream's contract for `register_buffer`), and `resolve`
            // checked the span lies inside that registration.
            None => unsafe { dst.write_from_raw(at, self.addr as *const u8, self.len) },
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
}

/// Where a value comes from.
enum Src<'a> {
    Registered(Vec<Span>),
    Bytes(Vec<&'a [u8]>),
}

impl Src<'_> {
    fn len(&self) -> u64 {
        match self {
            Src::Registered(spans) => spans.iter().map(|s| s.len).sum(),
            Src::Bytes(parts) => parts.iter().map(|p| p.len() as u64).sum(),
        }
    }

    /// Copies the value into `dst` at `at`.
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
                    dst.write(pos, p).map_err(|e| e.code())?;
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
}

/// Temporary registered memory for values in unregistered buffers that must cross
/// hosts; unregistered on drop.
struct Staging<'a> {
    conn: &'a Conn,
    runtime: &'a tokio::runtime::Runtime,
    region: Region,
    base: u64,
}

impl<'a> Staging<'a> {
    fn new(
        conn: &'a Conn,
        runtime: &'a tokio::runtime::Runtime,
        size: u64,
    ) -> MResult<Staging<'a>> {
        let region = Region::anonymous("mooncake-staging", size.max(1), &RegionOptions::default())
            .map_err(|e| e.code())?;
        let base = runtime
            .block_on(conn.ipc.register(&region, 0, size.max(1)))
            .map_err(|e| e.code())?;
        Ok(Staging {
            conn,
            runtime,
            region,
            base,
        })
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(self.conn.ipc.unregister(self.base));
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
) -> Result<CallRingClient, String> {
    let ring = CallRing::create(RING_SHAPE).map_err(|e| e.to_string())?;
    let region = ring.region().clone();
    let base = ipc
        .register(&region, 0, region.len() as u64)
        .await
        .map_err(|e| e.to_string())?;
    rpc.attach_ring(ctx(PING_TIMEOUT), base)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ring.client())
}

/// Released read grants held back at most, before they are sent on their own.
const MAX_HELD_RELEASES: usize = 4096;

/// State shared with the pinger task.
struct Shared {
    socket: PathBuf,
    token: String,
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
        let info = rpc
            .info(ctx(PING_TIMEOUT))
            .await
            .map_err(|e| DummyError::Rpc(e.to_string()))?;
        // Populate the page tables now so no copy pays first-touch faults.
        let options = RegionOptions::default().with_prefault(true);
        let segment = match &info.segment {
            Some(_) => Some(ipc.open(&info.segment_export, &options).await?),
            None => None,
        };
        let regs = self.registrations.lock().clone();
        for r in &regs {
            if let Some(region) = &r.region {
                ipc.register(region, r.offset, r.len).await?;
            }
        }
        let ring = if std::env::var_os("MC_DISABLE_CALL_RING").is_some() {
            None
        } else {
            match attach_ring(&ipc, &rpc).await {
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
            broken: AtomicBool::new(false),
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
        Self::connect_with(socket, token, false)
    }

    /// Connects to a real client running in this very process (the Python
    /// `setup()`): `register_buffer` then also accepts any memory of the process,
    /// not only [`HostMemAllocator`]'s; bytes of such memory bound for other hosts
    /// go through a temporary shared buffer.
    pub fn connect_in_process(socket: &Path, token: &str) -> Result<DummyClient, DummyError> {
        Self::connect_with(socket, token, true)
    }

    fn connect_with(
        socket: &Path,
        token: &str,
        process_memory: bool,
    ) -> Result<DummyClient, DummyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mooncake-dummy")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            socket: socket.to_path_buf(),
            token: token.to_string(),
            conn: RwLock::new(None),
            registrations: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
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
        self.runtime.block_on(f).map_err(|e| {
            if !matches!(e, tarpc::client::RpcError::DeadlineExceeded) {
                conn.broken.store(true, Ordering::Relaxed);
                self.shared.wake.notify_one();
            }
            rpc_code(&e)
        })
    }

    /// Sends `request` through the call ring. `None`: no ring, or the call must go
    /// over the socket (too large for the ring); `Some(Err)`: no answer.
    fn ring_call(&self, conn: &Conn, request: &RingRequest) -> Option<MResult<RingResponse>> {
        let ring = conn.ring.as_ref()?;
        let bytes = postcard::to_stdvec(request).ok()?;
        let alive = || !conn.broken.load(Ordering::Relaxed);
        match ring.call_while(&bytes, CALL_TIMEOUT, &alive) {
            Ok(answer) => match postcard::from_bytes::<RingResponse>(&answer) {
                Ok(RingResponse::TooLarge | RingResponse::Malformed) | Err(_) => None,
                Ok(r) => Some(Ok(r)),
            },
            Err(ShmError::TooLarge { .. }) => None,
            Err(ShmError::Timeout) => Some(Err(ErrorCode::RpcTimeout)),
            Err(_) => {
                conn.broken.store(true, Ordering::Relaxed);
                self.shared.wake.notify_one();
                Some(Err(ErrorCode::RpcFail))
            }
        }
    }

    /// The real client's segment name (upstream `get_hostname`); empty while
    /// disconnected.
    pub fn hostname(&self) -> String {
        self.conn()
            .map(|c| c.info.hostname.clone())
            .unwrap_or_default()
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
        match self.ring_call(&conn, &RingRequest::Ping) {
            Some(Ok(RingResponse::Unit(r))) => r,
            Some(Err(e)) => Err(e),
            _ => self.call(&conn, conn.rpc.ping(ctx(PING_TIMEOUT)))?,
        }
    }

    // ------------------------------------------------------------ buffers

    /// Registers `[addr, addr + len)`, which must lie inside memory from
    /// [`HostMemAllocator`]: the real client maps it and can move remote bytes
    /// straight into or out of it. Sub-ranges and repeated registrations work.
    pub fn register_buffer(&self, addr: u64, len: u64) -> MResult<()> {
        if len == 0 || addr == 0 || addr.checked_add(len).is_none() {
            return Err(ErrorCode::InvalidParams);
        }
        let Some((region, offset)) = hostmem::lookup(addr, len) else {
            if !self.process_memory {
                tracing::warn!(
                    "register_buffer({addr:#x}, {len}): not inside memory from HostMemAllocator"
                );
                return Err(ErrorCode::InvalidParams);
            }
            // The real client lives in this process: it needs no mapping. The range
            // must be ordinary readable and writable memory: a device (GPU) pointer
            // or a stray address would fault on the first copy.
            if !process_memory_is_accessible(addr, len) {
                tracing::warn!(
                    "register_buffer({addr:#x}, {len}): not readable and writable host memory of this process"
                );
                return Err(ErrorCode::InvalidParams);
            }
            let mut regs = self.shared.registrations.lock();
            if !regs.iter().any(|r| r.addr == addr && r.len == len) {
                regs.push(Registration {
                    addr,
                    len,
                    region: None,
                    offset: 0,
                });
            }
            return Ok(());
        };
        let conn = self.conn()?;
        if self
            .shared
            .registrations
            .lock()
            .iter()
            .any(|r| r.addr == addr && r.len == len)
        {
            return Ok(());
        }
        // No lock held across the call: the reconnecting pinger needs it.
        self.runtime
            .block_on(conn.ipc.register(&region, offset, len))
            .map_err(|e| e.code())?;
        self.shared.registrations.lock().push(Registration {
            addr,
            len,
            region: Some(region.clone()),
            offset,
        });
        // A reconnect in between re-registered the old list only.
        if let Ok(now) = self.conn()
            && !Arc::ptr_eq(&now, &conn)
        {
            let _ = self
                .runtime
                .block_on(now.ipc.register(&region, offset, len));
        }
        Ok(())
    }

    /// Forgets the registration(s) starting at `addr`.
    pub fn unregister_buffer(&self, addr: u64) -> MResult<()> {
        {
            let mut regs = self.shared.registrations.lock();
            let before = regs.len();
            let shared = regs.iter().any(|r| r.addr == addr && r.region.is_some());
            regs.retain(|r| r.addr != addr);
            if regs.len() == before {
                return Err(ErrorCode::InvalidParams);
            }
            if !shared {
                return Ok(());
            }
        }
        if let Ok(conn) = self.conn() {
            let _ = self.runtime.block_on(conn.ipc.unregister(addr));
        }
        Ok(())
    }

    /// Whether `[addr, addr + len)` lies inside one registered buffer.
    pub fn is_registered(&self, addr: u64, len: u64) -> bool {
        self.resolve(addr, len).is_ok()
    }

    /// The registered span holding `[addr, addr + len)`.
    fn resolve(&self, addr: u64, len: u64) -> MResult<Span> {
        let regs = self.shared.registrations.lock();
        let end = addr.checked_add(len).ok_or(ErrorCode::InvalidParams)?;
        regs.iter()
            .find(|r| r.addr <= addr && end <= r.addr + r.len)
            .map(|r| Span {
                region: r.region.clone(),
                offset: r.offset + (addr - r.addr),
                len,
                addr,
            })
            .ok_or(ErrorCode::InvalidParams)
    }

    fn resolve_all(&self, addrs: &[u64], sizes: &[u64]) -> MResult<Vec<Span>> {
        if addrs.len() != sizes.len() || addrs.is_empty() {
            return Err(ErrorCode::InvalidParams);
        }
        addrs
            .iter()
            .zip(sizes)
            .map(|(&a, &n)| self.resolve(a, n))
            .collect()
    }

    // ------------------------------------------------------------ writes

    /// Puts one object (a copy of `value`).
    pub fn put(&self, key: &str, value: &[u8], config: &ReplicateConfig) -> MResult<()> {
        self.batch_put(&[key.to_string()], &[value], config, false)
            .remove(0)
    }

    /// Puts the concatenation of `parts` as one object.
    pub fn put_parts(&self, key: &str, parts: &[&[u8]], config: &ReplicateConfig) -> MResult<()> {
        self.parts_core(key, parts, config, false)
    }

    /// Puts or replaces the concatenation of `parts` as one object.
    pub fn upsert_parts(
        &self,
        key: &str,
        parts: &[&[u8]],
        config: &ReplicateConfig,
    ) -> MResult<()> {
        self.parts_core(key, parts, config, true)
    }

    fn parts_core(
        &self,
        key: &str,
        parts: &[&[u8]],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> MResult<()> {
        let src = vec![Some(Src::Bytes(parts.to_vec()))];
        self.put_core(&[key.to_string()], src, config, upsert)
            .remove(0)
    }

    /// Puts objects from byte slices. `upsert` replaces existing values; a plain
    /// put of an existing key succeeds and keeps the old value.
    pub fn batch_put(
        &self,
        keys: &[String],
        values: &[&[u8]],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        if keys.len() != values.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let srcs = values.iter().map(|v| Some(Src::Bytes(vec![*v]))).collect();
        self.put_core(keys, srcs, config, upsert)
    }

    /// Zero-copy put of `size` bytes at `addr` (registered memory).
    pub fn put_from(
        &self,
        key: &str,
        addr: u64,
        size: u64,
        config: &ReplicateConfig,
    ) -> MResult<()> {
        self.batch_put_from(&[key.to_string()], &[addr], &[size], config, false)
            .remove(0)
    }

    /// Zero-copy puts from registered memory; per key 0 or an error
    /// (`INVALID_PARAMS` for memory that is not registered).
    pub fn batch_put_from(
        &self,
        keys: &[String],
        addrs: &[u64],
        sizes: &[u64],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        if keys.len() != addrs.len() || keys.len() != sizes.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let srcs = addrs
            .iter()
            .zip(sizes)
            .map(|(&a, &n)| self.resolve(a, n).ok().map(|s| Src::Registered(vec![s])))
            .collect();
        self.put_core(keys, srcs, config, upsert)
    }

    /// Puts where each object is the concatenation of its buffers (registered).
    pub fn batch_put_from_multi_buffers(
        &self,
        keys: &[String],
        addrs: &[Vec<u64>],
        sizes: &[Vec<u64>],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        if keys.len() != addrs.len() || keys.len() != sizes.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let srcs = addrs
            .iter()
            .zip(sizes)
            .map(|(a, n)| self.resolve_all(a, n).ok().map(Src::Registered))
            .collect();
        self.put_core(keys, srcs, config, upsert)
    }

    /// The write path: `put_start`, local replica copied here, remote replicas sent
    /// by the real client from registered memory, `put_complete`. `None` sources
    /// (unregistered memory) fail with `INVALID_PARAMS` without a call.
    fn put_core(
        &self,
        keys: &[String],
        srcs: Vec<Option<Src<'_>>>,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        let mut results: Vec<MResult<()>> = vec![Err(ErrorCode::InvalidParams); keys.len()];
        let valid: Vec<usize> = (0..keys.len())
            .filter(|&i| srcs[i].as_ref().is_some_and(|s| s.len() > 0))
            .collect();
        if valid.is_empty() {
            return results;
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let req_keys: Vec<String> = valid.iter().map(|&i| keys[i].clone()).collect();
        let sizes: Vec<u64> = valid
            .iter()
            .map(|&i| srcs[i].as_ref().map_or(0, |s| s.len()))
            .collect();
        let started = self.start_puts(&conn, req_keys, sizes, config, upsert);
        let local = conn.local_segment();
        let mut completions: Vec<(usize, PutCompletion)> = Vec::new();
        let mut to_stage: Vec<usize> = Vec::new();
        for (&i, r) in valid.iter().zip(started) {
            let replicas = match r {
                Err(ErrorCode::ObjectAlreadyExists) if !upsert => {
                    results[i] = Ok(());
                    continue;
                }
                Err(e) => {
                    results[i] = Err(e);
                    continue;
                }
                Ok(r) => r,
            };
            let src = srcs[i].as_ref().expect("valid");
            let mut local_failed = false;
            let mut remote = false;
            for r in &replicas {
                match local {
                    Some((segment, id)) if r.segment_id == id => {
                        if let Err(e) = src.copy_into(segment, r.offset) {
                            tracing::warn!(key = %keys[i], "local replica copy failed: {e}");
                            local_failed = true;
                        }
                    }
                    _ => remote = true,
                }
            }
            let shared: Option<Vec<BufRef>> = match src {
                Src::Registered(spans) => spans.iter().map(Span::shared_ref).collect(),
                Src::Bytes(_) => None,
            };
            let sources = match (remote, shared) {
                (false, _) => Vec::new(),
                (true, Some(refs)) => refs,
                (true, None) => {
                    to_stage.push(completions.len());
                    Vec::new()
                }
            };
            completions.push((
                i,
                PutCompletion {
                    key: keys[i].clone(),
                    local_failed,
                    sources,
                },
            ));
        }
        if completions.is_empty() {
            return results;
        }
        // Values in plain memory that must reach other hosts go through one
        // temporary registered buffer for the batch.
        let staging_size: u64 = to_stage
            .iter()
            .map(|&c| srcs[completions[c].0].as_ref().map_or(0, |s| s.len()))
            .sum();
        let staging = if staging_size > 0 {
            match Staging::new(&conn, &self.runtime, staging_size) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot stage values for remote replicas: {e}");
                    None
                }
            }
        } else {
            None
        };
        if let Some(st) = &staging {
            let mut at = 0;
            for &c in &to_stage {
                let src = srcs[completions[c].0].as_ref().expect("valid");
                let len = src.len();
                if src.copy_into(&st.region, at).is_ok() {
                    completions[c].1.sources = vec![BufRef {
                        addr: st.base + at,
                        len,
                    }];
                }
                at += len;
            }
        }
        let items: Vec<PutCompletion> = completions.iter().map(|(_, c)| c.clone()).collect();
        let ended = self.complete_puts(&conn, items);
        drop(staging);
        for ((i, _), r) in completions.iter().zip(ended) {
            results[*i] = r;
        }
        results
    }

    /// `put_start` through the call ring, or the socket when the ring cannot
    /// carry it; one result per key.
    fn start_puts(
        &self,
        conn: &Conn,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        let n = keys.len();
        let request = RingRequest::PutStart {
            keys,
            sizes,
            config: config.clone(),
            upsert,
        };
        match self.ring_call(conn, &request) {
            Some(Ok(RingResponse::Started(v))) => per_key(n, Ok(v)),
            Some(Err(e)) => vec![Err(e); n],
            _ => {
                let RingRequest::PutStart {
                    keys,
                    sizes,
                    config,
                    upsert,
                } = request
                else {
                    unreachable!("built above")
                };
                per_key(
                    n,
                    self.call(
                        conn,
                        conn.rpc
                            .put_start(ctx(CALL_TIMEOUT), keys, sizes, config, upsert),
                    ),
                )
            }
        }
    }

    /// `put_complete` through the call ring, or the socket; one result per item.
    fn complete_puts(&self, conn: &Conn, items: Vec<PutCompletion>) -> Vec<MResult<()>> {
        let n = items.len();
        let request = RingRequest::PutComplete(items);
        match self.ring_call(conn, &request) {
            Some(Ok(RingResponse::Units(v))) => per_key(n, Ok(v)),
            Some(Err(e)) => vec![Err(e); n],
            _ => {
                let RingRequest::PutComplete(items) = request else {
                    unreachable!("built above")
                };
                per_key(
                    n,
                    self.call(conn, conn.rpc.put_complete(ctx(CALL_TIMEOUT), items)),
                )
            }
        }
    }

    // ------------------------------------------------------------- reads

    /// Reads a whole object.
    pub fn get(&self, key: &str) -> MResult<Vec<u8>> {
        self.batch_get(&[key.to_string()]).remove(0)
    }

    /// Reads whole objects.
    pub fn batch_get(&self, keys: &[String]) -> Vec<MResult<Vec<u8>>> {
        let mut dsts: Vec<Option<Dst>> =
            keys.iter().map(|_| Some(Dst::Owned(Vec::new()))).collect();
        let results = self.get_core(keys, &mut dsts);
        results
            .into_iter()
            .zip(dsts)
            .map(|(r, d)| match (r, d) {
                (Ok(_), Some(Dst::Owned(v))) => Ok(v),
                (Err(e), _) => Err(e),
                _ => Err(ErrorCode::InternalError),
            })
            .collect()
    }

    /// Reads objects into byte slices; per key the object size, `INVALID_PARAMS`
    /// when the buffer is too small, `OBJECT_NOT_FOUND` when missing.
    pub fn batch_get_into_slices(
        &self,
        keys: &[String],
        buffers: &mut [&mut [u8]],
    ) -> Vec<MResult<u64>> {
        if keys.len() != buffers.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let mut dsts: Vec<Option<Dst>> = buffers
            .iter_mut()
            .map(|b| Some(Dst::Slice(&mut b[..])))
            .collect();
        self.get_core(keys, &mut dsts)
    }

    /// Reads one object into registered memory; the object size or an error.
    pub fn get_into(&self, key: &str, addr: u64, size: u64) -> MResult<u64> {
        self.batch_get_into(&[key.to_string()], &[addr], &[size])
            .remove(0)
    }

    /// Reads objects into registered memory (zero-copy for remote replicas); per
    /// key the object size, `INVALID_PARAMS` for a small or unregistered buffer,
    /// `OBJECT_NOT_FOUND` when missing.
    pub fn batch_get_into(
        &self,
        keys: &[String],
        addrs: &[u64],
        sizes: &[u64],
    ) -> Vec<MResult<u64>> {
        if keys.len() != addrs.len() || keys.len() != sizes.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let mut dsts: Vec<Option<Dst>> = addrs
            .iter()
            .zip(sizes)
            .map(|(&a, &n)| self.resolve(a, n).ok().map(|s| Dst::Registered(vec![s])))
            .collect();
        self.get_core(keys, &mut dsts)
    }

    /// Reads objects scattered over several registered buffers each; per key the
    /// total bytes or an error.
    pub fn batch_get_into_multi_buffers(
        &self,
        keys: &[String],
        addrs: &[Vec<u64>],
        sizes: &[Vec<u64>],
    ) -> Vec<MResult<u64>> {
        if keys.len() != addrs.len() || keys.len() != sizes.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let mut dsts: Vec<Option<Dst>> = addrs
            .iter()
            .zip(sizes)
            .map(|(a, n)| self.resolve_all(a, n).ok().map(Dst::Registered))
            .collect();
        self.get_core(keys, &mut dsts)
    }

    /// The read path: one `get_into` call; local replicas copied here under the
    /// lease, remote ones already moved by the real client into registered
    /// destinations (or, for plain memory, into a temporary registered buffer).
    fn get_core(&self, keys: &[String], dsts: &mut [Option<Dst<'_>>]) -> Vec<MResult<u64>> {
        let mut results: Vec<MResult<u64>> = vec![Err(ErrorCode::InvalidParams); keys.len()];
        let valid: Vec<usize> = (0..keys.len()).filter(|&i| dsts[i].is_some()).collect();
        if valid.is_empty() {
            return results;
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let req_keys: Vec<String> = valid.iter().map(|&i| keys[i].clone()).collect();
        let dests: Vec<Vec<BufRef>> = valid
            .iter()
            .map(|&i| match &dsts[i] {
                // Process memory: the real client cannot write it; staged instead.
                Some(Dst::Registered(spans)) => spans
                    .iter()
                    .map(Span::shared_ref)
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect();
        let asked = Instant::now();
        let outcomes = self.get_into_call(&conn, req_keys, dests);
        let mut remote: Vec<(usize, u64)> = Vec::new();
        // Grants handed to this side, released once read (the staged round asks
        // for its own).
        let mut done_with: Vec<(String, u64)> = Vec::new();
        for (&i, outcome) in valid.iter().zip(outcomes) {
            let dst = dsts[i].as_mut().expect("valid");
            results[i] = match outcome {
                Err(e) => Err(e),
                Ok(GetOutcome::Done(n)) => Ok(n),
                Ok(GetOutcome::Local(list)) => {
                    let r = Self::copy_local(&conn, &list, dst, asked);
                    done_with.extend(grant_of(&keys[i], &list));
                    r
                }
                Ok(GetOutcome::Remote(list)) => {
                    done_with.extend(grant_of(&keys[i], &list));
                    if dst.capacity() < list.size {
                        Err(ErrorCode::InvalidParams)
                    } else {
                        remote.push((i, list.size));
                        Ok(list.size)
                    }
                }
            };
        }
        if !remote.is_empty() {
            self.get_staged(&conn, keys, dsts, &remote, &mut results, &mut done_with);
        }
        self.release_reads(&conn, done_with);
        results
    }

    /// Notes that this side is done reading the values it was granted; the next
    /// `get_into` (or the pinger, within a second) tells the real client, so a
    /// read costs no extra call.
    fn release_reads(&self, conn: &Conn, reads: Vec<(String, u64)>) {
        if reads.is_empty() {
            return;
        }
        let mut pending = conn.released.lock();
        pending.extend(reads);
        if pending.len() < MAX_HELD_RELEASES {
            return;
        }
        let reads = std::mem::take(&mut *pending);
        drop(pending);
        let _ = self.call(conn, conn.rpc.release_reads(ctx(CALL_TIMEOUT), reads));
    }

    fn get_into_call(
        &self,
        conn: &Conn,
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
    ) -> Vec<MResult<GetOutcome>> {
        let n = keys.len();
        let released = std::mem::take(&mut *conn.released.lock());
        let request = RingRequest::GetInto {
            keys,
            dests,
            released,
        };
        match self.ring_call(conn, &request) {
            Some(Ok(RingResponse::Outcomes(v))) => per_key(n, Ok(v)),
            Some(Err(e)) => vec![Err(e); n],
            _ => {
                let RingRequest::GetInto {
                    keys,
                    dests,
                    released,
                } = request
                else {
                    unreachable!("built above")
                };
                per_key(
                    n,
                    self.call(
                        conn,
                        conn.rpc.get_into(ctx(CALL_TIMEOUT), keys, dests, released),
                    ),
                )
            }
        }
    }

    fn copy_local(
        conn: &Conn,
        list: &ReplicaList,
        dst: &mut Dst<'_>,
        asked: Instant,
    ) -> MResult<u64> {
        let (segment, id) = conn.local_segment().ok_or(ErrorCode::TransferFail)?;
        let replica = list
            .replicas
            .iter()
            .find(|r| r.segment_id == id)
            .ok_or(ErrorCode::TransferFail)?;
        if dst.capacity() < list.size {
            return Err(ErrorCode::InvalidParams);
        }
        dst.fill_from(segment, replica.offset, list.size)?;
        // The space may have been reused if the lease ran out during the copy.
        if asked.elapsed() > Duration::from_millis(list.lease_ttl_ms) {
            return Err(ErrorCode::LeaseExpired);
        }
        Ok(list.size)
    }

    /// Second round for remote objects bound for plain memory: the real client
    /// reads them into one temporary registered buffer, copied out here.
    fn get_staged(
        &self,
        conn: &Conn,
        keys: &[String],
        dsts: &mut [Option<Dst<'_>>],
        remote: &[(usize, u64)],
        results: &mut [MResult<u64>],
        done_with: &mut Vec<(String, u64)>,
    ) {
        let total: u64 = remote.iter().map(|(_, n)| n).sum();
        let staging = match Staging::new(conn, &self.runtime, total) {
            Ok(s) => s,
            Err(e) => {
                for &(i, _) in remote {
                    results[i] = Err(e);
                }
                return;
            }
        };
        let mut at = 0;
        let mut dests = Vec::new();
        let mut offsets = Vec::new();
        for &(_, n) in remote {
            dests.push(vec![BufRef {
                addr: staging.base + at,
                len: n,
            }]);
            offsets.push(at);
            at += n;
        }
        let req_keys: Vec<String> = remote.iter().map(|&(i, _)| keys[i].clone()).collect();
        let asked = Instant::now();
        let outcomes = self.get_into_call(conn, req_keys, dests);
        for ((&(i, _), outcome), off) in remote.iter().zip(outcomes).zip(offsets) {
            let dst = dsts[i].as_mut().expect("valid");
            results[i] = match outcome {
                Err(e) => Err(e),
                Ok(GetOutcome::Done(n)) => dst.fill_from(&staging.region, off, n).map(|_| n),
                Ok(GetOutcome::Local(list)) => {
                    let r = Self::copy_local(conn, &list, dst, asked);
                    done_with.extend(grant_of(&keys[i], &list));
                    r
                }
                Ok(GetOutcome::Remote(list)) => {
                    done_with.extend(grant_of(&keys[i], &list));
                    Err(ErrorCode::TransferFail)
                }
            };
        }
    }

    // ---------------------------------------------------------- metadata

    /// Whether each key exists.
    pub fn batch_is_exist(&self, keys: &[String]) -> Vec<MResult<bool>> {
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let request = RingRequest::Exist(keys.to_vec());
        match self.ring_call(&conn, &request) {
            Some(Ok(RingResponse::Bools(v))) => per_key(keys.len(), Ok(v)),
            Some(Err(e)) => vec![Err(e); keys.len()],
            _ => per_key(
                keys.len(),
                self.call(&conn, conn.rpc.exist(ctx(CALL_TIMEOUT), keys.to_vec())),
            ),
        }
    }

    /// Whether a key exists.
    pub fn is_exist(&self, key: &str) -> MResult<bool> {
        self.batch_is_exist(&[key.to_string()]).remove(0)
    }

    /// Size of an object.
    pub fn get_size(&self, key: &str) -> MResult<u64> {
        let conn = self.conn()?;
        match self.ring_call(&conn, &RingRequest::GetSize(key.to_string())) {
            Some(Ok(RingResponse::Size(r))) => r,
            Some(Err(e)) => Err(e),
            _ => self.call(&conn, conn.rpc.get_size(ctx(CALL_TIMEOUT), key.to_string()))?,
        }
    }

    /// Replica descriptors of objects (with a read lease).
    pub fn batch_get_replicas(&self, keys: &[String]) -> Vec<MResult<ReplicaList>> {
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        per_key(
            keys.len(),
            self.call(
                &conn,
                conn.rpc.get_replicas(ctx(CALL_TIMEOUT), keys.to_vec()),
            ),
        )
    }

    /// Removes objects.
    pub fn batch_remove(&self, keys: &[String], force: bool) -> Vec<MResult<()>> {
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let request = RingRequest::Remove {
            keys: keys.to_vec(),
            force,
        };
        match self.ring_call(&conn, &request) {
            Some(Ok(RingResponse::Units(v))) => per_key(keys.len(), Ok(v)),
            Some(Err(e)) => vec![Err(e); keys.len()],
            _ => per_key(
                keys.len(),
                self.call(
                    &conn,
                    conn.rpc.remove(ctx(CALL_TIMEOUT), keys.to_vec(), force),
                ),
            ),
        }
    }

    /// Removes one object.
    pub fn remove(&self, key: &str, force: bool) -> MResult<()> {
        self.batch_remove(&[key.to_string()], force).remove(0)
    }

    /// Drops the real client's replicas of `keys` (on its segment named
    /// `segment_name`, or all when empty) whose objects no reader holds; the keys
    /// cleared.
    pub fn batch_replica_clear(&self, keys: &[String], segment_name: &str) -> MResult<Vec<String>> {
        let conn = self.conn()?;
        self.call(
            &conn,
            conn.rpc
                .replica_clear(ctx(CALL_TIMEOUT), keys.to_vec(), segment_name.to_string()),
        )?
    }

    /// Queues a task copying `key` to the segments named `targets`; run by the
    /// real client holding the source replica. Follow it with [`query_task`].
    ///
    /// [`query_task`]: Self::query_task
    pub fn create_copy_task(&self, key: &str, targets: &[String]) -> MResult<TaskId> {
        let conn = self.conn()?;
        self.call(
            &conn,
            conn.rpc
                .create_copy_task(ctx(CALL_TIMEOUT), key.to_string(), targets.to_vec()),
        )?
    }

    /// Queues a task moving `key`'s replica on segment `source` to `target`.
    pub fn create_move_task(&self, key: &str, source: &str, target: &str) -> MResult<TaskId> {
        let conn = self.conn()?;
        self.call(
            &conn,
            conn.rpc.create_move_task(
                ctx(CALL_TIMEOUT),
                key.to_string(),
                source.to_string(),
                target.to_string(),
            ),
        )?
    }

    /// A replica task's state.
    pub fn query_task(&self, id: TaskId) -> MResult<TaskInfo> {
        let conn = self.conn()?;
        self.call(&conn, conn.rpc.query_task(ctx(CALL_TIMEOUT), id))?
    }

    /// Has the real client map `size` bytes at `offset` of the shared-memory
    /// file `path` and contribute them as a segment; the segment ids.
    pub fn mount_segment(
        &self,
        path: &str,
        size: u64,
        offset: u64,
        protocol: &str,
    ) -> MResult<Vec<SegmentId>> {
        let conn = self.conn()?;
        self.call(
            &conn,
            conn.rpc.mount_segment(
                ctx(CALL_TIMEOUT),
                path.to_string(),
                size,
                offset,
                protocol.to_string(),
            ),
        )?
    }

    /// Has the real client allocate `size` bytes and contribute them as a
    /// segment; the segment ids and the size allocated.
    pub fn allocate_and_mount_segment(
        &self,
        size: u64,
        protocol: &str,
    ) -> MResult<(Vec<SegmentId>, u64)> {
        let conn = self.conn()?;
        self.call(
            &conn,
            conn.rpc
                .allocate_and_mount_segment(ctx(CALL_TIMEOUT), size, protocol.to_string()),
        )?
    }

    /// Unmounts segments mounted by [`mount_segment`] (`allocated = false`) or
    /// [`allocate_and_mount_segment`] (`allocated = true`, memory freed).
    ///
    /// [`mount_segment`]: Self::mount_segment
    /// [`allocate_and_mount_segment`]: Self::allocate_and_mount_segment
    pub fn unmount_segment(
        &self,
        ids: &[SegmentId],
        grace: Duration,
        allocated: bool,
    ) -> MResult<()> {
        let conn = self.conn()?;
        self.call(
            &conn,
            conn.rpc.unmount_segment(
                ctx(CALL_TIMEOUT),
                ids.to_vec(),
                grace.as_millis() as u64,
                allocated,
            ),
        )?
    }

    /// Removes objects whose key matches.
    pub fn remove_by_regex(&self, pattern: &str, force: bool) -> MResult<u64> {
        let conn = self.conn()?;
        self.call(
            &conn,
            conn.rpc
                .remove_by_regex(ctx(CALL_TIMEOUT), pattern.to_string(), force),
        )?
    }

    /// Removes everything.
    pub fn remove_all(&self, force: bool) -> MResult<u64> {
        let conn = self.conn()?;
        self.call(&conn, conn.rpc.remove_all(ctx(CALL_TIMEOUT), force))?
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
