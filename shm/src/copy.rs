//! The memory copy behind every region read and write: large copies are split
//! with one helper thread when a second core is there and the helper is idle, so
//! a 16 MiB same-host put or get uses both cores of a small machine.
//!
//! The helper is one long-lived thread (no spawn per copy). A copy that finds it
//! busy (another copy in flight) or the machine single-core simply copies alone.
//! [`join`] hands it any other half of a job the same way (the disk tier's
//! checked reads).

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

/// Copies `len` bytes from `src` to `dst` (overlapping ranges allowed).
///
/// # Safety
/// `[src, src + len)` must be readable and `[dst, dst + len)` writable for the
/// whole call, and nothing else may write `dst` meanwhile (as `ptr::copy` needs).
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    let (s, d) = (src as usize, dst as usize);
    let overlap = s < d.saturating_add(len) && d < s.saturating_add(len);
    if len >= PARALLEL_COPY_MIN && !overlap {
        let half = (len / 2) & !4095;
        // Addresses as integers: raw pointers are not `Send`.
        let there = move || {
            // SAFETY: the second half of the caller's ranges (`half < len`), which
            // do not overlap (checked above), valid until `join` returns.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (s + half) as *const u8,
                    (d + half) as *mut u8,
                    len - half,
                )
            }
        };
        // SAFETY: the first half, as above.
        let here = || unsafe { std::ptr::copy_nonoverlapping(src, dst, half) };
        if join(here, there).1.is_none() {
            // A copy does not panic; should the helper have, copy it again here.
            // SAFETY: the caller vouches for both ranges.
            unsafe { std::ptr::copy(src, dst, len) };
        }
        return;
    }
    // SAFETY: the caller vouches for both ranges; `ptr::copy` tolerates overlap.
    unsafe { std::ptr::copy(src, dst, len) };
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
