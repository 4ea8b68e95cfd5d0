//! Eviction: approximate LRU by sampled access times, soft pins in a second pass.

use super::*;

impl MasterService {
    /// Evicts roughly `target` bytes by approximate LRU. Returns bytes freed.
    pub fn evict(&self, target: u64) -> u64 {
        let now = self.now_ms();
        self.metrics.eviction_attempts.fetch_add(1, Relaxed);
        let total_keys: usize = self.shards.iter().map(|s| s.lock().len()).sum();
        if total_keys == 0 {
            return 0;
        }
        // Estimate the access time below which ~target bytes of evictable objects lie.
        let stride = (total_keys / EVICTION_SAMPLES).max(1);
        let mut samples: Vec<(u64, u64)> = Vec::with_capacity(EVICTION_SAMPLES + 1024);
        let mut rng = rand::rng();
        for shard in self.shards.iter() {
            let offset = rng.random_range(0..stride);
            shard.lock().sample(offset, stride, |o| {
                if o.evictable(now, false) {
                    samples.push((
                        o.last_access,
                        allocated_len(o.size) * o.replicas.as_slice().len() as u64,
                    ));
                }
            });
        }
        samples.sort_unstable();
        let mut threshold = u64::MAX;
        let mut acc = 0u64;
        for (access, bytes) in &samples {
            acc += bytes * stride as u64;
            if acc >= target + target / 8 {
                threshold = *access;
                break;
            }
        }
        let mut freed = 0u64;
        let mut keys = 0u64;
        let passes = [
            (threshold, false),
            (u64::MAX, false),
            (u64::MAX, self.config.allow_evict_soft_pinned_objects),
        ];
        let start = rng.random_range(0..self.shards.len());
        for (i, (limit, allow_soft)) in passes.into_iter().enumerate() {
            if freed >= target {
                break;
            }
            if i == 2 && !allow_soft {
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
                    |_, o| {
                        if freed < target && o.last_access <= limit && o.evictable(now, allow_soft)
                        {
                            freed += allocated_len(o.size) * o.replicas.as_slice().len() as u64;
                            true
                        } else {
                            false
                        }
                    },
                    |_, o| {
                        self.release_now(&segs, o.replicas.as_slice(), o.size, o.version);
                        keys += 1;
                    },
                );
            }
        }
        if freed > 0 {
            self.metrics.eviction_successes.fetch_add(1, Relaxed);
            self.metrics.evicted_keys.fetch_add(keys, Relaxed);
            self.metrics.evicted_bytes.fetch_add(freed, Relaxed);
            tracing::debug!(freed, keys, "evicted");
        }
        freed
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
