"""``mooncake.store``: upstream's Python API of the Mooncake Store.

Store failures never raise: calls return upstream's negative error codes (result
lists as long as the key lists), ``get`` returns empty bytes and the tensor
getters ``None``. The GIL is released inside every native call.

Tensor APIs (``put_tensor`` / ``get_tensor`` and their batch, ``_from`` /
``_into``, ``upsert_`` / ``pub_``, tensor-parallel and safetensors forms) take
``torch.Tensor`` (or numpy arrays) and return torch tensors when torch imports,
numpy arrays otherwise. A tensor is stored as upstream stores it: its 304-byte
``TensorMetadata`` header, then its bytes in C order (``mooncake._tensor``,
docs/PYTHON.md).
"""

import ctypes
import logging
import os

from mooncake import _tensor
from mooncake._parallel import Parallel as _Parallel
from mooncake._parallel import ParallelAxis, ReadTarget, TensorParallelism  # noqa: F401
from mooncake._native import (  # noqa: F401
    BufferHandle,
    Descriptor,
    MemoryDescriptor,
    MooncakeHostMemAllocator,
    ObjectDataType,
    QueryTaskResponse,
    ReplicaDescriptor,
    ReplicaStatus,
    ReplicateConfig,
    SoftPinAction,
    TaskStatus,
    TaskType,
    error_name,
    get_alloc_func_addr,
    get_free_func_addr,
)
from mooncake._native import MooncakeDistributedStore as _NativeStore
from mooncake.buffer_pool import BufferLease, BufferPool  # noqa: F401

# Upstream's other names for the same classes.
RegisteredBufferPool = BufferPool
RegisteredBufferLease = BufferLease

__all__ = [
    "BufferHandle",
    "BufferLease",
    "BufferPool",
    "RegisteredBufferLease",
    "RegisteredBufferPool",
    "get_alloc_func_addr",
    "get_free_func_addr",
    "Descriptor",
    "MemoryDescriptor",
    "MooncakeDistributedStore",
    "MooncakeDistributedStoreAsync",
    "MooncakeHostMemAllocator",
    "ObjectDataType",
    "ParallelAxis",
    "QueryTaskResponse",
    "ReadTarget",
    "ReplicaDescriptor",
    "ReplicaStatus",
    "ReplicateConfig",
    "SoftPinAction",
    "TaskStatus",
    "TaskType",
    "TensorParallelism",
    "error_name",
    "bind_to_numa_node",
    "UNDEFINED",
    "INITIALIZED",
    "COMPLETE",
    "REMOVED",
    "PENDING",
    "PROCESSING",
    "SUCCESS",
    "FAILED",
    "REPLICA_COPY",
    "REPLICA_MOVE",
    "UNKNOWN",
    "KVCACHE",
    "TENSOR",
    "WEIGHT",
    "SAMPLE",
    "ACTIVATION",
    "GRADIENT",
    "OPTIMIZER_STATE",
    "METADATA",
    "GENERAL",
]

_log = logging.getLogger("mooncake.store")
_INVALID_PARAMS = -600
_OBJECT_NOT_FOUND = -704
_FILE_NOT_FOUND = -1100
_FILE_WRITE_FAIL = -1102


def _tp_key(key, rank):
    return f"{key}_tp_{rank}"


def _view(ptr, size):
    """A writable memoryview of ``size`` bytes at ``ptr`` (registered memory)."""
    return memoryview((ctypes.c_char * size).from_address(ptr)).cast("B")


def _first_error(results):
    return next((r for r in results if r < 0), 0)


