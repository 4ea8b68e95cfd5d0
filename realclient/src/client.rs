//! [`RealClient`]: the segment, the master session and the store operations.
//!
//! The session: `remount_segment` with the persisted inventory at start (so objects
//! in a re-attached segment come back), a ping every second (reconnecting, and
//! remounting with the inventory when the master answers `NEED_REMOUNT`), and an
//! inventory sync every 50 ms that applies the master's changes and persists them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use mooncake_proto::codec::connect_master;
use mooncake_proto::*;
use mooncake_shm::{Region, RegionOptions};

use crate::config::RealClientConfig;
use crate::inventory::{self, Inventory, PersistedInventory};
use crate::master_handle::MasterHandle;
use crate::metrics::ClientMetrics;
use crate::transfer::tcp::{TcpTransport, TransferServer};
use crate::transfer::{Direction, LocalSpan, TransferJob, Transport};
use mooncake_ipc::{Session, Translation};
use mooncake_proto::realclient::{BufRef, GetOutcome, PutCompletion, RangeTransfer};

/// Inventory entries per `remount_segment` chunk.
const REMOUNT_CHUNK: usize = 100_000;
/// Writes started but never ended are forgotten after this.
const PENDING_WRITE_TTL: Duration = Duration::from_secs(600);
/// How long an upsert waits for another write of the same key to end before it
/// reports `OBJECT_ALREADY_EXISTS`.
const UPSERT_WAIT: Duration = Duration::from_secs(5);

/// Ranges of one object: (offset in the object, the dummy's memory).
type Ranges = Vec<(u64, Translation)>;

/// One object of a `transfer_ranges` call: its index in the call, its remote
/// replicas, its ranges and its deadline.
type RangeWork = (usize, Vec<ReplicaDesc>, Ranges, Instant);

/// A write started for a dummy and not yet ended.
struct PendingWrite {
    started: Instant,
    /// The IPC session that started it (0: TCP or in-process): its writes are
    /// revoked when the session ends without finishing them.
    owner: u64,
    /// The master's version of the write, telling it from a later write of the key.
    version: u64,
    replicas: Vec<ReplicaDesc>,
    /// Set once ranges were written to the remote replicas with
    /// `transfer_ranges`: the segments whose range writes failed.
    ranged_failures: Option<Vec<SegmentId>>,
}

/// A segment mounted after start (`mount_segment` / `allocate_and_mount_segment`).
struct ExtraSegment {
    region: Arc<Region>,
    desc: SegmentDesc,
    /// Memory this client allocated (freed by `unmount_and_free_segment`), as
    /// opposed to a mapped file (`unmount_segment`).
    allocated: bool,
}

/// The real client.
pub struct RealClient {
    config: RealClientConfig,
    client_id: ClientId,
    segment: Option<(Arc<Region>, SegmentDesc)>,
    master: RwLock<Option<MasterHandle>>,
    /// The embedded master, when this process runs one.
    local_master: Option<mooncake_master::rpc::MasterRpc>,
    inventory: Mutex<Inventory>,
    pending: Mutex<HashMap<String, PendingWrite>>,
    healthy: AtomicBool,
    transport: Arc<dyn Transport>,
    transfer_server: Option<Arc<TransferServer>>,
    /// Operation counters and latencies (served on `--http_port`).
    pub metrics: ClientMetrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Set while replica tasks are being fetched and run.
    running_replica_tasks: AtomicBool,
    /// Segments mounted after start.
    extra_segments: Mutex<Vec<ExtraSegment>>,
}

impl RealClient {
    /// Creates or re-attaches the segment, connects to the master and starts the
    /// heartbeat and inventory tasks.
    pub async fn start(
        config: RealClientConfig,
        shutdown: CancellationToken,
        local_master: Option<Arc<mooncake_master::MasterService>>,
    ) -> anyhow::Result<Arc<RealClient>> {
        if config.protocol == Protocol::Rdma {
            anyhow::bail!(
                "--protocol rdma: this build has no RDMA transport (build with the `rdma` feature); use tcp"
            );
        }
        let persisted = if config.ephemeral_segment {
            None
        } else {
            inventory::load(&config.inventory_path())
        };
        let mut client_id = Uuid::new_v4();
        let mut entries = Vec::new();
        let segment = if config.global_segment_size == 0 {
            None
        } else {
            // Prefault: first-touch faults would otherwise land on the put path.
            let options = RegionOptions::from_env().with_prefault(true);
            let reuse = persisted.as_ref().filter(|p| {
                p.segment.size == config.global_segment_size
                    && std::fs::metadata(&config.segment_path)
                        .is_ok_and(|m| m.len() == config.global_segment_size)
            });
            let (region, id) = match reuse {
                Some(p) => {
                    let region =
                        Region::open_named(&config.segment_path, &options).with_context(|| {
                            format!("cannot re-attach {}", config.segment_path.display())
                        })?;
                    client_id = p.client_id;
                    entries = p.entries.clone();
                    tracing::info!(
                        objects = entries.len(),
                        "re-attached segment {}",
                        config.segment_path.display()
                    );
                    (region, p.segment.id)
                }
                None if config.ephemeral_segment => {
                    let region =
                        Region::anonymous("mooncake-segment", config.global_segment_size, &options)
                            .context("cannot create the segment")?;
                    (region, Uuid::new_v4())
                }
                None => {
                    let region = Region::create_named(
                        &config.segment_path,
                        config.global_segment_size,
                        &options,
                    )
                    .with_context(|| {
                        format!("cannot create segment {}", config.segment_path.display())
                    })?;
                    (region, Uuid::new_v4())
                }
            };
            let desc = SegmentDesc {
                id,
                name: config.hostname(),
                host: config.host.clone(),
                base: region.as_ptr() as u64,
                size: config.global_segment_size,
                transport_endpoint: String::new(),
                protocol: config.protocol,
            };
            Some((Arc::new(region), desc))
        };
        let mut segment = segment;
        let transfer_server = match &mut segment {
            Some((region, desc)) => {
                let bind = format!("{}:{}", config.bind_host, config.transfer_port);
                let server = TransferServer::bind(
                    &bind,
                    config.cluster_token.clone(),
                    Some((desc.id, region.clone())),
                )
                .with_context(|| format!("cannot listen for transfers on {bind}"))?;
                desc.transport_endpoint = format!("{}:{}", config.host, server.local_addr().port());
                if config.port == 0 {
                    // No service port to name the segment by: the transfer port is
                    // unique on this host too.
                    desc.name = format!("{}:{}", config.host, server.local_addr().port());
                }
                tracing::info!(
                    "transfer port {} (peers reach it at {})",
                    server.local_addr(),
                    desc.transport_endpoint
                );
                Some(server)
            }
            // No global segment: the port still comes up, for segments mounted later.
            None => {
                let bind = format!("{}:{}", config.bind_host, config.transfer_port);
                let server = TransferServer::bind(&bind, config.cluster_token.clone(), None)
                    .with_context(|| format!("cannot listen for transfers on {bind}"))?;
                Some(server)
            }
        };
        let inventory = Inventory::new(segment.as_ref().map(|(_, d)| d.id), entries);
        let config_token = config.cluster_token.clone();
        let client = Arc::new(RealClient {
            config,
            client_id,
            segment,
            master: RwLock::new(None),
            local_master: local_master.map(mooncake_master::rpc::MasterRpc::new),
            inventory: Mutex::new(inventory),
            pending: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(false),
            transport: Arc::new(TcpTransport::new(config_token)),
            transfer_server: transfer_server.map(Arc::new),
            metrics: ClientMetrics::default(),
            shutdown,
            tasks: TaskTracker::new(),
            running_replica_tasks: AtomicBool::new(false),
            extra_segments: Mutex::new(Vec::new()),
        });
        client.persist();
        if let Err(e) = client.connect_and_remount().await {
            tracing::warn!(
                "master {} not reachable yet: {e:#}",
                client.config.master_server_address
            );
        }
        client.tasks.spawn(client.clone().heartbeat());
        client.tasks.spawn(client.clone().inventory_sync());
        Ok(client)
    }

