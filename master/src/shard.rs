//! One metadata shard: complete objects in a compact open-addressing index, and
//! the writes still in flight.
//!
//! Objects live in a chunked slab and the hash index stores only
//! 4-byte slab indices, so the per-key cost is the entry (80 bytes), the key's heap
//! bytes and ~6 bytes of index: the master stays under 0.2 KB per key with
//! realistic KV-cache key lengths.

use hashbrown::{HashMap, HashTable};
use mooncake_proto::{ClientId, SoftPinAction};

/// Where one replica lives: a segment slot and an offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub offset: u64,
    pub segment: u32,
}

/// The replicas of an object; one replica (the common case) is stored inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replicas {
    One(Placement),
    Many(Box<[Placement]>),
}

impl Replicas {
    pub fn from_vec(mut v: Vec<Placement>) -> Self {
        if v.len() == 1 {
            Replicas::One(v.pop().expect("len checked"))
        } else {
            Replicas::Many(v.into_boxed_slice())
        }
    }

    pub fn as_slice(&self) -> &[Placement] {
        match self {
            Replicas::One(p) => std::slice::from_ref(p),
            Replicas::Many(v) => v,
        }
    }

    /// Drops the placements on `segment`; returns how many were dropped.
    pub fn drop_segment(&mut self, segment: u32) -> usize {
        let kept: Vec<Placement> = self
            .as_slice()
            .iter()
            .copied()
            .filter(|p| p.segment != segment)
            .collect();
        let dropped = self.as_slice().len() - kept.len();
        if dropped > 0 {
            *self = Replicas::from_vec(kept);
        }
        dropped
    }

    pub fn push(&mut self, p: Placement) {
        let mut v = self.as_slice().to_vec();
        v.push(p);
        *self = Replicas::from_vec(v);
    }
}

pub(crate) const FLAG_HARD_PIN: u8 = 1;
pub(crate) const FLAG_PENDING_UPSERT: u8 = 2;
/// A replica copy or move of the object is in flight.
pub(crate) const FLAG_REPLICATING: u8 = 4;
/// Rebuilt from a client's inventory (not written through this master): only
/// such objects may be replaced by a newer version another remount presents.
pub(crate) const FLAG_RESTORED: u8 = 8;

/// Metadata of one complete object. Times are master-clock milliseconds, except the
/// soft-pin deadline, kept in seconds to stay within the memory budget.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub size: u64,
    pub version: u64,
    pub lease_until: u64,
    pub last_access: u64,
    pub replicas: Replicas,
    pub soft_pin_until_s: u32,
    pub flags: u8,
    /// Read grants not yet released by their readers; [`READERS_UNKNOWN`] once
    /// that count cannot be trusted (overflow, or rebuilt after a restart).
    pub readers: u16,
}

/// [`Object::readers`] value meaning "unknown": only the lease's end frees space.
pub(crate) const READERS_UNKNOWN: u16 = u16::MAX;

impl Object {
    /// Counts a read grant.
    pub fn add_reader(&mut self) {
        if self.readers != READERS_UNKNOWN {
            self.readers += 1;
        }
    }

    /// Counts a released read grant.
    pub fn release_reader(&mut self) {
        if self.readers != READERS_UNKNOWN {
            self.readers = self.readers.saturating_sub(1);
        }
    }

    pub fn hard_pinned(&self) -> bool {
        self.flags & FLAG_HARD_PIN != 0
    }
    pub fn soft_pinned(&self, now_ms: u64) -> bool {
        u64::from(self.soft_pin_until_s) * 1000 > now_ms
    }
    pub fn leased(&self, now_ms: u64) -> bool {
        self.lease_until > now_ms
    }
    /// Whether eviction may take this object (`allow_soft` for the second pass).
    pub fn evictable(&self, now_ms: u64, allow_soft: bool) -> bool {
        self.flags & (FLAG_HARD_PIN | FLAG_PENDING_UPSERT | FLAG_REPLICATING) == 0
            && !self.leased(now_ms)
            && (allow_soft || !self.soft_pinned(now_ms))
    }
}

/// A write between `put_start` and `put_end`.
#[derive(Debug, Clone)]
pub(crate) struct PendingWrite {
    pub writer: ClientId,
    pub started: u64,
    pub size: u64,
    pub version: u64,
    pub replicas: Vec<Placement>,
    pub hard_pin: bool,
    /// Soft-pin lifetime to apply at `put_end`; `None` = no pin.
    pub soft_pin_ttl_ms: Option<u64>,
    pub soft_pin_action: SoftPinAction,
}

/// A replica copy (or move) between `replica_copy_start` and `replica_copy_end`.
#[derive(Debug, Clone)]
pub(crate) struct PendingCopy {
    pub copier: ClientId,
    pub started: u64,
    /// Version of the object being copied: a replaced object is not completed.
    pub version: u64,
    pub size: u64,
    pub source: Placement,
    pub targets: Vec<Placement>,
    pub remove_source: bool,
}

pub(crate) struct Entry {
    pub key: Box<str>,
    pub object: Object,
}

/// Entries per slab chunk. The slab grows by whole chunks and never reallocates,
/// so growing shards leave no freed buffers behind to fragment the heap.
const CHUNK: usize = 64;

/// Fixed-size chunks of entries addressed by a `u32` slot number.
#[derive(Default)]
struct Slab {
    chunks: Vec<Box<[Option<Entry>]>>,
    len: usize,
}

