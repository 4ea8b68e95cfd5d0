"""The rest of upstream's public surface: enums and descriptors, ranged and
session reads and writes, ``put_from_with_metadata``, ``init_all`` and
``BufferPool``, in both modes and across segments (bytes moved by the real
client), with error paths and several threads."""

import ctypes
import threading
import time
import uuid

import pytest

from conftest import MB, Master, setup_in_process
from mooncake.store import (
    BufferPool,
    Descriptor,
    MemoryDescriptor,
    MooncakeDistributedStore,
    MooncakeDistributedStoreAsync,
    MooncakeHostMemAllocator,
    ObjectDataType,
    ReplicaStatus,
    ReplicateConfig,
    SoftPinAction,
    TaskStatus,
    TaskType,
)

INVALID_PARAMS = -600
OBJECT_NOT_FOUND = -704
OBJECT_ALREADY_EXISTS = -705
LEASE_EXPIRED = -707
NOT_SET_UP = -1010


def uniq(prefix="k"):
    return f"{prefix}-{uuid.uuid4().hex}"


def pattern(n, seed=0):
    return bytes((i * 7 + seed) % 251 for i in range(n))


@pytest.fixture
def buf(store):
    """4 MiB of shareable memory registered with the store."""
    alloc = MooncakeHostMemAllocator()
    addr = alloc.alloc(4 * MB)
    assert addr and store.register_buffer(addr, 4 * MB) == 0
    yield addr
    store.unregister_buffer(addr)
    alloc.free(addr)


def write(addr, data):
    ctypes.memmove(addr, data, len(data))


def read(addr, n):
    return ctypes.string_at(addr, n)


# ------------------------------------------------------------- module objects


def test_enums_have_upstream_names_and_values():
    assert [(m.name, m.value) for m in (ObjectDataType.UNKNOWN, ObjectDataType.KVCACHE,
                                         ObjectDataType.TENSOR, ObjectDataType.WEIGHT)] == [
        ("UNKNOWN", 0), ("KVCACHE", 1), ("TENSOR", 2), ("WEIGHT", 3)]
    assert ReplicaStatus.COMPLETE.value == 3 and ReplicaStatus.PROCESSING == ReplicaStatus.PROCESSING
    assert (TaskType.REPLICA_COPY.value, TaskType.REPLICA_MOVE.value) == (0, 1)
    assert [s.name for s in (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.SUCCESS,
                             TaskStatus.FAILED)] == ["PENDING", "PROCESSING", "SUCCESS", "FAILED"]
    assert SoftPinAction.ENABLE.name == "ENABLE"
    cfg = ReplicateConfig()
    assert cfg.data_type == ObjectDataType.UNKNOWN and cfg.nof_replica_num == 0 and cfg.dfs_replica_num == 0
    cfg.data_type = ObjectDataType.METADATA
    cfg.with_hard_pin = True
    cfg.soft_pin_ttl_ms = 5000
    assert cfg.data_type.name == "METADATA" and cfg.soft_pin_ttl_ms == 5000
    d = Descriptor()
    d.size, d.buffer_address, d.transport_endpoint = 1, 2, "h:1"
    assert (d.size, d.buffer_address, d.transport_endpoint) == (1, 2, "h:1")


def test_replica_descriptor_has_upstream_nesting(store):
    k = uniq()
    cfg = ReplicateConfig()
    cfg.data_type = ObjectDataType.KVCACHE
    assert store.put(k, b"y" * 1000, cfg) == 0
    (r,) = store.batch_get_replica_desc([k])[k]
    assert r.status == ReplicaStatus.COMPLETE and r.status.name == "COMPLETE"
    assert r.is_memory_replica()
    mem = r.get_memory_descriptor()
    assert isinstance(mem, MemoryDescriptor)
    bd = mem.buffer_descriptor
    assert bd.size == 1000 and bd.buffer_address == r.buffer_address != 0
    assert bd.transport_endpoint == r.transport_endpoint and ":" in bd.transport_endpoint


# ---------------------------------------------------- put_from_with_metadata


