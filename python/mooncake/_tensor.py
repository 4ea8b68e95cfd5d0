"""Tensor encoding for the store's tensor APIs, and safetensors files.

A tensor object is an 80-byte header followed by the tensor's bytes in C order:
``b"MCT1"``, dtype code (u32), ndim (u32), reserved (u32, 0), then 8 dims (u64),
all little-endian (docs/PYTHON.md lists the dtype codes). Tensors are
``torch.Tensor`` when torch imports; numpy arrays are accepted too, and reads
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

MAGIC = b"MCT1"
HEADER = struct.Struct("<4sIII8Q")
MAX_DIMS = 8

# Codes are positions in this list (part of the stored format: append only).
DTYPE_NAMES = [
    "float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16",
    "int32", "int64", "bool", "float8_e4m3fn", "float8_e5m2", "complex64",
    "complex128", "uint16", "uint32", "uint64",
]
_CODES = {name: code for code, name in enumerate(DTYPE_NAMES)}
_ITEMSIZE = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1,
    "int16": 2, "int32": 4, "int64": 8, "bool": 1, "float8_e4m3fn": 1,
    "float8_e5m2": 1, "complex64": 8, "complex128": 16, "uint16": 2, "uint32": 4,
    "uint64": 8,
}
# safetensors' dtype names.
_ST_NAMES = {
    "float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
    "int8": "I8", "uint8": "U8", "int16": "I16", "int32": "I32", "int64": "I64",
    "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": "C64", "uint16": "U16", "uint32": "U32", "uint64": "U64",
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


def encode(obj):
    """``(header, payload)`` of a tensor, or None when this format cannot hold it."""
    r = raw(obj)
    if r is None or len(r[1]) > MAX_DIMS:
        return None
    name, shape, data = r
    dims = list(shape) + [0] * (MAX_DIMS - len(shape))
    return HEADER.pack(MAGIC, _CODES[name], len(shape), 0, *dims), data


def parse_header(data):
    """``(dtype name, shape, payload bytes)`` from a stored object's start, or None."""
    if data is None or len(data) < HEADER.size:
        return None
    magic, code, ndim, _, *dims = HEADER.unpack_from(data, 0)
    if magic != MAGIC or code >= len(DTYPE_NAMES) or ndim > MAX_DIMS:
        return None
    name = DTYPE_NAMES[code]
    shape = tuple(dims[:ndim])
    count = 1
    for d in shape:
        count *= d
    return name, shape, count * _ITEMSIZE[name]


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
    parsed = parse_header(data)
    if parsed is None:
        return None
    name, shape, nbytes = parsed
    if len(data) != HEADER.size + nbytes:
        return None
    body = memoryview(data)[HEADER.size:]
    return build(name, shape, bytearray(body) if copy else body)


def split(obj, parts, dim):
    """``obj`` cut into ``parts`` contiguous shards along ``dim`` (as even as
    possible), or None."""
    if _torch is not None and isinstance(obj, _torch.Tensor):
        if not -obj.dim() <= dim < obj.dim() or obj.shape[dim] < parts:
            return None
        return list(_torch.tensor_split(obj, parts, dim=dim))
    if _np is not None and isinstance(obj, _np.ndarray):
        if not -obj.ndim <= dim < obj.ndim or obj.shape[dim] < parts:
            return None
        return _np.array_split(obj, parts, axis=dim)
    return None


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
