"""Tensor encoding for the store's tensor APIs, and safetensors files.

A tensor object is upstream's ``TensorMetadata`` (304 bytes, little-endian)
followed by the tensor's bytes in C order, so objects written here read back in
upstream's client and the other way round. The header: magic ``0x4d4f4f4e``
(u32), version 1 (u16), header size 304 (u16), dtype (i32, upstream's
``TensorDtype``), ndim (i32, <= 8), layout kind (u32: 0 full, 1 shard), flags
(u32, 0), data offset (u64, 304), data bytes (u64); then the global and the local
shape (8 x i64 each, unused dims -1), the axis count (u32) and a reserved u32, and
4 layout axes (kind, axis index, shard rank, shard count, split dim, reserved:
i32 each; then an i64, the local extent of the split dim). A tensor stored whole
has layout "full" and no axes; a tensor-parallel shard ``<key>_tp_<r>`` has layout
"shard", the whole tensor's shape as its global shape and one TP axis. Tensors
are ``torch.Tensor`` when torch imports; numpy arrays are accepted too, and reads
return numpy arrays when torch is absent.
"""

import json
import struct

try:  # both optional: tensors are torch's, numpy is the fallback
    import torch as _torch
except Exception:  # pragma: no cover - depends on the environment
    _torch = None
try:
    import numpy as _np
except Exception:  # pragma: no cover - depends on the environment
    _np = None

MAGIC = 0x4D4F4F4E
VERSION = 1
MAX_DIMS = 8
MAX_AXES = 4
LAYOUT_FULL, LAYOUT_SHARD = 0, 1
AXIS_TP = 1
_OBJECT = struct.Struct("<IHHiiIIQQ")
_SHAPE = struct.Struct("<8q")
_AXES_HEAD = struct.Struct("<II")
_AXIS = struct.Struct("<iiiiiiq")
HEADER_SIZE = _OBJECT.size + 2 * _SHAPE.size + _AXES_HEAD.size + MAX_AXES * _AXIS.size

# Upstream's TensorDtype: codes are positions in this list.
DTYPE_NAMES = [
    "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
    "int64", "uint64", "bool", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
]
_CODES = {name: code for code, name in enumerate(DTYPE_NAMES)}
_ITEMSIZE = {
    "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2,
    "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "float16": 2,
    "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
}
# safetensors' dtype names.
_ST_NAMES = {
    "float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
    "int8": "I8", "uint8": "U8", "int16": "I16", "int32": "I32", "int64": "I64",
    "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "uint16": "U16", "uint32": "U32", "uint64": "U64",
}
_FROM_ST = {v: k for k, v in _ST_NAMES.items()}


def available():
    """Whether tensors can be handled at all (torch or numpy imports)."""
    return _torch is not None or _np is not None


def is_tensor(obj):
    return (_torch is not None and isinstance(obj, _torch.Tensor)) or (
        _np is not None and isinstance(obj, _np.ndarray)
    )


def raw(obj):
    """``(dtype name, shape, bytes-like)`` of a tensor or array, or None."""
    if _torch is not None and isinstance(obj, _torch.Tensor):
        name = str(obj.dtype).replace("torch.", "")
        if name not in _CODES:
            return None
        t = obj.detach().to("cpu").contiguous()
        data = t.reshape(-1).view(_torch.uint8).numpy() if t.numel() else b""
        return name, tuple(t.shape), data
    if _np is not None and isinstance(obj, _np.ndarray):
        name = obj.dtype.name
        if name not in _CODES:
            return None
        # (ascontiguousarray would turn a 0-d array into a 1-d one)
        a = _np.ascontiguousarray(obj).reshape(-1)
        return name, tuple(obj.shape), a.view(_np.uint8)
    return None


def _shape(dims):
    return _SHAPE.pack(*(list(dims) + [-1] * (MAX_DIMS - len(dims))))