class MooncakeDistributedStore(_NativeStore):
    """The distributed store. ``setup(...)`` runs a full client in this process;
    ``setup_dummy(...)`` connects to the host's ``mooncake_client``."""

    def init_all(self, protocol, device_name, mount_segment_size=16 * 1024 * 1024):
        """Upstream's one-call setup: a client in this process contributing
        ``mount_segment_size`` bytes, with the master from ``MOONCAKE_MASTER``
        (default ``127.0.0.1:50051``). 0 or a negative code (-600 when already
        set up)."""
        master = os.environ.get("MOONCAKE_MASTER", "127.0.0.1:50051")
        return self.setup(
            "localhost", "P2PHANDSHAKE", mount_segment_size, 16 * 1024 * 1024,
            protocol, device_name, master,
        )

    # ------------------------------------------------------------ tensors

    def _put_tensors(self, keys, tensors, config, upsert):
        if len(keys) != len(tensors):
            return [_INVALID_PARAMS] * len(keys)
        return self._put_encoded(keys, [_tensor.encode(t) for t in tensors], config, upsert)

    def _put_encoded(self, keys, encoded, config, upsert):
        results = [_INVALID_PARAMS] * len(keys)
        put = self.upsert_parts if upsert else self.put_parts
        for i, (k, e) in enumerate(zip(keys, encoded)):
            if e is None:
                _log.error("put_tensor(%r): not a tensor of a supported dtype and <= 8 dims", k)
                continue
            results[i] = put(k, *e, config=config)
        return results

    def put_tensor(self, key, tensor, config=None):
        """Stores a tensor (copied to host memory); 0 or a negative code."""
        return self._put_tensors([key], [tensor], config, False)[0]

    def upsert_tensor(self, key, tensor, config=None):
        """As ``put_tensor``, replacing an existing value."""
        return self._put_tensors([key], [tensor], config, True)[0]

    def pub_tensor(self, key, tensor, config=None):
        """Publishes a tensor with a replication config (``put_tensor``)."""
        return self._put_tensors([key], [tensor], config, False)[0]

    def batch_put_tensor(self, keys, tensors, config=None):
        """Stores tensors; per key 0 or a negative code."""
        return self._put_tensors(list(keys), list(tensors), config, False)

    def batch_upsert_tensor(self, keys, tensors, config=None):
        """As ``batch_put_tensor``, replacing existing values."""
        return self._put_tensors(list(keys), list(tensors), config, True)

    def batch_pub_tensor(self, keys, tensors, config=None):
        """Publishes tensors; per key 0 or a negative code."""
        return self._put_tensors(list(keys), list(tensors), config, False)

    def upsert_pub_tensor(self, key, tensor, config=None):
        """``pub_tensor`` replacing an existing value."""
        return self._put_tensors([key], [tensor], config, True)[0]

    def batch_upsert_pub_tensor(self, keys, tensors, config=None):
        """``batch_pub_tensor`` replacing existing values."""
        return self._put_tensors(list(keys), list(tensors), config, True)

    def get_tensor(self, key):
        """The tensor stored under ``key`` (on CPU), or None."""
        return _tensor.decode(self.get_buffer(key))

    def batch_get_tensor(self, keys):
        """Tensors (None for missing ones); as long as ``keys``."""
        return [_tensor.decode(b) for b in self.batch_get_buffer(list(keys))]

    def _check_encoded(self, ptr, size):
        if size < _tensor.HEADER_SIZE:
            return False
        return _tensor.parse_header(_view(ptr, _tensor.HEADER_SIZE), size) is not None

    def put_tensor_from(self, key, buffer_ptr, size, config=None):
        """Stores an encoded tensor (header and bytes, as ``get_tensor_into``
        leaves them) from registered memory, zero-copy; 0 or a negative code."""
        return self.batch_put_tensor_from([key], [buffer_ptr], [size], config)[0]

    def upsert_tensor_from(self, key, buffer_ptr, size, config=None):
        """As ``put_tensor_from``, replacing an existing value."""
        return self.batch_upsert_tensor_from([key], [buffer_ptr], [size], config)[0]

    def _tensors_from(self, keys, ptrs, sizes, config, upsert):
        if not (len(keys) == len(ptrs) == len(sizes)):
            return [_INVALID_PARAMS] * len(keys)
        ok = [self._registered(p, n) and self._check_encoded(p, n) for p, n in zip(ptrs, sizes)]
        idx = [i for i, good in enumerate(ok) if good]
        results = [_INVALID_PARAMS] * len(keys)
        if idx:
            put = self.batch_upsert_from if upsert else self.batch_put_from
            done = put([keys[i] for i in idx], [ptrs[i] for i in idx], [sizes[i] for i in idx], config)
            for i, r in zip(idx, done):
                results[i] = r
        return results

    def batch_put_tensor_from(self, keys, buffer_ptrs, sizes, config=None):
        """Batch ``put_tensor_from``; per key 0 or a negative code."""
        return self._tensors_from(list(keys), list(buffer_ptrs), list(sizes), config, False)

    def put_tensor_with_tp_from(self, key, buffer_ptr, size, tp_rank=0, tp_size=1, split_dim=0):
        """``put_tensor_with_tp`` of the encoded tensor in registered memory (as
        ``put_tensor_from`` takes it); 0 or the first negative code."""
        return self.batch_put_tensor_with_tp_from([key], [buffer_ptr], [size], tp_rank, tp_size, split_dim)[0]

    def batch_put_tensor_with_tp_from(self, base_keys, buffer_ptrs, sizes, tp_rank=0, tp_size=1, split_dim=0):
        """Batch ``put_tensor_with_tp_from``; per key 0 or a negative code."""
        keys, ptrs, sizes = list(base_keys), list(buffer_ptrs), list(sizes)
        if tp_size <= 1:
            return self.batch_put_tensor_from(keys, ptrs, sizes)
        if not (len(keys) == len(ptrs) == len(sizes)):
            return [_INVALID_PARAMS] * len(keys)
        results = []
        for key, p, n in zip(keys, ptrs, sizes):
            ok = p != 0 and self._registered(p, n) and self._check_encoded(p, n)
            t = _tensor.decode(_view(p, n)) if ok else None
            results.append(_INVALID_PARAMS if t is None else self._tp_put([key], [t], tp_size, split_dim, None)[0])
        return results

    def batch_upsert_tensor_from(self, keys, buffer_ptrs, sizes, config=None):
        """Batch ``upsert_tensor_from``."""
        return self._tensors_from(list(keys), list(buffer_ptrs), list(sizes), config, True)

    def _registered(self, ptr, size):
        # The native calls check registration; reading the header first must
        # not touch memory that was never registered.
        return self._is_registered(ptr, size)

    def get_tensor_into_cuda(self, key, tensor):
        """Reads the tensor stored under ``key`` into the CUDA tensor ``tensor``
        (same shape and dtype): 0, or -600 when ``tensor`` is not a CUDA tensor
        (this build has no GPU path; upstream's CPU-only wheel answers the same)."""
        if not getattr(tensor, "is_cuda", False):
            return _INVALID_PARAMS
        value = self.get_tensor(key)
        if value is None:
            return _OBJECT_NOT_FOUND
        try:
            tensor.copy_(value)
        except Exception:  # shape or dtype mismatch
            return _INVALID_PARAMS
        return 0

    def batch_get_tensor_into_cuda(self, keys, tensors):
        """Batch ``get_tensor_into_cuda``: one code per key."""
        if len(keys) != len(tensors):
            return [_INVALID_PARAMS] * len(keys)
        return [self.get_tensor_into_cuda(k, t) for k, t in zip(keys, tensors)]

    def unmount_local_disk_segment(self):
        """Upstream unmounts its local SSD segment; this build has none: -1, as
        upstream answers without one."""
        return -1

    def get_tensor_into(self, key, buffer_ptr, size):
        """Reads the tensor into registered memory and returns a tensor viewing
        it (no copy; valid while the buffer is), or None."""
        return self.batch_get_tensor_into([key], [buffer_ptr], [size])[0]

    def batch_get_tensor_into(self, keys, buffer_ptrs, sizes):
        """Batch ``get_tensor_into``; None for keys that failed."""
        keys, ptrs, sizes = list(keys), list(buffer_ptrs), list(sizes)
        if not (len(keys) == len(ptrs) == len(sizes)):
            return [None] * len(keys)
        out = []
        for n, p in zip(self.batch_get_into(keys, ptrs, sizes), ptrs):
            out.append(_tensor.decode(_view(p, n), copy=False) if n > 0 else None)
        return out

    # ------------------------------------------------- tensor parallelism

    def _tp_put(self, keys, tensors, tp_size, split_dim, config, upsert=False):
        if len(keys) != len(tensors):
            return [_INVALID_PARAMS] * len(keys)
        if tp_size <= 1:
            return self._put_tensors(keys, tensors, config, upsert)
        results = []
        for key, t in zip(keys, tensors):
            shards = _tensor.shards(t, tp_size, split_dim)
            if shards is None:
                _log.error(
                    "put_tensor_with_tp(%r): cannot cut into %d equal shards on dim %d",
                    key, tp_size, split_dim,
                )
                results.append(_INVALID_PARAMS)
                continue
            shard_keys = [_tp_key(key, r) for r in range(tp_size)]
            results.append(_first_error(self._put_encoded(shard_keys, shards, config, upsert)))
        return results

    def put_tensor_with_tp(self, key, tensor, tp_rank=0, tp_size=1, split_dim=0, config=None):
        """Cuts the tensor into ``tp_size`` shards along ``split_dim`` and stores
        shard ``r`` as ``<key>_tp_<r>`` (all of them; ``tp_rank`` is not needed to
        write). 0 or the first negative code."""
        return self._tp_put([key], [tensor], tp_size, split_dim, config)[0]

    def pub_tensor_with_tp(self, key, tensor, config=None, tp_rank=0, tp_size=1, split_dim=0):
        """``put_tensor_with_tp`` with a replication config first."""
        return self._tp_put([key], [tensor], tp_size, split_dim, config)[0]

    def batch_put_tensor_with_tp(self, base_keys, tensors, tp_rank=0, tp_size=1, split_dim=0, config=None):
        """Batch ``put_tensor_with_tp``; per key 0 or a negative code."""
        return self._tp_put(list(base_keys), list(tensors), tp_size, split_dim, config)

    def batch_pub_tensor_with_tp(self, base_keys, tensors, config=None, tp_rank=0, tp_size=1, split_dim=0):
        """Batch ``pub_tensor_with_tp``."""
        return self._tp_put(list(base_keys), list(tensors), tp_size, split_dim, config)

    def get_tensor_with_tp(self, key, tp_rank=0, tp_size=1, split_dim=0):
        """This rank's shard (``<key>_tp_<tp_rank>``; the whole tensor when
        ``tp_size`` <= 1), or None."""
        return self.get_tensor(key if tp_size <= 1 else _tp_key(key, tp_rank))

    def batch_get_tensor_with_tp(self, base_keys, tp_rank=0, tp_size=1, split_dim=0):
        """This rank's shards of several tensors; None for missing ones."""
        keys = list(base_keys) if tp_size <= 1 else [_tp_key(k, tp_rank) for k in base_keys]
        return self.batch_get_tensor(keys)

    def get_tensor_with_tp_into(self, key, buffer_ptr, size, tp_rank=0, tp_size=1, split_dim=0):
        """``get_tensor_with_tp`` into registered memory (a view of it), or None."""
        return self.get_tensor_into(key if tp_size <= 1 else _tp_key(key, tp_rank), buffer_ptr, size)

    def batch_get_tensor_with_tp_into(self, base_keys, buffer_ptrs, sizes, tp_rank=0, tp_size=1):
        """Batch ``get_tensor_with_tp_into``."""
        keys = list(base_keys) if tp_size <= 1 else [_tp_key(k, tp_rank) for k in base_keys]
        return self.batch_get_tensor_into(keys, buffer_ptrs, sizes)

    # ------------------------------------------- unified parallel tensor IO
    # (mooncake._parallel: keys, layouts and manifests as upstream's)

    def put_tensor_with_parallelism(self, key, tensor, parallelism=None, config=None, writer_partition=None):
        """Stores a tensor, or the shard a ``TensorParallelism`` names (TP-only:
        ``tensor`` is the shard; with other axes: the whole tensor, cut here),
        or with ``writer_partition`` (rank, size, split_dim) the writer's shard
        of the whole tensor. 0 or a negative code."""
        return _Parallel(self).put(key, tensor, parallelism, config, writer_partition, False)

    def upsert_tensor_with_parallelism(self, key, tensor, parallelism=None, config=None, writer_partition=None):
        """As ``put_tensor_with_parallelism``, replacing existing values."""
        return _Parallel(self).put(key, tensor, parallelism, config, writer_partition, True)

    def batch_put_tensor_with_parallelism(self, keys, tensors_list, parallelisms=None, config=None, writer_partitions=None):
        """``put_tensor_with_parallelism`` per key (``parallelisms`` or
        ``writer_partitions``: lists as long as ``keys``)."""
        return _Parallel(self).batch_put(keys, tensors_list, parallelisms, config, writer_partitions, False)

    def batch_upsert_tensor_with_parallelism(self, keys, tensors_list, parallelisms=None, config=None, writer_partitions=None):
        """As ``batch_put_tensor_with_parallelism``, replacing existing values."""
        return _Parallel(self).batch_put(keys, tensors_list, parallelisms, config, writer_partitions, True)

    def put_tensor_with_parallelism_from(self, key, buffer_ptr, size, parallelism=None, config=None, writer_partition=None):
        """``put_tensor_with_parallelism`` of the encoded tensor in registered
        memory; with a TP axis every TP shard of it is stored."""
        return _Parallel(self).put_from(key, buffer_ptr, size, parallelism, config, writer_partition, False)

    def upsert_tensor_with_parallelism_from(self, key, buffer_ptr, size, parallelism=None, config=None, writer_partition=None):
        """As ``put_tensor_with_parallelism_from``, replacing existing values."""
        return _Parallel(self).put_from(key, buffer_ptr, size, parallelism, config, writer_partition, True)

    def batch_put_tensor_with_parallelism_from(self, keys, buffer_ptrs, sizes, parallelisms=None, config=None, writer_partitions=None):
        """``put_tensor_with_parallelism_from`` per key."""
        return _Parallel(self).batch_put_from(keys, buffer_ptrs, sizes, parallelisms, config, writer_partitions, False)

    def batch_upsert_tensor_with_parallelism_from(self, keys, buffer_ptrs, sizes, parallelisms=None, config=None, writer_partitions=None):
        """As ``batch_put_tensor_with_parallelism_from``, replacing existing values."""
        return _Parallel(self).batch_put_from(keys, buffer_ptrs, sizes, parallelisms, config, writer_partitions, True)

    def get_tensor_with_parallelism(self, key, target=None):
        """The tensor a ``ReadTarget`` asks for (default: as stored), or None."""
        return _Parallel(self).get(key, target)

    def batch_get_tensor_with_parallelism(self, keys, targets=None):
        """``get_tensor_with_parallelism`` per key; None for failures."""
        return _Parallel(self).batch_get(keys, targets)

    def get_tensor_with_parallelism_into(self, key, buffer_ptr, size, target=None):
        """``get_tensor_with_parallelism`` into registered memory (header and
        bytes, as ``get_tensor_into``); a tensor viewing it, or None."""
        return _Parallel(self).get_into(key, buffer_ptr, size, target)

    def batch_get_tensor_with_parallelism_into(self, keys, buffer_ptrs, sizes, targets=None):
        """``get_tensor_with_parallelism_into`` per key; None for failures."""
        return _Parallel(self).batch_get_into(keys, buffer_ptrs, sizes, targets)

    # ---------------------------------------------------------- safetensors

    def save_tensor_to_safetensor(self, key, file_name=None):
        """Writes the tensor under ``key`` to a safetensors file (default: a file
        named ``key``), as one tensor named ``key``. 0 or a negative code (-704
        when the key is missing or not a tensor, -1102 when the file cannot be
        written)."""
        t = self.get_tensor(key)
        if t is None:
            return _OBJECT_NOT_FOUND
        try:
            ok = _tensor.save_safetensors(file_name or key, {key: t})
        except OSError as e:
            _log.error("save_tensor_to_safetensor(%r): %s", key, e)
            return _FILE_WRITE_FAIL
        return 0 if ok else _INVALID_PARAMS

    def load_tensor_from_safetensor(self, key, file_name=None, config=None):
        """Reads a tensor from a safetensors file (the one named ``key``, else the
        first; default file: ``key``), stores it under ``key`` and returns it;
        None when the file cannot be read or the store refuses the tensor."""
        try:
            t = _tensor.load_safetensors(file_name or key, key)
        except (OSError, ValueError) as e:
            _log.error("load_tensor_from_safetensor(%r): %s", key, e)
            return None
        if t is None or self.upsert_tensor(key, t, config) != 0:
            return None
        return t


