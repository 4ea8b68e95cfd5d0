//! The tarpc service of `mooncake_master`.
//!
//! Every call returns [`MResult`]; batch calls return one result per input item, in
//! input order, so a caller can always zip results with its keys.

use crate::error::MResult;
use crate::types::*;

/// The master's RPC surface (upstream's `WrappedMasterService`).
#[tarpc::service]
pub trait Master {
    /// Connection probe; returns the master's version string.
    async fn service_ready() -> String;

    /// Starts a write: allocates `replica_num` replicas of `size` bytes on distinct
    /// segments. Errors: `OBJECT_ALREADY_EXISTS` (complete, or a write younger than the
    /// discard timeout), `NO_AVAILABLE_HANDLE` (no space even after eviction),
    /// `INVALID_KEY`, `INVALID_PARAMS`.
    async fn put_start(
        client_id: ClientId,
        key: String,
        size: u64,
        config: ReplicateConfig,
    ) -> MResult<Vec<ReplicaDesc>>;
    /// Makes a started write readable. Idempotent once complete; `ILLEGAL_CLIENT`
    /// when called by another client than the writer.
    async fn put_end(client_id: ClientId, key: String) -> MResult<()>;
    /// Abandons a started write and frees its space.
    async fn put_revoke(client_id: ClientId, key: String) -> MResult<()>;
    /// Batch form of `put_start`, one shared config.
    async fn batch_put_start(
        client_id: ClientId,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
    ) -> Vec<MResult<Vec<ReplicaDesc>>>;
    /// Batch form of `put_end`.
    async fn batch_put_end(client_id: ClientId, keys: Vec<String>) -> Vec<MResult<()>>;
    /// Batch `put_end` where, per key, the replicas on the listed segments failed
    /// to be written: they are dropped and the rest become readable (a key whose
    /// replicas all failed is revoked and gets `TRANSFER_FAIL`).
    async fn batch_put_end_except(
        client_id: ClientId,
        keys: Vec<String>,
        failed: Vec<Vec<SegmentId>>,
    ) -> Vec<MResult<()>>;
    /// Batch form of `put_revoke`.
    async fn batch_put_revoke(client_id: ClientId, keys: Vec<String>) -> Vec<MResult<()>>;

    /// Reserves `len` bytes of the caller's own memory segment for writes it
    /// places itself (answered: offset and length). The space counts as used
    /// until objects are committed in it or it is given back; a remount of the
    /// segment forgets every grant. `NO_AVAILABLE_HANDLE` when there is no room
    /// even after eviction or the segment is drained.
    ///
    /// `epoch` is the caller's grant epoch, a number it changes whenever a
    /// remount may have freed its grants: commits and returns name it, and
    /// match only space granted in the same epoch, so a write placed before a
    /// remount can never be committed into the same bytes granted after it.
    async fn grant_space(
        client_id: ClientId,
        segment_id: SegmentId,
        len: u64,
        epoch: u64,
    ) -> MResult<(u64, u64)>;
    /// Makes writes the caller placed in granted space readable, one round trip
    /// per batch (one memory replica each, in `segment_id`); per item the
    /// version given. The item's range leaves the grant whatever the answer;
    /// its space is freed again unless the item is committed.
    /// `OBJECT_ALREADY_EXISTS` for a key that exists or is being written,
    /// `INVALID_WRITE` for a range that is not granted (any more) in `epoch`.
    async fn batch_put_commit(
        client_id: ClientId,
        segment_id: SegmentId,
        epoch: u64,
        items: Vec<CommitItem>,
        config: ReplicateConfig,
    ) -> Vec<MResult<u64>>;
    /// Gives back space granted in `epoch` that will not be used; ranges not
    /// granted in it are ignored.
    async fn return_space(
        client_id: ClientId,
        segment_id: SegmentId,
        epoch: u64,
        ranges: Vec<(u64, u64)>,
    ) -> MResult<()>;

    /// Starts an insert-or-replace. Readers keep seeing the old value until
    /// `upsert_end`; its space is reclaimed once no read lease covers it.
    async fn upsert_start(
        client_id: ClientId,
        key: String,
        size: u64,
        config: ReplicateConfig,
    ) -> MResult<Vec<ReplicaDesc>>;
    /// Ends an upsert (same as `put_end`).
    async fn upsert_end(client_id: ClientId, key: String) -> MResult<()>;
    /// Revokes an upsert; the old value stays.
    async fn upsert_revoke(client_id: ClientId, key: String) -> MResult<()>;
    /// Batch form of `upsert_start`.
    async fn batch_upsert_start(
        client_id: ClientId,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
    ) -> Vec<MResult<Vec<ReplicaDesc>>>;
    /// Batch form of `upsert_end`.
    async fn batch_upsert_end(client_id: ClientId, keys: Vec<String>) -> Vec<MResult<()>>;
    /// Batch form of `upsert_revoke`.
    async fn batch_upsert_revoke(client_id: ClientId, keys: Vec<String>) -> Vec<MResult<()>>;

    /// Readable replicas of a complete object; grants a read lease.
    /// `REPLICA_IS_NOT_READY` while only an unfinished write exists.
    async fn get_replica_list(key: String) -> MResult<ReplicaList>;
    /// Batch form of `get_replica_list`.
    async fn batch_get_replica_list(keys: Vec<String>) -> Vec<MResult<ReplicaList>>;
    /// `batch_release_reads(released)` then `batch_get_replica_list(keys)`, in one
    /// round trip: a reader's next lookup carries the grants it is done with.
    async fn batch_get_replica_list_releasing(
        keys: Vec<String>,
        released: Vec<(String, u64)>,
    ) -> Vec<MResult<ReplicaList>>;
    /// The reader is done with the values it was granted, `(key, version)` per
    /// grant: a value replaced or removed meanwhile is freed once its last reader
    /// is done instead of when the lease ends.
    async fn batch_release_reads(reads: Vec<(String, u64)>);
    /// Replica lists of every complete object whose key matches the regex.
    async fn get_replica_list_by_regex(pattern: String) -> MResult<Vec<(String, ReplicaList)>>;

