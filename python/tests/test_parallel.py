"""Upstream's unified parallel tensor IO (``ParallelAxis``, ``TensorParallelism``,
``ReadTarget``, ``*_tensor_with_parallelism*``) in both modes, with numpy arrays.
scripts/differential/parallel.py compares every answer and stored byte with
upstream's wheel; these tests keep the behaviour a user relies on."""

import ctypes
import struct
import uuid

import pytest

np = pytest.importorskip("numpy", reason="numpy is not installed")

from mooncake import _tensor  # noqa: E402
from mooncake.store import (  # noqa: E402
    MooncakeHostMemAllocator,
    ParallelAxis,
    ReadTarget,
    TensorParallelism,
)

INVALID_PARAMS = -600
MB = 1 << 20
FULL = np.arange(4 * 12, dtype=np.float32).reshape(4, 12)


def uniq():
    return f"par-{uuid.uuid4().hex}"


def ax(kind, rank, size, **extra):
    a = ParallelAxis()
    a.kind, a.rank, a.size = kind, rank, size
    for k, v in extra.items():
        setattr(a, k, v)
    return a


def par(*axes):
    p = TensorParallelism()
    p.axes = list(axes)
    return p


def target(mode, p=None):
    t = ReadTarget()
    t.mode = mode
    t.parallelism = p
    return t


def tp(rank, size, dim):
    return ax("tp", rank, size, split_dim=dim)


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


class Writer:
    def __init__(self, rank, size, split_dim):
        self.rank, self.size, self.split_dim = rank, size, split_dim


def test_the_request_objects_behave_as_upstreams():
    a = ParallelAxis()
    assert (a.kind, a.rank, a.size, a.split_dim, a.expert_id, a.stage_id) == ("", 0, 1, None, None, None)
    with pytest.raises(TypeError):
        a.rank = "1"
    with pytest.raises(TypeError):
        a.split_dim = 2**40
    p = TensorParallelism()
    p.axes.append(a)  # a copy: as upstream's, axes are assigned whole
    assert p.axes == []
    p.axes = [a]
    p.axes[0].rank = 3  # elements are the object's own
    assert p.axes[0].rank == 3 and a.rank == 0
    t = ReadTarget()
    assert t.mode == "as_stored" and t.parallelism is None
    t.mode = "FULL"
    assert t.mode == "full"
    with pytest.raises(RuntimeError):
        t.mode = "everything"


def test_tp_shards_written_by_each_rank_read_back_whole_and_resharded(store):
    k = uniq()
    for r in range(2):
        assert store.put_tensor_with_parallelism(k, FULL[:, r * 6:(r + 1) * 6].copy(), par(tp(r, 2, 1))) == 0
    assert store.is_exist(f"{k}_tp_0") == 1 and store.is_exist(f"{k}__parallelism_manifest") == 1
    assert same(store.get_tensor_with_parallelism(k, target("full", par(tp(0, 2, 1)))), FULL)
    assert same(store.get_tensor_with_parallelism(k, target("shard", par(tp(1, 2, 1)))), FULL[:, 6:])
    # Another TP size: cut from the stored shards, across their boundary.
    assert same(store.get_tensor_with_parallelism(k, target("shard", par(tp(1, 3, 1)))), FULL[:, 4:8])
    assert same(store.get_tensor_with_parallelism(k, target("shard", par(tp(3, 4, 1)))), FULL[:, 9:])
    # The header of a stored shard names its layout as upstream's does.
    raw = store.get(f"{k}_tp_1")
    layout = _tensor.parse_layout(raw, len(raw))
    assert layout[1:5] == ((4, 12), (4, 6), _tensor.LAYOUT_SHARD, [(1, 1, 2, 1, 0)])
    assert store.get_tensor_with_parallelism(k) is None  # nothing is stored under the key itself
    assert store.get_tensor_with_parallelism(k, target("full", par(tp(0, 2, 0)))) is None  # wrong dim


