"""Upstream's unified parallel tensor IO compared with upstream's wheel.

    python parallel.py run MASTER HTTP OUT.json   # each side, with its own package
    python parallel.py compare UP.json OURS.json

``run`` sets up a client in the Python process and plays the same script of
``*_tensor_with_parallelism*`` calls (TP-only, multi-axis, EP/PP/DP, writer
partitions, upserts, batches, ``_from`` and ``_into`` forms, refused requests)
and records every answer: codes, and returned tensors as dtype, shape and
values. Then it lists the keys the script created (the master's
``/get_all_keys``) and the raw bytes stored under each. ``compare`` requires the
same answers, the same keys and the same bytes (upstream's manifests and tensor
headers). Upstream's side needs torch (its tensor calls take torch tensors);
this project's side runs with numpy alone.
"""

import ctypes
import json
import re
import sys
import urllib.request

if sys.argv[1:2] != ["compare"]:
    import numpy as np

    try:
        import torch
    except ImportError:  # this project's side needs no torch
        torch = None

    from mooncake.store import MooncakeDistributedStore, ParallelAxis, ReadTarget, TensorParallelism


def T(a):
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a) if torch is not None else a


def shown(t):
    if t is None or isinstance(t, (int, str)):
        return t
    if isinstance(t, list):
        return [shown(x) for x in t]
    if torch is not None and isinstance(t, torch.Tensor):
        a = t.detach().cpu().numpy()
    else:
        a = np.asarray(t)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.reshape(-1).tolist()}


def ax(kind, rank, size, split_dim=None, expert_id=None, stage_id=None):
    a = ParallelAxis()
    a.kind, a.rank, a.size = kind, rank, size
    if split_dim is not None:
        a.split_dim = split_dim
    if expert_id is not None:
        a.expert_id = expert_id
    if stage_id is not None:
        a.stage_id = stage_id
    return a


def par(*axes):
    p = TensorParallelism()
    p.axes = list(axes)
    return p


def tgt(mode, p=None):
    t = ReadTarget()
    t.mode = mode
    if p is not None:
        t.parallelism = p
    return t


class Writer:
    def __init__(self, rank, size, split_dim):
        self.rank, self.size, self.split_dim = rank, size, split_dim


