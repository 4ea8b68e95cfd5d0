"""Upstream's unified parallel tensor IO: ``ParallelAxis``, ``TensorParallelism``,
``ReadTarget`` and the ``*_tensor_with_parallelism*`` calls.

A tensor shard is described by up to four axes (``tp``, ``dp``, ``ep``, ``pp``),
each with a rank and a size; a TP axis also names the dim it splits, an EP axis
its expert id, a PP axis its stage id. Objects are stored exactly as upstream
stores them, so either client reads what the other wrote:

* a shard is one tensor object (``mooncake._tensor``) with layout "shard", the
  whole tensor's shape as global shape and the axes in the order given;
* its key is ``<key>_tp_<rank>`` for a TP-only shard (the ``put_tensor_with_tp``
  key) and otherwise ``<key>`` followed by ``__<kind>_<rank>of<size>`` (with
  ``_sd<dim>``, ``_eid<id>``, ``_sid<id>`` where set) per axis in the order dp,
  tp, ep, pp;
* a write that cuts a TP shard also stores a 96-byte manifest (magic
  ``0x574d414e``, version 1, dtype, ndim, split dim, shard count, global shape)
  under ``<key>__parallelism_manifest``; a ``writer_partition`` write stores its
  shard under ``<key>__writer_<rank>of<size>_sd<dim>`` and the manifest under
  ``<key>__writer_manifest``.

Reads say what they want with a ``ReadTarget``: ``as_stored`` (the object under
the key), ``shard`` (a shard, cut from stored shards of another TP size when no
object matches exactly) or ``full`` (the whole tensor, rebuilt from its shards).
Every failure is a return code (writes: -600 for a request that cannot be met)
or None (reads), never an exception.
"""

import struct
from typing import NamedTuple, Optional

from mooncake import _tensor

_INVALID_PARAMS = -600
_MAX_AXES = 4
_KINDS = {"DP": 0, "TP": 1, "EP": 2, "PP": 3}
_NAMES = {0: "dp", 1: "tp", 2: "ep", 3: "pp"}
_DP, _TP, _EP, _PP = 0, 1, 2, 3
_UNKNOWN_KIND = 4
_MANIFEST_MAGIC = 0x574D414E
_MANIFEST_HEAD = struct.Struct("<IHHiiiii4x")
_MANIFEST_SHAPE = struct.Struct("<8q")
MANIFEST_SIZE = _MANIFEST_HEAD.size + _MANIFEST_SHAPE.size
_INT32 = (-(2**31), 2**31)


class _Invalid(Exception):
    """A request upstream refuses (the call answers -600 or None)."""


def _int32(name, value):
    if isinstance(value, int) and _INT32[0] <= value < _INT32[1]:
        return int(value)
    raise TypeError(f"{name}: expected an int (32-bit), got {value!r}")


class _Int32:
    """An attribute holding a 32-bit int (or None where ``optional``), type-checked
    on assignment as upstream's binding checks it."""

    def __init__(self, default, optional=False):
        self.default, self.optional = default, optional

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self.slot, self.default)

    def __set__(self, obj, value):
        if not (self.optional and value is None):
            value = _int32(self.name, value)
        setattr(obj, self.slot, value)


class ParallelAxis:
    """One axis of a shard's identity: ``kind`` ("tp", "dp", "ep" or "pp", any
    case), ``rank`` and ``size``; ``split_dim`` for TP, ``expert_id`` for EP,
    ``stage_id`` for PP. Attributes are set one by one as upstream's; keyword
    arguments to the constructor are a convenience of this package."""

    _FIELDS = ("kind", "rank", "size", "split_dim", "expert_id", "stage_id")
    __slots__ = ("_kind", "_rank", "_size", "_split_dim", "_expert_id", "_stage_id")
    rank = _Int32(0)
    size = _Int32(1)
    split_dim = _Int32(None, optional=True)
    expert_id = _Int32(None, optional=True)
    stage_id = _Int32(None, optional=True)

    def __init__(self, **fields):
        self._kind = ""
        for name, value in fields.items():
            if name not in self._FIELDS:
                raise TypeError(f"ParallelAxis has no attribute {name!r}")
            setattr(self, name, value)

    @property
    def kind(self):
        return self._kind

    @kind.setter
    def kind(self, value):
        if not isinstance(value, str):
            raise TypeError(f"kind: expected a str, got {value!r}")
        self._kind = value

    def _copy(self):
        return ParallelAxis(**{name: getattr(self, name) for name in self._FIELDS})

    def __repr__(self):
        extra = "".join(
            f", {n}={getattr(self, n)}"
            for n in ("split_dim", "expert_id", "stage_id")
            if getattr(self, n) is not None
        )
        return f"ParallelAxis(kind={self._kind!r}, rank={self.rank}, size={self.size}{extra})"


