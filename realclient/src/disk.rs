//! The disk tier: a file on this host's local disk, mapped and contributed to the
//! pool as one more segment of this client with [`Medium::Disk`]. The master
//! places offloaded copies in it (never a write's first replica); peers and this
//! client read and write it through the transfer port like the memory segment,
//! and dummies on this host map its files (exported with the segment) and read
//! objects there themselves, checked ([`mooncake_shm::blocksums`]).
//!
//! Beside the data file (`<stem>.disk`, its blocks reserved at start so a full disk
//! is an error then, not a fault later) live:
//! - `<stem>.disk.sums`: per 4 KiB block a CRC-32C (seeded with the block's
//!   offset) and how many bytes of the block it covers. Written after the bytes of
//!   every write; every read is checked against it first, so a torn write (a kill
//!   between the bytes and their sum), a flipped bit or a file rewritten
//!   underneath is a `CHECKSUM_MISMATCH`, never wrong bytes.
//! - `<stem>.disk.inventory` (+ `.journal`): the objects in the file, as for the
//!   memory segment ([`crate::inventory`]), so that a restarted client or master
//!   gets them back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use mooncake_proto::{ClientId, Medium, Protocol, SegmentDesc, SegmentId};
use mooncake_shm::Region;
use mooncake_shm::blocksums::{self, BlockSums, Counter, Counters};

use crate::inventory::{self, Inventory};

/// Objects in the disk tier start on this boundary and own their blocks (the
/// master allocates disk space in whole blocks).
pub const DISK_BLOCK: u64 = blocksums::BLOCK;
/// Where the disk tier lives and how large it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Directory of the files (upstream: `MOONCAKE_OFFLOAD_FILE_STORAGE_PATH`).
    pub dir: PathBuf,
    /// Capacity in bytes (rounded down to whole blocks).
    pub size: u64,
    /// Names of the files (`<stem>.disk`...); `None`: from the segment file's
    /// name. With a stem, a process finding it held by another live process
    /// takes `<stem>.1`, `<stem>.2`... (processes sharing one directory).
    pub stem: Option<String>,
}

/// Why the disk tier could not start (the memory tier serves on without it).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file could not be created, sized or mapped (read-only directory, full
    /// disk, no such directory).
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: mooncake_shm::ShmError,
    },
    /// Another live process holds the files (or they cannot be locked).
    #[error(transparent)]
    Locked(#[from] crate::segfiles::LockError),
    /// The capacity is below one block.
    #[error("disk tier size {0} is below one {DISK_BLOCK}-byte block")]
    TooSmall(u64),
}

/// The disk tier of one real client.
pub struct DiskTier {
    /// The mapped data file.
    pub region: Arc<Region>,
    /// Its checksums (and the read and write counters, in a region exported
    /// to dummies with the files).
    pub sums: Arc<BlockSums>,
    /// The segment as the master knows it (`transport_endpoint` filled in once the
    /// transfer port is up).
    pub desc: SegmentDesc,
    /// The objects in it.
    pub inventory: Mutex<Inventory>,
    inventory_path: PathBuf,
    /// Held until this client stops: no second client uses the same files.
    lock: Mutex<Option<crate::segfiles::SegmentLock>>,
}

/// What opening the disk tier found.
pub struct OpenedDisk {
    /// The tier.
    pub tier: DiskTier,
    /// The client id its inventory was saved with, when it was re-attached.
    pub client_id: Option<ClientId>,
}

fn file_error(path: &Path) -> impl FnOnce(mooncake_shm::ShmError) -> DiskError + '_ {
    move |source| DiskError::File {
        path: path.to_path_buf(),
        source,
    }
}

