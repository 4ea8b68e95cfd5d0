//! The tarpc service dummies call ([`RealClientService`]), one handler per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tarpc::context::Context;

use mooncake_ipc::Session;
use mooncake_proto::realclient::{
    BufRef, GetOutcome, PutCompletion, RangeTransfer, RealClientInfo, RealClientService,
};
use mooncake_proto::*;
use mooncake_shm::{CallRing, ProcessSpan};

use crate::client::RealClient;
use crate::metrics::Op;
use crate::transfer::{CallerMemory, HeldSpan, LocalMemory, LocalSpan};

/// Name under which the segment's fd is exported on the IPC socket.
pub const SEGMENT_EXPORT: &str = "segment";

/// Serves one dummy connection.
#[derive(Clone)]
pub struct Handler {
    client: Arc<RealClient>,
    /// The dummy's IPC session (registered buffers); `None` over TCP.
    session: Option<Arc<Session>>,
    /// Call rings attached on this connection.
    rings: Arc<AtomicUsize>,
    /// Whether the connection is another real client mapping the segment.
    peer: Arc<std::sync::atomic::AtomicBool>,
}

/// Call rings one connection may attach.
const MAX_RINGS_PER_SESSION: usize = 4;

impl Handler {
    /// A handler for one connection.
    pub fn new(client: Arc<RealClient>, session: Option<Arc<Session>>) -> Self {
        Handler {
            client,
            session,
            rings: Arc::new(AtomicUsize::new(0)),
            peer: Arc::default(),
        }
    }

    /// Set once the connection says it is another real client (`attach_peer`).
    pub fn peer_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.peer.clone()
    }

    /// The dummy's registered memory, through which the core reaches its buffers.
    fn memory(&self) -> Option<&dyn CallerMemory> {
        self.session.as_deref().map(|s| s as &dyn CallerMemory)
    }

    /// The real client this handler serves.
    pub fn client(&self) -> &Arc<RealClient> {
        &self.client
    }

    fn record<T>(&self, op: Op, started: Instant, results: &[MResult<T>]) {
        let errors = results.iter().filter(|r| r.is_err()).count();
        self.client
            .metrics
            .record(op, started.elapsed(), results.len(), errors);
    }

    fn record_one<T>(&self, op: Op, started: Instant, result: &MResult<T>) {
        self.client
            .metrics
            .record(op, started.elapsed(), 1, usize::from(result.is_err()));
    }
}

impl RealClientService for Handler {
    async fn service_ready(self, _: Context) -> String {
        VERSION.to_string()
    }

    async fn info(self, _: Context) -> RealClientInfo {
        RealClientInfo {
            client_id: self.client.client_id(),
            segment: self.client.segment().cloned(),
            segment_export: SEGMENT_EXPORT.to_string(),
            hostname: self.client.hostname(),
            disk: self.client.disk().map(|d| d.desc.clone()),
        }
    }

    async fn attach_peer(self, _: Context) -> MResult<()> {
        if self.session.is_none() {
            return Err(ErrorCode::InvalidParams);
        }
        if !self.peer.swap(true, Ordering::AcqRel) {
            self.client.metrics.dummy_connected(-1);
            self.client.metrics.peer_mapping(1);
        }
        Ok(())
    }

    async fn use_process_memory(self, _: Context) -> MResult<()> {
        match &self.session {
            Some(s) if s.allow_process_memory() => Ok(()),
            _ => Err(ErrorCode::InvalidParams),
        }
    }

    async fn ping(self, _: Context) -> MResult<()> {
        if self.client.healthy() {
            Ok(())
        } else {
            Err(ErrorCode::RpcFail)
        }
    }

    async fn put_start(
        self,
        _: Context,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
        upsert: bool,
        place: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        let t = Instant::now();
        let bytes: u64 = sizes.iter().sum();
        let owner = self.session.as_ref().map_or(0, |s| s.id());
        let r = self
            .client
            .put_start_with(keys, sizes, config, upsert, owner, place)
            .await;
        self.client.metrics.add_object_bytes(bytes, 0);
        self.record(Op::PutStart, t, &r);
        r
    }

