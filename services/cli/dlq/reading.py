"""Reading dead letters from the broker: every letter of some dead-letter topics, or the one at a
position. Reading never joins a consumer group and never commits, so looking changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterable
from uuid import uuid4

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings

from .letters import DeadLetter, all_dead_letter_topics, dead_letter_topic

IDLE_S = 1.0
#: How long `show` looks for a letter past the end offset the broker reported.
BEYOND_END_PATIENCE_S = 1.5


def _reader(settings: RuntimeSettings) -> AIOKafkaConsumer:
    """No group, no commits: a tool that looks never disturbs the services' consumer groups."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        client_id=f"pharmacy-dlq-{uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **aiokafka_kwargs(settings),
    )


def _letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value if record.value is not None else b"",
        headers=tuple((k, v if v is not None else b"") for k, v in record.headers or ()),
    )


async def _partitions(consumer: AIOKafkaConsumer, names: Iterable[str]) -> list[TopicPartition]:
    """The partitions of those topics that exist (a missing dead-letter topic simply has no letters)."""
    existing = await consumer.topics()  # also refreshes the cluster metadata
    return [
        TopicPartition(name, p)
        for name in names
        if name in existing
        for p in sorted(consumer.partitions_for_topic(name) or ())
    ]


async def read_dead_letters(
    settings: RuntimeSettings, topics: Iterable[str] | None = None, *, idle_s: float = IDLE_S
) -> list[DeadLetter]:
    """Every dead letter on `topics` (dead-letter or original topic names; all if None), oldest first
    per partition: from the beginning up to the end offsets seen at the start. If nothing arrives
    for `idle_s` before those are reached, raises TimeoutError rather than return a partial list
    (which `replay --all` would act on)."""
    names = (
        list(dict.fromkeys(dead_letter_topic(t) for t in topics)) if topics is not None else all_dead_letter_topics()
    )
    consumer = _reader(settings)
    try:
        await consumer.start()
        partitions = await _partitions(consumer, names)
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends.get(tp, 0) > 0}
        letters: list[DeadLetter] = []
        quiet_since = time.monotonic()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=200)
            for batch in batches.values():
                letters.extend(_letter(record) for record in batch)
            if any(batches.values()):
                quiet_since = time.monotonic()
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
                    quiet_since = time.monotonic()
            if remaining and time.monotonic() - quiet_since > idle_s:
                behind = ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(remaining))
                raise TimeoutError(f"nothing arrived for {idle_s:g} s before the end of {behind}; try again")
        return sorted(letters, key=lambda letter: (names.index(letter.topic), letter.partition, letter.offset))
    finally:
        await consumer.stop()


async def read_dead_letter(
    settings: RuntimeSettings, topic: str, partition: int, offset: int, *, timeout_s: float = 10.0
) -> DeadLetter | None:
    """The dead letter at one position, or None if there is none there (never was, or deleted)."""
    tp = TopicPartition(dead_letter_topic(topic), partition)
    consumer = _reader(settings)
    try:
        await consumer.start()
        if tp not in await _partitions(consumer, [tp.topic]):
            return None
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if offset < first:
            return None
        consumer.seek(tp, offset)
        # Past the reported end, look briefly anyway: the dev broker under-reports the end offset
        # after a multi-record batch, so "beyond the end" may still be there.
        beyond_end = offset >= end
        deadline = time.monotonic() + (BEYOND_END_PATIENCE_S if beyond_end else timeout_s)
        while time.monotonic() < deadline:
            for record in (await consumer.getmany(tp, timeout_ms=200)).get(tp, []):
                if record.offset == offset:
                    return _letter(record)
                if record.offset > offset:  # a gap: the record is gone (compaction, transaction marker)
                    return None
        if beyond_end:
            return None
        raise TimeoutError(f"{tp.topic}:{partition}:{offset} did not arrive within {timeout_s:g} s; try again")
    finally:
        await consumer.stop()
