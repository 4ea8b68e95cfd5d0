//! Reads: replica lists with read grants, existence and size probes.

use super::*;

impl MasterService {
    /// Grants a read lease of `ttl` ms, refreshes recency, and describes the replicas.
    pub(super) fn grant_read(
        segs: &SegmentTable,
        o: &mut Object,
        now: u64,
        ttl: u64,
    ) -> ReplicaList {
        o.lease_until = o.lease_until.max(now + ttl);
        o.last_access = now;
        o.add_reader();
        let mut replicas: Vec<ReplicaDesc> = o
            .replicas
            .as_slice()
            .iter()
            .filter_map(|p| Self::describe(segs, p, o.size, o.version, ReplicaStatus::Complete))
            .collect();
        // Memory first: readers try replicas in order.
        replicas.sort_by_key(|r| r.medium == Medium::Disk);
        ReplicaList {
            size: o.size,
            replicas,
            lease_ttl_ms: ttl,
        }
    }

    /// Readable replicas; grants a read lease and refreshes recency.
    pub fn get_replica_list(&self, key: &str) -> MResult<ReplicaList> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let now = self.now_ms();
        let ttl = self.config.default_kv_lease_ttl.as_millis() as u64;
        let mut shard = self.shard(hash).lock();
        if let Some(o) = shard.get_mut(hash, key) {
            let segs = self.segments.read();
            let list = Self::grant_read(&segs, o, now, ttl);
            let Some(first) = list.replicas.first() else {
                return Err(ErrorCode::ObjectNotFound);
            };
            let (hits, bytes) = match first.medium {
                Medium::Memory => (&self.metrics.memory_hits, &self.metrics.memory_hit_bytes),
                Medium::Disk => (&self.metrics.disk_hits, &self.metrics.disk_hit_bytes),
            };
            hits.fetch_add(1, Relaxed);
            bytes.fetch_add(list.size, Relaxed);
            let promotion = self.promotion_order(&segs, key, o);
            drop(segs);
            drop(shard);
            if let Some(order) = promotion {
                self.queue_promotions(vec![order]);
            }
            return Ok(list);
        }
        if shard.processing.contains_key(key) {
            Err(ErrorCode::ReplicaIsNotReady)
        } else {
            Err(ErrorCode::ObjectNotFound)
        }
    }

    /// Like `get_replica_list` but grants no lease and leaves recency alone (admin).
    pub fn query_key(&self, key: &str) -> MResult<ReplicaList> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        let o = shard
            .get(hash, key)
            .ok_or(if shard.processing.contains_key(key) {
                ErrorCode::ReplicaIsNotReady
            } else {
                ErrorCode::ObjectNotFound
            })?;
        let segs = self.segments.read();
        let mut replicas: Vec<ReplicaDesc> = o
            .replicas
            .as_slice()
            .iter()
            .filter_map(|p| Self::describe(&segs, p, o.size, o.version, ReplicaStatus::Complete))
            .collect();
        replicas.sort_by_key(|r| r.medium == Medium::Disk);
        Ok(ReplicaList {
            size: o.size,
            replicas,
            lease_ttl_ms: o.lease_until.saturating_sub(self.now_ms()),
        })
    }

    /// Replica lists of every complete object whose key matches; grants leases.
    pub fn get_replica_list_by_regex(&self, pattern: &str) -> MResult<Vec<(String, ReplicaList)>> {
        let re = compile_regex(pattern)?;
        let now = self.now_ms();
        let ttl = self.config.default_kv_lease_ttl.as_millis() as u64;
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let segs = self.segments.read();
            shard.retain(
                |k, o| {
                    if re.is_match(k) {
                        out.push((k.to_string(), Self::grant_read(&segs, o, now, ttl)));
                    }
                    false
                },
                |_, _| {},
            );
        }
        Ok(out)
    }

    /// Whether a complete object exists; refreshes recency, grants no lease.
    pub fn exist_key(&self, key: &str) -> MResult<bool> {
        self.exist_key_at(key, self.now_ms())
    }

    /// `exist_key` of each key, with one clock reading for the batch.
    pub fn batch_exist_key(&self, keys: &[String]) -> Vec<MResult<bool>> {
        let now = self.now_ms();
        keys.iter().map(|k| self.exist_key_at(k, now)).collect()
    }

    fn exist_key_at(&self, key: &str, now: u64) -> MResult<bool> {
        if key.is_empty() {
            return Ok(false);
        }
        self.validate_key(key)?;
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        Ok(match shard.get_mut(hash, key) {
            Some(o) => {
                o.last_access = now;
                true
            }
            None => false,
        })
    }

    /// Size of a complete object.
    pub fn get_size(&self, key: &str) -> MResult<u64> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        match shard.get(hash, key) {
            Some(o) => Ok(o.size),
            None if shard.processing.contains_key(key) => Err(ErrorCode::ReplicaIsNotReady),
            None => Err(ErrorCode::ObjectNotFound),
        }
    }
}
