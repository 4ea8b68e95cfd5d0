"""The disk tier as SGLang's default (in-process) mode uses it: ``setup(...,
enable_ssd_offload=True, ssd_offload_path=DIR)`` against a master started with
``--enable_offload``. Objects several times the segment come back from disk with
their bytes, replica descriptors say which are on disk, and a process that closes
its store and sets up again finds what its disk tier held."""

import os
import shutil
import tempfile
import time
import urllib.request

import pytest

from conftest import MB, Master
from mooncake.store import MooncakeDistributedStore

LEN = 256 << 10


def metric(master, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{master.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return float(parts[1])
    return None


def value(key):
    return (key.encode() + b"#") * (LEN // (len(key) + 1)) + b"!" * (LEN % (len(key) + 1))


@pytest.fixture
def offload_master():
    m = Master("--enable_offload=true", "--eviction_high_watermark_ratio=0.8")
    yield m
    m.proc.kill()


@pytest.fixture
def disk_dir():
    d = tempfile.mkdtemp(prefix="mc-pytest-disk-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def setup(store, master, disk_dir):
    return store.setup("localhost", "P2PHANDSHAKE", 16 * MB, 16 * MB, "tcp", "", master.address,
                       enable_ssd_offload=True, ssd_offload_path=disk_dir)


def fill(store, master, rounds=6):
    keys = []
    for r in range(rounds):
        batch = [f"d{r}-{i}" for i in range(32)]
        assert store.put_batch(batch, [value(k) for k in batch]) == 0
        keys += batch
        deadline = time.monotonic() + 30
        while metric(master, "master_offload_queue_depth") != 0:
            assert time.monotonic() < deadline, "offload copies did not finish"
            time.sleep(0.05)
    return keys


def test_in_process_store_reads_back_from_its_disk_tier_and_after_a_restart(offload_master, disk_dir):
    store = MooncakeDistributedStore()
    assert setup(store, offload_master, disk_dir) == 0
    keys = fill(store, offload_master)
    assert any(n.endswith(".disk") for n in os.listdir(disk_dir))
    reads_before = store.get_offload_rpc_read_count()
    for k in keys:
        assert store.get(k) == value(k), k
    descs = store.batch_get_replica_desc(keys)
    on_disk = [k for k in keys if any(d.is_local_disk_replica() for d in descs[k])]
    assert len(on_disk) >= len(keys) // 2
    disk_only = [k for k in on_disk if not any(d.is_memory_replica() for d in descs[k])]
    assert disk_only, "memory holds 16 MB of 48 MB: some objects are only on disk"
    # Upstream's counter of reads served from the disk tier counts them.
    assert store.get_offload_rpc_read_count() >= reads_before + len(disk_only)
    with pytest.raises(RuntimeError):
        next(d for d in descs[disk_only[0]] if d.is_local_disk_replica()).get_memory_descriptor()
    store.close()

    # The process sets up again (an engine restart): its disk tier comes back.
    again = MooncakeDistributedStore()
    assert setup(again, offload_master, disk_dir) == 0
    deadline = time.monotonic() + 20
    while not again.is_exist(on_disk[0]):
        assert time.monotonic() < deadline, "the disk tier did not come back"
        time.sleep(0.1)
    for k in on_disk:
        assert again.get(k) == value(k), k
    again.close()


def test_enable_ssd_offload_without_a_directory_is_an_error_code(offload_master, monkeypatch):
    monkeypatch.delenv("MOONCAKE_OFFLOAD_FILE_STORAGE_PATH", raising=False)
    store = MooncakeDistributedStore()
    assert store.setup("localhost", "P2PHANDSHAKE", 16 * MB, 16 * MB, "tcp", "",
                       offload_master.address, enable_ssd_offload=True) == -600


def test_offload_read_count_is_zero_without_a_disk_tier_and_in_dummy_mode(store):
    """As upstream: in dummy mode the real client serves disk reads, and the
    count stays 0 here."""
    k = f"count-{store.mode}"
    assert store.put(k, b"x" * 4096) == 0
    assert store.get(k) == b"x" * 4096
    assert store.get_offload_rpc_read_count() == 0