impl DiskTier {
    /// Opens the disk tier of the client whose files are named `stem` in
    /// `config.dir`: re-attaches the files and inventory a previous run left when
    /// they match `config.size`, else starts them empty.
    pub fn open(
        config: &DiskConfig,
        stem: &str,
        name: String,
        host: String,
        protocol: Protocol,
    ) -> Result<OpenedDisk, DiskError> {
        let size = config.size / DISK_BLOCK * DISK_BLOCK;
        if size == 0 {
            return Err(DiskError::TooSmall(config.size));
        }
        let data_path = config.dir.join(format!("{stem}.disk"));
        let sums_path = config.dir.join(format!("{stem}.disk.sums"));
        let inventory_path = config.dir.join(format!("{stem}.disk.inventory"));
        let sums_size = blocksums::sums_len(size);
        // A missing directory is made (a read-only or foreign one fails below).
        let _ = std::fs::create_dir_all(&config.dir);
        let lock = crate::segfiles::SegmentLock::acquire(&data_path)?;
        let persisted = inventory::load(&inventory_path).filter(|p| {
            p.segment.size == size
                && p.segment.medium == Medium::Disk
                && std::fs::metadata(&data_path).is_ok_and(|m| m.len() == size)
                && std::fs::metadata(&sums_path).is_ok_and(|m| m.len() == sums_size)
        });
        let (data, sums, id, entries, client_id) = match persisted {
            Some(p) => {
                let data =
                    Region::open_disk_file(&data_path, size).map_err(file_error(&data_path))?;
                let sums = Region::open_disk_file(&sums_path, sums_size)
                    .map_err(file_error(&sums_path))?;
                tracing::info!(
                    objects = p.entries.len(),
                    "re-attached the disk tier {}",
                    data_path.display()
                );
                (data, sums, p.segment.id, p.entries, Some(p.client_id))
            }
            None => {
                let _ = std::fs::remove_file(&inventory_path);
                let _ = std::fs::remove_file(inventory::journal_path(&inventory_path));
                let data =
                    Region::create_disk_file(&data_path, size).map_err(file_error(&data_path))?;
                let sums = Region::create_disk_file(&sums_path, sums_size)
                    .map_err(file_error(&sums_path))?;
                (data, sums, SegmentId::new_v4(), Vec::new(), None)
            }
        };
        let region = Arc::new(data);
        let counters = Counters::create().map_err(file_error(&sums_path))?;
        let sums = BlockSums::new(region.clone(), Arc::new(sums), counters)
            .expect("the sums file is sized for the data file");
        let desc = SegmentDesc {
            id,
            name,
            host,
            base: region.as_ptr() as u64,
            size,
            transport_endpoint: String::new(),
            protocol,
            medium: Medium::Disk,
        };
        let mut inventory = Inventory::new(Some(id), entries.clone());
        let journal = inventory::journal_path(&inventory_path);
        inventory = match inventory.with_journal(&journal) {
            Ok(inv) => inv,
            Err(e) => {
                tracing::warn!("no disk-tier journal at {} ({e})", journal.display());
                Inventory::new(Some(id), entries)
            }
        };
        Ok(OpenedDisk {
            tier: DiskTier {
                sums: Arc::new(sums),
                region,
                desc,
                inventory: Mutex::new(inventory),
                inventory_path,
                lock: Mutex::new(Some(lock)),
            },
            client_id,
        })
    }

    /// Writes the inventory snapshot (and trims the journal it covers).
    pub fn persist(&self, client_id: ClientId) {
        let segment = self.desc.clone();
        if let Err(e) =
            inventory::persist(&self.inventory, &self.inventory_path, client_id, segment)
        {
            tracing::warn!("cannot persist the disk-tier inventory: {e}");
        }
    }

    /// Lets another client take the files (this one has stopped using them:
    /// its transfer port is closed and its inventory persisted).
    pub fn release(&self) {
        self.lock.lock().take();
    }

