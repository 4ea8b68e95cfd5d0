//! Existence answered on this host for objects it holds: a key with a complete
//! replica in this client's segment or disk tier exists, with no master round
//! trip. Keys the index does not know go to the master, as before.
//!
//! The index holds only objects the master has completed: this client's own
//! writes once their `put_end` or commit succeeded, the changes the master
//! reports through the inventory sync (every 50 ms: other hosts' writes and
//! copies into this segment, removals, evictions, replacements), and after a
//! remount the inventory the master accepted. A write another host is still
//! making here (its landed note came, its end did not) is not in it.
//!
//! What that costs: a remove or eviction made through *another* host is seen
//! here once the next sync brings it (≤ 50 ms plus a round trip); until then
//! `is_exist` may say true and a get then misses, the same race any cache has
//! between a probe and a read. Removes made through this client take effect
//! at once, and a sync answer already in flight cannot bring back what they
//! took out. Recency: keys answered here are passed to the master with the
//! next sync tick, so probes keep objects warm as they did.
//! `--local_exist=false` sends every probe to the master.

use std::collections::HashSet;

use super::*;

/// Keys answered here whose recency the master is told of, at most, per tick.
const MAX_TOUCHED: usize = 65_536;

type Place = (SegmentId, u64);
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Where a key's replicas here are: almost always one place (no allocation
/// for it), sometimes a memory and a disk-tier copy.
#[derive(Debug)]
enum Places {
    One(Place),
    Many(Vec<Place>),
}

impl Places {
    fn push(&mut self, place: Place) {
        match self {
            Places::One(first) => *self = Places::Many(vec![*first, place]),
            Places::Many(all) => all.push(place),
        }
    }