impl Slab {
    fn get(&self, i: u32) -> &Option<Entry> {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }
    fn get_mut(&mut self, i: u32) -> &mut Option<Entry> {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }
    fn push(&mut self, entry: Entry) -> u32 {
        if self.len == self.chunks.len() * CHUNK {
            self.chunks.push((0..CHUNK).map(|_| None).collect());
        }
        let i = self.len as u32;
        *self.get_mut(i) = Some(entry);
        self.len += 1;
        i
    }
    fn iter(&self) -> impl Iterator<Item = &Option<Entry>> {
        self.chunks.iter().flat_map(|c| c.iter()).take(self.len)
    }
}

/// One shard of the metadata.
#[derive(Default)]
pub(crate) struct Shard {
    index: HashTable<u32>,
    slots: Slab,
    free_slots: Vec<u32>,
    pub processing: HashMap<Box<str>, PendingWrite, foldhash::fast::RandomState>,
    pub copying: HashMap<Box<str>, PendingCopy, foldhash::fast::RandomState>,
}

impl Shard {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                slots.get(i).as_ref().is_some_and(|e| &*e.key == key)
            })
            .copied()
    }

    pub fn get(&self, hash: u64, key: &str) -> Option<&Object> {
        let i = self.find(hash, key)?;
        self.slots.get(i).as_ref().map(|e| &e.object)
    }

    pub fn get_mut(&mut self, hash: u64, key: &str) -> Option<&mut Object> {
        let i = self.find(hash, key)?;
        self.slots.get_mut(i).as_mut().map(|e| &mut e.object)
    }

    /// Inserts or replaces; returns the replaced object.
    pub fn insert(
        &mut self,
        hash: u64,
        key: &str,
        object: Object,
        hasher: &impl Fn(&str) -> u64,
    ) -> Option<Object> {
        if let Some(i) = self.find(hash, key) {
            let entry = self
                .slots
                .get_mut(i)
                .as_mut()
                .expect("indexed slot is live");
            return Some(std::mem::replace(&mut entry.object, object));
        }
        let entry = Entry {
            key: key.into(),
            object,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                *self.slots.get_mut(s) = Some(entry);
                s
            }
            None => self.slots.push(entry),
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |&i| {
            hasher(&slots.get(i).as_ref().expect("indexed slot is live").key)
        });
        None
    }

    pub fn remove(&mut self, hash: u64, key: &str) -> Option<Object> {
        let slots = &self.slots;
        let found = self
            .index
            .find_entry(hash, |&i| {
                slots.get(i).as_ref().is_some_and(|e| &*e.key == key)
            })
            .ok()?;
        let (slot, _) = found.remove();
        self.release_slot(slot)
    }

    fn release_slot(&mut self, slot: u32) -> Option<Object> {
        let entry = self.slots.get_mut(slot).take()?;
        self.free_slots.push(slot);
        Some(entry.object)
    }

    /// Visits every object; the visitor returns `true` to remove it. Removed objects
    /// are handed to `removed`.
    pub fn retain(
        &mut self,
        mut remove: impl FnMut(&str, &mut Object) -> bool,
        mut removed: impl FnMut(&str, Object),
    ) {
        let slots = &mut self.slots;
        let free_slots = &mut self.free_slots;
        self.index.retain(|&mut i| {
            let entry = slots.get_mut(i).as_mut().expect("indexed slot is live");
            if remove(&entry.key, &mut entry.object) {
                let entry = slots.get_mut(i).take().expect("live");
                free_slots.push(i);
                removed(&entry.key, entry.object);
                false
            } else {
                true
            }
        });
    }

    /// Visits every object (read-only).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &Object)) {
        for entry in self.slots.iter().flatten() {
            visit(&entry.key, &entry.object);
        }
    }

    /// Visits every `stride`-th slot starting at `offset` (for sampling).
    pub fn sample(&self, offset: usize, stride: usize, mut visit: impl FnMut(&Object)) {
        let mut i = offset;
        while i < self.slots.len {
            if let Some(e) = self.slots.get(i as u32) {
                visit(&e.object);
            }
            i += stride.max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn obj(size: u64) -> Object {
        Object {
            size,
            version: 1,
            lease_until: 0,
            last_access: 0,
            replicas: Replicas::One(Placement {
                offset: 0,
                segment: 0,
            }),
            soft_pin_until_s: 0,
            flags: 0,
            readers: 0,
        }
    }

    #[test]
    fn entry_stays_compact() {
        assert!(
            std::mem::size_of::<Option<Entry>>() <= 80,
            "{}",
            std::mem::size_of::<Option<Entry>>()
        );
    }

    #[test]
    fn insert_get_remove_retain() {
        let state = foldhash::fast::RandomState::default();
        let h = |k: &str| state.hash_one(k);
        let mut shard = Shard::default();
        for i in 0..1000u64 {
            let k = format!("key-{i}");
            assert!(shard.insert(h(&k), &k, obj(i), &h).is_none());
        }
        assert_eq!(shard.len(), 1000);
        assert_eq!(shard.get(h("key-7"), "key-7").unwrap().size, 7);
        assert!(shard.insert(h("key-7"), "key-7", obj(70), &h).is_some());
        assert_eq!(shard.get(h("key-7"), "key-7").unwrap().size, 70);
        assert_eq!(shard.remove(h("key-8"), "key-8").unwrap().size, 8);
        assert!(shard.get(h("key-8"), "key-8").is_none());
        let mut gone = 0;
        shard.retain(|_, o| o.size % 2 == 0, |_, _| gone += 1);
        assert_eq!(gone, 500);
        assert_eq!(shard.len(), 499);
        // Freed slots are reused.
        let k = "fresh";
        shard.insert(h(k), k, obj(1), &h);
        assert_eq!(shard.get(h(k), k).unwrap().size, 1);
    }
}
