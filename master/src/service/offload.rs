//! The disk tier as the master sees it: which objects are copied to a real
//! client's disk segment and when (`--enable_offload`, `--offload_on_evict`), and
//! which come back to memory (`--promotion_on_hit`). Copies run as replica
//! tasks on the client holding the source replica, so they go through the same
//! `replica_copy_start` / `_end` path (and its checks) as user copies.

use super::*;

/// A queued offload older than this no longer holds its object back from
/// plain eviction (the copy failed or its client went away).
const OFFLOAD_STALE_MS: u64 = 30_000;
/// Keys whose disk-only reads are being counted, at most.
const PROMOTION_TRACKED_MAX: usize = 100_000;

/// A copy to queue: the object, the replica to copy from and its owner, and the
/// segment to copy to.
pub(super) struct CopyOrder {
    key: String,
    source: SegmentId,
    owner: ClientId,
    target: String,
}

/// Disk-tier bookkeeping of the master.
#[derive(Default)]
pub(super) struct OffloadState {
    /// Offloads queued and not yet seen done: key → when queued (ms).
    queued: HashMap<Box<str>, u64>,
    /// Reads of objects only on disk, per key, until promoted.
    disk_hits: HashMap<Box<str>, u32>,
    /// Promotions queued and not yet seen done: key → when queued (ms).
    promoting: HashMap<Box<str>, u64>,
    /// Copies that failed (a full disk tier, a client gone): key → when (ms).
    /// With `--offload_on_evict` such an object is evicted plainly for a while
    /// instead of holding memory for a copy that cannot be made.
    failed: HashMap<Box<str>, u64>,
}

impl MasterService {
    pub(super) fn on_disk(segs: &SegmentTable, p: &Placement) -> bool {
        segs.get(p.segment).is_some_and(|s| s.on_disk())
    }

    /// The offload of `o`: from a memory replica to a disk segment on the same
    /// host, one the object is not on yet.
    pub(super) fn offload_order(segs: &SegmentTable, key: &str, o: &Object) -> Option<CopyOrder> {
        let placements = o.replicas.as_slice();
        if placements.iter().any(|p| Self::on_disk(segs, p)) {
            return None;
        }
        placements.iter().find_map(|p| {
            let source = segs.get(p.segment)?;
            let disk = segs
                .disk_segments()
                .find(|d| d.desc.host == source.desc.host)?;
            Some(CopyOrder {
                key: key.to_string(),
                source: source.desc.id,
                owner: source.owner,
                target: disk.desc.name.clone(),
            })
        })
    }

    /// Whether `key` has an offload queued recently enough to wait for.
    pub(super) fn offload_pending(&self, key: &str, now: u64) -> bool {
        self.offload
            .lock()
            .queued
            .get(key)
            .is_some_and(|&at| now < at + OFFLOAD_STALE_MS)
    }

    /// Queues the copy task of `order`; whether it was taken.
    fn submit_copy(&self, order: &CopyOrder) -> bool {
        self.tasks
            .lock()
            .submit(
                TaskKind::ReplicaCopy,
                order.owner,
                &order.key,
                order.source,
                vec![order.target.clone()],
            )
            .is_ok()
    }

    /// Queues offload copies (call with no shard lock held).
    pub(super) fn queue_offloads(&self, orders: Vec<CopyOrder>) {
        if orders.is_empty() {
            return;
        }
        let now = self.now_ms();
        let limit = self.config.offload.queue_limit;
        for order in orders {
            {
                let mut st = self.offload.lock();
                if st.queued.len() >= limit {
                    st.queued.retain(|_, at| now < *at + OFFLOAD_STALE_MS);
                }
                if st.queued.len() >= limit || st.queued.contains_key(order.key.as_str()) {
                    self.metrics.offload_skipped.fetch_add(1, Relaxed);
                    continue;
                }
                st.queued.insert(order.key.as_str().into(), now);
            }
            if self.submit_copy(&order) {
                self.metrics.offload_queued.fetch_add(1, Relaxed);
            } else {
                self.offload.lock().queued.remove(order.key.as_str());
                self.metrics.offload_skipped.fetch_add(1, Relaxed);
            }
        }
    }

