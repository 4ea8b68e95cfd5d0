"""Cross-host transfers through the store, for scripts/bench/crosshost.sh.

A dummy on host A puts 16 MiB values whose only replica is on host B
(``preferred_segment``) and reads them back, zero-copy from registered memory,
then 64 x 1 MiB batches the same way. Prints one line per figure: the median
latency and GB/s over ``--seconds`` of back-to-back calls.
"""

import argparse
import ctypes
import statistics
import time

from mooncake.store import MooncakeDistributedStore, MooncakeHostMemAllocator, ReplicateConfig

MIB = 1 << 20


def timed(seconds, call):
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(lat) < 5:
        lat.append(call())
    return statistics.median(lat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--remote", required=True, help="host B's segment name")
    ap.add_argument("--seconds", type=float, default=3)
    args = ap.parse_args()
    store = MooncakeDistributedStore()
    assert store.setup_dummy(64 * MIB, 16 * MIB, args.socket) == 0, "setup_dummy"
    cfg = ReplicateConfig()
    cfg.preferred_segment = args.remote
    alloc = MooncakeHostMemAllocator()
    size = 16 * MIB
    addr = alloc.alloc(64 * MIB)
    assert addr and store.register_buffer(addr, 64 * MIB) == 0
    ctypes.memset(addr, 0x5A, 64 * MIB)
    keys = [f"xh-{i}" for i in range(8)]
    for k in keys:
        assert store.put_from(k, addr, size, cfg) == 0, k
    for k in keys:
        # Every replica on B: the transfers below cross the link.
        assert all(d.is_memory_replica() for d in store.get_replica_desc(k))
    turn = [0]

    def put16():
        k = keys[turn[0] % len(keys)]
        turn[0] += 1
        store.remove(k, True)
        t = time.perf_counter()
        rc = store.put_from(k, addr, size, cfg)
        d = time.perf_counter() - t
        assert rc == 0, rc
        return d

    def get16():
        k = keys[turn[0] % len(keys)]
        turn[0] += 1
        t = time.perf_counter()
        rc = store.get_into(k, addr, size)
        d = time.perf_counter() - t
        assert rc == size, rc
        return d

    batch = [f"xb-{i}" for i in range(64)]
    ptrs = [addr + i * MIB for i in range(64)]
    sizes = [MIB] * 64

    def put_batch():
        for k in batch:
            store.remove(k, True)
        t = time.perf_counter()
        rcs = store.batch_put_from(batch, ptrs, sizes, cfg)
        d = time.perf_counter() - t
        assert all(r == 0 for r in rcs), rcs
        return d

    def get_batch():
        t = time.perf_counter()
        rcs = store.batch_get_into(batch, ptrs, sizes)
        d = time.perf_counter() - t
        assert all(r == MIB for r in rcs), rcs
        return d

    for name, call, n in [("16 MiB put_from", put16, size), ("16 MiB get_into", get16, size),
                          ("64 x 1 MiB batch_put_from", put_batch, 64 * MIB),
                          ("64 x 1 MiB batch_get_into", get_batch, 64 * MIB)]:
        t = timed(args.seconds, call)
        print(f"store {name}: {t * 1e6:8.0f} us  {n / t / 1e9:5.2f} GB/s", flush=True)
    store.close()


if __name__ == "__main__":
    main()
