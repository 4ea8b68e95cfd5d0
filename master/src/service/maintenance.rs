//! Maintenance: housekeeping (expiry, deferred frees, abandoned writes), gauges, admin listings.

use super::*;

impl MasterService {
    /// Expires silent clients, releases deferred space and reclaims abandoned
    /// writes. Called about once a second.
    pub fn housekeeping(&self) {
        let now = self.now_ms();
        let ttl = self.config.client_ttl.as_millis() as u64;
        let expired: Vec<(ClientId, Vec<SegmentId>)> = {
            let mut clients = self.clients.lock();
            let dead: Vec<ClientId> = clients
                .iter()
                .filter(|(_, c)| now >= c.last_seen + ttl)
                .map(|(id, _)| *id)
                .collect();
            dead.into_iter()
                .filter_map(|id| clients.remove(&id).map(|c| (id, c.segments)))
                .collect()
        };
        for (client, segments) in expired {
            let dropped: u64 = segments.iter().map(|s| self.drop_segment(s)).sum();
            self.tasks
                .lock()
                .fail_client(&client, "the client running the task expired");
            self.metrics.expired_clients.fetch_add(1, Relaxed);
            tracing::warn!(client = %client, segments = segments.len(), dropped, "client expired (no ping within client_ttl)");
        }

        let due: Vec<DeferredFree> = {
            let mut deferred = self.deferred.lock();
            let (due, keep): (Vec<_>, Vec<_>) =
                deferred.drain(..).partition(|d| d.release_at <= now);
            *deferred = keep;
            due
        };
        let mut due = due;
        self.replaced.lock().retain(|_, r| {
            if r.frees.iter().all(|d| d.release_at <= now) {
                due.append(&mut r.frees);
                false
            } else {
                true
            }
        });
        if !due.is_empty() {
            self.free_deferred(due);
        }

        self.expire_copies(now);
        self.tasks.lock().prune();

        let release_ms = self.config.put_start_release_timeout.as_millis() as u64;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            if shard.processing.is_empty() {
                continue;
            }
            let stale: Vec<Box<str>> = shard
                .processing
                .iter()
                .filter(|(_, p)| now >= p.started + release_ms)
                .map(|(k, _)| k.clone())
                .collect();
            if stale.is_empty() {
                continue;
            }
            let segs = self.segments.read();
            for key in stale {
                let p = shard.processing.remove(&key).expect("present");
                self.free_pending(&segs, &p);
                let hash = self.hash(&key);
                if let Some(o) = shard.get_mut(hash, &key) {
                    o.flags &= !FLAG_PENDING_UPSERT;
                }
                self.metrics.put_start_releases.fetch_add(1, Relaxed);
            }
            self.free_epoch.fetch_add(1, Relaxed);
        }
    }

    /// Current gauges.
    pub fn gauges(&self) -> Gauges {
        let (capacity_bytes, allocated_bytes, segment_count, disk, replicas, granted_bytes) = {
            let segs = self.segments.read();
            let (c, u) = segs.usage();
            (
                c,
                u,
                segs.len() as u64,
                segs.disk_usage(),
                segs.replicas_per_tier(),
                segs.iter().map(|s| s.granted()).sum(),
            )
        };
        let (mut key_count, mut processing_count) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let s = shard.lock();
            key_count += s.len() as u64;
            processing_count += s.processing.len() as u64;
        }
        // One lock: a guard in the struct literal below would live to its end.
        let (active_clients, connected_dummies) = {
            let clients = self.clients.lock();
            (
                clients.len() as u64,
                clients.values().map(|c| c.dummies).sum(),
            )
        };
        Gauges {
            capacity_bytes,
            allocated_bytes,
            key_count,
            processing_count,
            active_clients,
            segment_count,
            connected_dummies,
            disk_capacity_bytes: disk.0,
            disk_allocated_bytes: disk.1,
            offload_queue_depth: self.offload_queue_depth() as u64,
            promotion_queue_depth: self.promotion_queue_depth() as u64,
            memory_replicas: replicas.0,
            disk_replicas: replicas.1,
            granted_bytes,
        }
    }

    /// Upstream's one-line summary.
    pub fn summary_line(&self) -> String {
        let g = self.gauges();
        let pct = if g.capacity_bytes == 0 {
            0.0
        } else {
            100.0 * g.allocated_bytes as f64 / g.capacity_bytes as f64
        };
        format!(
            "Storage: {} / {} ({pct:.1}%) | Keys: {} | Clients: {} | Segments: {} | Evicted keys: {}",
            human_bytes(g.allocated_bytes),
            human_bytes(g.capacity_bytes),
            g.key_count,
            g.active_clients,
            g.segment_count,
            self.metrics.evicted_keys.load(Relaxed),
        )
    }

    /// Every complete key (admin; capped at `limit`).
    pub fn all_keys(&self, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            if out.len() >= limit {
                break;
            }
            shard.lock().for_each(|k, _| {
                if out.len() < limit {
                    out.push(k.to_string());
                }
            });
        }
        out
    }
}
