//! The disk tier: a file on this host's local disk, mapped and contributed to the
//! pool as one more segment of this client with [`Medium::Disk`]. The master
//! places offloaded copies in it (never a write's first replica); peers and this
//! client read and write it through the transfer port like the memory segment.
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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;

use mooncake_proto::{ClientId, Medium, Protocol, SegmentDesc, SegmentId};
use mooncake_shm::Region;

use crate::inventory::{self, Inventory};

/// Objects in the disk tier start on this boundary and own their blocks (the
/// master allocates disk space in whole blocks).
pub const DISK_BLOCK: u64 = 4096;
/// Bytes of one block's record in the sums file: CRC-32C, then bytes covered.
const SUM_LEN: u64 = 8;

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

/// Counters of the disk tier (served in the client's `/metrics`).
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Bytes written into the file.
    pub bytes_written: AtomicU64,
    /// Bytes read out of it (checked).
    pub bytes_read: AtomicU64,
    /// Writes and reads, and the time they took (ns), for average latencies.
    pub writes: AtomicU64,
    /// See `writes`.
    pub write_ns: AtomicU64,
    /// See `writes`.
    pub reads: AtomicU64,
    /// See `writes`.
    pub read_ns: AtomicU64,
    /// Reads refused because a block did not match its checksum.
    pub checksum_failures: AtomicU64,
}

/// The per-block checksums of the data file.
pub struct BlockSums {
    data: Arc<Region>,
    sums: Region,
    /// Counters.
    pub stats: DiskStats,
}

/// A block record's sum and how many of the block's bytes it covers.
fn parse_record(record: &[u8]) -> (u32, u64) {
    let crc = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
    let covered = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
    (crc, u64::from(covered).min(DISK_BLOCK))
}

/// Whether `bytes`, the first bytes of the block at `block`, are exactly what its
/// record covers and sums to.
fn record_matches((crc, covered): (u32, u64), block: u64, bytes: &[u8]) -> bool {
    covered == bytes.len() as u64 && block_crc(block, bytes) == crc
}

fn block_crc(block_start: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&block_start.to_le_bytes()), bytes)
}

impl BlockSums {
    /// Records the checksums of the blocks `[offset, offset + len)` was written
    /// to (call after the bytes are in place).
    pub fn seal(&self, offset: u64, len: u64) {
        let started = Instant::now();
        let end = offset.saturating_add(len).min(self.data.len() as u64);
        let mut buf = vec![0u8; DISK_BLOCK as usize];
        let mut block = offset / DISK_BLOCK * DISK_BLOCK;
        while block < end {
            let covered = (end - block).min(DISK_BLOCK);
            let bytes = &mut buf[..covered as usize];
            if self.data.read(block, bytes).is_err() {
                return;
            }
            let mut record = [0u8; SUM_LEN as usize];
            record[..4].copy_from_slice(&block_crc(block, bytes).to_le_bytes());
            record[4..].copy_from_slice(&(covered as u32).to_le_bytes());
            let _ = self.sums.write(block / DISK_BLOCK * SUM_LEN, &record);
            block += DISK_BLOCK;
        }
        self.stats.bytes_written.fetch_add(len, Relaxed);
        self.stats.writes.fetch_add(1, Relaxed);
        self.stats
            .write_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
    }

    /// A block's record: its sum and how many of its bytes it covers (0: never
    /// written).
    fn record(&self, block: u64) -> Option<(u32, u64)> {
        let mut record = [0u8; SUM_LEN as usize];
        self.sums
            .read(block / DISK_BLOCK * SUM_LEN, &mut record)
            .ok()?;
        Some(parse_record(&record))
    }

    /// Whether `bytes`, the first bytes of `block`, are exactly what its record
    /// covers and sums to.
    fn block_matches(&self, block: u64, bytes: &[u8]) -> bool {
        self.record(block)
            .is_some_and(|record| record_matches(record, block, bytes))
    }