def test_multi_axis_writes_cut_the_whole_tensor_and_keep_replicas_apart(store):
    k = uniq()
    for r in range(3):
        assert store.put_tensor_with_parallelism(k, FULL, par(ax("dp", 1, 2), tp(r, 3, 1))) == 0
    assert store.is_exist(f"{k}__dp_1of2__tp_2of3_sd1") == 1
    # Axes in any order name the same shard.
    got = store.get_tensor_with_parallelism(k, target("shard", par(tp(2, 3, 1), ax("dp", 1, 2))))
    assert same(got, FULL[:, 8:])
    assert same(store.get_tensor_with_parallelism(k, target("full", par(ax("dp", 1, 2), tp(0, 3, 1)))), FULL)
    assert same(store.get_tensor_with_parallelism(k, target("shard", par(ax("dp", 1, 2), tp(0, 2, 1)))), FULL[:, :6])
    # Another DP replica was never written.
    assert store.get_tensor_with_parallelism(k, target("full", par(ax("dp", 0, 2), tp(0, 3, 1)))) is None
    cube = np.arange(48, dtype=np.int32).reshape(2, 6, 4)
    k2 = uniq()
    for r in range(2):
        p = par(ax("ep", 1, 2, expert_id=5), tp(r, 2, 2))
        assert store.put_tensor_with_parallelism(k2, cube, p) == 0
    assert same(store.get_tensor_with_parallelism(k2, target("full", par(ax("ep", 1, 2, expert_id=5), tp(0, 2, 2)))), cube)
    assert store.get_tensor_with_parallelism(k2, target("full", par(ax("ep", 1, 2, expert_id=4), tp(0, 2, 2)))) is None


def test_axes_that_do_not_cut_store_the_tensor_as_given(store):
    k = uniq()
    assert store.put_tensor_with_parallelism(k, FULL, par(ax("pp", 1, 2, stage_id=1), ax("dp", 1, 3))) == 0
    assert store.is_exist(f"{k}__dp_1of3__pp_1of2_sid1") == 1
    assert same(store.get_tensor_with_parallelism(k, target("shard", par(ax("dp", 1, 3), ax("pp", 1, 2, stage_id=1)))), FULL)
    assert store.get_tensor_with_parallelism(k, target("shard", par(ax("pp", 1, 2, stage_id=0), ax("dp", 1, 3)))) is None
    assert store.get_tensor_with_parallelism(k, target("full", par(ax("dp", 1, 3)))) is None  # no TP axis to rebuild on


def test_writer_partitions_and_their_manifest(store):
    k = uniq()
    for r in range(2):
        assert store.put_tensor_with_parallelism(k, FULL, writer_partition=Writer(r, 2, 0)) == 0
    manifest = store.get(f"{k}__writer_manifest")
    assert len(manifest) == 96
    assert struct.unpack_from("<IHHiiii", manifest) == (0x574D414E, 1, 96, 0, 2, 0, 2)
    assert same(store.get_tensor_with_parallelism(k, target("full")), FULL)
    assert same(store.get_tensor_with_parallelism(k, target("shard", par(tp(1, 2, 0)))), FULL[2:])
    assert store.upsert_tensor_with_parallelism(k, FULL * 2, writer_partition=Writer(0, 2, 0)) == 0
    got = store.get_tensor_with_parallelism(k, target("full"))
    assert same(got[:2], FULL[:2] * 2) and same(got[2:], FULL[2:])
    k2 = uniq()
    assert store.put_tensor_with_parallelism(k2, FULL, writer_partition=Writer(0, 3, 1)) == 0
    assert store.get_tensor_with_parallelism(k2, target("full")) is None  # two shards missing


@pytest.mark.parametrize("request_", [
    par(),
    par(ax("dp", 0, 2), ax("dp", 1, 2)),
    par(tp(2, 2, 1)),
    par(ax("tp", 0, 2)),
    par(ax("dp", 0, 2, split_dim=0)),
    par(ax("ep", 0, 2)),
    par(ax("pp", 0, 2)),
    par(ax("xp", 0, 2)),
    par(ax("dp", 0, 2), tp(0, 5, 1)),  # 12 columns do not split 5 ways
    par(tp(0, 2, -1)),
])
def test_requests_upstream_refuses_answer_codes_not_exceptions(store, request_):
    k = uniq()
    assert store.put_tensor_with_parallelism(k, FULL, request_) == INVALID_PARAMS
    assert store.get_tensor_with_parallelism(k, target("full", request_)) is None
    assert store.is_exist(k) == 0


