"""``setup()`` with no segment of its own on a host that runs ``mooncake_client``:
its calls go to that real client, as a dummy's would (``MC_HOST_REAL_CLIENT``),
and back through this process's own client while that real client is away.
Checked by where each value lands (the segment its replica names) and by its
bytes."""

import ctypes
import threading
import time
import uuid

from conftest import MB, Master, RealClient
from mooncake.store import MooncakeDistributedStore


def uniq(prefix="route"):
    return f"{prefix}-{uuid.uuid4().hex}"


def segment_name_of(address):
    """The segment name of the real client at ``address`` (what it calls itself)."""
    d = MooncakeDistributedStore()
    assert d.setup_dummy(0, 0, address) == 0
    name = d.get_hostname()
    d.close()
    return name


def in_process(master, monkeypatch, route=None):
    if route is None:
        monkeypatch.delenv("MC_HOST_REAL_CLIENT", raising=False)
    else:
        monkeypatch.setenv("MC_HOST_REAL_CLIENT", route)
    s = MooncakeDistributedStore()
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 4 * MB, "tcp", "", master.address) == 0
    return s


def wait_until(what, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return False


def test_calls_go_to_the_largest_real_client_on_this_host_or_the_one_named(monkeypatch):
    m = Master()
    big = RealClient(m, segment="96MB")
    small = RealClient(m, segment="32MB")
    try:
        names = {"big": segment_name_of(big.address), "small": segment_name_of(small.address)}
        value = bytes(range(256)) * 1024

        s = in_process(m, monkeypatch)
        assert "via the host's real client" in repr(s)
        k = uniq()
        assert s.put(k, value) == 0
        assert s.get(k) == value
        assert [d.segment_name for d in s.get_replica_desc(k)] == [names["big"]]
        # The name of this process's client, not the one its calls go to.
        assert s.get_hostname() not in names.values()
        s.close()

        s = in_process(m, monkeypatch, f"127.0.0.1:{small.port}")
        assert "via the host's real client" in repr(s)
        k = uniq()
        assert s.put(k, value) == 0
        assert [d.segment_name for d in s.get_replica_desc(k)] == [names["small"]]
        s.close()

        # Off, or a name with nothing behind it: this process's client, and the
        # store still works.
        for route in ("off", "/nonexistent/mooncake.sock"):
            s = in_process(m, monkeypatch, route)
            assert "via the host's real client" not in repr(s)
            k = uniq()
            assert s.put(k, value) == 0
            assert s.get(k) == value
            s.close()
    finally:
        small.cleanup()
        big.cleanup()
        m.proc.kill()


def test_a_real_client_of_another_master_is_not_used(monkeypatch):
    ours, theirs = Master(), Master()
    holder = RealClient(ours, segment="32MB")
    stranger = RealClient(theirs, segment="32MB")
    try:
        s = in_process(ours, monkeypatch, f"127.0.0.1:{stranger.port}")
        assert "via the host's real client" not in repr(s)
        k = uniq()
        assert s.put(k, b"x" * 5000) == 0
        assert [d.segment_name for d in s.get_replica_desc(k)] == [segment_name_of(holder.address)]
        s.close()
    finally:
        stranger.cleanup()
        holder.cleanup()
        theirs.proc.kill()
        ours.proc.kill()


def test_while_the_real_client_is_away_calls_go_through_this_process_and_come_back(monkeypatch):
    m = Master()
    host = RealClient(m, segment="96MB")
    other = RealClient(m, segment="32MB")
    try:
        s = in_process(m, monkeypatch)
        assert "via the host's real client" in repr(s)
        kept = uniq()
        kept_value = b"kept" * 50_000
        assert s.put(kept, kept_value) == 0

        host.proc.kill()
        # Once the master has dropped the dead client's segment, puts land in the
        # other one, through this process's own client.
        during = uniq()
        during_value = b"during" * 30_000
        assert wait_until(lambda: s.put(during, during_value) == 0), "no put succeeded"
        assert "via the host's real client" not in repr(s)
        assert s.get(during) == during_value
        assert [d.segment_name for d in s.get_replica_desc(during)] == [segment_name_of(other.address)]

        # Restarted on its segment file: its objects come back, and calls go to it again.
        host.start(m, segment="96MB")
        assert wait_until(lambda: "via the host's real client" in repr(s))
        assert wait_until(lambda: s.get(kept) == kept_value), "the kept object did not come back"
        after = uniq()
        assert s.put(after, b"after" * 1000) == 0
        assert [d.segment_name for d in s.get_replica_desc(after)] == [segment_name_of(host.address)]
        assert s.get(during) == during_value
        s.close()
    finally:
        other.cleanup()
        host.cleanup()
        m.proc.kill()


def test_a_real_client_started_after_setup_is_found_and_used(monkeypatch):
    m = Master()
    host = None
    try:
        s = in_process(m, monkeypatch)
        assert "via the host's real client" not in repr(s)
        # Registered before the real client exists: registered with it once found.
        buf = (ctypes.c_uint8 * MB)()
        addr = ctypes.addressof(buf)
        assert s.register_buffer(addr, MB) == 0
        ctypes.memmove(addr, bytes(range(256)) * 4096, MB)

        host = RealClient(m, segment="64MB")
        assert wait_until(lambda: "via the host's real client" in repr(s), timeout=30)
        k = uniq()
        assert s.put_from(k, addr, MB) == 0
        assert [d.segment_name for d in s.get_replica_desc(k)] == [segment_name_of(host.address)]
        ctypes.memset(addr, 0, MB)
        assert s.get_into(k, addr, MB) == MB
        assert ctypes.string_at(addr, MB) == bytes(range(256)) * 4096
        assert s.unregister_buffer(addr) == 0
        s.close()
    finally:
        if host:
            host.cleanup()
        m.proc.kill()


def test_racing_callers_never_read_wrong_bytes_while_the_real_client_dies_and_returns(monkeypatch):
    """Four threads put, read back and remove their own values (zero-copy and
    bytes) while the host's real client is killed and restarted under them: every
    read is the exact value or a failure, never other bytes; once it is back,
    every thread works again."""
    m = Master()
    host = RealClient(m, segment="96MB")
    other = RealClient(m, segment="64MB")
    try:
        s = in_process(m, monkeypatch)
        assert "via the host's real client" in repr(s)
        stop = threading.Event()
        wrong, done = [], [0] * 4

        def worker(t):
            buf = (ctypes.c_uint8 * (2 * MB))()
            addr = ctypes.addressof(buf)
            assert s.register_buffer(addr, 2 * MB) == 0
            i = 0
            while not stop.is_set():
                i += 1
                k = f"race-{t}-{i}-{uuid.uuid4().hex[:6]}"
                n = [4096, 70_000, 600_000, 2 * MB - 3][i % 4]
                value = bytes([(t * 31 + i + j) % 251 for j in range(256)]) * (n // 256 + 1)
                value = value[:n]
                if i % 2:
                    ctypes.memmove(addr, value, n)
                    if s.put_from(k, addr, n) != 0:
                        continue
                    ctypes.memset(addr, 0, n)
                    got = s.get_into(k, addr, n)
                    if got == n and ctypes.string_at(addr, n) != value:
                        wrong.append((k, "get_into"))
                    elif got >= 0 and got != n:
                        wrong.append((k, f"get_into returned {got}"))
                else:
                    if s.put(k, value) != 0:
                        continue
                    got = s.get(k)
                    if got and got != value:
                        wrong.append((k, "get"))
                if got == n or got == value:
                    done[t] += 1
                # Each value goes once checked: the loop writes faster than
                # eviction frees space, and read values are leased for a while.
                s.remove(k, True)
            s.unregister_buffer(addr)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        time.sleep(1.5)
        host.proc.kill()
        time.sleep(3)
        host.start(m, segment="96MB")
        assert wait_until(lambda: "via the host's real client" in repr(s))
        before = list(done)
        time.sleep(2)
        stop.set()
        for th in threads:
            th.join()
        assert wrong == []
        assert all(d > b for d, b in zip(done, before)), (before, done)
        s.close()
    finally:
        other.cleanup()
        host.cleanup()
        m.proc.kill()
