"""Resident memory of an in-process store against what it was configured to use.

    python inprocess_rss.py MASTER [SEGMENT_MB] [LOCAL_BUFFER_MB]

Sets up ``MooncakeDistributedStore`` in this process (``setup``: a segment of its
own and a local buffer), then runs puts and gets of 4 KiB to 16 MiB through the
bytes API, the zero-copy API and batches, several times the segment in total, and
prints the process's resident memory (VmRSS, and its peak VmHWM) above the
interpreter's own before ``setup``, next to segment + local buffer. Runs with
either package (upstream's wheel or this project's), against that package's master.
"""

import ctypes
import gc
import os
import sys

from mooncake.store import MooncakeDistributedStore

MIB = 1 << 20


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def pss():
    """Proportional set size: each physical page once (a page mapped twice in
    this process, or shared with another, is not counted twice as RSS counts it)."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    master = sys.argv[1]
    segment = int(sys.argv[2]) * MIB if len(sys.argv) > 2 else 256 * MIB
    local = int(sys.argv[3]) * MIB if len(sys.argv) > 3 else 64 * MIB
    base, base_pss = status("VmRSS"), pss()
    store = MooncakeDistributedStore()
    rc = store.setup("127.0.0.1", "P2PHANDSHAKE", segment, local, "tcp", "", master)
    assert rc == 0, rc
    after_setup, after_setup_pss = status("VmRSS"), pss()
    buf_size = 16 * MIB
    buf = ctypes.create_string_buffer(buf_size)
    addr = ctypes.addressof(buf)
    assert store.register_buffer(addr, buf_size) == 0
    payload = os.urandom(buf_size)
    ctypes.memmove(addr, payload, buf_size)
    written = 0
    for size, count in [(4 << 10, 2000), (64 << 10, 500), (MIB, 200), (16 * MIB, 24)]:
        for i in range(count):
            k = f"rss-{size}-{i}"
            # Half through the bytes API (staged through the local buffer),
            # half zero-copy from registered memory.
            if i % 2:
                rc = store.put(k, payload[:size])
            else:
                rc = store.put_from(k, addr, size)
            written += size if rc == 0 else 0
            if i % 2:
                store.get(k)
            else:
                store.get_into(k, addr, size)
        keys = [f"rss-b-{size}-{i}" for i in range(8)]
        store.batch_put_from(keys, [addr] * 8, [min(size, buf_size // 8)] * 8)
        store.batch_get_into(keys, [addr + j * (buf_size // 8) for j in range(8)], [buf_size // 8] * 8)
        gc.collect()
    end, end_pss = status("VmRSS"), pss()
    peak = status("VmHWM")
    print(f"segment {segment // MIB} MiB + local buffer {local // MIB} MiB = {(segment + local) // MIB} MiB; "
          f"{written / MIB:.0f} MiB written")
    print(f"interpreter before setup: RSS {base / MIB:.0f} MiB, PSS {base_pss / MIB:.0f} MiB")
    print(f"RSS above it: after setup {(after_setup - base) / MIB:.0f} MiB, after the workload "
          f"{(end - base) / MIB:.0f} MiB, peak {(peak - base) / MIB:.0f} MiB")
    print(f"PSS above it: after setup {(after_setup_pss - base_pss) / MIB:.0f} MiB, after the workload "
          f"{(end_pss - base_pss) / MIB:.0f} MiB")
    print("(the benchmark's own 16 MiB buffer and 16 MiB payload are included)")
    store.close()


if __name__ == "__main__":
    main()
