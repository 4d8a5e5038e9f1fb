"""Reading what happened once the run settled: the topics from their beginning, each service's own
records, and the service logs. Only reads; the checks judge what is read here."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from services.consultation.domain import PrescriptionStatus
from services.consultation.storage import ConsultationStorage
from services.courier.domain import Delivery
from services.courier.storage import CourierStorage
from services.inventory.domain import Allocation, LedgerEntry, Warehouse
from services.inventory.storage import InventoryStorage
from services.prescription.domain import Verdict
from services.prescription.storage import PrescriptionStorage
from services.runtime.settings import RuntimeSettings

from .load import Couriers, Load

_DAWN = datetime.min.replace(tzinfo=UTC)


async def read_topic(settings: RuntimeSettings, name: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of a topic from the beginning up to its current end: (key, value)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata of every topic
        partitions = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[tuple[bytes | None, bytes]] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        await consumer.stop()


@dataclass
class TopicLog:
    """A topic's messages, each once (by message id), and how many were published again."""

    messages: list[Envelope]
    republished: int
    unreadable: int


async def read_messages(settings: RuntimeSettings, topic: topics.Topic) -> TopicLog:
    seen: set[str] = set()
    messages, republished, unreadable = [], 0, 0
    for _, value in await read_topic(settings, topic.name):
        try:
            message = topic.parse(value)
        except ValidationError:
            unreadable += 1
            continue
        if message.message_id in seen:
            republished += 1
            continue
        seen.add(message.message_id)
        messages.append(message)
    return TopicLog(messages, republished, unreadable)


def log_warnings(logs: Path, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per process: warning and error lines of its log, counted by event."""
    found: dict[str, dict[str, int]] = {}
    for name in names:
        path = logs / f"{name}.log"
        counts: Counter[str] = Counter()
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    if "Traceback" in line or "Error" in line:
                        counts["(not json) " + line[:80]] += 1
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                    counts[f"{entry.get('level')}: {entry.get('event')}"] += 1
        found[name] = dict(counts.most_common(8))
    return found


@dataclass
class Evidence:
    """Everything the checks look at, read once after the run: each service's records, the
    messages on the topics, and what the load asked for."""

    ids: list[str]
    statuses: dict[str, PrescriptionStatus]
    allocations: dict[str, Allocation]
    deliveries: dict[str, Delivery]
    verdicts: dict[str, Verdict]
    warehouses: list[Warehouse]
    logs: dict[str, TopicLog]
    dead_letters: dict[str, int]
    ledger: list[LedgerEntry]
    load: Load
    couriers: Couriers

    @property
    def inventory_events(self) -> list[Envelope]:
        return self.logs[topics.INVENTORY_EVENTS.name].messages

    @property
    def offers(self) -> list[Envelope]:
        return self.logs[topics.COURIER_DISPATCH.name].messages

    @property
    def delivery_events(self) -> list[Envelope]:
        return self.logs[topics.COURIER_DELIVERIES.name].messages

    @property
    def travelled(self) -> set[str]:
        """The prescriptions whose goods, as last packed, were picked up at least once: a package
        found damaged and packed again is goods from the shelf that have not left yet."""
        repacked: dict[str, datetime] = {}
        for event in self.inventory_events:
            if isinstance(event, inv.StockRepacked):
                repacked[event.prescription_id] = max(event.occurred_at, repacked.get(event.prescription_id, _DAWN))
        return {
            e.prescription_id
            for e in self.delivery_events
            if isinstance(e, c.DeliveryPickedUp) and e.occurred_at > repacked.get(e.prescription_id, _DAWN)
        }


@dataclass
class Records:
    """Each service's storage on the run's database."""

    consultation: ConsultationStorage
    prescription: PrescriptionStorage
    inventory: InventoryStorage
    courier: CourierStorage


async def gather(
    settings: RuntimeSettings, records: Records, ids: list[str], load: Load, couriers: Couriers
) -> Evidence:
    statuses = {s.prescription_id: s for s in await records.consultation.statuses()}
    allocations = {a.prescription_id: a for a in await records.inventory.allocations.find()}
    deliveries = {d.prescription_id: d for d in await records.courier.all_deliveries()}
    verdicts = {v.prescription_id: v for v in await records.prescription.all_verdicts()}
    warehouses = await records.inventory.all_warehouses()
    logs = {
        t.name: await read_messages(settings, t)
        for t in (topics.INVENTORY_EVENTS, topics.COURIER_DISPATCH, topics.COURIER_DELIVERIES)
    }
    dead_letters: dict[str, int] = {}
    for topic in topics.ALL_TOPICS:
        if dead := len(await read_topic(settings, topic.dead_letter_topic)):
            dead_letters[topic.dead_letter_topic] = dead
    ledger = await records.inventory.movements()
    return Evidence(
        ids=ids,
        statuses=statuses,
        allocations=allocations,
        deliveries=deliveries,
        verdicts=verdicts,
        warehouses=warehouses,
        logs=logs,
        dead_letters=dead_letters,
        ledger=ledger,
        load=load,
        couriers=couriers,
    )
