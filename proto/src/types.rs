//! Wire types shared by the master, real clients and dummy clients.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identity of one client process (real client or embedded client), a random UUID
/// generated when the process starts.
pub type ClientId = Uuid;

/// Identity of one mounted memory segment.
pub type SegmentId = Uuid;

/// Default limit on key length, in bytes (configurable on the master). Upstream
/// sets none (a 5 000-byte key works there); this bound keeps every frame bounded.
pub const DEFAULT_MAX_KEY_LEN: usize = 64 << 10;

/// Transport a segment is reachable with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP transfer engine.
    #[default]
    Tcp,
    /// RDMA transfer engine (not built yet).
    Rdma,
}

impl Protocol {
    /// Upstream spelling: `tcp` or `rdma`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Rdma => "rdma",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "rdma" => Ok(Protocol::Rdma),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }
}

/// A transport name that is neither `tcp` nor `rdma`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected tcp or rdma)")]
pub struct UnknownProtocol(pub String);

/// What a segment's bytes live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Medium {
    /// Memory (`/dev/shm`, a memfd, huge pages): writes are placed here.
    #[default]
    Memory,
    /// A file on the owner's local disk (upstream's LOCAL_DISK replicas): holds
    /// copies offloaded from memory, never a write's first replica.
    Disk,
}

impl Medium {
    /// Upstream's spelling of the replica kind: `MEMORY` or `LOCAL_DISK`.
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::Memory => "MEMORY",
            Medium::Disk => "LOCAL_DISK",
        }
    }
}

/// A contiguous memory region contributed to the pool by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentDesc {
    /// Unique id, chosen by the client and kept across its restarts when the
    /// segment file is re-attached.
    pub id: SegmentId,
    /// Human-readable name, used by `preferred_segments` (upstream: the client's
    /// `local_hostname`).
    pub name: String,
    /// Host the segment lives on (IP or hostname, without port); used for
    /// anti-affinity and `prefer_alloc_in_same_node`.
    pub host: String,
    /// Base address of the segment in the owner's address space (informational;
    /// replica descriptors report `base + offset` as `buffer_address`).
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Where the owner's transfer engine listens (`host:port`).
    pub transport_endpoint: String,
    /// Transport to reach it with.
    pub protocol: Protocol,
    /// Memory, or the owner's disk tier.
    pub medium: Medium,
}

/// Replica states, numbered as upstream's `ReplicaStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum ReplicaStatus {
    /// Not set.
    Undefined = 0,
    /// Allocated, not yet written.
    Initialized = 1,
    /// A write is in flight.
    Processing = 2,
    /// Readable.
    Complete = 3,
    /// Removed.
    Removed = 4,
    /// Failed.
    Failed = 5,
}

/// Where one replica of an object lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDesc {
    /// Segment holding the bytes.
    pub segment_id: SegmentId,
    /// Name of that segment.
    pub segment_name: String,
    /// Transfer endpoint of the segment's owner.
    pub transport_endpoint: String,
    /// Offset of the bytes inside the segment.
    pub offset: u64,
    /// `segment.base + offset`, upstream's `buffer_address`.
    pub buffer_address: u64,
    /// Length of the object in bytes.
    pub size: u64,
    /// Replica state.
    pub status: ReplicaStatus,
    /// Version stamped by the master when the write started; used to order
    /// inventories when metadata is rebuilt.
    pub version: u64,
    /// Memory, or the owner's disk tier (then `buffer_address` is an offset in
    /// the owner's disk file, readable only through its transfer port).
    pub medium: Medium,
}

/// Upstream's `SoftPinAction`: what an upsert does with an existing soft pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SoftPinAction {
    /// Keep whatever the object had (for a new object: follow `with_soft_pin`).
    #[default]
    Preserve,
    /// Soft-pin the object.
    Enable,
    /// Remove the soft pin.
    Disable,
}

/// How an object should be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateConfig {
    /// Number of memory replicas (each on a distinct segment). Must be ≥ 1.
    pub replica_num: u32,
    /// Soft-pin the object (evicted only when nothing else can be).
    pub with_soft_pin: bool,
    /// Soft-pin lifetime override in ms; `None` uses the master's default.
    pub soft_pin_ttl_ms: Option<u64>,
    /// Soft-pin handling for upserts.
    pub soft_pin_action: SoftPinAction,
    /// Never evict the object (a remove still deletes it, as upstream).
    pub with_hard_pin: bool,
    /// Segment names to try first, in order.
    pub preferred_segments: Vec<String>,
    /// Prefer segments on the writer's own host.
    pub prefer_alloc_in_same_node: bool,
    /// Optional group id per key of a batch (accepted for compatibility).
    pub group_ids: Vec<String>,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        ReplicateConfig {
            replica_num: 1,
            with_soft_pin: false,
            soft_pin_ttl_ms: None,
            soft_pin_action: SoftPinAction::Preserve,
            with_hard_pin: false,
            preferred_segments: Vec::new(),
            prefer_alloc_in_same_node: false,
            group_ids: Vec::new(),
        }
    }
}

impl ReplicateConfig {
    /// Sets `replica_num`.
    pub fn with_replica_num(mut self, replica_num: u32) -> Self {
        self.replica_num = replica_num;
        self
    }
    /// Sets the soft pin flag.
    pub fn with_soft_pin(mut self, on: bool) -> Self {
        self.with_soft_pin = on;
        self
    }
    /// Sets the hard pin flag.
    pub fn with_hard_pin(mut self, on: bool) -> Self {
        self.with_hard_pin = on;
        self
    }
    /// Sets the preferred segments.
    pub fn with_preferred_segments(mut self, names: Vec<String>) -> Self {
        self.preferred_segments = names;
        self
    }
    /// Whether this config asks for a soft pin on a new object.
    pub fn wants_soft_pin(&self) -> bool {
        self.with_soft_pin || self.soft_pin_action == SoftPinAction::Enable
    }
}

