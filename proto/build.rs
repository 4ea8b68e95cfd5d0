//! Computes the wire-schema fingerprint ([`WIRE_SCHEMA`](crate::WIRE_SCHEMA)): a
//! hash of the files that define what crosses a connection, comments and blank
//! lines left out. Two builds whose wire types differ get different fingerprints,
//! so their handshake refuses the pair by name instead of misreading messages.

use std::fs;

/// The files whose types are encoded on some connection.
const WIRE_FILES: &[&str] = &[
    "src/codec.rs",
    "src/error.rs",
    "src/master.rs",
    "src/realclient.rs",
    "src/types.rs",
];

fn main() {
    // FNV-1a, 64 bits: stable across toolchains (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in WIRE_FILES {
        println!("cargo:rerun-if-changed={path}");
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    println!("cargo:rustc-env=MOONCAKE_WIRE_SCHEMA={hash:016x}");
}
