"""Every method of ``MooncakeDistributedStore`` with its return conventions and
error paths, in both modes (dummy client and in-process client)."""

import ctypes
import threading
import uuid

import pytest

from mooncake.store import (
    BufferHandle,
    MooncakeDistributedStore,
    MooncakeHostMemAllocator,
    ReplicaDescriptor,
    ReplicateConfig,
    SoftPinAction,
    error_name,
)

INVALID_PARAMS = -600
OBJECT_NOT_FOUND = -704
NOT_SET_UP = -1010
MB = 1 << 20


def uniq(prefix="k"):
    return f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture
def host_buffer(store):
    """1 MiB of shareable memory registered with the store; (address, allocator)."""
    alloc = MooncakeHostMemAllocator()
    addr = alloc.alloc(MB)
    assert addr != 0
    assert store.register_buffer(addr, MB) == 0
    yield addr
    store.unregister_buffer(addr)
    alloc.free(addr)


def write(addr, data):
    ctypes.memmove(addr, data, len(data))


def read(addr, n):
    return ctypes.string_at(addr, n)


def test_module_surface():
    assert hasattr(ReplicateConfig, "group_ids")
    cfg = ReplicateConfig()
    assert cfg.replica_num == 1 and cfg.group_ids == [] and cfg.preferred_segment == ""
    cfg.replica_num = 2
    cfg.preferred_segments = ["a", "b"]
    cfg.group_ids = ["g1"]
    cfg.soft_pin_action = SoftPinAction.ENABLE
    cfg.with_soft_pin = True
    assert (cfg.replica_num, cfg.preferred_segments, cfg.group_ids) == (2, ["a", "b"], ["g1"])
    assert int(SoftPinAction.PRESERVE) == 0 and int(SoftPinAction.DISABLE) == 2
    assert error_name(-704) == "OBJECT_NOT_FOUND" and error_name(0) == "OK"
    assert "ReplicaDescriptor" in repr(ReplicaDescriptor) and BufferHandle is not None


def test_allocator_works_before_any_setup():
    alloc = MooncakeHostMemAllocator()
    addr = alloc.alloc(2 * MB)
    assert addr != 0
    write(addr + MB, b"hello")
    assert read(addr + MB, 5) == b"hello"
    assert alloc.free(addr) == 0
    assert alloc.free(addr) == INVALID_PARAMS
    assert alloc.alloc(0) == 0
    # More than the host holds: refused at once, nothing prefaulted (this used to
    # drive the host into the out-of-memory killer).
    assert alloc.alloc(1 << 40) == 0
    assert alloc.alloc(-1) == 0
    assert alloc.free(-1) == INVALID_PARAMS


def test_put_get_exist_size_remove(store):
    k = uniq()
    assert store.is_exist(k) == 0
    assert store.get(k) == b""
    assert store.get_buffer(k) is None
    assert store.get_size(k) == OBJECT_NOT_FOUND
    assert store.put(k, b"first value") == 0
    assert store.is_exist(k) == 1
    assert store.get(k) == b"first value"
    assert store.get_size(k) == len(b"first value")
    # An existing key keeps its value (engines rely on it); upsert replaces it.
    assert store.put(k, b"second") == 0
    assert store.get(k) == b"first value"
    assert store.upsert(k, b"replaced") == 0
    assert store.get(k) == b"replaced"
    # bytearray, memoryview: any bytes-like value.
    k2 = uniq()
    assert store.put(k2, memoryview(bytearray(b"xyz" * 1000))) == 0
    assert store.get(k2) == b"xyz" * 1000
    assert store.remove(k, force=True) == 0
    assert store.is_exist(k) == 0
    assert store.remove(k) == OBJECT_NOT_FOUND
    assert store.get_hostname() != ""
    assert store.health_check() == 0


