#!/usr/bin/env bash
# Dummy mode against a master in its own process, side by side with upstream
# (issue "a standalone master that serves a fleet"): `mooncake_master`, a
# `mooncake_client` holding the segment, and scripts/bench/python_bench.py in
# `--mode dummy` (setup_dummy: the benchmark process talks to the real client on
# this host), run with upstream's wheel and binaries, then with this project's
# package and binaries twice: with every call going to the master
# (`--local_placement=false --local_exist=false`: two-phase writes, every
# existence probe asked) and as shipped (writes placed in space the master
# granted, one master round trip each; existence of objects held here answered
# by the real client). Before each side: the floor, a raw TCP echo between two
# processes (realclient/examples/raw_tcp_bench.rs).
#
#   scripts/bench/dummymode.sh [--rounds N]
#
# Upstream's wheel goes to /tmp/mooncake-upstream (or $MOONCAKE_UPSTREAM_VENV).
# Results: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
source scripts/bench/side_by_side.sh
cargo build -q --release -p mooncake-realclient --example raw_tcp_bench
floor() {
  target/release/examples/raw_tcp_bench serve 127.0.0.1:59270 >/dev/null 2>&1 &
  local p=$!
  sleep 0.5
  target/release/examples/raw_tcp_bench echo 127.0.0.1:59270 20000
  kill $p 2>/dev/null || true
  wait $p 2>/dev/null || true
}

run_side() { # name master client python [client flags...] -- [bench args...]
  local name=$1 master=$2 client=$3 py=$4
  shift 4
  local flags=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do flags+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  start_side "$name" "$master" "$client" "${flags[@]}"
  echo "### $name"
  floor
  "$py" scripts/bench/python_bench.py --mode dummy --client 127.0.0.1:59263 "$@" 2>"$work/$name-bench.log" || { tail -20 "$work/$name-bench.log"; exit 1; }
  stop_side
  echo
}
run_side upstream "$UPBIN/mooncake_master" "$UPBIN/mooncake_client" "$UP/bin/python" -- "$@"
run_side ours-all-to-master .venv/bin/mooncake_master .venv/bin/mooncake_client .venv/bin/python --local_placement=false --local_exist=false -- "$@"
run_side ours .venv/bin/mooncake_master .venv/bin/mooncake_client .venv/bin/python -- "$@"
