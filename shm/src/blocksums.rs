//! Per-block checksums of a mapped file (the disk tier): the record format,
//! sealing written bytes, and the checked read that both the real client owning
//! the file and a dummy mapping it use, so a dummy reads offloaded objects itself
//! as it reads the memory segment.
//!
//! Beside the data region lives a sums region: per 4 KiB block a CRC-32C (seeded
//! with the block's offset, so a block moved elsewhere fails) and how many bytes
//! of the block it covers. Sums are written after the bytes of every write and
//! every read is checked against them, so a torn write, a flipped bit or a file
//! rewritten underneath is a failed read, never wrong bytes. [`Counters`] are
//! kept in a small shared region, so reads a dummy makes count in the owner's
//! metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use crate::error::ShmError;
use crate::region::{Region, RegionOptions};

/// Bytes per checked block; objects start on a block boundary.
pub const BLOCK: u64 = 4096;
/// Bytes of one block's record in the sums region: CRC-32C, then bytes covered.
pub const RECORD_LEN: u64 = 8;
/// Objects at least this long are read by this thread and the copy helper.
pub const SHARED_FROM: u64 = 1 << 20;
/// What a thread takes at a time of a shared read.
const CHUNK: u64 = RECORDS_AT_ONCE * BLOCK;
/// Blocks whose records are read at once.
const RECORDS_AT_ONCE: u64 = 16;

/// Length of the sums region for a data region of `data_len` bytes.
pub fn sums_len(data_len: u64) -> u64 {
    (data_len / BLOCK * RECORD_LEN).next_multiple_of(BLOCK)
}

fn block_crc(block_start: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&block_start.to_le_bytes()), bytes)
}

/// A block record's sum and how many of the block's bytes it covers.
fn parse_record(record: &[u8]) -> (u32, u64) {
    let crc = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
    let covered = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
    (crc, u64::from(covered).min(BLOCK))
}

/// Whether `bytes`, the first bytes of the block at `block`, are exactly what its
/// record covers and sums to.
fn record_matches((crc, covered): (u32, u64), block: u64, bytes: &[u8]) -> bool {
    covered == bytes.len() as u64 && block_crc(block, bytes) == crc
}

/// A counter of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Bytes written (sealed).
    BytesWritten,
    /// Writes sealed.
    Writes,
    /// Time spent sealing, ns.
    WriteNs,
    /// Bytes read that passed their checks.
    BytesRead,
    /// Reads that passed their checks.
    Reads,
    /// Time spent in reads that passed, ns.
    ReadNs,
    /// Reads refused because a block did not match its checksum.
    ChecksumFailures,
}

/// Counters of a checked file, in a shared region: the owner creates it and
/// exports it; every process reading the file adds to the same counters.
#[derive(Clone)]
pub struct Counters {
    region: Arc<Region>,
}

impl Counters {
    /// New counters, all zero, in a region of their own.
    pub fn create() -> Result<Counters, ShmError> {
        let region = Region::anonymous("mooncake-disk-stats", BLOCK, &RegionOptions::default())?;
        Ok(Counters {
            region: Arc::new(region),
        })
    }

    /// Counters in a region another process exported (`None`: too small).
    pub fn from_region(region: Region) -> Option<Counters> {
        let c = Counters {
            region: Arc::new(region),
        };
        let fits = c.cell(Counter::ChecksumFailures).is_some();
        fits.then_some(c)
    }

    /// The region holding them (to export it).
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn cell(&self, counter: Counter) -> Option<&std::sync::atomic::AtomicU64> {
        self.region.atomic_u64(counter as u64 * 8)
    }

    /// The counter's value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.cell(counter).map_or(0, |c| c.load(Relaxed))
    }

    fn add(&self, counter: Counter, n: u64) {
        if let Some(c) = self.cell(counter) {
            c.fetch_add(n, Relaxed);
        }
    }

    /// Counts a read that passed its checks (`Some(started)`) or failed them.
    fn count_read(&self, len: u64, passed: Option<Instant>) {
        match passed {
            Some(started) => {
                self.add(Counter::BytesRead, len);
                self.add(Counter::Reads, 1);
                self.add(Counter::ReadNs, started.elapsed().as_nanos() as u64);
            }
            None => self.add(Counter::ChecksumFailures, 1),
        }
    }
}

/// A data region, its sums region and their counters.
#[derive(Clone)]
pub struct BlockSums {
    data: Arc<Region>,
    sums: Arc<Region>,
    counters: Counters,
}

impl BlockSums {
    /// Checks over `data` with records in `sums` (at least
    /// [`sums_len`]`(data.len())` bytes, else `None`).
    pub fn new(data: Arc<Region>, sums: Arc<Region>, counters: Counters) -> Option<BlockSums> {
        (sums.len() as u64 >= sums_len(data.len() as u64)).then_some(BlockSums {
            data,
            sums,
            counters,
        })
    }

