//! [`MasterService`]: the master's state and every operation on it.
//!
//! Operations are synchronous and short: they take one metadata shard lock at a time
//! (then, nested, the segment table's read lock and one allocator lock). Lock order is
//! always shard → segment table → allocator → inventory log; the client table is never
//! held together with any of them.
//!
//! # Layout
//!
//! - this file: the state, shared helpers (versions, descriptors, freeing space);
//! - `writes`, `reads`, `removes`, `eviction`: the object operations;
//! - `grants`: space a real client places its own writes in, and their one-round-trip commit;
//! - `segments`: mount, unmount, remount with an inventory, ping, inventory sync;
//! - `maintenance`: housekeeping, gauges, admin listings;
//! - `replication`: replica copy / move tasks; `drain`: segment drain jobs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use tokio::time::Instant;

use mooncake_proto::*;

use crate::allocator::{GRANULE, RangeAllocator, allocated_len};
use crate::config::MasterConfig;
use crate::inventory::InventoryLog;
use crate::metrics::{Gauges, Metrics, human_bytes};
use crate::segments::{DISK_BLOCK, Segment, SegmentTable, reserved_len};
use crate::shard::{
    FLAG_HARD_PIN, FLAG_PENDING_UPSERT, FLAG_REPLICATING, FLAG_RESTORED, Object, PendingWrite,
    Placement, READERS_UNKNOWN, Replicas, Shard,
};
use crate::tasks::TaskTable;

mod drain;
mod eviction;
mod grants;
mod maintenance;
mod offload;
mod reads;
mod removes;
mod replication;
mod segments;
mod writes;

pub use drain::{DrainJobInfo, JobStatus};

/// Versions are master-clock microseconds: an inventory entry claiming a version
/// further in the future than this is forged or corrupt, and refused.
const MAX_VERSION_SKEW_US: u64 = 600_000_000;
/// Most inventory entries a client may send across the chunks of one remount.
const MAX_REMOUNT_ENTRIES: usize = 100_000_000;
/// Samples taken to estimate the LRU threshold of one eviction pass.
const EVICTION_SAMPLES: usize = 16_384;
/// An eviction pass that found nothing is not repeated within this many ms unless
/// space was freed in the meantime.
const FUTILE_EVICTION_BACKOFF_MS: u64 = 100;
/// Space of a replica whose transfer failed is reused only after this long, so a
/// transfer still in flight cannot land in someone else's object.
const FAILED_REPLICA_GRACE_MS: u64 = 10_000;

struct ClientEntry {
    last_seen: u64,
    /// Dummies it serves, as it last reported.
    dummies: u64,
    host: String,
    segments: Vec<SegmentId>,
    log: Arc<Mutex<InventoryLog>>,
    restore: Option<RestoreBuffer>,
}

#[derive(Default)]
struct RestoreBuffer {
    segments: Vec<SegmentDesc>,
    entries: Vec<InventoryEntry>,
}

struct DeferredFree {
    segment_id: SegmentId,
    slot: u32,
    offset: u64,
    size: u64,
    release_at: u64,
}

/// A replaced or removed value that readers may still be copying: freed when the
/// last of them releases its grant, or when the lease ends, whichever comes first.
struct ReplacedValue {
    frees: Vec<DeferredFree>,
    readers: u16,
}

#[derive(Default)]
struct EvictionState {
    passes: u64,
    last_run: u64,
    last_freed: u64,
    epoch_at_last_run: u64,
}

