//! [`ProcessSpan`]: a range of this process's own memory that a caller in this
//! process vouches for, so that a real client running inside the same process (the
//! Python `setup()`) can move bytes straight between it and a segment, with no
//! staging copy.
//!
//! Every live span is counted process-wide: a caller that gives up waiting on a call
//! (a timeout) must not free memory a transfer may still touch, so it waits for
//! [`wait_spans_released`] before returning.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{Region, ShmError};

/// Spans alive in this process now.
static LIVE_SPANS: AtomicUsize = AtomicUsize::new(0);

/// `len` bytes of this process's memory at `addr`, usable as the local side of a
/// copy while this value lives.
#[derive(Debug)]
pub struct ProcessSpan {
    addr: usize,
    len: u64,
}

impl ProcessSpan {
    /// The span `[addr, addr + len)`; `None` for a null address, a zero length or
    /// a range past the end of the address space.
    ///
    /// # Safety
    /// For as long as the returned value lives, `[addr, addr + len)` must be
    /// readable and writable memory of this process that no Rust reference points
    /// into while a copy may write it (the caller's call is still waiting for its
    /// answer, and it does not return before [`wait_spans_released`] on a timeout).
    pub unsafe fn new(addr: u64, len: u64) -> Option<ProcessSpan> {
        let end = addr.checked_add(len)?;
        if addr == 0 || len == 0 || usize::try_from(end).is_err() {
            return None;
        }
        LIVE_SPANS.fetch_add(1, Ordering::AcqRel);
        Some(ProcessSpan {
            addr: addr as usize,
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes (never: zero lengths are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks that `[offset, offset + len)` lies inside the span.
    pub fn check(&self, offset: u64, len: u64) -> Result<(), ShmError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ShmError::OutOfBounds {
                offset,
                len,
                limit: self.len,
            }),
        }
    }

    fn at(&self, offset: u64) -> *mut u8 {
        (self.addr as *mut u8).wrapping_add(offset as usize)
    }

    /// Copies `len` bytes at `offset` into `dst` at `dst_offset`; `uncached` for
    /// space no one reads soon (a segment).
    pub fn copy_to_region(
        &self,
        offset: u64,
        dst: &Region,
        dst_offset: u64,
        len: u64,
        uncached: bool,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        let src = self.at(offset);
        // SAFETY: the range is inside the span (checked), which the constructor's
        // caller vouched for as readable memory of this process while it lives.
        unsafe {
            if uncached {
                dst.write_from_raw_uncached(dst_offset, src, len)
            } else {
                dst.write_from_raw(dst_offset, src, len)
            }
        }
    }

    /// Fills `len` bytes at `offset` from `src` at `src_offset`.
    pub fn copy_from_region(
        &self,
        offset: u64,
        src: &Region,
        src_offset: u64,
        len: u64,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: the range is inside the span (checked), writable memory of this
        // process that nothing else uses while the copy runs (the constructor's
        // contract).
        unsafe { src.read_into_raw(src_offset, self.at(offset), len) }
    }

    /// Writes `len` bytes at `offset` to `sink` (a socket).
    pub fn send_to(
        &self,
        offset: u64,
        len: u64,
        sink: &mut impl std::io::Write,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: inside the span (checked), readable for its whole life (the
        // constructor's contract); the slice does not outlive the call.
        let bytes = unsafe { std::slice::from_raw_parts(self.at(offset), len as usize) };
        sink.write_all(bytes)
            .map_err(|e| ShmError::io("send from process memory", e))
    }

    /// Fills `len` bytes at `offset` from `source` (a socket).
    pub fn recv_from(
        &self,
        offset: u64,
        len: u64,
        source: &mut impl std::io::Read,
    ) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: inside the span (checked); writable, and no Rust reference points
        // into it while a copy may write it (the constructor's contract); the slice
        // does not outlive the call.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.at(offset), len as usize) };
        source
            .read_exact(bytes)
            .map_err(|e| ShmError::io("receive into process memory", e))
    }
}

impl Drop for ProcessSpan {
    fn drop(&mut self) {
        LIVE_SPANS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spans of process memory alive now.
pub fn live_spans() -> usize {
    LIVE_SPANS.load(Ordering::Acquire)
}

/// Waits until no [`ProcessSpan`] is alive in this process, up to `timeout`;
/// returns whether none is. A caller whose call to an in-process real client
/// ended without its answer (a timeout) calls this before its memory may be freed.
pub fn wait_spans_released(timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if live_spans() == 0 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegionOptions;

    #[test]
    fn copies_between_process_memory_and_a_region_are_exact_and_bounded() {
        let region = Region::anonymous("process-span", 1 << 20, &RegionOptions::default()).unwrap();
        let mut mine: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        // SAFETY: `mine` outlives the span and is not referenced while it lives.
        let span =
            unsafe { ProcessSpan::new(mine.as_mut_ptr() as u64, mine.len() as u64) }.unwrap();
        span.copy_to_region(0, &region, 4096, 300_000, true)
            .unwrap();
        let mut back = vec![0u8; 300_000];
        region.read(4096, &mut back).unwrap();
        assert!(back.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));

        region.write(0, &[7u8; 1000]).unwrap();
        span.copy_from_region(10, &region, 0, 1000).unwrap();
        assert!(span.check(299_999, 2).is_err(), "past the end is refused");
        assert!(span.copy_from_region(299_500, &region, 0, 1000).is_err());
        let mut sent = Vec::new();
        span.send_to(8, 4, &mut sent).unwrap();
        assert!(live_spans() >= 1);
        drop(span);
        assert_eq!(&mine[10..1010], &[7u8; 1000][..]);
        assert_eq!(sent, vec![8, 9, 7, 7]);
        // SAFETY: refused before any use.
        assert!(unsafe { ProcessSpan::new(0, 10) }.is_none());
        // SAFETY: refused before any use.
        assert!(unsafe { ProcessSpan::new(u64::MAX - 4, 10) }.is_none());
    }

    #[test]
    fn a_caller_waiting_for_spans_returns_only_once_they_are_released() {
        let mut mine = vec![0u8; 64];
        // SAFETY: `mine` outlives the span, which is only counted, never copied.
        let span = unsafe { ProcessSpan::new(mine.as_mut_ptr() as u64, 64) }.unwrap();
        assert!(
            !wait_spans_released(Duration::from_millis(20)),
            "a live span was ignored"
        );
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(span);
        });
        let started = Instant::now();
        assert!(wait_spans_released(Duration::from_secs(30)));
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "returned before the release"
        );
        holder.join().unwrap();
    }
}
