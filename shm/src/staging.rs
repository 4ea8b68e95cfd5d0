//! [`StagingRing`]: a circular staging area for copy-style payloads (`put(bytes)`,
//! `get`), so those bytes cross between processes through shared memory instead of
//! the socket.
//!
//! The owner reserves contiguous space (wrapping to the start rather than splitting),
//! the peer reads or writes it, and the owner completes the reservation. Completions
//! may come in any order; space is reclaimed from the oldest reservation forward.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::ShmError;

struct RingState {
    /// Bytes ever reserved (including wrap padding); `head % capacity` is the next offset.
    head: u64,
    /// Bytes ever reclaimed.
    tail: u64,
    /// Outstanding reservations: start → (end, completed).
    outstanding: BTreeMap<u64, (u64, bool)>,
}

/// A circular allocator over a staging region of `capacity` bytes.
pub struct StagingRing {
    capacity: u64,
    align: u64,
    state: Mutex<RingState>,
    space: Condvar,
}

/// Space reserved in a [`StagingRing`]; completing (or dropping) it gives the space back.
pub struct Reservation {
    ring: Arc<StagingRing>,
    start: u64,
    offset: u64,
    len: u64,
}

impl Reservation {
    /// Offset of the reserved bytes in the staging region.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Length reserved.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the reservation is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ring.complete(self.start);
    }
}

impl StagingRing {
    /// A ring over `capacity` bytes handing out `align`-aligned reservations.
    pub fn new(capacity: u64, align: u64) -> Arc<Self> {
        let align = align.max(1).next_power_of_two();
        Arc::new(StagingRing {
            capacity: capacity / align * align,
            align,
            state: Mutex::new(RingState {
                head: 0,
                tail: 0,
                outstanding: BTreeMap::new(),
            }),
            space: Condvar::new(),
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes reserved and not yet reclaimed (including wrap padding).
    pub fn in_use(&self) -> u64 {
        let s = self.state.lock();
        s.head - s.tail
    }

    /// Reserves `len` contiguous bytes, or fails at once with `Full`.
    pub fn try_reserve(self: &Arc<Self>, len: u64) -> Result<Reservation, ShmError> {
        let mut s = self.state.lock();
        self.reserve_locked(&mut s, len)
    }

    /// Reserves `len` bytes, waiting up to `timeout` for space.
    pub fn reserve(self: &Arc<Self>, len: u64, timeout: Duration) -> Result<Reservation, ShmError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        loop {
            match self.reserve_locked(&mut s, len) {
                Err(ShmError::Full) => {
                    if self.space.wait_until(&mut s, deadline).timed_out() {
                        return Err(ShmError::Timeout);
                    }
                }
                other => return other,
            }
        }
    }

    fn reserve_locked(
        self: &Arc<Self>,
        s: &mut RingState,
        len: u64,
    ) -> Result<Reservation, ShmError> {
        if len == 0 {
            return Err(ShmError::InvalidSize(0));
        }
        let len = len
            .checked_next_multiple_of(self.align)
            .filter(|l| *l <= self.capacity)
            .ok_or(ShmError::TooLarge {
                len: len as usize,
                max: self.capacity as usize,
            })?;
        let pos = s.head % self.capacity;
        let pad = if pos + len > self.capacity {
            self.capacity - pos
        } else {
            0
        };
        let start = s.head + pad;
        if start + len - s.tail > self.capacity {
            return Err(ShmError::Full);
        }
        s.head = start + len;
        if s.outstanding.is_empty() {
            // Padding before the first outstanding reservation is reclaimable at once.
            s.tail = start;
        }
        s.outstanding.insert(start, (start + len, false));
        Ok(Reservation {
            ring: self.clone(),
            start,
            offset: start % self.capacity,
            len,
        })
    }

    fn complete(&self, start: u64) {
        let mut s = self.state.lock();
        if let Some(entry) = s.outstanding.get_mut(&start) {
            entry.1 = true;
        }
        let mut advanced = false;
        while let Some((&first, &(_, done))) = s.outstanding.iter().next() {
            if !done {
                s.tail = first;
                break;
            }
            s.outstanding.remove(&first);
            advanced = true;
        }
        if s.outstanding.is_empty() {
            s.tail = s.head;
        }
        if advanced {
            self.space.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_without_splitting_and_reclaims_out_of_order() {
        let ring = StagingRing::new(1000, 1);
        let a = ring.try_reserve(400).unwrap();
        let b = ring.try_reserve(400).unwrap();
        assert_eq!((a.offset(), b.offset()), (0, 400));
        assert!(matches!(ring.try_reserve(300), Err(ShmError::Full)));
        // Completing the newer one first reclaims nothing yet.
        drop(b);
        assert!(matches!(ring.try_reserve(300), Err(ShmError::Full)));
        drop(a);
        assert_eq!(ring.in_use(), 0);
        // 800..1000 is too short for 700: the reservation wraps to 0 instead of splitting.
        let c = ring.try_reserve(700).unwrap();
        assert_eq!(c.offset(), 0);
        let d = ring.try_reserve(300).unwrap();
        assert_eq!(d.offset(), 700);
        assert!(matches!(ring.try_reserve(1), Err(ShmError::Full)));
        drop(c);
        let e = ring.try_reserve(500).unwrap();
        assert_eq!(e.offset(), 0);
        assert!(
            matches!(ring.try_reserve(300), Err(ShmError::Full)),
            "d still holds 700..1000"
        );
        drop(d);
        drop(e);
        assert_eq!(ring.in_use(), 0);
        assert!(matches!(
            ring.try_reserve(1001),
            Err(ShmError::TooLarge { .. })
        ));
    }

    #[test]
    fn concurrent_reservations_never_overlap() {
        let ring = StagingRing::new(1 << 16, 64);
        let live = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let ring = ring.clone();
                let live = live.clone();
                s.spawn(move || {
                    for i in 0..2000u64 {
                        let len = 64 + (i * 7919 + t * 131) % 4096;
                        let r = ring.reserve(len, Duration::from_secs(5)).unwrap();
                        {
                            let mut l = live.lock();
                            for &(o, n) in l.iter() {
                                assert!(
                                    r.offset() + r.len() <= o || o + n <= r.offset(),
                                    "overlap"
                                );
                            }
                            l.push((r.offset(), r.len()));
                        }
                        std::thread::yield_now();
                        live.lock().retain(|&(o, _)| o != r.offset());
                        drop(r);
                    }
                });
            }
        });
        assert_eq!(ring.in_use(), 0);
    }
}