def test_put_from_with_metadata_stores_metadata_then_data(store, buf):
    meta, data = b"META" * 8, pattern(5000)
    write(buf, data)
    write(buf + 1 * MB, meta)
    k = uniq()
    assert store.put_from_with_metadata(k, buf, buf + MB, len(data), len(meta)) == 0
    assert store.get(k) == meta + data
    # Without metadata it is put_from.
    k2 = uniq()
    assert store.put_from_with_metadata(k2, buf, buf + MB, len(data), 0) == 0
    assert store.get(k2) == data
    unregistered = ctypes.create_string_buffer(64)
    assert store.put_from_with_metadata(uniq(), buf, ctypes.addressof(unregistered), 10, 64) == INVALID_PARAMS
    assert store.put_from_with_metadata(uniq(), buf, buf + MB, 0, 0) == INVALID_PARAMS


# ------------------------------------------------------------ get_into_ranges


def test_get_into_ranges_reads_fragments_of_several_objects(store, buf):
    a, b = uniq(), uniq()
    da, db = pattern(10000, 1), pattern(3000, 2)
    assert store.put(a, da) == 0 and store.put(b, db) == 0
    second = buf + 2 * MB
    results = store.get_into_ranges(
        [buf, second],
        [[a, b], [b]],
        [[[0, 1100], [2000]], [[0, 10]]],    # dst offsets
        [[[9000, 0], [1000]], [[0, 2990]]],  # src offsets
        [[[1000, 50], [2000]], [[10, 10]]],  # sizes
    )
    assert results == [[[1000, 50], [2000]], [[10, 10]]]
    assert read(buf, 1000) == da[9000:10000]
    assert read(buf + 1100, 50) == da[0:50]
    assert read(buf + 2000, 2000) == db[1000:3000]
    assert read(second, 10) == db[:10] and read(second + 10, 10) == db[2990:3000]


def test_get_into_ranges_errors_are_per_range(store, buf):
    k = uniq()
    assert store.put(k, pattern(100)) == 0
    missing = uniq()
    r = store.get_into_ranges([buf], [[k, missing]], [[[0, 10], [200]]], [[[0, 90], [0]]],
                              [[[10, 10], [5]]])
    assert r == [[[10, 10], [OBJECT_NOT_FOUND]]]
    # A range past the object's end, and an unregistered destination.
    assert store.get_into_ranges([buf], [[k]], [[[0]]], [[[95]]], [[[10]]]) == [[[INVALID_PARAMS]]]
    assert store.get_into_ranges([0x1000], [[k]], [[[0]]], [[[0]]], [[[10]]]) == [[[INVALID_PARAMS]]]
    # Mismatched nesting answers every range with -600.
    assert store.get_into_ranges([buf, buf], [[k]], [[[0]]], [[[0]]], [[[10]]]) == [[[INVALID_PARAMS]]]
    assert store.get_into_ranges([], [], [], [], []) == []
    # A key given no ranges gets no results (upstream), and does not spoil the others.
    assert store.get_into_ranges([buf], [[k, missing]], [[[0], []]], [[[0], []]], [[[10], []]]) == [
        [[10], []]
    ]


def test_a_soft_pin_lifetime_without_a_soft_pin_is_refused(store):
    cfg = ReplicateConfig()
    cfg.soft_pin_ttl_ms = 5000
    k = uniq()
    assert store.put(k, b"v", cfg) == INVALID_PARAMS
    assert store.upsert(k, b"v", cfg) == INVALID_PARAMS
    cfg.with_soft_pin = True
    assert store.put(k, b"v", cfg) == 0


# ------------------------------------------------------------- put sessions


def test_put_session_writes_ranges_then_commits(store, buf):
    k = uniq()
    data = pattern(8192, 3)
    write(buf, data)
    assert store.batch_put_session_start([k], [8192]) == [0]
    assert store.is_exist(k) == 0  # reserved, not readable yet
    # Two layers written separately, second half first.
    assert store.batch_put_from_multi_buffer_ranges([k], [[buf + 4096]], [[4096]], [[4096]]) == [4096]
    assert store.batch_put_from_multi_buffer_ranges([k], [[buf, buf + 1024]], [[1024, 3072]],
                                                    [[0, 1024]]) == [4096]
    assert store.batch_put_session_end([k]) == [0]
    assert store.get(k) == data
    # a repeated end finds no open session: -600, as upstream answers
    assert store.batch_put_session_end([k]) == [INVALID_PARAMS]


