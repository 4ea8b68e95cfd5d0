"""Several Python threads calling one in-process ``mooncake.store`` at once.

``setup()`` with no segment of its own against a running master (every byte
crosses TCP to the ``mooncake_client`` that holds the segment); each thread puts
a fresh 4 KiB key from registered memory and reads it back, for ``--seconds``.
Prints the put+get pairs per second of all threads together. Used for the
in-process call ring's spin (docs/PERFORMANCE.md): a caller spinning for its
answer helps one caller and must not starve the real client when many wait.

    python scripts/bench/inprocess_threads.py --master 127.0.0.1:50051 --threads 8
"""

import argparse
import threading
import time
import uuid

from mooncake.store import MooncakeDistributedStore, MooncakeHostMemAllocator

MIB = 1 << 20


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--master", default="127.0.0.1:50051")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5)
    args = p.parse_args()
    store = MooncakeDistributedStore()
    assert store.setup("127.0.0.1", "P2PHANDSHAKE", 0, 16 * MIB, "tcp", "", args.master) == 0
    alloc = MooncakeHostMemAllocator()
    bufs = []
    for _ in range(args.threads):
        a = alloc.alloc(MIB)
        assert a and store.register_buffer(a, MIB) == 0
        bufs.append(a)
    counts = [0] * args.threads
    stop = time.monotonic() + args.seconds

    def work(t):
        a, i = bufs[t], 0
        while time.monotonic() < stop:
            key = f"threads-{t}-{i}-{uuid.uuid4().hex[:8]}"
            assert store.put_from(key, a, 4096) == 0, key
            assert store.get_into(key, a + 8192, 4096) == 4096, key
            i += 1
        counts[t] = i

    threads = [threading.Thread(target=work, args=(t,)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"threads={args.threads} put+get pairs/s={sum(counts) / args.seconds:.0f}")
    store.close()


if __name__ == "__main__":
    main()
