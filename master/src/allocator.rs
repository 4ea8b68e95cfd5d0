//! Per-segment range allocator: a two-level segregated-fit (TLSF) allocator that
//! tracks **free** blocks only.
//!
//! Allocated ranges are remembered by their owners (object metadata holds offset and
//! size), so the allocator costs nothing per live object, which matters at tens of
//! millions of keys. Every operation is O(1): bin lookup through two bitmaps, neighbour
//! coalescing through hash maps keyed by block start and end.
//!
//! Sizes are rounded up to [`GRANULE`] bytes, so every offset is 64-byte aligned.
//! Allocation first looks at the head of the bin the request falls in (a block
//! freed by an object of the same size lands there), which keeps utilisation at 1.0
//! for uniform KV sizes; otherwise it takes any block from the next bin up, which is
//! guaranteed to be large enough (good fit).

use std::collections::HashMap;

/// Allocation granularity in bytes.
pub const GRANULE: u64 = 64;
const SL_LOG: u32 = 5;
const SL_COUNT: usize = 1 << SL_LOG;
const FL_COUNT: usize = 64;
const NIL: u32 = u32::MAX;
/// How many blocks of the request's own bin are inspected before rounding up.
const SAME_BIN_PROBES: usize = 4;

#[derive(Debug, Clone, Copy)]
struct FreeBlock {
    start: u64,
    len: u64,
    prev: u32,
    next: u32,
}

/// Rounds a byte size up to the allocation granularity, in bytes.
pub fn allocated_len(size: u64) -> u64 {
    size.div_ceil(GRANULE).saturating_mul(GRANULE)
}

/// A TLSF allocator over `[0, capacity)`; all offsets and lengths in bytes.
#[derive(Debug)]
pub struct RangeAllocator {
    capacity_units: u64,
    used_units: u64,
    blocks: Vec<FreeBlock>,
    spare: Vec<u32>,
    by_start: HashMap<u64, u32>,
    by_end: HashMap<u64, u32>,
    heads: Vec<u32>,
    fl_bitmap: u64,
    sl_bitmaps: [u32; FL_COUNT],
}

fn mapping(units: u64) -> (usize, usize) {
    if units < SL_COUNT as u64 {
        (0, units as usize)
    } else {
        let f = 63 - units.leading_zeros();
        let fl = (f - SL_LOG + 1) as usize;
        let sl = ((units >> (f - SL_LOG)) as usize) ^ SL_COUNT;
        (fl, sl)
    }
}

fn round_up_to_bin(units: u64) -> u64 {
    if units < SL_COUNT as u64 {
        units
    } else {
        let f = 63 - units.leading_zeros();
        units.saturating_add((1u64 << (f - SL_LOG)) - 1)
    }
}

impl RangeAllocator {
    /// An allocator whose whole range is free.
    pub fn new(capacity: u64) -> Self {
        Self::with_allocated(capacity, &[])
    }

    /// An allocator where the given `(offset, len)` ranges are in use. Ranges must be
    /// inside the capacity, granule-aligned and non-overlapping (callers validate).
    pub fn with_allocated(capacity: u64, allocated: &[(u64, u64)]) -> Self {
        let capacity_units = capacity / GRANULE;
        let mut alloc = RangeAllocator {
            capacity_units,
            used_units: capacity_units,
            blocks: Vec::new(),
            spare: Vec::new(),
            by_start: HashMap::new(),
            by_end: HashMap::new(),
            heads: vec![NIL; FL_COUNT * SL_COUNT],
            fl_bitmap: 0,
            sl_bitmaps: [0; FL_COUNT],
        };
        let mut ranges: Vec<(u64, u64)> = allocated
            .iter()
            .map(|&(o, l)| (o / GRANULE, allocated_len(l) / GRANULE))
            .collect();
        ranges.sort_unstable();
        let mut cursor = 0u64;
        for (start, len) in ranges {
            if start > cursor {
                alloc.release_units(cursor, start - cursor);
                alloc.used_units -= start - cursor;
            }
            cursor = cursor.max(start + len);
        }
        if capacity_units > cursor {
            alloc.release_units(cursor, capacity_units - cursor);
            alloc.used_units -= capacity_units - cursor;
        }
        alloc
    }

    /// Total bytes managed.
    pub fn capacity(&self) -> u64 {
        self.capacity_units * GRANULE
    }

    /// Bytes currently allocated.
    pub fn used(&self) -> u64 {
        self.used_units * GRANULE
    }