def test_put_session_errors(store, buf):
    k, existing = uniq(), uniq()
    assert store.put(existing, b"old") == 0
    assert store.batch_put_session_start([k, existing, k, uniq()], [100, 100, 100, 0]) == [
        0, OBJECT_ALREADY_EXISTS, INVALID_PARAMS, INVALID_PARAMS]
    assert store.batch_put_session_start([k], [100]) == [INVALID_PARAMS]  # already open
    assert store.batch_put_session_start([uniq()], [1, 2]) == [INVALID_PARAMS]
    no_session = uniq()
    assert store.batch_put_from_multi_buffer_ranges([no_session], [[buf]], [[10]], [[0]]) == [INVALID_PARAMS]
    assert store.batch_put_from_multi_buffer_ranges([k], [[buf]], [[10]], [[95]]) == [INVALID_PARAMS]
    assert store.batch_put_from_multi_buffer_ranges([k], [[0x1000]], [[10]], [[0]]) == [INVALID_PARAMS]
    assert store.batch_put_from_multi_buffer_ranges([k], [[buf]], [[10]], [[0, 1]]) == [INVALID_PARAMS]
    assert store.batch_put_session_end([no_session]) == [INVALID_PARAMS]
    assert store.batch_put_session_end([existing]) == [INVALID_PARAMS]  # refused at start
    assert store.batch_put_session_revoke([k, no_session]) == [0, INVALID_PARAMS]
    assert store.is_exist(k) == 0 and store.get(existing) == b"old"
    # The space is free again: the key can be written anew.
    assert store.put(k, b"new") == 0 and store.get(k) == b"new"


def test_put_sessions_from_several_threads(store, buf):
    errors = []

    def worker(t):
        try:
            base = buf + t * 256 * 1024
            keys = [uniq(f"t{t}") for _ in range(8)]
            for i, _ in enumerate(keys):
                write(base + i * 4096, pattern(4096, t * 10 + i))
            assert store.batch_put_session_start(keys, [4096] * 8) == [0] * 8
            for half in (0, 2048):
                got = store.batch_put_from_multi_buffer_ranges(
                    keys, [[base + i * 4096 + half] for i in range(8)], [[2048]] * 8, [[half]] * 8)
                assert got == [2048] * 8
            assert store.batch_put_session_end(keys) == [0] * 8
            for i, k in enumerate(keys):
                assert store.get(k) == pattern(4096, t * 10 + i)
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ------------------------------------------------------------- get sessions


def test_get_session_reads_ranges_under_one_lease(store, buf):
    keys = [uniq() for _ in range(3)]
    for i, k in enumerate(keys):
        assert store.put(k, pattern(6000, i)) == 0
    assert store.batch_get_session_start(keys + [uniq()]) == [0, 0, 0, OBJECT_NOT_FOUND]
    for layer in range(3):
        got = store.batch_get_into_multi_buffer_ranges(
            keys, [[buf + i * 8192 + layer * 2000] for i in range(3)], [[2000]] * 3,
            [[layer * 2000]] * 3)
        assert got == [2000] * 3
    for i in range(3):
        assert read(buf + i * 8192, 6000) == pattern(6000, i)
    assert store.batch_get_session_end(keys) == 0
    assert store.batch_get_into_multi_buffer_ranges(keys[:1], [[buf]], [[10]], [[0]]) == [INVALID_PARAMS]


def test_get_session_errors(store, buf):
    k = uniq()
    assert store.put(k, pattern(100)) == 0
    assert store.batch_get_session_start([k]) == [0]
    assert store.batch_get_into_multi_buffer_ranges([k], [[buf]], [[10]], [[95]]) == [INVALID_PARAMS]
    assert store.batch_get_into_multi_buffer_ranges([k], [[0x1000]], [[10]], [[0]]) == [INVALID_PARAMS]
    assert store.batch_get_into_multi_buffer_ranges([k], [[buf]], [[10]], []) == [INVALID_PARAMS]
    assert store.batch_get_session_end([k]) == 0