    /// The data region.
    pub fn data(&self) -> &Arc<Region> {
        &self.data
    }

    /// The sums region.
    pub fn sums(&self) -> &Arc<Region> {
        &self.sums
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Records the checksums of the blocks `[offset, offset + len)` was written
    /// to (call after the bytes are in place).
    pub fn seal(&self, offset: u64, len: u64) {
        let started = Instant::now();
        let end = offset.saturating_add(len).min(self.data.len() as u64);
        let mut block = offset / BLOCK * BLOCK;
        while block < end {
            let covered = (end - block).min(BLOCK);
            let Ok(crc) = self
                .data
                .with_bytes(block, covered, |bytes| block_crc(block, bytes))
            else {
                return;
            };
            let mut record = [0u8; RECORD_LEN as usize];
            record[..4].copy_from_slice(&crc.to_le_bytes());
            record[4..].copy_from_slice(&(covered as u32).to_le_bytes());
            let _ = self.sums.write(block / BLOCK * RECORD_LEN, &record);
            block += BLOCK;
        }
        self.counters.add(Counter::BytesWritten, len);
        self.counters.add(Counter::Writes, 1);
        self.counters
            .add(Counter::WriteNs, started.elapsed().as_nanos() as u64);
    }

    /// A block's record: its sum and how many of its bytes it covers (0: never
    /// written).
    fn record(&self, block: u64) -> Option<(u32, u64)> {
        let mut record = [0u8; RECORD_LEN as usize];
        self.sums
            .read(block / BLOCK * RECORD_LEN, &mut record)
            .ok()?;
        Some(parse_record(&record))
    }

    /// Whether every block `[offset, offset + len)` touches matches its checksum
    /// and was written at least that far.
    pub fn verify(&self, offset: u64, len: u64) -> bool {
        let started = Instant::now();
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        let mut block = offset / BLOCK * BLOCK;
        let mut ok = true;
        while block < end && ok {
            // Bytes the read wants from this block must all have been written.
            let wanted_end = end.min(block + BLOCK);
            ok = match self.record(block) {
                Some(record @ (_, covered)) if covered > 0 && block + covered >= wanted_end => self
                    .data
                    .with_bytes(block, covered, |bytes| record_matches(record, block, bytes))
                    .unwrap_or(false),
                _ => false,
            };
            block += BLOCK;
        }
        self.counters.count_read(len, ok.then_some(started));
        ok
    }

    /// Reads the object at `offset` (block-aligned) of `len` bytes block by
    /// block, checking each in place in the mapping and handing it to `sink`
    /// (with its position in the object) while it is still in the CPU's cache:
    /// one pass over memory, as a plain copy. Objects of [`SHARED_FROM`] bytes
    /// and more are shared with the copy helper chunk by chunk: it takes chunks
    /// from the time it is awake, so a late start costs nothing. `false` when a
    /// block fails (blocks before it may have been handed on) or `sink` refuses.
    pub fn read_checked(
        &self,
        offset: u64,
        len: u64,
        sink: impl Fn(u64, &[u8]) -> bool + Sync,
    ) -> bool {
        if !offset.is_multiple_of(BLOCK) {
            return false;
        }
        let started = Instant::now();
        let ok = if len >= SHARED_FROM {
            let next = AtomicU64::new(0);
            let failed = AtomicBool::new(false);
            let work = || {
                while !failed.load(Relaxed) {
                    let from = next.fetch_add(CHUNK, Relaxed);
                    if from >= len {
                        break;
                    }
                    if !self.read_range(offset, from, (from + CHUNK).min(len), &sink) {
                        failed.store(true, Relaxed);
                    }
                }
            };
            let (_, helped) = crate::copy::join(work, work);
            helped.is_some() && !failed.load(Relaxed)
        } else {
            self.read_range(offset, 0, len, &sink)
        };
        self.counters.count_read(len, ok.then_some(started));
        ok
    }

    /// Bytes `[from, to)` of the object at `offset`, checked, to `sink`.
    fn read_range(
        &self,
        offset: u64,
        from: u64,
        to: u64,
        sink: &(impl Fn(u64, &[u8]) -> bool + Sync),
    ) -> bool {
        let mut records = [0u8; (RECORDS_AT_ONCE * RECORD_LEN) as usize];
        let mut pos = from;
        while pos < to {
            let n = (RECORDS_AT_ONCE * BLOCK).min(to - pos);
            let first = offset + pos;
            let blocks = n.div_ceil(BLOCK);
            let records = &mut records[..(blocks * RECORD_LEN) as usize];
            if self.sums.read(first / BLOCK * RECORD_LEN, records).is_err() {
                return false;
            }
            let passed = self
                .data
                .with_bytes(first, n, |chunk| {
                    // Check a block, then hand it on while it is in L1.
                    chunk
                        .chunks(BLOCK as usize)
                        .zip(records.chunks(RECORD_LEN as usize))
                        .enumerate()
                        .all(|(k, (bytes, record))| {
                            let at = k as u64 * BLOCK;
                            record_matches(parse_record(record), first + at, bytes)
                                && sink(pos + at, bytes)
                        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    fn sums(len: u64) -> BlockSums {
        let opts = RegionOptions::default();
        let data = Arc::new(Region::anonymous("data", len, &opts).unwrap());
        let sums = Arc::new(Region::anonymous("sums", sums_len(len), &opts).unwrap());
        BlockSums::new(data, sums, Counters::create().unwrap()).unwrap()
    }

    #[test]
    fn sealed_blocks_verify_and_any_change_is_caught() {
        let t = sums(1 << 20);
        let value: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        t.data().write(8192, &value).unwrap();
        // Nothing sealed yet: not readable.
        assert!(!t.verify(8192, value.len() as u64));
        t.seal(8192, value.len() as u64);
        assert!(t.verify(8192, value.len() as u64));
        // Part of it, including the partial last block.
        assert!(t.verify(8192 + 5000, 5000));
        // Past what was written.
        assert!(!t.verify(8192, value.len() as u64 + 1));
        // A flipped byte underneath (another process, bit rot).
        t.data().write(8192 + 4100, &[value[4100] ^ 1]).unwrap();
        assert!(!t.verify(8192, value.len() as u64));
        assert!(t.verify(8192, 4096), "other blocks still verify");
        assert_eq!(t.counters().get(Counter::ChecksumFailures), 3);
        // The checked read checks as it goes and stops at the bad block.
        let got = Mutex::new(Vec::new());
        assert!(t.read_checked(8192, 4096, |_, c| {
            got.lock().extend_from_slice(c);
            true
        }));
        assert_eq!(*got.lock(), value[..4096]);
        assert!(!t.read_checked(8192, value.len() as u64, |_, _| true));
        assert_eq!(t.counters().get(Counter::ChecksumFailures), 4);
        t.data().write(8192 + 4100, &[value[4100]]).unwrap();
        let whole = Mutex::new(Vec::new());
        assert!(t.read_checked(8192, value.len() as u64, |pos, c| {
            let mut w = whole.lock();
            assert_eq!(pos as usize, w.len());
            w.extend_from_slice(c);
            true
        }));
        assert_eq!(*whole.lock(), value);
        // A block moved elsewhere (same bytes, other offset) does not pass.
        t.data().write(65536, &value[..4096]).unwrap();
        t.sums()
            .write(16 * RECORD_LEN, &{
                let mut r = [0u8; 8];
                t.sums().read(2 * RECORD_LEN, &mut r).unwrap();
                r
            })
            .unwrap();
        assert!(!t.verify(65536, 4096));
        // A sink refusing ends the read.
        assert!(!t.read_checked(8192, value.len() as u64, |_, _| false));
        assert_eq!(t.counters().get(Counter::Reads), 5);
        assert_eq!(
            t.counters().get(Counter::BytesRead),
            value.len() as u64 + 5000 + 4096 + 4096 + value.len() as u64
        );
    }

    #[test]
    fn large_objects_are_shared_with_the_helper_and_a_failure_anywhere_fails() {
        let t = sums(16 << 20);
        let len = (6 << 20) + 123;
        let value: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
        t.data().write(4096, &value).unwrap();
        t.seal(4096, len);
        let back = Mutex::new(vec![0u8; len as usize]);
        assert!(t.read_checked(4096, len, |pos, c| {
            back.lock()[pos as usize..pos as usize + c.len()].copy_from_slice(c);
            true
        }));
        assert!(*back.lock() == value);
        // A bad byte in either half fails the read.
        for at in [100, len - 10] {
            t.data()
                .write(4096 + at, &[value[at as usize] ^ 1])
                .unwrap();
            assert!(!t.read_checked(4096, len, |_, _| true), "byte {at}");
            t.data().write(4096 + at, &[value[at as usize]]).unwrap();
        }
        assert!(t.read_checked(4096, len, |_, _| true));
        // Misaligned starts and objects past the end are refused.
        assert!(!t.read_checked(4097, 10, |_, _| true));
        assert!(!t.read_checked(16 << 20, 4096, |_, _| true));
    }

    #[test]
    fn counters_are_shared_through_their_region() {
        let mine = Counters::create().unwrap();
        let fd = rustix::io::dup(mine.region().fd()).unwrap();
        let theirs = Counters::from_region(
            Region::from_fd(fd, 0, BLOCK, &RegionOptions::default()).unwrap(),
        )
        .unwrap();
        theirs.count_read(4096, Some(Instant::now()));
        theirs.count_read(4096, None);
        assert_eq!(mine.get(Counter::Reads), 1);
        assert_eq!(mine.get(Counter::BytesRead), 4096);
        assert_eq!(mine.get(Counter::ChecksumFailures), 1);
    }
}
