//! The mooncake-rs master: object metadata, space allocation, leases, pins,
//! eviction, client liveness and metadata rebuild from client inventories.
//!
//! # Layout
//!
//! - [`config`]: [`MasterConfig`] with upstream's defaults and `with_*` setters.
//! - [`service`]: [`MasterService`], the state and every operation (synchronous,
//!   sharded, safe to call from many threads).
//! - `shard`: one metadata shard (compact object index + writes in flight).
//! - [`allocator`]: the per-segment TLSF range allocator.
//! - `segments`: mounted segments and replica placement.
//! - [`inventory`]: per-client inventory change logs.
//! - [`metrics`]: counters, latency histograms, Prometheus rendering.
//! - [`rpc`]: the tarpc server over TCP (handshake with cluster token).
//! - [`http`]: the admin/metrics HTTP server and the HTTP metadata server.
//! - [`run`]: starts everything for the `mooncake_master` binary.
//! - [`ha`]: HA mode: terms won through etcd, the fence every call passes, the
//!   HTTP port across terms.
//! - [`cli`]: logging and signal handling shared by the daemon binaries.

pub mod allocator;
pub mod cli;
pub mod config;
pub mod ha;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod rpc;
pub mod run;
mod segments;
pub mod service;
mod shard;
mod tasks;

pub use config::{AllocationStrategy, MasterConfig, OffloadPolicy};
pub use run::{ServerOptions, StartError, run};
pub use service::MasterService;
