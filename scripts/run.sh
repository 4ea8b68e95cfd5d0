#!/usr/bin/env bash
# Starts a single-host mooncake-rs store in one process: the real client
# (`mooncake_client`) with an embedded master on upstream's default ports
# (master RPC :50051, master metrics :9003). Dummy clients connect to the Unix socket
# it prints (default <tmp>/mooncake_client_50052.sock), e.g.
#   cargo run -p mooncake-dummyclient --example put_get
# Segment size: MOONCAKE_GLOBAL_SEGMENT_SIZE (default 4 GB, in /dev/shm).
# Extra arguments go to mooncake_client.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p mooncake-realclient --bin mooncake_client
exec target/release/mooncake_client \
  --embedded-master \
  --master_server_address "${MOONCAKE_MASTER:-0.0.0.0:50051}" \
  "$@"
