"""More segments after start: ``mount_segment`` (a shared-memory file),
``allocate_and_mount_segment`` (memory the real client allocates), and their
``unmount_segment`` / ``unmount_and_free_segment``, checked through the master's
view and by where the bytes of an object land."""

import json
import os
import time
import urllib.request
import uuid

import pytest

from conftest import MB, RealClient, setup_in_process
from mooncake.store import MooncakeDistributedStore, ReplicateConfig

# Upstream's real client answers -1 for whatever it checks itself (compared with its
# wheel): a bad path or size, an id it did not mount, no client set up.
REFUSED = -1


def segment_ids(master):
    url = f"http://127.0.0.1:{master.metrics_port}/get_segments_detail"
    with urllib.request.urlopen(url, timeout=10) as r:
        return {s["segment_id"]: s["size_bytes"] for s in json.loads(r.read())["segments"]}


def big_put(store, size, seed):
    """Puts an object larger than the client's 16 MB global segment on this
    client's segments: it can only land in a segment mounted later."""
    key = f"seg-{uuid.uuid4().hex}"
    data = (bytes([seed]) * 4096 + uuid.uuid4().bytes) * (size // 4112)
    cfg = ReplicateConfig()
    cfg.preferred_segments = [store.get_hostname()]
    return key, data, store.put(key, data, cfg)


@pytest.fixture(scope="module")
def small(master):
    """A real client with a small global segment and a dummy connected to it."""
    rc = RealClient(master, segment="16MB")
    s = MooncakeDistributedStore()
    # Its local buffer takes the 24 MB values these tests put as bytes.
    assert s.setup_dummy(16 * MB, 64 * MB, rc.address) == 0
    yield s
    s.close()
    rc.cleanup()


def test_allocated_segment_serves_objects_until_freed(master, small):
    before = segment_ids(master)
    r = small.allocate_and_mount_segment(40 * MB + 123)
    assert r["ret"] == 0, r
    assert len(r["segment_ids"]) == 1
    assert r["allocated_size"] >= 40 * MB + 123 and r["allocated_size"] % 4096 == 0
    sid = r["segment_ids"][0]
    after = segment_ids(master)
    assert sid not in before and after[sid] == r["allocated_size"]

    key, data, rc = big_put(small, 24 * MB, 7)
    assert rc == 0
    assert small.get(key) == data
    # Plain unmount refuses allocated segments (and the reverse below).
    assert small.unmount_segment([sid]) == REFUSED
    assert small.unmount_and_free_segment([sid]) == 0
    assert sid not in segment_ids(master)
    assert small.is_exist(key) == 0, "its objects left the pool with it"
    assert small.unmount_and_free_segment([sid]) == REFUSED  # gone: unknown now


def test_file_segment_holds_the_bytes_in_the_file(master, small):
    path = f"/dev/shm/mooncake-pytest-mount-{uuid.uuid4().hex}"
    with open(path, "wb") as f:
        f.truncate(48 * MB)
    try:
        r = small.mount_segment(path, 40 * MB, 4 * MB)
        assert r["ret"] == 0, r
        (sid,) = r["segment_ids"]
        assert segment_ids(master)[sid] == 40 * MB
        key, data, rc = big_put(small, 20 * MB, 9)
        assert rc == 0
        assert small.get(key) == data
        with open(path, "rb") as f:
            contents = f.read()
        at = contents.find(data)
        assert at >= 4 * MB, "the object's bytes are in the mounted part of the file"
        assert small.unmount_and_free_segment([sid]) == REFUSED
        assert small.unmount_segment([sid]) == 0
        assert sid not in segment_ids(master)
        assert small.get(key) == b""
    finally:
        os.unlink(path)


def test_grace_period_unmounts_later(master, small):
    r = small.allocate_and_mount_segment(8 * MB)
    assert r["ret"] == 0
    sid = r["segment_ids"][0]
    t = time.monotonic()
    assert small.unmount_and_free_segment([sid], 1) == 0
    assert time.monotonic() - t < 1.0, "returns at once"
    assert sid in segment_ids(master)
    deadline = time.monotonic() + 10
    while sid in segment_ids(master):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_segment_calls_reject_bad_input(small):
    assert small.mount_segment("/dev/shm/does-not-exist-" + uuid.uuid4().hex, MB)["ret"] == REFUSED
    path = f"/dev/shm/mooncake-pytest-mount-{uuid.uuid4().hex}"
    with open(path, "wb") as f:
        f.truncate(4 * MB)
    try:
        assert small.mount_segment(path, 0)["ret"] == REFUSED
        assert small.mount_segment(path, 8 * MB)["ret"] == REFUSED, "past the end of the file"
        # An offset need not be page-aligned.
        r = small.mount_segment(path, MB, 123)
        assert r["ret"] == 0
        assert small.unmount_segment(r["segment_ids"]) == 0
        assert small.mount_segment(path, MB, 0, "rdma")["ret"] == REFUSED
    finally:
        os.unlink(path)
    r = small.allocate_and_mount_segment(0)
    assert (r["ret"], r["segment_ids"], r["allocated_size"]) == (REFUSED, [], 0)
    assert small.allocate_and_mount_segment((1 << 64) - 1)["ret"] == REFUSED
    assert small.unmount_segment([]) == 0  # nothing to do, as upstream
    assert small.unmount_segment(["not-a-uuid"]) == REFUSED
    assert small.unmount_segment([str(uuid.uuid4())]) == REFUSED
    r = small.allocate_and_mount_segment(MB)
    sid = r["segment_ids"][0]
    assert small.unmount_and_free_segment([sid, sid]) == REFUSED
    assert small.unmount_and_free_segment([sid]) == 0

    fresh = MooncakeDistributedStore()
    assert fresh.mount_segment("/dev/shm/x", MB)["ret"] == REFUSED
    assert fresh.allocate_and_mount_segment(MB)["ret"] == REFUSED
    assert fresh.unmount_segment([str(uuid.uuid4())]) == REFUSED


def test_in_process_store_mounts_its_own_segments(master):
    s = MooncakeDistributedStore()
    assert setup_in_process(s, master, 16 * MB, local_buffer=32 * MB) == 0
    try:
        r = s.allocate_and_mount_segment(32 * MB)
        assert r["ret"] == 0
        key, data, rc = big_put(s, 20 * MB, 3)
        assert rc == 0 and s.get(key) == data
        assert s.unmount_and_free_segment(r["segment_ids"]) == 0
        assert s.get(key) == b""
    finally:
        s.close()


def test_segments_mounted_and_freed_from_several_threads(master, small):
    import threading

    errors = []

    def churn(seed):
        for _ in range(3):
            r = small.allocate_and_mount_segment(4 * MB)
            if r["ret"] != 0:
                errors.append(("mount", r))
                continue
            key = f"thr-{uuid.uuid4().hex}"
            cfg = ReplicateConfig()
            cfg.preferred_segments = [small.get_hostname()]
            if small.put(key, bytes([seed]) * 100_000, cfg) != 0:
                errors.append(("put", key))
            if small.get(key) != bytes([seed]) * 100_000:
                errors.append(("get", key))
            small.remove(key, True)
            if small.unmount_and_free_segment(r["segment_ids"]) != 0:
                errors.append(("unmount", r))

    before = set(segment_ids(master))
    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(segment_ids(master)) == before
