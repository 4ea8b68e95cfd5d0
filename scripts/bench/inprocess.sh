#!/usr/bin/env bash
# In-process mode side by side with upstream (issue "in-process client at least 2x
# upstream"): a master and a `mooncake_client` holding the segment, and
# scripts/bench/python_bench.py in `--mode in_process --segment 0` (the benchmark
# process contributes no memory: every byte crosses TCP to the real client), run
# once with upstream's wheel against upstream's binaries and once with this
# project's package against its binaries, one after the other on this machine.
#
#   scripts/bench/inprocess.sh [--rounds N]
#
# Upstream's wheel goes to /tmp/mooncake-upstream (or $MOONCAKE_UPSTREAM_VENV), as
# scripts/differential/run.sh installs it. Results: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
source scripts/bench/side_by_side.sh
run_side() { # name master client python
  local name=$1 master=$2 client=$3 py=$4
  start_side "$name" "$master" "$client"
  echo "### $name"
  "$py" scripts/bench/python_bench.py --mode in_process --segment 0 --master 127.0.0.1:59261 "${@:5}" 2>"$work/$name-bench.log" || { tail -20 "$work/$name-bench.log"; exit 1; }
  stop_side
  echo
}
run_side upstream "$UPBIN/mooncake_master" "$UPBIN/mooncake_client" "$UP/bin/python" "$@"
run_side ours .venv/bin/mooncake_master .venv/bin/mooncake_client .venv/bin/python "$@"