    /// The object now has a disk copy, or is back in memory, or is gone, or its
    /// copy failed: no copy of it is on the way any more.
    pub(super) fn offload_done(&self, key: &str) {
        let mut st = self.offload.lock();
        if !st.queued.is_empty() {
            st.queued.remove(key);
        }
        if !st.promoting.is_empty() {
            st.promoting.remove(key);
        }
    }

    /// Promotions queued and not yet done.
    pub fn promotion_queue_depth(&self) -> usize {
        let now = self.now_ms();
        let mut st = self.offload.lock();
        st.promoting.retain(|_, at| now < *at + OFFLOAD_STALE_MS);
        st.promoting.len()
    }

    /// A copy of `key` failed: remembered for a while (see `OffloadState::failed`).
    pub(super) fn copy_failed(&self, key: &str) {
        let now = self.now_ms();
        let mut st = self.offload.lock();
        if st.failed.len() >= PROMOTION_TRACKED_MAX {
            st.failed.retain(|_, at| now < *at + OFFLOAD_STALE_MS);
        }
        if st.failed.len() < PROMOTION_TRACKED_MAX {
            st.failed.insert(key.into(), now);
        }
    }

    /// Whether a copy of `key` failed recently.
    pub(super) fn copy_failed_recently(&self, key: &str, now: u64) -> bool {
        self.offload
            .lock()
            .failed
            .get(key)
            .is_some_and(|&at| now < at + OFFLOAD_STALE_MS)
    }

    /// Offloads queued and not yet done.
    pub fn offload_queue_depth(&self) -> usize {
        self.offload.lock().queued.len()
    }

    /// Counts a read of an object that is only on disk; at the admission
    /// threshold returns the copy that brings it back to memory: to a memory
    /// segment of the client holding the disk copy.
    pub(super) fn promotion_order(
        &self,
        segs: &SegmentTable,
        key: &str,
        o: &Object,
    ) -> Option<CopyOrder> {
        let policy = &self.config.offload;
        if !policy.promotion_on_hit {
            return None;
        }
        let placements = o.replicas.as_slice();
        if placements.is_empty() || !placements.iter().all(|p| Self::on_disk(segs, p)) {
            return None;
        }
        {
            let mut st = self.offload.lock();
            if st.disk_hits.len() >= PROMOTION_TRACKED_MAX && !st.disk_hits.contains_key(key) {
                st.disk_hits.clear();
            }
            let hits = st.disk_hits.entry(key.into()).or_insert(0);
            *hits += 1;
            if *hits < policy.promotion_admission_threshold {
                return None;
            }
            // Promotions fill free memory; they never push out what writes put
            // there (a scan over disk-only objects would otherwise evict every
            // fresh write and starve writers). The hits stay counted: the next
            // read promotes once there is room.
            let (capacity, used) = segs.usage();
            let room = capacity as f64 * self.config.eviction_high_watermark_ratio;
            if (used + reserved_len(Medium::Memory, o.size)) as f64 > room {
                self.metrics.promotions_skipped.fetch_add(1, Relaxed);
                return None;
            }
            st.disk_hits.remove(key);
        }
        placements.iter().find_map(|p| {
            let disk = segs.get(p.segment)?;
            let memory = segs
                .memory_segments()
                .find(|m| m.owner == disk.owner)
                .or_else(|| {
                    segs.memory_segments()
                        .find(|m| m.desc.host == disk.desc.host)
                })?;
            Some(CopyOrder {
                key: key.to_string(),
                source: disk.desc.id,
                owner: disk.owner,
                target: memory.desc.name.clone(),
            })
        })
    }

    /// Whether a copy of `key` back to memory is on the way.
    pub(super) fn promoting(&self, key: &str) -> bool {
        self.offload.lock().promoting.contains_key(key)
    }

    /// Queues promotions (call with no shard lock held).
    pub(super) fn queue_promotions(&self, orders: Vec<CopyOrder>) {
        let now = self.now_ms();
        for order in orders {
            if self
                .offload
                .lock()
                .promoting
                .insert(order.key.as_str().into(), now)
                .is_some()
            {
                continue;
            }
            if self.submit_copy(&order) {
                self.metrics.promotions_queued.fetch_add(1, Relaxed);
            } else {
                self.offload.lock().promoting.remove(order.key.as_str());
            }
        }
    }
}
