//! [`BufferAllocator`]: carves a region into buffers (for `alloc_from_mem_pool`,
//! `MooncakeHostMemAllocator` and the dummy's scratch space).
//!
//! Best fit over free ranges kept by offset and by size, coalescing on free; freeing
//! needs only the offset, like `free(ptr)`. Buffer counts are small (thousands), so
//! O(log n) per operation is plenty.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;

use crate::error::ShmError;

struct Inner {
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    allocated: HashMap<u64, u64>,
    used: u64,
}

impl Inner {
    fn insert_free(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
    }
    fn remove_free(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
    }
}

/// Thread-safe best-fit allocator over `[0, capacity)`.
pub struct BufferAllocator {
    capacity: u64,
    align: u64,
    inner: Mutex<Inner>,
}

impl BufferAllocator {
    /// An allocator whose buffers start at multiples of `align` (a power of two).
    pub fn new(capacity: u64, align: u64) -> Self {
        let align = align.max(1).next_power_of_two();
        let usable = capacity / align * align;
        let mut inner = Inner {
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            allocated: HashMap::new(),
            used: 0,
        };
        if usable > 0 {
            inner.insert_free(0, usable);
        }
        BufferAllocator {
            capacity: usable,
            align,
            inner: Mutex::new(inner),
        }
    }

    /// Bytes managed.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes handed out (rounded up to the alignment).
    pub fn used(&self) -> u64 {
        self.inner.lock().used
    }

    /// Allocates `size` bytes; returns the offset.
    pub fn allocate(&self, size: u64) -> Result<u64, ShmError> {
        if size == 0 {
            return Err(ShmError::InvalidSize(0));
        }
        let len = size
            .checked_next_multiple_of(self.align)
            .ok_or(ShmError::InvalidSize(size))?;
        let mut inner = self.inner.lock();
        let &(free_len, offset) = inner
            .by_size
            .range((len, 0)..)
            .next()
            .ok_or(ShmError::Full)?;
        inner.remove_free(offset, free_len);
        if free_len > len {
            inner.insert_free(offset + len, free_len - len);
        }
        inner.allocated.insert(offset, len);
        inner.used += len;
        Ok(offset)
    }

    /// Frees the buffer at `offset`; returns its (rounded) length.
    pub fn free(&self, offset: u64) -> Result<u64, ShmError> {
        let mut inner = self.inner.lock();
        let len = inner
            .allocated
            .remove(&offset)
            .ok_or(ShmError::UnknownAllocation(offset))?;
        inner.used -= len;
        let (mut start, mut total) = (offset, len);
        if let Some((&prev, &prev_len)) = inner.by_offset.range(..offset).next_back()
            && prev + prev_len == offset
        {
            inner.remove_free(prev, prev_len);
            start = prev;
            total += prev_len;
        }
        if let Some(&next_len) = inner.by_offset.get(&(offset + len)) {
            inner.remove_free(offset + len, next_len);
            total += next_len;
        }
        inner.insert_free(start, total);
        Ok(len)
    }

    /// Length of the buffer allocated at `offset`, if any.
    pub fn allocation(&self, offset: u64) -> Option<u64> {
        self.inner.lock().allocated.get(&offset).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn allocate_free_coalesce() {
        let a = BufferAllocator::new(1 << 20, 4096);
        let x = a.allocate(1).unwrap();
        let y = a.allocate(8192).unwrap();
        assert_eq!(x % 4096, 0);
        assert_eq!(y % 4096, 0);
        assert_ne!(x, y);
        assert_eq!(a.used(), 3 * 4096);
        assert!(matches!(a.free(12345), Err(ShmError::UnknownAllocation(_))));
        assert_eq!(a.free(x).unwrap(), 4096);
        assert!(a.free(x).is_err(), "double free is refused");
        a.free(y).unwrap();
        assert_eq!(a.allocate(1 << 20).unwrap(), 0, "everything coalesced");
        assert!(matches!(a.allocate(1), Err(ShmError::Full)));
        assert!(a.allocate(0).is_err());
    }

    #[test]
    fn random_churn_never_overlaps() {
        let a = BufferAllocator::new(64 << 20, 64);
        let mut rng = StdRng::seed_from_u64(3);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..20_000 {
            if rng.random_bool(0.55) {
                let size = rng.random_range(1..1 << 20);
                if let Ok(o) = a.allocate(size) {
                    live.push((o, a.allocation(o).unwrap()));
                }
            } else if !live.is_empty() {
                let (o, _) = live.swap_remove(rng.random_range(0..live.len()));
                a.free(o).unwrap();
            }
        }
        live.sort_unstable();
        for w in live.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
        assert!(live.last().is_none_or(|(o, l)| o + l <= a.capacity()));
    }
}
