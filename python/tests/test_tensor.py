"""Tensor APIs: numpy arrays everywhere (the codec, batch, ``_from`` / ``_into``,
tensor parallelism, safetensors), and torch tensors when torch imports."""

import json
import struct
import uuid

import pytest

np = pytest.importorskip("numpy", reason="numpy is not installed")

from mooncake import _tensor  # noqa: E402
from mooncake.store import MooncakeHostMemAllocator, ReplicateConfig  # noqa: E402

INVALID_PARAMS = -600
OBJECT_NOT_FOUND = -704
MB = 1 << 20


def uniq(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex}"


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


ARRAYS = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.array([1, -2, 3], dtype=np.int64),
    np.array([True, False, True]),
    np.arange(6, dtype=np.float16).reshape(3, 2),
    np.arange(10, dtype=np.uint8),
    np.zeros((0, 4), dtype=np.int32),
    np.array(3.5, dtype=np.float64),  # 0-d
]


def upstream_header(dtype, ndim, glob, local, layout=0, axes=(), offset=304, nbytes=0):
    """Upstream's ``TensorMetadata`` (mooncake-integration/integration_utils.h),
    packed field by field as its C struct lays it out."""
    pad = lambda dims: list(dims) + [-1] * (8 - len(dims))  # noqa: E731
    out = struct.pack("<IHHiiIIQQ", 0x4D4F4F4E, 1, 304, dtype, ndim, layout, 0, offset, nbytes)
    out += struct.pack("<8q", *pad(glob)) + struct.pack("<8q", *pad(local))
    out += struct.pack("<II", len(axes), 0)
    for i in range(4):
        out += struct.pack("<iiiiiiq", *axes[i]) if i < len(axes) else bytes(32)
    assert len(out) == 304
    return out


def test_header_is_upstreams_tensor_metadata():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    header, payload = _tensor.encode(a)
    # int32 is upstream's TensorDtype 6; layout FULL, global = local shape.
    assert header == upstream_header(6, 2, [2, 3], [2, 3], nbytes=24)
    assert bytes(payload) == a.tobytes()
    # An object written by upstream's put_tensor decodes here.
    f16 = np.arange(4, dtype=np.float16)
    assert same(_tensor.decode(upstream_header(11, 1, [4], [4], nbytes=8) + f16.tobytes()), f16)
    assert _tensor.encode(np.zeros([1] * 9)) is None  # more than 8 dims
    assert _tensor.encode(np.zeros(2, dtype=np.complex64)) is None  # no upstream dtype code
    assert _tensor.encode("not a tensor") is None
    assert _tensor.decode(b"XXXX" + bytes(400)) is None
    good = header + bytes(payload)
    assert same(_tensor.decode(good), a)
    assert _tensor.decode(good[:-1]) is None  # truncated body
    assert _tensor.decode(good + b"x") is None  # data_bytes disagrees with the length
    # Every field upstream's reader checks is checked here too.
    bad = [
        upstream_header(6, 2, [2, 3], [2, 3], nbytes=20),  # bytes != numel * size
        upstream_header(15, 2, [2, 3], [2, 3], nbytes=24),  # no such dtype
        upstream_header(6, 9, [2, 3], [2, 3], nbytes=24),  # ndim > 8
        upstream_header(6, 2, [2, 3], [2, 3], layout=2, nbytes=24),  # no such layout
        upstream_header(6, 2, [2, 3], [2, 3], offset=8, nbytes=24),  # data inside the header
        upstream_header(6, 1, [2, 3], [6], nbytes=24),  # unused dims must be -1
        upstream_header(6, 2, [2, 3], [2, 3], layout=1, axes=[(1, 0, 2, 2, 0, 0, 1)], nbytes=24),  # rank >= count
    ]
    for h in bad:
        assert _tensor.decode(h + a.tobytes()) is None


def test_shards_carry_upstreams_shard_layout(store):
    full = np.arange(8 * 6, dtype=np.int64).reshape(8, 6)
    k = uniq()
    assert store.put_tensor_with_tp(k, full, tp_size=2, split_dim=1) == 0
    raw = store.get(f"{k}_tp_1")
    shard = full[:, 3:]
    # SHARD layout, global shape the whole tensor's, one TP axis (kind 1, index 0,
    # rank 1 of 2, split dim 1, local extent 3).
    expected = upstream_header(8, 2, [8, 6], [8, 3], layout=1, axes=[(1, 0, 1, 2, 1, 0, 3)], nbytes=shard.nbytes)
    assert raw[:304] == expected and raw[304:] == shard.tobytes()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_put_and_get_tensor_round_trip(store, array):
    k = uniq()
    assert store.put_tensor(k, array) == 0
    got = store.get_tensor(k)
    assert same(got, array)
    # Non-contiguous input is stored in C order.
    if array.ndim == 2 and array.size:
        k2 = uniq()
        assert store.put_tensor(k2, array.T) == 0
        assert same(store.get_tensor(k2), np.ascontiguousarray(array.T))


