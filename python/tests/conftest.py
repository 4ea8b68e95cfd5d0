"""Fixtures: the real processes, started from the console scripts of the installed
wheel (``mooncake_master``, ``mooncake_client``), on free ports, killed at the end."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from mooncake.store import MooncakeDistributedStore

MB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_busy(port):
    with socket.socket() as s:
        # As the servers do: a port with connections in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return False
        except OSError:
            return True


def command(name):
    """A console script of the installed package (next to this Python)."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    assert found, f"{name} is not installed (pip install ./python)"
    return found


class Proc:
    """A started process whose output goes to a log file we can wait on."""

    def __init__(self, argv, env=None, cwd=None):
        self.log_path = tempfile.mktemp(prefix="mooncake-test-", suffix=".log")
        self.log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.argv = argv
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      env=full_env, cwd=cwd, start_new_session=True)

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_for(self, pattern, timeout=30.0, count=1):
        """Waits until ``pattern`` (a regex) appears ``count`` times; returns the last match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.output()))
            if len(found) >= count:
                return found[-1]
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.argv[0]} exited ({self.popen.returncode}) before printing "
                    f"{pattern!r}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output()}")

    def kill(self, sig=signal.SIGKILL):
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.log.close()

    def stop(self):
        """SIGTERM, as an operator would; the exit status."""
        self.kill(signal.SIGTERM)
        return self.popen.returncode


class Master:
    def __init__(self, *extra):
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc = Proc([command("mooncake_master"), f"--rpc_port={self.port}",
                          f"--metrics_port={self.metrics_port}", *extra])
        self.proc.wait_for(r"Master service started on port")
        self.address = f"127.0.0.1:{self.port}"


class RealClient:
    def __init__(self, master, segment="256MB", port=None):
        self.port = port or free_port()
        self.segment_path = f"/dev/shm/mooncake-pytest-{os.getpid()}-{self.port}.segment"
        self.start(master, segment)

    def start(self, master, segment="256MB"):
        self.proc = Proc([command("mooncake_client"), f"--port={self.port}",
                          f"--global_segment_size={segment}",
                          f"--master_server_address={master.address}",
                          "--http_port=0", f"--segment_path={self.segment_path}"])
        self.proc.wait_for(r"mooncake_client ready")
        self.address = f"127.0.0.1:{self.port}"

    def cleanup(self):
        # Stopped as an operator would, so its segment is unmounted at once: a
        # killed one stays mounted until its liveness TTL runs out, and puts of
        # later tests with no segment of their own could be placed in it.
        self.proc.stop()
        for p in (self.segment_path, self.segment_path + ".inventory",
                  self.segment_path + ".inventory.journal"):
            if os.path.exists(p):
                os.unlink(p)


@pytest.fixture(scope="session")
def master():
    m = Master()
    yield m
    m.proc.kill()


@pytest.fixture(scope="session")
def real_client(master):
    rc = RealClient(master)
    yield rc
    rc.cleanup()


def setup_in_process(store, master, segment=64 * MB, local_buffer=16 * MB):
    return store.setup("localhost", "P2PHANDSHAKE", segment, local_buffer, "tcp", "", master.address)


def real_client_name(rc):
    """The segment name of the real client ``rc``."""
    d = MooncakeDistributedStore()
    assert d.setup_dummy(0, 0, rc.address) == 0
    name = d.get_hostname()
    d.close()
    return name


@pytest.fixture(params=["dummy", "in_process", "in_process_no_segment"])
def store(request, master, real_client):
    """A set-up store in each mode: connected to ``mooncake_client`` (dummy),
    running its own client in this process (``setup``), or running one with no
    segment, whose calls go to ``mooncake_client`` on this host."""
    s = MooncakeDistributedStore()
    if request.param == "dummy":
        assert s.setup_dummy(64 * MB, 16 * MB, real_client.address) == 0
    elif request.param == "in_process":
        assert setup_in_process(s, master) == 0
    else:
        assert setup_in_process(s, master, segment=0) == 0
        assert "via the host's real client" in repr(s)
    s.mode = request.param
    # The segment its puts land in by default (its own, or the real client's).
    s.segment = real_client_name(real_client) if request.param == "in_process_no_segment" else s.get_hostname()
    yield s
    s.close()
