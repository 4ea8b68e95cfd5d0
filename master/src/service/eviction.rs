//! Eviction: approximate LRU by sampled access times, soft pins in a second pass.

use super::*;

impl MasterService {
    /// Evicts roughly `target` bytes of memory by approximate LRU. Returns bytes
    /// freed.
    pub fn evict(&self, target: u64) -> u64 {
        self.evict_tier(target, Medium::Memory)
    }

    /// Frees roughly `target` bytes of one tier by approximate LRU. An object
    /// also in the other tier only loses its replicas in this one; an object
    /// only in this one is removed, except in memory with `--offload_on_evict`,
    /// where it is first copied to a disk tier (and freed by a later pass).
    fn evict_tier(&self, target: u64, medium: Medium) -> u64 {
        let now = self.now_ms();
        self.metrics.eviction_attempts.fetch_add(1, Relaxed);
        let total_keys: usize = self.shards.iter().map(|s| s.lock().len()).sum();
        if total_keys == 0 {
            return 0;
        }
        let in_tier =
            |segs: &SegmentTable, p: &Placement| (medium == Medium::Disk) == Self::on_disk(segs, p);
        // Estimate the access time below which ~target bytes of evictable objects lie.
        let stride = (total_keys / EVICTION_SAMPLES).max(1);
        let mut samples: Vec<(u64, u64)> = Vec::with_capacity(EVICTION_SAMPLES + 1024);
        let mut rng = rand::rng();
        for shard in self.shards.iter() {
            let offset = rng.random_range(0..stride);
            let shard = shard.lock();
            let segs = self.segments.read();
            shard.sample(offset, stride, |o| {
                if o.evictable(now, false) {
                    let here = o.replicas.as_slice().iter().filter(|p| in_tier(&segs, p));
                    samples.push((
                        o.last_access,
                        reserved_len(medium, o.size) * here.count() as u64,
                    ));
                }
            });
        }
        samples.sort_unstable();
        // A sample of every object (stride 1) gives the exact LRU cut; a sparser
        // one overshoots a little so that sampling error still frees the target.
        let slack = if stride == 1 { 0 } else { target / 8 };
        let mut threshold = u64::MAX;
        let mut acc = 0u64;
        for (access, bytes) in &samples {
            acc += bytes * stride as u64;
            if acc >= target + slack {
                threshold = *access;
                break;
            }
        }
        let offload_on_evict =
            medium == Medium::Memory && self.config.offload.enabled && self.config.offload.on_evict;
        let mut freed = 0u64;
        let mut keys = 0u64;
        let mut stripped = 0u64;
        let mut offloads = Vec::new();
        // With a disk tier, memory is first taken from objects that keep a copy
        // on disk (nothing is lost), least recently used first; then as usual.
        let copies_first = medium == Medium::Memory && self.config.offload.enabled;
        let passes = [
            (threshold, false, true),
            (u64::MAX, false, true),
            (threshold, false, false),
            (u64::MAX, false, false),
            (u64::MAX, self.config.allow_evict_soft_pinned_objects, false),
        ];
        let start = rng.random_range(0..self.shards.len());
        for (i, (limit, allow_soft, kept_elsewhere_only)) in passes.into_iter().enumerate() {
            if freed >= target {
                break;
            }
            if kept_elsewhere_only && !copies_first {
                continue;
            }
            if i == 4 && !allow_soft {
                break;
            }
            for n in 0..self.shards.len() {
                if freed >= target {
                    break;
                }
                let mut shard = self.shards[(start + n) % self.shards.len()].lock();
                if shard.len() == 0 {
                    continue;
                }
                let segs = self.segments.read();
                shard.retain(
                    |key, o| {
                        if freed >= target || o.last_access > limit || !o.evictable(now, allow_soft)
                        {
                            return false;
                        }
                        let (here, elsewhere): (Vec<Placement>, Vec<Placement>) = o
                            .replicas
                            .as_slice()
                            .iter()
                            .partition(|p| in_tier(&segs, p));
                        if here.is_empty() || (kept_elsewhere_only && elsewhere.is_empty()) {
                            return false;
                        }
                        let bytes = reserved_len(medium, o.size) * here.len() as u64;
                        if !elsewhere.is_empty() {
                            // The other tier keeps the object.
                            self.release_now(&segs, &here, o.size, o.version);
                            o.replicas = Replicas::from_vec(elsewhere);
                            freed += bytes;
                            stripped += 1;
                            return false;
                        }
                        if offload_on_evict {
                            if self.offload_pending(key, now) {
                                // Its copy is on the way.
                                return false;
                            }
                            // A copy that failed recently (a full disk tier) does
                            // not hold memory: the object goes as without a tier.
                            if !self.copy_failed_recently(key, now)
                                && let Some(order) = Self::offload_order(&segs, key, o)
                            {
                                offloads.push(order);
                                return false;
                            }
                        }
                        freed += bytes;
                        true
                    },
                    |key, o| {
                        self.release_now(&segs, o.replicas.as_slice(), o.size, o.version);
                        if self.config.offload.enabled {
                            self.offload_done(key);
                        }
                        keys += 1;
                    },
                );
            }
        }
        self.queue_offloads(offloads);
        if stripped > 0 && medium == Medium::Memory {
            self.metrics
                .offloaded_evictions
                .fetch_add(stripped, Relaxed);
        }
        if freed > 0 {
            self.metrics.eviction_successes.fetch_add(1, Relaxed);
            self.metrics.evicted_keys.fetch_add(keys, Relaxed);
            self.metrics.evicted_bytes.fetch_add(freed, Relaxed);
            tracing::debug!(freed, keys, stripped, ?medium, "evicted");
        }
        freed
    }

