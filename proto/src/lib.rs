//! Wire types, error codes, service definitions and the codec shared by every
//! mooncake-rs process.
//!
//! Nothing in this crate does I/O on its own except the small connection helpers
//! in [`codec`], which every binary uses so that the handshake (protocol version and
//! cluster token) and framing limits are identical everywhere.
//!
//! # Layout
//!
//! - [`error`]: [`ErrorCode`], numbered exactly as upstream Mooncake's `ErrorCode`, the
//!   only error type that crosses the wire.
//! - [`types`]: keys, ids, segment and replica descriptors, [`ReplicateConfig`], ping and
//!   inventory messages.
//! - [`units`]: parsing of human sizes ("4 GB", "4gb", "4294967296") and durations
//!   ("10s", "500ms", "30m").
//! - [`limits`]: connection caps per peer and in total, accept back-off, and a
//!   gate that rate-limits repeated warnings.
//! - [`master`]: the tarpc service trait of `mooncake_master`.
//! - [`realclient`]: the tarpc service a real client offers to dummy clients.
//! - [`auth`]: who may use a TCP door: the cluster token, or the host secret for
//!   processes on this host.
//! - [`codec`]: the postcard codec for tarpc, the connection handshake and the
//!   `connect` / `accept` helpers.

pub mod auth;
pub mod codec;
pub mod error;
pub mod limits;
pub mod master;
pub mod realclient;
pub mod types;
pub mod units;

pub use error::{ErrorCode, MResult, per_key};
pub use types::*;

/// Version string reported by `service_ready` and `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Fingerprint of the wire types (computed by `build.rs` from the files that
/// define them). Both handshakes carry it: a dummy, real client or master from a
/// build with other wire types is refused with `INVALID_VERSION` and a message
/// naming both builds, instead of misreading messages.
pub const WIRE_SCHEMA: u64 = parse_hex(env!("MOONCAKE_WIRE_SCHEMA"));

const fn parse_hex(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut value = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        let digit = match bytes[i] {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            _ => panic!("MOONCAKE_WIRE_SCHEMA is not lowercase hex"),
        };
        value = (value << 4) | digit as u64;
        i += 1;
    }
    value
}

/// How a peer built from other wire types is told so, on both handshakes.
pub fn schema_mismatch(peer_version: &str, peer_schema: u64) -> String {
    format!(
        "this peer is mooncake-rs {peer_version} (wire schema {peer_schema:016x}), this process is \
         {VERSION} (wire schema {WIRE_SCHEMA:016x}): their messages differ; run the dummy, the \
         real client and the master from the same build"
    )
}
