//! [`RealClient`]: the segment, the master session and the store operations.
//!
//! The session: `remount_segment` with the persisted inventory at start (so objects
//! in a re-attached segment come back), a ping every second (reconnecting, and
//! remounting with the inventory when the master answers `NEED_REMOUNT`), and an
//! inventory sync every 50 ms that applies the master's changes and persists them.
//!
//! # Layout
//!
//! - this file: the state ([`RealClient`]), startup and shutdown;
//! - `session`: the master session (remount, heartbeat, inventory sync, persistence);
//! - `writes`: put/upsert start, end, complete, revoke, and a dead session's writes;
//! - `grants`: writes placed in space the master granted ahead of time, committed
//!   in one round trip;
//! - `transfers`: reads for dummies, ranged transfers, replica fallback, read releases;
//! - `metadata`: existence, size, replica lists and removes passed to the master;
//! - `exist_index`: existence of the objects held here, answered here;
//! - `segments`: segments mounted after start;
//! - `tasks`: replica copy / move tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use mooncake_daemon::ha::{LeaderView, MasterAddress};
use mooncake_proto::codec::connect_master;
use mooncake_proto::*;
use mooncake_shm::Region;

use crate::config::RealClientConfig;
use crate::error::Error;
use crate::inventory::{self, Inventory};
use crate::master_handle::MasterHandle;
use crate::metrics::ClientMetrics;
use crate::transfer::tcp::{TcpTransport, TransferServer};
use crate::transfer::{
    CallerMemory, Direction, HeldSpan, Landed, LocalSpan, TransferJob, Transport,
};
use mooncake_proto::realclient::{BufRef, GetOutcome, PutCompletion, RangeTransfer};

mod exist_index;
mod grants;
mod metadata;
mod same_host;
mod segments;
mod session;
mod tasks;
#[cfg(test)]
mod tests;
mod thread_master;
pub(crate) use thread_master::mark_ring_thread;
mod transfers;
mod writes;

use transfers::{replica_jobs, translate_all};

/// Writes started and not yet ended, by key.
type PendingTable = HashMap<String, PendingWrite, foldhash::fast::RandomState>;

/// How long a remount waits for dummies to finish the writes they are copying
/// into this client's segment.
const SETTLE_WRITES: Duration = Duration::from_secs(5);
/// Inventory entries per `remount_segment` chunk.
const REMOUNT_CHUNK: usize = 100_000;
/// Writes started but never ended are forgotten after this.
const PENDING_WRITE_TTL: Duration = Duration::from_secs(600);
/// How long an upsert waits for another write of the same key to end before it
/// reports `OBJECT_ALREADY_EXISTS`.
const UPSERT_WAIT: Duration = Duration::from_secs(5);

/// Ranges of one object: (offset in the object, the dummy's memory).
type Ranges = Vec<(u64, HeldSpan)>;

/// One object of a `transfer_ranges` call with remote work to do.
struct RangeWork {
    /// Its position in the call.
    index: usize,
    key: String,
    /// Its remote replicas: all written, or read one after another on failure.
    remote: Vec<ReplicaDesc>,
    ranges: Ranges,
    deadline: Instant,
}

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
    /// Set when the writer is done copying (its put_end or put_complete came).
    copied: bool,
    /// Placed by this client in space the master granted (`grants`): ended
    /// with a commit instead of `put_end`.
    placed: Option<grants::Placed>,
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
    /// The lock on the segment file, released when the client goes.
    _segment_lock: Option<crate::segfiles::SegmentLock>,
    config: RealClientConfig,
    client_id: ClientId,
    segment: Option<(Arc<Region>, SegmentDesc)>,
    master: RwLock<Option<MasterHandle>>,
    /// The address of the master of the current session (none for one in this
    /// process), for the ring threads' own connections.
    master_address: Mutex<Option<String>>,
    /// With an `etcd://` master address: the leader as etcd shows it.
    leader: Option<tokio::sync::watch::Receiver<Option<LeaderView>>>,
    /// Counts the master sessions made (connected and remounted): calls waiting
    /// for a new leader wait for it to change.
    master_generation: tokio::sync::watch::Sender<u64>,
    /// One reconnect or remount at a time (heartbeat and leader changes).
    reconnecting: tokio::sync::Mutex<()>,
    /// The term (view version) of the leader this client is connected to.
    connected_view: Mutex<Option<u64>>,
    /// The master instance this client last remounted with.
    master_view: std::sync::atomic::AtomicU64,
    /// The embedded master, when this process runs one.
    local_master: Option<mooncake_master::rpc::MasterRpc>,
    inventory: Mutex<Inventory>,
    pending: Mutex<PendingTable>,
    /// Space granted in the own segment for writes placed here (`grants`);
    /// taken before `pending` when both are needed.
    local_space: Arc<Mutex<grants::LocalSpace>>,
    /// Complete objects held here, answering existence without the master.
    exist_index: Mutex<exist_index::ExistIndex>,
    healthy: AtomicBool,
    transport: Arc<dyn Transport>,
    transfer_server: Option<Arc<TransferServer>>,
    /// Operation counters and latencies (served on `--http_port`).
    pub metrics: ClientMetrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The runtime the client was started on: background tasks go there, also
    /// when a ring thread (with a runtime of its own) starts them.
    runtime: tokio::runtime::Handle,
    /// Set while replica tasks are being fetched and run.
    running_replica_tasks: AtomicBool,
    /// Segments mounted after start.
    extra_segments: Mutex<Vec<ExtraSegment>>,
    /// Read grants this client is done with, for a master in another process:
    /// sent along with the next lookup, or by the heartbeat within a second
    /// (a release of its own would cost the master a call per read).
    held_releases: Mutex<Vec<(String, u64)>>,
    /// The disk tier (`--enable_offload`), served as one more segment.
    disk: Option<Arc<crate::disk::DiskTier>>,
}