    /// Frees disk-tier space for a copy that found none (with
    /// `--enable_disk_eviction`); whether anything was freed.
    pub(super) fn evict_disk_for_space(&self, needed: u64) -> bool {
        if !self.config.offload.disk_eviction {
            return false;
        }
        let (capacity, _) = self.segments.read().disk_usage();
        let target = needed.max((capacity as f64 * self.config.eviction_ratio) as u64);
        self.evict_tier(target, Medium::Disk) > 0
    }

    /// Frees disk-tier space above the high watermark (with
    /// `--enable_disk_eviction`), at most every 100 ms.
    fn evict_disk_if_needed(&self) -> u64 {
        if !self.config.offload.disk_eviction {
            return 0;
        }
        let now = self.now_ms();
        let last = self.last_disk_eviction.load(Relaxed);
        if now < last + FUTILE_EVICTION_BACKOFF_MS {
            return 0;
        }
        let (capacity, used) = self.segments.read().disk_usage();
        if capacity == 0 {
            return 0;
        }
        let ratio = used as f64 / capacity as f64;
        let hw = self.config.eviction_high_watermark_ratio;
        if ratio <= hw {
            return 0;
        }
        self.last_disk_eviction.store(now, Relaxed);
        let fraction = self
            .config
            .eviction_ratio
            .max(ratio - hw + self.config.eviction_ratio);
        self.evict_tier((capacity as f64 * fraction) as u64, Medium::Disk)
    }

    /// Runs one eviction pass for an allocation that failed; returns whether a retry
    /// can succeed. Concurrent callers share one pass, and a pass that found nothing
    /// is not repeated until space changes or a backoff passes (no CPU spinning when
    /// everything is leased or pinned).
    pub(super) fn evict_for_space(&self, needed: u64) -> bool {
        let seen_passes = self.eviction.lock().passes;
        let mut st = self.eviction.lock();
        if st.passes != seen_passes && st.last_freed > 0 {
            return true;
        }
        let (capacity, _) = self.segments.read().usage();
        let target = needed.max((capacity as f64 * self.config.eviction_ratio) as u64);
        self.evict_unless_futile(&mut st, target) > 0
    }

    /// Evicts when usage is above the high watermark. Called every few ms.
    pub fn evict_if_needed(&self) -> u64 {
        self.evict_disk_if_needed() + self.evict_memory_if_needed()
    }

    fn evict_memory_if_needed(&self) -> u64 {
        let (capacity, used) = self.segments.read().usage();
        if capacity == 0 {
            return 0;
        }
        let ratio = used as f64 / capacity as f64;
        let hw = self.config.eviction_high_watermark_ratio;
        let forced = self.need_eviction.swap(false, Relaxed);
        if ratio <= hw && !forced {
            return 0;
        }
        let fraction = self
            .config
            .eviction_ratio
            .max(ratio - hw + self.config.eviction_ratio);
        let target = (capacity as f64 * fraction) as u64;
        let mut st = self.eviction.lock();
        self.evict_unless_futile(&mut st, target)
    }

    /// Runs an eviction pass unless the previous one found nothing, nothing was freed
    /// since, and the backoff has not passed.
    pub(super) fn evict_unless_futile(&self, st: &mut EvictionState, target: u64) -> u64 {
        let now = self.now_ms();
        if st.passes > 0
            && st.last_freed == 0
            && self.free_epoch.load(Relaxed) == st.epoch_at_last_run
            && now < st.last_run + FUTILE_EVICTION_BACKOFF_MS
        {
            return 0;
        }
        let freed = self.evict(target);
        st.passes += 1;
        st.last_run = now;
        st.last_freed = freed;
        st.epoch_at_last_run = self.free_epoch.load(Relaxed);
        freed
    }
}
