"""Benchmark of ``mooncake.store`` from Python (one caller thread).

Modes: ``dummy`` (setup_dummy against a running ``mooncake_client``) and
``in_process`` (setup: a full client in this process). For 4 KiB, 64 KiB, 1 MiB and
16 MiB objects: put/get of bytes, put_from/get_into (registered memory), batches
(batch_put_from / batch_get_into), and memcpy (ctypes.memmove between two buffers of
the same allocator) measured in the same run; plus is_exist and batch_is_exist(128).
Each figure is the median of ``--rounds`` rounds; latencies are per-call medians.
"""

import argparse
import ctypes
import json
import statistics
import time
import uuid

from mooncake.store import MooncakeDistributedStore, MooncakeHostMemAllocator

KIB, MIB = 1 << 10, 1 << 20
SIZES = [4 * KIB, 64 * KIB, MIB, 16 * MIB]


def size_of(text):
    """Bytes in ``2GB``, ``512 MB``, ``0``: upstream's setup takes only integers."""
    t = text.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    units = {"K": KIB, "M": MIB, "G": 1 << 30, "T": 1 << 40}
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def label(n):
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def per_call(fn, count):
    """Median seconds per call of ``fn(i)`` over ``count`` calls."""
    lat = []
    for i in range(count):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return statistics.median(lat)


def bench_size(store, size, buf_a, buf_b, rounds):
    count = max(8, min(300, (256 * MIB) // size))
    batch = 64 if size < 16 * MIB else 8
    payload = bytes(range(256)) * (size // 256)
    ctypes.memmove(buf_a, payload, size)
    out = {}
    for name in ["memcpy", "put", "get", "put_from", "get_into", "batch_put_from", "batch_get_into"]:
        out[name] = []
    for _ in range(rounds):
        keys = [f"b-{uuid.uuid4().hex}" for _ in range(count)]
        out["memcpy"].append(per_call(lambda i: ctypes.memmove(buf_b, buf_a, size), count))
        out["put"].append(per_call(lambda i: store.put(keys[i], payload), count))
        out["get"].append(per_call(lambda i: store.get(keys[i]), count))
        store.remove_all(force=True)
        out["put_from"].append(per_call(lambda i: store.put_from(keys[i], buf_a, size), count))
        out["get_into"].append(per_call(lambda i: store.get_into(keys[i], buf_b, size), count))
        store.remove_all(force=True)
        nb = max(1, count // batch)
        bkeys = [[f"bb-{uuid.uuid4().hex}" for _ in range(batch)] for _ in range(nb)]
        # a batch reads from / writes to `batch` consecutive slots of the buffers
        ptrs = [buf_a + (j % 4) * size for j in range(batch)]
        dsts = [buf_b + (j % 4) * size for j in range(batch)]
        sizes = [size] * batch
        out["batch_put_from"].append(
            per_call(lambda i: store.batch_put_from(bkeys[i], ptrs, sizes), nb) / batch)
        out["batch_get_into"].append(
            per_call(lambda i: store.batch_get_into(bkeys[i], dsts, sizes), nb) / batch)
        store.remove_all(force=True)
    return {k: statistics.median(v) for k, v in out.items()}


def bench_exist(store, rounds):
    keys = [f"e-{uuid.uuid4().hex}" for _ in range(128)]
    store.put_batch(keys, [b"x"] * 128)
    single, batched = [], []
    for _ in range(rounds):
        single.append(per_call(lambda i: store.is_exist(keys[i % 128]), 2000))
        batched.append(per_call(lambda i: store.batch_is_exist(keys), 500))
    store.remove_all(force=True)
    return 1 / statistics.median(single), 128 / statistics.median(batched)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["dummy", "in_process"], required=True)
    p.add_argument("--client", default="127.0.0.1:50052", help="real client (dummy mode)")
    p.add_argument("--master", default="127.0.0.1:50051", help="master (in_process mode)")
    p.add_argument("--segment", default="2GB", help="segment of the in-process client")
    p.add_argument("--local-buffer", default="16MB",
                   help="local_buffer_size (LMCache sets 1 GB with a 3.2 GB segment)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--buffers", choices=["allocator", "process"], default="allocator",
                   help="in_process mode: register memory from MooncakeHostMemAllocator, or "
                   "plain process memory (as LMCache registers its pinned pool); dummy mode "
                   "always uses the allocator")
    p.add_argument("--json", help="also write the medians (seconds per call, keyed by "
                   "size and operation; existence rates per second) to this file")
    args = p.parse_args()

    span = 4 * 16 * MIB
    if args.buffers == "process" and args.mode == "in_process":
        plain = [(ctypes.c_uint8 * span)(), (ctypes.c_uint8 * span)()]
        buf_a, buf_b = (ctypes.addressof(b) for b in plain)
    else:
        alloc = MooncakeHostMemAllocator()
        buf_a, buf_b = alloc.alloc(span), alloc.alloc(span)
    store = MooncakeDistributedStore()
    if args.mode == "dummy":
        rc = store.setup_dummy(2 * span, size_of(args.local_buffer), args.client)
    else:
        rc = store.setup("127.0.0.1", "P2PHANDSHAKE", size_of(args.segment),
                         size_of(args.local_buffer), "tcp", "", args.master)
    assert rc == 0, f"setup failed: {rc}"
    assert store.register_buffer(buf_a, span) == 0 and store.register_buffer(buf_b, span) == 0

    buffers = "plain process memory" if args.buffers == "process" and args.mode == "in_process" \
        else "allocator memory"
    print(f"## mooncake.store, {args.mode} mode, {buffers} (median of {args.rounds} rounds)\n")
    print("| size | memcpy GB/s | put p50 | get p50 | put_from p50 | get_into p50 | "
          "put_from GB/s (% memcpy) | get_into GB/s (% memcpy) | batch_put_from GB/s | batch_get_into GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = {"mode": args.mode, "sizes": {}}
    for size in SIZES:
        r = bench_size(store, size, buf_a, buf_b, args.rounds)
        results["sizes"][str(size)] = r
        gbs = {k: size / v / 1e9 for k, v in r.items()}
        us = {k: v * 1e6 for k, v in r.items()}
        m = gbs["memcpy"]
        print(f"| {label(size)} | {m:.2f} | {us['put']:.1f} µs | {us['get']:.1f} µs | "
              f"{us['put_from']:.1f} µs | {us['get_into']:.1f} µs | "
              f"{gbs['put_from']:.2f} ({100 * gbs['put_from'] / m:.0f}%) | "
              f"{gbs['get_into']:.2f} ({100 * gbs['get_into'] / m:.0f}%) | "
              f"{gbs['batch_put_from']:.2f} | {gbs['batch_get_into']:.2f} |", flush=True)
    exist, batch_exist = bench_exist(store, args.rounds)
    print(f"\nis_exist: {exist / 1e3:.1f} k ops/s; batch_is_exist(128): {batch_exist / 1e6:.2f} M keys/s")
    store.close()
    if args.json:
        results["is_exist"] = exist
        results["batch_is_exist"] = batch_exist
        with open(args.json, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
