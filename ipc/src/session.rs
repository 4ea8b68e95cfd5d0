//! [`Session`]: one connected client and the regions it registered, with
//! translation from the client's addresses to this process's mappings.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use mooncake_proto::ErrorCode;
use mooncake_shm::{Gate, GateGuard, Region, ShmError};

use crate::policy::PeerInfo;

/// How many registrations are examined per lookup (overlapping registrations of the
/// same memory are allowed, so the nearest start is not always the containing one).
const LOOKUP_CANDIDATES: usize = 8;

struct Registered {
    client_base: u64,
    len: u64,
    region: Arc<Region>,
    /// Identity of the backing memory: (device, inode, client_base − fd_offset).
    identity: (u64, u64, i128),
}

impl Registered {
    fn end(&self) -> u64 {
        self.client_base + self.len
    }
    fn contains(&self, addr: u64, end: u64) -> bool {
        self.client_base <= addr && end <= self.end()
    }
}

/// A bounds-checked window `[offset, offset + len)` into a registered region, valid
/// while held; holding it keeps the session's close waiting.
pub struct Translation {
    region: Arc<Region>,
    offset: u64,
    len: u64,
    _guard: GateGuard,
}

impl Translation {
    /// The mapped region.
    pub fn region(&self) -> &Region {
        &self.region
    }
    /// The mapped region, shared (for a transfer running on another thread while
    /// this translation is held).
    pub fn region_arc(&self) -> &Arc<Region> {
        &self.region
    }
    /// Offset of the window in the region.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Length of the window.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Copies `src` into the window at `at`.
    pub fn write(&self, at: u64, src: &[u8]) -> Result<(), ShmError> {
        self.inside(at, src.len() as u64)?;
        self.region.write(self.offset + at, src)
    }
    /// Copies bytes of the window at `at` into `dst`.
    pub fn read(&self, at: u64, dst: &mut [u8]) -> Result<(), ShmError> {
        self.inside(at, dst.len() as u64)?;
        self.region.read(self.offset + at, dst)
    }
    fn inside(&self, at: u64, len: u64) -> Result<(), ShmError> {
        match at.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ShmError::OutOfBounds {
                offset: at,
                len,
                limit: self.len,
            }),
        }
    }
}

/// One client connection's state.
pub struct Session {
    id: u64,
    secret: u64,
    peer: PeerInfo,
    regions: RwLock<BTreeMap<u64, Arc<Registered>>>,
    gate: Gate,
    /// The client runs in this very process and asked to be served from its
    /// own memory ([`Session::allow_process_memory`]).
    process_memory: AtomicBool,
}

impl Session {
    pub(crate) fn new(id: u64, secret: u64, peer: PeerInfo) -> Session {
        Session {
            id,
            secret,
            peer,
            regions: RwLock::new(BTreeMap::new()),
            gate: Gate::default(),
            process_memory: AtomicBool::new(false),
        }
    }

