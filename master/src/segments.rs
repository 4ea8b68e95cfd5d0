//! Mounted segments, their allocators, and replica placement.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use rand::Rng;

use mooncake_proto::{ClientId, Medium, ReplicateConfig, SegmentDesc, SegmentId};

use crate::allocator::{RangeAllocator, allocated_len};

/// Disk-tier objects start and end on this boundary: the owner keeps one checksum
/// per block, so no block is shared by two objects.
pub const DISK_BLOCK: u64 = 4096;

/// Bytes an object of `size` occupies in a segment of `medium`.
pub fn reserved_len(medium: Medium, size: u64) -> u64 {
    match medium {
        Medium::Memory => allocated_len(size),
        Medium::Disk => size.div_ceil(DISK_BLOCK).saturating_mul(DISK_BLOCK),
    }
}
use crate::config::AllocationStrategy;
use crate::inventory::InventoryLog;
use crate::shard::Placement;

/// One mounted segment.
pub(crate) struct Segment {
    /// As mounted; `route` holds the parts a remount may change.
    pub desc: SegmentDesc,
    /// Transfer endpoint and base address: a restarted owner comes back on a new
    /// transfer port and mapping address but keeps its segment.
    pub route: parking_lot::RwLock<(String, u64)>,
    pub owner: ClientId,
    pub slot: u32,
    pub allocator: Mutex<RangeAllocator>,
    /// Mirror of the allocator's `used()` readable without its lock.
    pub used: AtomicU64,
    /// Replicas allocated in it (complete or being written).
    pub replicas: AtomicU64,
    /// The owner's inventory log.
    pub log: Arc<Mutex<InventoryLog>>,
    /// Space granted to the owner for writes it places itself and not yet
    /// committed or given back, by start (granule-aligned).
    pub grants: Mutex<BTreeMap<u64, Grant>>,
}

/// A granted range: its length and the owner's grant epoch it was asked in.
///
/// The owner changes its epoch whenever a remount may have freed its grants;
/// a commit or a return names the epoch of the grant it uses, so one left over
/// from before a remount never matches space granted again after it (the same
/// bytes may be granted anew, and must not be committed twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub len: u64,
    pub epoch: u64,
}

impl Segment {
    pub fn capacity(&self) -> u64 {
        self.desc.size
    }

    /// The descriptor with the current route.
    pub fn current_desc(&self) -> SegmentDesc {
        let (endpoint, base) = self.route.read().clone();
        SegmentDesc {
            transport_endpoint: endpoint,
            base,
            ..self.desc.clone()
        }
    }

    pub fn try_allocate(&self, size: u64) -> Option<u64> {
        let mut a = self.allocator.lock();
        let offset = a.allocate(reserved_len(self.desc.medium, size))?;
        self.used.store(a.used(), Relaxed);
        self.replicas.fetch_add(1, Relaxed);
        Some(offset)
    }

    /// Allocates `len` bytes for the owner to place writes in (no replica yet),
    /// in the owner's grant `epoch`.
    pub fn grant(&self, len: u64, epoch: u64) -> Option<u64> {
        let len = allocated_len(len);
        let offset = {
            let mut a = self.allocator.lock();
            let offset = a.allocate(len)?;
            self.used.store(a.used(), Relaxed);
            offset
        };
        self.grants.lock().insert(offset, Grant { len, epoch });
        Some(offset)
    }

    /// Takes `[offset, offset + len)` out of the granted space; false when it
    /// is not entirely inside one grant of `epoch`. What is left of the grant
    /// stays granted.
    pub fn take_granted(&self, offset: u64, len: u64, epoch: u64) -> bool {
        let mut grants = self.grants.lock();
        let Some((&start, &grant)) = grants.range(..=offset).next_back() else {
            return false;
        };
        let (Some(end), Some(gend)) = (offset.checked_add(len), start.checked_add(grant.len))
        else {
            return false;
        };
        if len == 0 || end > gend || grant.epoch != epoch {
            return false;
        }
        grants.remove(&start);
        if offset > start {
            grants.insert(
                start,
                Grant {
                    len: offset - start,
                    epoch,
                },
            );
        }
        if gend > end {
            grants.insert(
                end,
                Grant {
                    len: gend - end,
                    epoch,
                },
            );
        }
        true
    }

    /// Frees granted space of `epoch` given back (ranges not granted in it
    /// are ignored).
    pub fn return_granted(&self, offset: u64, len: u64, epoch: u64) {
        let len = allocated_len(len);
        if self.take_granted(offset, len, epoch) {
            let mut a = self.allocator.lock();
            a.free(offset, len);
            self.used.store(a.used(), Relaxed);
        }
    }