    /// Whether a complete object exists. Refreshes access recency but grants no
    /// lease, so probes never make objects unevictable.
    async fn exist_key(key: String) -> MResult<bool>;
    /// Batch form of `exist_key`.
    async fn batch_exist_key(keys: Vec<String>) -> Vec<MResult<bool>>;
    /// Size of a complete object.
    async fn get_size(key: String) -> MResult<u64>;

    /// Removes an object. Without `force`, a leased object gives `OBJECT_HAS_LEASE`;
    /// an unfinished write gives `REPLICA_IS_NOT_READY` either way.
    async fn remove(key: String, force: bool) -> MResult<()>;
    /// Removes every complete object whose key matches; returns the count.
    async fn remove_by_regex(pattern: String, force: bool) -> MResult<u64>;
    /// Removes every complete object (leased ones only with `force`); returns the count.
    async fn remove_all(force: bool) -> MResult<u64>;
    /// Batch form of `remove`.
    async fn batch_remove(keys: Vec<String>, force: bool) -> Vec<MResult<()>>;

    /// Drops the replicas `client_id` holds of `keys` (on its segment named
    /// `segment_name`, or all its segments when empty) for objects without a
    /// read lease, pin or replacement in flight; returns the keys cleared.
    async fn batch_replica_clear(
        keys: Vec<String>,
        client_id: ClientId,
        segment_name: String,
    ) -> MResult<Vec<String>>;

    /// Adds a segment to the pool. Idempotent for the same id and size.
    async fn mount_segment(client_id: ClientId, segment: SegmentDesc) -> MResult<()>;
    /// Re-registers segments after the master forgot the client, with the objects
    /// the client holds. `inventory_complete = false` sends more entries in later
    /// calls; the segments serve allocations only once the last chunk arrived.
    async fn remount_segment(
        client_id: ClientId,
        segments: Vec<SegmentDesc>,
        inventory: Vec<InventoryEntry>,
        inventory_complete: bool,
    ) -> MResult<RemountReport>;
    /// Removes a segment; every replica on it is dropped.
    async fn unmount_segment(client_id: ClientId, segment_id: SegmentId) -> MResult<()>;
    /// Liveness heartbeat (every second).
    async fn ping(client_id: ClientId) -> MResult<PingResponse>;
    /// How many dummy clients the real client serves now (sent when it changes;
    /// the master shows the total in its metrics and dashboard).
    async fn report_load(client_id: ClientId, dummies: u64) -> MResult<()>;
    /// Changes to the objects in the client's segments after `ack_seq`.
    async fn sync_inventory(client_id: ClientId, ack_seq: u64) -> MResult<InventoryDelta>;
    /// Every complete object in the client's segments.
    async fn fetch_inventory(client_id: ClientId) -> MResult<InventorySnapshot>;
    /// Every mounted segment.
    async fn get_all_segments() -> Vec<SegmentDesc>;

    /// Queues a task adding replicas of `key` on the segments named `targets`,
    /// run by the owner of one of its replicas. `INVALID_PARAMS` for no targets or
    /// an unknown target, `OBJECT_NOT_FOUND`, `TASK_PENDING_LIMIT_EXCEEDED`.
    async fn create_copy_task(key: String, targets: Vec<String>) -> MResult<TaskId>;
    /// Queues a task moving the replica of `key` on segment `source` to segment
    /// `target`, run by the owner of `source`.
    async fn create_move_task(key: String, source: String, target: String) -> MResult<TaskId>;
    /// A task's state; `TASK_NOT_FOUND` for unknown (or long finished) ids.
    async fn query_task(id: TaskId) -> MResult<TaskInfo>;
    /// Up to `max` queued tasks of `client`; they become PROCESSING.
    async fn fetch_tasks(client_id: ClientId, max: u32) -> MResult<Vec<TaskAssignment>>;
    /// Reports the outcome of a fetched task.
    async fn complete_task(
        client_id: ClientId,
        id: TaskId,
        success: bool,
        message: String,
    ) -> MResult<()>;
    /// Starts copying the replica of `key` on `source` (a segment of the caller)
    /// to new replicas on `targets` (names; empty = placed by the master on a
    /// segment without a replica). With `remove_source` the source replica is
    /// dropped at `replica_copy_end` (a move). `OBJECT_HAS_REPLICATION_TASK` while
    /// another copy of the key runs.
    async fn replica_copy_start(
        client_id: ClientId,
        key: String,
        source: SegmentId,
        targets: Vec<String>,
        remove_source: bool,
    ) -> MResult<ReplicaCopyPlan>;
    /// Makes the written replicas readable, except those on `failed` segments.
    /// `TRANSFER_FAIL` when every new replica failed; `REPLICA_IS_GONE` when the
    /// object was replaced or removed meanwhile (the new replicas are dropped).
    async fn replica_copy_end(
        client_id: ClientId,
        key: String,
        failed: Vec<SegmentId>,
    ) -> MResult<()>;
    /// Abandons a started copy and frees its new replicas.
    async fn replica_copy_revoke(client_id: ClientId, key: String) -> MResult<()>;
}
