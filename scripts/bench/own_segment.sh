#!/usr/bin/env bash
# The in-process mode as LMCache sets it up (issue 20): `setup()` with its own
# 3.2 GB segment and a 1 GB local buffer, its pinned pool registered as plain
# process memory, a separate `mooncake_master` and a `mooncake_client` on the
# same host. Values land in the process's own segment, so the figures to read
# are the put_from / get_into rates against memcpy in the same process (issue
# 20's goal: ≥ 90 % for 1 MiB and up). Upstream's wheel runs the same script
# first, for comparison.
#
#   scripts/bench/own_segment.sh [--rounds N]
#
# Results: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/side_by_side.sh

run() { # side master client python [bench args...]
  local side=$1 master=$2 client=$3 py=$4
  shift 4
  start_side "$side-own" "$master" "$client"
  echo "### $side"
  "$py" scripts/bench/python_bench.py --mode in_process --segment 3.2GB --local-buffer 1GB \
    --buffers process --master 127.0.0.1:59261 "$@" 2>"$work/$side-own-bench.log" \
    || { tail -20 "$work/$side-own-bench.log"; exit 1; }
  stop_side
  echo
}
run upstream "$UPBIN/mooncake_master" "$UPBIN/mooncake_client" "$UP/bin/python" "$@"
run ours .venv/bin/mooncake_master .venv/bin/mooncake_client .venv/bin/python "$@"
