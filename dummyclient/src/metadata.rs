//! Metadata, removes, replica tasks and segments: calls the real client passes on.

use super::*;

impl DummyClient {
    /// Whether each key exists.
    pub fn batch_is_exist(&self, keys: &[String]) -> Vec<MResult<bool>> {
        self.batch_is_exist_owned(keys.to_vec())
    }

    /// [`batch_is_exist`](Self::batch_is_exist) of keys the caller gives away
    /// (no copy of each key).
    pub fn batch_is_exist_owned(&self, keys: Vec<String>) -> Vec<MResult<bool>> {
        let n = keys.len();
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); n],
        };
        self.dispatch_batch(&conn, n, RingRequest::Exist(keys), |r| match r {
            RingResponse::Bools(v) => Some(v),
            _ => None,
        })
    }

    /// Whether a key exists.
    pub fn is_exist(&self, key: &str) -> MResult<bool> {
        self.batch_is_exist_owned(vec![key.to_string()]).remove(0)
    }

    /// Size of an object.
    pub fn get_size(&self, key: &str) -> MResult<u64> {
        let conn = self.conn()?;
        match self.dispatch(&conn, RingRequest::GetSize(key.to_string()))? {
            RingResponse::Size(r) => r,
            _ => Err(ErrorCode::InternalError),
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
        self.dispatch_batch(&conn, keys.len(), request, |r| match r {
            RingResponse::Units(v) => Some(v),
            _ => None,
        })
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
