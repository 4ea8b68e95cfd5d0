"""Failover benchmark (issue "High availability"): an etcd, two masters in HA mode,
one store set up with ``etcd://…`` writing and reading without pause; each round
kills the serving leader with SIGKILL and measures the time until the first put
and the first get succeed again; the killed master comes back as a standby before
the next round. At the end every acknowledged object is read back: the ones
missing or wrong are counted.

    python failover.py --master BIN [--rounds N] [--etcd /usr/bin/etcd]

Run with this project's package (``.venv/bin/python``, ``--master
.venv/bin/mooncake_master``) or with upstream's wheel and its master, the same
script for both (scripts/bench/failover.sh runs both, one after the other).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from mooncake.store import MooncakeDistributedStore


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=1) as r:
            return r.read().decode()
    except Exception:
        return ""


class Master:
    def __init__(self, binary, etcd, log_dir):
        self.binary, self.etcd = binary, etcd
        self.rpc, self.admin = free_port(), free_port()
        self.log = open(os.path.join(log_dir, f"master-{self.rpc}.log"), "ab")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--enable_ha=true", "--ha_backend_type=etcd",
             f"--ha_backend_connstring={self.etcd}", f"--etcd_endpoints={self.etcd}",
             "--rpc_address=127.0.0.1", f"--rpc_port={self.rpc}",
             "--metrics_host=127.0.0.1", f"--metrics_port={self.admin}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def serving(self):
        return http(f"127.0.0.1:{self.admin}", "/ha_status").strip() == "serving"

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_leader(masters, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in masters:
            if m.serving():
                return m
        time.sleep(0.05)
    raise SystemExit("no leader: see the master logs")


class Load(threading.Thread):
    """Puts fresh 4 KiB objects and reads the last acknowledged one back."""

    def __init__(self, store):
        super().__init__(daemon=True)
        self.store = store
        self.acked = []
        # (started, finished) of each successful call.
        self.put_ok = []
        self.get_ok = []
        self.wrong = 0
        self.stop = False

    @staticmethod
    def first_after(calls, t):
        """Seconds from ``t`` to the end of the first successful call started after it."""
        done = [f for s, f in calls if s > t]
        return min(done) - t if done else None

    def run(self):
        i = 0
        while not self.stop:
            key = f"fo-{i}"
            value = key.encode().ljust(4096, b"#")
            i += 1
            started = time.monotonic()
            if self.store.put(key, value) == 0:
                self.acked.append((key, value))
                self.put_ok.append((started, time.monotonic()))
            if self.acked:
                k, v = self.acked[-1]
                started = time.monotonic()
                got = self.store.get(k)
                if got == v:
                    self.get_ok.append((started, time.monotonic()))
                elif got:
                    self.wrong += 1
            time.sleep(0.002)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--master", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    ap.add_argument("--label", default="ours")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mc-failover-")
    cport, pport = free_port(), free_port()
    etcd = subprocess.Popen(
        [args.etcd, "--name=b", f"--data-dir={work}/etcd",
         f"--listen-client-urls=http://127.0.0.1:{cport}",
         f"--advertise-client-urls=http://127.0.0.1:{cport}",
         f"--listen-peer-urls=http://127.0.0.1:{pport}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{pport}",
         f"--initial-cluster=b=http://127.0.0.1:{pport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"127.0.0.1:{cport}"
    masters = []
    try:
        time.sleep(1.5)
        masters = [Master(args.master, endpoint, work) for _ in range(2)]
        wait_leader(masters)
        store = MooncakeDistributedStore()
        rc = store.setup("localhost", "P2PHANDSHAKE", 256 << 20, 64 << 20, "tcp", "",
                         f"etcd://{endpoint}")
        if rc != 0:
            raise SystemExit(f"{args.label}: setup with etcd:// failed ({rc})")
        load = Load(store)
        load.start()
        time.sleep(2)
        puts, gets = [], []
        for r in range(args.rounds):
            leader = wait_leader(masters)
            leader.kill()  # returns once the process is gone (reaped)
            killed_at = time.monotonic()
            deadline = killed_at + 60
            put_s = get_s = None
            while time.monotonic() < deadline and (put_s is None or get_s is None):
                time.sleep(0.005)
                put_s = Load.first_after(load.put_ok, killed_at)
                get_s = Load.first_after(load.get_ok, killed_at)
            put_s = float("inf") if put_s is None else put_s
            get_s = float("inf") if get_s is None else get_s
            puts.append(put_s)
            gets.append(get_s)
            print(f"{args.label} round {r + 1}: first put {put_s:.3f} s, first get {get_s:.3f} s after kill -9")
            leader.start()  # back as a standby
            time.sleep(3)
        load.stop = True
        load.join()
        lost = sum(1 for k, v in load.acked if store.get(k) != v)
        print(f"{args.label}: failover put median {statistics.median(puts):.3f} s max {max(puts):.3f} s; "
              f"get median {statistics.median(gets):.3f} s max {max(gets):.3f} s; "
              f"acknowledged {len(load.acked)}, lost or wrong afterwards {lost}, wrong reads {load.wrong}")
        store.close()
    finally:
        for m in masters:
            m.kill()
        os.killpg(etcd.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
