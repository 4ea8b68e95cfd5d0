//! The master's tarpc server: accepts TCP connections, checks the handshake
//! (protocol version, service name, cluster token), then serves [`Master`] calls.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mooncake_daemon::GuardedListener;
use mooncake_daemon::rpc::serve_tarpc;
use mooncake_proto::auth::Credentials;
use mooncake_proto::codec::transport;
use mooncake_proto::limits::ConnectionLimiter;
use mooncake_proto::master::Master;
use mooncake_proto::*;

use crate::ha::TermGate;
use crate::metrics::Op;
use crate::service::MasterService;

/// Per-connection handler; cheap to clone.
#[derive(Clone)]
pub struct MasterRpc {
    svc: Arc<MasterService>,
    /// In HA mode, the term this service serves: calls are refused before it
    /// serves and once its lease is lost.
    gate: Option<Arc<TermGate>>,
}

impl MasterRpc {
    /// Wraps a service.
    pub fn new(svc: Arc<MasterService>) -> Self {
        MasterRpc { svc, gate: None }
    }

    /// Wraps a service that answers only while `gate` admits its calls.
    pub fn gated(svc: Arc<MasterService>, gate: Option<Arc<TermGate>>) -> Self {
        MasterRpc { svc, gate }
    }

    /// Whether the term admits `op` now (always, outside HA mode).
    fn admit(&self, op: Op) -> MResult<()> {
        match &self.gate {
            Some(gate) => gate.admit(op).inspect_err(|_| {
                self.svc.metrics.record(op, Default::default(), true, 0, 0);
            }),
            None => Ok(()),
        }
    }

    /// Whether the term's lease still holds after a call ran: an answer computed
    /// by a leader that was paused meanwhile is not given.
    fn still_leading(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.fence_holds())
    }

    fn timed<T>(&self, op: Op, f: impl FnOnce(&MasterService) -> MResult<T>) -> MResult<T> {
        self.admit(op)?;
        let start = Instant::now();
        let mut result = f(&self.svc);
        if !self.still_leading() {
            result = Err(ErrorCode::UnavailableInCurrentStatus);
        }
        self.svc
            .metrics
            .record(op, start.elapsed(), result.is_err(), 0, 0);
        result
    }

    fn timed_batch<T>(
        &self,
        op: Op,
        keys: usize,
        f: impl FnOnce(&MasterService) -> Vec<MResult<T>>,
    ) -> Vec<MResult<T>> {
        if let Err(code) = self.admit(op) {
            return (0..keys).map(|_| Err(code)).collect();
        }
        let start = Instant::now();
        let mut results = f(&self.svc);
        if !self.still_leading() {
            results = (0..keys)
                .map(|_| Err(ErrorCode::UnavailableInCurrentStatus))
                .collect();
        }
        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
        self.svc.metrics.record(
            op,
            start.elapsed(),
            failed > 0,
            results.len() as u64,
            failed,
        );
        results
    }

    fn batch_start(
        &self,
        op: Op,
        client_id: ClientId,
        keys: &[String],
        sizes: &[u64],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        self.timed_batch(op, keys.len(), |s| {
            if keys.len() != sizes.len() {
                return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
            }
            keys.iter()
                .zip(sizes)
                .map(|(k, size)| s.put_start(client_id, k, *size, config, upsert))
                .collect()
        })
    }
}

impl Master for MasterRpc {
    async fn service_ready(self, _: Context) -> String {
        VERSION.to_string()
    }

    async fn put_start(
        self,
        _: Context,
        client_id: ClientId,
        key: String,
        size: u64,
        config: ReplicateConfig,
    ) -> MResult<Vec<ReplicaDesc>> {
        self.timed(Op::PutStart, |s| {
            s.put_start(client_id, &key, size, &config, false)
        })
    }

    async fn put_end(self, _: Context, client_id: ClientId, key: String) -> MResult<()> {
        self.timed(Op::PutEnd, |s| s.put_end(client_id, &key))
    }

    async fn put_revoke(self, _: Context, client_id: ClientId, key: String) -> MResult<()> {
        self.timed(Op::PutRevoke, |s| s.put_revoke(client_id, &key))
    }

