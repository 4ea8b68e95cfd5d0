#!/usr/bin/env bash
# Differential run: the same seeded, generated sequences of store calls (put, get,
# upsert, exist, size, removes, batches, buffers; valid and invalid keys and sizes)
# against upstream's wheel with upstream's master, and against this project's
# package with its master; prints every call whose answer differs. Each seed runs
# three times: with the client in the Python process (`setup`), in dummy mode
# (`setup_dummy`) against each side's own `mooncake_client`, and with the client in
# the Python process contributing no segment (`setup` with size 0: values live in
# that `mooncake_client`'s segment; ours sends its calls to it). Then the masters'
# admin HTTP answers (admin_http.py), replica tasks and segment calls
# (segments_tasks.py) and, when torch is there, tensor objects (tensors.py).
#
#   scripts/differential/run.sh [SEEDS] [CALLS] [strict]   (default: 3 seeds x 300 calls)
#
# `strict` leaves out the one known, deliberate difference (see sequence.py); the
# script then exits non-zero when any call answers differently.
#
# Installs upstream's wheel into /tmp/mooncake-upstream or $MOONCAKE_UPSTREAM_VENV
# (needs the Debian package libibverbs1) and this project's into .venv
# (scripts/test.sh does that). Tensor objects are compared too when torch imports
# in upstream's venv (scripts/differential/tensors.py, and the parallel tensor
# calls: scripts/differential/parallel.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS="${1:-3}" CALLS="${2:-300}" MODE="${3:-}"
UP="${MOONCAKE_UPSTREAM_VENV:-/tmp/mooncake-upstream}"
if [ ! -x "$UP/bin/mooncake_master" ]; then
  dpkg -s libibverbs1 >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libibverbs1; }
  python3 -m venv "$UP"
  "$UP/bin/pip" install -q mooncake-transfer-engine-non-cuda==0.3.13.post1
fi
cargo build -q -p mooncake-master --bin mooncake_master -p mooncake-realclient --bin mooncake_client
export MC_TCP_BIND_ADDRESS=127.0.0.1
# $UP/bin/mooncake_* are Python wrappers that leave their binary running when killed;
# start the binaries themselves so the cleanup below really stops them.
UPBIN=$(echo "$UP"/lib/python3*/site-packages/mooncake)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
"$UPBIN/mooncake_master" --rpc_address=127.0.0.1 --rpc_port=51551 --metrics_port=19553 >"$work/up.log" 2>&1 &
pids+=($!)
target/debug/mooncake_master --rpc_address=127.0.0.1 --rpc_port=52551 --metrics_port=19554 >"$work/ours.log" 2>&1 &
pids+=($!)
sleep 2
for seed in $(seq 1 "$SEEDS"); do
  "$UP/bin/python" scripts/differential/sequence.py 127.0.0.1:51551 "$seed" "$CALLS" $MODE >"$work/up-$seed.json" 2>/dev/null
  .venv/bin/python scripts/differential/sequence.py 127.0.0.1:52551 "$seed" "$CALLS" $MODE >"$work/ours-$seed.json" 2>/dev/null
done
# The admin HTTP answers, while each master has only the asking client's segment.
admin=0
"$UP/bin/python" scripts/differential/admin_http.py 127.0.0.1:51551 127.0.0.1:19553 "$work/admin-up.json" 2>/dev/null
.venv/bin/python scripts/differential/admin_http.py 127.0.0.1:52551 127.0.0.1:19554 "$work/admin-ours.json" 2>/dev/null
python3 scripts/differential/admin_http.py compare "$work/admin-up.json" "$work/admin-ours.json" || admin=1
"$UP/bin/python" scripts/differential/segments_tasks.py 127.0.0.1:51551 "$work/st-up.json" 2>/dev/null
.venv/bin/python scripts/differential/segments_tasks.py 127.0.0.1:52551 "$work/st-ours.json" 2>/dev/null
python3 scripts/differential/segments_tasks.py compare "$work/st-up.json" "$work/st-ours.json" || admin=1
# The real clients start only now: with one mounted, the in-process runs above could
# place replicas on its segment, and upstream's in-process client then fails some
# transfers to it (-800) where ours does not, which is not what this run compares.
"$UPBIN/mooncake_client" --host=127.0.0.1 --port=51557 --global_segment_size="256 MB" \
  --master_server_address=127.0.0.1:51551 --metadata_server=P2PHANDSHAKE >"$work/up-client.log" 2>&1 &
