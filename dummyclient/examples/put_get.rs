//! Puts and gets through a running real client:
//! `scripts/run.sh` in one terminal, then
//! `cargo run -p mooncake-dummyclient --example put_get`.

#![allow(clippy::disallowed_methods)] // reads its settings from the environment

use mooncake_dummyclient::DummyClient;
use mooncake_proto::ReplicateConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("MOONCAKE_CLIENT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(50052);
    let socket = std::env::temp_dir().join(format!("mooncake_client_{port}.sock"));
    let client = DummyClient::connect(&socket, "")?;
    println!(
        "connected to {} (session {})",
        client.hostname(),
        client.session()
    );
    let value = b"hello from a dummy client".repeat(100);
    client
        .put("example-key", &value, &ReplicateConfig::default())
        .map_err(|e| format!("put: {e}"))?;
    let back = client.get("example-key").map_err(|e| format!("get: {e}"))?;
    assert_eq!(back, value);
    println!(
        "put and got back {} bytes; exists: {:?}",
        back.len(),
        client.is_exist("example-key")
    );
    Ok(())
}
