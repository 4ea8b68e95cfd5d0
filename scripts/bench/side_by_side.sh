# Sourced by the benchmarks that run upstream's wheel and this project's package
# one after the other (inprocess.sh, failover.sh): installs upstream's 0.3.13.post1
# wheel into $UP (/tmp/mooncake-upstream or $MOONCAKE_UPSTREAM_VENV; needs the
# Debian package libibverbs1) and this checkout's package into .venv. Sets UP and
# UPBIN (the directory of upstream's binaries).
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
