"""The asyncio wrapper: ``async_<name>`` for every blocking method."""

import asyncio
import uuid

from conftest import setup_in_process

from mooncake.store import MooncakeDistributedStore, MooncakeDistributedStoreAsync


def test_every_method_has_a_coroutine_form():
    names = [n for n in dir(MooncakeDistributedStore)
             if not n.startswith("_") and callable(getattr(MooncakeDistributedStore, n))]
    assert "batch_put_from" in names and "setup_dummy" in names
    for n in names:
        assert asyncio.iscoroutinefunction(getattr(MooncakeDistributedStoreAsync, f"async_{n}")), n


def test_async_calls_overlap_and_keep_conventions(master):
    store = MooncakeDistributedStoreAsync()
    assert setup_in_process(store, master) == 0

    async def scenario():
        tag = uuid.uuid4().hex
        keys = [f"async-{tag}-{i}" for i in range(32)]
        puts = await asyncio.gather(*(store.async_put(k, k.encode() * 10) for k in keys))
        assert puts == [0] * 32
        assert await store.async_batch_is_exist(keys + [f"missing-{tag}"]) == [1] * 32 + [0]
        values = await asyncio.gather(*(store.async_get(k) for k in keys))
        assert values == [k.encode() * 10 for k in keys]
        assert await store.async_get(f"missing-{tag}") == b""
        assert await store.async_remove(keys[0], force=True) == 0
        assert await store.async_is_exist(keys[0]) == 0

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert asyncio.run(store.async_put("after-close", b"x")) < 0
