#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what is missing,
# checks formatting and lints, then runs unit and integration tests (which spawn the
# real binaries on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental caches double the size of target/ and buy nothing on a fresh machine.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

disk() { # what the build takes and what is left, so a full disk is seen coming
  echo "   disk: target/ $(du -sh target 2>/dev/null | cut -f1), free $(df -h . | awk 'NR==2 {print $4}')"
}

apt_install() {
  # Installs Debian packages that are missing (needs root; prints why when not).
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing packages ${missing[*]} and not root; install them first" >&2
    return 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
# protoc builds the etcd client (HA); etcd itself serves the HA tests (they skip,
# saying why, without it).
apt_install pkg-config protobuf-compiler
apt_install etcd-server || echo "etcd-server not installed: the HA tests will skip"

echo "== cargo fmt --check"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "rustfmt not installed; skipping format check"
fi

echo "== cargo clippy"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets -- -D warnings
else
  echo "clippy not installed; skipping lints"
fi

echo "== cargo build (the binaries the integration tests spawn)"
cargo build --workspace --bins

echo "== cargo test"
cargo test --workspace --all-targets
disk
# What follows needs only the debug binaries (the differential run starts them):
# where disk is short, the test build's intermediate files go before the release
# builds of the wheels.
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "$free_kib" -lt $((12 * 1024 * 1024)) ]; then
  echo "   less than 12 GiB free: removing target/debug's intermediate files"
  rm -rf target/debug/deps target/debug/build target/debug/examples target/debug/incremental
  disk
fi

echo "== Python package (wheel built from this checkout) and its tests"
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || { apt_install python3-venv && "$PYTHON" -m venv .venv; }
fi
# numpy exercises the tensor APIs; torch's CPU wheels are not reachable from CI
# (its tests skip with the reason when it does not import).
.venv/bin/python -m pip install -q --upgrade pip maturin pytest numpy
# Offline validation of deploy/k8s (python/tests/test_deploy.py skips without it).
.venv/bin/python -m pip install -q kubernetes-validate || echo "kubernetes-validate not installed: the manifest test will skip"
# The dashboard's browser test drives the system's Chromium with Playwright (it
# skips, saying why, when either is missing).
apt_install chromium || echo "chromium not installed: the dashboard test will skip"
.venv/bin/python -m pip install -q playwright || echo "playwright not installed: the dashboard test will skip"
# Exactly what a user runs on a new machine.
.venv/bin/python -m pip install -q --force-reinstall --no-deps ./python
disk
(cd python/tests && ../../.venv/bin/python -m pytest -q -rs)

echo "== Binary wheels for machines without Rust (scripts/build-wheel.sh, scripts/test-wheel.sh)"
rm -rf target/wheels
bash scripts/build-wheel.sh target/wheels
disk
bash scripts/test-wheel.sh target/wheels

echo "== Differential run against upstream's wheel (scripts/differential, strict)"
# Upstream's own package answers the same generated calls; any difference fails.
UPSTREAM=/tmp/mooncake-upstream
if apt_install libibverbs1 && { [ -x "$UPSTREAM/bin/mooncake_master" ] || {
    "$PYTHON" -m venv "$UPSTREAM" &&
    "$UPSTREAM/bin/pip" install -q mooncake-transfer-engine-non-cuda==0.3.13.post1; }; }; then
  bash scripts/differential/run.sh 3 300 strict
else
  echo "skipped: upstream's wheel (mooncake-transfer-engine-non-cuda) could not be installed here"
fi
