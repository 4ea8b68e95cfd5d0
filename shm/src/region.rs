//! [`Region`]: a mapped shared-memory region, and the [`Gate`] that lets its owner
//! wait for in-flight users before letting it go.
//!
//! Bytes in a region may be written by another process at any time, so this module
//! never hands out Rust references into the mapping: every access is a bounds-checked
//! copy (`read`, `write`, `copy_to`) through raw pointers.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::{Condvar, Mutex};
use rustix::fs::{FileType, MemfdFlags, Mode, OFlags};

use crate::error::ShmError;

const TMPFS_MAGIC: u64 = 0x0102_1994;
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
const PAGE: u64 = 4096;

/// How regions are created and mapped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionOptions {
    /// Touch every page at map time (`MAP_POPULATE`), so the first copy does not fault.
    pub prefault: bool,
    /// Back anonymous regions with huge pages of this size (2 MiB or 1 GiB).
    pub huge_page_size: Option<u64>,
}

impl RegionOptions {
    /// Options from upstream's settings `MC_STORE_USE_HUGEPAGE=1` and
    /// `MC_STORE_HUGEPAGE_SIZE` (default 2 MB), looked up by `var` (the command
    /// line and the Python setup pass the environment; this crate never reads it).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let on = var("MC_STORE_USE_HUGEPAGE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        let size = var("MC_STORE_HUGEPAGE_SIZE")
            .and_then(|v| mooncake_proto::units::parse_size(&v).ok())
            .unwrap_or(2 << 20);
        RegionOptions {
            prefault: false,
            huge_page_size: on.then_some(size),
        }
    }

    /// Sets prefaulting.
    pub fn with_prefault(mut self, on: bool) -> Self {
        self.prefault = on;
        self
    }

    /// Sets the huge page size (`None` = normal pages).
    pub fn with_huge_pages(mut self, size: Option<u64>) -> Self {
        self.huge_page_size = size;
        self
    }
}

struct GateState {
    active: usize,
    closed: bool,
}

struct GateInner {
    state: Mutex<GateState>,
    idle: Condvar,
}

/// Counts in-flight users of a resource; `close` refuses new users and
/// `wait_idle` waits for the current ones to leave.
#[derive(Clone)]
pub struct Gate(Arc<GateInner>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(GateInner {
            state: Mutex::new(GateState {
                active: 0,
                closed: false,
            }),
            idle: Condvar::new(),
        }))
    }
}

/// Proof of being inside a [`Gate`]; leaving happens on drop.
pub struct GateGuard(Arc<GateInner>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.active -= 1;
        if s.active == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Gate {
    /// Enters, unless the gate is closed.
    pub fn enter(&self) -> Result<GateGuard, ShmError> {
        let mut s = self.0.state.lock();
        if s.closed {
            return Err(ShmError::Closed);
        }
        s.active += 1;
        Ok(GateGuard(self.0.clone()))
    }

    /// Refuses new users from now on.
    pub fn close(&self) {
        self.0.state.lock().closed = true;
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.0.state.lock().closed
    }

    /// Users inside right now.
    pub fn active(&self) -> usize {
        self.0.state.lock().active
    }

    /// Blocks until no user is inside; `false` on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.0.state.lock();
        while s.active > 0 {
            if self.0.idle.wait_until(&mut s, deadline).timed_out() {
                return s.active == 0;
            }
        }
        true
    }
}

/// A mapped shared-memory region. `Send + Sync`; all access is bounds-checked.
pub struct Region {
    /// Registered with the SIGBUS guard when a peer could shrink the file; dropped
    /// (unregistered) before the mapping goes away.
    _guard: Option<crate::guard::Guarded>,
    /// Shared with the other regions of this process that map the same bytes of
    /// the same sealed file (see [`shared_mapping`]).
    map: Arc<MmapRaw>,
    /// Offset of the region's first byte inside `map` (fd offsets need page alignment).
    delta: usize,
    len: usize,
    fd: OwnedFd,
    fd_offset: u64,
    path: Option<PathBuf>,
    huge_pages: bool,
    gate: Gate,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len)
            .field("fd_offset", &self.fd_offset)
            .field("path", &self.path)
            .field("huge_pages", &self.huge_pages)
            .finish()
    }
}