def header(name, local_shape, nbytes, global_shape=None, axes=()):
    """Upstream's ``TensorMetadata`` for a tensor of dtype ``name``: layout
    "full" without ``axes``, else "shard" with ``axes`` (tuples of kind, rank,
    count, split dim, local extent of the split dim and, optionally, the expert
    or stage id of an EP or PP axis)."""
    layout = LAYOUT_SHARD if axes else LAYOUT_FULL
    out = _OBJECT.pack(
        MAGIC, VERSION, HEADER_SIZE, _CODES[name], len(local_shape), layout, 0,
        HEADER_SIZE, nbytes,
    )
    out += _shape(global_shape if global_shape is not None else local_shape)
    out += _shape(local_shape)
    out += _AXES_HEAD.pack(len(axes), 0)
    for i in range(MAX_AXES):
        if i < len(axes):
            kind, rank, count, split_dim, extent = axes[i][:5]
            ident = axes[i][5] if len(axes[i]) > 5 else 0
            out += _AXIS.pack(kind, i, rank, count, split_dim, ident, extent)
        else:
            out += bytes(_AXIS.size)
    return out


def encode(obj, global_shape=None, axes=()):
    """``(header, payload)`` of a tensor, or None when this format cannot hold it
    (a dtype upstream has no code for, more than 8 dims)."""
    r = raw(obj)
    if r is None or len(r[1]) > MAX_DIMS:
        return None
    name, shape, data = r
    return header(name, shape, len(data), global_shape, axes), data


def parse_header(data, total_length):
    """``(dtype name, local shape, data offset, data bytes)`` of a stored object
    of ``total_length`` bytes whose start is ``data``, or None unless the header
    passes every check upstream's reader makes."""
    if data is None or total_length < HEADER_SIZE or len(data) < HEADER_SIZE:
        return None
    magic, version, size, code, ndim, layout, _, offset, nbytes = _OBJECT.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION or size != HEADER_SIZE:
        return None
    if not 0 <= code < len(DTYPE_NAMES) or not 0 <= ndim <= MAX_DIMS or layout > LAYOUT_SHARD:
        return None
    at = _OBJECT.size
    global_shape = _SHAPE.unpack_from(data, at)
    local_shape = _SHAPE.unpack_from(data, at + _SHAPE.size)
    axis_count, _ = _AXES_HEAD.unpack_from(data, at + 2 * _SHAPE.size)
    if axis_count > MAX_AXES:
        return None
    if not HEADER_SIZE <= offset <= total_length or nbytes != total_length - offset:
        return None
    if any(d < 0 for d in global_shape[:ndim] + local_shape[:ndim]):
        return None
    if any(d != -1 for d in global_shape[ndim:] + local_shape[ndim:]):
        return None
    name = DTYPE_NAMES[code]
    count = 1
    for d in local_shape[:ndim]:
        count *= d
    if count * _ITEMSIZE[name] != nbytes:
        return None
    axes_at = at + 2 * _SHAPE.size + _AXES_HEAD.size
    for i in range(axis_count):
        kind, _, rank, shards, split_dim, _, _ = _AXIS.unpack_from(data, axes_at + i * _AXIS.size)
        if not 0 <= kind <= 4 or shards <= 0 or not 0 <= rank < shards:
            return None
        if not -1 <= split_dim < ndim:
            return None
    return name, tuple(local_shape[:ndim]), offset, nbytes


def parse_layout(data, total_length):
    """``(dtype name, global shape, local shape, layout kind, axes, data offset,
    data bytes)`` of a stored tensor object that passes ``parse_header``, else
    None; ``axes`` are ``(kind, rank, count, split dim, id)`` tuples (split dim
    -1 when the axis has none; id is an EP axis's expert id, a PP axis's stage
    id, else 0)."""
    parsed = parse_header(data, total_length)
    if parsed is None:
        return None
    name, local_shape, offset, nbytes = parsed
    _, _, _, _, ndim, layout, _, _, _ = _OBJECT.unpack_from(data, 0)
    at = _OBJECT.size
    global_shape = tuple(_SHAPE.unpack_from(data, at)[:ndim])
    axis_count, _ = _AXES_HEAD.unpack_from(data, at + 2 * _SHAPE.size)
    axes_at = at + 2 * _SHAPE.size + _AXES_HEAD.size
    axes = []
    for i in range(axis_count):
        kind, _, rank, shards, split_dim, ident, _ = _AXIS.unpack_from(data, axes_at + i * _AXIS.size)
        axes.append((kind, rank, shards, split_dim, ident))
    return name, global_shape, local_shape, layout, axes, offset, nbytes