def test_bad_values_and_keys(store):
    with pytest.raises(TypeError):
        store.put(uniq(), "a str is not bytes")
    assert store.put(uniq(), b"") == INVALID_PARAMS
    assert store.put("x" * 70000, b"too long a key") < 0
    # Upstream takes a 5 000-byte key, and answers the empty key with -600 / 0 / -704.
    long = "x" * 5000 + uniq()
    assert store.put(long, b"v") == 0 and store.get(long) == b"v"
    assert store.is_exist("") == 0 and store.get_size("") == OBJECT_NOT_FOUND
    assert store.remove("") == OBJECT_NOT_FOUND
    assert store.put("", b"empty key") < 0


def test_buffer_calls_and_error_codes(store, host_buffer):
    a = host_buffer
    keys = [uniq() for _ in range(3)]
    for i, k in enumerate(keys):
        write(a + i * 4096, bytes([65 + i]) * 4096)
    assert store.batch_put_from(keys, [a, a + 4096, a + 8192], [4096, 4096, 4096]) == [0, 0, 0]
    assert store.batch_is_exist(keys + [uniq()]) == [1, 1, 1, 0]
    dst = a + 256 * 1024
    got = store.batch_get_into(keys, [dst, dst + 8192, dst + 16384], [8192, 8192, 8192])
    assert got == [4096, 4096, 4096]  # bytes read; buffers may be larger
    assert read(dst + 8192, 4096) == b"B" * 4096
    # too small → -600, missing → -704, per key, list as long as the keys
    assert store.batch_get_into([keys[0], uniq()], [dst, dst], [100, 4096]) == [INVALID_PARAMS, OBJECT_NOT_FOUND]
    assert store.get_into(keys[1], dst, 4096) == 4096
    assert store.get_into(keys[1], dst, 10) == INVALID_PARAMS
    # mismatched lists: every key fails, nothing raises
    assert store.batch_put_from([uniq(), uniq()], [a], [1, 2]) == [INVALID_PARAMS] * 2
    assert store.batch_get_into([uniq(), uniq()], [a, a], [1]) == [INVALID_PARAMS] * 2
    # put_from / upsert_from
    k = uniq()
    assert store.put_from(k, a, 1000) == 0
    write(a, b"Z" * 1000)
    assert store.upsert_from(k, a, 1000) == 0
    assert store.get(k) == b"Z" * 1000
    assert store.batch_upsert_from([k], [a + 4096], [10]) == [0]
    assert store.get(k) == b"B" * 10


def test_out_of_range_numbers_and_unencodable_keys_are_codes_not_exceptions(store, host_buffer):
    a = host_buffer
    bad_key = "bad\ud800key"  # a lone surrogate: not encodable as UTF-8
    for n in (-1, -(2**63), 2**64, 2**70):
        assert store.put_from(uniq(), n, 4096) < 0
        assert store.put_from(uniq(), a, n) < 0
        assert store.get_into(uniq(), n, 4096) < 0
        assert store.get_into(uniq(), a, n) < 0
        assert store.register_buffer(n, 4096) < 0
        assert store.register_buffer(a, n) < 0
        assert store.unregister_buffer(n) < 0
        assert store.alloc_from_mem_pool(n) == 0
        assert store.batch_put_from([uniq(), uniq()], [a, n], [4096, 4096])[1] < 0
        assert store.batch_get_into([uniq()], [a], [n]) == [INVALID_PARAMS]
        got = store.batch_put_from_multi_buffers([uniq()], [[a, n]], [[10, 10]])
        assert len(got) == 1 and got[0] < 0
    assert store.alloc_from_mem_pool(1 << 40) == 0
    k = uniq()
    assert store.put(k, b"fine") == 0
    assert store.put(bad_key, b"v") < 0
    assert store.upsert(bad_key, b"v") < 0
    assert store.is_exist(bad_key) == 0  # names no object
    assert store.get_size(bad_key) < 0
    assert store.remove(bad_key) < 0
    assert store.get(bad_key) == b""
    assert store.batch_is_exist([k, bad_key]) == [1, store.is_exist(bad_key)]
    results = store.batch_put_from([bad_key, uniq()], [a, a], [16, 16])
    assert len(results) == 2 and results[0] < 0 and results[1] == 0
    assert store.batch_get_into([bad_key], [a], [16])[0] < 0
    # The wrong Python types still raise TypeError.
    with pytest.raises(TypeError):
        store.put_from(uniq(), "0x1000", 16)
    with pytest.raises(TypeError):
        store.is_exist(42)
    with pytest.raises(TypeError):
        store.batch_is_exist("not-a-list")
    assert store.get(k) == b"fine"


