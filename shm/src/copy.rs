//! The memory copy behind every region read and write: large copies are split
//! with one helper thread when a second core is there and the helper is idle, so
//! a 16 MiB same-host put or get uses both cores of a small machine.
//!
//! The helper is one long-lived thread (no spawn per copy). A copy that finds it
//! busy (another copy in flight) or the machine single-core simply copies alone.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use parking_lot::Mutex;

/// Copies at least this long are split.
pub const PARALLEL_COPY_MIN: usize = 4 << 20;

/// A copy the helper does: its half of the bytes.
struct Job {
    src: *const u8,
    dst: *mut u8,
    len: usize,
    done: SyncSender<()>,
}

// SAFETY: a `Job` carries raw pointers to memory the submitting thread keeps valid
// and exclusively borrowed until the helper signals `done` (`copy_bytes` waits for
// it before returning), so handing them to the helper thread is sound.
unsafe impl Send for Job {}

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
                    for job in rx {
                        // SAFETY: see `Job`: the submitter keeps both ranges valid
                        // and untouched by anyone else until `done` is received.
                        unsafe { std::ptr::copy_nonoverlapping(job.src, job.dst, job.len) };
                        let _ = job.done.send(());
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

/// Copies `len` bytes from `src` to `dst` (overlapping ranges allowed).
///
/// # Safety
/// `[src, src + len)` must be readable and `[dst, dst + len)` writable for the
/// whole call, and nothing else may write `dst` meanwhile (as `ptr::copy` needs).
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    let (s, d) = (src as usize, dst as usize);
    let overlap = s < d.saturating_add(len) && d < s.saturating_add(len);
    if len >= PARALLEL_COPY_MIN
        && !overlap
        && let Some(helper) = helper()
        && let Some(helper) = helper.try_lock()
        && helper.pid == std::process::id()
    {
        let half = (len / 2) & !4095;
        let (done, finished) = sync_channel(1);
        let job = Job {
            // SAFETY: `half < len`, so both offsets stay inside the caller's ranges.
            src: unsafe { src.add(half) },
            // SAFETY: as above.
            dst: unsafe { dst.add(half) },
            len: len - half,
            done,
        };
        if helper.jobs.send(job).is_ok() {
            // SAFETY: the first half of the caller's ranges, which do not overlap
            // (checked above) and which the caller vouches for.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, half) };
            // The helper's half must be done before the caller's borrow ends.
            if finished.recv().is_ok() {
                return;
            }
        }
        // The helper is gone (cannot happen while the process runs): copy alone.
        // SAFETY: the caller vouches for both ranges.
        unsafe { std::ptr::copy(src, dst, len) };
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
