"""A clean stop, for every service: SIGTERM while a handler is in flight and an outbox holds an event
no live publish sent. The service must exit 0 within 10 s, having finished the handler and committed
its offset, published both events, and left no outbox holding one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import RecordMetadata, TopicPartition

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts.consultation import PrescriptionAccepted
from pharmacy_contracts.inventory import LotPick, StockLevel, StockLine, StockReserved
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from pharmacy_contracts.topics import Topic
from services.consultation.storage import ConsultationStorage
from services.courier.storage import CourierStorage
from services.inventory.storage import InventoryStorage
from services.ops.devstack import DevStack
from services.prescription.domain import FormularyEntry
from services.prescription.storage import PrescriptionStorage
from services.runtime.mongo import connect
from services.runtime.outbox_marks import unpublished
from services.runtime.settings import RuntimeSettings
from services.runtime.store import Store
from tests.support.inprocess import TopicWatch, publish_noting
from tests.support.scenario import PATIENT_HOME, prescription_message, registered_prescriber, registration, wait_until

#: How long the in-flight handler is held: the test sees it start, then sends SIGTERM.
PAUSE_S = 3.0
DRUG = "LEV50"


@dataclass(frozen=True)
class Case:
    """One service's part: what it consumes and publishes, and how to make it publish."""

    service: str
    #: The consumer group that handles the message in flight at SIGTERM.
    group: str
    published: Topic
    #: The messages that make the service publish an event under this id: the last one causes it
    #: (and is the one in flight when SIGTERM comes); those before prepare the state it needs.
    messages: Callable[[str], list[Envelope]]
    #: The service's stores with an outbox.
    stores: Callable[[Any], list[Store[Any]]]
    #: The consumer group that handles the preparing messages.
    prepared_by: str | None = None


def accepted(rx: str) -> PrescriptionAccepted:
    submitted = prescription_message(rx, [(DRUG, 30)])
    return PrescriptionAccepted(
        correlation_id=rx, producer="consultation", sender_id=submitted.sender_id, prescription=submitted.prescription
    )


def approved_then_reserved(rx: str) -> list[Envelope]:
    """With no courier on the roster, the reservation of an approved prescription makes it wait."""
    patient = prescription_message(rx, [(DRUG, 30)]).prescription.patient
    approval = PrescriptionApproved(
        correlation_id=rx,
        producer="prescription",
        prescription_id=rx,
        patient_id=patient.patient_id,
        lines=[ApprovedLine(drug_code=DRUG, quantity=30, days_supply=30)],
        delivery=DeliveryDetails(address=patient.address, contact_phone=patient.phone),
    )
    reservation = StockReserved(
        correlation_id=rx,
        producer="inventory",
        prescription_id=rx,
        warehouse_id="WH-STOP",
        pickup_location=patient.address.coordinates,
        lines=[StockLine(drug_code=DRUG, quantity=30)],
        picks=[LotPick(drug_code=DRUG, lot_id="LOT-1", expiry_date=date(2099, 1, 1), quantity=30)],
        levels=[StockLevel(drug_code=DRUG, available=70, reserved=30, dispatched=0)],
    )
    return [approval, reservation]