def test_unregistered_pointers(store):
    junk = ctypes.create_string_buffer(4096)
    addr = ctypes.addressof(junk)
    if store.mode == "dummy":
        # The real client cannot map plain process memory: a clear code, no crash.
        # Upstream's dummy answers -1 for any memory it cannot share.
        assert store.register_buffer(addr, 4096) == -1
        assert store.batch_put_from([uniq()], [addr], [4096]) == [INVALID_PARAMS]
        assert store.batch_get_into([uniq()], [addr], [4096]) == [INVALID_PARAMS]
    else:
        # In-process any memory of this process can be registered (LMCache's pool).
        assert store.register_buffer(addr, 4096) == 0
        # A second registration of the same range is refused, as upstream does.
        assert store.register_buffer(addr, 4096) == INVALID_PARAMS
        k = uniq()
        ctypes.memmove(addr, b"P" * 4096, 4096)
        assert store.put_from(k, addr, 4096) == 0
        assert store.unregister_buffer(addr) == 0
        assert store.get(k) == b"P" * 4096
    # never-registered addresses in either mode (upstream: -600 in-process, -1 dummy)
    bad_buffer = -1 if store.mode == "dummy" else INVALID_PARAMS
    assert store.put_from(uniq(), 0x1000, 4096) == INVALID_PARAMS
    assert store.register_buffer(0, 4096) == bad_buffer
    assert store.register_buffer(addr, 0) == bad_buffer
    assert store.unregister_buffer(0x1234) == bad_buffer


def test_multi_buffers(store, host_buffer):
    a = host_buffer
    write(a, b"1" * 100)
    write(a + 1000, b"2" * 200)
    write(a + 3000, b"3" * 300)
    keys = [uniq(), uniq()]
    assert store.batch_put_from_multi_buffers(
        keys, [[a, a + 1000], [a + 3000]], [[100, 200], [300]]) == [0, 0]
    assert store.get(keys[0]) == b"1" * 100 + b"2" * 200
    d = a + 500 * 1024
    assert store.batch_get_into_multi_buffers(
        keys, [[d, d + 4096], [d + 8192]], [[150, 150], [300]]) == [300, 300]
    assert read(d, 150) + read(d + 4096, 150) == b"1" * 100 + b"2" * 200
    assert store.batch_get_into_multi_buffers([keys[0]], [[d]], [[10]], True) == [INVALID_PARAMS]
    assert store.batch_upsert_from_multi_buffers([keys[1]], [[a]], [[100]], ReplicateConfig()) == [0]
    assert store.get(keys[1]) == b"1" * 100


def test_parts_batches_buffers(store):
    k = uniq()
    assert store.put_parts(k, b"meta:", bytearray(b"payload"), memoryview(b"!")) == 0
    assert store.get(k) == b"meta:payload!"
    assert store.upsert_parts(k, b"new", config=ReplicateConfig()) == 0
    assert store.get(k) == b"new"
    keys = [uniq() for _ in range(4)]
    values = [bytes([i]) * (i + 1) * 100 for i in range(4)]
    assert store.put_batch(keys, values) == 0
    assert store.get_batch(keys + [uniq()]) == values + [b""]
    assert store.upsert_batch(keys[:1], [b"u"]) == 0
    assert store.get(keys[0]) == b"u"
    assert store.put_batch([uniq()], [b"a", b"b"]) == INVALID_PARAMS
    handles = store.batch_get_buffer([keys[1], uniq(), keys[2]])
    assert len(handles) == 3 and handles[1] is None
    assert len(handles[0]) == 200 and bytes(memoryview(handles[0])) == values[1]
    assert handles[2].size() == 300 and handles[2].ptr() != 0
    one = store.get_buffer(keys[3])
    assert bytes(one) == values[3]
    # Writable, as upstream's (LMCache wraps it in a tensor): a private copy.
    view = memoryview(one)
    assert not view.readonly
    view[0] = 0x7A
    assert bytes(one)[0] == 0x7A and store.get(keys[3]) == values[3]
    del view