    async fn batch_put_start(
        self,
        _: Context,
        client_id: ClientId,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        self.batch_start(Op::BatchPutStart, client_id, &keys, &sizes, &config, false)
    }

    async fn batch_put_end(
        self,
        _: Context,
        client_id: ClientId,
        keys: Vec<String>,
    ) -> Vec<MResult<()>> {
        self.timed_batch(Op::BatchPutEnd, keys.len(), |s| {
            keys.iter().map(|k| s.put_end(client_id, k)).collect()
        })
    }

    async fn batch_put_end_except(
        self,
        _: Context,
        client_id: ClientId,
        keys: Vec<String>,
        failed: Vec<Vec<SegmentId>>,
    ) -> Vec<MResult<()>> {
        if failed.len() != keys.len() {
            return vec![Err(ErrorCode::InvalidParams); keys.len()];
        }
        self.timed_batch(Op::BatchPutEnd, keys.len(), |s| {
            keys.iter()
                .zip(&failed)
                .map(|(k, f)| s.put_end_except(client_id, k, f))
                .collect()
        })
    }

    async fn batch_put_revoke(
        self,
        _: Context,
        client_id: ClientId,
        keys: Vec<String>,
    ) -> Vec<MResult<()>> {
        self.timed_batch(Op::BatchPutRevoke, keys.len(), |s| {
            keys.iter().map(|k| s.put_revoke(client_id, k)).collect()
        })
    }

    async fn grant_space(
        self,
        _: Context,
        client_id: ClientId,
        segment_id: SegmentId,
        len: u64,
        epoch: u64,
    ) -> MResult<(u64, u64)> {
        self.timed(Op::GrantSpace, |s| {
            s.grant_space(client_id, segment_id, len, epoch)
        })
    }

    async fn batch_put_commit(
        self,
        _: Context,
        client_id: ClientId,
        segment_id: SegmentId,
        epoch: u64,
        items: Vec<CommitItem>,
        config: ReplicateConfig,
    ) -> Vec<MResult<u64>> {
        self.timed_batch(Op::BatchPutCommit, items.len(), |s| {
            items
                .iter()
                .map(|item| s.put_commit(client_id, segment_id, epoch, item, &config))
                .collect()
        })
    }

    async fn return_space(
        self,
        _: Context,
        client_id: ClientId,
        segment_id: SegmentId,
        epoch: u64,
        ranges: Vec<(u64, u64)>,
    ) -> MResult<()> {
        self.timed(Op::ReturnSpace, |s| {
            s.return_space(client_id, segment_id, epoch, &ranges)
        })
    }

    async fn upsert_start(
        self,
        _: Context,
        client_id: ClientId,
        key: String,
        size: u64,
        config: ReplicateConfig,
    ) -> MResult<Vec<ReplicaDesc>> {
        self.timed(Op::UpsertStart, |s| {
            s.put_start(client_id, &key, size, &config, true)
        })
    }

    async fn upsert_end(self, _: Context, client_id: ClientId, key: String) -> MResult<()> {
        self.timed(Op::PutEnd, |s| s.put_end(client_id, &key))
    }

    async fn upsert_revoke(self, _: Context, client_id: ClientId, key: String) -> MResult<()> {
        self.timed(Op::PutRevoke, |s| s.put_revoke(client_id, &key))
    }

    async fn batch_upsert_start(
        self,
        _: Context,
        client_id: ClientId,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        self.batch_start(
            Op::BatchUpsertStart,
            client_id,
            &keys,
            &sizes,
            &config,
            true,
        )
    }

    async fn batch_upsert_end(
        self,
        _: Context,
        client_id: ClientId,
        keys: Vec<String>,
    ) -> Vec<MResult<()>> {
        self.timed_batch(Op::BatchPutEnd, keys.len(), |s| {
            keys.iter().map(|k| s.put_end(client_id, k)).collect()
        })
    }

    async fn batch_upsert_revoke(
        self,
        _: Context,
        client_id: ClientId,
        keys: Vec<String>,
    ) -> Vec<MResult<()>> {
        self.timed_batch(Op::BatchPutRevoke, keys.len(), |s| {
            keys.iter().map(|k| s.put_revoke(client_id, k)).collect()
        })
    }

