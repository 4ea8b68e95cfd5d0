//! Operation counters and latency histograms, rendered in Prometheus text format
//! with upstream's metric names (`master_<op>_requests_total`, ...).

use mooncake_daemon::prometheus::Exposition;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

macro_rules! ops {
    ($($variant:ident => $name:literal, $batch:literal;)*) => {
        /// A master operation, for metrics.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Op { $(#[doc = $name] $variant,)* }
        impl Op {
            /// Every operation.
            pub const ALL: &'static [Op] = &[$(Op::$variant,)*];
            /// Metric name fragment.
            pub fn name(self) -> &'static str { match self { $(Op::$variant => $name,)* } }
            /// Whether this is a batch operation.
            pub fn is_batch(self) -> bool { match self { $(Op::$variant => $batch,)* } }
        }
    };
}

ops! {
    PutStart => "put_start", false;
    PutEnd => "put_end", false;
    PutRevoke => "put_revoke", false;
    UpsertStart => "upsert_start", false;
    GetReplicaList => "get_replica_list", false;
    GetReplicaListByRegex => "get_replica_list_by_regex", false;
    ExistKey => "exist_key", false;
    GetSize => "get_size", false;
    Remove => "remove", false;
    RemoveByRegex => "remove_by_regex", false;
    RemoveAll => "remove_all", false;
    MountSegment => "mount_segment", false;
    RemountSegment => "remount_segment", false;
    UnmountSegment => "unmount_segment", false;
    Ping => "ping", false;
    ReportLoad => "report_load", false;
    SyncInventory => "sync_inventory", false;
    FetchInventory => "fetch_inventory", false;
    CreateCopyTask => "create_copy_task", false;
    CreateMoveTask => "create_move_task", false;
    QueryTask => "query_task", false;
    FetchTasks => "fetch_tasks", false;
    UpdateTask => "update_task", false;
    CopyStart => "copy_start", false;
    CopyEnd => "copy_end", false;
    CopyRevoke => "copy_revoke", false;
    BatchPutStart => "batch_put_start", true;
    BatchPutEnd => "batch_put_end", true;
    BatchPutRevoke => "batch_put_revoke", true;
    BatchUpsertStart => "batch_upsert_start", true;
    BatchGetReplicaList => "batch_get_replica_list", true;
    BatchExistKey => "batch_exist_key", true;
    BatchRemove => "batch_remove", true;
    BatchReplicaClear => "batch_replica_clear", true;
    GrantSpace => "grant_space", false;
    BatchPutCommit => "batch_put_commit", true;
    ReturnSpace => "return_space", false;
}

/// Latency bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0,
];

#[derive(Default)]
struct OpStats {
    requests: AtomicU64,
    failures: AtomicU64,
    items: AtomicU64,
    failed_items: AtomicU64,
    latency_ns_sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

/// All master metrics.
pub struct Metrics {
    ops: Vec<OpStats>,
    /// Eviction passes attempted.
    pub eviction_attempts: AtomicU64,
    /// Eviction passes that freed something.
    pub eviction_successes: AtomicU64,
    /// Objects evicted.
    pub evicted_keys: AtomicU64,
    /// Bytes evicted.
    pub evicted_bytes: AtomicU64,
    /// `put_start` allocation failures.
    pub put_start_alloc_failures: AtomicU64,
    /// `put_start` calls that got fewer replicas than asked.
    pub put_start_partial_allocations: AtomicU64,
    /// Abandoned writes taken over.
    pub put_start_discards: AtomicU64,
    /// Abandoned writes whose space was reclaimed.
    pub put_start_releases: AtomicU64,
    /// Clients expired for silence.
    pub expired_clients: AtomicU64,
    /// Objects restored from client inventories.
    pub restored_objects: AtomicU64,
    /// Offload copies queued to a disk tier.
    pub offload_queued: AtomicU64,
    /// Offloads not queued (queue full, or task limit).
    pub offload_skipped: AtomicU64,
    /// Memory replicas dropped by eviction while a disk copy stays.
    pub offloaded_evictions: AtomicU64,
    /// Copies from a disk tier back to memory queued.
    pub promotions_queued: AtomicU64,
    /// Promotions not made: memory had no free room below the high watermark.
    pub promotions_skipped: AtomicU64,
    /// Replica lists served whose first replica is in memory (upstream's
    /// `mem_cache_hit_nums_`), and their bytes.
    pub memory_hits: AtomicU64,
    /// See `memory_hits`.
    pub memory_hit_bytes: AtomicU64,
    /// Replica lists served from a disk tier only (upstream's
    /// `file_cache_hit_nums_`), and their bytes.
    pub disk_hits: AtomicU64,
    /// See `disk_hits`.
    pub disk_hit_bytes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ops: Op::ALL.iter().map(|_| OpStats::default()).collect(),
            eviction_attempts: AtomicU64::new(0),
            eviction_successes: AtomicU64::new(0),
            evicted_keys: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            put_start_alloc_failures: AtomicU64::new(0),
            put_start_partial_allocations: AtomicU64::new(0),
            put_start_discards: AtomicU64::new(0),
            put_start_releases: AtomicU64::new(0),
            expired_clients: AtomicU64::new(0),
            restored_objects: AtomicU64::new(0),
            offload_queued: AtomicU64::new(0),
            offload_skipped: AtomicU64::new(0),
            offloaded_evictions: AtomicU64::new(0),
            promotions_queued: AtomicU64::new(0),
            promotions_skipped: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            memory_hit_bytes: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            disk_hit_bytes: AtomicU64::new(0),
        }
    }
}