def test_remove_family(store):
    tag = uuid.uuid4().hex
    keys = [f"rm-{tag}-{i}" for i in range(5)]
    assert store.put_batch(keys, [b"v"] * 5) == 0
    assert store.batch_remove(keys[:2] + [uniq()], force=True) == [0, 0, OBJECT_NOT_FOUND]
    assert store.remove_by_regex(f"^rm-{tag}-[34]$", force=True) == 2
    assert store.batch_is_exist(keys) == [0, 0, 1, 0, 0]
    assert store.remove_by_regex("([", force=True) == INVALID_PARAMS
    assert store.remove_all(force=True) >= 1
    assert store.is_exist(keys[2]) == 0


def test_replica_descriptors(store):
    k = uniq()
    assert store.put(k, b"x" * 4096) == 0
    descs = store.batch_get_replica_desc([k, uniq()])
    assert list(descs) == [k]
    (d,) = descs[k]
    assert d.is_memory_replica() and not d.is_disk_replica() and not d.is_local_disk_replica()
    assert d.size == 4096 and d.status.name == "COMPLETE" and d.transport_endpoint
    assert store.get_replica_desc(k)[0].segment_name == d.segment_name
    assert store.get_replica_desc(uniq()) == []


def test_preferred_segment_is_honoured(store, real_client):
    cfg = ReplicateConfig()
    cfg.preferred_segment = store.get_hostname()
    k = uniq()
    assert store.put(k, b"local please", cfg) == 0
    if store.mode == "in_process_no_segment":
        # A client with no segment names none: the value still lands, in the pool.
        assert store.get(k) == b"local please"
        other = MooncakeDistributedStore()
        assert other.setup_dummy(0, 0, real_client.address) == 0
        cfg.preferred_segment = other.get_hostname()
        other.close()
        k = uniq()
        assert store.put(k, b"there please", cfg) == 0
    assert store.get_replica_desc(k)[0].segment_name == cfg.preferred_segment


def test_alloc_from_mem_pool(store):
    addr = store.alloc_from_mem_pool(64 * 1024)
    assert addr != 0
    write(addr, b"M" * 64 * 1024)
    k = uniq()
    assert store.put_from(k, addr, 64 * 1024) == 0
    assert store.get(k) == b"M" * 64 * 1024


def test_many_threads_share_one_store(store, host_buffer):
    errors = []

    def worker(t):
        try:
            base = host_buffer + t * 64 * 1024
            for i in range(20):
                keys = [f"thr-{t}-{i}-{j}-{uuid.uuid4().hex}" for j in range(8)]
                for j in range(8):
                    write(base + j * 4096, bytes([t * 16 + j]) * 4096)
                assert store.batch_put_from(keys, [base + j * 4096 for j in range(8)], [4096] * 8) == [0] * 8
                assert store.batch_is_exist(keys) == [1] * 8
                dst = host_buffer + 512 * 1024 + t * 64 * 1024
                assert store.batch_get_into(keys, [dst + j * 4096 for j in range(8)], [4096] * 8) == [4096] * 8
                for j in range(8):
                    assert read(dst + j * 4096, 4096) == bytes([t * 16 + j]) * 4096
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_calls_before_setup_and_after_close(master):
    s = MooncakeDistributedStore()
    assert s.health_check() == 1
    assert s.put("k", b"v") == NOT_SET_UP
    assert s.get("k") == b""
    assert s.batch_is_exist(["a", "b", "c"]) == [NOT_SET_UP] * 3
    assert s.batch_get_into(["a", "b"], [1, 2], [3, 4]) == [NOT_SET_UP] * 2
    assert s.batch_get_buffer(["a"]) == [None]
    assert s.get_hostname() == ""
    assert s.setup("localhost", "P2PHANDSHAKE", 16 * MB, 16 * MB, "tcp", "", master.address) == 0
    k = uniq()
    assert s.put(k, b"v") == 0
    assert s.setup("localhost", "P2PHANDSHAKE", 16 * MB, 16 * MB, "tcp", "", master.address) == INVALID_PARAMS
    assert s.close() == 0
    assert s.close() == 0
    assert s.put(k, b"v") == NOT_SET_UP
    assert s.remove_all() == NOT_SET_UP
    assert s.health_check() == 1


