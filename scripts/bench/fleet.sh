#!/usr/bin/env bash
# A simulated fleet on one machine: a separate `mooncake_master`, CLIENTS real
# clients (`mooncake_client`, 64 MB segment each) and one engine-like dummy process
# per real client (integration/examples/fleet_load.rs: paced mixed load over a key
# space the whole fleet shares, every read byte checked) for SECONDS. Reports per
# operation the count and the p50 / p99 across processes, errors and wrong reads
# (both must be 0), and the master's CPU time per request it served.
#
#   scripts/bench/fleet.sh [SECONDS=600] [CLIENTS=16] [OPS_PER_SECOND_PER_DUMMY=40]
#
# CLIENT_FLAGS: more flags for every real client (e.g. "--local_placement=false").
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_RUN="${1:-600}" CLIENTS="${2:-16}" RATE="${3:-40}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build -q --release -p mooncake-master --bin mooncake_master -p mooncake-realclient \
  --bin mooncake_client -p mooncake-integration --example fleet_load
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f /dev/shm/mc-fleet-$$-*.segment /dev/shm/mc-fleet-$$-*.segment.inventory*
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" && return 0; sleep 0.1; done; cat "$1"; exit 1; }
MPORT=59801 MHTTP=59802
target/release/mooncake_master --rpc_address=127.0.0.1 --rpc_port=$MPORT --metrics_port=$MHTTP \
  >"$work/master.log" 2>&1 &
master_pid=$!
pids+=($master_pid)
wait_for "$work/master.log" "Master service started"
for i in $(seq 1 "$CLIENTS"); do
  port=$((59900 + i))
  target/release/mooncake_client --host=127.0.0.1 --port=$port --global_segment_size=64MB \
    --master_server_address=127.0.0.1:$MPORT --http_port=0 --keep_segment=false \
    --ipc_socket_path="$work/c$i.sock" --segment_path="/dev/shm/mc-fleet-$$-$i.segment" \
    ${CLIENT_FLAGS:-} >"$work/client$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$CLIENTS"); do wait_for "$work/client$i.log" "mooncake_client ready"; done
cpu() { awk '{print $14 + $15}' "/proc/$master_pid/stat"; }
requests() {
  curl -s "http://127.0.0.1:$MHTTP/metrics" | awk '/^master_.*_requests_total /{s += $2} END {print s + 0}'
}
cpu0=$(cpu) req0=$(requests) t0=$(date +%s.%N)
load=()
for i in $(seq 1 "$CLIENTS"); do
  target/release/examples/fleet_load "$work/c$i.sock" "$SECONDS_RUN" "$RATE" 4000 \
    >"$work/load$i.json" 2>"$work/load$i.err" &
  load+=($!)
done
for p in "${load[@]}"; do wait "$p"; done
cpu1=$(cpu) req1=$(requests) t1=$(date +%s.%N)
# How writes ended: two-phase (put_end) or placed in granted space (commit);
# and the master calls each kind made.
curl -s "http://127.0.0.1:$MHTTP/metrics" | awk '
  /^master_batch_put_(end|commit)_items_total / {print "master: " $1 " " $2}
  /^master_(batch_put_start|batch_put_end|batch_put_commit|grant_space|return_space|batch_exist_key)_requests_total / {print "master: " $1 " " $2}'
ticks=$(getconf CLK_TCK)
python3 - "$work" "$CLIENTS" "$cpu0" "$cpu1" "$req0" "$req1" "$ticks" "$t0" "$t1" <<'PY'
import json, statistics, sys
work, n = sys.argv[1], int(sys.argv[2])
cpu0, cpu1, req0, req1, ticks, t0, t1 = map(float, sys.argv[3:])
runs = []
for i in range(1, n + 1):
    text = open(f"{work}/load{i}.json").read().strip()
    if not text:
        print(f"load process {i} printed nothing:", open(f"{work}/load{i}.err").read()[-2000:])
        sys.exit(1)
    runs.append(json.loads(text))
print(f"## Fleet: {n} real clients, {n} dummy processes, {t1 - t0:.0f} s\n")
print("| operation | calls | p50 (median / worst process) | p99 (median / worst process) |")
print("|---|---|---|---|")
for op in runs[0]["ops"]:
    calls = sum(r["ops"][op]["count"] for r in runs)
    p50 = [r["ops"][op]["p50_us"] for r in runs]
    p99 = [r["ops"][op]["p99_us"] for r in runs]
    print(f"| {op} | {calls} | {statistics.median(p50):.0f} / {max(p50)} µs | {statistics.median(p99):.0f} / {max(p99)} µs |")
errors = sum(r["errors"] for r in runs)
wrong = sum(r["wrong"] for r in runs)
misses = sum(r["misses"] for r in runs)
reqs = req1 - req0
cpu_s = (cpu1 - cpu0) / ticks
print(f"\nmaster: {reqs:.0f} requests, {cpu_s:.1f} s CPU ({100 * cpu_s / (t1 - t0):.0f}% of a core), "
      f"{1e6 * cpu_s / max(reqs, 1):.1f} µs CPU per request")
print(f"misses (keys not there yet or removed): {misses}; errors: {errors}; wrong reads: {wrong}")
for r in runs:
    if r["errors"]:
        print(f"  pid {r['pid']}: {r['errors']} errors, last: {r['last_error']}")
sys.exit(1 if errors or wrong else 0)
PY
