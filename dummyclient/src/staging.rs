//! Staging: registered memory for values in memory the real client cannot map
//! (plain bytes, process memory) that must cross hosts.
//!
//! Without a budget every call gets a temporary buffer, unregistered when done.
//! With one (upstream's `local_buffer_size`) staging comes from one pool of that
//! size, registered once per connection: memory stays within the budget and no
//! call pays for a fresh mapping. A call that needs more than the whole pool
//! still gets a temporary buffer (only zero-copy calls get that far: copying calls
//! larger than the budget are refused before).

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use mooncake_proto::{ErrorCode, MResult};
use mooncake_shm::{BufferAllocator, Region, RegionOptions, ShmError};

use crate::Conn;

/// Staging buffers are carved at this alignment.
const STAGING_ALIGN: u64 = 4096;

/// How long a call waits for pool space that other calls hold.
const STAGING_WAIT: Duration = Duration::from_secs(10);

/// The `local_buffer_size` pool: one region, carved per call.
pub(crate) struct StagingPool {
    region: Region,
    allocator: BufferAllocator,
    /// Signalled when space is given back.
    freed: Condvar,
    waiters: Mutex<()>,
}

impl StagingPool {
    /// A pool of `budget` bytes. Pages are touched only as they are used, and
    /// best-fit reuse keeps that to the largest staging in flight.
    pub(crate) fn new(budget: u64) -> Result<StagingPool, ShmError> {
        let region = Region::anonymous("mooncake-local-buffer", budget, &RegionOptions::default())?;
        Ok(StagingPool {
            region,
            allocator: BufferAllocator::new(budget, STAGING_ALIGN),
            freed: Condvar::new(),
            waiters: Mutex::new(()),
        })
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.region.len() as u64
    }

    /// Whether `size` bytes fit in the pool at all.
    fn fits(&self, size: u64) -> bool {
        size.next_multiple_of(STAGING_ALIGN) <= self.allocator.capacity()
    }

    /// Space for `size` bytes, waiting for other calls to give some back.
    fn take(&self, size: u64) -> MResult<u64> {
        let deadline = Instant::now() + STAGING_WAIT;
        let mut guard = self.waiters.lock();
        loop {
            match self.allocator.allocate(size) {
                Ok(offset) => return Ok(offset),
                Err(ShmError::Full) => {
                    if self.freed.wait_until(&mut guard, deadline).timed_out() {
                        tracing::warn!(
                            "no {size} bytes free in the local buffer ({} bytes) within {STAGING_WAIT:?}",
                            self.capacity()
                        );
                        return Err(ErrorCode::NoAvailableHandle);
                    }
                }
                Err(e) => return Err(e.code()),
            }
        }
    }

    /// Space for `size` bytes when it is free now; never waits.
    fn try_take(&self, size: u64) -> Option<u64> {
        self.allocator.allocate(size).ok()
    }

    fn give_back(&self, offset: u64) {
        let _ = self.allocator.free(offset);
        let _guard = self.waiters.lock();
        self.freed.notify_all();
    }
}

enum Hold<'a> {
    /// A region of its own, unregistered on drop.
    Temporary {
        region: Region,
        conn: &'a Conn,
        runtime: &'a tokio::runtime::Runtime,
    },
    /// Space in the pool, given back on drop.
    Pooled(&'a StagingPool, u64),
}

/// Registered memory for one call: bytes at `start` in [`Staging::region`],
/// which the real client reaches at `base`.
pub(crate) struct Staging<'a> {
    /// Offset of the staging bytes in `region`.
    pub(crate) start: u64,
    /// The address the real client knows the staging bytes by.
    pub(crate) base: u64,
    hold: Hold<'a>,
}

impl<'a> Staging<'a> {
    /// Space in the pool for `size` bytes, when there is a pool registered on
    /// this connection and `size` fits in it; never a temporary buffer.
    pub(crate) fn pooled(
        conn: &'a Conn,
        pool: Option<&'a StagingPool>,
        size: u64,
    ) -> Option<MResult<Staging<'a>>> {
        let (pool, pool_base) = (pool?, conn.staging_base?);
        if size == 0 || !pool.fits(size) {
            return None;
        }
        Some(pool.take(size).map(|offset| Staging {
            start: offset,
            base: pool_base + offset,
            hold: Hold::Pooled(pool, offset),
        }))
    }

    /// Space in `pool` (registered at `pool_base`) for `size` bytes when that
    /// much is free now: room offered for a value of unknown size, never
    /// waited for.
    pub(crate) fn offered(pool: &'a StagingPool, pool_base: u64, size: u64) -> Option<Staging<'a>> {
        if size == 0 || !pool.fits(size) {
            return None;
        }
        let offset = pool.try_take(size)?;
        Some(Staging {
            start: offset,
            base: pool_base + offset,
            hold: Hold::Pooled(pool, offset),
        })
    }

    pub(crate) fn new(
        conn: &'a Conn,
        runtime: &'a tokio::runtime::Runtime,
        pool: Option<&'a StagingPool>,
        size: u64,
    ) -> MResult<Staging<'a>> {
        if let (Some(pool), Some(pool_base)) = (pool, conn.staging_base)
            && pool.fits(size.max(1))
        {
            let offset = pool.take(size.max(1))?;
            return Ok(Staging {
                start: offset,
                base: pool_base + offset,
                hold: Hold::Pooled(pool, offset),
            });
        }
        let region = Region::anonymous("mooncake-staging", size.max(1), &RegionOptions::default())
            .map_err(|e| e.code())?;
        let base = runtime
            .block_on(conn.ipc.register(&region, 0, size.max(1)))
            .map_err(|e| e.code())?;
        Ok(Staging {
            start: 0,
            base,
            hold: Hold::Temporary {
                region,
                conn,
                runtime,
            },
        })
    }

    /// The region the staging bytes are in (at `start`).
    pub(crate) fn region(&self) -> &Region {
        match &self.hold {
            Hold::Temporary { region, .. } => region,
            Hold::Pooled(pool, _) => &pool.region,
        }
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        match &self.hold {
            Hold::Temporary { conn, runtime, .. } => {
                let _ = runtime.block_on(conn.ipc.unregister(self.base));
            }
            Hold::Pooled(pool, offset) => pool.give_back(*offset),
        }
    }
}