def test_get_session_lease_expiry_is_reported():
    m = Master("--default_kv_lease_ttl=300ms")
    s = MooncakeDistributedStore()
    try:
        assert setup_in_process(s, m, 16 * MB) == 0
        mem = ctypes.create_string_buffer(4096)
        ptr = ctypes.addressof(mem)
        assert s.register_buffer(ptr, 4096) == 0
        k = uniq()
        assert s.put(k, pattern(4096)) == 0
        assert s.batch_get_session_start([k]) == [0]
        assert s.batch_get_into_multi_buffer_ranges([k], [[ptr]], [[100]], [[0]]) == [100]
        time.sleep(0.5)
        assert s.batch_get_into_multi_buffer_ranges([k], [[ptr]], [[100]], [[0]]) == [LEASE_EXPIRED]
        # The expired session is closed; a new one reads again.
        assert s.batch_get_into_multi_buffer_ranges([k], [[ptr]], [[100]], [[0]]) == [INVALID_PARAMS]
        assert s.batch_get_session_start([k]) == [0]
        assert s.batch_get_into_multi_buffer_ranges([k], [[ptr]], [[100]], [[100]]) == [100]
        assert mem.raw[:100] == pattern(4096)[100:200]
    finally:
        s.close()
        m.proc.kill()


# ---------------------------------------------- across segments (remote bytes)


def test_ranged_calls_move_bytes_between_hosts_segments(master, real_client):
    """A dummy writes and reads ranges of objects that live in another client's
    segment (an in-process store of this process): the real client moves them."""
    other = MooncakeDistributedStore()
    dummy = MooncakeDistributedStore()
    alloc = MooncakeHostMemAllocator()
    addr = alloc.alloc(4 * MB)
    try:
        assert setup_in_process(other, master, 32 * MB) == 0
        assert dummy.setup_dummy(16 * MB, 16 * MB, real_client.address) == 0
        assert dummy.register_buffer(addr, 4 * MB) == 0
        remote = ReplicateConfig()
        remote.preferred_segment = other.get_hostname()
        k = uniq("remote")
        data = pattern(64 * 1024, 9)
        write(addr, data)
        assert dummy.batch_put_session_start([k], [len(data)], remote) == [0]
        assert dummy.batch_put_from_multi_buffer_ranges([k], [[addr + 32768]], [[32768]], [[32768]]) == [32768]
        assert dummy.batch_put_from_multi_buffer_ranges([k], [[addr]], [[32768]], [[0]]) == [32768]
        assert dummy.batch_put_session_end([k]) == [0]
        (r,) = dummy.get_replica_desc(k)
        assert r.segment_name == other.get_hostname() != dummy.get_hostname()
        assert other.get(k) == data
        # Ranged reads of the remote object, session and one-shot.
        dst = addr + 1 * MB
        assert dummy.batch_get_session_start([k]) == [0]
        assert dummy.batch_get_into_multi_buffer_ranges([k], [[dst, dst + 100]], [[100, 200]],
                                                        [[1000, 60000]]) == [300]
        assert dummy.batch_get_session_end([k]) == 0
        assert read(dst, 100) == data[1000:1100] and read(dst + 100, 200) == data[60000:60200]
        assert dummy.get_into_ranges([dst], [[k]], [[[0]]], [[[5]]], [[[4096]]]) == [[[4096]]]
        assert read(dst, 4096) == data[5:4101]
        # The in-process store reads an object in the real client's segment into
        # plain process memory (staged through shared memory).
        k2 = uniq("there")
        assert dummy.put(k2, data) == 0
        mem = ctypes.create_string_buffer(1000)
        assert other.register_buffer(ctypes.addressof(mem), 1000) == 0
        assert other.get_into_ranges([ctypes.addressof(mem)], [[k2]], [[[0]]], [[[500]]], [[[1000]]]) == [[[1000]]]
        assert mem.raw == data[500:1500]
        # And writes ranges from process memory into a session placed there.
        theirs = ReplicateConfig()
        theirs.preferred_segment = dummy.get_hostname()
        k3 = uniq("staged")
        mem.raw = pattern(1000, 4)
        assert other.batch_put_session_start([k3], [2000], theirs) == [0]
        ptr = ctypes.addressof(mem)
        assert other.batch_put_from_multi_buffer_ranges([k3], [[ptr, ptr]], [[1000, 1000]], [[0, 1000]]) == [2000]
        assert other.batch_put_session_end([k3]) == [0]
        assert dummy.get_replica_desc(k3)[0].segment_name == dummy.get_hostname()
        assert dummy.get(k3) == pattern(1000, 4) * 2
    finally:
        dummy.close()
        other.close()
        alloc.free(addr)