class TensorParallelism:
    """A shard's identity: ``axes``, a list of ``ParallelAxis`` (at most four,
    one per kind). As upstream's, ``axes`` is assigned whole: appending to the
    list it returns does not change the object."""

    __slots__ = ("_axes",)

    def __init__(self, axes=None):
        self._axes = []
        if axes is not None:
            self.axes = axes

    @property
    def axes(self):
        return list(self._axes)

    @axes.setter
    def axes(self, value):
        try:
            items = list(value)
        except TypeError:
            raise TypeError("axes: expected a list of ParallelAxis") from None
        if not all(isinstance(a, ParallelAxis) for a in items):
            raise TypeError("axes: expected a list of ParallelAxis")
        self._axes = [a._copy() for a in items]

    def _copy(self):
        return TensorParallelism(self._axes)

    def __repr__(self):
        return f"TensorParallelism(axes={self._axes!r})"


_MODES = ("as_stored", "shard", "full")


class ReadTarget:
    """What a read wants: ``mode`` "as_stored" (default), "shard" or "full",
    and for the last two the ``parallelism`` of the shard wanted (or, for
    "full", of any shard of the tensor)."""

    __slots__ = ("_mode", "_parallelism")

    def __init__(self, mode="as_stored", parallelism=None):
        self._mode = "as_stored"
        self._parallelism = None
        self.mode = mode
        self.parallelism = parallelism

    @property
    def mode(self):
        return self._mode

    @mode.setter
    def mode(self, value):
        if not isinstance(value, str):
            raise TypeError(f"mode: expected a str, got {value!r}")
        if value.lower() not in _MODES:
            raise RuntimeError("Unsupported ReadTarget mode")
        self._mode = value.lower()

    @property
    def parallelism(self):
        return self._parallelism

    @parallelism.setter
    def parallelism(self, value):
        if value is not None and not isinstance(value, TensorParallelism):
            raise TypeError("parallelism: expected a TensorParallelism or None")
        self._parallelism = None if value is None else value._copy()

    def __repr__(self):
        return f"ReadTarget(mode={self._mode!r}, parallelism={self._parallelism!r})"


# ------------------------------------------------------------------ requests


class Axis(NamedTuple):
    kind: int
    rank: int
    size: int
    split_dim: Optional[int]
    expert_id: Optional[int]
    stage_id: Optional[int]


def _attr(obj, name):
    try:
        return getattr(obj, name)
    except Exception:
        raise _Invalid(f"missing attribute {name}") from None


def _as_int(value):
    if isinstance(value, int) and _INT32[0] <= value < _INT32[1]:
        return int(value)
    raise _Invalid(f"not an int: {value!r}")


def _as_optional_int(value):
    return None if value is None else _as_int(value)


def _parse_axis(obj):
    kind = _attr(obj, "kind")
    if not isinstance(kind, str) or kind.upper() not in _KINDS:
        raise _Invalid(f"unsupported parallel axis kind {kind!r}")
    return Axis(
        _KINDS[kind.upper()],
        _as_int(_attr(obj, "rank")),
        _as_int(_attr(obj, "size")),
        _as_optional_int(_attr(obj, "split_dim")),
        _as_optional_int(_attr(obj, "expert_id")),
        _as_optional_int(_attr(obj, "stage_id")),
    )


def _parse_parallelism(obj):
    """The axes of a ``TensorParallelism`` (or anything with ``axes``)."""
    axes = _attr(obj, "axes")
    try:
        items = list(axes)
    except TypeError:
        raise _Invalid("axes is not a list") from None
    return [_parse_axis(a) for a in items]