def script(s, out):
    FULL = np.arange(48, dtype=np.float32).reshape(4, 12)
    CUBE = np.arange(2 * 6 * 4, dtype=np.int32).reshape(2, 6, 4)
    def rec(label, value):
        out.append([label, shown(value)])

    tp = lambda r, n, sd: ax("tp", r, n, split_dim=sd)  # noqa: E731
    # --- TP-only: each rank writes its own shard.
    for r in range(2):
        rec(f"tp put {r}", s.put_tensor_with_parallelism("p1", T(FULL[:, r * 6:(r + 1) * 6]), par(tp(r, 2, 1))))
    rec("tp full", s.get_tensor_with_parallelism("p1", tgt("full", par(tp(0, 2, 1)))))
    rec("tp shard", s.get_tensor_with_parallelism("p1", tgt("shard", par(tp(1, 2, 1)))))
    rec("tp reshard 4", s.get_tensor_with_parallelism("p1", tgt("shard", par(tp(3, 4, 1)))))
    rec("tp reshard 3", s.get_tensor_with_parallelism("p1", tgt("shard", par(tp(1, 3, 1)))))
    rec("tp reshard 1", s.get_tensor_with_parallelism("p1", tgt("shard", par(tp(0, 1, 1)))))
    rec("tp wrong dim", s.get_tensor_with_parallelism("p1", tgt("shard", par(tp(0, 2, 0)))))
    rec("tp full wrong dim", s.get_tensor_with_parallelism("p1", tgt("full", par(tp(0, 2, 0)))))
    rec("tp as stored", s.get_tensor_with_parallelism("p1"))
    rec("tp as stored shard key", s.get_tensor_with_parallelism("p1_tp_1", tgt("as_stored")))
    rec("tp full no parallelism", s.get_tensor_with_parallelism("p1", tgt("full")))
    rec("as_stored with parallelism", s.get_tensor_with_parallelism("p1", tgt("as_stored", par(tp(0, 2, 1)))))
    # --- Multi-axis: the whole tensor in, one shard stored per call.
    for r in range(3):
        rec(f"dp/tp put {r}", s.put_tensor_with_parallelism("p2", T(FULL), par(ax("dp", 1, 2), tp(r, 3, 1))))
    rec("dp/tp full", s.get_tensor_with_parallelism("p2", tgt("full", par(tp(2, 3, 1), ax("dp", 1, 2)))))
    rec("dp/tp shard", s.get_tensor_with_parallelism("p2", tgt("shard", par(ax("dp", 1, 2), tp(2, 3, 1)))))
    rec("dp/tp reshard 2", s.get_tensor_with_parallelism("p2", tgt("shard", par(ax("dp", 1, 2), tp(1, 2, 1)))))
    rec("dp/tp other dp", s.get_tensor_with_parallelism("p2", tgt("full", par(ax("dp", 0, 2), tp(0, 3, 1)))))
    rec("dp/tp full via tp only", s.get_tensor_with_parallelism("p2", tgt("full", par(tp(0, 3, 1)))))
    for r in range(2):
        rec(f"pp/tp put {r}", s.put_tensor_with_parallelism("p3", T(CUBE), par(tp(r, 2, 1), ax("pp", 0, 4, stage_id=2))))
    rec("pp/tp full", s.get_tensor_with_parallelism("p3", tgt("full", par(ax("pp", 0, 4, stage_id=2), tp(0, 2, 1)))))
    rec("pp/tp shard", s.get_tensor_with_parallelism("p3", tgt("shard", par(ax("pp", 0, 4, stage_id=2), tp(1, 2, 1)))))
    rec("pp/tp wrong stage", s.get_tensor_with_parallelism("p3", tgt("shard", par(ax("pp", 0, 4, stage_id=1), tp(1, 2, 1)))))
    for r in range(2):
        rec(f"ep/tp put {r}", s.put_tensor_with_parallelism("p4", T(CUBE), par(ax("ep", 1, 2, expert_id=5), tp(r, 2, 2))))
    rec("ep/tp full", s.get_tensor_with_parallelism("p4", tgt("full", par(ax("ep", 1, 2, expert_id=5), tp(0, 2, 2)))))
    rec("ep/tp reshard", s.get_tensor_with_parallelism("p4", tgt("shard", par(ax("ep", 1, 2, expert_id=5), tp(3, 4, 2)))))
    # --- Axes that do not cut the tensor: stored as given.
    rec("dp put", s.put_tensor_with_parallelism("p5", T(FULL), par(ax("dp", 0, 2))))
    rec("ep put", s.put_tensor_with_parallelism("p5", T(CUBE), par(ax("EP", 1, 4, expert_id=7))))
    rec("pp/dp put", s.put_tensor_with_parallelism("p5", T(CUBE), par(ax("pp", 1, 2, stage_id=1), ax("dp", 1, 3))))
    rec("dp shard", s.get_tensor_with_parallelism("p5", tgt("shard", par(ax("dp", 0, 2)))))
    rec("ep shard", s.get_tensor_with_parallelism("p5", tgt("shard", par(ax("ep", 1, 4, expert_id=7)))))
    rec("dp/pp shard", s.get_tensor_with_parallelism("p5", tgt("shard", par(ax("dp", 1, 3), ax("pp", 1, 2, stage_id=1)))))
    rec("ep wrong expert", s.get_tensor_with_parallelism("p5", tgt("shard", par(ax("ep", 1, 4, expert_id=6)))))
    rec("dp full", s.get_tensor_with_parallelism("p5", tgt("full", par(ax("dp", 0, 2)))))
    # --- Writer partitions.
    for r in range(2):
        rec(f"writer put {r}", s.put_tensor_with_parallelism("p6", T(FULL), writer_partition=Writer(r, 2, 0)))
    rec("writer full", s.get_tensor_with_parallelism("p6", tgt("full")))
    rec("writer shard", s.get_tensor_with_parallelism("p6", tgt("shard", par(tp(1, 2, 0)))))
    rec("writer reshard", s.get_tensor_with_parallelism("p6", tgt("shard", par(tp(1, 4, 0)))))
    rec("writer partial", s.put_tensor_with_parallelism("p7", T(FULL), writer_partition=Writer(0, 3, 1)))
    rec("writer partial full", s.get_tensor_with_parallelism("p7", tgt("full")))
    # --- Legacy TP writes read through the unified calls.
    rec("legacy put", s.put_tensor_with_tp("p8", T(FULL), tp_size=4, split_dim=0))
    rec("legacy full", s.get_tensor_with_parallelism("p8", tgt("full", par(tp(0, 4, 0)))))
    rec("legacy reshard", s.get_tensor_with_parallelism("p8", tgt("shard", par(tp(0, 2, 0)))))
    rec("legacy full other size", s.get_tensor_with_parallelism("p8", tgt("full", par(tp(0, 2, 0)))))
    rec("plain put", s.put_tensor_with_parallelism("p9", T(FULL)))
    rec("plain get", s.get_tensor_with_parallelism("p9", tgt("AS_STORED")))
    rec("plain full", s.get_tensor_with_parallelism("p9", tgt("full")))
    rec("missing", s.get_tensor_with_parallelism("nope", tgt("full", par(tp(0, 2, 0)))))
    # --- Upserts replace, puts keep.
    rec("put again", s.put_tensor_with_parallelism("p1", T(FULL[:, :6] + 100), par(tp(0, 2, 1))))
    rec("after put again", s.get_tensor_with_parallelism("p1", tgt("shard", par(tp(0, 2, 1)))))
    rec("upsert", s.upsert_tensor_with_parallelism("p1", T(FULL[:, :6] + 100), par(tp(0, 2, 1))))
    rec("after upsert", s.get_tensor_with_parallelism("p1", tgt("full", par(tp(0, 2, 1)))))
    rec("upsert writer", s.upsert_tensor_with_parallelism("p6", T(FULL * 2), writer_partition=Writer(0, 2, 0)))
    rec("after upsert writer", s.get_tensor_with_parallelism("p6", tgt("full")))
    # --- Requests upstream refuses.
    bad = {
        "empty axes": par(),
        "duplicate kinds": par(ax("dp", 0, 2), ax("dp", 1, 2)),
        "rank out of range": par(tp(2, 2, 1)),
        "size zero": par(ax("dp", 0, 0)),
        "tp without dim": par(ax("tp", 0, 2)),
        "dp with dim": par(ax("dp", 0, 2, split_dim=0)),
        "ep without expert": par(ax("ep", 0, 2)),
        "ep with dim": par(ax("ep", 0, 2, split_dim=0, expert_id=1)),
        "pp without stage": par(ax("pp", 0, 2)),
        "unknown kind": par(ax("xp", 0, 2)),
        "five axes": par(ax("dp", 0, 2), tp(0, 2, 1), ax("ep", 0, 2, expert_id=0), ax("pp", 0, 2, stage_id=0), ax("dp", 1, 2)),
        "uneven": par(ax("dp", 0, 2), tp(0, 5, 1)),
        "dim out of range": par(ax("dp", 0, 2), tp(0, 2, 2)),
        "negative dim": par(tp(0, 2, -1)),
        "tp dim out of range": par(tp(0, 2, 5)),
    }
    for label, p in bad.items():
        rec(f"refused put: {label}", s.put_tensor_with_parallelism("bad", T(FULL), p))
        rec(f"refused get: {label}", s.get_tensor_with_parallelism("p1", tgt("shard", p)))
    rec("refused both", s.put_tensor_with_parallelism("bad", T(FULL), par(tp(0, 2, 1)), writer_partition=Writer(0, 2, 0)))
    rec("refused writer rank", s.put_tensor_with_parallelism("bad", T(FULL), writer_partition=Writer(2, 2, 0)))
    rec("refused writer dim", s.put_tensor_with_parallelism("bad", T(FULL), writer_partition=Writer(0, 2, -1)))
    rec("refused writer uneven", s.put_tensor_with_parallelism("bad", T(FULL), writer_partition=Writer(0, 5, 1)))
    rec("refused writer dim range", s.put_tensor_with_parallelism("bad", T(FULL), writer_partition=Writer(0, 2, 2)))
    # --- Batches.
    rec("batch put", s.batch_put_tensor_with_parallelism(
        ["b1", "b2", "b3"], [T(FULL), T(CUBE), T(FULL)],
        [par(ax("dp", 0, 2), tp(1, 2, 0)), None, par(ax("ep", 0, 2, expert_id=1))]))
    rec("batch writer", s.batch_put_tensor_with_parallelism(
        ["b4", "b4"], [T(FULL), T(FULL)], writer_partitions=[Writer(0, 2, 1), Writer(1, 2, 1)]))
    rec("batch both", s.batch_put_tensor_with_parallelism(["b5"], [T(FULL)], [None], writer_partitions=[None]))
    rec("batch tuple", s.batch_put_tensor_with_parallelism(["b5"], [T(FULL)], (None,)))
    rec("batch short", s.batch_put_tensor_with_parallelism(["b5", "b6"], [T(FULL), T(FULL)], [None]))
    rec("batch values short", s.batch_put_tensor_with_parallelism(["b5", "b6"], [T(FULL)]))
    rec("batch upsert", s.batch_upsert_tensor_with_parallelism(["b2"], [T(CUBE + 1)], [None]))
    rec("batch get", s.batch_get_tensor_with_parallelism(
        ["b1", "b2", "b3", "b4", "nope"],
        [tgt("shard", par(ax("dp", 0, 2), tp(1, 2, 0))), None, tgt("shard", par(ax("ep", 0, 2, expert_id=1))),
         tgt("full"), tgt("full")]))
    rec("batch get plain", s.batch_get_tensor_with_parallelism(["b2", "nope"]))
    rec("batch get short", s.batch_get_tensor_with_parallelism(["b2", "b2"], [None]))
    # --- From registered memory: an encoded tensor (header and bytes).
    s.put_tensor("enc", T(FULL))
    enc = s.get("enc")
    src = ctypes.create_string_buffer(len(enc))
    ctypes.memmove(src, enc, len(enc))
    sp = ctypes.addressof(src)
    rec("register src", s.register_buffer(sp, len(enc)))
    rec("from tp", s.put_tensor_with_parallelism_from("f1", sp, len(enc), par(tp(1, 2, 1))))
    rec("from tp full", s.get_tensor_with_parallelism("f1", tgt("full", par(tp(0, 2, 1)))))
    rec("from dp/tp", s.put_tensor_with_parallelism_from("f2", sp, len(enc), par(ax("dp", 0, 2), tp(0, 3, 0))))
    rec("from dp/tp shard", s.get_tensor_with_parallelism("f2", tgt("shard", par(ax("dp", 0, 2), tp(2, 4, 1)))))
    rec("from dp/tp full", s.get_tensor_with_parallelism("f2", tgt("full", par(ax("dp", 0, 2), tp(0, 2, 0)))))
    rec("from dp/tp even", s.put_tensor_with_parallelism_from("f2", sp, len(enc), par(tp(0, 2, 0), ax("dp", 1, 2))))
    rec("from dp/tp even full", s.get_tensor_with_parallelism("f2", tgt("full", par(ax("dp", 1, 2), tp(1, 2, 0)))))
    rec("from dp/tp even reshard", s.get_tensor_with_parallelism("f2", tgt("shard", par(ax("dp", 1, 2), tp(3, 4, 0)))))
    rec("from generic", s.put_tensor_with_parallelism_from("f3", sp, len(enc), par(ax("pp", 0, 2, stage_id=0))))
    rec("from generic get", s.get_tensor_with_parallelism("f3", tgt("shard", par(ax("pp", 0, 2, stage_id=0)))))
    rec("from writer", s.put_tensor_with_parallelism_from("f4", sp, len(enc), writer_partition=Writer(1, 2, 0)))
    rec("from writer 0", s.upsert_tensor_with_parallelism_from("f4", sp, len(enc), writer_partition=Writer(0, 2, 0)))
    rec("from writer full", s.get_tensor_with_parallelism("f4", tgt("full")))
    rec("from plain", s.put_tensor_with_parallelism_from("f5", sp, len(enc)))
    rec("from plain get", s.get_tensor_with_parallelism("f5"))
    rec("from uneven", s.put_tensor_with_parallelism_from("f6", sp, len(enc), par(tp(0, 5, 1))))
    rec("from short", s.put_tensor_with_parallelism_from("f6", sp, 100, par(tp(0, 2, 1))))
    rec("from batch", s.batch_put_tensor_with_parallelism_from(
        ["f7", "f8"], [sp, sp], [len(enc), len(enc)], [par(tp(0, 2, 0)), None]))
    rec("from batch get", s.batch_get_tensor_with_parallelism(["f7", "f8"], [tgt("full", par(tp(0, 2, 0))), None]))
    rec("from batch upsert writer", s.batch_upsert_tensor_with_parallelism_from(
        ["f9", "f9"], [sp, sp], [len(enc), len(enc)], writer_partitions=[Writer(0, 2, 1), Writer(1, 2, 1)]))
    rec("from batch upsert writer full", s.get_tensor_with_parallelism("f9", tgt("full")))
    # --- Into registered memory.
    size = 4096
    dst = ctypes.create_string_buffer(size)
    dp = ctypes.addressof(dst)
    rec("register dst", s.register_buffer(dp, size))
    rec("into as stored", s.get_tensor_with_parallelism_into("p9", dp, size))
    rec("into full", s.get_tensor_with_parallelism_into("p2", dp, size, tgt("full", par(ax("dp", 1, 2), tp(0, 3, 1)))))
    rec("into full bytes", bytes(dst.raw[:304 + 192]).hex())
    rec("into shard", s.get_tensor_with_parallelism_into("p1", dp, size, tgt("shard", par(tp(0, 2, 1)))))
    rec("into reshard", s.get_tensor_with_parallelism_into("p1", dp, size, tgt("shard", par(tp(2, 4, 1)))))
    rec("into reshard bytes", bytes(dst.raw[:304 + 48]).hex())
    rec("into writer full", s.get_tensor_with_parallelism_into("p6", dp, size, tgt("full")))
    rec("into legacy shard", s.get_tensor_with_parallelism_into("p8", dp, size, tgt("shard", par(tp(1, 4, 0)))))
    rec("into too small", s.get_tensor_with_parallelism_into("p2", dp, 400, tgt("full", par(ax("dp", 1, 2), tp(0, 3, 1)))))
    rec("into missing", s.get_tensor_with_parallelism_into("nope", dp, size, tgt("full")))
    rec("into batch", s.batch_get_tensor_with_parallelism_into(
        ["p9", "p5"], [dp, dp + 2048], [2048, 2048], [None, tgt("shard", par(ax("dp", 0, 2)))]))
    rec("into batch short", s.batch_get_tensor_with_parallelism_into(["p9", "p5"], [dp], [2048]))
    rec("into batch no targets", s.batch_get_tensor_with_parallelism_into(["p9"], [dp], [2048]))


