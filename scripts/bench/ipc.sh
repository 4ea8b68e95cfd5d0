#!/usr/bin/env bash
# IPC benchmark: empty-call round trips over tarpc on the Unix socket and over the
# shared-memory call ring (two processes), and copy throughput into a mapped region
# versus memcpy in the same run. Results are recorded in docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p mooncake-ipc --example ipc_bench
for run in 1 2 3; do
  echo "== run $run"
  target/release/examples/ipc_bench
done