def test_tensor_batches_upsert_and_errors(store):
    keys = [uniq() for _ in range(3)]
    arrays = [np.full((4,), i, dtype=np.int16) for i in range(3)]
    assert store.batch_put_tensor(keys, arrays) == [0, 0, 0]
    got = store.batch_get_tensor(keys + [uniq()])
    assert all(same(g, a) for g, a in zip(got, arrays)) and got[3] is None
    assert store.put_tensor(keys[0], np.ones(2)) == 0  # put keeps the old value
    assert same(store.get_tensor(keys[0]), arrays[0])
    assert store.upsert_tensor(keys[0], np.ones(2)) == 0
    assert same(store.get_tensor(keys[0]), np.ones(2))
    assert store.batch_upsert_tensor(keys[1:], [np.zeros(1), np.zeros(2)]) == [0, 0]
    cfg = ReplicateConfig()
    assert store.pub_tensor(uniq(), np.ones(3), cfg) == 0
    assert store.batch_pub_tensor([uniq(), uniq()], [np.ones(1), np.ones(2)], cfg) == [0, 0]
    assert store.put_tensor(uniq(), "nope") == INVALID_PARAMS
    assert store.put_tensor(uniq(), np.array(["a", "b"])) == INVALID_PARAMS  # no such dtype
    assert store.batch_put_tensor([uniq()], []) == [INVALID_PARAMS]
    k = uniq()
    assert store.put(k, b"plain bytes, not a tensor") == 0
    assert store.get_tensor(k) is None and store.get_tensor(uniq()) is None


def test_tensor_from_and_into_registered_memory(store):
    alloc = MooncakeHostMemAllocator()
    addr = alloc.alloc(MB)
    assert store.register_buffer(addr, MB) == 0
    try:
        a = np.arange(1000, dtype=np.float32)
        k = uniq()
        assert store.put_tensor(k, a) == 0
        n = _tensor.HEADER_SIZE + a.nbytes
        view = store.get_tensor_into(k, addr, MB)
        assert same(view, a)
        view[0] = 42.0  # a view of the registered buffer, not a copy
        assert store.put_tensor_from(uniq("copy"), addr, n) == 0
        k2 = uniq()
        assert store.put_tensor_from(k2, addr, n) == 0
        assert store.get_tensor(k2)[0] == 42.0
        assert store.put_tensor_from(uniq(), addr, n - 1) == INVALID_PARAMS  # size disagrees
        assert store.put_tensor_from(uniq(), 0x1000, n) == INVALID_PARAMS  # not registered
        assert store.upsert_tensor_from(k2, addr, n) == 0
        got = store.batch_get_tensor_into([k, uniq()], [addr, addr + n], [n, 1000])
        assert same(got[0], a) and got[1] is None  # k was stored before the edit
        assert store.batch_put_tensor_from([uniq(), uniq()], [addr, 0x1000], [n, n]) == [0, INVALID_PARAMS]
        assert store.get_tensor_into(k, addr, 10) is None  # buffer too small
    finally:
        store.unregister_buffer(addr)
        alloc.free(addr)


def test_tensor_parallel_shards(store):
    full = np.arange(8 * 6, dtype=np.int32).reshape(8, 6)
    k = uniq()
    assert store.put_tensor_with_tp(k, full, tp_size=4, split_dim=0) == 0
    for rank in range(4):
        assert same(store.get_tensor_with_tp(k, tp_rank=rank, tp_size=4), full[2 * rank:2 * rank + 2])
        assert same(store.get_tensor(f"{k}_tp_{rank}"), full[2 * rank:2 * rank + 2])
    cols = uniq()
    assert store.put_tensor_with_tp(cols, full, tp_size=3, split_dim=1) == 0
    assert same(store.get_tensor_with_tp(cols, tp_rank=2, tp_size=3), full[:, 4:6])
    # tp_size 1: the plain key.
    plain = uniq()
    assert store.put_tensor_with_tp(plain, full) == 0 and same(store.get_tensor(plain), full)
    assert same(store.get_tensor_with_tp(plain), full)
    keys = [uniq(), uniq()]
    assert store.batch_put_tensor_with_tp(keys, [full, full * 2], tp_size=2) == [0, 0]
    got = store.batch_get_tensor_with_tp(keys, tp_rank=1, tp_size=2)
    assert same(got[0], full[4:]) and same(got[1], full[4:] * 2)
    assert store.batch_pub_tensor_with_tp(keys, [full, full], ReplicateConfig(), 0, 2) == [0, 0]
    assert store.put_tensor_with_tp(uniq(), full, tp_size=9, split_dim=0) == INVALID_PARAMS
    assert store.put_tensor_with_tp(uniq(), full, tp_size=2, split_dim=5) == INVALID_PARAMS
    # As upstream: only equal shards, and no negative dims.
    assert store.put_tensor_with_tp(uniq(), full, tp_size=4, split_dim=1) == INVALID_PARAMS
    assert store.put_tensor_with_tp(uniq(), full, tp_size=2, split_dim=-1) == INVALID_PARAMS
    assert store.get_tensor_with_tp(k, tp_rank=7, tp_size=8) is None


