# Sourced by the benchmarks that run upstream's wheel and this project's package
# one after the other (inprocess.sh, failover.sh): installs upstream's 0.3.13.post1
# wheel into $UP (/tmp/mooncake-upstream or $MOONCAKE_UPSTREAM_VENV; needs the
# Debian package libibverbs1) and this checkout's package into .venv. Sets UP and
# UPBIN (the directory of upstream's binaries), a work directory that goes at exit,
# and start_side / stop_side: a master and a real client for one side.
export MC_TCP_BIND_ADDRESS=127.0.0.1
UP="${MOONCAKE_UPSTREAM_VENV:-/tmp/mooncake-upstream}"
if [ ! -x "$UP/bin/python" ] || ! "$UP/bin/python" -c "import mooncake.store" 2>/dev/null; then
  dpkg -s libibverbs1 >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libibverbs1; }
  python3 -m venv "$UP"
  "$UP/bin/pip" install -q mooncake-transfer-engine-non-cuda==0.3.13.post1
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q maturin
.venv/bin/python -m pip install -q --force-reinstall --no-deps ./python
UPBIN=$(echo "$UP"/lib/python3*/site-packages/mooncake)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start_side NAME MASTER CLIENT [client flags...]: the master on 127.0.0.1:59261 and
# a real client on port 59263 (segment $SEGMENT, 2 GB by default).
start_side() {
  local name=$1 master=$2 client=$3
  shift 3
  "$master" --rpc_address=127.0.0.1 --rpc_port=59261 --metrics_port=59262 >"$work/$name-master.log" 2>&1 &
  pids+=($!)
  sleep 2
  "$client" --host=127.0.0.1 --port=59263 --global_segment_size="${SEGMENT:-2 GB}" \
    --master_server_address=127.0.0.1:59261 --metadata_server=P2PHANDSHAKE "$@" >"$work/$name-client.log" 2>&1 &
  pids+=($!)
  sleep 4
}

stop_side() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
  rm -f /dev/shm/mooncake_client_59263.segment*
}
