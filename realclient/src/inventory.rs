//! The inventory of the objects in this client's segment, kept in memory and
//! persisted next to the segment file, so that a restarted master or a restarted real
//! client can rebuild the metadata of every object whose bytes are still there.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use mooncake_proto::{ClientId, InventoryChange, InventoryEntry, SegmentDesc, SegmentId};

/// Objects in one segment, by offset.
#[derive(Debug, Default)]
pub struct Inventory {
    segment: Option<SegmentId>,
    by_offset: HashMap<u64, InventoryEntry>,
    /// Last acknowledged master sequence number.
    pub seq: u64,
    dirty: bool,
}

/// What is written to disk.
#[derive(Debug, Serialize, Deserialize)]
pub struct PersistedInventory {
    /// The real client's id (kept across restarts so the master recognises it).
    pub client_id: ClientId,
    /// The segment.
    pub segment: SegmentDesc,
    /// The objects.
    pub entries: Vec<InventoryEntry>,
}

impl Inventory {
    /// An inventory of `segment` with `entries`.
    pub fn new(segment: Option<SegmentId>, entries: Vec<InventoryEntry>) -> Self {
        let mut inv = Inventory {
            segment,
            ..Default::default()
        };
        for e in entries {
            inv.add(e);
        }
        inv.dirty = false;
        inv
    }

    /// Records an object (a newer version at the same offset wins).
    pub fn add(&mut self, entry: InventoryEntry) {
        if Some(entry.segment_id) != self.segment {
            return;
        }
        match self.by_offset.get(&entry.offset) {
            Some(existing) if existing.version > entry.version => {}
            _ => {
                self.by_offset.insert(entry.offset, entry);
                self.dirty = true;
            }
        }
    }

    /// Forgets the object at `offset` if it has `version`.
    pub fn remove(&mut self, offset: u64, version: u64) {
        if self
            .by_offset
            .get(&offset)
            .is_some_and(|e| e.version == version)
        {
            self.by_offset.remove(&offset);
            self.dirty = true;
        }
    }

    /// Applies a change pushed by the master.
    pub fn apply(&mut self, change: InventoryChange) {
        match change {
            InventoryChange::Added(e) => self.add(e),
            InventoryChange::Removed {
                segment_id,
                offset,
                version,
            } => {
                if Some(segment_id) == self.segment {
                    self.remove(offset, version);
                }
            }
        }
    }

    /// Replaces everything (after a master snapshot).
    pub fn replace(&mut self, entries: Vec<InventoryEntry>) {
        self.by_offset.clear();
        for e in entries {
            self.add(e);
        }
        self.dirty = true;
    }

    /// All entries.
    pub fn entries(&self) -> Vec<InventoryEntry> {
        self.by_offset.values().cloned().collect()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.by_offset.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_offset.is_empty()
    }

    /// Whether it changed since the last [`take_dirty`](Self::take_dirty).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}

/// Writes the inventory atomically (temporary file + rename).
pub fn save(path: &Path, state: &PersistedInventory) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(state).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads a saved inventory; `None` when absent or unreadable.
pub fn load(path: &Path) -> Option<PersistedInventory> {
    let bytes = std::fs::read(path).ok()?;
    postcard::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn entry(seg: Uuid, offset: u64, version: u64) -> InventoryEntry {
        InventoryEntry {
            segment_id: seg,
            key: format!("k{offset}"),
            offset,
            size: 10,
            version,
        }
    }

    #[test]
    fn changes_apply_by_version() {
        let seg = Uuid::new_v4();
        let mut inv = Inventory::new(Some(seg), vec![]);
        inv.apply(InventoryChange::Added(entry(seg, 0, 5)));
        inv.apply(InventoryChange::Added(entry(seg, 0, 3)));
        assert_eq!(inv.entries()[0].version, 5, "older version ignored");
        inv.apply(InventoryChange::Removed {
            segment_id: seg,
            offset: 0,
            version: 4,
        });
        assert_eq!(inv.len(), 1, "removal of another version ignored");
        inv.apply(InventoryChange::Added(entry(Uuid::new_v4(), 64, 1)));
        assert_eq!(inv.len(), 1, "other segments ignored");
        inv.apply(InventoryChange::Removed {
            segment_id: seg,
            offset: 0,
            version: 5,
        });
        assert!(inv.is_empty());
    }

    #[test]
    fn save_and_load_round_trip() {
        let seg = SegmentDesc {
            id: Uuid::new_v4(),
            name: "h:1".into(),
            host: "h".into(),
            base: 0,
            size: 1 << 20,
            transport_endpoint: "h:2".into(),
            protocol: mooncake_proto::Protocol::Tcp,
        };
        let path = std::env::temp_dir().join(format!("inv-test-{}", std::process::id()));
        let state = PersistedInventory {
            client_id: Uuid::new_v4(),
            segment: seg.clone(),
            entries: vec![entry(seg.id, 0, 1), entry(seg.id, 64, 2)],
        };
        save(&path, &state).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.client_id, state.client_id);
        assert_eq!(back.entries, state.entries);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