pids+=($!)
target/debug/mooncake_client --host=127.0.0.1 --port=52557 --global_segment_size="256 MB" --keep_segment=false \
  --master_server_address=127.0.0.1:52551 --metadata_server=P2PHANDSHAKE >"$work/ours-client.log" 2>&1 &
pids+=($!)
sleep 4
for seed in $(seq 1 "$SEEDS"); do
  "$UP/bin/python" scripts/differential/sequence.py 127.0.0.1:51551 "$seed" "$CALLS" $MODE dummy=127.0.0.1:51557 >"$work/up-dummy-$seed.json" 2>/dev/null
  .venv/bin/python scripts/differential/sequence.py 127.0.0.1:52551 "$seed" "$CALLS" $MODE dummy=127.0.0.1:52557 >"$work/ours-dummy-$seed.json" 2>/dev/null
  "$UP/bin/python" scripts/differential/sequence.py 127.0.0.1:51551 "$seed" "$CALLS" $MODE nosegment >"$work/up-nosegment-$seed.json" 2>/dev/null
  .venv/bin/python scripts/differential/sequence.py 127.0.0.1:52551 "$seed" "$CALLS" $MODE nosegment >"$work/ours-nosegment-$seed.json" 2>/dev/null
done
# Tensor objects byte for byte: upstream's tensor calls need torch, which its venv
# has only when installed by hand (`$UP/bin/pip install torch`: several GB).
tensors=0
if "$UP/bin/python" -c "import torch" 2>/dev/null; then
  "$UP/bin/python" scripts/differential/tensors.py write 127.0.0.1:51551 "$work/t-up.json" 2>/dev/null
  .venv/bin/python scripts/differential/tensors.py check 127.0.0.1:52551 "$work/t-up.json" "$work/t-ours.json" 2>/dev/null || tensors=1
  "$UP/bin/python" scripts/differential/tensors.py read 127.0.0.1:51551 "$work/t-ours.json" 2>/dev/null || tensors=1
  "$UP/bin/python" scripts/differential/parallel.py run 127.0.0.1:51551 127.0.0.1:19553 "$work/p-up.json" 2>/dev/null
  .venv/bin/python scripts/differential/parallel.py run 127.0.0.1:52551 127.0.0.1:19554 "$work/p-ours.json" 2>/dev/null
  python3 scripts/differential/parallel.py compare "$work/p-up.json" "$work/p-ours.json" || tensors=1
else
  echo "tensors: skipped (torch does not import in $UP; install it there to compare tensor objects)"
fi
python3 - "$work" "$SEEDS" "$MODE" "$((tensors | admin))" <<'PY'
import json, sys
work, seeds = sys.argv[1], int(sys.argv[2])
total = differing = 0
for seed in range(1, seeds + 1):
    for mode in ("", "dummy-", "nosegment-"):
        up = json.load(open(f"{work}/up-{mode}{seed}.json"))
        ours = json.load(open(f"{work}/ours-{mode}{seed}.json"))
        if up[0][1] != 0 or ours[0][1] != 0:
            # Both sides failing to set up would otherwise "agree" on every call.
            print(f"{mode}seed {seed}: setup returned upstream {up[0][1]}, ours {ours[0][1]}")
            sys.exit(1)
        if len(up) != len(ours):
            differing += 1
            print(f"{mode}seed {seed}: upstream made {len(up)} calls, ours {len(ours)}")
        for i, (a, b) in enumerate(zip(up, ours)):
            total += 1
            if a[:2] != b[:2]:
                differing += 1
                print(f"{mode}seed {seed} call {i} {a[0]} {a[2] if len(a) > 2 else ''}: upstream {a[1]!r} ours {b[1]!r}")
print(f"{differing} of {total} calls answered differently")
print(f"differential: {total - differing} passed, {differing} failed")
sys.exit(1 if (differing or sys.argv[4] == "1") and sys.argv[3] == "strict" else 0)
PY
