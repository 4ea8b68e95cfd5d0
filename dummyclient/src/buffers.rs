//! Buffer registration: memory the real client maps, and resolving caller addresses to it.

use super::*;

impl DummyClient {
    /// Registers `[addr, addr + len)`, which must lie inside memory from
    /// [`HostMemAllocator`]: the real client maps it and can move remote bytes
    /// straight into or out of it. Sub-ranges and repeated registrations work.
    pub fn register_buffer(&self, addr: u64, len: u64) -> MResult<()> {
        if len == 0 || addr == 0 || addr.checked_add(len).is_none() {
            return Err(ErrorCode::InvalidParams);
        }
        let Some((region, offset)) = hostmem::lookup(addr, len) else {
            if !self.process_memory {
                tracing::warn!(
                    "register_buffer({addr:#x}, {len}): not inside memory from HostMemAllocator"
                );
                return Err(ErrorCode::InvalidParams);
            }
            // The real client lives in this process: it needs no mapping. The range
            // must be ordinary readable and writable memory: a device (GPU) pointer
            // or a stray address would fault on the first copy.
            if !process_memory_is_accessible(addr, len) {
                tracing::warn!(
                    "register_buffer({addr:#x}, {len}): not readable and writable host memory of this process"
                );
                return Err(ErrorCode::InvalidParams);
            }
            let mut regs = self.shared.registrations.lock();
            if regs.iter().any(|r| r.addr == addr && r.len == len) {
                // Upstream's in-process client refuses a second registration of
                // the same range (its transfer engine already has it).
                return Err(ErrorCode::InvalidParams);
            }
            regs.push(Registration {
                addr,
                len,
                region: None,
                offset: 0,
            });
            return Ok(());
        };
        let conn = self.conn()?;
        if self
            .shared
            .registrations
            .lock()
            .iter()
            .any(|r| r.addr == addr && r.len == len)
        {
            return Ok(());
        }
        // No lock held across the call: the reconnecting pinger needs it.
        self.runtime
            .block_on(conn.ipc.register(&region, offset, len))
            .map_err(|e| e.code())?;
        self.shared.registrations.lock().push(Registration {
            addr,
            len,
            region: Some(region.clone()),
            offset,
        });
        // A reconnect in between re-registered the old list only.
        if let Ok(now) = self.conn()
            && !Arc::ptr_eq(&now, &conn)
        {
            let _ = self
                .runtime
                .block_on(now.ipc.register(&region, offset, len));
        }
        Ok(())
    }

    /// Forgets the registration(s) starting at `addr`.
    pub fn unregister_buffer(&self, addr: u64) -> MResult<()> {
        {
            let mut regs = self.shared.registrations.lock();
            let before = regs.len();
            let shared = regs.iter().any(|r| r.addr == addr && r.region.is_some());
            regs.retain(|r| r.addr != addr);
            if regs.len() == before {
                return Err(ErrorCode::InvalidParams);
            }
            if !shared {
                return Ok(());
            }
        }
        if let Ok(conn) = self.conn() {
            let _ = self.runtime.block_on(conn.ipc.unregister(addr));
        }
        Ok(())
    }

    /// Whether `[addr, addr + len)` lies inside one registered buffer.
    pub fn is_registered(&self, addr: u64, len: u64) -> bool {
        self.resolve(addr, len).is_ok()
    }

    /// The registered span holding `[addr, addr + len)`.
    pub(super) fn resolve(&self, addr: u64, len: u64) -> MResult<Span> {
        let regs = self.shared.registrations.lock();
        let end = addr.checked_add(len).ok_or(ErrorCode::InvalidParams)?;
        regs.iter()
            .find(|r| r.addr <= addr && end <= r.addr + r.len)
            .map(|r| Span {
                region: r.region.clone(),
                offset: r.offset + (addr - r.addr),
                len,
                addr,
            })
            .ok_or(ErrorCode::InvalidParams)
    }

    /// Resolves an item's buffers (all registered, none empty).
    pub(super) fn resolve_bufs(&self, bufs: &[BufRef]) -> MResult<Vec<Span>> {
        if bufs.is_empty() {
            return Err(ErrorCode::InvalidParams);
        }
        bufs.iter().map(|b| self.resolve(b.addr, b.len)).collect()
    }
}
