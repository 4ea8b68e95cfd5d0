//! Surviving a peer that shrinks shared memory under us.
//!
//! Touching a page of a `MAP_SHARED` file mapping beyond the file's end raises
//! SIGBUS, which kills the process. Anonymous regions made here are memfds sealed
//! against shrinking, so that cannot happen to them. Mappings of files a peer can
//! truncate (the global segment a dummy maps read-write, a file mounted as a
//! segment, an unsealed memfd a peer handed over) are registered here instead: on a
//! SIGBUS inside one of them the handler grows the file back to its size (with
//! zeros where the peer cut it) and lets the faulting access run again, so the
//! daemon carries on. [`repaired_faults`] counts how often that happened, for a log
//! line and a metric. A SIGBUS anywhere else gets the previous disposition.

use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// Mappings that can be guarded at once; more are mapped unguarded (and logged).
const SLOTS: usize = 1024;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    fd: AtomicI32,
    file_len: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    fd: AtomicI32::new(-1),
    file_len: AtomicU64::new(0),
};

static GUARDED: [Slot; SLOTS] = [EMPTY; SLOTS];
static REPAIRED: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();
/// The SIGBUS disposition before ours, restored for faults that are not ours.
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

/// A registered mapping; unregisters on drop (before the mapping goes away).
#[derive(Debug)]
pub(crate) struct Guarded(usize);

impl Drop for Guarded {
    fn drop(&mut self) {
        let slot = &GUARDED[self.0];
        // `start` last set, first cleared: the handler never sees a half slot.
        slot.start.store(0, Ordering::SeqCst);
        slot.end.store(0, Ordering::SeqCst);
        slot.fd.store(-1, Ordering::SeqCst);
    }
}

/// How many faults in guarded mappings were repaired since the process started.
pub fn repaired_faults() -> u64 {
    REPAIRED.load(Ordering::Relaxed)
}

/// Guards `[start, start + len)`, a mapping of `fd` whose file must stay `file_len`
/// bytes long. `None` when every slot is taken.
pub(crate) fn guard(start: usize, len: usize, fd: i32, file_len: u64) -> Option<Guarded> {
    INSTALL.call_once(install);
    for (i, slot) in GUARDED.iter().enumerate() {
        if slot.fd.load(Ordering::Relaxed) != -1 {
            continue;
        }
        if slot
            .fd
            .compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            slot.file_len.store(file_len, Ordering::SeqCst);
            slot.end.store(start + len, Ordering::SeqCst);
            slot.start.store(start, Ordering::SeqCst);
            return Some(Guarded(i));
        }
    }
    tracing::warn!("more than {SLOTS} guarded mappings: this one is not protected from truncation");
    None
}

fn install() {
    // SAFETY: a zeroed sigaction is a valid value to fill in; `sigaction` is given
    // valid pointers, and `PREVIOUS` is written once here, before the handler can
    // run (it is installed by this very call) and never written again.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let previous = &raw mut PREVIOUS;
        if libc::sigaction(libc::SIGBUS, &action, (*previous).as_mut_ptr()) != 0 {
            tracing::warn!(
                "cannot install the SIGBUS guard; a peer truncating shared memory can stop this process"
            );
        }
    }
}

/// The SIGBUS handler: only async-signal-safe work (atomics, `ftruncate`, `sigaction`).
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in GUARDED.iter() {
        let start = slot.start.load(Ordering::SeqCst);
        if start == 0 || addr < start || addr >= slot.end.load(Ordering::SeqCst) {
            continue;
        }
        let fd = slot.fd.load(Ordering::SeqCst);
        let len = slot.file_len.load(Ordering::SeqCst) as libc::off_t;
        // SAFETY: ftruncate is async-signal-safe; fd stays open while registered.
        if fd >= 0 && unsafe { libc::ftruncate(fd, len) } == 0 {
            REPAIRED.fetch_add(1, Ordering::Relaxed);
            return; // the access runs again and now finds its page
        }
        break;
    }
    // Not ours (or not repairable): put the previous disposition back; the access
    // faults again and gets it.
    // SAFETY: PREVIOUS was initialised by `install` before this handler existed.
    unsafe {
        let previous = &raw const PREVIOUS;
        libc::sigaction(libc::SIGBUS, (*previous).as_ptr(), std::ptr::null_mut());
    }
}