    /// The disk tier's part of the client's `/metrics`.
    pub fn render_metrics(&self) -> String {
        let (objects, bytes) = self.usage();
        let st = self.sums.counters();
        let avg_us = |ns: Counter, n: Counter| {
            let n = st.get(n);
            if n == 0 {
                0.0
            } else {
                st.get(ns) as f64 / n as f64 / 1000.0
            }
        };
        let mut e = mooncake_daemon::prometheus::Exposition::new();
        e.gauge(
            "mooncake_client_disk_capacity_bytes",
            "Size of the disk tier.",
            self.desc.size,
        )
        .gauge(
            "mooncake_client_disk_objects",
            "Objects in the disk tier.",
            objects,
        )
        .gauge(
            "mooncake_client_disk_object_bytes",
            "Bytes of the objects in the disk tier.",
            bytes,
        )
        .counter(
            "mooncake_client_disk_write_bytes_total",
            "Bytes written into the disk tier.",
            st.get(Counter::BytesWritten),
        )
        .counter(
            "mooncake_client_disk_read_bytes_total",
            "Bytes read from the disk tier (checksums passed).",
            st.get(Counter::BytesRead),
        )
        .counter(
            "mooncake_client_disk_checksum_failures_total",
            "Disk-tier reads refused because a block failed its checksum.",
            st.get(Counter::ChecksumFailures),
        )
        .gauge(
            "mooncake_client_disk_write_checksum_avg_microseconds",
            "Average time to checksum one write into the disk tier.",
            format!("{:.1}", avg_us(Counter::WriteNs, Counter::Writes)),
        )
        .gauge(
            "mooncake_client_disk_read_check_avg_microseconds",
            "Average time to check one read from the disk tier.",
            format!("{:.1}", avg_us(Counter::ReadNs, Counter::Reads)),
        );
        e.finish()
    }

    /// Reads of objects in the tier that passed their checks, by this process
    /// and by the dummies reading its files.
    pub fn reads_served(&self) -> u64 {
        self.sums.counters().get(Counter::Reads)
    }

    /// Objects and bytes recorded.
    pub fn usage(&self) -> (u64, u64) {
        let inv = self.inventory.lock();
        (inv.len() as u64, inv.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mooncake_proto::InventoryEntry;

    /// A directory removed when dropped.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!("mc-disk-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tier(dir: &Path, size: u64) -> OpenedDisk {
        DiskTier::open(
            &DiskConfig {
                dir: dir.to_path_buf(),
                size,
                stem: None,
            },
            "t",
            "h/disk".into(),
            "h".into(),
            Protocol::Tcp,
        )
        .unwrap()
    }

    #[test]
    fn the_files_and_inventory_come_back_after_a_restart() {
        let dir = TempDir::new();
        let client = ClientId::new_v4();
        let id = {
            let t = tier(dir.path(), 1 << 20).tier;
            t.region.write(0, b"persisted").unwrap();
            t.sums.seal(0, 9);
            t.inventory.lock().add(InventoryEntry {
                segment_id: t.desc.id,
                key: "k".into(),
                offset: 0,
                size: 9,
                version: 5,
            });
            t.inventory.lock().flush();
            t.persist(client);
            t.desc.id
        };
        let again = tier(dir.path(), 1 << 20);
        assert_eq!(again.client_id, Some(client));
        assert_eq!(again.tier.desc.id, id);
        assert_eq!(again.tier.inventory.lock().len(), 1);
        assert!(again.tier.sums.verify(0, 9));
        let mut back = [0u8; 9];
        again.tier.region.read(0, &mut back).unwrap();
        assert_eq!(&back, b"persisted");
        // A second client on the same files is refused while the first lives.
        let second = DiskTier::open(
            &DiskConfig {
                dir: dir.path().to_path_buf(),
                size: 1 << 20,
                stem: None,
            },
            "t",
            "h/disk".into(),
            "h".into(),
            Protocol::Tcp,
        );
        assert!(matches!(second, Err(DiskError::Locked(_))));
        drop(again);
        // Another size starts over, empty.
        let other = tier(dir.path(), 2 << 20);
        assert_eq!(other.client_id, None);
        assert_ne!(other.tier.desc.id, id);
        assert!(!other.tier.sums.verify(0, 9));
    }

    #[test]
    fn a_read_only_directory_is_an_error_not_a_crash() {
        let missing = Path::new("/proc/no-such-dir");
        let r = DiskTier::open(
            &DiskConfig {
                dir: missing.to_path_buf(),
                size: 1 << 20,
                stem: None,
            },
            "t",
            "h/disk".into(),
            "h".into(),
            Protocol::Tcp,
        );
        assert!(matches!(
            r,
            Err(DiskError::File { .. } | DiskError::Locked(_))
        ));
    }
}
