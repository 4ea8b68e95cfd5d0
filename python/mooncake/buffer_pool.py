"""``BufferPool``: reusable registered buffers for the zero-copy calls.

Buffers come from the store's own shareable memory (``alloc_from_mem_pool``,
registered, so ``put_from`` / ``get_into`` and the ranged calls take them), are
rounded up to power-of-two size classes and kept for reuse when released: a
steady workload allocates and registers nothing after warm-up. Upstream's
signature; exhaustion and misuse raise ``RuntimeError`` as upstream does (this
is a Python helper, not a store call).
"""

import sys
import threading
import time

__all__ = ["BufferLease", "BufferPool"]


class BufferLease:
    """One buffer taken from a pool: ``ptr``, ``size`` (as asked), ``buffer`` (a
    writable memoryview); ``release()`` or ``with`` gives it back."""

    def __init__(self, pool, ptr, capacity, size):
        self._pool = pool
        self._ptr = ptr
        self._capacity = capacity
        self._size = size
        # The ctypes arrays behind the memoryviews handed out: while one of them
        # is referenced by a live view, the buffer cannot go back to the pool.
        self._exports = []

    @property
    def ptr(self):
        if self._pool is None:
            raise RuntimeError("buffer lease is closed")
        return self._ptr

    @property
    def size(self):
        return self._size

    @property
    def buffer(self):
        import ctypes

        if self._pool is None:
            raise RuntimeError("buffer lease is closed")
        array = (ctypes.c_char * self._size).from_address(self._ptr)
        self._exports.append(array)
        return memoryview(array).cast("B")

    def _views_alive(self):
        # A live memoryview holds a reference to its array (beyond this list's and
        # getrefcount's own).
        self._exports = [a for a in self._exports if sys.getrefcount(a) > 3]
        return bool(self._exports)

    def release(self):
        """Gives the buffer back to its pool (idempotent). Refused while a
        memoryview of it is alive, as upstream: the memory must outlive its views."""
        if self._pool is not None and self._views_alive():
            raise RuntimeError("cannot release buffer while exported views exist")
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._give_back(self._ptr, self._capacity)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __del__(self):
        if self._pool is not None and self._views_alive():
            # A view outlives its lease: the buffer stays out of the pool (and
            # mapped) rather than being reused under it.
            pool, self._pool = self._pool, None
            pool._abandon(self._capacity)
            return
        self.release()


class BufferPool:
    """Registered buffers of ``store`` for reuse. ``max_bytes`` caps the memory
    the pool holds (0: 1 GiB); requests are rounded up to powers of two from
    ``min_size_class``; ``block_on_exhaustion`` waits for a release (up to
    ``default_timeout`` seconds, None = forever) instead of raising."""

    def __init__(self, store, max_bytes=0, min_size_class=64 * 1024, max_size_class=None,
                 alignment=8 * 1024 * 1024, block_on_exhaustion=True, default_timeout=None,
                 max_regions=None, prewarm_size=None, prewarm_count=0):
        if store is None:
            raise RuntimeError("MooncakeDistributedStore is not initialized")
        if min_size_class <= 0 or alignment <= 0 or alignment & (alignment - 1):
            raise RuntimeError("min_size_class must be positive and alignment a power of two")
        self._store = store
        self._max_bytes = max_bytes or (1 << 30)
        self._min = min_size_class
        self._max_class = max_size_class or self._max_bytes
        self._block = block_on_exhaustion
        self._timeout = default_timeout
        self._max_regions = max_regions
        self._cond = threading.Condition()
        self._free = {}  # size class -> [ptr]
        self._held = 0  # bytes of all regions
        self._regions = 0
        self._in_use = 0
        self._closed = False
        if prewarm_size is not None and prewarm_count > 0:
            self.prewarm(prewarm_size, prewarm_count)

    def _class_of(self, size):
        c = self._min
        while c < size:
            c <<= 1
        return c if size <= self._max_class else size

    def _take_locked(self, cls):
        free = self._free.get(cls)
        if free:
            return free.pop()
        # Free idle regions of other classes to make room.
        while self._held + cls > self._max_bytes and any(self._free.values()):
            other = next(c for c, v in self._free.items() if v)
            self._store._free_mem_pool(self._free[other].pop())
            self._held -= other
            self._regions -= 1
        if self._held + cls > self._max_bytes:
            return None
        if self._max_regions is not None and self._regions >= self._max_regions:
            return None
        ptr = self._store.alloc_from_mem_pool(cls)
        if not ptr:
            raise RuntimeError("the store could not allocate registered memory")
        self._held += cls
        self._regions += 1
        return ptr

    def acquire(self, size, block=None, timeout=None):
        """A lease on a registered buffer of at least ``size`` bytes."""
        if not isinstance(size, int) or size < 0:
            raise TypeError("acquire(): size must be a non-negative int")
        cls = self._class_of(size)
        if cls > self._max_bytes:
            raise RuntimeError("requested buffer size exceeds pool capacity")
        block = self._block if block is None else block
        timeout = self._timeout if timeout is None else timeout
        if timeout is not None and timeout < 0:
            raise RuntimeError("timeout must be non-negative")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("buffer pool is closed")
                ptr = self._take_locked(cls)
                if ptr is not None:
                    self._in_use += 1
                    return BufferLease(self, ptr, cls, size)
                if not block:
                    raise RuntimeError("buffer pool is exhausted")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise RuntimeError("timed out waiting for buffer")
                self._cond.wait(left)

    buffer = acquire

    def _abandon(self, cls):
        """A lease dropped while views of it live: its buffer is never reused
        (nor freed: the views may still read it), and no longer counts as in use."""
        with self._cond:
            self._in_use -= 1
            self._held -= cls
            self._regions -= 1
            self._cond.notify_all()

    def _give_back(self, ptr, cls):
        with self._cond:
            self._in_use -= 1
            self._free.setdefault(cls, []).append(ptr)
            self._cond.notify_all()

    def prewarm(self, size, count):
        """Allocates ``count`` buffers of ``size`` bytes up front."""
        leases = [self.acquire(size, block=False) for _ in range(count)]
        for lease in leases:
            lease.release()

    def stats(self):
        """``{"bytes": held, "regions": n, "in_use": leased}``."""
        with self._cond:
            return {"bytes": self._held, "regions": self._regions, "in_use": self._in_use}

    def close(self):
        """Frees the pool's memory and refuses new leases; raises while leases
        are out."""
        with self._cond:
            if self._in_use:
                raise RuntimeError("cannot close buffer pool with active leases")
            self._closed = True
            for ptrs in self._free.values():
                for ptr in ptrs:
                    self._store._free_mem_pool(ptr)
            self._free.clear()
            self._held = self._regions = 0
