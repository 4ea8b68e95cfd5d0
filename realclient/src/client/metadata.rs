//! Metadata calls passed to the master: replica lists, existence, size, removes.

use super::*;

impl RealClient {
    /// Readable replicas with a lease.
    pub async fn get_replicas(&self, keys: Vec<String>) -> Vec<MResult<ReplicaList>> {
        let n = keys.len();
        per_key(
            n,
            async { self.master()?.batch_get_replica_list(keys).await }.await,
        )
    }

    /// Existence.
    pub async fn exist(&self, keys: Vec<String>) -> Vec<MResult<bool>> {
        let n = keys.len();
        per_key(
            n,
            async { self.master()?.batch_exist_key(keys).await }.await,
        )
    }

    /// Size.
    pub async fn get_size(&self, key: String) -> MResult<u64> {
        self.master()?.get_size(key).await
    }

    /// Removes objects.
    pub async fn remove(&self, keys: Vec<String>, force: bool) -> Vec<MResult<()>> {
        let n = keys.len();
        per_key(
            n,
            async { self.master()?.batch_remove(keys, force).await }.await,
        )
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
        self.master()?.remove_by_regex(pattern, force).await
    }

    /// Removes everything.
    pub async fn remove_all(&self, force: bool) -> MResult<u64> {
        self.master()?.remove_all(force).await
    }
}
