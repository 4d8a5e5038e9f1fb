"""Outbox entries: what one holds, publishing them right after each write, and the relay that catches
what was left behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from faststream.kafka import KafkaBroker

from pharmacy_contracts import Envelope
from pharmacy_contracts.topics import topic_for

from .observability import TRACEPARENT, ServiceMetrics, current_traceparent, publishing_under, traces_publishes
from .store import OutboxEntry, Store
from .unit_of_work import Publish, UnitOfWork

log = structlog.get_logger()


def outbox_entry(event: Envelope) -> OutboxEntry:
    """Everything `publisher_for` needs to publish the event later, from whichever process."""
    topic = topic_for(event)
    entry = {
        "message_id": event.message_id,
        "topic": topic.name,
        "key": topic.key_of(event),
        "type": event.type,
        "correlation_id": event.correlation_id,
        "body": event.model_dump_json(),
    }
    # The trace of the handling that caused the event, for whoever publishes it (now or the relay).
    traceparent = current_traceparent()
    if traceparent is not None:
        entry[TRACEPARENT] = traceparent
    return entry


def publisher_for(broker: KafkaBroker) -> Publish:
    """Sends every entry without waiting for the one before, then waits for all confirmations.

    The producer keeps the order of sends per partition, so one key's events stay in order.
    An entry stored with the `traceparent` of the handling that caused it is published in that
    trace, however much later (the relay), so a trace follows a prescription across topics."""
    traced = traces_publishes(broker)

    async def publish(entries: Sequence[dict[str, Any]]) -> None:
        confirmations = []
        for entry in entries:
            headers = {
                "content-type": "application/json",
                "message-type": entry["type"],
                "message-id": entry["message_id"],
                "correlation-id": entry["correlation_id"],
            }
            traceparent = entry.get(TRACEPARENT)
            if traceparent:
                headers[TRACEPARENT] = traceparent  # replaced by a child span's when tracing is on
            with publishing_under(traceparent) if traced else contextlib.nullcontext():
                body, key = entry["body"].encode(), entry["key"].encode()
                sent = await broker.publish(body, topic=entry["topic"], key=key, headers=headers, no_confirm=True)
            confirmations.append(sent)
        await asyncio.gather(*confirmations)

    return publish


class StoreOutbox:
    """A `Store` whose writes a unit of work publishes, as the relay sees it."""

    def __init__(self, store: Store[Any], unit_of_work: UnitOfWork, *, publishes_its_writes: bool = True) -> None:
        #: False for a store people's tools write (reference data): its entries are relayed at once.
        self.publishes_its_writes = publishes_its_writes
        self._store = store
        self._unit_of_work = unit_of_work
        self.name = store.name

    async def pending_outbox(
        self, limit: int = 200, *, written_before: float | None = None
    ) -> list[tuple[str, list[dict[str, Any]]]]:
        pending = await self._store.pending_outbox(limit, written_before=written_before)
        return [(stored.id, list(stored.outbox)) for stored in pending]

    async def remove_published(self, doc_id: str, message_ids: set[str]) -> None:
        await self._store.drop_published({doc_id: message_ids})

    async def note_mark(self) -> None:
        await self._store.note_mark()

    async def retire(self) -> None:
        await self._store.retire()

    async def settled(self) -> None:
        await self._unit_of_work.settled()


class OutboxRelay:
    """One background task per service process, for events no live write published.

    Each unit of work publishes its own events straight away (`UnitOfWork.run`). What a
    crashed process wrote but never published stays in the outbox; every `poll_interval_s` the
    relay publishes entries older than `stale_after_s` (so it does not race a live write) and
    removes them. Publishing twice is possible (after a crash) and harmless: every consumer drops
    a message id it has already handled. Stores that do not publish their own writes are relayed
    at once.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        stores: Sequence[StoreOutbox],
        poll_interval_s: float,
        stale_after_s: float = 0.0,
        metrics: ServiceMetrics | None = None,
    ):
        self._publish = publisher_for(broker)
        self._metrics = metrics
        #: Per store, the most documents one pass of the current poll found waiting.
        self._found: dict[str, int] = {}
        self._stores = stores
        self._poll_interval_s = poll_interval_s
        self._stale_after_s = stale_after_s
        self._wake = asyncio.Event()
        self._stopping = False
        #: Events the last pass, at stop, published.
        self._relayed_at_stop = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> int:
        """Let every store finish its writes, publish whatever is still pending, then stop.

        Returns how many events that last pass published (0 when the relay never ran)."""
        await asyncio.gather(*(store.settled() for store in self._stores))
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return 0
        await self._task
        for store in self._stores:
            try:
                await store.retire()
            except Exception as error:  # its mark stays: another process publishes what it may have left
                log.warning("outbox mark not closed at stop", store=store.name, error=repr(error))
        return self._relayed_at_stop

    async def left_behind(self) -> int:
        """Events still in the stores' outboxes (counted in at most 200 documents per store)."""
        left = 0
        for store in self._stores:
            left += sum(len(entries) for _, entries in await store.pending_outbox())
        return left

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
            self._wake.clear()
            # Read once per pass: a stop that arrives during an ordinary pass wakes the loop again
            # for a pass of its own, which publishes everything, however fresh.
            stopping = self._stopping
            self._found = {}
            try:
                while sent := await self.drain_once(everything=stopping):
                    if stopping:
                        self._relayed_at_stop += sent
            except Exception:
                log.exception("outbox relay pass failed; will retry")
                await asyncio.sleep(self._poll_interval_s)
            finally:
                if self._metrics is not None:
                    for store, documents in self._found.items():
                        self._metrics.outbox_seen(store, documents)
            if stopping:
                return

    async def drain_once(self, *, everything: bool = False) -> int:
        """Publish one round of left-behind events from every store; returns how many were sent."""
        sent = 0
        for store in self._stores:
            await store.note_mark()
            stale = store.publishes_its_writes and not everything
            pending = await store.pending_outbox(written_before=time.time() - self._stale_after_s if stale else None)
            self._found[store.name] = max(self._found.get(store.name, 0), len(pending))
            if not pending:
                continue
            entries = [entry for _, doc_entries in pending for entry in doc_entries]
            await self._publish(entries)
            for doc_id, doc_entries in pending:
                await store.remove_published(doc_id, {e["message_id"] for e in doc_entries})
            sent += len(entries)
            if self._metrics is not None:
                self._metrics.outbox_relayed_events(store.name, len(entries))
            log.info("outbox leftovers published", store=store.name, events=len(entries))
        return sent
