//! The tarpc service a real client (`mooncake_client`) offers to dummy clients on its
//! Unix socket (and to tools on TCP `--host:--port`).
//!
//! Batch calls take one list of keys and return one result per key, in order. The
//! real client is the writer towards the master: dummies are stateless and may die at
//! any time without leaving writes attributed to them.

use crate::error::MResult;
use crate::types::*;
use serde::{Deserialize, Serialize};

/// What a dummy needs to know about its real client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealClientInfo {
    /// The real client's id towards the master.
    pub client_id: ClientId,
    /// Its segment (none when it contributes no memory).
    pub segment: Option<SegmentDesc>,
    /// Name of the IPC export holding the segment's fd.
    pub segment_export: String,
    /// The hostname used as segment name (`get_hostname`).
    pub hostname: String,
    /// Its disk tier, when it has one: a dummy that maps the exports
    /// [`DISK_DATA_EXPORT`], [`DISK_SUMS_EXPORT`] and [`DISK_STATS_EXPORT`] reads
    /// objects there itself (see [`RealClientService::get_into`]).
    pub disk: Option<SegmentDesc>,
}

/// IPC export of the disk tier's data file.
pub const DISK_DATA_EXPORT: &str = "disk";
/// IPC export of the disk tier's block checksums.
pub const DISK_SUMS_EXPORT: &str = "disk-sums";
/// IPC export of the disk tier's shared read and write counters.
pub const DISK_STATS_EXPORT: &str = "disk-stats";

/// A range of a dummy's registered memory, in the dummy's own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufRef {
    /// Address in the dummy process.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// How a dummy's part of a write went, for [`RealClientService::put_complete`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCompletion {
    /// The key being written.
    pub key: String,
    /// The dummy could not write the replica in the local segment.
    pub local_failed: bool,
    /// Registered buffers holding the value, in order; the real client sends them
    /// to the replicas on other hosts. Empty when there are none.
    pub sources: Vec<BufRef>,
}

/// Per-key answer of [`RealClientService::get_into`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GetOutcome {
    /// A replica is in the local segment (or the local disk tier, when the dummy
    /// said it maps it): the dummy copies it (under the lease).
    Local(ReplicaList),
    /// The real client already moved this many bytes into the given buffers.
    Done(u64),
    /// Only remote replicas, and no registered destination was given or the one
    /// given is smaller than the object: the lease is held for the dummy, which
    /// reads the object in another call or releases it.
    Remote(ReplicaList),
}

/// One range of an object and the dummy memory it moves from or to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRef {
    /// First byte of the range inside the object.
    pub object_offset: u64,
    /// The dummy's registered memory (its length is the range's length).
    pub buf: BufRef,
}

/// The ranges of one object for [`RealClientService::transfer_ranges`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeTransfer {
    /// The object.
    pub key: String,
    /// Reads: the readable replicas the dummy obtained with its lease, tried in
    /// turn. Ignored for writes, which go to the replicas of the real client's
    /// own pending write of `key`.
    pub replicas: Vec<ReplicaDesc>,
    /// Reads: milliseconds left on the dummy's lease; nothing is read past it.
    pub lease_left_ms: u64,
    /// The ranges.
    pub ranges: Vec<RangeRef>,
}

/// A call on the shared-memory fast path (a `CallRing` the dummy created and
/// attached with [`RealClientService::attach_ring`]); postcard-encoded. Same
/// semantics as the RPC of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum RingRequest {
    Ping,
    Exist(Vec<String>),
    GetSize(String),
    GetInto {
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
        released: Vec<(String, u64)>,
        local_disk: bool,
    },
    PutStart {
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
        upsert: bool,
        place: bool,
    },
    PutComplete(Vec<PutCompletion>),
    PutDirect {
        items: Vec<(String, Vec<BufRef>)>,
        config: ReplicateConfig,
        upsert: bool,
    },
    Remove {
        keys: Vec<String>,
        force: bool,
    },
    ReleaseReads(Vec<(String, u64)>),
}

/// The answer to a [`RingRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum RingResponse {
    Unit(MResult<()>),
    Bools(Vec<MResult<bool>>),
    Size(MResult<u64>),
    Outcomes(Vec<MResult<GetOutcome>>),
    Started(Vec<MResult<Vec<ReplicaDesc>>>),
    Units(Vec<MResult<()>>),
    /// The answer did not fit the ring's response slot: repeat the call over RPC.
    TooLarge,
    /// The request could not be decoded.
    Malformed,
}

