#!/usr/bin/env bash
# Upstream side by side with this project, one table (issue 20): installs upstream's
# wheel (mooncake-transfer-engine-non-cuda==0.3.13.post1, into /tmp/mooncake-upstream
# or $MOONCAKE_UPSTREAM_VENV; needs the Debian package libibverbs1) and this
# checkout's package into .venv, measures the floors (raw TCP echo round trip and
# 16 MiB over 1, 2 and 4 loopback streams, realclient/examples/raw_tcp_bench.rs),
# then runs scripts/bench/python_bench.py for each side in both modes, one after
# the other on this machine:
# - in-process: `setup()` with no segment of its own (every byte crosses TCP to a
#   `mooncake_client` holding the segment), a separate `mooncake_master`;
# - dummy: `setup_dummy()` against that `mooncake_client`.
# Each side runs against its own binaries (upstream's wheel ships them), with
# MC_TCP_BIND_ADDRESS=127.0.0.1. memcpy is measured in every benchmark process.
# Prints the table (scripts/bench/compare_table.py), with speed-ups.
#
#   scripts/bench/compare.sh [--rounds N] [--buffers process]
#
# --rounds: default 3. --buffers process: the in-process runs register plain
# process memory (ctypes arrays, as LMCache registers its pinned pool) instead of
# MooncakeHostMemAllocator's.
#
# Results: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
source scripts/bench/side_by_side.sh
cargo build -q --release -p mooncake-realclient --example raw_tcp_bench

target/release/examples/raw_tcp_bench serve 127.0.0.1:59270 >/dev/null 2>&1 &
raw=$!
sleep 0.5
{
  target/release/examples/raw_tcp_bench echo 127.0.0.1:59270 20000
  target/release/examples/raw_tcp_bench run 127.0.0.1:59270 16 30
} | tee "$work/floor.txt"
kill $raw 2>/dev/null || true
wait $raw 2>/dev/null || true
echo

run_side() { # side mode master client python [bench args...]
  local side=$1 mode=$2 master=$3 client=$4 py=$5
  shift 5
  start_side "$side-$mode" "$master" "$client"
  local args=(--mode "$mode" --json "$work/$side-$mode.json")
  if [ "$mode" = in_process ]; then
    args+=(--segment 0 --master 127.0.0.1:59261)
  else
    args+=(--client 127.0.0.1:59263)
  fi
  echo "### $side, $mode mode"
  "$py" scripts/bench/python_bench.py "${args[@]}" "$@" 2>"$work/$side-$mode-bench.log" \
    || { tail -20 "$work/$side-$mode-bench.log"; exit 1; }
  stop_side
  echo
}
for mode in in_process dummy; do
  run_side upstream "$mode" "$UPBIN/mooncake_master" "$UPBIN/mooncake_client" "$UP/bin/python" "$@"
  run_side ours "$mode" .venv/bin/mooncake_master .venv/bin/mooncake_client .venv/bin/python "$@"
done
echo "## Upstream 0.3.13.post1 and mooncake-rs side by side"
echo
python3 scripts/bench/compare_table.py "$work"
