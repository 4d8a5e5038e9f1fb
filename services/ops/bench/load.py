"""Prescriptions signed before the clock starts, and sent at once or on a paced schedule."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from services.cli import bus
from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings

from ..reference import Reference
from ..relay_ceiling import MAX_BATCH_BYTES
from ..simulation import county_prescriptions
from .stats import scheduled_at


@dataclass(frozen=True)
class Outgoing:
    """A prescription encoded and signed before the clock starts: sending is all that is timed."""

    prescription_id: str
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def signed_prescriptions(settings: RuntimeSettings, count: int, seed: int) -> list[Outgoing]:
    """`count` prescriptions the checks approve (no faulty share; the county's allergic patients
    who were prescribed what they are allergic to are skipped), signed as their sender."""
    reference, now = Reference.load(), datetime.now(UTC)
    drawn = county_prescriptions(10 * count + 100, seed=seed, faulty_share=0.0, patients=None)
    approvable = (message for message in drawn if reference.approvable(message, now))
    outgoing = []
    for message in itertools.islice(approvable, count):
        topic, key, value, headers = bus.encode(message, settings)
        outgoing.append(Outgoing(message.prescription.prescription_id, topic, key, value, headers))
    return outgoing


@contextlib.asynccontextmanager
async def upstream_producer(settings: RuntimeSettings) -> AsyncIterator[AIOKafkaProducer]:
    """The hospital's producer: like `bus.producer`, with 256 KiB batches instead of aiokafka's
    16 KiB, with which the producer itself would hold a burst back: the submitter must never be the limit."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks=settings.kafka_acks_value(),
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        max_batch_size=MAX_BATCH_BYTES,
        **aiokafka_kwargs(settings),
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def send(producer: AIOKafkaProducer, message: Outgoing) -> asyncio.Future[Any]:
    """Queue one message; the returned future completes when the broker confirmed it."""
    return await producer.send(message.topic, message.value, key=message.key, headers=message.headers)


async def confirmed(futures: Sequence[asyncio.Future[Any]]) -> int:
    """Wait for every confirmation; how many sends failed."""
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    return sum(1 for outcome in outcomes if isinstance(outcome, BaseException))


async def submit_burst(producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> int:
    """Everything at once through one producer (no wait per message); how many sends failed."""
    return await confirmed([await send(producer, message) for message in messages])


async def submit_paced(
    producer: AIOKafkaProducer, messages: Sequence[Outgoing], rate: float, submitted_at: dict[str, float]
) -> int:
    """One message every 1/rate s on an absolute schedule; fills `submitted_at` as it goes (the
    progress bar reads it). How many sends failed."""
    futures = []
    start = time.monotonic()
    for index, message in enumerate(messages):
        delay = scheduled_at(start, rate, index) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        submitted_at[message.prescription_id] = time.monotonic()
        futures.append(await send(producer, message))
    return await confirmed(futures)


def typical_prescription_bytes(settings: RuntimeSettings) -> int:
    return round(statistics.median(len(m.value) for m in signed_prescriptions(settings, 50, seed=1)))