CASES = [
    Case(
        "consultation",
        "consultation.intake",
        topics.CONSULTATION_INTAKE,
        lambda rx: [prescription_message(rx, [(DRUG, 30)])],
        lambda database: ConsultationStorage(database).with_outbox,
    ),
    Case(
        "prescription",
        "prescription.check",
        topics.PRESCRIPTION_DECISIONS,
        lambda rx: [accepted(rx)],
        lambda database: PrescriptionStorage(database).with_outbox,
    ),
    Case(
        "inventory",
        "inventory.commands",
        topics.INVENTORY_EVENTS,
        lambda rx: [registration(f"WH-{rx}", PATIENT_HOME)],
        lambda database: InventoryStorage(database).with_outbox,
    ),
    Case(
        "courier",
        "courier.stock",
        topics.COURIER_DELIVERIES,
        approved_then_reserved,
        lambda database: CourierStorage(database).with_outbox,
        prepared_by="courier.decisions",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.service)
async def test_sigterm_stops_a_service_cleanly_within_ten_seconds(
    stack: DevStack, settings: RuntimeSettings, case: Case
) -> None:
    suffix = uuid.uuid4().hex[:6].upper()
    left_over = case.messages(f"RX-LEFT-{suffix}")  # its event stays in the outbox: its publish fails
    in_flight = case.messages(f"RX-FLIGHT-{suffix}")  # its last message is handled when SIGTERM comes
    left_over_id, in_flight_id = left_over[-1].correlation_id, in_flight[-1].correlation_id
    client = connect(settings.mongo_url.get_secret_value())
    database = client[settings.mongo_database]
    stores = case.stores(database)
    await seed_formulary(database)
    log_path = stack.logs / f"{case.service}-1.log"
    try:
        stack.start_services(
            case.service,
            env={
                "PHARMACY_FAULT_FAIL_AT": f"publish-after-write:{left_over_id}",
                "PHARMACY_FAULT_PAUSE_AT": f"before-handling:{in_flight[-1].message_id}",
                "PHARMACY_FAULT_PAUSE_S": str(PAUSE_S),
                # Only the flush at the stop may publish what the failed publish left behind.
                "PHARMACY_OUTBOX_STALE_AFTER_S": "600",
            },
        )
        pid = stack.pid_of(f"{case.service}-1")
        assert pid is not None
        await prepare(settings, case, left_over[:-1])
        await publish_noting(settings, left_over[-1])
        await wait_until(lambda: holds_event_of(stores, left_over_id), "the outbox to hold the event", timeout=30)
        await prepare(settings, case, in_flight[:-1])
        (landed,) = await publish_noting(settings, in_flight[-1])
        await wait_until(
            lambda: logged(log_path, "fault injected: pausing before handling"), "the pause", interval=0.05
        )

        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        _, status = await asyncio.wait_for(asyncio.to_thread(os.waitpid, pid, 0), timeout=20)
        elapsed = time.monotonic() - started
    finally:
        stack.stop(f"{case.service}-1")  # killed if it did not stop by itself

    try:
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        assert os.waitstatus_to_exitcode(status) == 0, lines[-20:]
        assert elapsed < 10, f"took {elapsed:.1f}s"
        events = [line["event"] for line in lines]
        stopping = lines[events.index("service stopping")]
        stopped = lines[events.index("service stopped consuming and flushed its outbox")]
        assert stopping["handlers_in_flight"] >= 1, "SIGTERM came while the handler was in flight"
        assert "fault injected: pause over" in events, "the handler in flight was abandoned"
        assert (
            events.index("service stopping")
            < events.index("fault injected: pause over")
            < events.index("service stopped consuming and flushed its outbox")
        ), "the handler finished during the stop, before the flush"
        assert stopped["handlers_in_flight"] == 0, "the flush came after every handler finished"
        assert stopped["relayed_at_stop"] >= 1, "the event whose publish failed went out at the stop"
        assert stopped["outbox_left"] == 0

        holding = {store.name: len(await unpublished(database, store.name)) for store in stores}
        assert set(holding.values()) == {0}, f"outboxes still holding events: {holding}"
        assert await committed_past(settings, case.group, landed), "the message in flight was committed"
        async with TopicWatch(settings.kafka_bootstrap_servers, case.published.name) as watch:
            await watch.wait_for(
                lambda w: {left_over_id, in_flight_id} <= {m.correlation_id for m in w.messages()},
                "the events of both messages",
            )
    finally:
        client.close()


async def seed_formulary(database: Any) -> None:
    """What the prescription service checks a prescription against (the others ignore it)."""
    storage = PrescriptionStorage(database)
    await storage.save_formulary_entry(
        FormularyEntry(drug_code=DRUG, name="Levothyroxine", max_quantity=90, max_days_supply=90)
    )
    await storage.save_prescriber(registered_prescriber())


async def prepare(settings: RuntimeSettings, case: Case, messages: list[Envelope]) -> None:
    """Publish the preparing messages and wait until their consumer committed past them: another
    consumer than the one of the message that needs their effect reads them."""
    for landed in await publish_noting(settings, *messages):
        assert case.prepared_by is not None
        await wait_until(partial(committed_past, settings, case.prepared_by, landed), "the preparing message")


async def holds_event_of(stores: list[Any], correlation_id: str) -> bool:
    for store in stores:
        for pending in await store.pending_outbox():
            if any(entry["correlation_id"] == correlation_id for entry in pending.outbox):
                return True
    return False


async def logged(path: Path, event: str) -> bool:
    return await asyncio.to_thread(lambda: path.exists() and f'"{event}"' in path.read_text(errors="replace"))


async def committed_past(settings: RuntimeSettings, group: str, landed: RecordMetadata) -> bool:
    """Whether the group committed past the record, read by a consumer that never joins the group."""
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.group(group))
    await reader.start()
    try:
        return ((await reader.committed(TopicPartition(landed.topic, landed.partition))) or 0) > landed.offset
    finally:
        await reader.stop()