/// Seals a memfd's size: a peer given the fd can neither shrink it (which would
/// make our accesses fault) nor grow it.
fn seal_size(fd: &OwnedFd) -> Result<(), ShmError> {
    use rustix::fs::SealFlags;
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| ShmError::io("seal memfd", e))
}

/// Refuses a size this host cannot hold (more than its memory), or, when the
/// pages are to be touched now, more than is available: prefaulting past that
/// would push the host into the out-of-memory killer.
fn check_host_can_hold(size: u64, prefault: bool) -> Result<(), ShmError> {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(());
    };
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:").unwrap_or(u64::MAX);
    let available = field("MemAvailable:").unwrap_or(u64::MAX);
    if size > total || (prefault && size > available) {
        return Err(ShmError::HostTooSmall {
            size,
            limit: if prefault { available } else { total },
        });
    }
    Ok(())
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// A mapped range of a file: device, inode, offset and length.
type MapKey = (u64, u64, u64, usize);

/// The mappings of sealed files this process holds. A process that maps the same
/// bytes twice (a real client running inside the process and the dummy that
/// talks to it) would otherwise hold two mappings of one segment, each counted in
/// full in its resident size. A live mapping keeps its file, and so its inode
/// number, from being reused, so a key that still upgrades names the same bytes.
fn mappings() -> &'static Mutex<HashMap<MapKey, Weak<MmapRaw>>> {
    static MAPPINGS: OnceLock<Mutex<HashMap<MapKey, Weak<MmapRaw>>>> = OnceLock::new();
    MAPPINGS.get_or_init(Default::default)
}

fn map_key(fd: &OwnedFd, offset: u64, len: usize) -> Option<MapKey> {
    // Only sealed files: their size cannot change under a shared mapping, and
    // their regions need no SIGBUS guard (which is per region, not per mapping).
    let sealed = rustix::fs::fcntl_get_seals(fd)
        .is_ok_and(|seals| seals.contains(rustix::fs::SealFlags::SHRINK));
    let stat = rustix::fs::fstat(fd).ok()?;
    sealed.then_some((stat.st_dev, stat.st_ino, offset, len))
}

/// The mapping of `[offset, offset + len)` of `fd`: one this process already
/// holds of the same bytes of a sealed file, else a new one.
fn shared_mapping(
    fd: &OwnedFd,
    offset: u64,
    len: usize,
    prefault: bool,
) -> Result<Arc<MmapRaw>, ShmError> {
    let Some(key) = map_key(fd, offset, len) else {
        return Ok(Arc::new(map(fd, offset, len, prefault)?));
    };
    let mut held = mappings().lock();
    if let Some(map) = held.get(&key).and_then(Weak::upgrade) {
        return Ok(map);
    }
    let map = Arc::new(map(fd, offset, len, prefault)?);
    held.retain(|_, m| m.strong_count() > 0);
    held.insert(key, Arc::downgrade(&map));
    Ok(map)
}

fn map(fd: &OwnedFd, offset: u64, len: usize, prefault: bool) -> Result<MmapRaw, ShmError> {
    let mut opts = MmapOptions::new();
    opts.offset(offset).len(len);
    if prefault {
        opts.populate();
    }
    opts.map_raw(fd.as_raw_fd())
        .map_err(|e| ShmError::io("mmap", e))
}

