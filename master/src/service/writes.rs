//! Writes: `put_start` / `upsert_start`, `put_end`, `put_revoke`.

use super::*;

impl MasterService {
    /// `put_start` (`upsert = false`) and `upsert_start` (`upsert = true`).
    pub fn put_start(
        &self,
        client: ClientId,
        key: &str,
        size: u64,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> MResult<Vec<ReplicaDesc>> {
        if key.is_empty() {
            return Err(ErrorCode::InvalidParams);
        }
        self.validate_key(key)?;
        if size == 0 || config.replica_num == 0 {
            return Err(ErrorCode::InvalidParams);
        }
        let soft_pin_ttl_ms = self.soft_pin_ttl(config)?;
        let writer_host = if config.prefer_alloc_in_same_node {
            self.client_host(&client)
        } else {
            None
        };
        let hash = self.hash(key);
        let discard_ms = self.config.put_start_discard_timeout.as_millis() as u64;
        let release_ms = self.config.put_start_release_timeout.as_millis() as u64;
        for attempt in 0..2 {
            let now = self.now_ms();
            {
                let mut shard = self.shard(hash).lock();
                if let Some(p) = shard.processing.get(key) {
                    if now < p.started + discard_ms {
                        return Err(ErrorCode::ObjectAlreadyExists);
                    }
                    // Take over an abandoned write; its space stays reserved until the
                    // release timeout because the zombie writer may still be writing.
                    let p = shard.processing.remove(key).expect("present");
                    let segs = self.segments.read();
                    self.release_later(
                        &segs,
                        &p.replicas,
                        p.size,
                        p.version,
                        p.started + release_ms,
                        false,
                    );
                    self.metrics.put_start_discards.fetch_add(1, Relaxed);
                    if let Some(o) = shard.get_mut(hash, key) {
                        o.flags &= !FLAG_PENDING_UPSERT;
                    }
                }
                if !upsert && shard.get(hash, key).is_some() {
                    return Err(ErrorCode::ObjectAlreadyExists);
                }
                let segs = self.segments.read();
                let largest = segs.largest_capacity();
                if largest == 0 {
                    self.metrics.put_start_alloc_failures.fetch_add(1, Relaxed);
                    return Err(ErrorCode::NoAvailableHandle);
                }
                if size > largest {
                    return Err(ErrorCode::InvalidParams);
                }
                let placed = segs.place(
                    size,
                    config,
                    self.config.allocation_strategy,
                    writer_host.as_deref(),
                );
                if !placed.is_empty() {
                    if placed.len() < config.replica_num as usize {
                        self.metrics
                            .put_start_partial_allocations
                            .fetch_add(1, Relaxed);
                    }
                    let version = self.next_version();
                    let descs = placed
                        .iter()
                        .filter_map(|p| {
                            Self::describe(&segs, p, size, version, ReplicaStatus::Processing)
                        })
                        .collect();
                    drop(segs);
                    if upsert && let Some(o) = shard.get_mut(hash, key) {
                        o.flags |= FLAG_PENDING_UPSERT;
                    }
                    shard.processing.insert(
                        key.into(),
                        PendingWrite {
                            writer: client,
                            started: now,
                            size,
                            version,
                            replicas: placed,
                            hard_pin: config.with_hard_pin,
                            soft_pin_ttl_ms,
                            soft_pin_action: config.soft_pin_action,
                        },
                    );
                    return Ok(descs);
                }
            }
            let wanted = allocated_len(size) * u64::from(config.replica_num);
            if attempt == 1 || !self.evict_for_space(wanted) {
                break;
            }
        }
        self.metrics.put_start_alloc_failures.fetch_add(1, Relaxed);
        Err(ErrorCode::NoAvailableHandle)
    }

    /// `put_end` / `upsert_end`: makes the write readable.
    pub fn put_end(&self, client: ClientId, key: &str) -> MResult<()> {
        self.put_end_except(client, key, &[])
    }

    /// `put_end` for a write whose replicas on `failed` segments could not be
    /// written: those replicas are dropped (their space is freed after a grace
    /// period, in case a late transfer still lands) and the others become readable.
    /// When every replica failed the write is revoked and `TRANSFER_FAIL` returned.
    pub fn put_end_except(&self, client: ClientId, key: &str, failed: &[SegmentId]) -> MResult<()> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let now = self.now_ms();
        let mut shard = self.shard(hash).lock();
        match shard.processing.get(key) {
            None => {
                return if shard.get(hash, key).is_some() {
                    Ok(())
                } else {
                    Err(ErrorCode::ObjectNotFound)
                };
            }
            Some(p) if p.writer != client => return Err(ErrorCode::IllegalClient),
            Some(_) => {}
        }
        let mut p = shard.processing.remove(key).expect("present");
        if !failed.is_empty() {
            let segs = self.segments.read();
            let (lost, kept): (Vec<Placement>, Vec<Placement>) =
                p.replicas.iter().partition(|pl| {
                    segs.get(pl.segment)
                        .is_some_and(|seg| failed.contains(&seg.desc.id))
                });
            self.release_later(
                &segs,
                &lost,
                p.size,
                p.version,
                now + FAILED_REPLICA_GRACE_MS,
                false,
            );
            if kept.is_empty() {
                if let Some(o) = shard.get_mut(hash, key) {
                    o.flags &= !FLAG_PENDING_UPSERT;
                }
                return Err(ErrorCode::TransferFail);
            }
            p.replicas = kept;
        }
        if p.replicas.is_empty() {
            // Every segment the write went to is gone.
            if let Some(o) = shard.get_mut(hash, key) {
                o.flags &= !FLAG_PENDING_UPSERT;
            }
            return Err(ErrorCode::InvalidWrite);
        }
        let segs = self.segments.read();
        let order = self.publish(&mut shard, &segs, hash, key, p, now);
        drop(segs);
        drop(shard);
        if let Some(order) = order {
            self.queue_offloads(vec![order]);
        }
        Ok(())
    }