def _validate(axes):
    """Upstream's checks of a requested parallelism."""
    if not axes:
        raise _Invalid("parallelism axes cannot be empty")
    if len(axes) > _MAX_AXES:
        raise _Invalid("axis count exceeds max supported axes")
    seen = set()
    for a in axes:
        if a.size <= 0 or a.rank < 0 or a.rank >= a.size:
            raise _Invalid(f"invalid rank/size for axis {_NAMES[a.kind]}")
        if a.kind in seen:
            raise _Invalid("duplicate axis kinds are not supported")
        seen.add(a.kind)
        if a.kind == _TP and a.split_dim is None:
            raise _Invalid("TP axis requires split_dim")
        if a.kind != _TP and a.split_dim is not None:
            raise _Invalid(f"{_NAMES[a.kind].upper()} axis must not provide split_dim")
        if a.kind == _EP and a.expert_id is None:
            raise _Invalid("EP axis requires expert_id")
        if a.kind == _PP and a.stage_id is None:
            raise _Invalid("PP axis requires stage_id")
    return axes


def parse_request(parallelism):
    """Validated axes of a write or read request, or raises ``_Invalid``."""
    return _validate(_parse_parallelism(parallelism))


def _tp_index(axes):
    return next((i for i, a in enumerate(axes) if a.kind == _TP), None)


def _canonical(axes):
    return sorted(axes, key=lambda a: a.kind)


def _single_tp(axes):
    return len(axes) == 1 and axes[0].kind == _TP


def _suffix(a):
    out = f"{_NAMES.get(a.kind, 'unknown')}_{a.rank}of{a.size}"
    if a.split_dim is not None:
        out += f"_sd{a.split_dim}"
    if a.expert_id is not None:
        out += f"_eid{a.expert_id}"
    if a.stage_id is not None:
        out += f"_sid{a.stage_id}"
    return out


def key_name(base, axes):
    """The key a shard with these axes is stored under."""
    if _single_tp(axes):
        return f"{base}_tp_{axes[0].rank}"
    return base + "".join("__" + _suffix(a) for a in _canonical(axes))


def writer_key(base, rank, size, split_dim):
    return f"{base}__writer_{rank}of{size}_sd{split_dim}"


def writer_manifest_key(base):
    return base + "__writer_manifest"


def parallelism_manifest_key(base):
    return base + "__parallelism_manifest"


def _with_tp(axes, rank=None, size=None):
    i = _tp_index(axes)
    a = axes[i]
    out = list(axes)
    out[i] = a._replace(
        rank=a.rank if rank is None else rank, size=a.size if size is None else size
    )
    return out


def manifest(dtype_code, global_shape, split_dim, count):
    dims = list(global_shape) + [-1] * (8 - len(global_shape))
    return _MANIFEST_HEAD.pack(
        _MANIFEST_MAGIC, 1, MANIFEST_SIZE, dtype_code, len(global_shape), split_dim, count, 0
    ) + _MANIFEST_SHAPE.pack(*dims)


def parse_manifest(data):
    """``(dtype code, global shape, split dim, shard count)`` or None."""
    if data is None or len(data) < MANIFEST_SIZE:
        return None
    magic, version, size, dtype, ndim, split_dim, count, _ = _MANIFEST_HEAD.unpack_from(data, 0)
    if magic != _MANIFEST_MAGIC or version != 1 or size != MANIFEST_SIZE:
        return None
    if not 0 <= ndim <= 8 or count <= 0 or not 0 <= split_dim < ndim:
        return None
    shape = _MANIFEST_SHAPE.unpack_from(data, _MANIFEST_HEAD.size)[:ndim]
    if any(d < 0 for d in shape):
        return None
    return dtype, tuple(shape), split_dim, count


def _header_axes(axes, local_shape):
    """``_tensor.header`` axis tuples, in the order given."""
    out = []
    for a in axes:
        if a.split_dim is not None:
            if not 0 <= a.split_dim < len(local_shape):
                raise _Invalid("split_dim out of range")
            sd, extent = a.split_dim, local_shape[a.split_dim]
        else:
            sd, extent = -1, 0
        ident = a.expert_id if a.kind == _EP else a.stage_id if a.kind == _PP else None
        out.append((a.kind, a.rank, a.size, sd, extent, ident or 0))
    return out