    async fn get_replica_list(self, _: Context, key: String) -> MResult<ReplicaList> {
        self.timed(Op::GetReplicaList, |s| s.get_replica_list(&key))
    }

    async fn batch_get_replica_list(
        self,
        _: Context,
        keys: Vec<String>,
    ) -> Vec<MResult<ReplicaList>> {
        self.timed_batch(Op::BatchGetReplicaList, keys.len(), |s| {
            keys.iter().map(|k| s.get_replica_list(k)).collect()
        })
    }

    async fn batch_get_replica_list_releasing(
        self,
        _: Context,
        keys: Vec<String>,
        released: Vec<(String, u64)>,
    ) -> Vec<MResult<ReplicaList>> {
        self.svc.release_reads(&released);
        self.timed_batch(Op::BatchGetReplicaList, keys.len(), |s| {
            keys.iter().map(|k| s.get_replica_list(k)).collect()
        })
    }

    async fn batch_release_reads(self, _: Context, reads: Vec<(String, u64)>) {
        self.svc.release_reads(&reads);
    }

    async fn get_replica_list_by_regex(
        self,
        _: Context,
        pattern: String,
    ) -> MResult<Vec<(String, ReplicaList)>> {
        self.timed(Op::GetReplicaListByRegex, |s| {
            s.get_replica_list_by_regex(&pattern)
        })
    }

    async fn exist_key(self, _: Context, key: String) -> MResult<bool> {
        self.timed(Op::ExistKey, |s| s.exist_key(&key))
    }

    async fn batch_exist_key(self, _: Context, keys: Vec<String>) -> Vec<MResult<bool>> {
        self.timed_batch(Op::BatchExistKey, keys.len(), |s| s.batch_exist_key(&keys))
    }

    async fn get_size(self, _: Context, key: String) -> MResult<u64> {
        self.timed(Op::GetSize, |s| s.get_size(&key))
    }

    async fn remove(self, _: Context, key: String, force: bool) -> MResult<()> {
        self.timed(Op::Remove, |s| s.remove(&key, force))
    }

    async fn remove_by_regex(self, _: Context, pattern: String, force: bool) -> MResult<u64> {
        self.timed(Op::RemoveByRegex, |s| s.remove_by_regex(&pattern, force))
    }

    async fn remove_all(self, _: Context, force: bool) -> MResult<u64> {
        self.timed(Op::RemoveAll, |s| Ok(s.remove_all(force)))
    }

    async fn batch_remove(self, _: Context, keys: Vec<String>, force: bool) -> Vec<MResult<()>> {
        self.timed_batch(Op::BatchRemove, keys.len(), |s| {
            keys.iter().map(|k| s.remove(k, force)).collect()
        })
    }

    async fn batch_replica_clear(
        self,
        _: Context,
        keys: Vec<String>,
        client_id: ClientId,
        segment_name: String,
    ) -> MResult<Vec<String>> {
        self.timed(Op::BatchReplicaClear, |s| {
            Ok(s.batch_replica_clear(&keys, client_id, &segment_name))
        })
    }

    async fn mount_segment(
        self,
        _: Context,
        client_id: ClientId,
        segment: SegmentDesc,
    ) -> MResult<()> {
        self.timed(Op::MountSegment, |s| s.mount_segment(client_id, segment))
    }

    async fn remount_segment(
        self,
        _: Context,
        client_id: ClientId,
        segments: Vec<SegmentDesc>,
        inventory: Vec<InventoryEntry>,
        inventory_complete: bool,
    ) -> MResult<RemountReport> {
        self.timed(Op::RemountSegment, |s| {
            s.remount_segment(client_id, segments, inventory, inventory_complete)
        })
    }

    async fn unmount_segment(
        self,
        _: Context,
        client_id: ClientId,
        segment_id: SegmentId,
    ) -> MResult<()> {
        self.timed(Op::UnmountSegment, |s| {
            s.unmount_segment(client_id, segment_id)
        })
    }

    async fn ping(self, _: Context, client_id: ClientId) -> MResult<PingResponse> {
        self.timed(Op::Ping, |s| Ok(s.ping(client_id)))
    }

    async fn report_load(self, _: Context, client_id: ClientId, dummies: u64) -> MResult<()> {
        self.timed(Op::ReportLoad, |s| {
            s.report_load(client_id, dummies);
            Ok(())
        })
    }

