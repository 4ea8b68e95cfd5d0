"""The engines' call sequences (reference: engine-integration-surface.md §1, §2, §6).

- SGLang standalone (dummy client): allocator → setup_dummy → warm-up → K and V
  halves registered separately → 256-key batches from 4 threads; the process is
  killed and a new one reads everything back.
- SGLang non-standalone: ``setup`` with 8 positional arguments plus keywords.
- LMCache: dict ``setup``, ``put_from``, ``batch_get_into``, ``put_parts`` +
  ``batch_get_buffer``, ``get_hostname`` as preferred segment; the lookup client.
"""

import ctypes
import hashlib
import random
import subprocess
import sys
import textwrap
import uuid

from conftest import MB, setup_in_process

from mooncake.store import MooncakeDistributedStore, MooncakeHostMemAllocator, ReplicateConfig

PAGE = 16 * 1024  # one K (or V) object
PAGES_PER_CALL = 128  # SGLang's STORAGE_BATCH_SIZE: 256 keys per call (K and V)
THREADS = 4
CALLS_PER_THREAD = 2

# Runs in a separate Python process: the inference engine.
SGLANG_RANK = textwrap.dedent(r'''
    import ctypes, hashlib, random, sys, threading, uuid
    from mooncake.store import MooncakeDistributedStore, MooncakeHostMemAllocator

    mode, address, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    PAGE, PAGES, THREADS, CALLS = 16 * 1024, 128, 4, 2
    total_pages = PAGES * THREADS * CALLS
    half = total_pages * PAGE          # K half, then V half: one allocation
    alloc = MooncakeHostMemAllocator()  # before any setup, as SGLang does
    base = alloc.alloc(2 * half)
    assert base, "allocator failed"

    store = MooncakeDistributedStore()
    assert store.setup_dummy(2 * half, 16 * 1024 * 1024, address) == 0
    warm = "sglang_mooncake_store_warmup_key" + uuid.uuid4().hex
    value = bytes(4096)
    assert store.put(warm, value) == 0
    assert store.is_exist(warm) == 1
    assert store.get(warm) == value
    assert store.register_buffer(base, half) == 0          # K half
    assert store.register_buffer(base + half, half) == 0   # V half

    def page_key(i):
        return hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()

    def content(key):
        return random.Random(key).randbytes(PAGE)

    failures = []

    def work(t):
        try:
            for c in range(CALLS):
                pages = range((t * CALLS + c) * PAGES, (t * CALLS + c + 1) * PAGES)
                keys, ptrs = [], []
                for i in pages:
                    keys += [f"{page_key(i)}_0_k", f"{page_key(i)}_0_v"]
                    ptrs += [base + i * PAGE, base + half + i * PAGE]
                sizes = [PAGE] * len(keys)
                if mode == "write":
                    for k, p in zip(keys, ptrs):
                        ctypes.memmove(p, content(k), PAGE)
                    exist = store.batch_is_exist(keys)
                    assert len(exist) == 256 and exist == [0] * 256, exist[:4]
                    assert store.batch_put_from(keys, ptrs, sizes) == [0] * 256
                    assert store.batch_is_exist(keys) == [1] * 256
                else:
                    assert store.batch_is_exist(keys) == [1] * 256
                for p in ptrs:
                    ctypes.memset(p, 0, PAGE)
                got = store.batch_get_into(keys, ptrs, sizes)
                assert got == [PAGE] * 256, got[:4]
                for k, p in zip(keys, ptrs):
                    assert ctypes.string_at(p, PAGE) == content(k), k
        except BaseException as e:
            failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads: th.start()
    for th in threads: th.join()
    print("FAILURES", failures, flush=True)
    print("READY" if not failures else "FAILED", flush=True)
    if mode == "write":
        sys.stdin.read()   # wait to be killed
''')


def run_rank(tmp_path, mode, address, tag):
    script = tmp_path / "sglang_rank.py"
    script.write_text(SGLANG_RANK)
    proc = subprocess.Popen([sys.executable, str(script), mode, address, tag],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line.decode(errors="replace"))
        if line.strip() in (b"READY", b"FAILED"):
            break
    return proc, "".join(lines)


def test_sglang_standalone_flow_survives_the_engine_being_killed(tmp_path, real_client):
    tag = uuid.uuid4().hex
    writer, out = run_rank(tmp_path, "write", real_client.address, tag)
    try:
        assert "READY" in out, out
    finally:
        writer.kill()  # SIGKILL: no close(), no goodbye
        writer.wait()
    assert writer.returncode == -9
    reader, out = run_rank(tmp_path, "read", real_client.address, tag)
    reader.wait(timeout=60)
    assert "READY" in out, out
    assert reader.returncode == 0