def test_safetensors_round_trip(store, tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    k = uniq()
    assert store.put_tensor(k, a) == 0
    path = tmp_path / "t.safetensors"
    assert store.save_tensor_to_safetensor(k, str(path)) == 0
    # A real safetensors file: header length, JSON header, data.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header[k] == {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}
    assert raw[8 + n:] == a.tobytes() and n % 8 == 0
    assert store.remove(k, force=True) == 0  # just read: leased
    loaded = store.load_tensor_from_safetensor(k, str(path))
    assert same(loaded, a) and same(store.get_tensor(k), a)
    other = uniq()
    assert same(store.load_tensor_from_safetensor(other, str(path)), a)  # first tensor
    assert same(store.get_tensor(other), a)
    assert store.save_tensor_to_safetensor(uniq(), str(tmp_path / "x")) == OBJECT_NOT_FOUND
    assert store.load_tensor_from_safetensor(uniq(), str(tmp_path / "missing")) is None
    (tmp_path / "junk").write_bytes(b"\x00" * 3)
    assert store.load_tensor_from_safetensor(uniq(), str(tmp_path / "junk")) is None
    assert store.save_tensor_to_safetensor(other, str(tmp_path / "no" / "dir")) < 0


def test_torch_tensors(store):
    torch = pytest.importorskip("torch", reason="torch is not installed (no CPU wheel reachable here)")
    t = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    k = uniq()
    assert store.put_tensor(k, t) == 0
    got = store.get_tensor(k)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bfloat16 and torch.equal(got, t)
    assert store.put_tensor_with_tp(k + "tp", t, tp_size=2, split_dim=1) == 0
    assert torch.equal(store.get_tensor_with_tp(k + "tp", tp_rank=1, tp_size=2), t[:, 2:])


def test_tp_from_registered_memory_and_upsert_pub(store):
    alloc = MooncakeHostMemAllocator()
    addr = alloc.alloc(MB)
    assert store.register_buffer(addr, MB) == 0
    try:
        full = np.arange(8 * 6, dtype=np.int32).reshape(8, 6)
        k = uniq()
        assert store.put_tensor(k, full) == 0
        assert same(store.get_tensor_into(k, addr, MB), full)
        n = _tensor.HEADER_SIZE + full.nbytes
        base = uniq("tpfrom")
        assert store.put_tensor_with_tp_from(base, addr, n, tp_size=2, split_dim=0) == 0
        assert same(store.get_tensor_with_tp(base, tp_rank=1, tp_size=2), full[4:])
        assert store.batch_put_tensor_with_tp_from([uniq(), uniq()], [addr, 0x1000], [n, n], tp_size=2) == [
            0, INVALID_PARAMS]
        assert store.put_tensor_with_tp_from(uniq(), addr, n - 1, tp_size=2) == INVALID_PARAMS
        assert store.put_tensor_with_tp_from(uniq(), addr, n, tp_size=4, split_dim=1) == INVALID_PARAMS
        # tp_size 1: stored whole, as put_tensor_from.
        whole = uniq()
        assert store.put_tensor_with_tp_from(whole, addr, n) == 0 and same(store.get_tensor(whole), full)
    finally:
        store.unregister_buffer(addr)
        alloc.free(addr)
    k = uniq()
    assert store.put_tensor(k, np.zeros(3)) == 0
    assert store.upsert_pub_tensor(k, np.ones(2), ReplicateConfig()) == 0
    assert same(store.get_tensor(k), np.ones(2))
    assert store.batch_upsert_pub_tensor([k, uniq()], [np.ones(1), np.ones(4)], ReplicateConfig()) == [0, 0]
    assert same(store.get_tensor(k), np.ones(1))
