#!/usr/bin/env bash
# Failover side by side with upstream (issue "High availability"): the same
# scripts/bench/failover.py against this project's package and masters, then
# against upstream's wheel and its mooncake_master, one after the other on this
# machine: an etcd, two HA masters, one store set up with etcd://, the leader
# killed with SIGKILL each round; kill -> first successful put and get, and the
# acknowledged objects missing afterwards.
#
#   scripts/bench/failover.sh [--rounds N]      (default 5)
#
# Needs etcd (Debian etcd-server). Results: docs/PERFORMANCE.md, docs/HA.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=5
[ "${1:-}" = "--rounds" ] && ROUNDS=$2
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
command -v etcd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; }
source scripts/bench/side_by_side.sh
quiet() { grep -E "round [0-9]|failover put|no leader|setup with" || true; }
.venv/bin/python scripts/bench/failover.py --label ours --rounds "$ROUNDS" \
  --master .venv/bin/mooncake_master 2>&1 | quiet
"$UP/bin/python" scripts/bench/failover.py --label upstream --rounds "$ROUNDS" \
  --master "$UPBIN/mooncake_master" 2>&1 | quiet
