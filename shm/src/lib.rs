//! Shared memory for mooncake-rs: the only crate with `unsafe` code for mapped memory.
//!
//! Real clients own a large named region (the global segment, a file under `/dev/shm`
//! so a restarted real client re-attaches the same bytes); dummy clients allocate
//! anonymous memfd regions for their buffers and pass the fds to the real client,
//! which maps them. Both sides then copy bytes directly, never through a socket.
//!
//! # Layout
//!
//! - [`region`]: [`Region`], a mapped shared-memory region (memfd, `/dev/shm` file, or
//!   an fd received from a peer, validated), bounds-checked reads and writes, huge
//!   pages with a clear fallback, and a [`Gate`] that lets unmapping wait for in-flight users.
//! - [`copy`]: the copy behind every region read and write; large ones split over a
//!   helper thread when a second core is there ([`copy::join`] runs any two halves
//!   of work that way).
//! - [`blocksums`]: per-4 KiB-block checksums of a mapped file (the disk tier):
//!   sealing, and the checked read both its owner and a dummy use.
//! - [`process`]: [`ProcessSpan`], this process's own memory as the local side
//!   of a copy (a real client running inside the caller's process).
//! - [`buffers`]: [`BufferAllocator`], carving a region into buffers (best fit, aligned).
//! - [`staging`]: [`StagingRing`], a circular staging area for copy-style payloads with
//!   out-of-order completion.
//! - [`callring`]: [`CallRing`], a lock-free request/response channel in shared memory
//!   with futex wake-ups that cost no syscall while the other side is polling.
//! - [`guard`]: the SIGBUS guard that keeps a process alive when a peer shrinks a
//!   file it maps (memfds made here are sealed instead).
//! - [`error`]: the crate error type, [`ShmError`].

pub mod blocksums;
pub mod buffers;
pub mod callring;
pub mod copy;
pub mod error;
pub mod guard;
pub mod process;
pub mod region;
pub mod staging;

pub use buffers::BufferAllocator;
pub use callring::{CallRing, CallRingClient, CallRingServer};
pub use error::ShmError;
pub use process::ProcessSpan;
pub use region::{Gate, GateGuard, Region, RegionOptions};
pub use staging::{Reservation, StagingRing};