# Upstream's binding also exports the enum values at module level; where two
# enums share a name (PROCESSING, FAILED), TaskStatus's wins, as upstream.
UNDEFINED = ReplicaStatus.UNDEFINED
INITIALIZED = ReplicaStatus.INITIALIZED
COMPLETE = ReplicaStatus.COMPLETE
REMOVED = ReplicaStatus.REMOVED
PENDING = TaskStatus.PENDING
PROCESSING = TaskStatus.PROCESSING
SUCCESS = TaskStatus.SUCCESS
FAILED = TaskStatus.FAILED
REPLICA_COPY = TaskType.REPLICA_COPY
REPLICA_MOVE = TaskType.REPLICA_MOVE
UNKNOWN = ObjectDataType.UNKNOWN
KVCACHE = ObjectDataType.KVCACHE
TENSOR = ObjectDataType.TENSOR
WEIGHT = ObjectDataType.WEIGHT
SAMPLE = ObjectDataType.SAMPLE
ACTIVATION = ObjectDataType.ACTIVATION
GRADIENT = ObjectDataType.GRADIENT
OPTIMIZER_STATE = ObjectDataType.OPTIMIZER_STATE
METADATA = ObjectDataType.METADATA
GENERAL = ObjectDataType.GENERAL


def bind_to_numa_node(node):
    """Runs the calling thread on the CPUs of NUMA node ``node`` (best effort, as
    upstream: an unknown node changes nothing). Returns None."""
    try:
        with open(f"/sys/devices/system/node/node{int(node)}/cpulist") as f:
            spec = f.read().strip()
        cpus = set()
        for part in spec.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                cpus.update(range(int(lo), int(hi) + 1))
            elif part:
                cpus.add(int(part))
        if cpus:
            os.sched_setaffinity(0, cpus)
    except (OSError, ValueError) as e:
        _log.warning("bind_to_numa_node(%s): %s", node, e)
    return None


def __getattr__(name):
    # Lazily, to avoid a circular import: ``mooncake.async_store`` subclasses ours.
    if name == "MooncakeDistributedStoreAsync":
        from mooncake.async_store import MooncakeDistributedStoreAsync

        return MooncakeDistributedStoreAsync
    raise AttributeError(f"module 'mooncake.store' has no attribute {name!r}")
