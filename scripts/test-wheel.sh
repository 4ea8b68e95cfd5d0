#!/usr/bin/env bash
# The binary wheels (scripts/build-wheel.sh) on machines without Rust: for each
# CPython found (3.10, 3.11, 3.12, 3.13 through pyenv or PATH), a fresh venv with no
# cargo on PATH installs the wheel for it, starts the wheel's own `mooncake_client
# --embedded-master`, and puts and gets through `setup_dummy`; the `mooncake` command
# must answer too.
#
#   scripts/test-wheel.sh [WHEEL_DIR]    (default: target/wheels, built if empty)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-target/wheels}"
ls "$DIR"/*.whl >/dev/null 2>&1 || bash scripts/build-wheel.sh "$DIR"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
tested=0
port=59600
for v in 3.10 3.11 3.12 3.13; do
  py=""
  for c in "$HOME/.pyenv/versions/$v"*/bin/python"$v" "$(command -v "python$v" 2>/dev/null)"; do
    [ -x "$c" ] && { py=$c; break; }
  done
  if [ -z "$py" ]; then echo "== python$v: not on this machine, skipped"; continue; fi
  tag=$(echo "$v" | tr -d .)
  if [ "$tag" -ge 311 ]; then wheel=$(ls "$DIR"/*-cp311-abi3-*.whl | head -1); else wheel=$(ls "$DIR"/*-cp$tag-cp$tag-*.whl 2>/dev/null | head -1); fi
  if [ -z "$wheel" ]; then echo "== python$v: no wheel for it in $DIR"; exit 1; fi
  echo "== python$v: $(basename "$wheel")"
  venv="$work/venv$tag"
  "$py" -m venv "$venv"
  # No Rust anywhere: only the venv and the system directories.
  clean_path="$venv/bin:/usr/bin:/bin"
  env -i PATH="$clean_path" HOME="$work" "$venv/bin/python" -m pip install -q "$wheel"
  if env -i PATH="$clean_path" sh -c 'command -v cargo rustc' >/dev/null; then
    echo "cargo is on the clean PATH"; exit 1
  fi
  port=$((port + 4))
  env -i PATH="$clean_path" HOME="$work" "$venv/bin/mooncake_client" --embedded-master \
    --master_server_address=127.0.0.1:$port --embedded_metrics_port=$((port + 1)) \
    --host=127.0.0.1 --port=$((port + 2)) --http_port=0 --global_segment_size=64MB \
    --segment_path="/dev/shm/mc-wheel-test-$tag.segment" --keep_segment=false \
    >"$work/client$tag.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q "mooncake_client ready" "$work/client$tag.log" && break; sleep 0.1; done
  grep -q "mooncake_client ready" "$work/client$tag.log" || { cat "$work/client$tag.log"; exit 1; }
  env -i PATH="$clean_path" HOME="$work" "$venv/bin/python" - "127.0.0.1:$((port + 2))" <<'PY'
import sys
from mooncake.store import MooncakeDistributedStore
s = MooncakeDistributedStore()
assert s.setup_dummy(64 << 20, 16 << 20, sys.argv[1]) == 0
value = bytes(range(256)) * 4096
assert s.put("wheel-key", value) == 0
assert s.get("wheel-key") == value
buf = s.get_buffer("wheel-key")
assert bytes(memoryview(buf)) == value  # the buffer protocol, from any version
assert s.is_exist("wheel-key") == 1
s.close()
print(f"  put/get of {len(value)} bytes through mooncake_client: ok ({sys.version.split()[0]})")
PY
  env -i PATH="$clean_path" HOME="$work" "$venv/bin/mooncake" --master=127.0.0.1:$port \
    --admin_port=$((port + 1)) health
  kill "${pids[-1]}"
  tested=$((tested + 1))
done
echo "wheel: tested on $tested interpreters"
if [ "$tested" -eq 0 ]; then
  echo "wheel: skipped: no CPython 3.10-3.13 on this machine (pyenv or PATH) to install it into"
fi