@pytest.mark.parametrize("mode", ["dummy", "in_process"])
def test_local_buffer_size_bounds_the_copying_calls(master, real_client, mode):
    """As upstream (compared with its wheel): values moved by the copying calls
    must fit ``local_buffer_size``; the zero-copy calls are not bound by it."""
    big_writer = MooncakeDistributedStore()
    assert big_writer.setup_dummy(64 * MB, 16 * MB, real_client.address) == 0
    small, big = uniq("lbs-small"), uniq("lbs-big")
    assert big_writer.put(small, b"s" * 1000) == 0
    assert big_writer.put(big, b"b" * (2 * MB)) == 0

    def open_store(local_buffer_size):
        s = MooncakeDistributedStore()
        if mode == "dummy":
            assert s.setup_dummy(64 * MB, local_buffer_size, real_client.address) == 0
        else:
            assert s.setup("localhost", "P2PHANDSHAKE", 16 * MB, local_buffer_size, "tcp", "",
                           master.address) == 0
        return s

    s = open_store(1 * MB)
    try:
        assert s.put(uniq(), b"x" * (512 << 10)) == 0
        assert s.put(uniq(), b"x" * (2 * MB)) == INVALID_PARAMS
        assert s.put_batch([uniq(), uniq()], [b"y" * (600 << 10)] * 2) == INVALID_PARAMS  # 1.2 MB in all
        assert s.put_parts(uniq(), b"a" * (600 << 10), b"b" * (600 << 10)) == INVALID_PARAMS
        assert s.get(big) == b"" and s.get(small) == b"s" * 1000
        assert [len(v) for v in s.get_batch([big, small])] == [0, 1000]
        assert s.get_buffer(big) is None and s.get_buffer(small).size() == 1000
        # Zero-copy calls move registered memory: no staging budget applies.
        alloc = MooncakeHostMemAllocator()
        addr = alloc.alloc(4 * MB)
        try:
            assert s.register_buffer(addr, 4 * MB) == 0
            ctypes.memset(addr, 0x5A, 2 * MB)
            zc = uniq("lbs-zc")
            assert s.put_from(zc, addr, 2 * MB) == 0
            assert s.get_into(big, addr + 2 * MB, 2 * MB) == 2 * MB
            assert ctypes.string_at(addr + 2 * MB, 16) == b"b" * 16
            assert big_writer.get(zc) == b"\x5a" * (2 * MB)
            assert s.unregister_buffer(addr) == 0
        finally:
            alloc.free(addr)
    finally:
        s.close()
    s = open_store(0)  # nothing to stage through: every copying call fails
    try:
        assert s.put(uniq(), b"v") == INVALID_PARAMS
        assert s.get(small) == b"" and s.get_buffer(small) is None
        assert s.is_exist(small) == 1
    finally:
        s.close()
    big_writer.close()


# Upstream names this package does not have, each with the reason docs/COMPATIBILITY.md gives.
NOT_PROVIDED = {
    "DiskDescriptor": "upstream's replicas on a shared filesystem; disk-tier replicas here are LOCAL_DISK",
    "EngramStore": "out of scope",
    "EngramStoreConfig": "out of scope",
    "MooncakeDistributedNoFRegister": "out of scope (NVMe-over-Fabrics)",
    "BufferLeaseView": "a lease's buffer is a memoryview as upstream's; its exporter here is a ctypes array",
    "RegisteredBufferLeaseView": "as BufferLeaseView",
}


