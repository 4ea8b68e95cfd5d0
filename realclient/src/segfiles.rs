//! Segment files on disk: the lock a running real client holds on its own, and
//! the scan that finds those left behind.
//!
//! A real client keeps its segment file (and the `.inventory` beside it) after it
//! stops, so that a restart finds its cache. While it runs it holds an exclusive
//! `flock` on the file, which tells a live owner from a file nobody will come back
//! for: a second real client cannot take a segment in use, and `mooncake segments
//! --reclaim` removes only files whose lock it can take.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{FlockOperation, flock};

use crate::inventory;

/// An exclusive lock on a segment file, held for as long as this value lives.
#[derive(Debug)]
pub struct SegmentLock {
    _file: File,
}

/// Why a segment file could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (a live real client) holds it.
    #[error("segment file {0} is in use by another running real client")]
    InUse(PathBuf),
    /// The file could not be opened or locked.
    #[error("cannot lock segment file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl SegmentLock {
    /// Takes the lock on `path` (created empty if missing, so the lock is held
    /// before the segment is sized), or says who holds it.
    pub fn acquire(path: &Path) -> Result<SegmentLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(SegmentLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::InUse(path.to_path_buf())),
            Err(e) => Err(io_err(e.into())),
        }
    }
}

/// Whether a live process holds the lock on `path`.
pub fn owner_alive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    matches!(
        flock(&file, FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}

/// A segment file found on disk.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    /// The segment file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: Option<SystemTime>,
    /// Objects its inventory lists, when the inventory reads.
    pub objects: Option<usize>,
    /// Whether a running real client holds it.
    pub owner_alive: bool,
}

impl SegmentFile {
    /// The inventory beside the segment file.
    pub fn inventory_path(&self) -> PathBuf {
        inventory_path_of(&self.path)
    }
}

fn inventory_path_of(segment: &Path) -> PathBuf {
    let mut p = segment.as_os_str().to_os_string();
    p.push(".inventory");
    PathBuf::from(p)
}

/// The real clients' segment files in `dir`: `*.segment` files with an inventory
/// beside them or named as `mooncake_client` names them (`mooncake_client_<port>`).
pub fn scan(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".segment") {
            continue;
        }
        let inventory = inventory::load(&inventory_path_of(&path));
        if inventory.is_none() && !name.starts_with("mooncake_client_") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        found.push(SegmentFile {
            size: meta.len(),
            modified: meta.modified().ok(),
            objects: inventory.map(|i| i.entries.len()),
            owner_alive: owner_alive(&path),
            path,
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Removes a segment file and its inventory, unless a live real client holds it
/// (checked under the lock, so a client starting meanwhile is not robbed).
pub fn reclaim(file: &SegmentFile) -> Result<(), LockError> {
    let _lock = SegmentLock::acquire(&file.path)?;
    let remove = |p: &Path| match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LockError::Io {
            path: p.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    };
    remove(&file.inventory_path())?;
    remove(&inventory::journal_path(&file.inventory_path()))?;
    remove(&file.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_segment_is_alive_and_cannot_be_taken_or_reclaimed() {
        let dir = std::env::temp_dir().join(format!("mc-segfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mooncake_client_1.segment");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let held = SegmentLock::acquire(&path).unwrap();
        assert!(owner_alive(&path));
        // flock locks belong to the open file, so a second open in this very
        // process conflicts too, as another process's would.
        assert!(matches!(
            SegmentLock::acquire(&path),
            Err(LockError::InUse(_))
        ));
        let files = scan(&dir).unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].owner_alive && files[0].size == 4096);
        assert!(matches!(reclaim(&files[0]), Err(LockError::InUse(_))));
        assert!(path.exists());
        drop(held);
        assert!(!owner_alive(&path));
        let files = scan(&dir).unwrap();
        reclaim(&files[0]).unwrap();
        assert!(!path.exists());
        // Files that are not real clients' segments are left alone.
        std::fs::write(dir.join("other.segment"), b"x").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        assert!(scan(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
