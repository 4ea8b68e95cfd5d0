//! What every mooncake-rs daemon (the master, the real client, and the real client
//! a Python process runs inside itself) does the same way, in one place.
//!
//! # Layout
//!
//! - [`gflags`]: upstream's command lines verbatim: gflags spellings and built-ins,
//!   glog's flags, every upstream flag accepted.
//! - [`logging`]: glog-style verbosity (`-v=N`, or `MOONCAKE_LOG` as a tracing
//!   filter) to stderr, and how a fatal error becomes an exit code.
//! - [`signals`]: a cancellation token for SIGTERM / Ctrl-C.
//! - [`listener`]: [`GuardedListener`], a TCP listener within connection limits,
//!   backing off on accept errors and rate-limiting its warnings.
//! - [`rpc`]: the tarpc serve loop: accept, handshake (credential), serve, stop.
//! - [`http`]: the HTTP serve loop with a header read timeout.
//! - [`ha`]: etcd: master addresses, following the leader, the campaign and its fence.
//! - [`periodic`]: a task that runs every interval on a tracker until cancelled.
//! - [`prometheus`]: Prometheus text exposition helpers.

pub mod gflags;
pub mod ha;
pub mod http;
pub mod listener;
pub mod logging;
pub mod periodic;
pub mod prometheus;
pub mod rpc;
pub mod signals;

pub use listener::{GuardedListener, RefusalLog};
