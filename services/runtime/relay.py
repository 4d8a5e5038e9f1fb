"""Publishing outbox entries: right after each write, and the relay that catches what was left behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from faststream.kafka import KafkaBroker

from .documents import DocumentStore, Publish

log = structlog.get_logger()


def publisher_for(broker: KafkaBroker) -> Publish:
    """Sends every entry without waiting for the one before, then waits for all confirmations.

    The producer keeps the order of sends per partition, so one key's events stay in order."""

    async def publish(entries: Sequence[dict[str, Any]]) -> None:
        confirmations = [
            await broker.publish(
                entry["body"].encode(),
                topic=entry["topic"],
                key=entry["key"].encode(),
                headers={
                    "content-type": "application/json",
                    "message-type": entry["type"],
                    "message-id": entry["message_id"],
                    "correlation-id": entry["correlation_id"],
                },
                no_confirm=True,
            )
            for entry in entries
        ]
        await asyncio.gather(*confirmations)

    return publish


class OutboxRelay:
    """One background task per service process, for events no live write published.

    Each write publishes its own events straight away (`DocumentStore.publish_with`). What a
    crashed process wrote but never published stays in the outbox; every `poll_interval_s` the
    relay publishes entries older than `stale_after_s` (so it does not race a live write) and
    removes them. Publishing twice is possible (after a crash) and harmless: every consumer drops
    a message id it has already handled. Stores that do not publish their own writes are relayed
    at once.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        stores: Sequence[DocumentStore[Any]],
        poll_interval_s: float,
        stale_after_s: float = 0.0,
    ):
        self._publish = publisher_for(broker)
        self._stores = stores
        self._poll_interval_s = poll_interval_s
        self._stale_after_s = stale_after_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Let every store finish its writes, publish whatever is still pending, then stop."""
        await asyncio.gather(*(store.settled() for store in self._stores))
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
            self._wake.clear()
            try:
                while await self.drain_once(everything=self._stopping):
                    pass
            except Exception:
                log.exception("outbox relay pass failed; will retry")
                await asyncio.sleep(self._poll_interval_s)
            if self._stopping:
                return

    async def drain_once(self, *, everything: bool = False) -> int:
        """Publish one round of left-behind events from every store; returns how many were sent."""
        sent = 0
        for store in self._stores:
            stale = store.publishes_its_writes and not everything
            pending = await store.pending_outbox(written_before=time.time() - self._stale_after_s if stale else None)
            if not pending:
                continue
            entries = [entry for _, doc_entries in pending for entry in doc_entries]
            await self._publish(entries)
            for doc_id, doc_entries in pending:
                await store.remove_published(doc_id, {e["message_id"] for e in doc_entries})
            sent += len(entries)
            log.info("outbox leftovers published", store=store.name, events=len(entries))
        return sent
