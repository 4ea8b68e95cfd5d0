#!/usr/bin/env bash
# Starts a single-host mooncake-rs deployment with upstream's default ports.
# Today this is the master (RPC :50051, metrics :9003, metadata server :8080);
# the real client (`mooncake_client --embedded-master`) is added by its own issue.
# Extra arguments are passed to mooncake_master, e.g. --eviction_high_watermark_ratio=0.95.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p mooncake-master --bin mooncake_master
echo "mooncake_master: RPC 127.0.0.1:50051, metrics http://127.0.0.1:9003/metrics, metadata http://127.0.0.1:8080/metadata"
exec target/release/mooncake_master \
  --enable_http_metadata_server=true \
  "$@"