/// The real client's RPC surface for dummies.
#[tarpc::service]
pub trait RealClientService {
    /// Connection probe; returns the version string.
    async fn service_ready() -> String;
    /// Identity, segment and export name.
    async fn info() -> RealClientInfo;
    /// `Ok` when the real client is connected to a master.
    async fn ping() -> MResult<()>;
    /// Says this connection is another real client on this host, which maps the
    /// segment to copy its own transfers with this one (not a dummy): it is
    /// counted apart from the dummies.
    async fn attach_peer() -> MResult<()>;
    /// Says this connection comes from a client running inside the real
    /// client's own process, which will name its own memory (plain bytes,
    /// buffers it registered without a mapping) for the real client to copy
    /// straight to or from, instead of staging it in shared memory. Granted
    /// (`Ok`) only when the connection's peer is this very process; else
    /// `INVALID_PARAMS`.
    async fn use_process_memory() -> MResult<()>;
    /// Starts writes (`upsert` replaces existing values). Existing keys give
    /// `OBJECT_ALREADY_EXISTS` for plain puts.
    ///
    /// `place`: a write the real client may place in space the master granted
    /// it ahead of time (plain puts): an existing key is then found at
    /// `put_complete` (which succeeds, keeping the value) rather than here.
    /// Put sessions, which must hear of an existing key at the start, say false.
    async fn put_start(
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
        upsert: bool,
        place: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>>;
    /// Ends writes whose bytes are in place.
    async fn put_end(keys: Vec<String>) -> Vec<MResult<()>>;
    /// Finishes writes started with `put_start`: sends the value to replicas on
    /// other hosts from the dummy's registered `sources`, drops replicas that could
    /// not be written, and ends the write (one master call for the batch). A key
    /// succeeds when at least one replica was written.
    async fn put_complete(items: Vec<PutCompletion>) -> Vec<MResult<()>>;
    /// A whole write in one call, for small values in registered memory: starts
    /// the writes, copies each value into this client's segment itself (the dummy
    /// would pay a second round trip to do it), sends it to replicas on other
    /// hosts, and ends the writes. One result per item, as `put_start` and
    /// `put_complete` together would give.
    async fn put_direct(
        items: Vec<(String, Vec<BufRef>)>,
        config: ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>>;
    /// Reads objects: per key, either a local replica for the dummy to copy, or the
    /// bytes moved from a remote replica straight into the dummy's registered
    /// `dests` (an empty list = no destination). One master call for the batch.
    /// `released` carries grants of earlier reads this dummy has finished with
    /// (see [`release_reads`](RealClientService::release_reads)), so releasing costs
    /// no call of its own. `local_disk`: the dummy maps this client's disk tier
    /// (see [`RealClientInfo::disk`]), so a replica there is `Local` too, for the
    /// dummy to read and check itself.
    async fn get_into(
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
        released: Vec<(String, u64)>,
        local_disk: bool,
    ) -> Vec<MResult<GetOutcome>>;
    /// Serves a `CallRing` the dummy created in memory it registered at
    /// `client_base`: later calls may go through it instead of this socket.
    async fn attach_ring(client_base: u64) -> MResult<()>;
    /// Moves ranges of objects between the dummy's registered memory and the
    /// replicas on other hosts (replicas in the local segment are the dummy's to
    /// copy). `write`: into a write started with `put_start` and not yet completed;
    /// a later `put_complete` without sources then ends it, dropping replicas
    /// whose range writes failed. Per item the bytes moved, or an error.
    async fn transfer_ranges(write: bool, items: Vec<RangeTransfer>) -> Vec<MResult<u64>>;
    /// Drops this real client's replicas of `keys` (on its segment named
    /// `segment_name`, or all when empty) whose objects no reader holds; returns
    /// the keys cleared.
    async fn replica_clear(keys: Vec<String>, segment_name: String) -> MResult<Vec<String>>;
    /// Queues a task copying `key` to the segments named `targets`.
    async fn create_copy_task(key: String, targets: Vec<String>) -> MResult<TaskId>;
    /// Queues a task moving `key`'s replica on segment `source` to `target`.
    async fn create_move_task(key: String, source: String, target: String) -> MResult<TaskId>;
    /// A replica task's state.
    async fn query_task(id: TaskId) -> MResult<TaskInfo>;
    /// Maps `size` bytes at `offset` of the shared-memory file `path` in the
    /// real client and contributes them to the pool as one more segment.
    async fn mount_segment(
        path: String,
        size: u64,
        offset: u64,
        protocol: String,
    ) -> MResult<Vec<SegmentId>>;
    /// Allocates `size` bytes in the real client (rounded up to pages) and
    /// contributes them as a segment: the ids and the size allocated.
    async fn allocate_and_mount_segment(
        size: u64,
        protocol: String,
    ) -> MResult<(Vec<SegmentId>, u64)>;
    /// Unmounts segments mounted by `mount_segment` (`allocated = false`) or
    /// `allocate_and_mount_segment` (`allocated = true`, memory freed), after
    /// `grace_ms` when non-zero (the call returns at once).
    async fn unmount_segment(ids: Vec<SegmentId>, grace_ms: u64, allocated: bool) -> MResult<()>;
    /// Abandons writes.
    async fn put_revoke(keys: Vec<String>) -> Vec<MResult<()>>;
    /// The dummy is done reading values it was handed as [`GetOutcome::Local`] or
    /// [`GetOutcome::Remote`], `(key, version)` each: their space may be reused.
    async fn release_reads(reads: Vec<(String, u64)>);
    /// Readable replicas, with a read lease.
    async fn get_replicas(keys: Vec<String>) -> Vec<MResult<ReplicaList>>;
    /// Existence.
    async fn exist(keys: Vec<String>) -> Vec<MResult<bool>>;
    /// Object size.
    async fn get_size(key: String) -> MResult<u64>;
    /// Removes objects.
    async fn remove(keys: Vec<String>, force: bool) -> Vec<MResult<()>>;
    /// Removes objects whose key matches; returns the count.
    async fn remove_by_regex(pattern: String, force: bool) -> MResult<u64>;
    /// Removes everything; returns the count.
    async fn remove_all(force: bool) -> MResult<u64>;
}