    /// Takes `place` out; whether none is left.
    fn take(&mut self, place: Place) -> bool {
        match self {
            Places::One(only) => *only == place,
            Places::Many(all) => {
                all.retain(|p| *p != place);
                all.is_empty()
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = Place> + '_ {
        let (one, many): (Option<Place>, &[Place]) = match self {
            Places::One(p) => (Some(*p), &[]),
            Places::Many(all) => (None, all),
        };
        one.into_iter().chain(many.iter().copied())
    }
}

/// The complete objects this client holds, by key. A key's text is held once,
/// shared by both maps.
#[derive(Default)]
pub(super) struct ExistIndex {
    /// (segment, offset) → (key, version).
    by_place: FastMap<Place, (Arc<str>, u64)>,
    /// The places of each key's replicas here (memory and disk tier).
    by_key: FastMap<Arc<str>, Places>,
    /// Bumped whenever entries are taken out: an inventory answer asked for
    /// before adds nothing (it could bring back what was just removed).
    generation: u64,
    /// Keys answered here since the master was last told (each once).
    touched: HashSet<String>,
}

impl ExistIndex {
    /// Records a complete replica.
    pub fn add(&mut self, e: &InventoryEntry) {
        let place = (e.segment_id, e.offset);
        // Known already (the master's report of a write this client made).
        if self
            .by_place
            .get(&place)
            .is_some_and(|(key, version)| *version == e.version && **key == *e.key)
        {
            return;
        }
        if let Some((old_key, _)) = self.by_place.remove(&place) {
            self.unlink(&old_key, place);
        }
        let key = match self.by_key.get_mut(e.key.as_str()) {
            // A second copy of a key held here (memory and disk tier).
            Some(places) => {
                places.push(place);
                self.by_key
                    .get_key_value(e.key.as_str())
                    .map_or_else(|| Arc::from(e.key.as_str()), |(key, _)| key.clone())
            }
            None => {
                let key: Arc<str> = Arc::from(e.key.as_str());
                self.by_key.insert(key.clone(), Places::One(place));
                key
            }
        };
        self.by_place.insert(place, (key, e.version));
    }

    fn unlink(&mut self, key: &str, place: Place) {
        if let Some(places) = self.by_key.get_mut(key)
            && places.take(place)
        {
            self.by_key.remove(key);
        }
    }

    /// Forgets the replica at `(segment, offset)` if it is of `version`.
    pub fn remove(&mut self, segment: SegmentId, offset: u64, version: u64) {
        let place = (segment, offset);
        if self
            .by_place
            .get(&place)
            .is_some_and(|(_, v)| *v == version)
            && let Some((key, _)) = self.by_place.remove(&place)
        {
            self.unlink(&key, place);
        }
    }

    /// Forgets every replica of `keys` (removed through this client).
    pub fn forget(&mut self, keys: &[&str]) {
        self.generation += 1;
        for key in keys {
            if let Some(places) = self.by_key.remove(*key) {
                for place in places.iter() {
                    self.by_place.remove(&place);
                }
            }
        }
    }

    /// Forgets every replica in `segment` (unmounted).
    pub fn forget_segment(&mut self, segment: SegmentId) {
        self.generation += 1;
        let places: Vec<Place> = self
            .by_place
            .keys()
            .filter(|p| p.0 == segment)
            .copied()
            .collect();
        for place in places {
            if let Some((key, _)) = self.by_place.remove(&place) {
                self.unlink(&key, place);
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.generation += 1;
        self.by_place.clear();
        self.by_key.clear();
    }

    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies an inventory change the master reported; adds only when no
    /// entry was taken out since the answer was asked for (`generation`).
    pub fn apply(&mut self, change: &InventoryChange, generation: u64) {
        match change {
            InventoryChange::Added(e) if generation == self.generation => self.add(e),
            InventoryChange::Added(_) => {}
            InventoryChange::Removed {
                segment_id,
                offset,
                version,
            } => self.remove(*segment_id, *offset, *version),
        }
    }

    /// Everything again, from a complete list of what the master holds here.
    pub fn replace(&mut self, entries: &[InventoryEntry]) {
        self.clear();
        for e in entries {
            self.add(e);
        }
    }

    /// Notes keys answered here, for the master's recency.
    fn touch<'a>(&mut self, keys: impl Iterator<Item = &'a String>) {
        for k in keys {
            if self.touched.len() >= MAX_TOUCHED {
                return;
            }
            if !self.touched.contains(k) {
                self.touched.insert(k.clone());
            }
        }
    }

    pub fn take_touched(&mut self) -> Vec<String> {
        std::mem::take(&mut self.touched).into_iter().collect()
    }
}

impl RealClient {
    /// Whether existence is answered here for the objects this client holds.
    fn local_exist(&self) -> bool {
        self.config.local_exist && self.segment.is_some()
    }

    /// Answers existence from the index for the keys it knows (true); `None`
    /// for the others, which the master answers.
    pub(super) fn exist_here(&self, keys: &[String]) -> Vec<Option<bool>> {
        if !self.local_exist() || !self.healthy() {
            return vec![None; keys.len()];
        }
        let mut index = self.exist_index.lock();
        let answers: Vec<Option<bool>> = keys
            .iter()
            .map(|k| index.contains(k).then_some(true))
            .collect();
        index.touch(
            keys.iter()
                .zip(&answers)
                .filter(|(_, a)| a.is_some())
                .map(|(k, _)| k),
        );
        answers
    }

    /// The segments mounted here: the segment, those mounted later, the disk tier.
    pub(super) fn own_segment_ids(&self) -> Vec<SegmentId> {
        let mut ids: Vec<SegmentId> = self.segment().map(|d| d.id).into_iter().collect();
        ids.extend(self.extra_segments.lock().iter().map(|e| e.desc.id));
        ids.extend(self.disk.as_ref().map(|d| d.desc.id));
        ids
    }

    /// Records replicas of this client whose write the master completed.
    pub(super) fn confirmed(&self, entries: &[InventoryEntry]) {
        if !self.local_exist() || entries.is_empty() {
            return;
        }
        let mut index = self.exist_index.lock();
        for e in entries {
            index.add(e);
        }
    }

    /// Keys removed through this client.
    pub(super) fn removed_here(&self, keys: &[&str]) {
        if self.local_exist() && !keys.is_empty() {
            self.exist_index.lock().forget(keys);
        }
    }

    /// Objects were removed through this client by pattern: the index starts
    /// over (objects held here are asked of the master until written again).
    pub(super) fn forget_all_here(&self) {
        if self.local_exist() {
            self.exist_index.lock().clear();
        }
    }

    /// Tells the master which keys were answered here since the last tick, so
    /// their objects stay as recently used as a probe there would keep them.
    pub(super) fn report_touched(&self) {
        let touched = self.exist_index.lock().take_touched();
        if touched.is_empty() {
            return;
        }
        let Some(master) = self.master.read().clone() else {
            return;
        };
        self.spawn_task(async move {
            let _ = master.batch_exist_key(touched).await;
        });
    }
}
