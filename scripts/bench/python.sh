#!/usr/bin/env bash
# Python benchmark of mooncake.store (scripts/bench/python_bench.py), both modes:
# 1. dummy: setup_dummy against `mooncake_client --embedded-master` (scripts/run.sh);
# 2. in_process: setup() runs a client in the benchmark process, with a separate
#    `mooncake_master` (each write pays two master round trips over loopback TCP).
# Installs the package from this checkout into .venv first. Results: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q maturin
.venv/bin/python -m pip install -q --force-reinstall --no-deps ./python
work=$(mktemp -d)
seg="/dev/shm/mooncake-pybench-$$.segment"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$seg" "$seg.inventory"*
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" && return 0; sleep 0.1; done; cat "$1"; exit 1; }

.venv/bin/mooncake_client --embedded-master --master_server_address 127.0.0.1:59151 \
  --embedded_metrics_port 0 --host 127.0.0.1 --port 59152 --http_port 0 \
  --global_segment_size "${SEGMENT:-2GB}" --segment_path "$seg" 2>"$work/client.log" &
pids+=($!)
wait_for "$work/client.log" "mooncake_client ready"
.venv/bin/python scripts/bench/python_bench.py --mode dummy --client 127.0.0.1:59152 "$@"
echo
.venv/bin/mooncake_master --rpc_port 59153 --metrics_port 0 2>"$work/master.log" &
pids+=($!)
wait_for "$work/master.log" "Master service started"
.venv/bin/python scripts/bench/python_bench.py --mode in_process --master 127.0.0.1:59153 "$@"
