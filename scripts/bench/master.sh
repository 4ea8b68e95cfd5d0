#!/usr/bin/env bash
# Master benchmark: put_start+put_end pairs/s and 128-key batch_exist keys/s,
# in-process and over the RPC on loopback, plus resident memory per key at 1 M and
# 10 M keys. Results are recorded in docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p mooncake-master --bin master_bench
for run in 1 2 3; do
  target/release/master_bench --mode memory --memory-keys "${MEMORY_KEYS:-1000000,10000000}"
done
target/release/master_bench --mode inproc --keys "${KEYS:-500000}" --reps 5
target/release/master_bench --mode rpc --keys "${KEYS:-200000}" --reps 5