# ---------------------------------------------------------- pool and setup


def test_buffer_pool_reuses_registered_buffers(store):
    pool = BufferPool(store, max_bytes=1 * MB, min_size_class=64 * 1024, block_on_exhaustion=False)
    with pool.acquire(100_000) as lease:
        first = lease.ptr
        assert lease.size == 100_000 and len(lease.buffer) == 100_000
        lease.buffer[:5] = b"hello"
        k = uniq()
        assert store.put_from(k, lease.ptr, 5) == 0  # registered: zero-copy calls take it
        assert store.get(k) == b"hello"
    with pool.acquire(90_000) as again:
        assert again.ptr == first  # same size class: reused, not reallocated
    held = [pool.acquire(256 * 1024) for _ in range(4)]
    with pytest.raises(RuntimeError):
        pool.acquire(256 * 1024)
    with pytest.raises(RuntimeError):
        pool.close()  # leases out
    for lease in held:
        lease.release()
    lease.release()  # idempotent
    assert pool.stats()["in_use"] == 0
    pool.close()
    with pytest.raises(RuntimeError):
        pool.acquire(10)


def test_buffer_pool_edge_cases_as_upstream(store):
    pool = BufferPool(store, max_bytes=1 * MB, min_size_class=64 * 1024, block_on_exhaustion=False)
    empty = pool.acquire(0)
    assert empty.size == 0 and empty.ptr != 0
    empty.release()
    with pytest.raises(TypeError):
        pool.acquire(-1)
    # A memoryview keeps its buffer: the lease cannot go back while it lives.
    lease = pool.acquire(4096)
    view = lease.buffer
    view[:3] = b"abc"
    with pytest.raises(RuntimeError, match="exported views"):
        lease.release()
    assert bytes(view[:3]) == b"abc"
    del view
    lease.release()
    # A view that outlives a dropped lease still reads its bytes (never reused).
    lease = pool.acquire(4096)
    view = lease.buffer
    view[:3] = b"xyz"
    ptr = lease.ptr
    del lease
    other = pool.acquire(4096)
    assert other.ptr != ptr
    assert bytes(view[:3]) == b"xyz"
    other.release()
    assert pool.stats()["in_use"] == 0
    pool.close()
    assert bytes(view[:3]) == b"xyz", "closing the pool does not free a viewed buffer"


def test_buffer_pool_blocks_until_a_release(store):
    pool = BufferPool(store, max_bytes=128 * 1024, min_size_class=128 * 1024)
    lease = pool.acquire(1000)
    got = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(1000, timeout=10)))
    t.start()
    time.sleep(0.2)
    assert not got
    lease.release()
    t.join(10)
    assert got and got[0].ptr == lease._ptr
    with pytest.raises(RuntimeError, match="timed out"):
        pool.acquire(10, timeout=0.05)
    got[0].release()
    pool.close()


def test_init_all(master, monkeypatch):
    monkeypatch.setenv("MOONCAKE_MASTER", master.address)
    s = MooncakeDistributedStore()
    try:
        assert s.init_all("tcp", "", 16 * MB) == 0
        k = uniq()
        assert s.put(k, b"init_all") == 0 and s.get(k) == b"init_all"
        assert s.init_all("tcp", "", 16 * MB) == INVALID_PARAMS  # already set up
    finally:
        s.close()
    assert MooncakeDistributedStore().init_all("rdma", "mlx5_0") < 0


