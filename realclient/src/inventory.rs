//! The inventory of the objects in this client's segment, kept in memory and
//! persisted next to the segment file, so that a restarted master or a restarted real
//! client can rebuild the metadata of every object whose bytes are still there.
//!
//! On disk: a snapshot (`<segment>.inventory`, rewritten now and then) and a
//! journal (`<segment>.inventory.journal`) every change is appended to before the
//! write it records is acknowledged, so that a real client killed together with
//! the master still knows every acknowledged object when it comes back. Both live
//! next to the segment file (page cache, like the segment itself: they survive the
//! process, not the machine).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use mooncake_proto::{ClientId, InventoryChange, InventoryEntry, SegmentDesc, SegmentId};

/// Objects in one segment, by offset.
#[derive(Debug, Default)]
pub struct Inventory {
    segment: Option<SegmentId>,
    by_offset: HashMap<u64, InventoryEntry, foldhash::fast::RandomState>,
    /// Last acknowledged master sequence number.
    pub seq: u64,
    dirty: bool,
    journal: Option<Journal>,
    /// Bytes of the last snapshot written (0 before the first).
    snapshot_bytes: u64,
}

/// The append-only change log beside the snapshot.
#[derive(Debug)]
struct Journal {
    file: File,
    /// Records not yet written.
    pending: Vec<u8>,
    /// Bytes in the file.
    len: u64,
}

/// One journal record (postcard, after a `u32` length). Written from a borrowed
/// entry, read back as an owned one (the encoding is the same).
#[derive(Debug, Serialize, Deserialize)]
enum JournalRecord<'a> {
    Added(Cow<'a, InventoryEntry>),
    Removed { offset: u64, version: u64 },
    Cleared,
}

/// Where the journal of the snapshot at `snapshot` lives.
pub fn journal_path(snapshot: &Path) -> PathBuf {
    let mut p = snapshot.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
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
            Some(existing) if existing.version >= entry.version => {}
            _ => {
                self.log(&JournalRecord::Added(Cow::Borrowed(&entry)));
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
            self.log(&JournalRecord::Removed { offset, version });
            self.dirty = true;
        }
    }

    /// Appends every later change to the journal at `path` (created, or
    /// continued), until the next [`Inventory::compact_journal`].
    pub fn with_journal(mut self, path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(PRIVATE)
            .open(path)?;
        // (A journal continued from an older build may have been readable by all.)
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE))?;
        let len = file.metadata()?.len();
        self.journal = Some(Journal {
            file,
            pending: Vec::new(),
            len,
        });
        Ok(self)
    }

    fn log(&mut self, record: &JournalRecord<'_>) {
        let Some(j) = &mut self.journal else {
            return;
        };
        // Encoded in place behind a length filled in after.
        let start = j.pending.len();
        j.pending.extend_from_slice(&[0; 4]);
        if postcard::to_io(record, &mut j.pending).is_ok() {
            let len = (j.pending.len() - start - 4) as u32;
            j.pending[start..start + 4].copy_from_slice(&len.to_le_bytes());
        } else {
            // (Cannot happen: an entry always encodes.) Records before it stay.
            j.pending.truncate(start);
        }
    }

    /// Whether a new snapshot is due, `since_last` after the last one. With a
    /// journal, when the journal has grown as large as the snapshot (at least
    /// [`JOURNAL_COMPACT_BYTES`]), or half as large and a while has passed: every
    /// snapshot then costs at most about as much writing as the changes since the
    /// last one, however many objects there are. Without one, at every change.
    pub fn snapshot_due(&self, since_last: Duration) -> bool {
        if self.journal.is_none() {
            return true;
        }
        let journal = self.journal_len();
        let snapshot = self.snapshot_bytes;
        journal >= snapshot.max(JOURNAL_COMPACT_BYTES)
            || (since_last >= SNAPSHOT_INTERVAL && journal >= (snapshot / 2).max(1))
    }

    /// Writes the changes made since the last call to the journal (one write):
    /// call it before acknowledging what they record.
    pub fn flush(&mut self) {
        let Some(j) = &mut self.journal else {
            return;
        };
        if j.pending.is_empty() {
            return;
        }
        match j.file.write_all(&j.pending) {
            Ok(()) => j.len += j.pending.len() as u64,
            Err(e) => tracing::warn!("cannot append to the inventory journal: {e}"),
        }
        j.pending.clear();
    }

    /// Whether changes go to a journal.
    pub fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// Bytes in the journal (how far it grew since the last snapshot).
    pub fn journal_len(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.len)
    }

    /// After a snapshot taken when the journal had `covered` bytes: drops those
    /// bytes, keeping what was appended since.
    pub fn compact_journal(&mut self, covered: u64) {
        self.flush();
        let Some(j) = &mut self.journal else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            let mut tail = Vec::new();
            if j.len > covered {
                j.file.seek(SeekFrom::Start(covered))?;
                j.file.read_to_end(&mut tail)?;
            }
            j.file.set_len(0)?;
            j.file.write_all(&tail)?;
            j.len = tail.len() as u64;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!("cannot compact the inventory journal: {e}");
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
        self.log(&JournalRecord::Cleared);
        for e in entries {
            self.add(e);
        }
        self.dirty = true;
    }

    /// All entries.
    pub fn entries(&self) -> Vec<InventoryEntry> {
        self.by_offset.values().cloned().collect()
    }

    /// Bytes of the objects.
    pub fn bytes(&self) -> u64 {
        self.by_offset.values().map(|e| e.size).sum()
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

/// Journal bytes that always make a snapshot due (see [`Inventory::snapshot_due`]).
pub const JOURNAL_COMPACT_BYTES: u64 = 4 << 20;

/// How long a journal half the size of the snapshot waits for one.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);

/// [`PersistedInventory`] encoded straight from the inventory (the same bytes).
#[derive(Serialize)]
struct PersistedInventoryRef<'a> {
    client_id: ClientId,
    segment: &'a SegmentDesc,
    #[serde(serialize_with = "entries_of")]
    entries: &'a HashMap<u64, InventoryEntry, foldhash::fast::RandomState>,
}