    async fn put_end(self, _: Context, keys: Vec<String>) -> Vec<MResult<()>> {
        let t = Instant::now();
        let r = self.client.put_end(keys).await;
        self.record(Op::PutEnd, t, &r);
        r
    }

    async fn put_complete(self, _: Context, items: Vec<PutCompletion>) -> Vec<MResult<()>> {
        let t = Instant::now();
        let r = self.client.put_complete(items, self.memory()).await;
        self.record(Op::PutComplete, t, &r);
        r
    }

    async fn put_direct(
        self,
        _: Context,
        items: Vec<(String, Vec<BufRef>)>,
        config: ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        let t = Instant::now();
        let bytes: u64 = items.iter().flat_map(|(_, b)| b).map(|b| b.len).sum();
        let owner = self.session.as_ref().map_or(0, |s| s.id());
        let r = self
            .client
            .put_direct(items, config, upsert, owner, self.memory())
            .await;
        self.client.metrics.add_object_bytes(bytes, 0);
        self.record(Op::PutComplete, t, &r);
        r
    }

    async fn get_into(
        self,
        _: Context,
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
        released: Vec<(String, u64)>,
        local_disk: bool,
    ) -> Vec<MResult<GetOutcome>> {
        let t = Instant::now();
        let r = self
            .client
            .get_into_releasing(keys, dests, released, self.memory(), local_disk)
            .await;
        let bytes: u64 = r
            .iter()
            .map(|o| match o {
                Ok(GetOutcome::Done(n)) => *n,
                Ok(GetOutcome::Local(l)) => l.size,
                _ => 0,
            })
            .sum();
        self.client.metrics.add_object_bytes(0, bytes);
        self.record(Op::GetInto, t, &r);
        r
    }

    async fn attach_ring(self, _: Context, client_base: u64) -> MResult<()> {
        let session = self.session.clone().ok_or(ErrorCode::InvalidParams)?;
        let region = session
            .region_at(client_base)
            .ok_or(ErrorCode::InvalidParams)?;
        let ring = CallRing::attach(region).map_err(|e| {
            tracing::warn!(session = session.id(), "refused a call ring: {e}");
            ErrorCode::InvalidParams
        })?;
        if self.rings.fetch_add(1, Ordering::Relaxed) >= MAX_RINGS_PER_SESSION {
            self.rings.fetch_sub(1, Ordering::Relaxed);
            return Err(ErrorCode::InvalidParams);
        }
        let runtime = tokio::runtime::Handle::current();
        crate::fastpath::serve(self.clone(), ring, session, runtime).map_err(|e| {
            tracing::warn!("cannot serve a call ring: {e}");
            ErrorCode::InternalError
        })
    }

    async fn transfer_ranges(
        self,
        _: Context,
        write: bool,
        items: Vec<RangeTransfer>,
    ) -> Vec<MResult<u64>> {
        let t = Instant::now();
        let r = self
            .client
            .transfer_ranges(write, items, self.memory())
            .await;
        let bytes: u64 = r.iter().filter_map(|o| o.as_ref().ok()).sum();
        if write {
            self.client.metrics.add_object_bytes(bytes, 0);
        } else {
            self.client.metrics.add_object_bytes(0, bytes);
        }
        self.record(Op::TransferRanges, t, &r);
        r
    }

    async fn replica_clear(
        self,
        _: Context,
        keys: Vec<String>,
        segment_name: String,
    ) -> MResult<Vec<String>> {
        self.client.replica_clear(keys, segment_name).await
    }

    async fn create_copy_task(
        self,
        _: Context,
        key: String,
        targets: Vec<String>,
    ) -> MResult<TaskId> {
        self.client.create_copy_task(key, targets).await
    }

    async fn create_move_task(
        self,
        _: Context,
        key: String,
        source: String,
        target: String,
    ) -> MResult<TaskId> {
        self.client.create_move_task(key, source, target).await
    }

    async fn query_task(self, _: Context, id: TaskId) -> MResult<TaskInfo> {
        self.client.query_task(id).await
    }