    /// Counts a read that passed its checks (`Some(started)`) or failed them.
    fn count_read(&self, len: u64, passed: Option<Instant>) {
        match passed {
            Some(started) => {
                self.stats.bytes_read.fetch_add(len, Relaxed);
                self.stats.reads.fetch_add(1, Relaxed);
                self.stats
                    .read_ns
                    .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
            }
            None => {
                self.stats.checksum_failures.fetch_add(1, Relaxed);
            }
        }
    }

    /// Whether every block `[offset, offset + len)` touches matches its checksum
    /// and was written at least that far.
    pub fn verify(&self, offset: u64, len: u64) -> bool {
        let started = Instant::now();
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        let mut block = offset / DISK_BLOCK * DISK_BLOCK;
        let mut ok = true;
        while block < end && ok {
            // Bytes the read wants from this block must all have been written.
            let wanted_end = end.min(block + DISK_BLOCK);
            let covered = match self.record(block) {
                Some((_, covered)) if covered > 0 && block + covered >= wanted_end => covered,
                _ => {
                    ok = false;
                    break;
                }
            };
            ok = self
                .data
                .with_bytes(block, covered, |bytes| self.block_matches(block, bytes))
                .unwrap_or(false);
            block += DISK_BLOCK;
        }
        self.count_read(len, ok.then_some(started));
        ok
    }

    /// Reads the object at `offset` (block-aligned) of `len` bytes in chunks,
    /// checking each block against its sum before handing it to `sink` (with its
    /// position in the object): one copy out of the file, no second read for the
    /// check. Objects of 4 MiB and more are read in two halves at
    /// once (the check is as costly as the copy). `false` when a block fails
    /// (chunks before it may have been handed on) or `sink` refuses.
    pub fn read_checked(
        &self,
        offset: u64,
        len: u64,
        sink: impl Fn(u64, &[u8]) -> bool + Sync,
    ) -> bool {
        const PARALLEL_FROM: u64 = 4 << 20;
        if !offset.is_multiple_of(DISK_BLOCK) {
            return false;
        }
        let started = Instant::now();
        let ok = if len >= PARALLEL_FROM {
            let half = (len / 2).next_multiple_of(DISK_BLOCK);
            std::thread::scope(|scope| {
                let second = scope.spawn(|| self.read_range(offset, half, len, &sink));
                let first = self.read_range(offset, 0, half, &sink);
                second.join().unwrap_or(false) && first
            })
        } else {
            self.read_range(offset, 0, len, &sink)
        };
        self.count_read(len, ok.then_some(started));
        ok
    }

    /// Bytes `[from, to)` of the object at `offset`, checked, to `sink`: block by
    /// block, each checked in place in the mapping and handed on while it is
    /// still in the CPU's cache (one pass over memory, as a plain copy).
    fn read_range(
        &self,
        offset: u64,
        from: u64,
        to: u64,
        sink: &(impl Fn(u64, &[u8]) -> bool + Sync),
    ) -> bool {
        // 16 blocks at a time: their records in one read, each block checked in
        // place, then the chunk handed on while it is in the CPU's cache.
        const BLOCKS: u64 = 16;
        let mut records = [0u8; (BLOCKS * SUM_LEN) as usize];
        let mut pos = from;
        while pos < to {
            let n = (BLOCKS * DISK_BLOCK).min(to - pos);
            let first = offset + pos;
            let blocks = n.div_ceil(DISK_BLOCK);
            let records = &mut records[..(blocks * SUM_LEN) as usize];
            if self
                .sums
                .read(first / DISK_BLOCK * SUM_LEN, records)
                .is_err()
            {
                return false;
            }
            let passed = self
                .data
                .with_bytes(first, n, |chunk| {
                    let all_match = chunk
                        .chunks(DISK_BLOCK as usize)
                        .zip(records.chunks(SUM_LEN as usize))
                        .enumerate()
                        .all(|(k, (bytes, record))| {
                            let block = first + k as u64 * DISK_BLOCK;
                            record_matches(parse_record(record), block, bytes)
                        });
                    all_match && sink(pos, chunk)
                })
                .unwrap_or(false);
            if !passed {
                return false;
            }
            pos += n;
        }
        true
    }
}

