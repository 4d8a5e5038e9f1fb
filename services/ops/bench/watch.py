"""What the bench sees on the topics: when each prescription first reached each milestone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import PrescriptionAccepted
from pharmacy_contracts.prescription import PrescriptionApproved, PrescriptionRejected
from pharmacy_contracts.topics import TOPIC_OF_MESSAGE
from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings

#: The bench's reader of the topics shares the machine with what it measures: a shorter fetch wait
#: reads a record sooner, but an idle reader then costs the broker several times more CPU. 50 ms
#: adds a few ms to each latency and leaves the broker's CPU to the pipeline.
WATCH_FETCH_MAX_WAIT_MS = 50


def _type_of(message: type[Any]) -> str:
    return message.model_fields["type"].default


#: message type → (milestone, where the prescription id is). Contracts only: what each service
#: stores is its own business, and these topics are what any consumer may read.
MILESTONES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    _type_of(PrescriptionAccepted): ("accepted", lambda m: m["prescription"]["prescription_id"]),
    _type_of(PrescriptionApproved): ("approved", lambda m: m["prescription_id"]),
    _type_of(PrescriptionRejected): ("rejected", lambda m: m["prescription_id"]),
    _type_of(inv.StockReserved): ("reserved", lambda m: m["prescription_id"]),
    _type_of(inv.ReservationFailed): ("out_of_stock", lambda m: m["prescription_id"]),
    _type_of(c.DispatchOffered): ("dispatched", lambda m: m["package_id"]),
    _type_of(c.DeliveryCompleted): ("delivered", lambda m: m["prescription_id"]),
    _type_of(inv.StockRestocked): ("restocked", lambda m: f"{m['warehouse_id']}/{m['drug_code']}"),
}


WATCHED_TOPICS = sorted(
    {
        TOPIC_OF_MESSAGE[message].name
        for message in (
            PrescriptionAccepted,
            PrescriptionApproved,
            inv.StockReserved,
            c.DispatchOffered,
            c.DeliveryCompleted,
        )
    }
)


STAGES = ("accepted", "approved", "reserved", "dispatched", "delivered")  # in pipeline order
REFUSALS = ("rejected", "out_of_stock")  # the bench's prescriptions are meant never to end here
#: Who moves a prescription into each stage (the couriers are the bench's simulated ones).
STAGE_OWNERS = {
    "accepted": "consultation",
    "approved": "prescription",
    "reserved": "inventory",
    "dispatched": "courier",
    "delivered": "couriers + courier",
}


def milestone_of(raw: bytes) -> tuple[str, str] | None:
    """(milestone, prescription id) of a message on a watched topic, or None if it is no milestone."""
    try:
        message = json.loads(raw)
        milestone, id_of = MILESTONES[message["type"]]
        return milestone, id_of(message)
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class PipelineWatch:
    """When the bench first saw each prescription reach each milestone (a re-published event, as
    at-least-once delivery allows, counts once). Times are `time.monotonic()` at consumption."""

    first_seen: dict[str, dict[str, float]] = field(default_factory=lambda: {m: {} for m, _ in MILESTONES.values()})

    def observe(self, raw: bytes, seen_at: float) -> None:
        found = milestone_of(raw)
        if found is not None:
            milestone, key = found
            self.first_seen[milestone].setdefault(key, seen_at)

    def count(self, milestone: str, ids: Iterable[str]) -> int:
        seen = self.first_seen[milestone]
        return sum(1 for prescription_id in ids if prescription_id in seen)

    def counts(self, ids: Sequence[str]) -> dict[str, int]:
        """How many of `ids` reached each stage, and how many ended early (none should)."""
        return {milestone: self.count(milestone, ids) for milestone in (*STAGES, *REFUSALS)}

    async def wait_for(self, milestone: str, ids: Sequence[str], deadline: float) -> bool:
        """True once every id reached the milestone; False at the deadline."""
        while self.count(milestone, ids) < len(ids):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def follow(self, settings: RuntimeSettings) -> None:
        """Read the watched topics from their beginning until cancelled (no group: never steals)."""
        consumer = AIOKafkaConsumer(
            *WATCHED_TOPICS,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=WATCH_FETCH_MAX_WAIT_MS,
            **aiokafka_kwargs(settings),
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                seen_at = time.monotonic()
                for records in batches.values():
                    for record in records:
                        self.observe(record.value, seen_at)
        finally:
            await consumer.stop()
