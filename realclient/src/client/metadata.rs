//! Metadata calls passed to the master: replica lists, existence, size, removes.

use super::*;

impl RealClient {
    /// Readable replicas with a lease.
    pub async fn get_replicas(&self, keys: Vec<String>) -> Vec<MResult<ReplicaList>> {
        let n = keys.len();
        let mut args = self.call_args(keys);
        let call = |m: MasterHandle| {
            let keys = args.take();
            async move { m.batch_get_replica_list(keys).await }
        };
        per_key(n, self.call_master_batch(call).await)
    }

    /// [`Self::get_replicas`] that first releases the read grants `released`
    /// (the caller is done reading them), in the same master round trip.
    pub async fn get_replicas_releasing(
        &self,
        keys: Vec<String>,
        released: Vec<(String, u64)>,
    ) -> Vec<MResult<ReplicaList>> {
        if released.is_empty() || matches!(self.master(), Ok(MasterHandle::Local(_))) {
            self.release_reads(released).await;
            return self.get_replicas(keys).await;
        }
        let n = keys.len();
        let mut args = self.call_args(keys);
        // Released once: a retry with the next leader only looks up.
        let mut released = Some(released);
        let call = |m: MasterHandle| {
            let keys = args.take();
            let released = released.take().unwrap_or_default();
            async move { m.batch_get_replica_list_releasing(keys, released).await }
        };
        per_key(n, self.call_master_batch(call).await)
    }

    /// Existence.
    pub async fn exist(&self, keys: Vec<String>) -> Vec<MResult<bool>> {
        let n = keys.len();
        let mut args = self.call_args(keys);
        let call = |m: MasterHandle| {
            let keys = args.take();
            async move { m.batch_exist_key(keys).await }
        };
        per_key(n, self.call_master_batch(call).await)
    }

    /// Size.
    pub async fn get_size(&self, key: String) -> MResult<u64> {
        let mut args = self.call_args(key);
        let call = |m: MasterHandle| {
            let key = args.take();
            async move { m.get_size(key).await }
        };
        self.call_master(call).await
    }

    /// Removes objects.
    pub async fn remove(&self, keys: Vec<String>, force: bool) -> Vec<MResult<()>> {
        let n = keys.len();
        let mut args = self.call_args(keys);
        let call = |m: MasterHandle| {
            let keys = args.take();
            async move { m.batch_remove(keys, force).await }
        };
        per_key(n, self.call_master_batch(call).await)
    }

    /// Drops this client's replicas of `keys`; the keys cleared.
    pub async fn replica_clear(
        &self,
        keys: Vec<String>,
        segment_name: String,
    ) -> MResult<Vec<String>> {
        self.master()?
            .batch_replica_clear(keys, self.client_id, segment_name)
            .await
    }

    /// Removes by regex.
    pub async fn remove_by_regex(&self, pattern: String, force: bool) -> MResult<u64> {
        let mut args = self.call_args(pattern);
        let call = |m: MasterHandle| {
            let pattern = args.take();
            async move { m.remove_by_regex(pattern, force).await }
        };
        self.call_master(call).await
    }

    /// Removes everything.
    pub async fn remove_all(&self, force: bool) -> MResult<u64> {
        self.call_master(|m: MasterHandle| async move { m.remove_all(force).await })
            .await
    }
}
