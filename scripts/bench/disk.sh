#!/usr/bin/env bash
# Disk-tier read-back and offload throughput (scripts/bench/disk_bench.py) against
# raw reads of the same filesystem in the same run. A master with --enable_offload
# (EMBEDDED=1: inside the real client, the scripts/run.sh setup) and a real client with a 64 MB segment and a 2 GB disk tier in $DISK_DIR (default:
# a directory under /var/tmp, a disk-backed filesystem on most hosts; /tmp may be
# tmpfs). Run as root for the cold (drop_caches) figures. Results: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q maturin
[ -n "${SKIP_INSTALL:-}" ] || .venv/bin/python -m pip install -q --force-reinstall --no-deps ./python
work=$(mktemp -d)
disk_dir="${DISK_DIR:-/var/tmp}/mooncake-diskbench-$$"
mkdir -p "$disk_dir"
seg="/dev/shm/mooncake-diskbench-$$.segment"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  mkdir -p /tmp/diskbench-last && cp "$work"/*.log /tmp/diskbench-last/ 2>/dev/null || true
  rm -rf "$work" "$disk_dir" "$seg" "$seg.inventory"*
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" && return 0; sleep 0.1; done; cat "$1"; exit 1; }

if [ -n "${EMBEDDED:-}" ]; then
  # The single-host default (scripts/run.sh): the master inside the real client.
  .venv/bin/mooncake_client --embedded-master --master_server_address 127.0.0.1:59161 \
    --embedded_metrics_port 59169 --host 127.0.0.1 \
    --port 59162 --http_port 0 --global_segment_size 64MB --segment_path "$seg" \
    --enable_offload=true --offload_dir "$disk_dir" --offload_size 2GB 2>"$work/client.log" &
  pids+=($!)
else
  .venv/bin/mooncake_master --rpc_port 59161 --metrics_host 127.0.0.1 --metrics_port 59169 \
    --enable_offload=true --eviction_high_watermark_ratio=0.8 2>"$work/master.log" &
  pids+=($!)
  wait_for "$work/master.log" "Master service started"
  .venv/bin/mooncake_client --master_server_address 127.0.0.1:59161 --host 127.0.0.1 \
    --port 59162 --http_port 0 --global_segment_size 64MB --segment_path "$seg" \
    --enable_offload=true --offload_dir "$disk_dir" --offload_size 2GB 2>"$work/client.log" &
  pids+=($!)
fi
wait_for "$work/client.log" "mooncake_client ready"
echo "disk tier in $disk_dir ($(df -T "$disk_dir" | awk 'NR==2 {print $2}'))"
.venv/bin/python scripts/bench/disk_bench.py --client 127.0.0.1:59162 \
  --master-http 127.0.0.1:59169 --dir "$disk_dir" --segment $((64 << 20)) "$@"