/// Answer to `get_replica_list`: the readable replicas and the lease granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaList {
    /// Object size in bytes.
    pub size: u64,
    /// Readable (COMPLETE) replicas.
    pub replicas: Vec<ReplicaDesc>,
    /// Lease granted to the reader, in ms from now; the reader must finish its
    /// transfer within it.
    pub lease_ttl_ms: u64,
}

/// Client state reported by `ping`, numbered as upstream's `ClientStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientStatus {
    /// Not known.
    Undefined,
    /// The master knows the client and its segments.
    Ok,
    /// The master does not know the client (it restarted, failed over, or expired
    /// the client): the client must call `remount_segment` with its inventory.
    NeedRemount,
}

/// Answer to `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// Identifies the master incarnation; changes when a new master takes over.
    pub view_version: u64,
    /// What the client must do.
    pub status: ClientStatus,
    /// Replica tasks queued for this client: fetch them with `fetch_tasks`.
    pub pending_tasks: u32,
}

/// Identity of a replica copy / move task.
pub type TaskId = Uuid;

/// Kind of a replica task, numbered as upstream's `TaskType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// Add replicas of an object on other segments.
    ReplicaCopy = 0,
    /// Move one replica of an object to another segment.
    ReplicaMove = 1,
}

/// State of a replica task, numbered as upstream's `TaskStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Queued for its client.
    Pending = 0,
    /// Fetched by its client, running.
    Processing = 1,
    /// Done.
    Success = 2,
    /// Failed; the message says why.
    Failed = 3,
}

impl TaskState {
    /// Whether the task will not change any more.
    pub fn finished(self) -> bool {
        matches!(self, TaskState::Success | TaskState::Failed)
    }
}

/// Answer to `query_task` (upstream's `QueryTaskResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task.
    pub id: TaskId,
    /// Copy or move.
    pub kind: TaskKind,
    /// Where it stands.
    pub state: TaskState,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last state change, ms since the Unix epoch.
    pub updated_at_ms: i64,
    /// The client that runs it (the owner of the source replica).
    pub assigned_client: ClientId,
    /// Outcome or error description.
    pub message: String,
}

/// A task handed to the client that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The task.
    pub id: TaskId,
    /// Copy or move.
    pub kind: TaskKind,
    /// Object key.
    pub key: String,
    /// Segment holding the replica to copy from (owned by the assignee).
    pub source: SegmentId,
    /// Target segment names; empty = wherever the master places it.
    pub targets: Vec<String>,
}

/// Answer to `replica_copy_start`: where to read and where to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCopyPlan {
    /// The replica to read (in the caller's segment).
    pub source: ReplicaDesc,
    /// The new replicas to write (PROCESSING until `replica_copy_end`); may be
    /// empty when every target already holds a replica.
    pub targets: Vec<ReplicaDesc>,
    /// A version the master issued for this copy, newer than every version it
    /// had issued before: the copy's writes and landed notes carry it, so a
    /// holder that has since remounted with a later master instance (whose
    /// version floor is above it) refuses them instead of letting them land on
    /// space that master may have handed out again. The copied object keeps
    /// its own `version`.
    pub write_version: u64,
}

/// A write placed by its writer in space granted by `grant_space`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitItem {
    /// Object key.
    pub key: String,
    /// Offset of the bytes inside the segment.
    pub offset: u64,
    /// Object size in bytes.
    pub size: u64,
}

/// One object held in a client's segment, as the client remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InventoryEntry {
    /// Segment holding the bytes.
    pub segment_id: SegmentId,
    /// Object key.
    pub key: String,
    /// Offset inside the segment.
    pub offset: u64,
    /// Object size in bytes.
    pub size: u64,
    /// Version the master stamped on the write.
    pub version: u64,
}

/// A change to a client's inventory, pushed by the master (writes by other
/// clients into this client's segment, removals, evictions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryChange {
    /// A write into the client's segment completed.
    Added(InventoryEntry),
    /// The object at `offset` with `version` is gone (removed, evicted or
    /// replaced); the client forgets it only if its entry has the same version.
    Removed {
        /// Segment.
        segment_id: SegmentId,
        /// Offset inside the segment.
        offset: u64,
        /// Version of the object that is gone.
        version: u64,
    },
}

/// Answer to `sync_inventory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDelta {
    /// Sequence number of the last change included; acknowledge it next time.
    pub seq: u64,
    /// The changes after the acknowledged sequence number, oldest first.
    pub changes: Vec<InventoryChange>,
    /// The master cannot send a delta (first sync, or the log overflowed): the
    /// client must replace its inventory with `fetch_inventory`.
    pub resync_required: bool,
}

/// Answer to `fetch_inventory`: every complete object in the client's segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySnapshot {
    /// Sequence number the snapshot corresponds to; sync from here on.
    pub seq: u64,
    /// The objects.
    pub entries: Vec<InventoryEntry>,
}

/// Answer to `remount_segment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemountReport {
    /// Objects whose metadata was rebuilt from the inventory.
    pub restored: u64,
    /// Inventory entries the master refused (overlapping ranges, size conflicts with
    /// a newer version, unknown segment): the client must forget them.
    pub rejected: Vec<InventoryEntry>,
    /// Sequence number to acknowledge in the next `sync_inventory`.
    pub inventory_seq: u64,
    /// This master instance (its `view_version`): a change means a new master,
    /// which knows nothing of writes started with the previous one.
    pub master_view: u64,
    /// Every write this master starts from now on has a version at least this:
    /// writes of an older version reaching the segment were started with a
    /// previous master and must not land on space this one may have handed out.
    pub version_floor: u64,
}
