//! The memory copy behind every region read and write: large copies are split
//! with one helper thread when a second core is there and the helper is idle, so
//! a 16 MiB same-host put or get uses both cores of a small machine.
//!
//! The helper is one long-lived thread (no spawn per copy). A copy that finds it
//! busy (another copy in flight) or the machine single-core simply copies alone.
//! [`join`] hands it any other half of a job the same way (the disk tier's
//! checked reads).
//!
//! Copies into a store's segment ([`copy_bytes_uncached`]) write past the CPU
//! caches from [`UNCACHED_COPY_MIN`] up: the destination is space no one touched
//! lately and no one reads soon, and an ordinary store first reads every line it
//! writes (on this project's 2-core VM a 1 MiB `put_from` into another process's
//! segment took 25 % less time this way).

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use parking_lot::Mutex;

/// Copies at least this long are split.
pub const PARALLEL_COPY_MIN: usize = 4 << 20;

/// Work handed to the helper: run it, then say so.
struct Job {
    work: Box<dyn FnOnce() + Send + 'static>,
    done: SyncSender<()>,
}

struct Helper {
    jobs: SyncSender<Job>,
    /// The process that started the thread: a child forked from it has no such
    /// thread, and waiting on it there would hang.
    pid: u32,
}

fn helper() -> Option<&'static Mutex<Helper>> {
    static HELPER: OnceLock<Option<Mutex<Helper>>> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cores < 2 {
                return None;
            }
            let (jobs, rx): (SyncSender<Job>, Receiver<Job>) = sync_channel(1);
            std::thread::Builder::new()
                .name("mooncake-copy".into())
                .spawn(move || {
                    while let Ok(mut job) = rx.recv() {
                        loop {
                            // A panicking job must not take the helper down: the
                            // submitter learns of it by the missing result.
                            let _ =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.work));
                            let _ = job.done.send(());
                            match poll_for_next(&rx) {
                                Some(next) => job = next,
                                None => break,
                            }
                        }
                    }
                })
                .ok()?;
            Some(Mutex::new(Helper {
                jobs,
                pid: std::process::id(),
            }))
        })
        .as_ref()
}

/// How long the helper stays awake for another job after one: large copies come
/// in runs (a batch, a loop of reads), and waking a sleeping thread costs tens of
/// microseconds on a virtual machine whose idle cores halt.
const STAY_AWAKE: std::time::Duration = std::time::Duration::from_micros(100);

