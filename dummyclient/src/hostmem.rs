//! [`HostMemAllocator`]: shareable host memory (upstream `MooncakeHostMemAllocator`).
//!
//! Every allocation is its own memfd, mapped shared and prefaulted (huge pages with
//! `MC_STORE_USE_HUGEPAGE`), so that a dummy can pass its fd to the real client,
//! which maps the same pages and moves remote bytes straight into or out of them.
//! Allocations live in a process-wide table: `register_buffer(ptr, len)` finds the
//! memfd behind any sub-range, and allocation works before any client exists.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;

use mooncake_proto::{ErrorCode, MResult};
use mooncake_shm::{Region, RegionOptions};

static ALLOCATIONS: LazyLock<RwLock<BTreeMap<u64, Arc<Region>>>> =
    LazyLock::new(|| RwLock::new(BTreeMap::new()));

/// Allocates shareable, prefaulted host memory. Cheap to create; all allocators of
/// a process share one table.
#[derive(Debug, Default, Clone)]
pub struct HostMemAllocator {
    options: RegionOptions,
}

impl HostMemAllocator {
    /// An allocator of normal pages.
    pub fn new() -> Self {
        HostMemAllocator::default()
    }

    /// An allocator creating regions with `options` (huge pages); memory is
    /// always prefaulted.
    pub fn with_options(options: RegionOptions) -> Self {
        HostMemAllocator { options }
    }

    /// Allocates `size` bytes; returns their address. `INVALID_PARAMS` for 0,
    /// `INTERNAL_ERROR` when the system has no memory for it.
    pub fn alloc(&self, size: u64) -> MResult<u64> {
        if size == 0 {
            return Err(ErrorCode::InvalidParams);
        }
        let options = self.options.clone().with_prefault(true);
        let region = Region::anonymous("mooncake-hostmem", size, &options).map_err(|e| {
            tracing::warn!("host memory allocation of {size} bytes failed: {e}");
            ErrorCode::InternalError
        })?;
        let addr = region.as_ptr() as u64;
        ALLOCATIONS.write().insert(addr, Arc::new(region));
        Ok(addr)
    }

    /// Frees an allocation by its address. Memory still registered with a client
    /// stays mapped until it is unregistered (or the client closes).
    pub fn free(&self, addr: u64) -> MResult<()> {
        ALLOCATIONS
            .write()
            .remove(&addr)
            .map(|_| ())
            .ok_or(ErrorCode::InvalidParams)
    }
}

impl HostMemAllocator {
    /// Copies `bytes` to `addr` (which must lie in an allocation).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> MResult<()> {
        let (region, offset) = lookup(addr, bytes.len() as u64).ok_or(ErrorCode::InvalidParams)?;
        region.write(offset, bytes).map_err(|e| e.code())
    }

    /// Copies `out.len()` bytes at `addr` (which must lie in an allocation) into `out`.
    pub fn read(&self, addr: u64, out: &mut [u8]) -> MResult<()> {
        let (region, offset) = lookup(addr, out.len() as u64).ok_or(ErrorCode::InvalidParams)?;
        region.read(offset, out).map_err(|e| e.code())
    }
}

/// The allocation holding `[addr, addr + len)`, and the offset of `addr` in it.
pub fn lookup(addr: u64, len: u64) -> Option<(Arc<Region>, u64)> {
    let table = ALLOCATIONS.read();
    let (&base, region) = table.range(..=addr).next_back()?;
    let offset = addr - base;
    region.check(offset, len).ok()?;
    Some((region.clone(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_ranges_resolve_to_their_allocation() {
        let a = HostMemAllocator::new();
        let p = a.alloc(1 << 20).unwrap();
        let q = a.alloc(4096).unwrap();
        let (r, off) = lookup(p + 4096, 8192).unwrap();
        assert_eq!(off, 4096);
        assert_eq!(r.len(), 1 << 20);
        assert!(lookup(p + (1 << 20) - 10, 20).is_none(), "crosses the end");
        assert!(lookup(q, 4096).is_some());
        assert!(lookup(12345, 1).is_none());
        assert_eq!(a.alloc(0), Err(ErrorCode::InvalidParams));
        a.free(p).unwrap();
        assert_eq!(a.free(p), Err(ErrorCode::InvalidParams));
        assert!(lookup(p, 1).is_none());
        a.free(q).unwrap();
    }
}