    async fn mount_segment(
        self,
        _: Context,
        path: String,
        size: u64,
        offset: u64,
        protocol: String,
    ) -> MResult<Vec<SegmentId>> {
        let caller = self.session.as_ref().map(|s| (s.peer().uid, s.peer().gid));
        self.client
            .mount_file_segment(path, size, offset, protocol, caller)
            .await
    }

    async fn allocate_and_mount_segment(
        self,
        _: Context,
        size: u64,
        protocol: String,
    ) -> MResult<(Vec<SegmentId>, u64)> {
        self.client.allocate_and_mount_segment(size, protocol).await
    }

    async fn unmount_segment(
        self,
        _: Context,
        ids: Vec<SegmentId>,
        grace_ms: u64,
        allocated: bool,
    ) -> MResult<()> {
        self.client
            .unmount_extra_segments(ids, Duration::from_millis(grace_ms), allocated)
            .await
    }

    async fn put_revoke(self, _: Context, keys: Vec<String>) -> Vec<MResult<()>> {
        let t = Instant::now();
        let r = self.client.put_revoke(keys).await;
        self.record(Op::PutRevoke, t, &r);
        r
    }

    async fn release_reads(self, _: Context, reads: Vec<(String, u64)>) {
        self.client.release_reads(reads).await;
    }

    async fn get_replicas(self, _: Context, keys: Vec<String>) -> Vec<MResult<ReplicaList>> {
        let t = Instant::now();
        let r = self.client.get_replicas(keys).await;
        self.record(Op::GetReplicas, t, &r);
        r
    }

    async fn exist(self, _: Context, keys: Vec<String>) -> Vec<MResult<bool>> {
        let t = Instant::now();
        let r = self.client.exist(keys).await;
        self.record(Op::Exist, t, &r);
        r
    }

    async fn get_size(self, _: Context, key: String) -> MResult<u64> {
        let t = Instant::now();
        let r = self.client.get_size(key).await;
        self.record_one(Op::GetSize, t, &r);
        r
    }

    async fn remove(self, _: Context, keys: Vec<String>, force: bool) -> Vec<MResult<()>> {
        let t = Instant::now();
        let r = self.client.remove(keys, force).await;
        self.record(Op::Remove, t, &r);
        r
    }

    async fn remove_by_regex(self, _: Context, pattern: String, force: bool) -> MResult<u64> {
        let t = Instant::now();
        let r = self.client.remove_by_regex(pattern, force).await;
        self.record_one(Op::RemoveByRegex, t, &r);
        r
    }

    async fn remove_all(self, _: Context, force: bool) -> MResult<u64> {
        let t = Instant::now();
        let r = self.client.remove_all(force).await;
        self.record_one(Op::RemoveAll, t, &r);
        r
    }
}

/// The IPC edge: a dummy's addresses resolve through its session's registrations,
/// and each span holds the session open until the call using it ends. A client
/// in this very process that asked for it (`use_process_memory`) may also name
/// its own memory.
impl CallerMemory for Session {
    fn translate(&self, addr: u64, len: u64) -> MResult<HeldSpan> {
        let t = match Session::translate(self, addr, len) {
            Err(ErrorCode::InvalidParams) if self.process_memory_allowed() => {
                let hold = self.hold()?;
                // SAFETY: the session's peer is this very process
                // (`allow_process_memory` checked its pid), and it asked to be served
                // from its own memory: the dummy client's in-process mode sends only
                // addresses it resolved against its own registrations or slices its
                // caller lent it for the call, and waits for every such span to be
                // dropped before returning from a call that ended early.
                let span =
                    unsafe { ProcessSpan::new(addr, len) }.ok_or(ErrorCode::InvalidParams)?;
                let span = LocalSpan {
                    memory: LocalMemory::Process(Arc::new(span)),
                    offset: 0,
                    len,
                };
                return Ok(HeldSpan::holding(span, hold));
            }
            other => other?,
        };
        let span = LocalSpan {
            memory: t.region_arc().clone().into(),
            offset: t.offset(),
            len: t.len(),
        };
        Ok(HeldSpan::holding(span, t))
    }
}
