#!/usr/bin/env bash
# Dummy-client benchmark (dummyclient/examples/dummy_bench.rs), three runs of each:
# 1. single host, `mooncake_client --embedded-master` (the scripts/run.sh setup):
#    local put/get, batches, existence probes;
# 2. the same local operations against a real client whose master is a separate
#    `mooncake_master` process (every call crosses a TCP hop to the master);
# 3. cross-host: 16 MiB and 64 x 1 MiB transfers between two real clients. As root
#    the two live in network namespaces joined by a veth pair (a real link);
#    otherwise both are on loopback.
# Results are recorded in docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p mooncake-realclient --bin mooncake_client -p mooncake-master --bin mooncake_master
cargo build --release -p mooncake-dummyclient --example dummy_bench
work=$(mktemp -d)
seg_a="/dev/shm/mooncake-bench-a-$$.segment"
seg_b="/dev/shm/mooncake-bench-b-$$.segment"
pids=()
ns_a="" ns_b=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$ns_a" ] && ip netns del "$ns_a" 2>/dev/null
  [ -n "$ns_b" ] && ip netns del "$ns_b" 2>/dev/null
  rm -rf "$work" "$seg_a" "$seg_a.inventory"* "$seg_b" "$seg_b.inventory"*
}
trap cleanup EXIT

ip_a=127.0.0.1 ip_b=127.0.0.1 exec_a=() exec_b=()
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null && [ -z "${LOOPBACK:-}" ]; then
  ns_a="mcbench-a-$$" ns_b="mcbench-b-$$"
  ip netns add "$ns_a" && ip netns add "$ns_b"
  ip link add "mcb$$a" type veth peer name "mcb$$b"
  ip link set "mcb$$a" netns "$ns_a" && ip link set "mcb$$b" netns "$ns_b"
  ip_a=10.250.0.1 ip_b=10.250.0.2
  ip -n "$ns_a" addr add "$ip_a/24" dev "mcb$$a" && ip -n "$ns_a" link set "mcb$$a" up && ip -n "$ns_a" link set lo up
  ip -n "$ns_b" addr add "$ip_b/24" dev "mcb$$b" && ip -n "$ns_b" link set "mcb$$b" up && ip -n "$ns_b" link set lo up
  exec_a=(ip netns exec "$ns_a") exec_b=(ip netns exec "$ns_b")
  echo "cross-host: veth between network namespaces ($ip_a <-> $ip_b)"
else
  echo "cross-host: loopback (run as root for a veth link between namespaces)"
fi

wait_for() { for _ in $(seq 1 200); do grep -q "$2" "$1" && return 0; sleep 0.1; done; cat "$1"; exit 1; }

"${exec_a[@]}" target/release/mooncake_master --rpc_address "$ip_a" --rpc_port 59051 \
  --metrics_host "$ip_a" --metrics_port 0 2>"$work/master.log" &
pids+=($!)
wait_for "$work/master.log" "Master service started"
for host in a b; do
  if [ $host = a ]; then ip=$ip_a seg=$seg_a port=59052 ex=("${exec_a[@]}"); else ip=$ip_b seg=$seg_b port=59053 ex=("${exec_b[@]}"); fi
  "${ex[@]}" target/release/mooncake_client --host "$ip" --port $port --http_port 0 \
    --master_server_address "$ip_a:59051" --global_segment_size "${SEGMENT:-1GB}" \
    --ipc_socket_path "$work/$host.sock" --segment_path "$seg" 2>"$work/$host.log" &
  pids+=($!)
  wait_for "$work/$host.log" "mooncake_client ready"
done
target/release/mooncake_client --embedded-master --master_server_address 127.0.0.1:0 \
  --embedded_metrics_port 0 --host 127.0.0.1 --port 59054 --http_port 0 \
  --global_segment_size "${SEGMENT:-1GB}" --ipc_socket_path "$work/e.sock" \
  --segment_path "$seg_a.e" 2>"$work/e.log" &
pids+=($!)
wait_for "$work/e.log" "mooncake_client ready"
for run in 1 2 3; do
  echo "== single host, embedded master: run $run"
  MC_SOCKET="$work/e.sock" target/release/examples/dummy_bench
done
kill "${pids[-1]}"; rm -f "$seg_a.e" "$seg_a.e.inventory"*
for run in 1 2 3; do
  echo "== separate master process, then cross-host: run $run"
  MC_SOCKET="$work/a.sock" MC_REMOTE_SEGMENT="$ip_b:59053" target/release/examples/dummy_bench
done