/// The next job if one comes within [`STAY_AWAKE`], polling; yields the core now
/// and then so a thread woken on it runs at once.
fn poll_for_next(rx: &Receiver<Job>) -> Option<Job> {
    let until = std::time::Instant::now() + STAY_AWAKE;
    loop {
        for _ in 0..256 {
            match rx.try_recv() {
                Ok(job) => return Some(job),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
                Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::yield_now();
    }
}

/// Runs `here` on this thread and `there` on the helper thread at the same time
/// when a second core is there and the helper is idle; otherwise both here, one
/// after the other. `None` for `there` only if it panicked on the helper.
pub fn join<A, B>(here: impl FnOnce() -> A, there: impl FnOnce() -> B + Send) -> (A, Option<B>)
where
    B: Send,
{
    let Some(helper) = helper()
        .and_then(|h| h.try_lock())
        .filter(|h| h.pid == std::process::id())
    else {
        let a = here();
        return (a, Some(there()));
    };
    let mut slot: Option<B> = None;
    let out = &mut slot;
    let work: Box<dyn FnOnce() + Send + '_> = Box::new(move || *out = Some(there()));
    // SAFETY: only the lifetime is changed. `work` borrows `slot` and whatever
    // `there` borrows. Once the job is handed over, this function neither returns
    // nor unwinds before the helper has run it and signalled `done` (a panic in
    // `here` is caught and re-raised after that; a job the helper never got is
    // run here), so the borrows outlive every use the helper makes of them.
    let work: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(work) };
    let (done, finished) = sync_channel(1);
    match helper.jobs.send(Job { work, done }) {
        Ok(()) => {
            // Should `here` panic, the helper may still be using the borrows:
            // wait for it before unwinding.
            let a = std::panic::catch_unwind(std::panic::AssertUnwindSafe(here));
            let _ = finished.recv();
            drop(helper);
            match a {
                Ok(a) => (a, slot),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Err(std::sync::mpsc::SendError(job)) => {
            // The helper is gone (cannot happen while the process runs).
            drop(helper);
            let a = here();
            (job.work)();
            (a, slot)
        }
    }
}

/// Copies from this length up write past the CPU caches in
/// [`copy_bytes_uncached`] (where the platform has such stores).
pub const UNCACHED_COPY_MIN: usize = 256 << 10;

/// Copies `len` bytes from `src` to `dst` (overlapping ranges allowed).
///
/// # Safety
/// `[src, src + len)` must be readable and `[dst, dst + len)` writable for the
/// whole call, and nothing else may write `dst` meanwhile (as `ptr::copy` needs).
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: passed on from the caller.
    unsafe { copy_with(src, dst, len, false) }
}

/// [`copy_bytes`] for a destination no one reads soon (a store's segment):
/// from [`UNCACHED_COPY_MIN`] up, non-overlapping copies use non-temporal stores,
/// which do not first read the lines they write nor push other data out of the
/// caches.
///
/// # Safety
/// As [`copy_bytes`].
pub(crate) unsafe fn copy_bytes_uncached(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: passed on from the caller.
    unsafe { copy_with(src, dst, len, true) }
}

/// # Safety
/// As [`copy_bytes`].
unsafe fn copy_with(src: *const u8, dst: *mut u8, len: usize, uncached: bool) {
    let (s, d) = (src as usize, dst as usize);
    let overlap = s < d.saturating_add(len) && d < s.saturating_add(len);
    let uncached = uncached && len >= UNCACHED_COPY_MIN && !overlap;
    if len >= PARALLEL_COPY_MIN && !overlap {
        let half = (len / 2) & !4095;
        // Addresses as integers: raw pointers are not `Send`.
        let there = move || {
            // SAFETY: the second half of the caller's ranges (`half < len`), which
            // do not overlap (checked above), valid until `join` returns.
            unsafe {
                copy_apart(
                    (s + half) as *const u8,
                    (d + half) as *mut u8,
                    len - half,
                    uncached,
                )
            }
        };
        // SAFETY: the first half, as above.
        let here = || unsafe { copy_apart(src, dst, half, uncached) };
        if join(here, there).1.is_none() {
            // A copy does not panic; should the helper have, copy it again here.
            // SAFETY: the caller vouches for both ranges.
            unsafe { std::ptr::copy(src, dst, len) };
        }
        return;
    }
    if uncached {
        // SAFETY: the caller vouches for both ranges, which do not overlap.
        unsafe { copy_apart(src, dst, len, true) };
        return;
    }
    // SAFETY: the caller vouches for both ranges; `ptr::copy` tolerates overlap.
    unsafe { std::ptr::copy(src, dst, len) };
}

/// A copy between ranges that do not overlap, past the caches when `uncached`.
///
/// # Safety
/// `[src, src + len)` readable, `[dst, dst + len)` writable, not overlapping,
/// nothing else writing `dst` meanwhile.
unsafe fn copy_apart(src: *const u8, dst: *mut u8, len: usize, uncached: bool) {
    #[cfg(target_arch = "x86_64")]
    if uncached {
        // SAFETY: passed on from the caller.
        unsafe { stream_copy(src, dst, len) };
        return;
    }
    let _ = uncached;
    // SAFETY: passed on from the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Copies with non-temporal 16-byte stores (SSE2, part of every x86-64 CPU),
/// 64 bytes a round; the unaligned head and the tail are copied as usual.
///
/// # Safety
/// As [`copy_apart`].
#[cfg(target_arch = "x86_64")]
unsafe fn stream_copy(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let head = ((16 - (dst as usize & 15)) & 15).min(len);
    // SAFETY: every access lies inside `[src, src + len)` / `[dst, dst + len)`
    // (the loop stops 64 bytes before the end; the tail takes the rest); the
    // streaming stores go to 16-byte aligned addresses (`dst + head` is aligned);
    // SSE2 is always there on x86-64. The fence orders the streaming stores before
    // whatever the caller does next (publishing the bytes to another thread).
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let mut at = head;
        while at + 64 <= len {
            let (from, to) = (src.add(at) as *const __m128i, dst.add(at) as *mut __m128i);
            let a = _mm_loadu_si128(from);
            let b = _mm_loadu_si128(from.add(1));
            let c = _mm_loadu_si128(from.add(2));
            let d = _mm_loadu_si128(from.add(3));
            _mm_stream_si128(to, a);
            _mm_stream_si128(to.add(1), b);
            _mm_stream_si128(to.add(2), c);
            _mm_stream_si128(to.add(3), d);
            at += 64;
        }
        _mm_sfence();
        std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_small_and_overlapping_copies_are_exact() {
        for len in [
            0,
            1,
            4095,
            PARALLEL_COPY_MIN - 1,
            PARALLEL_COPY_MIN,
            16 << 20,
            (16 << 20) + 12345,
        ] {
            let src: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut dst = vec![0u8; len];
            // SAFETY: two distinct live vectors of `len` bytes.
            unsafe { copy_bytes(src.as_ptr(), dst.as_mut_ptr(), len) };
            assert!(src == dst, "len {len}");
        }
        // Overlapping ranges keep memmove semantics.
        let len = 8 << 20;
        let mut buf: Vec<u8> = (0..len + 4096).map(|i| (i % 253) as u8).collect();
        let expected: Vec<u8> = buf[..len].to_vec();
        let p = buf.as_mut_ptr();
        // SAFETY: both ranges lie inside `buf`.
        unsafe { copy_bytes(p, p.add(4096), len) };
        assert!(buf[4096..] == expected[..]);
    }

    #[test]
    fn uncached_copies_are_exact_at_every_alignment_and_length() {
        for len in [
            0,
            100,
            UNCACHED_COPY_MIN - 1,
            UNCACHED_COPY_MIN,
            UNCACHED_COPY_MIN + 77,
            1 << 20,
            PARALLEL_COPY_MIN + 4099,
        ] {
            for (src_shift, dst_shift) in [(0, 0), (3, 0), (0, 5), (7, 13), (16, 1)] {
                let src: Vec<u8> = (0..len + src_shift).map(|i| (i * 31 % 251) as u8).collect();
                let mut dst = vec![0xeeu8; len + dst_shift + 64];
                // SAFETY: distinct live vectors, each long enough for the shift.
                unsafe {
                    copy_bytes_uncached(
                        src.as_ptr().add(src_shift),
                        dst.as_mut_ptr().add(dst_shift),
                        len,
                    )
                };
                assert!(
                    dst[dst_shift..dst_shift + len] == src[src_shift..],
                    "len {len} shifts {src_shift}/{dst_shift}"
                );
                assert!(dst[..dst_shift].iter().all(|&b| b == 0xee), "before");
                assert!(dst[dst_shift + len..].iter().all(|&b| b == 0xee), "after");
            }
        }
        // Overlapping ranges fall back to memmove.
        let len = UNCACHED_COPY_MIN * 2;
        let mut buf: Vec<u8> = (0..len + 4096).map(|i| (i % 253) as u8).collect();
        let expected: Vec<u8> = buf[..len].to_vec();
        let p = buf.as_mut_ptr();
        // SAFETY: both ranges lie inside `buf`.
        unsafe { copy_bytes_uncached(p, p.add(4096), len) };
        assert!(buf[4096..] == expected[..]);
    }

    #[test]
    fn a_forked_child_copies_without_the_parents_helper() {
        let len = 8 << 20;
        let src = vec![3u8; len];
        let mut dst = vec![0u8; len];
        // Start the helper in this process first.
        // SAFETY: two distinct live vectors of `len` bytes.
        unsafe { copy_bytes(src.as_ptr(), dst.as_mut_ptr(), len) };
        dst.fill(0);
        // SAFETY: the child only copies between buffers allocated before the fork
        // and exits without unwinding; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above; the helper thread does not exist in this child.
            unsafe { copy_bytes(src.as_ptr(), dst.as_mut_ptr(), len) };
            let ok = dst.iter().all(|&b| b == 3);
            // SAFETY: leaving the child at once, as after any fork.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // SAFETY: waiting on our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: killing our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the forked child hung on a large copy");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn concurrent_large_copies_all_complete() {
        std::thread::scope(|s| {
            for t in 0..4u8 {
                s.spawn(move || {
                    for _ in 0..4 {
                        let src = vec![t; 6 << 20];
                        let mut dst = vec![0u8; 6 << 20];
                        // SAFETY: two distinct live vectors of the same length.
                        unsafe { copy_bytes(src.as_ptr(), dst.as_mut_ptr(), src.len()) };
                        assert!(dst.iter().all(|&b| b == t));
                    }
                });
            }
        });
    }
}
