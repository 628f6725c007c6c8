"""Lookups that arrive together are answered by one query (the DataLoader pattern).

During a reconnect storm thousands of links ask the store the same kind of question within a
few milliseconds. :class:`BatchLoader` collects the keys asked for until the event loop next
runs its callbacks, then answers them all with one call of its ``load`` function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BatchLoader"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchLoader(Generic[K, V]):
    def __init__(
        self, load: Callable[[list[K]], Awaitable[dict[K, V]]], *, max_batch: int = 500
    ) -> None:
        self._load = load
        self.max_batch = max_batch
        self._pending: dict[K, list[asyncio.Future[V | None]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.loads = 0  # calls of ``load`` so far (for tests and metrics)

    async def get(self, key: K) -> V | None:
        """The value for *key*, or None when ``load`` did not return one."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        keys = list(pending)
        for start in range(0, len(keys), self.max_batch):
            chunk = {k: pending[k] for k in keys[start : start + self.max_batch]}
            task = asyncio.get_running_loop().create_task(self._answer(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, chunk: dict[K, list[asyncio.Future[V | None]]]) -> None:
        self.loads += 1
        try:
            values = await self._load(list(chunk))
        except Exception as exc:  # every waiter gets the failure, none hangs
            for futures in chunk.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in chunk.items():
            for future in futures:
                if not future.done():
                    future.set_result(values.get(key))
