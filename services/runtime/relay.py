"""The outbox relay: publishes the events stored with each state change, then removes them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import structlog
from faststream.kafka import KafkaBroker

from .documents import DocumentStore

log = structlog.get_logger()


class OutboxRelay:
    """One background task per service process.

    It wakes when a handler stored events (`notify`) or every `poll_interval_s` (to pick up what a
    crashed process left behind), publishes each pending event and waits for the broker to
    confirm it, then removes exactly the confirmed events. Events of one document are sent in
    order, so one key's events stay in order. Publishing twice is possible (after a crash) and
    harmless: every consumer drops a message id it has already handled.
    """

    def __init__(self, broker: KafkaBroker, stores: Sequence[DocumentStore[Any]], poll_interval_s: float):
        self._broker = broker
        self._stores = stores
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Flush what is pending, then stop."""
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
                while await self.drain_once():
                    pass
            except Exception:
                log.exception("outbox relay pass failed; will retry")
                await asyncio.sleep(self._poll_interval_s)
            if self._stopping:
                return

    async def drain_once(self) -> int:
        """Publish one round of pending events from every store; returns how many were sent."""
        sent = 0
        for store in self._stores:
            pending = await store.pending_outbox()
            if not pending:
                continue
            confirmations = []
            for doc_id, entries in pending:
                for entry in entries:
                    confirmations.append(
                        (
                            doc_id,
                            entry["message_id"],
                            await self._broker.publish(
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
                            ),
                        )
                    )
            confirmed: dict[str, set[str]] = {}
            for doc_id, message_id, future in confirmations:
                await future
                confirmed.setdefault(doc_id, set()).add(message_id)
            for doc_id, message_ids in confirmed.items():
                await store.remove_published(doc_id, message_ids)
            sent += len(confirmations)
            log.debug("outbox published", store=store.name, events=len(confirmations))
        return sent
