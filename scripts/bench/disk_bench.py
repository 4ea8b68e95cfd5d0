"""Disk-tier read-back against raw reads of the same filesystem, same run.

Against a ``mooncake_client`` with a small segment and a disk tier (master with
``--enable_offload``): objects of one size are put, their copies reach the disk
tier, memory is refilled so they are only on disk, and then each is read back with
``get_into`` into registered memory (the transfer port checks its block checksums
and copies from the mapped file). The raw figure reads a file of the same size in
the same directory, object by object, with ``os.preadv`` into a buffer. Both are
measured warm (page cache) and, when run as root, cold (``drop_caches`` first).
Also: offload throughput while puts run (bytes reaching the disk tier per second).
"""

import argparse
import ctypes
import os
import statistics
import time
import urllib.request

from mooncake.store import MooncakeDistributedStore, MooncakeHostMemAllocator

MIB = 1 << 20


def metric(http, name):
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            p = line.split()
            if len(p) == 2 and p[0] == name:
                return float(p[1])
    return None


def wait_offloads(http):
    deadline = time.monotonic() + 120
    while metric(http, "master_offload_queue_depth") != 0:
        assert time.monotonic() < deadline, "offloads did not finish"
        time.sleep(0.02)


def drop_caches():
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def summary(lat, size):
    total = sum(lat)
    return statistics.median(lat) * 1e6, len(lat) * size / total / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", required=True)
    ap.add_argument("--master-http", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--segment", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="16,1",
                    help="object sizes in MiB, comma-separated (default: 16,1)")
    args = ap.parse_args()
    store = MooncakeDistributedStore()
    assert store.setup_dummy(64 * MIB, 16 * MIB, args.client) == 0
    results = {}
    alloc = MooncakeHostMemAllocator()
    # Large objects first: the segment's free space is not yet cut into small
    # pieces (16 MiB objects need 16 MiB in one piece).
    sizes = [int(x) * MIB for x in args.sizes.split(",")]
    for size in sizes:
        count = max(8, (256 * MIB) // size)
        addr = alloc.alloc(size)
        assert addr, "alloc"
        buf = (ctypes.c_char * size).from_address(addr)
        assert store.register_buffer(addr, size) == 0
        payload = os.urandom(size)
        ctypes.memmove(addr, payload, size)
        keys = [f"disk-{size}-{i}" for i in range(count)]
        # Offload throughput under a steady put load.
        before = metric(args.master_http, "master_disk_allocated_bytes") or 0
        # Puts in steps of half the segment, each step's copies let finish: with
        # --enable_offload an object not yet copied when memory runs out is
        # evicted like any other.
        step = max(1, args.segment // 2 // size)
        t = time.perf_counter()
        for i, k in enumerate(keys):
            rc = store.put_from(k, addr, size)
            assert rc == 0, (k, rc)
            if (i + 1) % step == 0:
                wait_offloads(args.master_http)
        wait_offloads(args.master_http)
        offload_s = time.perf_counter() - t
        after = metric(args.master_http, "master_disk_allocated_bytes") or 0
        # Push them out of memory: fill the segment with other objects.
        filler = [f"fill-{size}-{i}" for i in range(2 * args.segment // size + 2)]
        for i, k in enumerate(filler):
            store.put_from(k, addr, size)
            if (i + 1) % step == 0:
                wait_offloads(args.master_http)
        wait_offloads(args.master_http)
        descs = {k: store.get_replica_desc(k) for k in keys}
        only_disk = [k for k in keys
                     if descs[k] and all(d.is_local_disk_replica() for d in descs[k])]
        kinds = {}
        for k in keys:
            mem = any(d.is_memory_replica() for d in descs[k] or [])
            dsk = any(d.is_local_disk_replica() for d in descs[k] or [])
            kinds[(mem, dsk)] = kinds.get((mem, dsk), 0) + 1
        assert len(only_disk) >= count // 2, f"{len(only_disk)} of {count} only on disk: (memory, disk): {kinds}"
        raw_path = os.path.join(args.dir, f"raw-{size}")
        with open(raw_path, "wb") as f:
            for _ in only_disk:
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        rawbuf = bytearray(size)
        view = memoryview(rawbuf)
        for mode in ["warm", "cold"]:
            for r in range(args.rounds):
                if mode == "cold" and not drop_caches():
                    break
                lat = []
                for k in only_disk:
                    t = time.perf_counter()
                    n = store.get_into(k, addr, size)
                    lat.append(time.perf_counter() - t)
                    assert n == size, (k, n, mode)
                results.setdefault((size, mode, "store"), []).append(summary(lat, size))
                if mode == "cold":
                    drop_caches()
                fd = os.open(raw_path, os.O_RDONLY)
                lat = []
                for i in range(len(only_disk)):
                    t = time.perf_counter()
                    n = os.preadv(fd, [view], i * size)
                    lat.append(time.perf_counter() - t)
                    assert n == size
                os.close(fd)
                results.setdefault((size, mode, "raw"), []).append(summary(lat, size))
        # The bytes that came back are the bytes put.
        ctypes.memset(addr, 0, size)
        assert store.get_into(only_disk[-1], addr, size) == size
        assert bytes(buf) == payload
        os.unlink(raw_path)
        # The same reads from the memory tier, for comparison: filler objects
        # still in memory. (Last: reading them leases them, which would keep
        # them in memory through the next size's puts.)
        fdescs = {k: store.get_replica_desc(k) for k in filler}
        in_memory = [k for k in filler if any(d.is_memory_replica() for d in fdescs[k] or [])]
        for r in range(args.rounds if in_memory else 0):
            lat = []
            for k in (in_memory * max(1, len(only_disk) // len(in_memory)))[:len(only_disk)]:
                t = time.perf_counter()
                n = store.get_into(k, addr, size)
                lat.append(time.perf_counter() - t)
                assert n == size, (k, n, "memory")
            results.setdefault((size, "memory"), []).append(summary(lat, size))
        if in_memory:
            time.sleep(11)  # the reads' leases (10 s by default) run out
        results[(size, "offload")] = (after - before) / offload_s / 1e9
        store.unregister_buffer(addr)
    print(f"{'size':>7} {'cache':>5} {'store p50 us':>13} {'store GB/s':>10} "
          f"{'raw p50 us':>11} {'raw GB/s':>9} {'ratio':>6}")
    for size in sorted(sizes):
        for mode in ["warm", "cold"]:
            s = results.get((size, mode, "store"))
            r = results.get((size, mode, "raw"))
            if not s or not r:
                print(f"{size // MIB:>4} MiB {mode:>5}  (skipped: drop_caches needs root)")
                continue
            sp = statistics.median(x[0] for x in s)
            sg = statistics.median(x[1] for x in s)
            rp = statistics.median(x[0] for x in r)
            rg = statistics.median(x[1] for x in r)
            print(f"{size // MIB:>4} MiB {mode:>5} {sp:>13.0f} {sg:>10.2f} {rp:>11.0f} {rg:>9.2f} "
                  f"{sg / rg:>6.2f}")
        m = results.get((size, "memory"))
        if m:
            print(f"{size // MIB:>4} MiB memory tier (same reads from memory): "
                  f"p50 {statistics.median(x[0] for x in m):.0f} us, "
                  f"{statistics.median(x[1] for x in m):.2f} GB/s")
        print(f"{size // MIB:>4} MiB offload while putting: {results[(size, 'offload')]:.2f} GB/s")
    store.close()


if __name__ == "__main__":
    main()