def test_batches_and_refused_batches(store):
    k1, k2, k3 = uniq(), uniq(), uniq()
    assert store.batch_put_tensor_with_parallelism(
        [k1, k2, k3], [FULL, FULL, FULL],
        [par(ax("dp", 0, 2), tp(1, 2, 0)), None, par(ax("ep", 0, 2, expert_id=1))]) == [0, 0, 0]
    got = store.batch_get_tensor_with_parallelism(
        [k1, k2, k3, uniq()],
        [target("shard", par(ax("dp", 0, 2), tp(1, 2, 0))), None,
         target("shard", par(ax("ep", 0, 2, expert_id=1))), target("full")])
    assert same(got[0], FULL[2:]) and same(got[1], FULL) and same(got[2], FULL) and got[3] is None
    assert store.batch_put_tensor_with_parallelism([uniq()], [FULL], [None], writer_partitions=[None]) == [INVALID_PARAMS]
    assert store.batch_put_tensor_with_parallelism([uniq()], [FULL], (None,)) == [INVALID_PARAMS]
    assert store.batch_put_tensor_with_parallelism([uniq(), uniq()], [FULL]) == [INVALID_PARAMS] * 2
    assert store.batch_get_tensor_with_parallelism([k2, k2], [None]) == [None, None]


def test_from_and_into_registered_memory(store):
    alloc = MooncakeHostMemAllocator()
    addr = alloc.alloc(MB)
    assert store.register_buffer(addr, MB) == 0
    try:
        header, payload = _tensor.encode(FULL)
        n = len(header) + len(payload)
        view = memoryview((ctypes.c_char * n).from_address(addr)).cast("B")
        view[:len(header)] = header
        view[len(header):] = bytes(payload)
        k = uniq()
        # A TP request from memory stores every TP shard of the tensor there.
        assert store.put_tensor_with_parallelism_from(k, addr, n, par(tp(1, 2, 1))) == 0
        assert store.is_exist(f"{k}_tp_0") == 1 and store.is_exist(f"{k}_tp_1") == 1
        out = addr + 4096
        got = store.get_tensor_with_parallelism_into(k, out, MB - 4096, target("full", par(tp(0, 2, 1))))
        assert same(got, FULL)
        got[0, 0] = 99.0  # a view of the registered buffer
        assert struct.unpack_from("<f", bytes(memoryview((ctypes.c_char * (n + 8)).from_address(out)))[304:308])[0] == 99.0
        assert same(store.get_tensor_with_parallelism_into(k, out, MB - 4096, target("shard", par(tp(2, 4, 1)))), FULL[:, 6:9])
        assert store.get_tensor_with_parallelism_into(k, out, 400, target("full", par(tp(0, 2, 1)))) is None  # too small
        k2 = uniq()
        assert store.put_tensor_with_parallelism_from(k2, addr, n, writer_partition=Writer(1, 2, 0)) == 0
        assert store.put_tensor_with_parallelism_from(k2, addr, n, writer_partition=Writer(0, 2, 0)) == 0
        assert same(store.get_tensor_with_parallelism(k2, target("full")), FULL)
        assert store.put_tensor_with_parallelism_from(uniq(), addr, 100, par(tp(0, 2, 1))) == INVALID_PARAMS
        assert store.put_tensor_with_parallelism_from(uniq(), 0x1000, n, par(tp(0, 2, 1))) == INVALID_PARAMS
        assert store.batch_get_tensor_with_parallelism_into([k2, k2], [out], [MB // 2]) == [None, None]
    finally:
        store.unregister_buffer(addr)
        alloc.free(addr)