def test_sglang_non_standalone_flow(master):
    alloc = MooncakeHostMemAllocator()
    half = 64 * PAGE
    base = alloc.alloc(2 * half)
    store = MooncakeDistributedStore()
    try:
        # 8 positional arguments (engine=None) and the keyword arguments SGLang passes.
        rc = store.setup("localhost", "P2PHANDSHAKE", 64 * MB, 16 * MB, "tcp", "",
                         master.address, None, enable_ssd_offload=False, ssd_offload_path="",
                         tenant_id="default", enable_client_http_server=False)
        assert rc == 0
        warm = "sglang_mooncake_store_warmup_key" + uuid.uuid4().hex
        assert store.put(warm, bytes(4096)) == 0
        assert store.is_exist(warm) == 1 and store.get(warm) == bytes(4096)
        assert store.register_buffer(base, half) == 0
        assert store.register_buffer(base + half, half) == 0
        tag = uuid.uuid4().hex
        keys, ptrs = [], []
        for i in range(64):
            h = hashlib.sha256(f"{tag}{i}".encode()).hexdigest()
            keys += [f"{h}_0_k", f"{h}_0_v"]
            ptrs += [base + i * PAGE, base + half + i * PAGE]
        for k, p in zip(keys, ptrs):
            ctypes.memmove(p, random.Random(k).randbytes(PAGE), PAGE)
        cfg = ReplicateConfig()
        cfg.group_ids = [f"sglang-hicache:{k}" for k in keys]
        assert store.batch_is_exist(keys) == [0] * 128
        assert store.batch_put_from(keys, ptrs, [PAGE] * 128, cfg) == [0] * 128
        assert store.batch_put_from(keys, ptrs, [PAGE] * 128) == [0] * 128  # existing → 0
        for p in ptrs:
            ctypes.memset(p, 0, PAGE)
        assert store.batch_get_into(keys, ptrs, [PAGE] * 128) == [PAGE] * 128
        for k, p in zip(keys, ptrs):
            assert ctypes.string_at(p, PAGE) == random.Random(k).randbytes(PAGE)
        # SGLang's clear(): objects under a read lease (just read) stay until it
        # runs out, as upstream; a forced one takes everything.
        assert store.remove_all() >= 0
        assert store.remove_all(force=True) >= 1
        assert store.batch_is_exist(keys) == [0] * 128
    finally:
        store.close()
        alloc.free(base)


def test_lmcache_flow_and_lookup_client(master):
    store = MooncakeDistributedStore()
    lookup = MooncakeDistributedStore()
    pool = ctypes.create_string_buffer(4 * MB)  # LMCache's own pinned pool, not ours
    ptr = ctypes.addressof(pool)
    try:
        # Dict form with LMCache's legacy key spellings; every value a string.
        assert store.setup({
            "local_hostname": "localhost",
            "metadata_server": "P2PHANDSHAKE",
            "global_segment_size": "64MB",
            "local_buffer_size": str(16 * MB),
            "protocol": "tcp",
            "device_name": "",
            "master_server_address": master.address,
        }) == 0
        cfg = ReplicateConfig()
        cfg.replica_num = 1
        cfg.preferred_segment = store.get_hostname()
        assert store.register_buffer(ptr, 4 * MB) == 0
        tag = uuid.uuid4().hex
        keys = [f"vllm@model@1@0@{tag}{i:04x}@bfloat16" for i in range(6)]
        sizes = [256 * 1024] * 5 + [100 * 1024]  # the last chunk is partial
        for i, n in enumerate(sizes):
            ctypes.memset(ptr + i * 256 * 1024, 0x30 + i, n)
        assert store.put_from(keys[0], ptr, sizes[0], cfg) == 0
        assert store.batch_put_from(keys[1:], [ptr + i * 256 * 1024 for i in range(1, 6)], sizes[1:], cfg) == [0] * 5
        assert all(store.is_exist(k) for k in keys)
        dst = ptr + 2 * MB
        got = store.batch_get_into(keys, [dst + i * 256 * 1024 for i in range(6)], [256 * 1024] * 6)
        assert got == sizes  # bytes read: the partial chunk is shorter than its buffer
        assert ctypes.string_at(dst + 5 * 256 * 1024, 100 * 1024) == bytes([0x35]) * 100 * 1024
        # metadata mode
        meta_key = f"meta-{tag}"
        assert store.put_parts(meta_key, b"\x01\x02header", b"kv" * 5000) == 0
        bufs = store.batch_get_buffer([meta_key, f"missing-{tag}"])
        assert bufs[1] is None and len(bufs[0]) == 8 + 10000
        assert bytes(memoryview(bufs[0])[:8]) == b"\x01\x02header"

        # The scheduler's lookup client contributes no memory and only probes;
        # reads from it cross to the first client's segment over TCP.
        assert lookup.setup("localhost", "P2PHANDSHAKE", 0, 16 * MB, "tcp", "", master.address) == 0
        assert lookup.batch_is_exist(keys + [f"nope-{tag}"]) == [1] * 6 + [0]
        assert lookup.get(keys[5]) == bytes([0x35]) * 100 * 1024
        lbuf = ctypes.create_string_buffer(256 * 1024)
        lptr = ctypes.addressof(lbuf)
        assert lookup.register_buffer(lptr, 256 * 1024) == 0
        assert lookup.batch_get_into(keys[:1], [lptr], [256 * 1024]) == [256 * 1024]
        assert ctypes.string_at(lptr, 256 * 1024) == bytes([0x30]) * 256 * 1024
        assert store.unregister_buffer(ptr) == 0
    finally:
        lookup.close()
        store.close()


def test_many_in_process_clients_in_one_process(master):
    """SGLang's dev test builds five stores in one process and never closes them."""
    stores = [MooncakeDistributedStore() for _ in range(5)]
    try:
        for s in stores:
            assert setup_in_process(s, master, 16 * MB) == 0
        names = {s.get_hostname() for s in stores}
        assert len(names) == 5  # each segment has its own name
        key = f"shared-{uuid.uuid4().hex}"
        assert stores[0].put(key, b"seen by all") == 0
        assert [s.get(key) for s in stores] == [b"seen by all"] * 5
    finally:
        for s in stores:
            s.close()
