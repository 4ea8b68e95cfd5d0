#!/usr/bin/env bash
# Binary wheels of the Python package for machines without a Rust toolchain:
#  - one stable-ABI wheel for CPython >= 3.11 (`cp311-abi3`),
#  - one wheel each for CPython 3.9 and 3.10 (the buffer protocol joined the limited
#    API only in 3.11), built when that interpreter is found (pyenv or PATH);
# all with a manylinux tag maturin checks against the symbols the library uses.
# The console scripts (mooncake_master, mooncake_client,
# mooncake_http_metadata_server, mooncake) are inside.
#
#   scripts/build-wheel.sh [OUT_DIR]     (default: target/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/wheels}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
[ -x .venv/bin/python ] || python3 -m venv .venv
# zig links against an old glibc, so the wheel runs on older distributions than this one.
.venv/bin/python -m pip install -q "maturin>=1.7,<2" ziglang
MATURIN=.venv/bin/maturin
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$OUT"
# Glibc 2.28 (manylinux_2_28: RHEL 8, Debian 10+, Ubuntu 18.10+): zig links the
# library against it, and maturin checks the symbols before it tags the wheel.
COMPAT="${MOONCAKE_WHEEL_COMPAT:-manylinux_2_28}"

interpreter() { # version -> path, or nothing
  local v=$1
  for c in "$HOME/.pyenv/versions/$v"*/bin/python"$v" "$(command -v "python$v" 2>/dev/null)"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
}

PY311=$(interpreter 3.11)
PY311="${PY311:-$(command -v python3)}"
echo "== abi3 wheel (CPython >= 3.11)"
"$MATURIN" build --release --strip -m python/Cargo.toml --features abi3 -i "$PY311" \
  --zig --compatibility "$COMPAT" -o "$OUT"
for v in 3.10 3.9; do
  py=$(interpreter "$v")
  if [ -z "$py" ]; then
    echo "== no python$v here: no cp${v/./} wheel"
    continue
  fi
  echo "== wheel for CPython $v"
  "$MATURIN" build --release --strip -m python/Cargo.toml -i "$py" --zig --compatibility "$COMPAT" \
    -o "$OUT"
done
ls -l "$OUT"/*.whl