/// Gauges sampled when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Sum of mounted segment sizes.
    pub capacity_bytes: u64,
    /// Bytes allocated.
    pub allocated_bytes: u64,
    /// Complete objects.
    pub key_count: u64,
    /// Writes in flight.
    pub processing_count: u64,
    /// Live clients.
    pub active_clients: u64,
    /// Mounted segments.
    pub segment_count: u64,
    /// Dummy clients the live real clients serve.
    pub connected_dummies: u64,
    /// Sum of the disk tiers' sizes.
    pub disk_capacity_bytes: u64,
    /// Bytes of the disk tiers holding copies.
    pub disk_allocated_bytes: u64,
    /// Offload copies queued and not yet done.
    pub offload_queue_depth: u64,
    /// Promotions (copies from a disk tier back to memory) queued and not yet done.
    pub promotion_queue_depth: u64,
    /// Replicas in memory segments (complete or being written).
    pub memory_replicas: u64,
    /// Replicas in disk tiers.
    pub disk_replicas: u64,
    /// Bytes of memory segments granted to their owners for writes they place
    /// themselves, not yet committed or given back (counted as allocated).
    pub granted_bytes: u64,
}

impl Metrics {
    /// Records one call: `items` and `failed_items` count batch entries.
    pub fn record(&self, op: Op, elapsed: Duration, failed: bool, items: u64, failed_items: u64) {
        let s = &self.ops[op as usize];
        s.requests.fetch_add(1, Relaxed);
        if failed {
            s.failures.fetch_add(1, Relaxed);
        }
        s.items.fetch_add(items, Relaxed);
        s.failed_items.fetch_add(failed_items, Relaxed);
        s.latency_ns_sum
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i].fetch_add(1, Relaxed);
        }
    }

    /// Requests recorded for `op`.
    pub fn requests(&self, op: Op) -> u64 {
        self.ops[op as usize].requests.load(Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut e = Exposition::new();
        for (name, help, v) in [
            (
                "master_total_capacity_bytes",
                "Total bytes of mounted segments",
                g.capacity_bytes,
            ),
            (
                "master_allocated_bytes",
                "Bytes allocated to objects",
                g.allocated_bytes,
            ),
            ("master_key_count", "Complete objects", g.key_count),
            (
                "master_processing_key_count",
                "Writes in flight",
                g.processing_count,
            ),
            ("master_active_clients", "Live clients", g.active_clients),
            ("master_segment_count", "Mounted segments", g.segment_count),
            (
                "master_connected_dummies",
                "Dummy clients the live real clients serve",
                g.connected_dummies,
            ),
            (
                "master_disk_capacity_bytes",
                "Total bytes of the real clients' disk tiers",
                g.disk_capacity_bytes,
            ),
            (
                "master_disk_allocated_bytes",
                "Bytes of the disk tiers holding copies",
                g.disk_allocated_bytes,
            ),
            (
                "master_offload_queue_depth",
                "Offload copies queued and not yet done",
                g.offload_queue_depth,
            ),
            (
                "master_promotion_queue_depth",
                "Copies from a disk tier back to memory queued and not yet done",
                g.promotion_queue_depth,
            ),
            (
                "master_memory_replicas",
                "Replicas in memory segments (complete or being written)",
                g.memory_replicas,
            ),
            (
                "master_disk_replicas",
                "Replicas in disk tiers (complete or being written)",
                g.disk_replicas,
            ),
            (
                "master_granted_bytes",
                "Bytes granted to segment owners for writes they place themselves, not yet used",
                g.granted_bytes,
            ),
        ] {
            e.gauge(name, help, v);
        }
        for (name, help, v) in [
            (
                "master_attempted_evictions_total",
                "Eviction passes",
                &self.eviction_attempts,
            ),
            (
                "master_successful_evictions_total",
                "Eviction passes that freed space",
                &self.eviction_successes,
            ),
            (
                "master_evicted_key_count",
                "Objects evicted",
                &self.evicted_keys,
            ),
            (
                "master_evicted_size_bytes",
                "Bytes evicted",
                &self.evicted_bytes,
            ),
            (
                "master_put_start_alloc_failures_total",
                "put_start without space",
                &self.put_start_alloc_failures,
            ),
            (
                "master_put_start_partial_allocations_total",
                "put_start with fewer replicas than asked",
                &self.put_start_partial_allocations,
            ),
            (
                "master_put_start_discard_cnt",
                "Abandoned writes taken over",
                &self.put_start_discards,
            ),
            (
                "master_put_start_release_cnt",
                "Abandoned writes reclaimed",
                &self.put_start_releases,
            ),
            (
                "master_expired_clients_total",
                "Clients expired for silence",
                &self.expired_clients,
            ),
            (
                "master_restored_objects_total",
                "Objects rebuilt from client inventories",
                &self.restored_objects,
            ),
            (
                "master_offload_queued_total",
                "Copies to a disk tier queued",
                &self.offload_queued,
            ),
            (
                "master_offload_skipped_total",
                "Copies to a disk tier not queued (queue or task limit)",
                &self.offload_skipped,
            ),
            (
                "master_offloaded_evictions_total",
                "Memory replicas evicted while a disk copy stays",
                &self.offloaded_evictions,
            ),
            (
                "master_promotions_queued_total",
                "Copies from a disk tier back to memory queued",
                &self.promotions_queued,
            ),
            (
                "master_promotions_skipped_total",
                "Promotions not made: no free memory below the high watermark",
                &self.promotions_skipped,
            ),
            // Upstream's names for where reads were served from.
            (
                "mem_cache_hit_nums_",
                "Replica lists served from the memory pool",
                &self.memory_hits,
            ),
            (
                "file_cache_hit_nums_",
                "Replica lists served from a disk tier",
                &self.disk_hits,
            ),
            (
                "mem_cache_hit_bytes_total",
                "Bytes of replica lists served from the memory pool",
                &self.memory_hit_bytes,
            ),
            (
                "file_cache_hit_bytes_total",
                "Bytes of replica lists served from a disk tier",
                &self.disk_hit_bytes,
            ),
        ] {
            e.counter(name, help, v.load(Relaxed));
        }
        for op in Op::ALL {
            let s = &self.ops[*op as usize];
            let name = op.name();
            let mut counters = vec![
                ("requests", s.requests.load(Relaxed)),
                ("failures", s.failures.load(Relaxed)),
            ];
            if op.is_batch() {
                counters.push(("items", s.items.load(Relaxed)));
                counters.push(("failed_items", s.failed_items.load(Relaxed)));
            }
            for (what, v) in counters {
                e.counter(&format!("master_{name}_{what}_total"), "", v);
            }
            let hist = format!("master_{name}_latency_seconds");
            e.family(&hist, "histogram", "").histogram(
                &hist,
                &[],
                &BUCKETS,
                s.buckets.iter().map(|b| b.load(Relaxed)),
                s.latency_ns_sum.load(Relaxed) as f64 / 1e9,
                s.requests.load(Relaxed),
            );
        }
        e.finish()
    }
}

/// Formats bytes the way upstream's summary line does ("1.50 GB").
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record(Op::PutStart, Duration::from_micros(30), false, 1, 0);
        m.record(Op::PutStart, Duration::from_millis(2), true, 1, 1);
        m.record(Op::BatchExistKey, Duration::from_micros(5), false, 128, 0);
        let text = m.render(&Gauges {
            key_count: 3,
            ..Default::default()
        });
        assert!(text.contains("master_put_start_requests_total 2"));
        assert!(text.contains("master_put_start_failures_total 1"));
        assert!(text.contains("master_batch_exist_key_items_total 128"));
        assert!(text.contains("master_key_count 3"));
        assert!(text.contains("master_put_start_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert_eq!(human_bytes(0), "0.00 B");
        assert_eq!(human_bytes(3 << 30), "3.00 GB");
    }
}