def _stored_axes(layout):
    """The canonical axes a stored object's header gives, or None when it is not
    a shard."""
    if layout is None or layout[3] != _tensor.LAYOUT_SHARD:
        return None
    out = []
    for kind, rank, count, sd, ident in layout[4]:
        k = kind if kind in _NAMES else _UNKNOWN_KIND
        out.append(
            Axis(
                k, rank, count, sd if sd >= 0 else None,
                ident if k == _EP else None, ident if k == _PP else None,
            )
        )
    return _canonical(out)


def _matches(axes, layout):
    stored = _stored_axes(layout)
    return stored is not None and stored == _canonical(axes)


def _equal_but_tp_rank(request, stored):
    """Same axes except, perhaps, the TP axis's rank."""
    if stored is None or len(stored) != len(request):
        return False
    ri, si = _tp_index(request), _tp_index(stored)
    if ri is None or si is None or ri != si:
        return False
    return all(
        (a._replace(rank=0) == b._replace(rank=0)) if i == ri else a == b
        for i, (a, b) in enumerate(zip(request, stored))
    )


# ------------------------------------------------------------------ tensors


def _slab(data, shape, item, dim, start, count):
    """The bytes of ``[start, start + count)`` along ``dim`` of a C-order tensor
    of ``shape`` whose bytes are ``data`` (a memoryview)."""
    before = 1
    for d in shape[:dim]:
        before *= d
    after = item
    for d in shape[dim + 1:]:
        after *= d
    row, stride = count * after, shape[dim] * after
    out = bytearray(before * row)
    for i in range(before):
        src = i * stride + start * after
        out[i * row:(i + 1) * row] = data[src:src + row]
    return out


def _uniform(shape, dim, count):
    return 0 <= dim < len(shape) and count > 0 and shape[dim] % count == 0


def _shard_range(dim_size, rank, count):
    start = dim_size * rank // count
    return start, dim_size * (rank + 1) // count - start


def _cut(name, shape, data, dim, rank, count):
    """(local shape, bytes) of shard ``rank`` of ``count`` along ``dim``."""
    if not _uniform(shape, dim, count) or not 0 <= rank < count:
        raise _Invalid("only uniform sharding is supported")
    start, extent = _shard_range(shape[dim], rank, count)
    local = list(shape)
    local[dim] = extent
    return tuple(local), _slab(memoryview(data).cast("B"), shape, _tensor.item_size(name), dim, start, extent)


def _raw(tensor):
    r = _tensor.raw(tensor)
    if r is None or len(r[1]) > _tensor.MAX_DIMS:
        raise _Invalid("not a tensor of a supported dtype and <= 8 dims")
    return r[0], tuple(r[1]), r[2]


class _Object(NamedTuple):
    """A stored tensor object: its key, bytes and parsed header."""

    key: str
    data: memoryview
    name: str
    global_shape: tuple
    local_shape: tuple
    layout: tuple
    offset: int
    nbytes: int


def _object(key, handle):
    if handle is None:
        return None
    data = memoryview(handle).cast("B")
    layout = _tensor.parse_layout(data, len(data))
    if layout is None:
        return None
    name, global_shape, local_shape, kind, axes, offset, nbytes = layout
    return _Object(key, data, name, global_shape, local_shape, layout, offset, nbytes)


# ------------------------------------------------------------------ the calls


