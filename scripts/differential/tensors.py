"""Tensor objects compared byte for byte with upstream's wheel.

    python tensors.py write MASTER OUT.json    # upstream's python, with torch
    python tensors.py check MASTER UP.json OUT.json   # this project's python
    python tensors.py read MASTER OURS.json    # upstream's python, with torch

``write`` stores each tensor of ``SPECS`` with upstream's ``put_tensor`` (and
``put_tensor_with_tp``) and records the answer codes and the raw stored bytes.
``check`` does the same through this project's package (numpy arrays, no torch
needed), fails on any answer or byte that differs from upstream's, decodes
upstream's bytes with this project's ``get_tensor``, and writes its own bytes to
OUT.json. ``read`` stores this project's bytes in upstream's store as plain values
and reads them back with upstream's ``get_tensor``. Each exits non-zero on a
difference.
"""

import json
import sys

import numpy as np

from mooncake.store import MooncakeDistributedStore

# (name, dtype, shape): values are arange, cast.
SPECS = [
    ("f32-2x3", "float32", (2, 3)),
    ("f64-4", "float64", (4,)),
    ("i8-2x2x2", "int8", (2, 2, 2)),
    ("u8-5", "uint8", (5,)),
    ("i16-3", "int16", (3,)),
    ("i32-0d", "int32", ()),
    ("i64-0x4", "int64", (0, 4)),
    ("bool-4", "bool", (4,)),
    ("f16-2x4", "float16", (2, 4)),
]
# Known and deliberate: upstream stores a 0-d tensor as shape (1,) and reads it
# back so; here it stays 0-d (upstream reads this project's 0-d objects as 0-d).
KNOWN = {"i32-0d"}
# (name, dtype, shape, tp_size, split_dim): sharded with put_tensor_with_tp.
TP_SPECS = [
    ("tp-f32-4x6-d1", "float32", (4, 6), 2, 1),
    ("tp-i64-8x2-d0", "int64", (8, 2), 4, 0),
    ("tp-uneven", "float32", (4, 6), 4, 1),  # 6 is no multiple of 4: refused
    ("tp-negative-dim", "float32", (4, 6), 2, -1),  # refused
]


def array(dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n) % 7).astype(dtype).reshape(shape)


def tensor_of(a):
    """A torch tensor when torch imports (upstream needs one), else the array."""
    try:
        import torch
    except ImportError:
        return a
    return torch.from_numpy(np.ascontiguousarray(a))


def connect(master):
    s = MooncakeDistributedStore()
    rc = s.setup("127.0.0.1", "P2PHANDSHAKE", 64 << 20, 16 << 20, "tcp", "", master)
    if rc != 0:
        sys.exit(f"setup against {master} returned {rc}")
    return s


def stored(store, prefix):
    """Stores every spec; ``{name: {"code", "raw": {key: hex}}}``."""
    out = {}
    for name, dtype, shape in SPECS:
        key = f"{prefix}-{name}"
        code = store.put_tensor(key, tensor_of(array(dtype, shape)))
        out[name] = {"code": code, "raw": {key: store.get(key).hex()}}
    for name, dtype, shape, tp, dim in TP_SPECS:
        key = f"{prefix}-{name}"
        code = store.put_tensor_with_tp(key, tensor_of(array(dtype, shape)), tp_size=tp, split_dim=dim)
        raw = {}
        for r in range(tp):
            raw[f"{key}_tp_{r}"] = store.get(f"{key}_tp_{r}").hex()
        out[name] = {"code": code, "raw": raw}
    return out


def unprefixed(entry, prefix):
    return {k[len(prefix):]: v for k, v in entry["raw"].items()}


def main():
    cmd, master = sys.argv[1], sys.argv[2]
    store = connect(master)
    if cmd == "write":
        json.dump(stored(store, "up"), open(sys.argv[3], "w"))
        return 0
    if cmd == "check":
        up = json.load(open(sys.argv[3]))
        ours = stored(store, "ours")
        json.dump(ours, open(sys.argv[4], "w"))
        differ = 0
        for name in up:
            if name in KNOWN:
                continue
            a, b = up[name], ours[name]
            if a["code"] != b["code"]:
                differ += 1
                print(f"tensor {name}: put answered upstream {a['code']}, ours {b['code']}")
            ra, rb = unprefixed(a, "up"), unprefixed(b, "ours")
            for k in ra:
                if ra[k] != rb.get(k):
                    differ += 1
                    print(f"tensor {name} {k}: stored bytes differ\n  upstream {ra[k][:160]}\n  ours     {rb.get(k, '')[:160]}")
        # Upstream's bytes, stored here as plain values, read back as tensors.
        for name, dtype, shape in SPECS:
            if name in KNOWN:
                continue
            raw = bytes.fromhex(up[name]["raw"][f"up-{name}"])
            key = f"from-up-{name}"
            store.put(key, raw)
            got = store.get_tensor(key)
            want = array(dtype, shape)
            if got is None or got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
                differ += 1
                print(f"tensor {name}: upstream's object reads back here as {got!r}")
        print(f"tensors: {differ} differences")
        return 1 if differ else 0
    if cmd == "read":
        import torch

        ours = json.load(open(sys.argv[3]))
        differ = 0
        for name, dtype, shape in SPECS:
            raw = bytes.fromhex(ours[name]["raw"][f"ours-{name}"])
            key = f"from-ours-{name}"
            store.put(key, raw)
            got = store.get_tensor(key)
            want = tensor_of(array(dtype, shape))
            if got is None or got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape) or not torch.equal(got, want):
                differ += 1
                print(f"tensor {name}: this project's object reads back in upstream as {got!r}")
        print(f"tensors read by upstream: {differ} differences")
        return 1 if differ else 0
    sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