    /// Frees every grant (the owner remounted, or the segment stops serving
    /// allocations); returns the bytes freed.
    pub fn clear_grants(&self) -> u64 {
        let grants = std::mem::take(&mut *self.grants.lock());
        let mut a = self.allocator.lock();
        let mut freed = 0;
        for (offset, Grant { len, .. }) in grants {
            a.free(offset, len);
            freed += len;
        }
        self.used.store(a.used(), Relaxed);
        freed
    }

    /// Bytes granted and not yet committed or given back.
    pub fn granted(&self) -> u64 {
        self.grants.lock().values().map(|g| g.len).sum()
    }

    pub fn free(&self, offset: u64, size: u64) {
        let mut a = self.allocator.lock();
        a.free(offset, reserved_len(self.desc.medium, size));
        self.used.store(a.used(), Relaxed);
        let _ = self
            .replicas
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    pub fn on_disk(&self) -> bool {
        self.desc.medium == Medium::Disk
    }

    pub fn free_ratio(&self) -> f64 {
        let cap = self.capacity().max(1);
        1.0 - self.used.load(Relaxed) as f64 / cap as f64
    }
}

/// All segments, addressed by a small slot number stored in object metadata.
#[derive(Default)]
pub(crate) struct SegmentTable {
    slots: Vec<Option<Arc<Segment>>>,
    free_slots: Vec<u32>,
    by_id: HashMap<SegmentId, u32>,
    /// Memory slots that accept allocations, in mount order.
    active: Vec<u32>,
    /// Disk-tier slots that accept offloaded copies, in mount order.
    disk_active: Vec<u32>,
}

impl SegmentTable {
    pub fn get(&self, slot: u32) -> Option<&Arc<Segment>> {
        self.slots.get(slot as usize).and_then(|s| s.as_ref())
    }

    pub fn by_id(&self, id: &SegmentId) -> Option<&Arc<Segment>> {
        self.by_id.get(id).and_then(|&s| self.get(s))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Segment>> {
        self.slots.iter().flatten()
    }

    /// Memory segments serving allocations, in mount order.
    pub fn memory_segments(&self) -> impl Iterator<Item = &Arc<Segment>> {
        self.active.iter().filter_map(|&s| self.get(s))
    }

    /// Disk tiers taking copies, in mount order.
    pub fn disk_segments(&self) -> impl Iterator<Item = &Arc<Segment>> {
        self.disk_active.iter().filter_map(|&s| self.get(s))
    }

    pub fn largest_capacity(&self) -> u64 {
        self.memory_segments()
            .map(|s| s.capacity())
            .max()
            .unwrap_or(0)
    }

    /// Reserves a slot for a new segment (not yet accepting allocations) whose
    /// `allocator` holds `replicas` replicas already.
    pub fn insert(
        &mut self,
        desc: SegmentDesc,
        owner: ClientId,
        (allocator, replicas): (RangeAllocator, u64),
        log: Arc<Mutex<InventoryLog>>,
    ) -> Arc<Segment> {
        let slot = self.free_slots.pop().unwrap_or(self.slots.len() as u32);
        let segment = Arc::new(Segment {
            route: parking_lot::RwLock::new((desc.transport_endpoint.clone(), desc.base)),
            used: AtomicU64::new(allocator.used()),
            replicas: AtomicU64::new(replicas),
            allocator: Mutex::new(allocator),
            desc,
            owner,
            slot,
            log,
            grants: Mutex::new(BTreeMap::new()),
        });
        if slot as usize == self.slots.len() {
            self.slots.push(Some(segment.clone()));
        } else {
            self.slots[slot as usize] = Some(segment.clone());
        }
        self.by_id.insert(segment.desc.id, slot);
        segment
    }

    /// Mounted segments called `name` (several when a client mounted more than one).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Arc<Segment>> + 'a {
        self.iter().filter(move |s| s.desc.name == name)
    }

    /// Memory slots serving allocations, in mount order.
    pub fn active_slots(&self) -> &[u32] {
        &self.active
    }

    /// Disk-tier slots taking offloaded copies, in mount order.
    pub fn disk_slots(&self) -> &[u32] {
        &self.disk_active
    }

    /// Stops a segment from serving allocations (drained); its objects stay.
    pub fn deactivate(&mut self, slot: u32) {
        self.active.retain(|&s| s != slot);
        self.disk_active.retain(|&s| s != slot);
    }

    /// Lets a segment serve allocations (a disk segment: offloaded copies).
    pub fn activate(&mut self, slot: u32) {
        let on_disk = self.get(slot).is_some_and(|s| s.on_disk());
        let list = if on_disk {
            &mut self.disk_active
        } else {
            &mut self.active
        };
        if !list.contains(&slot) {
            list.push(slot);
        }
    }

    /// Total capacity and allocated bytes of the disk segments.
    pub fn disk_usage(&self) -> (u64, u64) {
        total_usage(self.disk_segments())
    }