/// Builds a [`RealClient`] (see [`RealClient::builder`]).
pub struct RealClientBuilder {
    config: RealClientConfig,
    local_master: Option<Arc<mooncake_master::MasterService>>,
    transport: Option<Arc<dyn Transport>>,
    transfer_port: bool,
}

impl RealClientBuilder {
    /// Calls this master in the same process instead of connecting to
    /// `master_server_address`.
    pub fn with_local_master(mut self, master: Arc<mooncake_master::MasterService>) -> Self {
        self.local_master = Some(master);
        self
    }

    /// Moves bytes between hosts with `transport` instead of TCP.
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Opens no transfer port (peers then reach this client's segment only
    /// through a transport that does not need one).
    pub fn without_transfer_port(mut self) -> Self {
        self.transfer_port = false;
        self
    }

    /// Creates or re-attaches the segment, connects to the master and starts the
    /// background tasks, until `shutdown`.
    pub async fn start(self, shutdown: CancellationToken) -> crate::error::Result<Arc<RealClient>> {
        RealClient::start_with(self, shutdown).await
    }
}

impl RealClient {
    /// Creates or re-attaches the segment, connects to the master and starts the
    /// heartbeat and inventory tasks: the TCP transport and transfer port, and the
    /// master in this process when `local_master` is given.
    pub async fn start(
        config: RealClientConfig,
        shutdown: CancellationToken,
        local_master: Option<Arc<mooncake_master::MasterService>>,
    ) -> crate::error::Result<Arc<RealClient>> {
        let mut builder = RealClient::builder(config);
        if let Some(m) = local_master {
            builder = builder.with_local_master(m);
        }
        builder.start(shutdown).await
    }

    /// A builder, for choosing the master connection and the transport.
    pub fn builder(config: RealClientConfig) -> RealClientBuilder {
        RealClientBuilder {
            config,
            local_master: None,
            transport: None,
            transfer_port: true,
        }
    }

