#!/usr/bin/env bash
# Cross-host transfers against raw TCP over the same link, same run: two network
# namespaces joined by a veth pair (needs root), a master and real client A in
# the first, real client B in the second. Each round measures raw TCP between the
# namespaces (realclient/examples/raw_tcp_bench.rs: 16 MiB over 1, 2 and 4
# streams, both directions) and then the store (scripts/bench/crosshost.py: a
# dummy on A putting 16 MiB values and 64 x 1 MiB batches whose replica is on B,
# and reading them back), and prints the store's share of the best raw figure.
# Raw writes are measured twice: into one buffer reused (warm in the caches) and
# into the next of 8 buffers in turn (cold, as a put's bytes land in B's segment).
# ROUNDS (3) rounds; SKIP_INSTALL=1 keeps the installed wheel. Results:
# docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null; then
  echo "crosshost.sh: skipped, network namespaces need root and iproute2"
  exit 0
fi
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build -q --release -p mooncake-realclient --bin mooncake_client -p mooncake-master \
  --bin mooncake_master -p mooncake-realclient --example raw_tcp_bench
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q maturin
[ -n "${SKIP_INSTALL:-}" ] || .venv/bin/python -m pip install -q --force-reinstall --no-deps ./python
work=$(mktemp -d)
ns_a="mcx-a-$$" ns_b="mcx-b-$$"
seg_a="/dev/shm/mooncake-xh-a-$$.segment" seg_b="/dev/shm/mooncake-xh-b-$$.segment"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work" "$seg_a" "$seg_a.inventory"* "$seg_b" "$seg_b.inventory"*
}
trap cleanup EXIT
ip netns add "$ns_a" && ip netns add "$ns_b"
ip link add "mcx$$a" type veth peer name "mcx$$b"
ip link set "mcx$$a" netns "$ns_a" && ip link set "mcx$$b" netns "$ns_b"
ip_a=10.251.0.1 ip_b=10.251.0.2
ip -n "$ns_a" addr add "$ip_a/24" dev "mcx$$a" && ip -n "$ns_a" link set "mcx$$a" up && ip -n "$ns_a" link set lo up
ip -n "$ns_b" addr add "$ip_b/24" dev "mcx$$b" && ip -n "$ns_b" link set "mcx$$b" up && ip -n "$ns_b" link set lo up
in_a=(ip netns exec "$ns_a") in_b=(ip netns exec "$ns_b")
wait_for() { for _ in $(seq 1 200); do grep -q "$2" "$1" && return 0; sleep 0.1; done; cat "$1"; exit 1; }

"${in_b[@]}" target/release/examples/raw_tcp_bench serve "$ip_b:59071" >"$work/raw.log" 2>&1 &
pids+=($!)
# The same, receiving each write into the next of 8 destinations (as the
# benchmark's puts land in 8 places of B's segment, out of the CPU caches).
"${in_b[@]}" target/release/examples/raw_tcp_bench serve "$ip_b:59072" 8 >"$work/raw-cold.log" 2>&1 &
pids+=($!)
"${in_a[@]}" target/release/mooncake_master --rpc_address "$ip_a" --rpc_port 59061 \
  --metrics_host "$ip_a" --metrics_port 0 2>"$work/master.log" &
pids+=($!)
wait_for "$work/master.log" "Master service started"
"${in_a[@]}" target/release/mooncake_client --host "$ip_a" --port 59062 --http_port 0 \
  --master_server_address "$ip_a:59061" --global_segment_size 1GB \
  --ipc_socket_path "$work/a.sock" --segment_path "$seg_a" 2>"$work/a.log" &
pids+=($!)
"${in_b[@]}" target/release/mooncake_client --host "$ip_b" --port 59063 --http_port 0 \
  --master_server_address "$ip_a:59061" --global_segment_size 1GB \
  --ipc_socket_path "$work/b.sock" --segment_path "$seg_b" 2>"$work/b.log" &
pids+=($!)
wait_for "$work/a.log" "mooncake_client ready"
wait_for "$work/b.log" "mooncake_client ready"
echo "veth between network namespaces ($ip_a <-> $ip_b)"
for round in $(seq 1 "${ROUNDS:-3}"); do
  echo "== round $round"
  "${in_a[@]}" target/release/examples/raw_tcp_bench run "$ip_b:59071" 16 30 | tee "$work/raw.$round"
  "${in_a[@]}" target/release/examples/raw_tcp_bench run "$ip_b:59072" 16 30 | grep write \
    | sed 's/^raw tcp/raw tcp into 8 rotating destinations:/' | tee "$work/raw-cold.$round"
  "${in_a[@]}" .venv/bin/python scripts/bench/crosshost.py --socket "$work/a.sock" \
    --remote "$ip_b:59063" | tee "$work/store.$round"
  best() { grep " $1 " "$work/raw.$round" | awk '{print $(NF-1)}' | sort -g | tail -1; }
  w=$(best write) r=$(best read)
  wc=$(awk '{print $(NF-1)}' "$work/raw-cold.$round" | sort -g | tail -1)
  awk -v w="$w" -v r="$r" -v wc="$wc" '/store 16 MiB put_from/ {p=$(NF-1)} /store 16 MiB get_into/ {g=$(NF-1)}
    END {printf "16 MiB: put %.2f GB/s = %.0f%% of raw write (%.2f; %.0f%% of raw write into rotating destinations, %.2f), get %.2f GB/s = %.0f%% of raw read (%.2f)\n", p, 100*p/w, w, 100*p/wc, wc, g, 100*g/r, r}' "$work/store.$round"
done