def main():
    cmd = sys.argv[1]
    if cmd == "compare":
        up, ours = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
        differ = 0
        for (label, a), (_, b) in zip(up["answers"], ours["answers"]):
            if a != b:
                differ += 1
                print(f"parallel {label}: upstream {json.dumps(a)[:200]}\n  ours     {json.dumps(b)[:200]}")
        if len(up["answers"]) != len(ours["answers"]):
            differ += 1
            print("parallel: the scripts ran to different lengths")
        for key in sorted(set(up["stored"]) | set(ours["stored"])):
            a, b = up["stored"].get(key), ours["stored"].get(key)
            if a != b:
                differ += 1
                print(f"parallel key {key}: upstream {str(a)[:160]}\n  ours     {str(b)[:160]}")
        print(f"parallel tensor IO: {len(up['answers'])} answers and {len(up['stored'])} stored objects compared, {differ} differences")
        return 1 if differ else 0
    master, http, out_path = sys.argv[2], sys.argv[3], sys.argv[4]
    s = MooncakeDistributedStore()
    rc = s.setup("127.0.0.1", "P2PHANDSHAKE", 64 << 20, 16 << 20, "tcp", "", master)
    if rc != 0:
        sys.exit(f"setup against {master} returned {rc}")
    answers = []
    script(s, answers)
    keys = urllib.request.urlopen(f"http://{http}/get_all_keys").read().decode().split()
    # Only the keys this script writes (the master may hold others' keys).
    stored = {k: s.get(k).hex() for k in keys if re.match(r"([pbf]\d|bad)(_|$)", k)}
    json.dump({"answers": answers, "stored": stored}, open(out_path, "w"))
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