    /// This client's id towards the master.
    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// The segment region (exported to dummies).
    pub fn segment_region(&self) -> Option<Arc<Region>> {
        self.segment.as_ref().map(|(r, _)| r.clone())
    }

    /// The segment descriptor.
    pub fn segment(&self) -> Option<&SegmentDesc> {
        self.segment.as_ref().map(|(_, d)| d)
    }

    /// `host:port`, the segment name.
    pub fn hostname(&self) -> String {
        match &self.segment {
            Some((_, desc)) => desc.name.clone(),
            None => self.config.hostname(),
        }
    }

    /// Whether the master session is up.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Bytes peers read from / wrote into this client's segment.
    pub fn bytes_served(&self) -> (u64, u64) {
        self.transfer_server
            .as_ref()
            .map(|s| s.bytes_served())
            .unwrap_or((0, 0))
    }

    /// The transfer port's address, when this client has a segment.
    pub fn transfer_addr(&self) -> Option<std::net::SocketAddr> {
        self.transfer_server.as_ref().map(|s| s.local_addr())
    }

    /// Objects recorded in the inventory.
    pub fn inventory_len(&self) -> usize {
        self.inventory.lock().len()
    }

    fn master(&self) -> MResult<MasterHandle> {
        self.master.read().clone().ok_or(ErrorCode::RpcFail)
    }

    fn persist(&self) {
        let Some((_, desc)) = &self.segment else {
            return;
        };
        if self.config.ephemeral_segment {
            return;
        }
        let entries = {
            let mut inv = self.inventory.lock();
            inv.take_dirty();
            inv.entries()
        };
        let state = PersistedInventory {
            client_id: self.client_id,
            segment: desc.clone(),
            entries,
        };
        if let Err(e) = inventory::save(&self.config.inventory_path(), &state) {
            tracing::warn!("cannot persist the inventory: {e}");
        }
    }

