//! [`MasterService`]: the master's state and every operation on it.
//!
//! Operations are synchronous and short: they take one metadata shard lock at a time
//! (then, nested, the segment table's read lock and one allocator lock). Lock order is
//! always shard → segment table → allocator → inventory log; the client table is never
//! held together with any of them.

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
use crate::segments::{Segment, SegmentTable};
use crate::shard::{
    FLAG_HARD_PIN, FLAG_PENDING_UPSERT, FLAG_REPLICATING, FLAG_RESTORED, Object, PendingWrite,
    Placement, READERS_UNKNOWN, Replicas, Shard,
};
use crate::tasks::TaskTable;

mod drain;
mod replication;

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

    fn validate_key(&self, key: &str) -> MResult<()> {
        if key.is_empty() || key.len() > self.config.max_key_len {
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

    // ------------------------------------------------------------------ writes

    /// `put_start` (`upsert = false`) and `upsert_start` (`upsert = true`).
    pub fn put_start(
        &self,
        client: ClientId,
        key: &str,
        size: u64,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> MResult<Vec<ReplicaDesc>> {
        self.validate_key(key)?;
        if size == 0 || config.replica_num == 0 {
            return Err(ErrorCode::InvalidParams);
        }
        let soft_pin_ttl_ms = match config.soft_pin_action {
            SoftPinAction::Disable => None,
            _ if config.wants_soft_pin() => Some(
                config
                    .soft_pin_ttl_ms
                    .unwrap_or(self.config.default_kv_soft_pin_ttl.as_millis() as u64)
                    .min(self.config.max_kv_soft_pin_ttl.as_millis() as u64),
            ),
            _ => None,
        };
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
        let segs = self.segments.read();
        Self::emit_added(
            &segs,
            key,
            object.replicas.as_slice(),
            object.size,
            object.version,
        );
        let hasher = |k: &str| self.hasher.hash_one(k);
        if let Some(old) = shard.insert(hash, key, object, &hasher) {
            self.release_replaced(&segs, &old, now);
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

    // ------------------------------------------------------------------- reads

    /// Grants a read lease of `ttl` ms, refreshes recency, and describes the replicas.
    fn grant_read(segs: &SegmentTable, o: &mut Object, now: u64, ttl: u64) -> ReplicaList {
        o.lease_until = o.lease_until.max(now + ttl);
        o.last_access = now;
        o.add_reader();
        ReplicaList {
            size: o.size,
            replicas: o
                .replicas
                .as_slice()
                .iter()
                .filter_map(|p| Self::describe(segs, p, o.size, o.version, ReplicaStatus::Complete))
                .collect(),
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
            let list = Self::grant_read(&self.segments.read(), o, now, ttl);
            if list.replicas.is_empty() {
                return Err(ErrorCode::ObjectNotFound);
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
        Ok(ReplicaList {
            size: o.size,
            replicas: o
                .replicas
                .as_slice()
                .iter()
                .filter_map(|p| {
                    Self::describe(&segs, p, o.size, o.version, ReplicaStatus::Complete)
                })
                .collect(),
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
        self.validate_key(key)?;
        let hash = self.hash(key);
        let now = self.now_ms();
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

    // ----------------------------------------------------------------- removes

    /// Removes one object.
    pub fn remove(&self, key: &str, force: bool) -> MResult<()> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let now = self.now_ms();
        let mut shard = self.shard(hash).lock();
        match shard.get(hash, key) {
            None if shard.processing.contains_key(key) => Err(ErrorCode::ReplicaIsNotReady),
            None => Err(ErrorCode::ObjectNotFound),
            Some(o) if !force && (o.leased(now) || o.hard_pinned()) => {
                Err(ErrorCode::ObjectHasLease)
            }
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

    fn remove_matching(&self, force: bool, matches: impl Fn(&str) -> bool) -> u64 {
        let now = self.now_ms();
        let mut count = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            if shard.len() == 0 {
                continue;
            }
            let segs = self.segments.read();
            shard.retain(
                |k, o| {
                    (force
                        || (!o.leased(now) && !o.hard_pinned() && o.flags & FLAG_REPLICATING == 0))
                        && matches(k)
                },
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

    // ---------------------------------------------------------------- eviction

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
    fn evict_for_space(&self, needed: u64) -> bool {
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
    fn evict_unless_futile(&self, st: &mut EvictionState, target: u64) -> u64 {
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

    // ---------------------------------------------------------------- segments

    /// Adds a segment.
    pub fn mount_segment(&self, client: ClientId, desc: SegmentDesc) -> MResult<()> {
        if desc.size < GRANULE || desc.id.is_nil() {
            return Err(ErrorCode::InvalidParams);
        }
        let log = self.register_client(client, &desc.host);
        {
            let mut segs = self.segments.write();
            if let Some(existing) = segs.by_id(&desc.id) {
                return if existing.owner == client && existing.desc.size == desc.size {
                    *existing.route.write() = (desc.transport_endpoint.clone(), desc.base);
                    Ok(())
                } else {
                    Err(ErrorCode::SegmentAlreadyExists)
                };
            }
            let id = desc.id;
            let seg = segs.insert(desc.clone(), client, RangeAllocator::new(desc.size), log);
            segs.activate(seg.slot);
            tracing::info!(segment = %id, name = %desc.name, size = desc.size, client = %client, "segment mounted");
        }
        if let Some(c) = self.clients.lock().get_mut(&client)
            && !c.segments.contains(&desc.id)
        {
            c.segments.push(desc.id);
        }
        self.free_epoch.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Removes a segment owned by `client`.
    pub fn unmount_segment(&self, client: ClientId, segment: SegmentId) -> MResult<()> {
        {
            let segs = self.segments.read();
            match segs.by_id(&segment) {
                None => return Err(ErrorCode::SegmentNotFound),
                Some(s) if s.owner != client => return Err(ErrorCode::IllegalClient),
                Some(_) => {}
            }
        }
        if let Some(c) = self.clients.lock().get_mut(&client) {
            c.segments.retain(|s| *s != segment);
        }
        self.drop_segment(&segment);
        Ok(())
    }

    /// Detaches a segment and drops every replica on it; objects left without
    /// replicas disappear. Returns the number of objects dropped.
    fn drop_segment(&self, id: &SegmentId) -> u64 {
        let Some(seg) = self.segments.write().detach(id) else {
            return 0;
        };
        let slot = seg.slot;
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(
                |_, o| {
                    o.replicas.drop_segment(slot);
                    o.replicas.as_slice().is_empty()
                },
                |_, _| dropped += 1,
            );
            for p in shard.processing.values_mut() {
                p.replicas.retain(|pl| pl.segment != slot);
            }
            for c in shard.copying.values_mut() {
                c.targets.retain(|pl| pl.segment != slot);
            }
        }
        self.deferred
            .lock()
            .retain(|d| d.slot != slot || d.segment_id != *id);
        self.replaced.lock().retain(|_, r| {
            r.frees.retain(|d| d.slot != slot || d.segment_id != *id);
            !r.frees.is_empty()
        });
        self.segments.write().release_slot(slot);
        tracing::info!(segment = %id, dropped, "segment unmounted");
        dropped
    }

    /// Re-registers a client's segments with the objects it holds.
    pub fn remount_segment(
        &self,
        client: ClientId,
        segments: Vec<SegmentDesc>,
        inventory: Vec<InventoryEntry>,
        complete: bool,
    ) -> MResult<RemountReport> {
        for d in &segments {
            if d.size < GRANULE || d.id.is_nil() {
                return Err(ErrorCode::InvalidParams);
            }
        }
        let host = segments.first().map(|d| d.host.clone()).unwrap_or_default();
        let log = self.register_client(client, &host);
        let buffer = {
            let mut clients = self.clients.lock();
            let entry = clients.get_mut(&client).ok_or(ErrorCode::ClientNotFound)?;
            let buf = entry.restore.get_or_insert_with(RestoreBuffer::default);
            if buf.entries.len() + inventory.len() > MAX_REMOUNT_ENTRIES {
                entry.restore = None;
                return Err(ErrorCode::InvalidParams);
            }
            for d in segments {
                if !buf.segments.iter().any(|s| s.id == d.id) {
                    buf.segments.push(d);
                }
            }
            buf.entries.extend(inventory);
            if !complete {
                return Ok(RemountReport::default());
            }
            entry.restore.take().expect("just inserted")
        };
        let inventory_seq = log.lock().restart();
        let now = self.now_ms();
        let mut report = RemountReport {
            inventory_seq,
            ..Default::default()
        };

        // Segments the master still has keep the master's state; new ones are rebuilt.
        let mut fresh: Vec<SegmentDesc> = Vec::new();
        {
            let segs = self.segments.read();
            for d in &buffer.segments {
                match segs.by_id(&d.id) {
                    Some(s) if s.owner != client => return Err(ErrorCode::SegmentAlreadyExists),
                    Some(s) => *s.route.write() = (d.transport_endpoint.clone(), d.base),
                    None => fresh.push(d.clone()),
                }
            }
        }
        let known: HashSet<SegmentId> = buffer.segments.iter().map(|d| d.id).collect();
        let mut per_segment: HashMap<SegmentId, Vec<InventoryEntry>> = HashMap::new();
        for e in buffer.entries {
            if !known.contains(&e.segment_id) {
                report.rejected.push(e);
                continue;
            }
            if let Some(d) = fresh.iter().find(|d| d.id == e.segment_id) {
                let valid = self.validate_key(&e.key).is_ok()
                    && e.version <= unix_micros() + MAX_VERSION_SKEW_US
                    && e.size > 0
                    && e.offset % GRANULE == 0
                    && e.offset
                        .checked_add(allocated_len(e.size))
                        .is_some_and(|end| end <= d.size);
                if valid {
                    per_segment.entry(e.segment_id).or_default().push(e);
                } else {
                    report.rejected.push(e);
                }
            }
            // Entries for segments the master still knows are ignored: its metadata is newer.
        }

        let mut mounted: Vec<Arc<Segment>> = Vec::new();
        let mut max_version = 0;
        for d in fresh {
            let mut entries = per_segment.remove(&d.id).unwrap_or_default();
            // Newest version wins, per key and per byte range.
            entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.version));
            let mut seen_keys: HashSet<String> = HashSet::new();
            let mut ranges: BTreeMap<u64, u64> = BTreeMap::new();
            let mut accepted: Vec<InventoryEntry> = Vec::new();
            for e in entries {
                let end = e.offset + allocated_len(e.size);
                let overlaps_before = ranges
                    .range(..end)
                    .next_back()
                    .is_some_and(|(_, &pend)| pend > e.offset);
                if overlaps_before || seen_keys.contains(&e.key) {
                    report.rejected.push(e);
                    continue;
                }
                ranges.insert(e.offset, end);
                seen_keys.insert(e.key.clone());
                max_version = max_version.max(e.version);
                accepted.push(e);
            }
            let allocated: Vec<(u64, u64)> = accepted.iter().map(|e| (e.offset, e.size)).collect();
            let allocator = RangeAllocator::with_allocated(d.size, &allocated);
            let seg = self
                .segments
                .write()
                .insert(d.clone(), client, allocator, log.clone());
            let slot = seg.slot;
            for e in accepted {
                let hash = self.hash(&e.key);
                let mut shard = self.shard(hash).lock();
                let placement = Placement {
                    offset: e.offset,
                    segment: slot,
                };
                let applied = match shard.get_mut(hash, &e.key) {
                    None => {
                        let object = Object {
                            size: e.size,
                            version: e.version,
                            lease_until: 0,
                            last_access: now,
                            replicas: Replicas::One(placement),
                            soft_pin_until_s: 0,
                            flags: FLAG_RESTORED,
                            // Readers of the previous master incarnation may still
                            // release grants: their count is not known here.
                            readers: READERS_UNKNOWN,
                        };
                        shard.insert(hash, &e.key, object, &|k: &str| self.hasher.hash_one(k));
                        true
                    }
                    Some(o) if o.version == e.version && o.size == e.size => {
                        if !o.replicas.as_slice().iter().any(|p| p.segment == slot) {
                            o.replicas.push(placement);
                        }
                        true
                    }
                    // A value written through this master is never replaced by an
                    // inventory: only a newer copy of a value restored the same way.
                    Some(o) if e.version > o.version && o.flags & FLAG_RESTORED != 0 => {
                        let replaced = Object {
                            size: e.size,
                            version: e.version,
                            lease_until: 0,
                            last_access: now,
                            replicas: Replicas::One(placement),
                            soft_pin_until_s: 0,
                            flags: FLAG_RESTORED,
                            // Readers of the previous master incarnation may still
                            // release grants: their count is not known here.
                            readers: READERS_UNKNOWN,
                        };
                        let old = std::mem::replace(o, replaced);
                        self.release_replaced(&self.segments.read(), &old, now);
                        true
                    }
                    Some(_) => false,
                };
                drop(shard);
                if applied {
                    report.restored += 1;
                } else {
                    seg.free(e.offset, e.size);
                    report.rejected.push(e);
                }
            }
            mounted.push(seg);
        }
        self.last_version.fetch_max(max_version, Relaxed);
        {
            let mut segs = self.segments.write();
            for seg in &mounted {
                segs.activate(seg.slot);
            }
        }
        if let Some(c) = self.clients.lock().get_mut(&client) {
            for d in &buffer.segments {
                if !c.segments.contains(&d.id) {
                    c.segments.push(d.id);
                }
            }
        }
        self.free_epoch.fetch_add(1, Relaxed);
        self.metrics
            .restored_objects
            .fetch_add(report.restored, Relaxed);
        tracing::info!(
            client = %client,
            segments = mounted.len(),
            restored = report.restored,
            rejected = report.rejected.len(),
            "client remounted"
        );
        Ok(report)
    }

    /// Heartbeat.
    pub fn ping(&self, client: ClientId) -> PingResponse {
        let now = self.now_ms();
        let status = match self.clients.lock().get_mut(&client) {
            Some(c) => {
                c.last_seen = now;
                ClientStatus::Ok
            }
            None => ClientStatus::NeedRemount,
        };
        PingResponse {
            view_version: self.view_version,
            status,
            pending_tasks: self.tasks.lock().pending_for(&client) as u32,
        }
    }

    /// Changes to the client's inventory after `ack`.
    pub fn sync_inventory(&self, client: ClientId, ack: u64) -> MResult<InventoryDelta> {
        let log = self
            .clients
            .lock()
            .get(&client)
            .map(|c| c.log.clone())
            .ok_or(ErrorCode::ClientNotFound)?;
        let delta = log.lock().sync(ack);
        Ok(delta)
    }

    /// Every complete object in the client's segments; restarts its change log.
    pub fn fetch_inventory(&self, client: ClientId) -> MResult<InventorySnapshot> {
        let (log, ids) = self
            .clients
            .lock()
            .get(&client)
            .map(|c| (c.log.clone(), c.segments.clone()))
            .ok_or(ErrorCode::ClientNotFound)?;
        let seq = log.lock().restart();
        let mut entries = Vec::new();
        let slots: HashMap<u32, SegmentId> = {
            let segs = self.segments.read();
            ids.iter()
                .filter_map(|id| segs.by_id(id).map(|s| (s.slot, *id)))
                .collect()
        };
        for shard in self.shards.iter() {
            shard.lock().for_each(|k, o| {
                for p in o.replicas.as_slice() {
                    if let Some(id) = slots.get(&p.segment) {
                        entries.push(InventoryEntry {
                            segment_id: *id,
                            key: k.to_string(),
                            offset: p.offset,
                            size: o.size,
                            version: o.version,
                        });
                    }
                }
            });
        }
        Ok(InventorySnapshot { seq, entries })
    }

    /// Every mounted segment.
    pub fn all_segments(&self) -> Vec<SegmentDesc> {
        self.segments
            .read()
            .iter()
            .map(|s| s.current_desc())
            .collect()
    }

    /// Per-segment capacity and usage: `(desc, used bytes)`.
    pub fn segment_usage(&self) -> Vec<(SegmentDesc, u64)> {
        self.segments
            .read()
            .iter()
            .map(|s| (s.current_desc(), s.used.load(Relaxed)))
            .collect()
    }

    // ------------------------------------------------------------- maintenance

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
        let (capacity_bytes, allocated_bytes, segment_count) = {
            let segs = self.segments.read();
            let (c, u) = segs.usage();
            (c, u, segs.len() as u64)
        };
        let (mut key_count, mut processing_count) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let s = shard.lock();
            key_count += s.len() as u64;
            processing_count += s.processing.len() as u64;
        }
        Gauges {
            capacity_bytes,
            allocated_bytes,
            key_count,
            processing_count,
            active_clients: self.clients.lock().len() as u64,
            segment_count,
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

fn compile_regex(pattern: &str) -> MResult<regex::Regex> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|_| ErrorCode::InvalidParams)
}

#[cfg(test)]
mod tests;