/// The disk tier of one real client.
pub struct DiskTier {
    /// The mapped data file.
    pub region: Arc<Region>,
    /// Its checksums.
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
        let sums_size = (size / DISK_BLOCK * SUM_LEN).next_multiple_of(DISK_BLOCK);
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
                sums: Arc::new(BlockSums {
                    data: region.clone(),
                    sums,
                    stats: DiskStats::default(),
                }),
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
        let st = &self.sums.stats;
        let avg_us = |ns: &AtomicU64, n: &AtomicU64| {
            let n = n.load(Relaxed);
            if n == 0 {
                0.0
            } else {
                ns.load(Relaxed) as f64 / n as f64 / 1000.0
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
            st.bytes_written.load(Relaxed),
        )
        .counter(
            "mooncake_client_disk_read_bytes_total",
            "Bytes read from the disk tier (checksums passed).",
            st.bytes_read.load(Relaxed),
        )
        .counter(
            "mooncake_client_disk_checksum_failures_total",
            "Disk-tier reads refused because a block failed its checksum.",
            st.checksum_failures.load(Relaxed),
        )
        .gauge(
            "mooncake_client_disk_write_checksum_avg_microseconds",
            "Average time to checksum one write into the disk tier.",
            format!("{:.1}", avg_us(&st.write_ns, &st.writes)),
        )
        .gauge(
            "mooncake_client_disk_read_check_avg_microseconds",
            "Average time to check one read from the disk tier.",
            format!("{:.1}", avg_us(&st.read_ns, &st.reads)),
        );
        e.finish()
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
    fn sealed_blocks_verify_and_any_change_is_caught() {
        let dir = TempDir::new();
        let t = tier(dir.path(), 1 << 20).tier;
        let value: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        t.region.write(8192, &value).unwrap();
        // Nothing sealed yet: not readable.
        assert!(!t.sums.verify(8192, value.len() as u64));
        t.sums.seal(8192, value.len() as u64);
        assert!(t.sums.verify(8192, value.len() as u64));
        // Part of it, including the partial last block.
        assert!(t.sums.verify(8192 + 5000, 5000));
        // Past what was written.
        assert!(!t.sums.verify(8192, value.len() as u64 + 1));
        // A flipped byte underneath (another process, bit rot).
        t.region.write(8192 + 4100, &[value[4100] ^ 1]).unwrap();
        assert!(!t.sums.verify(8192, value.len() as u64));
        assert!(t.sums.verify(8192, 4096), "other blocks still verify");
        assert_eq!(t.sums.stats.checksum_failures.load(Relaxed), 3);
        // The chunked read checks as it goes and stops at the bad block.
        let got = Mutex::new(Vec::new());
        assert!(t.sums.read_checked(8192, 4096, |_, c| {
            got.lock().extend_from_slice(c);
            true
        }));
        assert_eq!(*got.lock(), value[..4096]);
        assert!(!t.sums.read_checked(8192, value.len() as u64, |_, _| true));
        t.region.write(8192 + 4100, &[value[4100]]).unwrap();
        let whole = Mutex::new(Vec::new());
        assert!(t.sums.read_checked(8192, value.len() as u64, |pos, c| {
            let mut w = whole.lock();
            assert_eq!(pos as usize, w.len());
            w.extend_from_slice(c);
            true
        }));
        assert_eq!(*whole.lock(), value);
    }

    #[test]
    fn large_objects_are_checked_in_two_halves_at_once() {
        let dir = TempDir::new();
        let t = tier(dir.path(), 16 << 20).tier;
        let len = (6 << 20) + 123;
        let value: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
        t.region.write(4096, &value).unwrap();
        t.sums.seal(4096, len);
        let back = Mutex::new(vec![0u8; len as usize]);
        assert!(t.sums.read_checked(4096, len, |pos, c| {
            back.lock()[pos as usize..pos as usize + c.len()].copy_from_slice(c);
            true
        }));
        assert!(*back.lock() == value);
        // A bad byte in the second half fails the read.
        t.region
            .write(4096 + len - 10, &[value[len as usize - 10] ^ 1])
            .unwrap();
        assert!(!t.sums.read_checked(4096, len, |_, _| true));
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