def test_names_cover_upstreams():
    """``dir()`` of the module and of the store covers upstream's (captured from its
    0.3.13.post1 wheel in tests/data/upstream_names.json), except the names above."""
    import json
    import os

    import mooncake.store as module

    with open(os.path.join(os.path.dirname(__file__), "data", "upstream_names.json")) as f:
        upstream = json.load(f)
    missing = [n for n in upstream["module"] if not hasattr(module, n) and n not in NOT_PROVIDED]
    missing += [
        f"MooncakeDistributedStore.{n}"
        for n in upstream["MooncakeDistributedStore"]
        if not hasattr(MooncakeDistributedStore, n)
        and n not in NOT_PROVIDED
    ]
    assert missing == []


def test_a_small_local_buffer_shared_by_racing_threads_never_mixes_bytes(master, real_client):
    """Eight threads of one in-process store with no segment of its own (every byte
    crosses to the real client's segment through the 1 MiB staging pool) put and
    read 256-512 KiB values at once: every call succeeds and every read is exactly
    the value written for its key."""
    s = MooncakeDistributedStore()
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 1 * MB, "tcp", "", master.address) == 0
    alloc = MooncakeHostMemAllocator()
    region = alloc.alloc(8 * MB)
    assert s.register_buffer(region, 8 * MB) == 0
    failures = []

    def value(key, n):
        return (key.encode() * (n // len(key) + 1))[:n]

    def worker(t):
        try:
            mine = region + t * MB
            for i in range(12):
                k = uniq(f"pool-{t}-{i}")
                n = (256 + 23 * i) << 10
                if s.put(k, value(k, n)) != 0:
                    failures.append(f"put {k}")
                    continue
                if s.get(k) != value(k, n):
                    failures.append(f"get {k}")
                if s.get_into(k, mine, MB) != n or ctypes.string_at(mine, n) != value(k, n):
                    failures.append(f"get_into {k}")
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s.unregister_buffer(region)
    alloc.free(region)
    s.close()
    assert failures == []


@pytest.mark.parametrize("route,same_host", [("auto", "1"), ("off", "1"), ("off", "0")])
def test_in_process_store_moves_plain_process_memory_to_the_real_client_exactly(
    master, real_client, monkeypatch, route, same_host
):
    """An in-process store with no segment of its own, as LMCache registers its
    pinned pool: plain process memory (not from the allocator) registered with
    register_buffer, values larger than the 1 MiB local buffer written from it and
    read back into it, and bytes values, all through the real client's segment:
    by calling that real client (MC_HOST_REAL_CLIENT=auto, the default), or by
    this process's real client copying into it (mapped here, or over TCP with
    MC_SAME_HOST_TRANSFERS=0). Every value comes back exactly, at every size and
    offset."""
    monkeypatch.setenv("MC_HOST_REAL_CLIENT", route)
    monkeypatch.setenv("MC_SAME_HOST_TRANSFERS", same_host)
    s = MooncakeDistributedStore()
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 1 * MB, "tcp", "", master.address) == 0
    assert ("via the host's real client" in repr(s)) == (route == "auto")
    src = (ctypes.c_uint8 * (8 * MB))()
    dst = (ctypes.c_uint8 * (8 * MB))()
    src_addr, dst_addr = ctypes.addressof(src), ctypes.addressof(dst)
    assert s.register_buffer(src_addr, 8 * MB) == 0
    assert s.register_buffer(dst_addr, 8 * MB) == 0
    pattern = bytes((i * 7 + 3) % 251 for i in range(8 * MB))
    ctypes.memmove(src_addr, pattern, 8 * MB)
    cases = [(0, 4096), (13, 65_537), (4096, 3 * MB + 5), (MB + 1, 5 * MB)]
    keys = [uniq("procmem") for _ in cases]
    for k, (off, n) in zip(keys, cases):
        assert s.put_from(k, src_addr + off, n) == 0, (off, n)
    for k, (off, n) in zip(keys, cases):
        ctypes.memset(dst_addr, 0, 8 * MB)
        assert s.get_into(k, dst_addr + 7, n) == n, (off, n)
        assert ctypes.string_at(dst_addr + 7, n) == pattern[off : off + n], (off, n)
        assert ctypes.string_at(dst_addr, 7) == bytes(7), "bytes before the destination written"
        assert ctypes.string_at(dst_addr + 7 + n, 64) == bytes(64), "bytes after the destination written"
    # Batches mixing sizes, and bytes values within the local buffer.
    bkeys = [uniq("procmem-b") for _ in range(4)]
    sizes = [100, 300_000, 2 * MB, 4096]
    offs = [0, 100, 400_000, 5 * MB]
    assert s.batch_put_from(bkeys, [src_addr + o for o in offs], sizes) == [0, 0, 0, 0]
    got = s.batch_get_into(bkeys, [dst_addr + o for o in offs], sizes)
    assert got == sizes
    for o, n in zip(offs, sizes):
        assert ctypes.string_at(dst_addr + o, n) == pattern[o : o + n]
    value = pattern[:900_000]
    k = uniq("procmem-bytes")
    assert s.put(k, value) == 0
    assert s.get(k) == value
    s.unregister_buffer(src_addr)
    s.unregister_buffer(dst_addr)
    s.close()


def test_nof_allocator_addresses_are_upstreams_null_allocator():
    """Upstream's non-NoF wheel hands out a hugepage allocator with nothing to
    allocate from: alloc gives NULL, free does nothing."""
    from mooncake.store import get_alloc_func_addr, get_free_func_addr

    alloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(get_alloc_func_addr())
    free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(get_free_func_addr())
    assert alloc(4096) is None
    free(None)


def test_setup_failures_are_codes_not_crashes(master):
    s = MooncakeDistributedStore()
    with pytest.raises(TypeError):
        s.setup("localhost", "P2PHANDSHAKE")  # neither 7 arguments nor a dict
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "rdma", "", master.address) < 0
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", f"127.0.0.1:{_closed_port()}") < 0
    assert s.setup_dummy(0, 0, f"127.0.0.1:{_closed_port()}") < 0
    assert s.setup_dummy(0, 0, "127.0.0.1:notaport") == INVALID_PARAMS
    # Upstream's other HA backends fail at once with a reason, not after retries;
    # an etcd:// cluster with no etcd behind it fails once no leader appears.
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", "redis://127.0.0.1:6379") < 0
    assert s.setup("localhost", "P2PHANDSHAKE", 0, 0, "tcp", "", f"etcd://127.0.0.1:{_closed_port()}") < 0
    # A size that is no size is a failure code (upstream), a wrong type a TypeError.
    assert s.setup({"global_segment_size": "50%", "master_server_address": master.address}) == INVALID_PARAMS
    assert s.setup("localhost", "P2PHANDSHAKE", "50%", 0, "tcp", "", master.address) == INVALID_PARAMS
    assert s.setup_dummy("lots", 0, "127.0.0.1:50052") == INVALID_PARAMS
    with pytest.raises(TypeError):
        s.setup("localhost", "P2PHANDSHAKE", [1], 0, "tcp", "", master.address)
    assert s.health_check() == 1