    async fn connect_and_remount(&self) -> anyhow::Result<()> {
        let master = match &self.local_master {
            Some(local) => MasterHandle::Local(local.clone()),
            None => MasterHandle::Remote(
                connect_master(
                    &self.config.master_server_address,
                    &self.config.cluster_token,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
        };
        *self.master.write() = Some(master);
        self.remount().await
    }

    async fn remount(&self) -> anyhow::Result<()> {
        let master = self.master().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut segments: Vec<SegmentDesc> = self.segment().cloned().into_iter().collect();
        segments.extend(self.extra_segments.lock().iter().map(|e| e.desc.clone()));
        let entries = self.inventory.lock().entries();
        let mut chunks: Vec<Vec<InventoryEntry>> =
            entries.chunks(REMOUNT_CHUNK).map(|c| c.to_vec()).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        let mut report = RemountReport::default();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let segs = if i == 0 { segments.clone() } else { Vec::new() };
            report = master
                .remount_segment(self.client_id, segs, chunk, i == last)
                .await
                .map_err(|e| anyhow::anyhow!("master unreachable: {e}"))?
                .map_err(|e| anyhow::anyhow!("remount refused: {e}"))?;
        }
        {
            let mut inv = self.inventory.lock();
            for rejected in &report.rejected {
                inv.remove(rejected.offset, rejected.version);
            }
            inv.seq = report.inventory_seq;
        }
        self.persist();
        self.healthy.store(true, Ordering::Relaxed);
        tracing::info!(
            restored = report.restored,
            rejected = report.rejected.len(),
            "mounted with the master at {}",
            self.config.master_server_address
        );
        Ok(())
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repaired = mooncake_shm::guard::repaired_faults();
        while self
            .shutdown
            .run_until_cancelled(tick.tick())
            .await
            .is_some()
        {
            let now_repaired = mooncake_shm::guard::repaired_faults();
            if now_repaired != repaired {
                tracing::error!(
                    faults = now_repaired - repaired,
                    "a local process shrank shared memory this daemon maps (the segment, a mounted file or a dummy's buffer); its size was restored and the bytes it cut are lost"
                );
                repaired = now_repaired;
            }
            let status = match self.master() {
                Ok(m) => match tokio::time::timeout(Duration::from_secs(3), m.ping(self.client_id))
                    .await
                {
                    Ok(Ok(Ok(p))) => Some(p),
                    _ => None,
                },
                Err(_) => None,
            };
            if let Some(p) = &status
                && p.pending_tasks > 0
                && !self.running_replica_tasks.swap(true, Ordering::AcqRel)
            {
                self.tasks.spawn(self.clone().run_replica_tasks());
            }
            let status = status.map(|p| p.status);
            match status {
                Some(ClientStatus::Ok) => self.healthy.store(true, Ordering::Relaxed),
                Some(_) => {
                    tracing::warn!("master asks for a remount (it restarted or expired us)");
                    if let Err(e) = self.remount().await {
                        tracing::warn!("remount failed: {e:#}");
                    }
                }
                None => {
                    self.healthy.store(false, Ordering::Relaxed);
                    if let Err(e) = self.connect_and_remount().await {
                        tracing::debug!("master still unreachable: {e:#}");
                    }
                }
            }
            let now = Instant::now();
            self.pending
                .lock()
                .retain(|_, w| now.duration_since(w.started) < PENDING_WRITE_TTL);
        }
    }

    /// Fetches the replica tasks queued for this client and runs them, a batch
    /// at a time, until none is left.
    async fn run_replica_tasks(self: Arc<Self>) {
        const BATCH: u32 = 16;
        loop {
            let Ok(master) = self.master() else { break };
            let tasks = match master.fetch_tasks(self.client_id, BATCH).await {
                Ok(Ok(t)) if !t.is_empty() => t,
                _ => break,
            };
            let me = &self;
            let runs = tasks.into_iter().map(|t| {
                let master = master.clone();
                async move {
                    let outcome = me.run_replica_task(&master, &t).await;
                    let (ok, message) = match outcome {
                        Ok(()) => (true, "Task completed successfully".to_string()),
                        Err(e) => (false, e),
                    };
                    if !ok {
                        tracing::warn!(task = %t.id, key = %t.key, "replica task failed: {message}");
                    }
                    let _ = master
                        .complete_task(me.client_id, t.id, ok, message)
                        .await;
                }
            });
            futures::future::join_all(runs).await;
            if self.shutdown.is_cancelled() {
                break;
            }
        }
        self.running_replica_tasks.store(false, Ordering::Release);
    }

    /// Copies (or moves) one replica out of this client's segment.
    async fn run_replica_task(
        &self,
        master: &MasterHandle,
        task: &TaskAssignment,
    ) -> Result<(), String> {
        let failed = |what: &str, e: ErrorCode| format!("{what} failed: {e} ({})", e.as_i32());
        let plan = master
            .replica_copy_start(
                self.client_id,
                task.key.clone(),
                task.source,
                task.targets.clone(),
                task.kind == TaskKind::ReplicaMove,
            )
            .await
            .map_err(|e| failed("copy_start", e))?
            .map_err(|e| failed("copy_start", e))?;
        let Some(region) = self.local_region(&plan.source.segment_id) else {
            let _ = master
                .replica_copy_revoke(self.client_id, task.key.clone())
                .await;
            return Err("the source segment is not this client's".into());
        };
        let jobs: Vec<TransferJob> = plan
            .targets
            .iter()
            .map(|t| TransferJob {
                direction: Direction::Write,
                endpoint: t.transport_endpoint.clone(),
                segment_id: t.segment_id,
                remote_offset: t.offset,
                local: LocalSpan {
                    region: region.clone(),
                    offset: plan.source.offset,
                    len: plan.source.size,
                },
            })
            .collect();
        let deadline = Instant::now() + self.config.transfer_timeout;
        let mut failed_segments = Vec::new();
        let mut written = 0;
        for ((result, n), t) in self
            .transfer(jobs, deadline)
            .await
            .into_iter()
            .zip(&plan.targets)
        {
            match result {
                Ok(()) => written += n,
                Err(e) => {
                    tracing::warn!(key = %task.key, segment = %t.segment_id, "replica copy failed: {e}");
                    failed_segments.push(t.segment_id);
                }
            }
        }
        self.metrics.add_transfer_bytes(0, written);
        master
            .replica_copy_end(self.client_id, task.key.clone(), failed_segments)
            .await
            .map_err(|e| failed("copy_end", e))?
            .map_err(|e| failed("copy_end", e))
    }

    /// The mapping of one of this client's segments.
    fn local_region(&self, id: &SegmentId) -> Option<Arc<Region>> {
        if let Some((r, d)) = &self.segment
            && d.id == *id
        {
            return Some(r.clone());
        }
        self.extra_segments
            .lock()
            .iter()
            .find(|e| e.desc.id == *id)
            .map(|e| e.region.clone())
    }

    /// Contributes `region` to the pool as one more segment of this client.
    async fn mount_extra(
        &self,
        region: Region,
        protocol: Protocol,
        allocated: bool,
    ) -> MResult<SegmentId> {
        let server = self
            .transfer_server
            .clone()
            .ok_or(ErrorCode::InternalError)?;
        let region = Arc::new(region);
        let desc = SegmentDesc {
            id: Uuid::new_v4(),
            name: self.hostname(),
            host: self.config.host.clone(),
            base: region.as_ptr() as u64,
            size: region.len() as u64,
            transport_endpoint: format!("{}:{}", self.config.host, server.local_addr().port()),
            protocol,
        };
        // Peers may write as soon as the master knows the segment.
        server.add_segment(desc.id, region.clone());
        let mounted = async {
            self.master()?
                .mount_segment(self.client_id, desc.clone())
                .await?
        };
        if let Err(e) = mounted.await {
            server.remove_segment(&desc.id);
            return Err(e);
        }
        let id = desc.id;
        self.extra_segments.lock().push(ExtraSegment {
            region,
            desc,
            allocated,
        });
        tracing::info!(segment = %id, allocated, "segment mounted");
        Ok(id)
    }

    fn check_protocol(protocol: &str) -> MResult<Protocol> {
        match protocol.parse::<Protocol>() {
            Ok(Protocol::Tcp) => Ok(Protocol::Tcp),
            _ => Err(ErrorCode::InvalidParams),
        }
    }

    /// Maps `size` bytes at `offset` of the shared-memory file `path` (tmpfs,
    /// hugetlbfs, `/dev/shm`) and contributes them as a segment. `caller` is the
    /// `(uid, gid)` of a dummy asking over the Unix socket: this daemon opens only
    /// files that caller could open for reading and writing itself, so it cannot
    /// be used to reach another user's memory (`None`: a caller that proved it
    /// holds this daemon's credential).
    pub async fn mount_file_segment(
        &self,
        path: String,
        size: u64,
        offset: u64,
        protocol: String,
        caller: Option<(u32, u32)>,
    ) -> MResult<Vec<SegmentId>> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let protocol = Self::check_protocol(&protocol)?;
        if size == 0 {
            return Err(ErrorCode::InvalidParams);
        }
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                tracing::warn!("mount_segment: cannot open {path}: {e}");
                ErrorCode::InvalidParams
            })?;
        if let Some((uid, gid)) = caller {
            let meta = fd.metadata().map_err(|_| ErrorCode::InvalidParams)?;
            if !may_read_write(uid, gid, meta.uid(), meta.gid(), meta.mode()) {
                tracing::warn!(
                    uid,
                    "mount_segment: refused {path}: the caller may not read and write it"
                );
                return Err(ErrorCode::IllegalClient);
            }
        }
        let options = RegionOptions::from_env();
        let region = Region::from_fd(fd.into(), offset, size, &options).map_err(|e| {
            tracing::warn!("mount_segment: cannot map {path}: {e}");
            ErrorCode::InvalidParams
        })?;
        Ok(vec![self.mount_extra(region, protocol, false).await?])
    }

    /// Allocates `size` bytes (rounded up to whole pages) and contributes them as
    /// a segment: the ids and the size allocated.
    pub async fn allocate_and_mount_segment(
        &self,
        size: u64,
        protocol: String,
    ) -> MResult<(Vec<SegmentId>, u64)> {
        let protocol = Self::check_protocol(&protocol)?;
        const PAGE: u64 = 4096;
        let rounded = size
            .checked_next_multiple_of(PAGE)
            .filter(|&s| s > 0)
            .ok_or(ErrorCode::InvalidParams)?;
        let options = RegionOptions::from_env().with_prefault(true);
        let region =
            Region::anonymous("mooncake-extra-segment", rounded, &options).map_err(|e| {
                tracing::warn!("allocate_and_mount_segment({size}): {e}");
                ErrorCode::InvalidParams
            })?;
        let id = self.mount_extra(region, protocol, true).await?;
        Ok((vec![id], rounded))
    }

    /// Unmounts segments mounted with `mount_segment` (`allocated = false`) or
    /// `allocate_and_mount_segment` (`allocated = true`): their objects leave the
    /// pool and, for allocated ones, the memory is freed. With a grace period the
    /// segments are unmounted that long after the call, which returns at once.
    pub async fn unmount_extra_segments(
        self: &Arc<Self>,
        ids: Vec<SegmentId>,
        grace: Duration,
        allocated: bool,
    ) -> MResult<()> {
        {
            let extra = self.extra_segments.lock();
            for (i, id) in ids.iter().enumerate() {
                if ids[..i].contains(id) {
                    return Err(ErrorCode::InvalidParams);
                }
                match extra.iter().find(|e| e.desc.id == *id) {
                    None => return Err(ErrorCode::SegmentNotFound),
                    Some(e) if e.allocated != allocated => return Err(ErrorCode::InvalidParams),
                    Some(_) => {}
                }
            }
        }
        if grace.is_zero() {
            return self.unmount_now(&ids).await;
        }
        let me = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = me.shutdown.cancelled() => {}
            }
            if let Err(e) = me.unmount_now(&ids).await {
                tracing::warn!("delayed unmount failed: {e}");
            }
        });
        Ok(())
    }

    async fn unmount_now(&self, ids: &[SegmentId]) -> MResult<()> {
        let master = self.master()?;
        let mut result = Ok(());
        for id in ids {
            match master.unmount_segment(self.client_id, *id).await {
                Ok(Ok(())) | Ok(Err(ErrorCode::SegmentNotFound)) => {}
                Ok(Err(e)) | Err(e) => {
                    result = Err(e);
                    continue;
                }
            }
            if let Some(server) = &self.transfer_server {
                server.remove_segment(id);
            }
            self.extra_segments.lock().retain(|e| e.desc.id != *id);
            tracing::info!(segment = %id, "segment unmounted");
        }
        result
    }

    /// Queues a copy of `key` to the segments named `targets` (see the master's
    /// `create_copy_task`).
    pub async fn create_copy_task(&self, key: String, targets: Vec<String>) -> MResult<TaskId> {
        self.master()?.create_copy_task(key, targets).await?
    }

    /// Queues a move of `key`'s replica on `source` to `target`.
    pub async fn create_move_task(
        &self,
        key: String,
        source: String,
        target: String,
    ) -> MResult<TaskId> {
        self.master()?.create_move_task(key, source, target).await?
    }

    /// A task's state.
    pub async fn query_task(&self, id: TaskId) -> MResult<TaskInfo> {
        self.master()?.query_task(id).await?
    }

    async fn inventory_sync(self: Arc<Self>) {
        if self.segment.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self
            .shutdown
            .run_until_cancelled(tick.tick())
            .await
            .is_some()
        {
            if !self.healthy() {
                continue;
            }
            let Ok(master) = self.master() else { continue };
            let ack = self.inventory.lock().seq;
            let Ok(Ok(delta)) = master.sync_inventory(self.client_id, ack).await else {
                continue;
            };
            if delta.resync_required {
                if let Ok(Ok(snapshot)) = master.fetch_inventory(self.client_id).await {
                    let mut inv = self.inventory.lock();
                    inv.replace(snapshot.entries);
                    inv.seq = snapshot.seq;
                }
            } else {
                let mut inv = self.inventory.lock();
                for change in delta.changes {
                    inv.apply(change);
                }
                inv.seq = delta.seq;
            }
            let dirty = self.inventory.lock().take_dirty();
            if dirty {
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.persist()).await;
            }
        }
    }

    /// Stops the background tasks, persists the inventory and unmounts.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(server) = self.transfer_server.clone() {
            // Transfers in progress finish first.
            let _ =
                tokio::task::spawn_blocking(move || server.shutdown(Duration::from_secs(10))).await;
        }
        self.persist();
        let extra: Vec<SegmentId> = self
            .extra_segments
            .lock()
            .iter()
            .map(|e| e.desc.id)
            .collect();
        if !extra.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(3), self.unmount_now(&extra)).await;
        }
        if let (Ok(master), Some(desc)) = (self.master(), self.segment()) {
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                master.unmount_segment(self.client_id, desc.id),
            )
            .await;
        }
    }

    // ------------------------------------------------------------ operations

    /// Starts writes for a dummy; local segment first unless the config says otherwise.
    /// An upsert of a key another write is still writing waits for that write to
    /// end (up to [`UPSERT_WAIT`]), so concurrent upserts each succeed, the last
    /// one's value winning. `owner` is the IPC session starting the writes.
    pub async fn put_start(
        &self,
        keys: Vec<String>,
        sizes: Vec<u64>,
        mut config: ReplicateConfig,
        upsert: bool,
        owner: u64,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        if config.preferred_segments.is_empty() && self.segment.is_some() {
            config.preferred_segments = vec![self.hostname()];
        }
        let mut results = self
            .start_writes(keys.clone(), sizes.clone(), &config, upsert)
            .await;
        if upsert {
            let give_up = Instant::now() + UPSERT_WAIT;
            let mut pause = Duration::from_micros(200);
            loop {
                let busy: Vec<usize> = (0..keys.len())
                    .filter(|&i| results[i] == Err(ErrorCode::ObjectAlreadyExists))
                    .collect();
                if busy.is_empty() || Instant::now() >= give_up {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
                let retried = self
                    .start_writes(
                        busy.iter().map(|&i| keys[i].clone()).collect(),
                        busy.iter().map(|&i| sizes[i]).collect(),
                        &config,
                        true,
                    )
                    .await;
                for (i, r) in busy.into_iter().zip(retried) {
                    results[i] = r;
                }
            }
        }
        let now = Instant::now();
        let mut pending = self.pending.lock();
        for (k, r) in keys.iter().zip(&results) {
            if let Ok(descs) = r {
                pending.insert(
                    k.clone(),
                    PendingWrite {
                        started: now,
                        owner,
                        version: descs.first().map_or(0, |d| d.version),
                        replicas: descs.clone(),
                        ranged_failures: None,
                    },
                );
            }
        }
        results
    }

    async fn start_writes(
        &self,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        let n = keys.len();
        let call = async {
            let master = self.master()?;
            if upsert {
                master
                    .batch_upsert_start(self.client_id, keys, sizes, config.clone())
                    .await
            } else {
                master
                    .batch_put_start(self.client_id, keys, sizes, config.clone())
                    .await
            }
        };
        per_key(n, call.await)
    }

    /// The versions of the pending writes of `keys` (0 when there is none).
    fn pending_versions(&self, keys: impl Iterator<Item = impl AsRef<str>>) -> Vec<u64> {
        let pending = self.pending.lock();
        keys.map(|k| pending.get(k.as_ref()).map_or(0, |w| w.version))
            .collect()
    }

    /// Takes the pending write of `key` if it is still the one of `version` (a
    /// later write of the key may have started once this one ended).
    fn take_pending(
        pending: &mut HashMap<String, PendingWrite>,
        key: &str,
        version: u64,
    ) -> Option<PendingWrite> {
        if pending.get(key)?.version == version {
            pending.remove(key)
        } else {
            None
        }
    }

    /// Revokes the writes an IPC session started and did not finish: its dummy
    /// died or disconnected, so nobody will end them, and the keys must not stay
    /// blocked until the master's discard timeout.
    pub async fn revoke_writes_of(&self, owner: u64) {
        if owner == 0 {
            return;
        }
        let keys: Vec<String> = {
            let mut pending = self.pending.lock();
            let keys: Vec<String> = pending
                .iter()
                .filter(|(_, w)| w.owner == owner)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &keys {
                pending.remove(k);
            }
            keys
        };
        if keys.is_empty() {
            return;
        }
        let n = keys.len();
        let results = match self.master() {
            Ok(m) => per_key(n, m.batch_put_revoke(self.client_id, keys).await),
            Err(e) => vec![Err(e); n],
        };
        let revoked = results.iter().filter(|r| r.is_ok()).count();
        tracing::info!(
            session = owner,
            revoked,
            unfinished = n,
            "revoked the unfinished writes of a dummy that went away"
        );
    }

    /// Readers are done with values they were granted: tells the master, without
    /// waiting, so replaced values are freed as soon as nobody reads them.
    pub async fn release_reads(&self, reads: Vec<(String, u64)>) {
        if reads.is_empty() {
            return;
        }
        let Ok(master) = self.master() else { return };
        match master {
            // A direct call: done at once.
            MasterHandle::Local(_) => {
                let _ = master.batch_release_reads(reads).await;
            }
            MasterHandle::Remote(_) => {
                tokio::spawn(async move {
                    let _ = master.batch_release_reads(reads).await;
                });
            }
        }
    }

    /// Ends writes; records local replicas in the inventory at once.
    pub async fn put_end(&self, keys: Vec<String>) -> Vec<MResult<()>> {
        let versions = self.pending_versions(keys.iter());
        let call = async {
            self.master()?
                .batch_put_end(self.client_id, keys.clone())
                .await
        };
        let results = per_key(keys.len(), call.await);
        let mut pending = self.pending.lock();
        let mut inv = self.inventory.lock();
        for ((k, r), version) in keys.iter().zip(&results).zip(versions) {
            let Some(PendingWrite {
                replicas: descs, ..
            }) = Self::take_pending(&mut pending, k, version)
            else {
                continue;
            };
            if r.is_ok() {
                for d in descs {
                    inv.add(InventoryEntry {
                        segment_id: d.segment_id,
                        key: k.clone(),
                        offset: d.offset,
                        size: d.size,
                        version: d.version,
                    });
                }
            }
        }
        results
    }

    /// Finishes writes for a dummy: sends each value from the dummy's registered
    /// buffers to the replicas on other hosts, then ends the batch with the master,
    /// dropping replicas that failed. A key fails only when every replica failed.
    pub async fn put_complete(
        &self,
        items: Vec<PutCompletion>,
        session: Option<&Arc<Session>>,
    ) -> Vec<MResult<()>> {
        let own = self.segment().map(|d| d.id);
        let mut failed: Vec<Vec<SegmentId>> = vec![Vec::new(); items.len()];
        let mut overrides: Vec<Option<ErrorCode>> = vec![None; items.len()];
        let mut replicas: Vec<Vec<ReplicaDesc>> = Vec::with_capacity(items.len());
        // Per item: the remote replicas were already written by `transfer_ranges`.
        let mut ranged: Vec<bool> = Vec::with_capacity(items.len());
        let mut versions: Vec<u64> = Vec::with_capacity(items.len());
        {
            let pending = self.pending.lock();
            for (i, item) in items.iter().enumerate() {
                let w = pending.get(&item.key);
                versions.push(w.map_or(0, |w| w.version));
                replicas.push(w.map(|w| w.replicas.clone()).unwrap_or_default());
                let done = match w.and_then(|w| w.ranged_failures.as_ref()) {
                    Some(fails) if item.sources.is_empty() => {
                        failed[i].extend(fails.iter().copied());
                        true
                    }
                    _ => false,
                };
                ranged.push(done);
            }
        }
        // Jobs, and for each the (item, replica segment) it belongs to.
        let mut jobs: Vec<TransferJob> = Vec::new();
        let mut owners: Vec<(usize, SegmentId)> = Vec::new();
        let mut held: Vec<Translation> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            for r in &replicas[i] {
                if Some(r.segment_id) == own {
                    if item.local_failed {
                        failed[i].push(r.segment_id);
                    }
                    continue;
                }
                if ranged[i] {
                    continue;
                }
                let spans = match translate_all(session, &item.sources, r.size) {
                    Ok(spans) => spans,
                    Err(code) => {
                        failed[i].push(r.segment_id);
                        overrides[i] = Some(code);
                        continue;
                    }
                };
                for job in replica_jobs(Direction::Write, r, &spans) {
                    jobs.push(job);
                    owners.push((i, r.segment_id));
                }
                held.extend(spans);
            }
        }
        if !jobs.is_empty() {
            let deadline = Instant::now() + self.config.transfer_timeout;
            let results = self.transfer(jobs, deadline).await;
            let bytes: u64 = results.iter().filter(|r| r.0.is_ok()).map(|r| r.1).sum();
            self.metrics.add_transfer_bytes(0, bytes);
            for ((result, _), (i, seg)) in results.into_iter().zip(owners) {
                if let Err(e) = result
                    && !failed[i].contains(&seg)
                {
                    tracing::warn!(key = %items[i].key, segment = %seg, "replica write failed: {e}");
                    failed[i].push(seg);
                }
            }
        }
        drop(held);
        let keys: Vec<String> = items.iter().map(|it| it.key.clone()).collect();
        let call = async {
            self.master()?
                .batch_put_end_except(self.client_id, keys.clone(), failed.clone())
                .await
        };
        let mut results = per_key(keys.len(), call.await);
        let mut pending = self.pending.lock();
        let mut inv = self.inventory.lock();
        for (i, k) in keys.iter().enumerate() {
            let descs = Self::take_pending(&mut pending, k, versions[i])
                .map(|w| w.replicas)
                .unwrap_or_default();
            if results[i].is_ok() {
                for d in descs {
                    if Some(d.segment_id) == own && !failed[i].contains(&d.segment_id) {
                        inv.add(InventoryEntry {
                            segment_id: d.segment_id,
                            key: k.clone(),
                            offset: d.offset,
                            size: d.size,
                            version: d.version,
                        });
                    }
                }
            } else if let Some(code) = overrides[i] {
                results[i] = Err(code);
            }
        }
        results
    }

    /// Reads objects for a dummy: local replicas are left to the dummy; remote ones
    /// are read straight into its registered `dests`, trying each replica in turn,
    /// all within the read lease.
    pub async fn get_into(
        &self,
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
        session: Option<&Arc<Session>>,
    ) -> Vec<MResult<GetOutcome>> {
        if dests.len() != keys.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let started = Instant::now();
        let lists = self.get_replicas(keys.clone()).await;
        let own = self.segment().map(|d| d.id);
        let mut out: Vec<MResult<GetOutcome>> = Vec::with_capacity(lists.len());
        // Grants this call uses up itself; `Local` and `Remote` lists go to the
        // dummy, which releases them once it has read.
        let mut done_with: Vec<(String, u64)> = Vec::new();
        // Per key wanting a transfer: its remote replicas and destination spans.
        let mut wanted: Vec<(usize, ReplicaList, Vec<Translation>)> = Vec::new();
        for (i, list) in lists.into_iter().enumerate() {
            let list = match list {
                Ok(l) => l,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            if list.replicas.iter().any(|r| Some(r.segment_id) == own) {
                out.push(Ok(GetOutcome::Local(list)));
                continue;
            }
            if dests[i].is_empty() {
                out.push(Ok(GetOutcome::Remote(list)));
                continue;
            }
            if let Some(r) = list.replicas.first() {
                done_with.push((keys[i].clone(), r.version));
            }
            let capacity: u64 = dests[i].iter().map(|d| d.len).sum();
            if capacity < list.size {
                out.push(Err(ErrorCode::InvalidParams));
                continue;
            }
            match translate_all(session, &dests[i], list.size) {
                Ok(spans) => {
                    out.push(Ok(GetOutcome::Done(list.size)));
                    wanted.push((i, list, spans));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        // Leave a margin: bytes must be in place before the lease can lapse.
        let lease_ms = wanted.iter().map(|w| w.1.lease_ttl_ms).min().unwrap_or(0);
        let deadline = started + Duration::from_millis(lease_ms.saturating_sub(50));
        let owners: Vec<usize> = wanted.iter().map(|w| w.0).collect();
        let reads = wanted
            .into_iter()
            .map(|(_, list, spans)| {
                let mut at = 0;
                let ranges = spans
                    .into_iter()
                    .map(|t| {
                        let off = at;
                        at += t.len();
                        (off, t)
                    })
                    .collect();
                (list.replicas, ranges)
            })
            .collect();
        for (i, r) in owners
            .into_iter()
            .zip(self.read_with_fallback(reads, deadline).await)
        {
            if let Err(e) = r {
                out[i] = Err(e);
            }
        }
        self.release_reads(done_with).await;
        out
    }

    /// Moves object ranges between a dummy's registered memory and the remote
    /// replicas (see [`RealClientService::transfer_ranges`]).
    ///
    /// [`RealClientService::transfer_ranges`]: mooncake_proto::realclient::RealClientService::transfer_ranges
    pub async fn transfer_ranges(
        &self,
        write: bool,
        items: Vec<RangeTransfer>,
        session: Option<&Arc<Session>>,
    ) -> Vec<MResult<u64>> {
        let started = Instant::now();
        let own = self.segment().map(|d| d.id);
        let mut out: Vec<MResult<u64>> = Vec::with_capacity(items.len());
        // Per item to transfer: its remote replicas (tried in turn for reads, all
        // written for writes), its ranges, and its deadline.
        let mut wanted: Vec<RangeWork> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let replicas = if write {
                match self.pending.lock().get(&item.key) {
                    Some(w) => w.replicas.clone(),
                    None => {
                        out.push(Err(ErrorCode::InvalidParams));
                        continue;
                    }
                }
            } else {
                item.replicas
            };
            let size = replicas.first().map_or(0, |r| r.size);
            let remote: Vec<ReplicaDesc> = replicas
                .into_iter()
                .filter(|r| Some(r.segment_id) != own && r.size == size)
                .collect();
            let mut spans = Vec::with_capacity(item.ranges.len());
            let mut total = 0u64;
            let mut bad = None;
            for range in &item.ranges {
                let inside = range
                    .object_offset
                    .checked_add(range.buf.len)
                    .is_some_and(|end| end <= size);
                if !inside || range.buf.len == 0 {
                    bad = Some(ErrorCode::InvalidParams);
                    break;
                }
                match session.map(|s| s.translate(range.buf.addr, range.buf.len)) {
                    Some(Ok(t)) => spans.push((range.object_offset, t)),
                    _ => {
                        bad = Some(ErrorCode::InvalidParams);
                        break;
                    }
                }
                total += range.buf.len;
            }
            if let Some(e) = bad {
                out.push(Err(e));
                continue;
            }
            if remote.is_empty() {
                // Writes: nothing remote to write. Reads: the dummy should have
                // copied from the local replica itself.
                out.push(if write {
                    Ok(total)
                } else {
                    Err(ErrorCode::TransferFail)
                });
                continue;
            }
            let deadline = if write {
                started + self.config.transfer_timeout
            } else {
                started + Duration::from_millis(item.lease_left_ms.saturating_sub(50))
            };
            out.push(Ok(total));
            wanted.push((i, remote, spans, deadline));
            keys.push(item.key);
        }
        if write {
            let mut jobs = Vec::new();
            let mut owners: Vec<(usize, SegmentId)> = Vec::new();
            let deadline = wanted.iter().map(|w| w.3).max().unwrap_or(started);
            for (w, (_, remote, spans, _)) in wanted.iter().enumerate() {
                for r in remote {
                    for (off, t) in spans {
                        jobs.push(range_job(Direction::Write, r, *off, t));
                        owners.push((w, r.segment_id));
                    }
                }
            }
            let results = self.transfer(jobs, deadline).await;
            let mut failures: Vec<Vec<SegmentId>> = vec![Vec::new(); wanted.len()];
            let mut bytes = 0;
            for ((r, n), (w, seg)) in results.into_iter().zip(owners) {
                match r {
                    Ok(()) => bytes += n,
                    Err(e) => {
                        if !failures[w].contains(&seg) {
                            tracing::warn!(key = %keys[w], segment = %seg, "range write failed: {e}");
                            failures[w].push(seg);
                        }
                    }
                }
            }
            self.metrics.add_transfer_bytes(0, bytes);
            let mut pending = self.pending.lock();
            for (w, (i, remote, _, _)) in wanted.iter().enumerate() {
                // A write revoked meanwhile has nothing left to record.
                let Some(entry) = pending.get_mut(&keys[w]) else {
                    continue;
                };
                let recorded = entry.ranged_failures.get_or_insert_with(Vec::new);
                for seg in &failures[w] {
                    if !recorded.contains(seg) {
                        recorded.push(*seg);
                    }
                }
                let has_local = entry.replicas.iter().any(|d| Some(d.segment_id) == own);
                if !has_local && failures[w].len() == remote.len() {
                    out[*i] = Err(ErrorCode::TransferFail);
                }
            }
            return out;
        }
        let deadline = wanted.iter().map(|w| w.3).min().unwrap_or(started);
        let owners: Vec<usize> = wanted.iter().map(|w| w.0).collect();
        let reads = wanted
            .into_iter()
            .map(|(_, r, spans, _)| (r, spans))
            .collect();
        for (i, r) in owners
            .into_iter()
            .zip(self.read_with_fallback(reads, deadline).await)
        {
            if let Err(e) = r {
                out[i] = Err(e);
            }
        }
        out
    }

    /// Reads each item's ranges `(object offset, local span)` from its replicas,
    /// moving to the next replica after a failure (never past `deadline`, and
    /// not after `LEASE_EXPIRED`). Per item `Ok` or the last error.
    async fn read_with_fallback(
        &self,
        items: Vec<(Vec<ReplicaDesc>, Ranges)>,
        deadline: Instant,
    ) -> Vec<MResult<()>> {
        let mut results: Vec<MResult<()>> = items
            .iter()
            .map(|(r, _)| {
                if r.is_empty() {
                    Err(ErrorCode::TransferFail)
                } else {
                    Ok(())
                }
            })
            .collect();
        let mut pending: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_ok()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let mut jobs = Vec::new();
            let mut owners = Vec::new();
            for &i in &pending {
                let replica = &items[i].0[attempt];
                for (off, t) in &items[i].1 {
                    jobs.push(range_job(Direction::Read, replica, *off, t));
                    owners.push(i);
                }
            }
            let mut errors: Vec<Option<ErrorCode>> = vec![None; items.len()];
            let mut bytes = 0;
            for ((r, n), i) in self.transfer(jobs, deadline).await.into_iter().zip(owners) {
                match r {
                    Ok(()) => bytes += n,
                    Err(e) => errors[i] = errors[i].or(Some(e)),
                }
            }
            self.metrics.add_transfer_bytes(bytes, 0);
            attempt += 1;
            pending.retain(|&i| match errors[i] {
                None => false,
                Some(e) if e != ErrorCode::LeaseExpired && attempt < items[i].0.len() => {
                    tracing::debug!(
                        "replica {} of a key failed ({e}); trying the next",
                        attempt - 1
                    );
                    true
                }
                Some(e) => {
                    results[i] = Err(e);
                    false
                }
            });
        }
        results
    }

    /// Runs transfer jobs off the async workers; returns per job its result and length.
    async fn transfer(&self, jobs: Vec<TransferJob>, deadline: Instant) -> Vec<(MResult<()>, u64)> {
        let transport = self.transport.clone();
        let lens: Vec<u64> = jobs.iter().map(|j| j.local.len).collect();
        let n = jobs.len();
        let results = tokio::task::spawn_blocking(move || transport.run(&jobs, deadline))
            .await
            .unwrap_or_else(|_| vec![Err(ErrorCode::InternalError); n]);
        results.into_iter().zip(lens).collect()
    }

    /// Revokes writes.
    pub async fn put_revoke(&self, keys: Vec<String>) -> Vec<MResult<()>> {
        {
            let mut pending = self.pending.lock();
            for k in &keys {
                pending.remove(k);
            }
        }
        let call = async {
            self.master()?
                .batch_put_revoke(self.client_id, keys.clone())
                .await
        };
        per_key(keys.len(), call.await)
    }

    /// Readable replicas with a lease.
    pub async fn get_replicas(&self, keys: Vec<String>) -> Vec<MResult<ReplicaList>> {
        let n = keys.len();
        per_key(
            n,
            async { self.master()?.batch_get_replica_list(keys).await }.await,
        )
    }

    /// Existence.
    pub async fn exist(&self, keys: Vec<String>) -> Vec<MResult<bool>> {
        let n = keys.len();
        per_key(
            n,
            async { self.master()?.batch_exist_key(keys).await }.await,
        )
    }

    /// Size.
    pub async fn get_size(&self, key: String) -> MResult<u64> {
        self.master()?.get_size(key).await?
    }

    /// Removes objects.
    pub async fn remove(&self, keys: Vec<String>, force: bool) -> Vec<MResult<()>> {
        let n = keys.len();
        per_key(
            n,
            async { self.master()?.batch_remove(keys, force).await }.await,
        )
    }

    /// Drops this client's replicas of `keys`; the keys cleared.
    pub async fn replica_clear(
        &self,
        keys: Vec<String>,
        segment_name: String,
    ) -> MResult<Vec<String>> {
        self.master()?
            .batch_replica_clear(keys, self.client_id, segment_name)
            .await?
    }

    /// Removes by regex.
    pub async fn remove_by_regex(&self, pattern: String, force: bool) -> MResult<u64> {
        self.master()?.remove_by_regex(pattern, force).await?
    }

    /// Removes everything.
    pub async fn remove_all(&self, force: bool) -> MResult<u64> {
        self.master()?.remove_all(force).await?
    }
}

/// Whether a process of `uid`/`gid` may read and write a file owned by
/// `owner`/`group` with `mode`, going by the permission bits alone (supplementary
/// groups and ACLs are not consulted: when unsure, no).
fn may_read_write(uid: u32, gid: u32, owner: u32, group: u32, mode: u32) -> bool {
    let rw = |shift: u32| (mode >> shift) & 0o6 == 0o6;
    if uid == 0 {
        true
    } else if uid == owner {
        rw(6)
    } else if gid == group {
        rw(3)
    } else {
        rw(0)
    }
}

/// The job moving the range at `offset` in the object of `replica` from or to `local`.
fn range_job(
    direction: Direction,
    replica: &ReplicaDesc,
    offset: u64,
    local: &Translation,
) -> TransferJob {
    TransferJob {
        direction,
        endpoint: replica.transport_endpoint.clone(),
        segment_id: replica.segment_id,
        remote_offset: replica.offset + offset,
        local: LocalSpan {
            region: local.region_arc().clone(),
            offset: local.offset(),
            len: local.len(),
        },
    }
}

/// The jobs moving one object between `replica` and the dummy memory `spans`, which
/// hold the object's bytes in order.
fn replica_jobs(
    direction: Direction,
    replica: &ReplicaDesc,
    spans: &[Translation],
) -> Vec<TransferJob> {
    let mut at = 0;
    spans
        .iter()
        .map(|t| {
            let job = range_job(direction, replica, at, t);
            at += t.len();
            job
        })
        .collect()
}

/// Translates a dummy's buffer list, checking it holds exactly `size` bytes... or
/// more: a destination may be larger than the object, in which case only the first
/// `size` bytes are used.
fn translate_all(
    session: Option<&Arc<Session>>,
    bufs: &[BufRef],
    size: u64,
) -> MResult<Vec<Translation>> {
    let session = session.ok_or(ErrorCode::InvalidParams)?;
    let total: u64 = bufs.iter().map(|b| b.len).sum();
    if total < size || bufs.is_empty() {
        return Err(ErrorCode::InvalidParams);
    }
    let mut left = size;
    let mut spans = Vec::new();
    for b in bufs {
        if left == 0 {
            break;
        }
        let len = b.len.min(left);
        if len == 0 {
            continue;
        }
        spans.push(session.translate(b.addr, len)?);
        left -= len;
    }
    Ok(spans)
}

#[cfg(test)]
mod permission_tests {
    use super::may_read_write;

    #[test]
    fn only_callers_the_mode_lets_in_may_mount_a_file() {
        assert!(may_read_write(1000, 1000, 1000, 1000, 0o600));
        assert!(
            !may_read_write(1000, 1000, 0, 0, 0o600),
            "root's private file"
        );
        assert!(
            !may_read_write(1000, 1000, 0, 0, 0o644),
            "readable is not writable"
        );
        assert!(may_read_write(1000, 50, 0, 50, 0o660));
        assert!(may_read_write(1000, 1000, 0, 0, 0o666));
        assert!(
            !may_read_write(1000, 1000, 1000, 1000, 0o066),
            "owner bits rule the owner"
        );
        assert!(may_read_write(0, 0, 1000, 1000, 0o600), "root may");
    }
}
