"""``mooncake.store``: upstream's Python API of the Mooncake Store.

Store failures never raise: calls return upstream's negative error codes (result
lists as long as the key lists), ``get`` returns empty bytes and the tensor
getters ``None``. The GIL is released inside every call.

Tensor helpers (``put_tensor`` / ``get_tensor`` / ``batch_put_tensor`` /
``batch_get_tensor``) exist when ``torch`` is importable. A tensor is stored as an
80-byte header followed by its bytes in C order (see docs/PYTHON.md):
``b"MCT1"``, dtype code (u32), ndim (u32), reserved (u32), then 8 dims (u64),
all little-endian.
"""

import struct

from mooncake._native import (  # noqa: F401
    BufferHandle,
    MooncakeHostMemAllocator,
    ReplicaDescriptor,
    ReplicateConfig,
    SoftPinAction,
    error_name,
)
from mooncake._native import MooncakeDistributedStore as _NativeStore

__all__ = [
    "BufferHandle",
    "MooncakeDistributedStore",
    "MooncakeDistributedStoreAsync",
    "MooncakeHostMemAllocator",
    "ReplicaDescriptor",
    "ReplicateConfig",
    "SoftPinAction",
    "error_name",
]

try:  # torch is optional: the tensor helpers exist only with it
    import torch as _torch
except Exception:  # pragma: no cover - depends on the environment
    _torch = None

_TENSOR_MAGIC = b"MCT1"
_TENSOR_HEADER = struct.Struct("<4sIII8Q")
_MAX_DIMS = 8
_INVALID_PARAMS = -600

_DTYPE_NAMES = [
    "float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16",
    "int32", "int64", "bool", "float8_e4m3fn", "float8_e5m2", "complex64",
    "complex128", "uint16", "uint32", "uint64",
]


def _dtype_tables():
    to_code, from_code = {}, {}
    for code, name in enumerate(_DTYPE_NAMES):
        dtype = getattr(_torch, name, None)
        if dtype is not None:
            to_code[dtype] = code
            from_code[code] = dtype
    return to_code, from_code


def _encode_tensor(tensor):
    """Header and payload of a tensor, or None for one this format cannot hold."""
    to_code, _ = _dtype_tables()
    if not isinstance(tensor, _torch.Tensor) or tensor.dtype not in to_code:
        return None
    if tensor.dim() > _MAX_DIMS:
        return None
    t = tensor.detach().to("cpu").contiguous()
    dims = list(t.shape) + [0] * (_MAX_DIMS - t.dim())
    header = _TENSOR_HEADER.pack(_TENSOR_MAGIC, to_code[t.dtype], t.dim(), 0, *dims)
    payload = t.reshape(-1).view(_torch.uint8).numpy() if t.numel() else b""
    return header, payload


def _decode_tensor(data):
    """The tensor stored in ``data`` (bytes-like), or None."""
    _, from_code = _dtype_tables()
    if data is None or len(data) < _TENSOR_HEADER.size:
        return None
    magic, code, ndim, _, *dims = _TENSOR_HEADER.unpack_from(data, 0)
    if magic != _TENSOR_MAGIC or code not in from_code or ndim > _MAX_DIMS:
        return None
    dtype = from_code[code]
    shape = dims[:ndim]
    body = bytearray(memoryview(data)[_TENSOR_HEADER.size:])
    count = 1
    for d in shape:
        count *= d
    itemsize = _torch.empty((), dtype=dtype).element_size()
    if len(body) != count * itemsize:
        return None
    if count == 0:
        return _torch.empty(shape, dtype=dtype)
    return _torch.frombuffer(body, dtype=_torch.uint8).view(dtype).reshape(shape)


class MooncakeDistributedStore(_NativeStore):
    """The distributed store. ``setup(...)`` runs a full client in this process;
    ``setup_dummy(...)`` connects to the host's ``mooncake_client``."""

    if _torch is not None:

        def put_tensor(self, key, tensor, config=None):
            """Stores a tensor (copied to CPU); 0 or a negative code."""
            encoded = _encode_tensor(tensor)
            if encoded is None:
                return _INVALID_PARAMS
            return self.put_parts(key, *encoded, config=config)

        def get_tensor(self, key):
            """The tensor stored under ``key`` (on CPU), or None."""
            return _decode_tensor(self.get_buffer(key))

        def batch_put_tensor(self, keys, tensors, config=None):
            """Stores tensors; per key 0 or a negative code."""
            if len(keys) != len(tensors):
                return [_INVALID_PARAMS] * len(keys)
            return [self.put_tensor(k, t, config) for k, t in zip(keys, tensors)]

        def batch_get_tensor(self, keys):
            """Tensors (None for missing ones); as long as ``keys``."""
            return [_decode_tensor(b) for b in self.batch_get_buffer(keys)]


def __getattr__(name):
    # Lazily, to avoid a circular import: ``mooncake.async_store`` subclasses ours.
    if name == "MooncakeDistributedStoreAsync":
        from mooncake.async_store import MooncakeDistributedStoreAsync

        return MooncakeDistributedStoreAsync
    raise AttributeError(f"module 'mooncake.store' has no attribute {name!r}")