    /// Takes a segment out of service; the slot stays reserved until
    /// [`release_slot`](Self::release_slot), after its replicas were purged.
    pub fn detach(&mut self, id: &SegmentId) -> Option<Arc<Segment>> {
        let slot = self.by_id.remove(id)?;
        self.active.retain(|&s| s != slot);
        self.disk_active.retain(|&s| s != slot);
        self.slots[slot as usize].take()
    }

    pub fn release_slot(&mut self, slot: u32) {
        self.free_slots.push(slot);
    }

    /// Places up to `config.replica_num` replicas of `size` bytes on distinct
    /// segments, preferring distinct hosts. Returns what could be allocated.
    pub fn place(
        &self,
        size: u64,
        config: &ReplicateConfig,
        strategy: AllocationStrategy,
        writer_host: Option<&str>,
    ) -> Vec<Placement> {
        let wanted = config.replica_num.max(1) as usize;
        let mut chosen: Vec<(Placement, &Arc<Segment>)> = Vec::with_capacity(wanted);
        let used_slot = |chosen: &[(Placement, &Arc<Segment>)], slot: u32| {
            chosen.iter().any(|(p, _)| p.segment == slot)
        };
        let used_host = |chosen: &[(Placement, &Arc<Segment>)], host: &str| {
            chosen.iter().any(|(_, s)| s.desc.host == host)
        };

        // 1. Preferred segments by name, in order; then the writer's own host.
        let mut preferred: Vec<u32> = Vec::new();
        for name in &config.preferred_segments {
            preferred.extend(
                self.active
                    .iter()
                    .copied()
                    .filter(|&s| self.get(s).is_some_and(|seg| &seg.desc.name == name)),
            );
        }
        if config.prefer_alloc_in_same_node
            && let Some(host) = writer_host
        {
            preferred.extend(
                self.active
                    .iter()
                    .copied()
                    .filter(|&s| self.get(s).is_some_and(|seg| seg.desc.host == host)),
            );
        }
        for slot in preferred {
            if chosen.len() == wanted {
                break;
            }
            if used_slot(&chosen, slot) {
                continue;
            }
            let seg = self.get(slot).expect("active slot is live");
            if let Some(offset) = seg.try_allocate(size) {
                chosen.push((
                    Placement {
                        offset,
                        segment: slot,
                    },
                    seg,
                ));
            }
        }

        // 2. The strategy, first on hosts not used yet, then on any unused segment.
        let n = self.active.len();
        if n == 0 {
            return chosen.into_iter().map(|(p, _)| p).collect();
        }
        let order: Vec<u32> = match strategy {
            AllocationStrategy::Random => {
                let start = rand::rng().random_range(0..n);
                (0..n.min(100))
                    .map(|i| self.active[(start + i) % n])
                    .collect()
            }
            AllocationStrategy::FreeRatioFirst => {
                let mut rng = rand::rng();
                let sample = (6 * wanted).min(n);
                let mut picks: Vec<u32> = rand::seq::index::sample(&mut rng, n, sample)
                    .into_iter()
                    .map(|i| self.active[i])
                    .collect();
                picks.sort_by(|a, b| {
                    let fa = self.get(*a).map_or(0.0, |s| s.free_ratio());
                    let fb = self.get(*b).map_or(0.0, |s| s.free_ratio());
                    fb.total_cmp(&fa)
                });
                // Fall back to a random probe over the rest.
                let start = rng.random_range(0..n);
                picks.extend((0..n.min(100)).map(|i| self.active[(start + i) % n]));
                picks
            }
        };
        for distinct_host_pass in [true, false] {
            for &slot in &order {
                if chosen.len() == wanted {
                    break;
                }
                if used_slot(&chosen, slot) {
                    continue;
                }
                let seg = self.get(slot).expect("active slot is live");
                if distinct_host_pass && used_host(&chosen, &seg.desc.host) {
                    continue;
                }
                if let Some(offset) = seg.try_allocate(size) {
                    chosen.push((
                        Placement {
                            offset,
                            segment: slot,
                        },
                        seg,
                    ));
                }
            }
        }
        chosen.into_iter().map(|(p, _)| p).collect()
    }

    /// Total capacity and allocated bytes of the segments serving allocations.
    pub fn usage(&self) -> (u64, u64) {
        total_usage(self.memory_segments())
    }

    /// Replicas in memory segments and in disk tiers (drained segments included).
    pub fn replicas_per_tier(&self) -> (u64, u64) {
        self.iter().fold((0, 0), |(memory, disk), s| {
            let n = s.replicas.load(Relaxed);
            if s.on_disk() {
                (memory, disk + n)
            } else {
                (memory + n, disk)
            }
        })
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Capacity and allocated bytes of `segments`, summed.
fn total_usage<'a>(segments: impl Iterator<Item = &'a Arc<Segment>>) -> (u64, u64) {
    segments.fold((0, 0), |(c, u), s| {
        (c + s.capacity(), u + s.used.load(Relaxed))
    })
}
