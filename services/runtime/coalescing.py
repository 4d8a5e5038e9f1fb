"""Many concurrent reads of one collection answered by one round trip.

A consumer hands a whole batch of messages to its handlers at once (see `kafka.subscribe`); each
handler still reads "its" document with a plain `await store.get(id)`. The database answers single
operations at about a thousand per second and bulk operations ten to twenty times faster, so the
reads that pile up while the event loop is busy are sent together: one `$in` query for the ids,
one query for each distinct filter. Callers keep writing straightforward per-message code.

A request made while a round trip is in flight waits for the next one, so a caller always sees
what was written before it asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]]) -> None:
        self._fetch = fetch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the other handlers of this batch ask too
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                found = await self._fetch(list(batch))
            except Exception as error:
                _settle(batch, error=error)
            else:
                _settle(batch, found=found)


def _settle(
    batch: dict[K, list[asyncio.Future[V | None]]],
    *,
    found: dict[K, V] | None = None,
    error: Exception | None = None,
) -> None:
    for key, futures in batch.items():
        for future in futures:
            if future.done():  # its caller was cancelled
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result((found or {}).get(key))
