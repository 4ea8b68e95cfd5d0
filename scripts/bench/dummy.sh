#!/usr/bin/env bash
# Dummy-client benchmark on one host: starts `mooncake_client --embedded-master`
# (1 GiB segment, private socket and ports), runs dummyclient/examples/dummy_bench.rs
# three times, stops the client. Results are recorded in docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p mooncake-realclient --bin mooncake_client
cargo build --release -p mooncake-dummyclient --example dummy_bench
work=$(mktemp -d)
socket="$work/client.sock"
segment="/dev/shm/mooncake-bench-$$.segment"
log="$work/client.log"
target/release/mooncake_client --embedded-master --master_server_address 127.0.0.1:0 \
  --embedded_metrics_port 0 --port 59052 --global_segment_size "${SEGMENT:-1GB}" \
  --ipc_socket_path "$socket" --segment_path "$segment" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work" "$segment" "$segment.inventory"' EXIT
for _ in $(seq 1 100); do grep -q "mooncake_client ready" "$log" && break; sleep 0.1; done
for run in 1 2 3; do
  echo "== run $run"
  MC_SOCKET="$socket" target/release/examples/dummy_bench
done