    /// Session id.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn secret(&self) -> u64 {
        self.secret
    }

    /// Lets the client name memory of this process that it did not register:
    /// granted only when the client is this very process (its peer credentials
    /// carry this process's pid), as a real client running inside an inference
    /// process is, whose caller vouches for the addresses it sends. Returns
    /// whether it was granted.
    pub fn allow_process_memory(&self) -> bool {
        let same = self.peer.pid == Some(std::process::id() as i32);
        if same {
            self.process_memory.store(true, Ordering::Release);
        }
        same
    }

    /// Whether [`allow_process_memory`](Self::allow_process_memory) was granted.
    pub fn process_memory_allowed(&self) -> bool {
        self.process_memory.load(Ordering::Acquire)
    }

    /// Holds the session open (its close waits) while the guard lives; fails
    /// once it is closing.
    pub fn hold(&self) -> Result<GateGuard, ErrorCode> {
        self.gate.enter().map_err(|_| ErrorCode::RpcFail)
    }

    /// Credentials of the client.
    pub fn peer(&self) -> PeerInfo {
        self.peer
    }

    /// Number of registrations.
    pub fn region_count(&self) -> usize {
        self.regions.read().len()
    }

    /// Registers `region`, seen by the client at `client_base`. A registration over
    /// addresses already registered for *different* memory replaces the stale one
    /// (the client freed and reused those addresses); registrations of the same
    /// memory (sub-ranges, twice) coexist.
    pub fn register(&self, client_base: u64, region: Region) -> Result<(), ErrorCode> {
        if self.gate.is_closed() {
            return Err(ErrorCode::RpcFail);
        }
        let len = region.len() as u64;
        let end = client_base
            .checked_add(len)
            .ok_or(ErrorCode::InvalidParams)?;
        let stat = rustix::fs::fstat(region.fd().as_fd()).map_err(|_| ErrorCode::InvalidParams)?;
        let identity = (
            stat.st_dev,
            stat.st_ino,
            i128::from(client_base) - i128::from(region.fd_offset()),
        );
        let mut regions = self.regions.write();
        let overlapping: Vec<u64> = regions
            .range(..end)
            .filter(|(_, r)| r.end() > client_base)
            .map(|(&b, _)| b)
            .collect();
        for base in overlapping {
            let existing = &regions[&base];
            if existing.identity != identity {
                regions.remove(&base);
            } else if existing.contains(client_base, end) {
                return Ok(());
            } else if client_base <= existing.client_base && existing.end() <= end {
                regions.remove(&base);
            }
        }
        regions.insert(
            client_base,
            Arc::new(Registered {
                client_base,
                len,
                region: Arc::new(region),
                identity,
            }),
        );
        Ok(())
    }

    /// Removes the registration that starts at `client_base`.
    pub fn unregister(&self, client_base: u64) -> Result<(), ErrorCode> {
        self.regions
            .write()
            .remove(&client_base)
            .map(|_| ())
            .ok_or(ErrorCode::InvalidParams)
    }

    /// Translates the client range `[addr, addr + len)`; `INVALID_PARAMS` unless one
    /// registration contains all of it.
    pub fn translate(&self, addr: u64, len: u64) -> Result<Translation, ErrorCode> {
        let end = addr.checked_add(len).ok_or(ErrorCode::InvalidParams)?;
        let guard = self.gate.enter().map_err(|_| ErrorCode::RpcFail)?;
        let regions = self.regions.read();
        let found = regions
            .range(..=addr)
            .rev()
            .take(LOOKUP_CANDIDATES)
            .map(|(_, r)| r)
            .find(|r| r.contains(addr, end))
            .ok_or(ErrorCode::InvalidParams)?;
        Ok(Translation {
            region: found.region.clone(),
            offset: addr - found.client_base,
            len,
            _guard: guard,
        })
    }

    /// The region registered at exactly `client_base` (e.g. a call ring).
    pub fn region_at(&self, client_base: u64) -> Option<Arc<Region>> {
        self.regions
            .read()
            .get(&client_base)
            .map(|r| r.region.clone())
    }

    /// Ends the session: refuses new translations, waits (up to `timeout`) for
    /// in-flight ones, then drops every mapping. Returns whether it drained in time.
    pub async fn close(self: &Arc<Self>, timeout: Duration) -> bool {
        self.gate.close();
        let gate = self.gate.clone();
        let drained = tokio::task::spawn_blocking(move || gate.wait_idle(timeout))
            .await
            .unwrap_or(false);
        if drained {
            self.regions.write().clear();
        } else {
            tracing::warn!(
                session = self.id,
                "in-flight operations did not finish; mappings kept alive by them"
            );
            self.regions.write().clear();
        }
        drained
    }

    /// Whether the session was closed.
    pub fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.gate.active()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mooncake_shm::RegionOptions;

    fn session() -> Session {
        Session::new(
            1,
            2,
            PeerInfo {
                uid: 0,
                gid: 0,
                pid: None,
            },
        )
    }

    fn view(r: &Region, offset: u64, len: u64) -> Region {
        Region::from_fd(
            r.fd().try_clone_to_owned().unwrap(),
            offset,
            len,
            &RegionOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn sub_ranges_translate_and_outside_ranges_are_invalid_params() {
        let s = session();
        let mem = Region::anonymous("t", 1 << 20, &RegionOptions::default()).unwrap();
        let base = 0x7000_0000_0000u64;
        s.register(base, view(&mem, 0, 1 << 20)).unwrap();
        let t = s.translate(base + 100, 50).unwrap();
        t.write(0, b"hello").unwrap();
        let mut got = [0u8; 5];
        mem.read(100, &mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert!(
            t.write(46, b"hello").is_err(),
            "writes stay inside the window"
        );
        assert_eq!(
            s.translate(base - 1, 10).err(),
            Some(ErrorCode::InvalidParams)
        );
        assert_eq!(
            s.translate(base + (1 << 20) - 10, 11).err(),
            Some(ErrorCode::InvalidParams)
        );
        assert_eq!(
            s.translate(u64::MAX - 5, 10).err(),
            Some(ErrorCode::InvalidParams)
        );
        assert_eq!(s.translate(0x10, 1).err(), Some(ErrorCode::InvalidParams));
        assert!(s.translate(base + (1 << 20) - 10, 10).is_ok());
    }

    #[test]
    fn halves_of_one_buffer_and_duplicate_registrations_coexist() {
        let s = session();
        let mem = Region::anonymous("t", 2 << 20, &RegionOptions::default()).unwrap();
        let base = 0x7100_0000_0000u64;
        // SGLang registers the K and V halves separately, then maybe the whole buffer.
        s.register(base, view(&mem, 0, 1 << 20)).unwrap();
        s.register(base + (1 << 20), view(&mem, 1 << 20, 1 << 20))
            .unwrap();
        s.register(base + (1 << 20), view(&mem, 1 << 20, 1 << 20))
            .unwrap();
        s.register(base, view(&mem, 0, 2 << 20)).unwrap();
        assert!(
            s.translate(base + (1 << 20) - 8, 16).is_ok(),
            "a range across both halves"
        );
        let t = s.translate(base + (3 << 19), 4).unwrap();
        t.write(0, b"vval").unwrap();
        let mut got = [0u8; 4];
        mem.read(3 << 19, &mut got).unwrap();
        assert_eq!(&got, b"vval");
    }

    #[test]
    fn reused_addresses_with_new_memory_replace_stale_registrations() {
        let s = session();
        let old = Region::anonymous("old", 4096, &RegionOptions::default()).unwrap();
        let new = Region::anonymous("new", 4096, &RegionOptions::default()).unwrap();
        let base = 0x7200_0000_0000u64;
        s.register(base, view(&old, 0, 4096)).unwrap();
        s.register(base, view(&new, 0, 4096)).unwrap();
        s.translate(base, 3).unwrap().write(0, b"new").unwrap();
        let mut got = [0u8; 3];
        new.read(0, &mut got).unwrap();
        assert_eq!(&got, b"new");
        old.read(0, &mut got).unwrap();
        assert_eq!(got, [0, 0, 0], "the stale mapping is never written");
        assert_eq!(s.region_count(), 1);
        s.unregister(base).unwrap();
        assert_eq!(s.unregister(base), Err(ErrorCode::InvalidParams));
        assert_eq!(s.translate(base, 1).err(), Some(ErrorCode::InvalidParams));
    }

    #[tokio::test]
    async fn close_waits_for_in_flight_translations() {
        let s = Arc::new(session());
        let mem = Region::anonymous("t", 4096, &RegionOptions::default()).unwrap();
        s.register(0x1000, view(&mem, 0, 4096)).unwrap();
        let t = s.translate(0x1000, 16).unwrap();
        let closer = {
            let s = s.clone();
            tokio::spawn(async move { s.close(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !closer.is_finished(),
            "close waits while an operation is in flight"
        );
        t.write(0, b"still mapped").unwrap();
        drop(t);
        assert!(closer.await.unwrap());
        assert_eq!(s.translate(0x1000, 1).err(), Some(ErrorCode::RpcFail));
        assert_eq!(s.region_count(), 0);
    }
}
