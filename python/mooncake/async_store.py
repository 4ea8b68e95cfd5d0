"""``MooncakeDistributedStoreAsync``: every blocking method ``name`` of
``MooncakeDistributedStore`` also as a coroutine ``async_<name>``, run in an
executor (the store releases the GIL, so calls really overlap)."""

import asyncio
import functools

from mooncake.store import MooncakeDistributedStore


def _make_async(name):
    async def call(self, *args, **kwargs):
        loop = asyncio.get_running_loop()
        method = getattr(self, name)
        return await loop.run_in_executor(self.executor, functools.partial(method, *args, **kwargs))

    call.__name__ = f"async_{name}"
    call.__qualname__ = f"MooncakeDistributedStoreAsync.async_{name}"
    call.__doc__ = f"Coroutine form of ``{name}`` (run in ``self.executor``; None = the loop's default)."
    return call


class MooncakeDistributedStoreAsync(MooncakeDistributedStore):
    """The store with ``async_<name>`` coroutines; ``executor`` (default None: the
    event loop's default executor) can be set to a dedicated thread pool."""

    executor = None


for _name in dir(MooncakeDistributedStore):
    if _name.startswith("_") or not callable(getattr(MooncakeDistributedStore, _name)):
        continue
    setattr(MooncakeDistributedStoreAsync, f"async_{_name}", _make_async(_name))
del _name
