//! Removes: single, batch replica clear, by regex, all.

use super::*;

impl MasterService {
    /// Removes one object.
    pub fn remove(&self, key: &str, force: bool) -> MResult<()> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let now = self.now_ms();
        let mut shard = self.shard(hash).lock();
        match shard.get(hash, key) {
            None if shard.processing.contains_key(key) => Err(ErrorCode::ReplicaIsNotReady),
            None => Err(ErrorCode::ObjectNotFound),
            // A hard pin protects from eviction only; a remove takes the object,
            // as upstream's does.
            Some(o) if !force && o.leased(now) => Err(ErrorCode::ObjectHasLease),
            Some(o) if !force && o.flags & FLAG_REPLICATING != 0 => {
                Err(ErrorCode::ObjectHasReplicationTask)
            }
            Some(_) => {
                // A forced remove leaves the index at once, but leased space is
                // reused only when the lease ends: a reader may still be copying.
                let o = shard.remove(hash, key).expect("present");
                let segs = self.segments.read();
                self.release_replaced(&segs, &o, now);
                Ok(())
            }
        }
    }

    /// Drops the replicas `client` holds of `keys` (on its segment named
    /// `segment_name`, or on all its segments when empty), for objects no reader
    /// holds a lease on and that are not pinned or being replaced; objects left
    /// without replicas disappear. Returns the keys cleared.
    pub fn batch_replica_clear(
        &self,
        keys: &[String],
        client: ClientId,
        segment_name: &str,
    ) -> Vec<String> {
        let now = self.now_ms();
        let slots: Vec<u32> = self
            .segments
            .read()
            .iter()
            .filter(|s| {
                s.owner == client && (segment_name.is_empty() || s.desc.name == segment_name)
            })
            .map(|s| s.slot)
            .collect();
        let mut cleared = Vec::new();
        if slots.is_empty() {
            return cleared;
        }
        for key in keys {
            if self.validate_key(key).is_err() || cleared.contains(key) {
                continue;
            }
            let hash = self.hash(key);
            let mut shard = self.shard(hash).lock();
            let Some(o) = shard.get_mut(hash, key) else {
                continue;
            };
            if o.leased(now)
                || o.hard_pinned()
                || o.flags & (FLAG_PENDING_UPSERT | FLAG_REPLICATING) != 0
            {
                continue;
            }
            let mine: Vec<Placement> = o
                .replicas
                .as_slice()
                .iter()
                .copied()
                .filter(|p| slots.contains(&p.segment))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (size, version) = (o.size, o.version);
            for p in &mine {
                o.replicas.drop_segment(p.segment);
            }
            if o.replicas.as_slice().is_empty() {
                shard.remove(hash, key);
            }
            let segs = self.segments.read();
            self.release_now(&segs, &mine, size, version);
            cleared.push(key.clone());
        }
        cleared
    }

    pub(super) fn remove_matching(&self, force: bool, matches: impl Fn(&str) -> bool) -> u64 {
        let now = self.now_ms();
        let mut count = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            if shard.len() == 0 {
                continue;
            }
            let segs = self.segments.read();
            shard.retain(
                |k, o| (force || (!o.leased(now) && o.flags & FLAG_REPLICATING == 0)) && matches(k),
                |_, o| {
                    self.release_replaced(&segs, &o, now);
                    count += 1;
                },
            );
        }
        count
    }

    /// Removes every complete object whose key matches; returns the count.
    pub fn remove_by_regex(&self, pattern: &str, force: bool) -> MResult<u64> {
        let re = compile_regex(pattern)?;
        Ok(self.remove_matching(force, |k| re.is_match(k)))
    }

    /// Removes every complete object (leased and hard-pinned ones only with `force`).
    pub fn remove_all(&self, force: bool) -> u64 {
        self.remove_matching(force, |_| true)
    }
}