fn entries_of<S: serde::Serializer>(
    by_offset: &&HashMap<u64, InventoryEntry, foldhash::fast::RandomState>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(by_offset.values())
}

/// Writes a snapshot of `inventory` (the objects of `segment`, held by
/// `client_id`) to `path`, then trims the part of its journal the snapshot
/// covers. The entries are encoded under the lock (no copy of them is made)
/// and the file is written without it.
pub fn persist(
    inventory: &parking_lot::Mutex<Inventory>,
    path: &Path,
    client_id: ClientId,
    segment: SegmentDesc,
) -> std::io::Result<()> {
    let (bytes, covered) = {
        let mut inv = inventory.lock();
        inv.flush();
        inv.take_dirty();
        let state = PersistedInventoryRef {
            client_id,
            segment: &segment,
            entries: &inv.by_offset,
        };
        let bytes = postcard::to_stdvec(&state).map_err(std::io::Error::other)?;
        (bytes, inv.journal_len())
    };
    write_atomically(path, &bytes)?;
    let mut inv = inventory.lock();
    inv.snapshot_bytes = bytes.len() as u64;
    inv.compact_journal(covered);
    Ok(())
}

/// Inventory files name every cached key: readable and writable by the client's
/// user only, like the segment and disk files.
const PRIVATE: u32 = 0o600;

/// Writes the inventory atomically (temporary file + rename), readable by this
/// user only.
pub fn save(path: &Path, state: &PersistedInventory) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(state).map_err(std::io::Error::other)?;
    write_atomically(path, &bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(PRIVATE)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE))?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Reads a saved inventory and replays its journal; `None` when absent or