    async fn sync_inventory(
        self,
        _: Context,
        client_id: ClientId,
        ack_seq: u64,
    ) -> MResult<InventoryDelta> {
        self.timed(Op::SyncInventory, |s| s.sync_inventory(client_id, ack_seq))
    }

    async fn fetch_inventory(self, _: Context, client_id: ClientId) -> MResult<InventorySnapshot> {
        self.timed(Op::FetchInventory, |s| s.fetch_inventory(client_id))
    }

    async fn get_all_segments(self, _: Context) -> Vec<SegmentDesc> {
        self.svc.all_segments()
    }

    async fn create_copy_task(
        self,
        _: Context,
        key: String,
        targets: Vec<String>,
    ) -> MResult<TaskId> {
        self.timed(Op::CreateCopyTask, |s| s.create_copy_task(&key, &targets))
    }

    async fn create_move_task(
        self,
        _: Context,
        key: String,
        source: String,
        target: String,
    ) -> MResult<TaskId> {
        self.timed(Op::CreateMoveTask, |s| {
            s.create_move_task(&key, &source, &target)
        })
    }

    async fn query_task(self, _: Context, id: TaskId) -> MResult<TaskInfo> {
        self.timed(Op::QueryTask, |s| s.query_task(&id))
    }

    async fn fetch_tasks(
        self,
        _: Context,
        client_id: ClientId,
        max: u32,
    ) -> MResult<Vec<TaskAssignment>> {
        self.timed(Op::FetchTasks, |s| Ok(s.fetch_tasks(client_id, max)))
    }

    async fn complete_task(
        self,
        _: Context,
        client_id: ClientId,
        id: TaskId,
        success: bool,
        message: String,
    ) -> MResult<()> {
        self.timed(Op::UpdateTask, |s| {
            s.complete_task(client_id, id, success, message)
        })
    }

    async fn replica_copy_start(
        self,
        _: Context,
        client_id: ClientId,
        key: String,
        source: SegmentId,
        targets: Vec<String>,
        remove_source: bool,
    ) -> MResult<ReplicaCopyPlan> {
        self.timed(Op::CopyStart, |s| {
            s.replica_copy_start(client_id, &key, source, &targets, remove_source)
        })
    }

    async fn replica_copy_end(
        self,
        _: Context,
        client_id: ClientId,
        key: String,
        failed: Vec<SegmentId>,
    ) -> MResult<()> {
        self.timed(Op::CopyEnd, |s| {
            s.replica_copy_end(client_id, &key, &failed)
        })
    }

    async fn replica_copy_revoke(
        self,
        _: Context,
        client_id: ClientId,
        key: String,
    ) -> MResult<()> {
        self.timed(Op::CopyRevoke, |s| s.replica_copy_revoke(client_id, &key))
    }
}

/// Calls of one connection in progress at once; more wait to be read.
const MAX_CONCURRENT_CALLS_PER_CONNECTION: usize = 256;

/// Serves the master RPC on `listener` until `shutdown` is cancelled. Peers must
/// present the cluster token, or from this host the host secret
/// ([`Credentials`]); connections are capped per peer and in total.
pub async fn serve(
    listener: TcpListener,
    svc: Arc<MasterService>,
    gate: Option<Arc<TermGate>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let credentials = Arc::new(Credentials::new(&svc.config().cluster_token));
    let listener = GuardedListener::new(listener, ConnectionLimiter::default(), "master rpc");
    serve_tarpc(
        listener,
        "master",
        credentials,
        shutdown,
        tracker,
        move |framed| {
            let (svc, gate) = (svc.clone(), gate.clone());
            async move {
                // The connection's requests run on its own task, not one task each:
                // a spawned task may start on another worker, and waking that
                // worker costs more than most calls (tens of microseconds on a
                // virtual machine whose idle cores halt). Calls that wait (the
                // term gate) still overlap.
                BaseChannel::with_defaults(transport(framed))
                    .execute(MasterRpc::gated(svc, gate).serve())
                    .for_each_concurrent(MAX_CONCURRENT_CALLS_PER_CONNECTION, |request| request)
                    .await;
            }
        },
    )
    .await;
}
