"""Watching the system drain after the load: how many prescriptions are terminal, whether every
consumer group caught up and every outbox is empty; and waiting until all of it holds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from pharmacy_contracts.lifecycle import TERMINAL, Stage
from services.runtime.outbox_marks import WRITERS_SUFFIX, unpublished
from services.runtime.settings import RuntimeSettings

from ..lag import consumer_lag
from .load import Load
from .progress import Progress
from .report import ChaosReport

STALL_S = 120.0  # settling gives up when nothing (states, lag, outboxes) changed for this long


class Settling:
    """Reads the run's database and consumer groups; `expected` prescriptions make the run."""

    def __init__(
        self, settings: RuntimeSettings, db: Any, status_collection: str, *, expected: int, progress: Progress
    ) -> None:
        self.settings = settings
        self.db = db
        self.status_collection = status_collection
        self.expected = expected
        self.progress = progress

    async def terminal_count(self) -> tuple[int, int]:
        """(terminal, with a status). Indexed finds and the collection size only: a count_documents
        with a filter is a full scan on the dev database, and would slow the system it measures."""
        collection = self.db[self.status_collection]
        seen = await collection.estimated_document_count()
        open_stages = [stage.value for stage in Stage if stage not in TERMINAL]
        unfinished = len(await collection.find({"state.stage": {"$in": open_stages}}, {"_id": 1}).to_list(None))
        return seen - unfinished, seen

    async def outbox_pending(self) -> int:
        """Documents whose outbox holds events not known published (see runtime/outbox_marks.py)."""
        pending = 0
        for name in await self.db.list_collection_names():
            if not name.endswith(WRITERS_SUFFIX):
                pending += len(await unpublished(self.db, name))
        return pending

    async def watch(self, load: Load, started: float, stop: asyncio.Event) -> None:
        """A progress line every ten seconds until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=10)
            terminal, seen = await self.terminal_count()
            self.progress(
                f"{time.monotonic() - started:5.0f}s  submitted {load.submitted}/{self.expected}  "
                f"with status {seen}  terminal {terminal}"
            )

    async def until_terminal_share(self, share: float, *, at_most_s: float) -> None:
        """Until this share of the prescriptions is terminal, or for at most `at_most_s`."""
        deadline = time.monotonic() + at_most_s
        while time.monotonic() < deadline:
            terminal, _ = await self.terminal_count()
            if terminal >= share * self.expected:
                return
            await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))

    async def settle(self, report: ChaosReport, *, timeout_s: float) -> None:
        """Until every prescription is terminal, every group has caught up and no outbox holds events
        (twice in a row, a few seconds apart). Gives up early when nothing changes any more."""
        deadline = time.monotonic() + timeout_s
        calm = 0
        last_change, last_seen = time.monotonic(), None
        while time.monotonic() < deadline:
            terminal, seen = await self.terminal_count()
            lags: dict[str, int] = {}
            pending = -1
            if terminal >= self.expected:
                lags = {f"{g.group} ← {g.topic}": g.lag for g in await consumer_lag(self.settings)}
                pending = await self.outbox_pending()
                report.final_lag, report.outbox_pending = lags, pending
                calm = calm + 1 if not any(lags.values()) and not pending else 0
                if calm >= 2:
                    report.settled = True
                    return
            now_seen = (terminal, seen, tuple(sorted(lags.items())), pending)
            if now_seen != last_seen:
                last_change, last_seen = time.monotonic(), now_seen
            elif time.monotonic() - last_change > STALL_S:
                self.progress(f"nothing moved for {STALL_S:.0f}s: giving up waiting")
                break
            await asyncio.sleep(3)
        report.final_lag = {f"{g.group} ← {g.topic}": g.lag for g in await consumer_lag(self.settings)}
        report.outbox_pending = await self.outbox_pending()
        for key, lag in report.final_lag.items():
            if lag:
                group, _, topic = key.partition(" ← ")
                report.lag_detail[key] = await partition_lag(self.settings, group, topic)


async def partition_lag(settings: RuntimeSettings, group: str, topic: str) -> str:
    """`partition: committed/end` for one group and topic, to show where a lag (or a negative one) sits."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
        committed = [await consumer.committed(p) for p in partitions]
        return ", ".join(f"{p.partition}: {done}/{ends[p]}" for p, done in zip(partitions, committed, strict=True))
    finally:
        await consumer.stop()