    async fn start_with(
        b: RealClientBuilder,
        shutdown: CancellationToken,
    ) -> crate::error::Result<Arc<RealClient>> {
        let RealClientBuilder {
            config,
            local_master,
            transport,
            transfer_port,
        } = b;
        if config.protocol == Protocol::Rdma {
            return Err(Error::RdmaNotBuilt);
        }
        let leader = match local_master {
            Some(_) => None,
            None => match MasterAddress::parse(&config.master_server_address) {
                Ok(MasterAddress::Direct(_)) => None,
                Ok(MasterAddress::Etcd(endpoints)) => Some(mooncake_daemon::ha::follow_leader(
                    endpoints,
                    &config.cluster_id,
                    shutdown.child_token(),
                )),
                // It could never connect: say so now instead of retrying forever.
                Ok(MasterAddress::Unsupported(_)) | Err(_) => {
                    return Err(Error::MasterUnreachable {
                        address: config.master_server_address.clone(),
                        source: mooncake_proto::codec::ConnectError::HaNotBuilt(
                            config.master_server_address.clone(),
                        ),
                    });
                }
            },
        };
        // Held for this client's life: no second real client takes the same
        // segment, and `mooncake segments` sees the file is in use.
        let segment_lock = if config.ephemeral_segment || config.global_segment_size == 0 {
            None
        } else {
            Some(
                crate::segfiles::SegmentLock::acquire(&config.segment_path)
                    .map_err(Error::SegmentLock)?,
            )
        };
        let persisted = if config.ephemeral_segment {
            None
        } else {
            inventory::load(&config.inventory_path())
        };
        let mut client_id = Uuid::new_v4();
        let mut entries = Vec::new();
        let mut memory_reattached = false;
        let segment = if config.global_segment_size == 0 {
            None
        } else {
            // Prefault: first-touch faults would otherwise land on the put path.
            let options = config.region.clone().with_prefault(true);
            let reuse = persisted.as_ref().filter(|p| {
                p.segment.size == config.global_segment_size
                    && std::fs::metadata(&config.segment_path)
                        .is_ok_and(|m| m.len() == config.global_segment_size)
            });
            let (region, id) = match reuse {
                Some(p) => {
                    let region = Region::open_named(&config.segment_path, &options).map_err(
                        Error::segment(format!(
                            "cannot re-attach {}",
                            config.segment_path.display()
                        )),
                    )?;
                    client_id = p.client_id;
                    entries = p.entries.clone();
                    memory_reattached = true;
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
                            .map_err(Error::segment("cannot create the segment"))?;
                    (region, Uuid::new_v4())
                }
                None => {
                    let region = Region::create_named(
                        &config.segment_path,
                        config.global_segment_size,
                        &options,
                    )
                    .map_err(Error::segment(format!(
                        "cannot create segment {}",
                        config.segment_path.display()
                    )))?;
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
                medium: Default::default(),
            };
            Some((Arc::new(region), desc))
        };
        let mut segment = segment;
        let transfer_server = match &mut segment {
            _ if !transfer_port => None,
            Some((region, desc)) => {
                let bind = format!("{}:{}", config.bind_host, config.transfer_port);
                let server = TransferServer::bind_tuned(
                    &bind,
                    config.cluster_token.clone(),
                    Some((desc.id, region.clone())),
                    config.transfer_sockbuf,
                )
                .map_err(Error::io(format!("cannot listen for transfers on {bind}")))?;
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
                let server = TransferServer::bind_tuned(
                    &bind,
                    config.cluster_token.clone(),
                    None,
                    config.transfer_sockbuf,
                )
                .map_err(Error::io(format!("cannot listen for transfers on {bind}")))?;
                Some(server)
            }
        };
        let disk = match (&config.offload, &transfer_server, &segment) {
            (Some(disk_config), Some(server), Some((_, memory))) => {
                let open = |stem: &str| {
                    crate::disk::DiskTier::open(
                        disk_config,
                        stem,
                        format!("{}/disk", memory.name),
                        config.host.clone(),
                        config.protocol,
                    )
                };
                let opened = match &disk_config.stem {
                    // Processes sharing the directory: the first set of files no
                    // live process holds.
                    Some(stem) => {
                        let mut opened = open(stem);
                        for n in 1..16 {
                            let Err(crate::disk::DiskError::Locked(
                                crate::segfiles::LockError::InUse(_),
                            )) = &opened
                            else {
                                break;
                            };
                            opened = open(&format!("{stem}.{n}"));
                        }
                        opened
                    }
                    None => open(&config.segment_path.file_stem().map_or_else(
                        || format!("mooncake_client_{}", config.port),
                        |s| s.to_string_lossy().into_owned(),
                    )),
                };
                match opened {
                    Ok(opened) => {
                        if !memory_reattached && let Some(id) = opened.client_id {
                            // The memory segment starts over; the disk keeps its
                            // objects under the identity it was saved with.
                            client_id = id;
                        }
                        let mut tier = opened.tier;
                        tier.desc.transport_endpoint = memory.transport_endpoint.clone();
                        server.add_disk_segment(
                            tier.desc.id,
                            tier.region.clone(),
                            tier.sums.clone(),
                        );
                        tracing::info!(
                            "disk tier {} ({} bytes) in {}",
                            tier.desc.name,
                            tier.desc.size,
                            disk_config.dir.display()
                        );
                        Some(Arc::new(tier))
                    }
                    Err(e) => {
                        tracing::error!("the disk tier is off, the memory tier serves on: {e}");
                        None
                    }
                }
            }
            (Some(_), _, _) => {
                tracing::error!(
                    "the disk tier needs a memory segment and a transfer port; it is off"
                );
                None
            }
            _ => None,
        };
        let segment_id = segment.as_ref().map(|(_, d)| d.id);
        let mut inventory = Inventory::new(segment_id, entries.clone());
        if segment.is_some() && !config.ephemeral_segment {
            let journal = inventory::journal_path(&config.inventory_path());
            inventory = match inventory.with_journal(&journal) {
                Ok(inv) => inv,
                Err(e) => {
                    tracing::warn!(
                        "no inventory journal at {} ({e}): objects acknowledged in the last moments before a crash of this client and the master together can be lost",
                        journal.display()
                    );
                    Inventory::new(segment_id, entries)
                }
            };
        }
        let config_token = config.cluster_token.clone();
        let sockbuf = config.transfer_sockbuf;
        let same_host = config.same_host_transfers;
        let client = Arc::new(RealClient {
            config,
            client_id,
            segment,
            master: RwLock::new(None),
            master_address: Mutex::new(None),
            leader,
            master_generation: tokio::sync::watch::Sender::new(0),
            reconnecting: tokio::sync::Mutex::new(()),
            connected_view: Mutex::new(None),
            master_view: std::sync::atomic::AtomicU64::new(0),
            local_master: local_master.map(mooncake_master::rpc::MasterRpc::new),
            inventory: Mutex::new(inventory),
            pending: Mutex::new(HashMap::default()),
            local_space: Default::default(),
            exist_index: Default::default(),
            healthy: AtomicBool::new(false),
            transport: transport.unwrap_or_else(|| {
                let tcp = TcpTransport::new(config_token.clone()).with_sockbuf(sockbuf);
                Arc::new(match same_host {
                    true => tcp.with_same_host(tokio::runtime::Handle::current(), &config_token),
                    false => tcp,
                })
            }),
            transfer_server: transfer_server.map(Arc::new),
            metrics: ClientMetrics::default(),
            shutdown,
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            running_replica_tasks: AtomicBool::new(false),
            extra_segments: Mutex::new(Vec::new()),
            held_releases: Mutex::new(Vec::new()),
            disk,
            _segment_lock: segment_lock,
        });
        client.persist();
        if let Some(server) = &client.transfer_server {
            let owner = Arc::downgrade(&client);
            server.on_landed(Box::new(move |segment, objects| {
                if let Some(client) = owner.upgrade() {
                    client.record_landed(segment, objects);
                }
            }));
        }
        if let Err(e) = client.connect_and_remount().await {
            tracing::warn!(
                "master {} not reachable yet: {e:#}",
                client.config.master_server_address
            );
        }
        client.spawn_task(client.clone().heartbeat());
        if client.disk.is_some() {
            client.spawn_task(client.clone().poll_offloads());
        }
        if client.leader.is_some() {
            client.spawn_task(client.clone().follow_leader());
        }
        client.spawn_task(client.clone().inventory_sync());
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

    /// The runtime the client runs on.
    pub fn runtime_handle(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Starts a background task on the client's runtime, tracked for shutdown.
    fn spawn_task<F>(&self, task: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn_on(task, &self.runtime);
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

    /// Bytes this client copied through other real clients' segments mapped
    /// here (same host), instead of over TCP: `(read, written)`.
    pub fn same_host_bytes(&self) -> (u64, u64) {
        self.transport.same_host_bytes()
    }

    /// The transfer port's address, when this client has a segment.
    pub fn transfer_addr(&self) -> Option<std::net::SocketAddr> {
        self.transfer_server.as_ref().map(|s| s.local_addr())
    }

    /// Lets real clients on this host map the global segment through the Unix
    /// socket at `socket` (see `--same_host_transfers`).
    pub fn offer_same_host(&self, socket: &std::path::Path) {
        if let (true, Some(server), Some(_)) = (
            self.config.same_host_transfers,
            &self.transfer_server,
            &self.segment,
        ) {
            server.offer_same_host(socket);
        }
    }

    /// Records objects a peer wrote into this client's segment (its landed note).
    fn record_landed(&self, segment: SegmentId, objects: Vec<Landed>) {
        let mut inv = match &self.disk {
            Some(disk) if disk.desc.id == segment => disk.inventory.lock(),
            _ => self.inventory.lock(),
        };
        for o in objects {
            inv.add(InventoryEntry {
                segment_id: segment,
                key: o.key,
                offset: o.offset,
                size: o.size,
                version: o.version,
            });
        }
        // On disk before the writer hears back.
        inv.flush();
    }

    /// Objects recorded in the inventory.
    pub fn inventory_len(&self) -> usize {
        self.inventory.lock().len()
    }

    /// The disk tier, when this client has one.
    pub fn disk(&self) -> Option<&Arc<crate::disk::DiskTier>> {
        self.disk.as_ref()
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
        if let Some(disk) = &self.disk {
            if let Ok(master) = self.master() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(3),
                    master.unmount_segment(self.client_id, disk.desc.id),
                )
                .await;
            }
            disk.release();
        }
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
}
