//! Space granted to a real client inside its own segment, and writes committed
//! there in one round trip.
//!
//! A two-phase write costs two master round trips (`put_start`, `put_end`). A
//! real client writing into its own segment does not need the first: it asks
//! for a slice of its segment ahead of time (`grant_space`), places writes in
//! it itself, and makes each readable with one `batch_put_commit` once its bytes
//! are in. The master checks every committed range against the grants, so a
//! client can only commit space it was given and has not used; a grant dies
//! with the segment's mount (a remount or a new master forgets it), which is
//! why the client drops its grants before it remounts.

use super::*;

impl MasterService {
    /// `grant_space`: reserves `len` bytes of `client`'s memory segment
    /// `segment` for writes it places itself, in its grant `epoch`.
    pub fn grant_space(
        &self,
        client: ClientId,
        segment: SegmentId,
        len: u64,
        epoch: u64,
    ) -> MResult<(u64, u64)> {
        if len == 0 {
            return Err(ErrorCode::InvalidParams);
        }
        let segs = self.segments.read();
        let seg = segs.by_id(&segment).ok_or(ErrorCode::SegmentNotFound)?;
        if seg.owner != client {
            return Err(ErrorCode::IllegalClient);
        }
        if seg.on_disk() || len > seg.capacity() / 4 {
            return Err(ErrorCode::InvalidParams);
        }
        if !segs.active_slots().contains(&seg.slot) {
            return Err(ErrorCode::NoAvailableHandle);
        }
        // No eviction for a grant: it is asked for ahead of need, and a full
        // segment's writes go two-phase (evicting then) until the watermark
        // eviction made room again.
        seg.grant(len, epoch)
            .map(|offset| (offset, allocated_len(len)))
            .ok_or(ErrorCode::NoAvailableHandle)
    }

    /// `return_space`: frees ranges granted in `epoch` the client will not use.
    pub fn return_space(
        &self,
        client: ClientId,
        segment: SegmentId,
        epoch: u64,
        ranges: &[(u64, u64)],
    ) -> MResult<()> {
        let segs = self.segments.read();
        let seg = segs.by_id(&segment).ok_or(ErrorCode::SegmentNotFound)?;
        if seg.owner != client {
            return Err(ErrorCode::IllegalClient);
        }
        for &(offset, len) in ranges {
            seg.return_granted(offset, len, epoch);
        }
        Ok(())
    }

    /// One item of `batch_put_commit`: the write of `item` into space of
    /// `segment` granted in `epoch` becomes the readable value of its key. The
    /// item's range leaves the grant once it is known to be one; unless
    /// committed it is freed.
    pub fn put_commit(
        &self,
        client: ClientId,
        segment: SegmentId,
        epoch: u64,
        item: &CommitItem,
        config: &ReplicateConfig,
    ) -> MResult<u64> {
        let key = item.key.as_str();
        if key.is_empty() {
            return Err(ErrorCode::InvalidParams);
        }
        self.validate_key(key)?;
        if item.size == 0 || config.replica_num != 1 {
            return Err(ErrorCode::InvalidParams);
        }
        let soft_pin_ttl_ms = self.soft_pin_ttl(config)?;
        let hash = self.hash(key);
        let now = self.now_ms();
        let discard_ms = self.config.put_start_discard_timeout.as_millis() as u64;
        let mut shard = self.shard(hash).lock();
        let segs = self.segments.read();
        let seg = segs.by_id(&segment).ok_or(ErrorCode::SegmentNotFound)?;
        if seg.owner != client {
            return Err(ErrorCode::IllegalClient);
        }
        if seg.on_disk() {
            return Err(ErrorCode::InvalidParams);
        }
        let len = allocated_len(item.size);
        if !item.offset.is_multiple_of(GRANULE) || !seg.take_granted(item.offset, len, epoch) {
            return Err(ErrorCode::InvalidWrite);
        }
        // From here the range is this item's: committed, or freed.
        seg.replicas.fetch_add(1, Relaxed);
        let refuse = |code: ErrorCode| {
            seg.free(item.offset, item.size);
            Err(code)
        };
        if !segs.active_slots().contains(&seg.slot) {
            // Drained meanwhile: the object must not land where the drain
            // just moved everything away from.
            return refuse(ErrorCode::NoAvailableHandle);
        }
        if let Some(p) = shard.processing.get(key)
            && now < p.started + discard_ms
        {
            return refuse(ErrorCode::ObjectAlreadyExists);
        }
        if shard.get(hash, key).is_some() {
            return refuse(ErrorCode::ObjectAlreadyExists);
        }
        if let Some(abandoned) = shard.processing.remove(key) {
            // Its writer gave up long ago; its space waits out the release
            // timeout, as when a `put_start` takes such a write over.
            let release_ms = self.config.put_start_release_timeout.as_millis() as u64;
            self.release_later(
                &segs,
                &abandoned.replicas,
                abandoned.size,
                abandoned.version,
                abandoned.started + release_ms,
                false,
            );
            self.metrics.put_start_discards.fetch_add(1, Relaxed);
        }
        let version = self.next_version();
        let write = PendingWrite {
            writer: client,
            started: now,
            size: item.size,
            version,
            replicas: vec![Placement {
                offset: item.offset,
                segment: seg.slot,
            }],
            hard_pin: config.with_hard_pin,
            soft_pin_ttl_ms,
            soft_pin_action: config.soft_pin_action,
        };
        let order = self.publish(&mut shard, &segs, hash, key, write, now);
        drop(segs);
        drop(shard);
        if let Some(order) = order {
            self.queue_offloads(vec![order]);
        }
        Ok(version)
    }

    /// Frees the grants of every segment of `client` (it remounts: it dropped
    /// its own record of them first).
    pub(super) fn clear_grants_of(&self, client: ClientId) {
        let segs = self.segments.read();
        for seg in segs.iter().filter(|s| s.owner == client) {
            let freed = seg.clear_grants();
            if freed > 0 {
                tracing::debug!(segment = %seg.desc.id, freed, "grants of a remounting client freed");
            }
        }
    }
}
