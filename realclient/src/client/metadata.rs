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
        mut released: Vec<(String, u64)>,
    ) -> Vec<MResult<ReplicaList>> {
        released.extend(self.take_held_releases());
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
    /// Existence: objects held here are answered here (`exist_index`), the
    /// others by the master.
    pub async fn exist(&self, keys: Vec<String>) -> Vec<MResult<bool>> {
        let here = self.exist_here(&keys);
        if here.iter().all(Option::is_some) {
            return here.into_iter().map(|a| Ok(a.unwrap_or(false))).collect();
        }
        if here.iter().all(Option::is_none) {
            return self.exist_with_master(keys).await;
        }
        let asked: Vec<usize> = (0..keys.len()).filter(|&i| here[i].is_none()).collect();
        let answers = self
            .exist_with_master(asked.iter().map(|&i| keys[i].clone()).collect())
            .await;
        let mut out: Vec<MResult<bool>> =
            here.into_iter().map(|a| Ok(a.unwrap_or(false))).collect();
        for (i, a) in asked.into_iter().zip(answers) {
            out[i] = a;
        }
        out
    }

    async fn exist_with_master(&self, keys: Vec<String>) -> Vec<MResult<bool>> {
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
        let mut args = self.call_args(keys.clone());
        let call = |m: MasterHandle| {
            let keys = args.take();
            async move { m.batch_remove(keys, force).await }
        };
        let results = per_key(n, self.call_master_batch(call).await);
        let gone: Vec<&str> = keys
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(k, _)| k.as_str())
            .collect();
        self.removed_here(&gone);
        results
    }

    /// Drops this client's replicas of `keys`; the keys cleared.
    pub async fn replica_clear(
        &self,
        keys: Vec<String>,
        segment_name: String,
    ) -> MResult<Vec<String>> {
        let cleared = self
            .master()?
            .batch_replica_clear(keys, self.client_id, segment_name)
            .await?;
        self.removed_here(&cleared.iter().map(String::as_str).collect::<Vec<_>>());
        Ok(cleared)
    }

    /// Removes by regex.
    pub async fn remove_by_regex(&self, pattern: String, force: bool) -> MResult<u64> {
        let mut args = self.call_args(pattern);
        let call = |m: MasterHandle| {
            let pattern = args.take();
            async move { m.remove_by_regex(pattern, force).await }
        };
        let removed = self.call_master(call).await;
        self.forget_all_here();
        removed
    }

    /// Removes everything.
    pub async fn remove_all(&self, force: bool) -> MResult<u64> {
        let removed = self
            .call_master(|m: MasterHandle| async move { m.remove_all(force).await })
            .await;
        self.forget_all_here();
        removed
    }
}