impl Region {
    /// An anonymous region backed by a memfd (for buffers passed to another process).
    pub fn anonymous(name: &str, size: u64, opts: &RegionOptions) -> Result<Region, ShmError> {
        if size == 0 {
            return Err(ShmError::InvalidSize(0));
        }
        if let Some(huge) = opts.huge_page_size {
            match Self::anonymous_huge(name, size, huge) {
                Ok(r) => return Ok(r),
                Err(e) => tracing::warn!(
                    "huge pages of {huge} bytes unavailable ({e}); falling back to normal pages. \
                     Reserve huge pages (e.g. `echo 1024 > /proc/sys/vm/nr_hugepages`) or unset MC_STORE_USE_HUGEPAGE"
                ),
            }
        }
        check_host_can_hold(size, opts.prefault)?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| ShmError::io("memfd_create", e))?;
        let len = round_up(size, PAGE);
        rustix::fs::ftruncate(&fd, len).map_err(|e| ShmError::io("ftruncate", e))?;
        seal_size(&fd)?;
        let map = shared_mapping(&fd, 0, len as usize, opts.prefault)?;
        Ok(Region::assemble(map, 0, size as usize, fd, 0, None, false))
    }

    fn anonymous_huge(name: &str, size: u64, huge: u64) -> Result<Region, ShmError> {
        let flag = match huge {
            s if s == 2 << 20 => MemfdFlags::HUGE_2MB,
            s if s == 1 << 30 => MemfdFlags::HUGE_1GB,
            other => return Err(ShmError::InvalidSize(other)),
        };
        let fd = rustix::fs::memfd_create(
            name,
            MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB | MemfdFlags::ALLOW_SEALING | flag,
        )
        .map_err(|e| ShmError::io("memfd_create(MFD_HUGETLB)", e))?;
        let len = round_up(size, huge);
        rustix::fs::ftruncate(&fd, len).map_err(|e| ShmError::io("ftruncate(hugetlb)", e))?;
        seal_size(&fd)?;
        // Populate now: a huge page missing later would be a SIGBUS, not an error.
        let map = shared_mapping(&fd, 0, len as usize, true)?;
        Ok(Region::assemble(map, 0, size as usize, fd, 0, None, true))
    }

    /// Creates (or truncates) a named region at `path` (normally under `/dev/shm`), so
    /// a restarted process can re-attach the same bytes with [`open_named`](Self::open_named).
    pub fn create_named(path: &Path, size: u64, opts: &RegionOptions) -> Result<Region, ShmError> {
        if size == 0 {
            return Err(ShmError::InvalidSize(0));
        }
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| ShmError::io("open named region", e))?;
        check_memory_fs(&fd)?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| ShmError::io("ftruncate", e))?;
        let map = Arc::new(map(&fd, 0, size as usize, opts.prefault)?);
        Ok(Region::assemble(
            map,
            0,
            size as usize,
            fd,
            0,
            Some(path.to_path_buf()),
            false,
        ))
    }

    /// Maps an existing named region with its current size.
    pub fn open_named(path: &Path, opts: &RegionOptions) -> Result<Region, ShmError> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| ShmError::io("open named region", e))?;
        let size = check_memory_fs(&fd)?;
        if size == 0 {
            return Err(ShmError::InvalidSize(0));
        }
        let map = Arc::new(map(&fd, 0, size as usize, opts.prefault)?);
        Ok(Region::assemble(
            map,
            0,
            size as usize,
            fd,
            0,
            Some(path.to_path_buf()),
            false,
        ))
    }

    /// Creates or re-opens a region of `size` bytes backed by the regular file at
    /// `path` on a local disk (the disk tier). The file's blocks are reserved now
    /// (`fallocate`), so a full disk is an error here and never a fault later;
    /// the mapping is guarded like any file another process could shrink. An
    /// existing file of another size is an error (`OutOfBounds`): the caller
    /// decides whether to start it over with [`create_disk_file`](Self::create_disk_file).
    pub fn open_disk_file(path: &Path, size: u64) -> Result<Region, ShmError> {
        Self::disk_file(path, size, false)
    }

    /// [`open_disk_file`](Self::open_disk_file) on a file emptied first.
    pub fn create_disk_file(path: &Path, size: u64) -> Result<Region, ShmError> {
        Self::disk_file(path, size, true)
    }

    fn disk_file(path: &Path, size: u64, truncate: bool) -> Result<Region, ShmError> {
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(ShmError::InvalidSize(size));
        }
        let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC;
        if truncate {
            flags |= OFlags::TRUNC;
        }
        let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| ShmError::io("open disk file", e))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| ShmError::io("fstat", e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(ShmError::NotMemoryFile(
                "the disk tier needs a regular file".into(),
            ));
        }
        let current = stat.st_size as u64;
        if current != 0 && current != size {
            return Err(ShmError::OutOfBounds {
                offset: 0,
                len: size,
                limit: current,
            });
        }
        rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, size)
            .map_err(|e| ShmError::io("fallocate disk file", e))?;
        let map = Arc::new(map(&fd, 0, size as usize, false)?);
        Ok(Region::assemble(
            map,
            0,
            size as usize,
            fd,
            0,
            Some(path.to_path_buf()),
            false,
        ))
    }

    /// Maps the first `len` bytes of a disk-tier file received from the real
    /// client that owns it (a regular file on a local disk, at least `len` long),
    /// so a dummy reads offloaded objects itself. Guarded like any file another
    /// process could shrink: a file cut short underneath reads as an error.
    pub fn from_disk_fd(fd: OwnedFd, len: u64) -> Result<Region, ShmError> {
        if len == 0 || !len.is_multiple_of(PAGE) {
            return Err(ShmError::InvalidSize(len));
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| ShmError::io("fstat", e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(ShmError::NotMemoryFile(
                "a disk tier is a regular file".into(),
            ));
        }
        let file_size = stat.st_size as u64;
        if file_size < len {
            return Err(ShmError::OutOfBounds {
                offset: 0,
                len,
                limit: file_size,
            });
        }
        let map = Arc::new(map(&fd, 0, len as usize, false)?);
        Ok(Region::assemble(map, 0, len as usize, fd, 0, None, false))
    }

    /// Maps `len` bytes at `offset` of an fd received from a peer. The fd must be a
    /// shared-memory file (memfd, `/dev/shm`, hugetlbfs) at least `offset + len` long.
    pub fn from_fd(
        fd: OwnedFd,
        offset: u64,
        len: u64,
        opts: &RegionOptions,
    ) -> Result<Region, ShmError> {
        if len == 0 {
            return Err(ShmError::InvalidSize(0));
        }
        let file_size = check_memory_fs(&fd)?;
        let end = offset.checked_add(len).ok_or(ShmError::OutOfBounds {
            offset,
            len,
            limit: file_size,
        })?;
        if end > file_size {
            return Err(ShmError::OutOfBounds {
                offset,
                len,
                limit: file_size,
            });
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| ShmError::io("fstat", e))?;
        let align = (stat.st_blksize as u64).max(PAGE);
        let map_offset = offset / align * align;
        let delta = (offset - map_offset) as usize;
        let map_len = delta + len as usize;
        let huge = statfs_magic(&fd)? == HUGETLBFS_MAGIC;
        let map = shared_mapping(&fd, map_offset, map_len, opts.prefault)?;
        Ok(Region::assemble(
            map,
            delta,
            len as usize,
            fd,
            offset,
            None,
            huge,
        ))
    }

    fn assemble(
        map: Arc<MmapRaw>,
        delta: usize,
        len: usize,
        fd: OwnedFd,
        fd_offset: u64,
        path: Option<PathBuf>,
        huge_pages: bool,
    ) -> Region {
        // A peer holding the fd could shrink the file under the mapping unless the
        // size is sealed: such mappings are guarded against the SIGBUS that follows.
        let sealed = rustix::fs::fcntl_get_seals(&fd)
            .is_ok_and(|seals| seals.contains(rustix::fs::SealFlags::SHRINK));
        let guard = if sealed {
            None
        } else {
            let file_len = rustix::fs::fstat(&fd).map_or(0, |st| st.st_size as u64);
            crate::guard::guard(map.as_ptr() as usize, map.len(), fd.as_raw_fd(), file_len)
        };
        Region {
            _guard: guard,
            map,
            delta,
            len,
            fd,
            fd_offset,
            path,
            huge_pages,
            gate: Gate::default(),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: zero sizes are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the region is backed by huge pages.
    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// The backing fd (to pass to another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Offset of the region's first byte in its fd.
    pub fn fd_offset(&self) -> u64 {
        self.fd_offset
    }

    /// Path of a named region.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The gate users enter around a series of operations.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Address of the first byte in this process. Dereferencing it is the caller's
    /// business (zero-copy hand-off to other libraries); this crate never does it
    /// outside bounds-checked copies.
    pub fn as_ptr(&self) -> *mut u8 {
        // `delta` is inside the mapping by construction (map_len = delta + len).
        self.map.as_mut_ptr().wrapping_add(self.delta)
    }

    /// The 8 bytes at `offset` (8-aligned, inside the region) as an atomic
    /// counter shared with every process mapping the region; `None` when out of
    /// bounds or misaligned.
    pub fn atomic_u64(&self, offset: u64) -> Option<&std::sync::atomic::AtomicU64> {
        self.check(offset, 8).ok()?;
        let at = self.as_ptr().wrapping_add(offset as usize);
        if !(at as usize).is_multiple_of(8) {
            return None;
        }
        // SAFETY: the 8 bytes are inside the live mapping (checked), 8-aligned
        // (checked), borrowed through `&self`; `AtomicU64` has the size and
        // alignment of `u64` and any bit pattern is valid; every process touches
        // these bytes only through atomics.
        Some(unsafe { &*(at as *const std::sync::atomic::AtomicU64) })
    }

    /// Checks that `[offset, offset + len)` lies inside the region.
    pub fn check(&self, offset: u64, len: u64) -> Result<(), ShmError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len as u64 => Ok(()),
            _ => Err(ShmError::OutOfBounds {
                offset,
                len,
                limit: self.len as u64,
            }),
        }
    }

    /// Copies `src` into the region at `offset`.
    pub fn write(&self, offset: u64, src: &[u8]) -> Result<(), ShmError> {
        self.check(offset, src.len() as u64)?;
        // SAFETY: the destination range was bounds-checked against the live mapping
        // (borrowed through `&self`); `copy_bytes` tolerates overlap should `src` itself
        // point into shared memory.
        unsafe {
            crate::copy::copy_bytes(src.as_ptr(), self.as_ptr().add(offset as usize), src.len())
        };
        Ok(())
    }

    /// Copies bytes at `offset` into `dst`.
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), ShmError> {
        self.check(offset, dst.len() as u64)?;
        // SAFETY: the source range was bounds-checked against the live mapping; `dst`
        // is an exclusive Rust slice of the same length.
        unsafe {
            crate::copy::copy_bytes(
                self.as_ptr().add(offset as usize),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    /// Copies `len` bytes of this process's memory at `src` into the region at
    /// `offset` (memory the caller registered as its own, not shared).
    ///
    /// # Safety
    /// `[src, src + len)` must be readable memory of this process for the whole call.
    pub unsafe fn write_from_raw(
        &self,
        offset: u64,
        src: *const u8,
        len: u64,
    ) -> Result<(), ShmError> {
        // SAFETY: passed on from the caller.
        unsafe { self.write_from_raw_with(offset, src, len, false) }
    }

    /// [`write_from_raw`](Self::write_from_raw) into space no one reads soon (a
    /// store's segment): large copies write past the CPU caches
    /// ([`crate::copy::UNCACHED_COPY_MIN`]).
    ///
    /// # Safety
    /// As [`write_from_raw`](Self::write_from_raw).
    pub unsafe fn write_from_raw_uncached(
        &self,
        offset: u64,
        src: *const u8,
        len: u64,
    ) -> Result<(), ShmError> {
        // SAFETY: passed on from the caller.
        unsafe { self.write_from_raw_with(offset, src, len, true) }
    }

    /// # Safety
    /// As [`write_from_raw`](Self::write_from_raw).
    unsafe fn write_from_raw_with(
        &self,
        offset: u64,
        src: *const u8,
        len: u64,
        uncached: bool,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: the destination was bounds-checked against the live mapping; the
        // caller vouches for the source; both copies tolerate overlap.
        unsafe {
            let to = self.as_ptr().add(offset as usize);
            if uncached {
                crate::copy::copy_bytes_uncached(src, to, len as usize)
            } else {
                crate::copy::copy_bytes(src, to, len as usize)
            }
        };
        Ok(())
    }

    /// Copies `len` bytes of the region at `offset` into this process's memory at `dst`.
    ///
    /// # Safety
    /// `[dst, dst + len)` must be writable memory of this process that nothing else
    /// reads or writes during the call.
    pub unsafe fn read_into_raw(
        &self,
        offset: u64,
        dst: *mut u8,
        len: u64,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: the source was bounds-checked against the live mapping; the caller
        // vouches for the destination.
        unsafe { crate::copy::copy_bytes(self.as_ptr().add(offset as usize), dst, len as usize) };
        Ok(())
    }

    /// Copies `len` bytes from this region at `offset` into `dst` at `dst_offset`.
    pub fn copy_to(
        &self,
        offset: u64,
        dst: &Region,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), ShmError> {
        self.copy_to_with(offset, dst, dst_offset, len, false)
    }

    /// [`copy_to`](Self::copy_to) into space no one reads soon (a store's
    /// segment): large copies write past the CPU caches
    /// ([`crate::copy::UNCACHED_COPY_MIN`]).
    pub fn copy_to_uncached(
        &self,
        offset: u64,
        dst: &Region,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), ShmError> {
        self.copy_to_with(offset, dst, dst_offset, len, true)
    }

    fn copy_to_with(
        &self,
        offset: u64,
        dst: &Region,
        dst_offset: u64,
        len: u64,
        uncached: bool,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        dst.check(dst_offset, len)?;
        let (from, to) = (
            // SAFETY: both offsets were bounds-checked against live mappings
            // borrowed for the duration of the call.
            unsafe { self.as_ptr().add(offset as usize) },
            // SAFETY: as above.
            unsafe { dst.as_ptr().add(dst_offset as usize) },
        );
        // SAFETY: both ranges were bounds-checked against live mappings borrowed for the
        // duration of the call; both copies are memmove-correct for overlapping addresses.
        unsafe {
            if uncached {
                crate::copy::copy_bytes_uncached(from, to, len as usize)
            } else {
                crate::copy::copy_bytes(from, to, len as usize)
            }
        };
        Ok(())
    }

    /// Runs `f` on the bytes `[offset, offset + len)` of the mapping, borrowed in
    /// place (no copy): for a reader that checks bytes and copies them on in one
    /// pass, while they are in the CPU's cache.
    pub fn with_bytes<R>(
        &self,
        offset: u64,
        len: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, ShmError> {
        self.check(offset, len)?;
        // SAFETY: the range was bounds-checked against the live mapping, borrowed
        // through `&self` for the whole call. Another process may write these bytes
        // concurrently; `u8` has no invalid values and the slice does not outlive
        // `f` (callers check and copy within it), so a racing write can at worst
        // yield bytes that fail their check; objects being read are under a read
        // lease, which rules out writes to them.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset as usize), len as usize) };
        Ok(f(bytes))
    }

    /// Writes `len` bytes at `offset` to `sink` (a socket: the kernel copies straight
    /// out of the mapping, no intermediate buffer).
    pub fn send_to(
        &self,
        offset: u64,
        len: u64,
        sink: &mut impl std::io::Write,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: the range was bounds-checked against the live mapping, borrowed
        // through `&self` for the whole call. Another process may write these bytes
        // concurrently; `u8` has no invalid values and the slice never escapes this
        // call (the writer only reads it to copy into the kernel), so a racing write
        // can at worst send mixed bytes, which the lease/version protocol rules out
        // for committed objects.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset as usize), len as usize) };
        sink.write_all(bytes)
            .map_err(|e| ShmError::io("send from region", e))
    }

    /// Fills `len` bytes at `offset` from `source` (a socket: the kernel copies
    /// straight into the mapping).
    pub fn recv_from(
        &self,
        offset: u64,
        len: u64,
        source: &mut impl std::io::Read,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: the range was bounds-checked against the live mapping, borrowed
        // through `&self` for the whole call. The range belongs to an allocation the
        // caller owns (a write in progress, or a registered destination buffer), so no
        // other Rust reference to it exists in this process; the slice does not
        // outlive the call.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(self.as_ptr().add(offset as usize), len as usize)
        };
        source
            .read_exact(bytes)
            .map_err(|e| ShmError::io("receive into region", e))
    }

    /// Removes the name of a named region (the mapping stays valid).
    pub fn unlink(&self) -> Result<(), ShmError> {
        if let Some(p) = &self.path {
            std::fs::remove_file(p).map_err(|e| ShmError::io("unlink named region", e))?;
        }
        Ok(())
    }
}

fn statfs_magic(fd: &OwnedFd) -> Result<u64, ShmError> {
    let fs = rustix::fs::fstatfs(fd).map_err(|e| ShmError::io("fstatfs", e))?;
    #[allow(clippy::unnecessary_cast)]
    Ok(fs.f_type as u64)
}

/// Checks that `fd` is a regular file on a memory filesystem; returns its size.
fn check_memory_fs(fd: &OwnedFd) -> Result<u64, ShmError> {
    let stat = rustix::fs::fstat(fd).map_err(|e| ShmError::io("fstat", e))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(ShmError::NotMemoryFile(format!(
            "{kind:?}, not a regular file"
        )));
    }
    let magic = statfs_magic(fd)?;
    if magic != TMPFS_MAGIC && magic != HUGETLBFS_MAGIC {
        return Err(ShmError::NotMemoryFile(format!(
            "file system 0x{magic:x} is neither tmpfs nor hugetlbfs"
        )));
    }
    Ok(stat.st_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_maps_the_same_sealed_bytes_once() {
        let owner = Region::anonymous("shared", 1 << 20, &RegionOptions::default()).unwrap();
        owner.write(4096, b"both see this").unwrap();
        let fd = owner.fd().try_clone_to_owned().unwrap();
        let view = Region::from_fd(fd, 0, 1 << 20, &RegionOptions::default()).unwrap();
        assert_eq!(view.as_ptr(), owner.as_ptr(), "one mapping, not two");
        let mut got = [0u8; 13];
        view.read(4096, &mut got).unwrap();
        assert_eq!(&got, b"both see this");
        // The mapping outlives the region that made it while another uses it.
        drop(owner);
        view.write(0, b"still mapped").unwrap();
        // A sub-range is a mapping of its own.
        let fd = view.fd().try_clone_to_owned().unwrap();
        let part = Region::from_fd(fd, 8192, 4096, &RegionOptions::default()).unwrap();
        assert_ne!(part.as_ptr(), view.as_ptr().wrapping_add(8192));
        // Unsealed files are never shared (their regions are guarded one by one).
        let path = std::env::temp_dir().join(format!("mc-shared-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        if let Ok(named) = Region::create_named(&path, 1 << 16, &RegionOptions::default()) {
            let again = Region::open_named(&path, &RegionOptions::default()).unwrap();
            assert_ne!(again.as_ptr(), named.as_ptr());
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn anonymous_regions_are_sealed_against_a_peer_shrinking_them() {
        let r = Region::anonymous("sealed", 1 << 20, &RegionOptions::default()).unwrap();
        assert!(rustix::fs::ftruncate(r.fd(), 0).is_err(), "shrink refused");
        assert!(
            rustix::fs::ftruncate(r.fd(), 2 << 20).is_err(),
            "grow refused"
        );
        r.write(0, b"still here").unwrap();
    }

    #[test]
    fn a_peer_truncating_an_unsealed_mapping_does_not_kill_this_process() {
        // A memfd the way a hostile peer would hand it over: without seals.
        let fd = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 1 << 20).unwrap();
        let peer_copy = fd.try_clone().unwrap();
        let r = Region::from_fd(fd, 0, 1 << 20, &RegionOptions::default()).unwrap();
        r.write(4096, b"hello").unwrap();
        let before = crate::guard::repaired_faults();
        rustix::fs::ftruncate(&peer_copy, 0).unwrap();
        // Without the guard this read is a SIGBUS that ends the process.
        let mut back = [1u8; 5];
        r.read(4096, &mut back).unwrap();
        assert_eq!(
            back, [0u8; 5],
            "the peer cut these bytes; zeros, not a crash"
        );
        assert!(crate::guard::repaired_faults() > before);
        r.write(8192, b"writes work again").unwrap();
    }

    #[test]
    fn sizes_beyond_the_host_are_refused_before_any_page_is_touched() {
        let huge = 1u64 << 50;
        for prefault in [false, true] {
            let r = Region::anonymous(
                "huge",
                huge,
                &RegionOptions::default().with_prefault(prefault),
            );
            assert!(matches!(r, Err(ShmError::HostTooSmall { .. })), "{r:?}");
        }
    }

    #[test]
    fn anonymous_region_reads_back_writes_and_checks_bounds() {
        let r =
            Region::anonymous("t", 10_000, &RegionOptions::default().with_prefault(true)).unwrap();
        assert_eq!(r.len(), 10_000);
        r.write(9_990, b"0123456789").unwrap();
        let mut back = [0u8; 10];
        r.read(9_990, &mut back).unwrap();
        assert_eq!(&back, b"0123456789");
        assert!(r.write(9_991, b"0123456789").is_err());
        assert!(r.read(u64::MAX - 2, &mut back).is_err());
        assert!(r.check(10_000, 0).is_ok());
        assert!(Region::anonymous("t", 0, &RegionOptions::default()).is_err());
    }

    #[test]
    fn a_second_mapping_of_the_same_fd_sees_the_same_bytes_at_an_offset() {
        let a = Region::anonymous("t", 3 * 4096, &RegionOptions::default()).unwrap();
        let fd = a.fd().try_clone_to_owned().unwrap();
        // Unaligned offset: the mapping is widened to the page and adjusted.
        let b = Region::from_fd(fd, 5000, 1000, &RegionOptions::default()).unwrap();
        a.write(5000, b"shared").unwrap();
        let mut got = [0u8; 6];
        b.read(0, &mut got).unwrap();
        assert_eq!(&got, b"shared");
        b.write(999, b"!").unwrap();
        let mut one = [0u8; 1];
        a.read(5999, &mut one).unwrap();
        assert_eq!(&one, b"!");
        assert!(b.write(1000, b"x").is_err());
    }

    #[test]
    fn fds_that_are_not_shared_memory_or_too_small_are_refused() {
        let a = Region::anonymous("t", 4096, &RegionOptions::default()).unwrap();
        let fd = a.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            Region::from_fd(fd, 0, 8192, &RegionOptions::default()),
            Err(ShmError::OutOfBounds { .. })
        ));
        let fd = a.fd().try_clone_to_owned().unwrap();
        assert!(Region::from_fd(fd, u64::MAX, 2, &RegionOptions::default()).is_err());
        let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            Region::from_fd(pipe_r, 0, 4096, &RegionOptions::default()),
            Err(ShmError::NotMemoryFile(_))
        ));
        // A regular file on a disk file system is not shared memory.
        let disk = std::env::current_exe().unwrap();
        let f: OwnedFd = std::fs::File::open(disk).unwrap().into();
        assert!(matches!(
            Region::from_fd(f, 0, 4096, &RegionOptions::default()),
            Err(ShmError::NotMemoryFile(_))
        ));
    }

    #[test]
    fn named_regions_survive_their_creator() {
        let path = PathBuf::from(format!("/dev/shm/mooncake-test-{}", std::process::id()));
        {
            let r = Region::create_named(&path, 1 << 20, &RegionOptions::default()).unwrap();
            r.write(12345, b"persist").unwrap();
        }
        let again = Region::open_named(&path, &RegionOptions::default()).unwrap();
        assert_eq!(again.len(), 1 << 20);
        let mut got = [0u8; 7];
        again.read(12345, &mut got).unwrap();
        assert_eq!(&got, b"persist");
        again.unlink().unwrap();
    }

    #[test]
    fn huge_pages_fall_back_when_unavailable() {
        let opts = RegionOptions::default().with_huge_pages(Some(2 << 20));
        let r = Region::anonymous("t", 4 << 20, &opts).unwrap();
        r.write(0, b"ok").unwrap();
        // Either real huge pages or the fallback; both must work.
        assert_eq!(r.len(), 4 << 20);
    }

    #[test]
    fn gate_close_waits_for_users() {
        let gate = Gate::default();
        let guard = gate.enter().unwrap();
        gate.close();
        assert!(gate.enter().is_err());
        assert!(!gate.wait_idle(Duration::from_millis(20)));
        let g2 = gate.clone();
        let t = std::thread::spawn(move || g2.wait_idle(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        drop(guard);
        assert!(t.join().unwrap());
        assert_eq!(gate.active(), 0);
    }

    #[test]
    fn regions_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Region>();
        check::<Gate>();
    }
}