/// unreadable. A record torn by a kill ends the replay.
pub fn load(path: &Path) -> Option<PersistedInventory> {
    let bytes = std::fs::read(path).ok()?;
    let mut state: PersistedInventory = postcard::from_bytes(&bytes).ok()?;
    let Ok(journal) = std::fs::read(journal_path(path)) else {
        return Some(state);
    };
    let mut by_offset: HashMap<u64, InventoryEntry> =
        state.entries.drain(..).map(|e| (e.offset, e)).collect();
    let mut rest = journal.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let Some(record) = rest.get(4..4 + len) else {
            break;
        };
        let Ok(record) = postcard::from_bytes::<JournalRecord>(record) else {
            break;
        };
        rest = &rest[4 + len..];
        match record {
            JournalRecord::Added(e) if e.segment_id == state.segment.id => {
                if by_offset
                    .get(&e.offset)
                    .is_none_or(|old| old.version < e.version)
                {
                    by_offset.insert(e.offset, e.into_owned());
                }
            }
            JournalRecord::Added(_) => {}
            JournalRecord::Removed { offset, version } => {
                if by_offset.get(&offset).is_some_and(|e| e.version == version) {
                    by_offset.remove(&offset);
                }
            }
            JournalRecord::Cleared => by_offset.clear(),
        }
    }
    state.entries = by_offset.into_values().collect();
    Some(state)
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

    fn segment() -> SegmentDesc {
        SegmentDesc {
            id: Uuid::new_v4(),
            name: "h:1".into(),
            host: "h".into(),
            base: 0,
            size: 1 << 20,
            transport_endpoint: "h:2".into(),
            protocol: mooncake_proto::Protocol::Tcp,
            medium: Default::default(),
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
        let seg = segment();
        let path = std::env::temp_dir().join(format!("inv-test-{}", std::process::id()));
        let state = PersistedInventory {
            client_id: Uuid::new_v4(),
            segment: seg.clone(),
            entries: vec![entry(seg.id, 0, 1), entry(seg.id, 64, 2)],
        };
        save(&path, &state).unwrap();
        // It names the cached keys: no other user may read it.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, PRIVATE, "{mode:o}");
        let journal = path.with_extension("journal");
        std::fs::write(&journal, b"").unwrap();
        std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _inv = Inventory::default().with_journal(&journal).unwrap();
        let mode = std::fs::metadata(&journal).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, PRIVATE, "{mode:o}");
        std::fs::remove_file(&journal).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.client_id, state.client_id);
        assert_eq!(back.entries, state.entries);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).is_none());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_journal_keeps_changes_made_after_the_snapshot() {
        let seg = segment();
        let path = std::env::temp_dir().join(format!("inv-journal-{}", std::process::id()));
        let journal = journal_path(&path);
        let _ = std::fs::remove_file(&journal);
        let mut inv = Inventory::new(Some(seg.id), vec![entry(seg.id, 0, 1)])
            .with_journal(&journal)
            .unwrap();
        let snapshot = |inv: &Inventory| PersistedInventory {
            client_id: Uuid::nil(),
            segment: seg.clone(),
            entries: inv.entries(),
        };
        save(&path, &snapshot(&inv)).unwrap();
        // Changes after the snapshot, flushed as a write would before its ack.
        inv.add(entry(seg.id, 64, 2));
        inv.add(entry(seg.id, 128, 3));
        inv.remove(0, 1);
        inv.flush();
        let mut keys: Vec<u64> = load(&path)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.offset)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![64, 128],
            "snapshot + journal = what was acknowledged"
        );
        // A snapshot covering the journal so far, then one more change.
        let covered = inv.journal_len();
        save(&path, &snapshot(&inv)).unwrap();
        inv.add(entry(seg.id, 192, 4));
        inv.flush();
        inv.compact_journal(covered);
        assert!(inv.journal_len() > 0 && inv.journal_len() < covered);
        assert_eq!(load(&path).unwrap().entries.len(), 3);
        // A torn last record (a kill in the middle of a write) is ignored.
        inv.add(entry(seg.id, 256, 5));
        inv.flush();
        let len = std::fs::metadata(&journal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert_eq!(load(&path).unwrap().entries.len(), 3);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&journal).unwrap();
    }

    #[test]
    fn snapshots_come_as_often_as_the_journal_grows_as_large_as_the_last_one() {
        let seg = segment();
        let path = std::env::temp_dir().join(format!("inv-policy-{}", std::process::id()));
        let journal = journal_path(&path);
        let _ = std::fs::remove_file(&journal);
        // Big enough that the snapshot outweighs the fixed journal threshold.
        let entries: Vec<InventoryEntry> = (0..150_000).map(|i| entry(seg.id, i * 64, 1)).collect();
        let inv = Inventory::new(Some(seg.id), entries)
            .with_journal(&journal)
            .unwrap();
        let inv = parking_lot::Mutex::new(inv);
        assert!(
            !inv.lock().snapshot_due(Duration::ZERO),
            "nothing journaled"
        );
        persist(&inv, &path, Uuid::nil(), seg.clone()).unwrap();
        let snapshot = std::fs::metadata(&path).unwrap().len();
        assert!(snapshot > JOURNAL_COMPACT_BYTES, "{snapshot}");
        // What persist wrote (encoded from the map in place) loads back whole.
        let back = load(&path).unwrap();
        assert_eq!(back.entries.len(), 150_000);
        assert_eq!(back.segment.id, seg.id);

        // Changes worth a quarter of the snapshot: not due, even after a while.
        let mut next = 150_000u64;
        let mut grow_to = |inv: &parking_lot::Mutex<Inventory>, bytes: u64| {
            let mut inv = inv.lock();
            while inv.journal_len() < bytes {
                inv.add(entry(seg.id, next * 64, 1));
                next += 1;
                inv.flush();
            }
        };
        grow_to(&inv, snapshot / 4);
        assert!(!inv.lock().snapshot_due(Duration::ZERO));
        assert!(!inv.lock().snapshot_due(SNAPSHOT_INTERVAL * 10));
        // Half of it: due once a while has passed; all of it: due at once.
        grow_to(&inv, snapshot / 2);
        assert!(!inv.lock().snapshot_due(Duration::ZERO));
        assert!(inv.lock().snapshot_due(SNAPSHOT_INTERVAL));
        grow_to(&inv, snapshot);
        assert!(inv.lock().snapshot_due(Duration::ZERO));
        let total = inv.lock().len();
        persist(&inv, &path, Uuid::nil(), seg.clone()).unwrap();
        assert_eq!(
            inv.lock().journal_len(),
            0,
            "the snapshot covers the journal"
        );
        assert!(!inv.lock().snapshot_due(SNAPSHOT_INTERVAL * 10));
        assert_eq!(load(&path).unwrap().entries.len(), total);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&journal).unwrap();
    }
}