def test_replicate_config_integers_out_of_range_are_type_errors():
    cfg = ReplicateConfig()
    for attr in ("replica_num", "nof_replica_num", "dfs_replica_num", "soft_pin_ttl_ms"):
        for bad in (-1, 2**64, "3", 1.5):
            with pytest.raises(TypeError):
                setattr(cfg, attr, bad)
    cfg.replica_num = 3
    cfg.soft_pin_ttl_ms = 10
    cfg.soft_pin_ttl_ms = None
    assert cfg.replica_num == 3 and cfg.soft_pin_ttl_ms is None


def _closed_port():
    from conftest import free_port
    return free_port()


def test_duplicate_keys_in_one_batch(store, host_buffer):
    a = host_buffer
    write(a, b"A" * 4096)
    write(a + 4096, b"B" * 4096)
    k = uniq()
    # Both entries succeed and one whole value wins: never a mix of the two.
    assert store.batch_put_from([k, k, uniq()], [a, a + 4096, a], [4096] * 3) == [0, 0, 0]
    assert store.get(k) in (b"A" * 4096, b"B" * 4096)
    d = a + 64 * 1024
    assert store.batch_get_into([k, k], [d, d + 4096], [4096, 4096]) == [4096, 4096]
    assert read(d, 4096) == read(d + 4096, 4096)
