#!/usr/bin/env bash
# Load test that checks every byte (integration/examples/integrity_load.rs): writer
# sessions upsert and force-remove + re-put 256-280 KiB values while reader sessions
# read the same keys and verify each value; three runs against a single-host store
# (`mooncake_client --embedded-master`) and three with the master in its own process.
# Fails if any read returns bytes that are no value of its key. Figures go to
# docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
cargo build --release -p mooncake-realclient --bin mooncake_client -p mooncake-master --bin mooncake_master
cargo build --release -p mooncake-integration --example integrity_load
work=$(mktemp -d)
seg="/dev/shm/mooncake-integrity-$$.segment"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$seg" "$seg.inventory"*
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 200); do grep -q "$2" "$1" && return 0; sleep 0.1; done; cat "$1"; exit 1; }

run_set() {
  local label=$1
  for run in 1 2 3; do
    echo "== $label, run $run"
    target/release/examples/integrity_load "$work/client.sock" "$SECONDS_PER_RUN" 2 4 32
  done
}

target/release/mooncake_client --embedded-master --master_server_address 127.0.0.1:0 \
  --embedded_metrics_port 0 --host 127.0.0.1 --port 59152 --http_port 0 \
  --global_segment_size "${SEGMENT:-1GB}" --ipc_socket_path "$work/client.sock" \
  --segment_path "$seg" 2>"$work/client.log" &
pids+=($!)
wait_for "$work/client.log" "mooncake_client ready"
run_set "embedded master"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
rm -f "$seg" "$seg.inventory"*

target/release/mooncake_master --rpc_address 127.0.0.1 --rpc_port 59151 \
  --metrics_host 127.0.0.1 --metrics_port 0 2>"$work/master.log" &
pids+=($!)
wait_for "$work/master.log" "Master service started"
target/release/mooncake_client --master_server_address 127.0.0.1:59151 \
  --host 127.0.0.1 --port 59153 --http_port 0 --global_segment_size "${SEGMENT:-1GB}" \
  --ipc_socket_path "$work/client.sock" --segment_path "$seg" 2>"$work/client2.log" &
pids+=($!)
wait_for "$work/client2.log" "mooncake_client ready"
run_set "separate master"