def item_size(name):
    """Bytes per element of dtype ``name``."""
    return _ITEMSIZE[name]


def build(name, shape, payload):
    """A tensor (torch when it imports, else numpy) over ``payload`` (a writable
    bytes-like, shared, not copied), or None."""
    if _torch is not None:
        dtype = getattr(_torch, name, None)
        if dtype is None:
            return None
        if len(payload) == 0:
            return _torch.empty(shape, dtype=dtype)
        return _torch.frombuffer(payload, dtype=_torch.uint8).view(dtype).reshape(shape)
    if _np is not None:
        try:
            dtype = _np.dtype(name)
        except TypeError:
            return None  # bfloat16 / float8 have no numpy dtype
        return _np.frombuffer(payload, dtype=dtype).reshape(shape)
    return None


def decode(data, copy=True):
    """The tensor stored in ``data`` (bytes-like), or None. ``copy=False`` keeps a
    view of ``data`` (which must then be writable and outlive the tensor)."""
    if data is None:
        return None
    parsed = parse_header(data, len(data))
    if parsed is None:
        return None
    name, shape, offset, nbytes = parsed
    body = memoryview(data)[offset:offset + nbytes]
    return build(name, shape, bytearray(body) if copy else body)


def shards(obj, parts, dim):
    """``obj`` cut into ``parts`` equal contiguous shards along ``dim`` with the
    header each is stored under (``[(header, payload)]``), or None. As upstream,
    the dim's size must be a multiple of ``parts`` and ``dim`` non-negative."""
    if _torch is not None and isinstance(obj, _torch.Tensor):
        ndim, size, cut = obj.dim(), None, None
        if 0 <= dim < ndim:
            size = obj.shape[dim]
            cut = lambda start, n: obj.narrow(dim, start, n).contiguous()  # noqa: E731
    elif _np is not None and isinstance(obj, _np.ndarray):
        ndim, size, cut = obj.ndim, None, None
        if 0 <= dim < ndim:
            size = obj.shape[dim]
            cut = lambda start, n: _np.ascontiguousarray(  # noqa: E731
                _np.take(obj, range(start, start + n), axis=dim))
    else:
        return None
    if size is None or parts <= 0 or size % parts != 0:
        return None
    whole = tuple(obj.shape)
    n = size // parts
    out = []
    for rank in range(parts):
        e = encode(cut(rank * n, n), whole, [(AXIS_TP, rank, parts, dim, n)])
        if e is None:
            return None
        out.append(e)
    return out


def save_safetensors(path, tensors):
    """Writes ``{name: tensor}`` as a safetensors file; False when one cannot be."""
    header, blobs, at = {}, [], 0
    for name, obj in tensors.items():
        r = raw(obj)
        if r is None or r[0] not in _ST_NAMES:
            return False
        dtype, shape, data = r
        n = len(memoryview(data).cast("B"))
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [at, at + n]}
        blobs.append(data)
        at += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(memoryview(b).cast("B"))
    return True


def load_safetensors(path, name=None):
    """The tensor ``name`` (default: the first) of a safetensors file, or None."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            return None
        header = json.loads(f.read(n))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        if not entries:
            return None
        meta = entries.get(name) if name is not None else None
        if meta is None:
            meta = next(iter(entries.values())) if name is None or name not in entries else None
        if meta is None or meta.get("dtype") not in _FROM_ST:
            return None
        start, end = meta["data_offsets"]
        f.seek(8 + n + start)
        body = bytearray(f.read(end - start))
    dtype = _FROM_ST[meta["dtype"]]
    shape = tuple(meta["shape"])
    count = 1
    for d in shape:
        count *= d
    if len(body) != count * _ITEMSIZE[dtype]:
        return None
    return build(dtype, shape, body)