def test_new_methods_before_setup_and_async_forms():
    s = MooncakeDistributedStore()
    assert s.batch_put_session_start(["a"], [1]) == [NOT_SET_UP]
    assert s.batch_get_session_start(["a", "b"]) == [NOT_SET_UP] * 2
    assert s.batch_get_session_end(["a"]) == NOT_SET_UP
    assert s.get_into_ranges([1], [["a"]], [[[0, 1]]], [[[0, 1]]], [[[1, 1]]]) == [[[NOT_SET_UP] * 2]]
    assert s.put_from_with_metadata("a", 1, 2, 3, 4) == NOT_SET_UP
    for name in ("get_into_ranges", "batch_put_session_start", "batch_put_from_multi_buffer_ranges",
                 "batch_put_session_end", "batch_put_session_revoke", "batch_get_session_start",
                 "batch_get_into_multi_buffer_ranges", "batch_get_session_end",
                 "put_from_with_metadata", "init_all", "put_tensor_with_tp",
                 "save_tensor_to_safetensor"):
        assert callable(getattr(MooncakeDistributedStoreAsync, f"async_{name}")), name


def test_batch_replica_clear_drops_this_clients_unread_replicas(store):
    here = ReplicateConfig()
    here.preferred_segment = store.get_hostname()
    cold, read_now = uniq(), uniq()
    assert store.put(cold, b"c" * 100, here) == 0 and store.put(read_now, b"r" * 100, here) == 0
    assert store.get(read_now) == b"r" * 100  # a reader's lease protects it
    assert store.batch_replica_clear([cold, read_now, uniq()]) == [cold]
    assert store.is_exist(cold) == 0 and store.is_exist(read_now) == 1
    assert store.batch_replica_clear([read_now], "no-such-segment") == []
    assert MooncakeDistributedStore().batch_replica_clear([cold]) == []


def test_module_level_names_match_upstreams():
    import mooncake.store as m

    # Values and the enum each name belongs to, as upstream's binding exports them.
    expected = {
        "COMPLETE": (m.ReplicaStatus, 3), "REMOVED": (m.ReplicaStatus, 4),
        "INITIALIZED": (m.ReplicaStatus, 1), "UNDEFINED": (m.ReplicaStatus, 0),
        "PENDING": (m.TaskStatus, 0), "PROCESSING": (m.TaskStatus, 1),
        "FAILED": (m.TaskStatus, 2), "SUCCESS": (m.TaskStatus, 3),
        "REPLICA_COPY": (m.TaskType, 0), "REPLICA_MOVE": (m.TaskType, 1),
        "UNKNOWN": (m.ObjectDataType, 0), "KVCACHE": (m.ObjectDataType, 1),
        "TENSOR": (m.ObjectDataType, 2), "WEIGHT": (m.ObjectDataType, 3),
        "SAMPLE": (m.ObjectDataType, 4), "ACTIVATION": (m.ObjectDataType, 5),
        "GRADIENT": (m.ObjectDataType, 6), "OPTIMIZER_STATE": (m.ObjectDataType, 7),
        "METADATA": (m.ObjectDataType, 8), "GENERAL": (m.ObjectDataType, 9),
    }
    for name, (enum, value) in expected.items():
        v = getattr(m, name)
        assert isinstance(v, enum) and int(v) == value, name
    assert m.bind_to_numa_node(0) is None
    assert m.bind_to_numa_node(999) is None


def test_cuda_and_disk_calls_answer_with_codes_without_a_gpu(store):
    k = uniq()
    assert store.put(k, b"x") == 0
    assert store.get_tensor_into_cuda(k, None) == INVALID_PARAMS
    assert store.batch_get_tensor_into_cuda([k, uniq()], [None, None]) == [INVALID_PARAMS] * 2
    assert store.unmount_local_disk_segment() == -1


def test_get_hostname_is_host_and_port_as_upstream(master):
    # Upstream: `<local_hostname>:<port>`, the port from 12300-14300 when none is given.
    for segment in (0, 16 * MB):
        s = MooncakeDistributedStore()
        assert s.setup("127.0.0.1", "P2PHANDSHAKE", segment, 16 * MB, "tcp", "", master.address) == 0
        try:
            host, port = s.get_hostname().rsplit(":", 1)
            assert host == "127.0.0.1" and 12300 <= int(port) < 14300, s.get_hostname()
        finally:
            s.close()