class Parallel:
    """The parallel tensor calls over a ``MooncakeDistributedStore``."""

    def __init__(self, store):
        self.s = store

    # ---------------------------------------------------------------- writes

    def _store(self, key, parts, config, upsert):
        put = self.s.upsert_parts if upsert else self.s.put_parts
        return put(key, *parts, config=config)

    def _store_manifest(self, key, data, config, upsert):
        put = self.s.upsert if upsert else self.s.put
        return put(key, data, config)

    def _write_shard(self, key, name, global_shape, local_shape, payload, axes, config, upsert):
        head = _tensor.header(name, local_shape, len(payload), global_shape, _header_axes(axes, local_shape))
        return self._store(key, (head, payload), config, upsert)

    def _write_writer_shard(self, key, name, shape, data, partition, config, upsert):
        """A writer partition's shard of the whole tensor, then the manifest."""
        rank, count, sd = partition
        local, payload = _cut(name, shape, data, sd, rank, count)
        axes = [Axis(_TP, rank, count, sd, None, None)]
        rc = self._write_shard(writer_key(key, rank, count, sd), name, shape, local, payload, axes, config, upsert)
        if rc != 0:
            return rc
        code = _tensor._CODES[name]
        return self._store_manifest(writer_manifest_key(key), manifest(code, shape, sd, count), config, upsert)

    @staticmethod
    def _request(parallelism, writer_partition):
        """``("direct" | "writer" | "tp" | "generic", detail)``."""
        if writer_partition is not None:
            if parallelism is not None:
                raise _Invalid("writer_partition cannot be combined with parallelism")
            rank = _as_int(_attr(writer_partition, "rank"))
            size = _as_int(_attr(writer_partition, "size"))
            split_dim = _as_int(_attr(writer_partition, "split_dim"))
            if size <= 0 or rank < 0 or rank >= size or split_dim < 0:
                raise _Invalid("invalid writer partition")
            return "writer", (rank, size, split_dim)
        if parallelism is None:
            return "direct", None
        axes = parse_request(parallelism)
        return ("tp" if _tp_index(axes) is not None else "generic"), axes

    def put(self, key, tensor, parallelism, config, writer_partition, upsert):
        try:
            route, detail = self._request(parallelism, writer_partition)
            if route == "direct":
                return self.s._put_tensors([key], [tensor], config, upsert)[0]
            name, shape, data = _raw(tensor)
            code = _tensor._CODES[name]
            if route == "writer":
                return self._write_writer_shard(key, name, shape, data, detail, config, upsert)
            axes = detail
            if route == "generic":
                return self._write_shard(key_name(key, axes), name, shape, shape, data, axes, config, upsert)
            tp = axes[_tp_index(axes)]
            sd = tp.split_dim
            if not 0 <= sd < len(shape):
                raise _Invalid("split_dim out of range")
            if len(axes) == 1:
                # A TP-only request stores the shard it is given.
                global_shape = list(shape)
                global_shape[sd] *= tp.size
                global_shape, local, payload = tuple(global_shape), shape, data
            else:
                # With other axes, the whole tensor is given and the shard cut.
                global_shape = shape
                local, payload = _cut(name, shape, data, sd, tp.rank, tp.size)
            rc = self._write_shard(key_name(key, axes), name, global_shape, local, payload, axes, config, upsert)
            if rc != 0:
                return rc
            return self._store_manifest(
                parallelism_manifest_key(key), manifest(code, global_shape, sd, tp.size), config, upsert
            )
        except _Invalid:
            return _INVALID_PARAMS

    def put_from(self, key, ptr, size, parallelism, config, writer_partition, upsert):
        try:
            route, detail = self._request(parallelism, writer_partition)
            if route == "direct":
                return self.s._tensors_from([key], [ptr], [size], config, upsert)[0]
            if not isinstance(ptr, int) or not isinstance(size, int) or ptr == 0 or size <= 0:
                raise _Invalid("bad buffer")
            if not self.s._registered(ptr, size):
                raise _Invalid("buffer not registered")
            from mooncake.store import _view

            obj = _object("", _view(ptr, size))
            if obj is None:
                raise _Invalid("invalid tensor object metadata")
            name, shape = obj.name, obj.global_shape
            data = obj.data[obj.offset:obj.offset + obj.nbytes]
            if route == "generic":
                axes = detail
                return self._write_shard(
                    key_name(key, axes), name, shape, obj.local_shape, data, axes, config, upsert
                )
            # The buffer must hold the whole tensor to cut shards from it.
            if obj.local_shape != shape:
                raise _Invalid("the buffer holds a shard, not a whole tensor")
            if route == "writer":
                return self._write_writer_shard(key, name, shape, data, detail, config, upsert)
            # TP: every shard of the tensor, keyed by the request's other axes.
            axes = detail
            tp = axes[_tp_index(axes)]
            sd = tp.split_dim
            for r in range(tp.size):
                shard_axes = _with_tp(axes, rank=r)
                local, payload = _cut(name, shape, data, sd, r, tp.size)
                rc = self._write_shard(key_name(key, shard_axes), name, shape, local, payload, shard_axes, config, upsert)
                if rc != 0:
                    return rc
            return 0
        except _Invalid:
            return _INVALID_PARAMS

    @staticmethod
    def _requests(keys, n_values, parallelisms, writer_partitions):
        """Per-key ``(parallelism, writer_partition)``, None for a plain batch,
        or raises ``_Invalid``."""
        if parallelisms is not None and writer_partitions is not None:
            raise _Invalid("writer_partitions cannot be combined with parallelisms")
        if n_values != len(keys):
            raise _Invalid("values and keys must have the same length")
        if parallelisms is None and writer_partitions is None:
            return None
        given = parallelisms if parallelisms is not None else writer_partitions
        if not isinstance(given, list) or len(given) != len(keys):
            raise _Invalid("requests must be a list as long as keys")
        if parallelisms is not None:
            return [(p, None) for p in given]
        return [(None, w) for w in given]

    def batch_put(self, keys, tensors, parallelisms, config, writer_partitions, upsert):
        keys, tensors = list(keys), list(tensors)
        try:
            requests = self._requests(keys, len(tensors), parallelisms, writer_partitions)
        except _Invalid:
            return [_INVALID_PARAMS] * len(keys)
        if requests is None:
            return self.s._put_tensors(keys, tensors, config, upsert)
        return [self.put(k, t, p, config, w, upsert) for k, t, (p, w) in zip(keys, tensors, requests)]

    def batch_put_from(self, keys, ptrs, sizes, parallelisms, config, writer_partitions, upsert):
        keys, ptrs, sizes = list(keys), list(ptrs), list(sizes)
        try:
            requests = self._requests(keys, len(ptrs), parallelisms, writer_partitions)
            if len(sizes) != len(keys):
                raise _Invalid("sizes and keys must have the same length")
        except _Invalid:
            return [_INVALID_PARAMS] * len(keys)
        if requests is None:
            return self.s._tensors_from(keys, ptrs, sizes, config, upsert)
        return [
            self.put_from(k, p, n, par, config, w, upsert)
            for k, p, n, (par, w) in zip(keys, ptrs, sizes, requests)
        ]

    # ----------------------------------------------------------------- reads

    @staticmethod
    def _target(target):
        """``(mode, axes or None)``; raises ``_Invalid``."""
        if target is None:
            return "as_stored", None
        mode = _attr(target, "mode")
        if not isinstance(mode, str) or mode.lower() not in _MODES:
            raise _Invalid(f"unsupported ReadTarget mode {mode!r}")
        parallelism = _attr(target, "parallelism")
        axes = None if parallelism is None else _parse_parallelism(parallelism)
        return mode.lower(), axes

    def _load(self, key):
        return _object(key, self.s.get_buffer(key))

    def _load_all(self, keys):
        """Every object, or None when one is missing or not a tensor."""
        handles = self.s.batch_get_buffer(list(keys))
        out = [_object(k, h) for k, h in zip(keys, handles)]
        return None if any(o is None for o in out) else out

    def _resolve_shard(self, key, axes):
        """The stored object that is exactly this shard, or None."""
        obj = self._load(key_name(key, axes))
        if obj is not None and _matches(axes, obj.layout):
            return obj
        if _single_tp(axes):
            a = axes[0]
            obj = self._load(writer_key(key, a.rank, a.size, a.split_dim or 0))
            if obj is not None and _matches(axes, obj.layout):
                return obj
        return None

    def _writer_sources(self, key):
        """``(sources, global shape, split dim, dtype code)`` of a tensor written
        with writer partitions; None without a manifest; raises ``_Invalid``
        when the manifest's shards are not all there."""
        m = parse_manifest(self._bytes(writer_manifest_key(key)))
        if m is None:
            return None
        dtype, global_shape, sd, count = m
        sources = self._load_all([writer_key(key, r, count, sd) for r in range(count)])
        if sources is None:
            raise _Invalid("missing writer shard")
        for r, src in enumerate(sources):
            stored = _stored_axes(src.layout)
            if stored != [Axis(_TP, r, count, sd, None, None)]:
                raise _Invalid("writer shard metadata mismatch")
        return sources, global_shape, sd, dtype

    def _bytes(self, key):
        handle = self.s.get_buffer(key)
        return None if handle is None else memoryview(handle).cast("B")

    def _sources(self, key, axes):
        """``(sources, global shape, split dim, dtype code)`` to rebuild the
        tensor a TP request names; raises ``_Invalid``."""
        ti = _tp_index(axes)
        if ti is None:
            raise _Invalid("reconstruction requires a TP axis")
        req = axes[ti]
        canon = _canonical(axes)
        m = parse_manifest(self._bytes(parallelism_manifest_key(key)))
        if m is not None:
            dtype, global_shape, sd, count = m
            if req.split_dim == sd and _uniform(global_shape, sd, req.size) and _uniform(global_shape, sd, count):
                wanted = [_with_tp(canon, rank=r, size=count) for r in range(count)]
                sources = self._load_all([key_name(key, w) for w in wanted])
                if sources is not None and all(
                    _equal_but_tp_rank(w, _stored_axes(s.layout)) for w, s in zip(wanted, sources)
                ):
                    return sources, global_shape, sd, dtype
        if _single_tp(canon):
            first = self._load(key if req.size <= 1 else f"{key}_tp_0")
            tp = _stored_tp(first)
            if tp is None or tp[3] != req.split_dim:
                raise _Invalid("no TP shard matches the request")
            sd, count = tp[3], tp[2]
            global_shape = first.global_shape
            if not (_uniform(global_shape, sd, req.size) and _uniform(global_shape, sd, count)):
                raise _Invalid("only uniform sharding is supported")
            sources = self._load_all([key if count <= 1 else f"{key}_tp_{r}" for r in range(count)])
            if sources is None:
                raise _Invalid("missing TP shard")
            for r, src in enumerate(sources):
                t = _stored_tp(src)
                if t is None or t[1] != r or t[2] != count or t[3] != sd:
                    raise _Invalid("TP shard metadata mismatch")
            return sources, global_shape, sd, _tensor._CODES[first.name]
        wanted = [_with_tp(canon, rank=r) for r in range(req.size)]
        sources = self._load_all([key_name(key, w) for w in wanted])
        if sources is None:
            raise _Invalid("missing shard")
        for src in sources:
            if not _equal_but_tp_rank(canon, _stored_axes(src.layout)):
                raise _Invalid("shard metadata mismatch")
        tp = _stored_tp(sources[0])
        sd = tp[3]
        if sd != req.split_dim:
            raise _Invalid("split_dim mismatch")
        global_shape = sources[0].global_shape
        if not _uniform(global_shape, sd, req.size):
            raise _Invalid("only uniform sharding is supported")
        return sources, global_shape, sd, _tensor._CODES[sources[0].name]

    @staticmethod
    def _assemble(sources, global_shape, sd, dtype, start, extent, axes=None):
        """The object (header and bytes) of ``[start, start + extent)`` along
        ``sd`` of the tensor the sources are shards of: a whole tensor, or with
        ``axes`` a shard of it. Raises ``_Invalid`` when the sources do not
        cover it."""
        if not 0 <= sd < len(global_shape) or start < 0 or extent < 0 or start + extent > global_shape[sd]:
            raise _Invalid("invalid target range")
        first = sources[0]
        item = _tensor.item_size(first.name)
        numel = 1
        for d in first.local_shape:
            numel *= d
        if numel * item != first.nbytes:
            raise _Invalid("invalid shard byte size")
        target = list(global_shape)
        target[sd] = extent
        before = 1
        for d in global_shape[:sd]:
            before *= d
        after = item
        for d in global_shape[sd + 1:]:
            after *= d
        payload = bytearray(before * extent * after)
        covered = [False] * extent
        copied = False
        for src in sources:
            local = src.local_shape
            if len(local) != len(global_shape) or any(
                local[d] != global_shape[d] for d in range(len(local)) if d != sd
            ):
                raise _Invalid("shard shape mismatch")
            tp = _stored_tp(src)
            if tp is None or tp[3] != sd or tp[2] <= 0 or not 0 <= tp[1] < tp[2]:
                raise _Invalid("invalid TP shard metadata")
            if global_shape[sd] % tp[2] != 0:
                raise _Invalid("only uniform sharding is supported")
            s_start, s_extent = _shard_range(global_shape[sd], tp[1], tp[2])
            if local[sd] != s_extent:
                raise _Invalid("shard extent mismatch")
            lo, hi = max(s_start, start), min(s_start + s_extent, start + extent)
            if hi <= lo:
                continue
            for i in range(lo - start, hi - start):
                covered[i] = True
            row = (hi - lo) * after
            body = src.data[src.offset:src.offset + src.nbytes]
            for i in range(before):
                dst = (i * extent + lo - start) * after
                at = (i * s_extent + lo - s_start) * after
                payload[dst:dst + row] = body[at:at + row]
            copied = True
        if not all(covered) or (not copied and payload):
            raise _Invalid("shard extents do not cover the tensor")
        name = _tensor.DTYPE_NAMES[dtype] if 0 <= dtype < len(_tensor.DTYPE_NAMES) else first.name
        header_axes = () if axes is None else _header_axes(axes, target)
        head = _tensor.header(name, tuple(target), len(payload), tuple(global_shape), header_axes)
        return head, payload

    def _plan(self, key, target):
        """What a read returns: ``("key", read key)`` for an object read as it
        is, ``("bytes", header, payload)`` for one rebuilt here, or None."""
        try:
            mode, axes = self._target(target)
            if mode == "as_stored" and axes is None:
                return "key", key
            if mode == "full" and axes is None:
                writer = self._writer_sources(key)
                if writer is None:
                    return "key", key
                sources, global_shape, sd, dtype = writer
                return ("bytes",) + self._assemble(sources, global_shape, sd, dtype, 0, global_shape[sd])
            axes = _validate(axes)
            if mode == "shard":
                obj = self._resolve_shard(key, axes)
                if obj is not None:
                    return "key", obj.key
                if _tp_index(axes) is None:
                    return None
                try:
                    sources, global_shape, sd, dtype = self._sources(key, axes)
                    tp = axes[_tp_index(axes)]
                    start, extent = _shard_range(global_shape[sd], tp.rank, tp.size)
                    return ("bytes",) + self._assemble(sources, global_shape, sd, dtype, start, extent, axes)
                except _Invalid:
                    if _single_tp(axes):
                        a = axes[0]
                        return "legacy", key if a.size <= 1 else f"{key}_tp_{a.rank}"
                    return None
            if mode == "full":
                sources, global_shape, sd, dtype = self._sources(key, axes)
                return ("bytes",) + self._assemble(sources, global_shape, sd, dtype, 0, global_shape[sd])
            return None
        except _Invalid:
            return None

    def get(self, key, target):
        plan = self._plan(key, target)
        if plan is None:
            return None
        if plan[0] in ("key", "legacy"):
            return self.s.get_tensor(plan[1])
        return _tensor.decode(plan[1] + plan[2])

    def get_into(self, key, ptr, size, target):
        plan = self._plan(key, target)
        if plan is None or plan[0] == "legacy":
            return None
        if plan[0] == "key":
            return self.s.get_tensor_into(plan[1], ptr, size)
        head, payload = plan[1], plan[2]
        total = len(head) + len(payload)
        if not isinstance(ptr, int) or not isinstance(size, int) or ptr == 0 or total > size:
            return None
        if not self.s._registered(ptr, size):
            return None
        from mooncake.store import _view

        view = _view(ptr, total)
        view[:len(head)] = head
        view[len(head):] = payload
        return _tensor.decode(view, copy=False)

    @staticmethod
    def _targets(keys, targets):
        if targets is None:
            return [None] * len(keys)
        if not isinstance(targets, list) or len(targets) != len(keys):
            return None
        return targets

    def batch_get(self, keys, targets):
        keys = list(keys)
        if targets is None:
            return self.s.batch_get_tensor(keys)
        targets = self._targets(keys, targets)
        if targets is None:
            return [None] * len(keys)
        return [self.get(k, t) for k, t in zip(keys, targets)]

    def batch_get_into(self, keys, ptrs, sizes, targets):
        keys, ptrs, sizes = list(keys), list(ptrs), list(sizes)
        if not (len(keys) == len(ptrs) == len(sizes)):
            return [None] * len(keys)
        targets = self._targets(keys, targets)
        if targets is None:
            return [None] * len(keys)
        return [self.get_into(k, p, n, t) for k, p, n, t in zip(keys, ptrs, sizes, targets)]


def _stored_tp(obj):
    """``(kind, rank, count, split dim)`` of a shard object's TP axis, or None."""
    if obj is None or obj.layout[3] != _tensor.LAYOUT_SHARD:
        return None
    for kind, rank, count, sd, _ in obj.layout[4]:
        if kind == _TP:
            return kind, rank, count, sd
    return None