/// The master's state.
pub struct MasterService {
    config: MasterConfig,
    start: Instant,
    hasher: foldhash::fast::RandomState,
    shard_mask: u64,
    shards: Box<[Mutex<Shard>]>,
    segments: RwLock<SegmentTable>,
    clients: Mutex<HashMap<ClientId, ClientEntry>>,
    deferred: Mutex<Vec<DeferredFree>>,
    /// Replaced values still being read, by version.
    replaced: Mutex<HashMap<u64, ReplacedValue>>,
    last_version: AtomicU64,
    view_version: u64,
    eviction: Mutex<EvictionState>,
    need_eviction: AtomicBool,
    /// Bumped whenever space is freed or added, so a futile eviction can tell
    /// whether trying again could help.
    free_epoch: AtomicU64,
    /// Replica copy / move tasks.
    tasks: Mutex<TaskTable>,
    /// Segment drain jobs.
    drains: Mutex<HashMap<uuid::Uuid, drain::DrainJob>>,
    /// Offloads queued and disk-only reads counted (taken alone, never with a
    /// shard lock held across task submission).
    offload: Mutex<offload::OffloadState>,
    /// When the disk tiers were last checked for eviction (ms).
    last_disk_eviction: AtomicU64,
    /// Operation counters.
    pub metrics: Metrics,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl MasterService {
    /// A master with no segments and no objects.
    pub fn new(config: MasterConfig) -> Self {
        let shard_count = config.shard_count.max(1).next_power_of_two();
        MasterService {
            start: Instant::now(),
            hasher: foldhash::fast::RandomState::default(),
            shard_mask: shard_count as u64 - 1,
            shards: (0..shard_count)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            segments: RwLock::new(SegmentTable::default()),
            clients: Mutex::new(HashMap::new()),
            deferred: Mutex::new(Vec::new()),
            replaced: Mutex::new(HashMap::new()),
            last_version: AtomicU64::new(0),
            view_version: unix_micros() | 1,
            eviction: Mutex::new(EvictionState::default()),
            need_eviction: AtomicBool::new(false),
            free_epoch: AtomicU64::new(0),
            tasks: Mutex::new(TaskTable::default()),
            drains: Mutex::new(HashMap::new()),
            offload: Mutex::new(offload::OffloadState::default()),
            last_disk_eviction: AtomicU64::new(0),
            metrics: Metrics::default(),
            config,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &MasterConfig {
        &self.config
    }

    /// Identifies this master incarnation.
    pub fn view_version(&self) -> u64 {
        self.view_version
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // Bits 40.. are independent of the bits hashbrown uses inside a shard
        // (low bits for the bucket, top 7 for the tag).
        &self.shards[((hash >> 40) & self.shard_mask) as usize]
    }

    fn next_version(&self) -> u64 {
        let now = unix_micros();
        let prev = self
            .last_version
            .fetch_update(Relaxed, Relaxed, |v| Some((v + 1).max(now)))
            .unwrap_or(0);
        (prev + 1).max(now)
    }

    /// Upstream's answers for keys: an empty key names no object (reads and
    /// removes: `OBJECT_NOT_FOUND`; writes check it first and answer
    /// `INVALID_PARAMS`); a key longer than `--max_key_len` is `INVALID_KEY`.
    fn validate_key(&self, key: &str) -> MResult<()> {
        if key.is_empty() {
            return Err(ErrorCode::ObjectNotFound);
        }
        if key.len() > self.config.max_key_len {
            return Err(ErrorCode::InvalidKey);
        }
        Ok(())
    }

    fn describe(
        segs: &SegmentTable,
        p: &Placement,
        size: u64,
        version: u64,
        status: ReplicaStatus,
    ) -> Option<ReplicaDesc> {
        let seg = segs.get(p.segment)?;
        let (endpoint, base) = seg.route.read().clone();
        Some(ReplicaDesc {
            segment_id: seg.desc.id,
            segment_name: seg.desc.name.clone(),
            transport_endpoint: endpoint,
            offset: p.offset,
            buffer_address: base.wrapping_add(p.offset),
            size,
            status,
            version,
            medium: seg.desc.medium,
        })
    }

    fn emit_added(
        segs: &SegmentTable,
        key: &str,
        placements: &[Placement],
        size: u64,
        version: u64,
    ) {
        for p in placements {
            if let Some(seg) = segs.get(p.segment) {
                seg.log.lock().push(InventoryChange::Added(InventoryEntry {
                    segment_id: seg.desc.id,
                    key: key.to_string(),
                    offset: p.offset,
                    size,
                    version,
                }));
            }
        }
    }

    /// Frees an object's space now and tells the owners it is gone.
    fn release_now(&self, segs: &SegmentTable, placements: &[Placement], size: u64, version: u64) {
        for p in placements {
            if let Some(seg) = segs.get(p.segment) {
                seg.free(p.offset, size);
                seg.log.lock().push(InventoryChange::Removed {
                    segment_id: seg.desc.id,
                    offset: p.offset,
                    version,
                });
            }
        }
        self.free_epoch.fetch_add(1, Relaxed);
    }

    /// Frees space at `release_at` (a reader may still hold its lease, or a zombie
    /// writer may still be writing).
    fn release_later(
        &self,
        segs: &SegmentTable,
        placements: &[Placement],
        size: u64,
        version: u64,
        release_at: u64,
        notify_owner: bool,
    ) {
        let mut deferred = self.deferred.lock();
        for p in placements {
            if let Some(seg) = segs.get(p.segment) {
                if notify_owner {
                    seg.log.lock().push(InventoryChange::Removed {
                        segment_id: seg.desc.id,
                        offset: p.offset,
                        version,
                    });
                }
                deferred.push(DeferredFree {
                    segment_id: seg.desc.id,
                    slot: p.segment,
                    offset: p.offset,
                    size,
                    release_at,
                });
            }
        }
    }

    /// Releases a value replaced by a newer one or removed: at once when no reader
    /// can still be copying it, else when the last reader releases its grant or
    /// the lease ends.
    fn release_replaced(&self, segs: &SegmentTable, old: &Object, now: u64) {
        if !old.leased(now) || old.readers == 0 {
            self.release_now(segs, old.replicas.as_slice(), old.size, old.version);
            return;
        }
        let mut frees = Vec::new();
        for p in old.replicas.as_slice() {
            if let Some(seg) = segs.get(p.segment) {
                seg.log.lock().push(InventoryChange::Removed {
                    segment_id: seg.desc.id,
                    offset: p.offset,
                    version: old.version,
                });
                frees.push(DeferredFree {
                    segment_id: seg.desc.id,
                    slot: p.segment,
                    offset: p.offset,
                    size: old.size,
                    release_at: old.lease_until,
                });
            }
        }
        self.replaced.lock().insert(
            old.version,
            ReplacedValue {
                frees,
                readers: old.readers,
            },
        );
    }

    /// Readers are done with the values they were granted (`(key, version)` per
    /// grant): space of replaced values nobody reads any more is freed at once.
    pub fn release_reads(&self, reads: &[(String, u64)]) {
        let mut done = Vec::new();
        for (key, version) in reads {
            if self.validate_key(key).is_err() {
                continue;
            }
            let hash = self.hash(key);
            {
                let mut shard = self.shard(hash).lock();
                if let Some(o) = shard.get_mut(hash, key)
                    && o.version == *version
                {
                    o.release_reader();
                    continue;
                }
            }
            let mut replaced = self.replaced.lock();
            if let Some(r) = replaced.get_mut(version) {
                if r.readers != READERS_UNKNOWN {
                    r.readers = r.readers.saturating_sub(1);
                }
                if r.readers == 0 {
                    done.extend(replaced.remove(version).expect("present").frees);
                }
            }
        }
        if !done.is_empty() {
            self.free_deferred(done);
        }
    }

    fn free_deferred(&self, frees: Vec<DeferredFree>) {
        let segs = self.segments.read();
        for d in frees {
            if let Some(seg) = segs.get(d.slot).filter(|s| s.desc.id == d.segment_id) {
                seg.free(d.offset, d.size);
            }
        }
        self.free_epoch.fetch_add(1, Relaxed);
    }

    /// Frees the space of a write that will never end (revoked or abandoned).
    fn free_pending(&self, segs: &SegmentTable, pending: &PendingWrite) {
        for pl in &pending.replicas {
            if let Some(seg) = segs.get(pl.segment) {
                seg.free(pl.offset, pending.size);
            }
        }
        self.free_epoch.fetch_add(1, Relaxed);
    }

    fn client_host(&self, client: &ClientId) -> Option<String> {
        self.clients.lock().get(client).map(|c| c.host.clone())
    }

    fn register_client(&self, client: ClientId, host: &str) -> Arc<Mutex<InventoryLog>> {
        let now = self.now_ms();
        let mut clients = self.clients.lock();
        let entry = clients.entry(client).or_insert_with(|| ClientEntry {
            last_seen: now,
            dummies: 0,
            host: host.to_string(),
            segments: Vec::new(),
            log: Arc::new(Mutex::new(InventoryLog::new(
                self.config.inventory_log_limit,
            ))),
            restore: None,
        });
        entry.last_seen = now;
        if entry.host.is_empty() {
            entry.host = host.to_string();
        }
        entry.log.clone()
    }
}

fn compile_regex(pattern: &str) -> MResult<regex::Regex> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            tracing::debug!("refused regex {pattern:?}: {e}");
            ErrorCode::InvalidParams
        })
}

#[cfg(test)]
mod tests;