    /// Number of free blocks (a fragmentation indicator).
    pub fn free_block_count(&self) -> usize {
        self.by_start.len()
    }

    /// Size of the largest free block, in bytes.
    pub fn largest_free(&self) -> u64 {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = 63 - self.fl_bitmap.leading_zeros() as usize;
        let sl = 31 - self.sl_bitmaps[fl].leading_zeros() as usize;
        let mut best = 0;
        let mut cursor = self.heads[fl * SL_COUNT + sl];
        while cursor != NIL {
            best = best.max(self.blocks[cursor as usize].len);
            cursor = self.blocks[cursor as usize].next;
        }
        best * GRANULE
    }

    /// Allocates `size` bytes (rounded up to the granule); returns the offset.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if size == 0 {
            return None;
        }
        let units = size.div_ceil(GRANULE);
        if units > self.capacity_units {
            return None;
        }
        let block = self
            .find_same_bin(units)
            .or_else(|| self.find_larger(units))?;
        self.unlink(block);
        let FreeBlock { start, len, .. } = self.blocks[block as usize];
        self.forget(block);
        if len > units {
            self.insert_free(start + units, len - units);
        }
        self.used_units += units;
        Some(start * GRANULE)
    }

    /// Returns a range obtained from [`allocate`](Self::allocate) (same size).
    pub fn free(&mut self, offset: u64, size: u64) {
        let units = size.div_ceil(GRANULE);
        let start = offset / GRANULE;
        if units == 0 || start + units > self.capacity_units {
            debug_assert!(false, "free of a range outside the allocator");
            return;
        }
        self.used_units = self.used_units.saturating_sub(units);
        self.release_units(start, units);
    }

    fn release_units(&mut self, mut start: u64, mut len: u64) {
        if let Some(&left) = self.by_end.get(&start) {
            self.unlink(left);
            let b = self.blocks[left as usize];
            self.forget(left);
            start = b.start;
            len += b.len;
        }
        if let Some(&right) = self.by_start.get(&(start + len)) {
            self.unlink(right);
            let b = self.blocks[right as usize];
            self.forget(right);
            len += b.len;
        }
        self.insert_free(start, len);
    }

    fn find_same_bin(&self, units: u64) -> Option<u32> {
        let (fl, sl) = mapping(units);
        let mut cursor = self.heads[fl * SL_COUNT + sl];
        for _ in 0..SAME_BIN_PROBES {
            if cursor == NIL {
                return None;
            }
            if self.blocks[cursor as usize].len >= units {
                return Some(cursor);
            }
            cursor = self.blocks[cursor as usize].next;
        }
        None
    }

    fn find_larger(&self, units: u64) -> Option<u32> {
        let (mut fl, sl) = mapping(round_up_to_bin(units));
        if fl >= FL_COUNT {
            return None;
        }
        let mut sl_map = self.sl_bitmaps[fl] & (!0u32).checked_shl(sl as u32).unwrap_or(0);
        if sl_map == 0 {
            let fl_map = self.fl_bitmap & (!0u64).checked_shl(fl as u32 + 1).unwrap_or(0);
            if fl_map == 0 {
                return None;
            }
            fl = fl_map.trailing_zeros() as usize;
            sl_map = self.sl_bitmaps[fl];
        }
        let sl = sl_map.trailing_zeros() as usize;
        let head = self.heads[fl * SL_COUNT + sl];
        (head != NIL).then_some(head)
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        let (fl, sl) = mapping(len);
        let bin = fl * SL_COUNT + sl;
        let head = self.heads[bin];
        let block = FreeBlock {
            start,
            len,
            prev: NIL,
            next: head,
        };
        let index = match self.spare.pop() {
            Some(i) => {
                self.blocks[i as usize] = block;
                i
            }
            None => {
                self.blocks.push(block);
                (self.blocks.len() - 1) as u32
            }
        };
        if head != NIL {
            self.blocks[head as usize].prev = index;
        }
        self.heads[bin] = index;
        self.fl_bitmap |= 1 << fl;
        self.sl_bitmaps[fl] |= 1 << sl;
        self.by_start.insert(start, index);
        self.by_end.insert(start + len, index);
    }

    fn unlink(&mut self, index: u32) {
        let FreeBlock {
            len, prev, next, ..
        } = self.blocks[index as usize];
        let (fl, sl) = mapping(len);
        let bin = fl * SL_COUNT + sl;
        if prev != NIL {
            self.blocks[prev as usize].next = next;
        } else {
            self.heads[bin] = next;
        }
        if next != NIL {
            self.blocks[next as usize].prev = prev;
        }
        if self.heads[bin] == NIL {
            self.sl_bitmaps[fl] &= !(1 << sl);
            if self.sl_bitmaps[fl] == 0 {
                self.fl_bitmap &= !(1 << fl);
            }
        }
    }

    fn forget(&mut self, index: u32) {
        let b = self.blocks[index as usize];
        self.by_start.remove(&b.start);
        self.by_end.remove(&(b.start + b.len));
        self.spare.push(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn uniform_sizes_fill_the_segment_completely() {
        for size in [4096u64, 64 << 10, 1 << 20, 3_276_800, (1 << 20) + 17] {
            let capacity = 256u64 << 20;
            let mut a = RangeAllocator::new(capacity);
            let mut offsets = Vec::new();
            while let Some(o) = a.allocate(size) {
                offsets.push(o);
            }
            let utilisation = offsets.len() as f64 * size as f64 / capacity as f64;
            let best = (capacity / allocated_len(size)) as f64 * size as f64 / capacity as f64;
            assert!(
                utilisation >= best - 1e-9,
                "size {size}: utilisation {utilisation} < best {best}"
            );
            // Free every other block and refill: freed holes are reused exactly.
            let mut freed = 0;
            for o in offsets.iter().step_by(2) {
                a.free(*o, size);
                freed += 1;
            }
            let mut refilled = 0;
            while a.allocate(size).is_some() {
                refilled += 1;
            }
            assert_eq!(refilled, freed, "size {size}");
        }
    }

    #[test]
    fn mixed_sizes_under_churn_keep_high_utilisation() {
        let mut rng = StdRng::seed_from_u64(7);
        let capacity = 512u64 << 20;
        let mut a = RangeAllocator::new(capacity);
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut min_util_at_failure = f64::MAX;
        for _ in 0..200_000 {
            let size = rng.random_range(1u64 << 10..=4 << 20);
            match a.allocate(size) {
                Some(o) => live.push((o, size)),
                None => {
                    let live_bytes: u64 = live.iter().map(|(_, s)| s).sum();
                    min_util_at_failure =
                        min_util_at_failure.min(live_bytes as f64 / capacity as f64);
                    for _ in 0..live.len() / 10 {
                        let i = rng.random_range(0..live.len());
                        let (o, s) = live.swap_remove(i);
                        a.free(o, s);
                    }
                }
            }
        }
        assert!(
            min_util_at_failure > 0.80,
            "utilisation at failure {min_util_at_failure}"
        );
        for (o, s) in live.drain(..) {
            a.free(o, s);
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.free_block_count(), 1, "everything coalesces back");
        assert_eq!(a.largest_free(), capacity);
    }

    #[test]
    fn allocations_never_overlap_and_stay_in_bounds() {
        let mut rng = StdRng::seed_from_u64(1);
        let capacity = 8u64 << 20;
        let mut a = RangeAllocator::new(capacity);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..20_000 {
            if rng.random_bool(0.6) {
                let size = rng.random_range(1..=256 << 10);
                if let Some(o) = a.allocate(size) {
                    assert!(o + size <= capacity);
                    assert_eq!(o % GRANULE, 0);
                    live.push((o, allocated_len(size)));
                }
            } else if !live.is_empty() {
                let (o, s) = live.swap_remove(rng.random_range(0..live.len()));
                a.free(o, s);
            }
        }
        live.sort_unstable();
        for pair in live.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap {pair:?}");
        }
    }

    #[test]
    fn rebuild_from_allocated_ranges() {
        let a = RangeAllocator::with_allocated(1 << 20, &[(0, 4096), (8192, 100), (65536, 65536)]);
        assert_eq!(a.used(), 4096 + 128 + 65536);
        let mut a = a;
        // The hole at 4096..8192 is usable, the used ranges are not handed out again.
        let mut got = Vec::new();
        while let Some(o) = a.allocate(4096) {
            got.push(o);
        }
        assert!(got.contains(&4096));
        assert!(!got.contains(&0) && !got.contains(&65536));
    }

    #[test]
    fn zero_and_oversized_requests_fail() {
        let mut a = RangeAllocator::new(1 << 20);
        assert_eq!(a.allocate(0), None);
        assert_eq!(a.allocate((1 << 20) + 1), None);
        assert_eq!(a.allocate(1 << 20), Some(0));
        assert_eq!(a.allocate(1), None);
    }
}