    /// `put_revoke` / `upsert_revoke`: abandons the write and frees its space.
    pub fn put_revoke(&self, client: ClientId, key: &str) -> MResult<()> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        match shard.processing.get(key) {
            None => {
                return Err(if shard.get(hash, key).is_some() {
                    ErrorCode::InvalidWrite
                } else {
                    ErrorCode::ObjectNotFound
                });
            }
            Some(p) if p.writer != client => return Err(ErrorCode::IllegalClient),
            Some(_) => {}
        }
        let p = shard.processing.remove(key).expect("present");
        if let Some(o) = shard.get_mut(hash, key) {
            o.flags &= !FLAG_PENDING_UPSERT;
        }
        self.free_pending(&self.segments.read(), &p);
        Ok(())
    }

    /// The soft-pin lifetime a write with `config` gets, in ms (`None`: not
    /// soft-pinned). A lifetime for an object that is not soft-pinned is a
    /// mistake upstream refuses, not something to ignore.
    pub(super) fn soft_pin_ttl(&self, config: &ReplicateConfig) -> MResult<Option<u64>> {
        if config.soft_pin_ttl_ms.is_some() && !config.wants_soft_pin() {
            return Err(ErrorCode::InvalidParams);
        }
        Ok(match config.soft_pin_action {
            SoftPinAction::Disable => None,
            _ if config.wants_soft_pin() => Some(
                config
                    .soft_pin_ttl_ms
                    .unwrap_or(self.config.default_kv_soft_pin_ttl.as_millis() as u64)
                    .min(self.config.max_kv_soft_pin_ttl.as_millis() as u64),
            ),
            _ => None,
        })
    }

    /// Makes the written `p` the readable value of `key` (replacing any old
    /// one, whose space is released once its readers are done). Returns the
    /// offload the new object needs, to be queued once the shard lock is gone.
    pub(super) fn publish(
        &self,
        shard: &mut Shard,
        segs: &SegmentTable,
        hash: u64,
        key: &str,
        p: PendingWrite,
        now: u64,
    ) -> Option<super::offload::CopyOrder> {
        let previous_pin = shard
            .get(hash, key)
            .map(|o| o.soft_pin_until_s)
            .unwrap_or(0);
        let soft_pin_until_s = match (p.soft_pin_ttl_ms, p.soft_pin_action) {
            (Some(ttl), _) => (now + ttl).div_ceil(1000).min(u64::from(u32::MAX)) as u32,
            (None, SoftPinAction::Preserve) => previous_pin,
            (None, _) => 0,
        };
        let object = Object {
            size: p.size,
            version: p.version,
            lease_until: 0,
            last_access: now,
            replicas: Replicas::from_vec(p.replicas),
            soft_pin_until_s,
            flags: if p.hard_pin { FLAG_HARD_PIN } else { 0 },
            readers: 0,
        };
        Self::emit_added(
            segs,
            key,
            object.replicas.as_slice(),
            object.size,
            object.version,
        );
        let offload = &self.config.offload;
        let order = (offload.enabled && !offload.on_evict)
            .then(|| Self::offload_order(segs, key, &object))
            .flatten();
        let hasher = |k: &str| self.hasher.hash_one(k);
        if let Some(old) = shard.insert(hash, key, object, &hasher) {
            self.release_replaced(segs, &old, now);
        }
        order
    }
}
