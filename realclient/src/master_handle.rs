//! [`MasterHandle`]: the master as the real client sees it, either remote (tarpc over
//! TCP) or embedded in this process (`--embedded-master`), where calls go straight to
//! the master's service implementation: same code and metrics, no socket round trip.

use mooncake_master::rpc::MasterRpc;
use mooncake_proto::master::{Master, MasterClient};
use mooncake_proto::*;
use tarpc::context;

/// A connection to the master.
#[derive(Clone)]
pub enum MasterHandle {
    /// Over the network.
    Remote(MasterClient),
    /// In this process.
    Local(MasterRpc),
}

/// The context of calls to the master in this process, which reads nothing
/// from it: made once instead of a clock read and a trace id per call.
static LOCAL_CONTEXT: std::sync::LazyLock<context::Context> =
    std::sync::LazyLock::new(context::current);

fn rpc_code(e: &tarpc::client::RpcError) -> ErrorCode {
    match e {
        tarpc::client::RpcError::DeadlineExceeded => ErrorCode::RpcTimeout,
        _ => ErrorCode::RpcFail,
    }
}

macro_rules! forward {
    ($( $(#[$doc:meta])* fn $name:ident( $($arg:ident : $ty:ty),* ) -> $kind:ident $ret:ty; )*) => {
        impl MasterHandle {
            $(
                $(#[$doc])*
                pub async fn $name(&self, $($arg: $ty),*) -> MResult<$ret> {
                    let answer = match self {
                        MasterHandle::Remote(c) => c
                            .$name(context::current(), $($arg),*)
                            .await
                            .map_err(|e| rpc_code(&e)),
                        MasterHandle::Local(s) => Ok(Master::$name(s.clone(), *LOCAL_CONTEXT, $($arg),*).await),
                    };
                    forward!(@$kind answer)
                }
            )*
        }
    };
    // The master answers `MResult<T>`: transport and master errors come back flat.
    (@flat $answer:ident) => { $answer? };
    // The master answers per-key lists (or nothing): only the transport can fail.
    (@list $answer:ident) => { $answer };
}

forward! {
    /// `remount_segment`.
    fn remount_segment(client: ClientId, segments: Vec<SegmentDesc>, inventory: Vec<InventoryEntry>, complete: bool) -> flat RemountReport;
    /// `ping`.
    fn ping(client: ClientId) -> flat PingResponse;
    /// `report_load`.
    fn report_load(client: ClientId, dummies: u64) -> flat ();
    /// `sync_inventory`.
    fn sync_inventory(client: ClientId, ack: u64) -> flat InventoryDelta;
    /// `fetch_inventory`.
    fn fetch_inventory(client: ClientId) -> flat InventorySnapshot;
    /// `mount_segment`.
    fn mount_segment(client: ClientId, segment: SegmentDesc) -> flat ();
    /// `unmount_segment`.
    fn unmount_segment(client: ClientId, segment: SegmentId) -> flat ();
    /// `batch_put_start`.
    fn batch_put_start(client: ClientId, keys: Vec<String>, sizes: Vec<u64>, config: ReplicateConfig) -> list Vec<MResult<Vec<ReplicaDesc>>>;
    /// `batch_upsert_start`.
    fn batch_upsert_start(client: ClientId, keys: Vec<String>, sizes: Vec<u64>, config: ReplicateConfig) -> list Vec<MResult<Vec<ReplicaDesc>>>;
    /// `batch_put_end`.
    fn batch_put_end(client: ClientId, keys: Vec<String>) -> list Vec<MResult<()>>;
    /// `batch_put_end_except`.
    fn batch_put_end_except(client: ClientId, keys: Vec<String>, failed: Vec<Vec<SegmentId>>) -> list Vec<MResult<()>>;
    /// `grant_space`.
    fn grant_space(client: ClientId, segment: SegmentId, len: u64, epoch: u64) -> flat (u64, u64);
    /// `batch_put_commit`.
    fn batch_put_commit(client: ClientId, segment: SegmentId, epoch: u64, items: Vec<CommitItem>, config: ReplicateConfig) -> list Vec<MResult<u64>>;
    /// `return_space`.
    fn return_space(client: ClientId, segment: SegmentId, epoch: u64, ranges: Vec<(u64, u64)>) -> flat ();
    /// `batch_put_revoke`.
    fn batch_put_revoke(client: ClientId, keys: Vec<String>) -> list Vec<MResult<()>>;
    /// `batch_get_replica_list`.
    fn batch_get_replica_list(keys: Vec<String>) -> list Vec<MResult<ReplicaList>>;
    /// `batch_get_replica_list_releasing`.
    fn batch_get_replica_list_releasing(keys: Vec<String>, released: Vec<(String, u64)>) -> list Vec<MResult<ReplicaList>>;
    /// `batch_release_reads`.
    fn batch_release_reads(reads: Vec<(String, u64)>) -> list ();
    /// `get_all_segments`.
    fn get_all_segments() -> list Vec<SegmentDesc>;
    /// `batch_exist_key`.
    fn batch_exist_key(keys: Vec<String>) -> list Vec<MResult<bool>>;
    /// `get_size`.
    fn get_size(key: String) -> flat u64;
    /// `batch_remove`.
    fn batch_remove(keys: Vec<String>, force: bool) -> list Vec<MResult<()>>;
    /// `remove_by_regex`.
    fn remove_by_regex(pattern: String, force: bool) -> flat u64;
    /// `remove_all`.
    fn remove_all(force: bool) -> flat u64;
    /// `create_copy_task`.
    fn create_copy_task(key: String, targets: Vec<String>) -> flat TaskId;
    /// `create_move_task`.
    fn create_move_task(key: String, source: String, target: String) -> flat TaskId;
    /// `query_task`.
    fn query_task(id: TaskId) -> flat TaskInfo;
    /// `fetch_tasks`.
    fn fetch_tasks(client: ClientId, max: u32) -> flat Vec<TaskAssignment>;
    /// `complete_task`.
    fn complete_task(client: ClientId, id: TaskId, success: bool, message: String) -> flat ();
    /// `replica_copy_start`.
    fn replica_copy_start(client: ClientId, key: String, source: SegmentId, targets: Vec<String>, remove_source: bool) -> flat ReplicaCopyPlan;
    /// `replica_copy_end`.
    fn replica_copy_end(client: ClientId, key: String, failed: Vec<SegmentId>) -> flat ();
    /// `replica_copy_revoke`.
    fn replica_copy_revoke(client: ClientId, key: String) -> flat ();
    /// `batch_replica_clear`.
    fn batch_replica_clear(keys: Vec<String>, client_id: ClientId, segment_name: String) -> flat Vec<String>;
}
