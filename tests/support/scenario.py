"""Drive the running system as its users do: seed it, submit prescriptions, play couriers, wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer

from pharmacy_contracts import courier as c
from pharmacy_contracts.consultation import (
    Address,
    Coordinates,
    Patient,
    Prescriber,
    Prescription,
    PrescriptionItem,
    PrescriptionSubmitted,
)
from services.cli import bus
from services.consultation.domain import PrescriptionStatus
from services.consultation.storage import ConsultationStorage
from services.courier.domain import CourierProfile
from services.courier.storage import CourierStorage
from services.inventory.domain import Warehouse
from services.inventory.storage import InventoryStorage
from services.ops.simulation import CourierSimulator, Plan, restocks
from services.prescription.domain import FormularyEntry
from services.prescription.storage import PrescriptionStorage
from services.runtime.documents import connect
from services.runtime.settings import RuntimeSettings


def prescription_message(
    prescription_id: str,
    items: Iterable[tuple[str, int]],
    *,
    days_supply: int = 30,
    sender_id: str = "hospital-test",
    valid_for: timedelta = timedelta(days=30),
) -> PrescriptionSubmitted:
    now = datetime.now(UTC)
    prescription = Prescription(
        prescription_id=prescription_id,
        consultation_id=f"CONS-{prescription_id}",
        patient=Patient(
            patient_id=f"PAT-{prescription_id}",
            name="Test Patient",
            phone="+7 700 000 0000",
            date_of_birth="1960-01-01",
            allergies=[],
            address=Address(line="Farm 1", town="Northford", coordinates=Coordinates(latitude=51.8, longitude=69.4)),
        ),
        prescriber=Prescriber(prescriber_id="DR-T", name="Dr Test", licence_number="LIC-T"),
        diagnosis_codes=["E11.9"],
        items=[
            PrescriptionItem(drug_code=d, quantity=q, dosage_text="as directed", days_supply=days_supply)
            for d, q in items
        ],
        issued_at=now - timedelta(hours=1),
        valid_until=now + valid_for,
    )
    return PrescriptionSubmitted(
        correlation_id=prescription_id, producer=sender_id, sender_id=sender_id, prescription=prescription
    )


class System:
    """The running system seen from outside, plus read access to each service's own storage."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self._client = connect(settings.mongo_url.get_secret_value())
        db = self._client[settings.mongo_database]
        self.consultation = ConsultationStorage(db)
        self.prescription = PrescriptionStorage(db)
        self.inventory = InventoryStorage(db)
        self.courier = CourierStorage(db)

    def close(self) -> None:
        self._client.close()

    async def publish(self, *messages: Any) -> None:
        await bus.publish(self.settings, *messages)

    async def seed(
        self,
        formulary: Iterable[FormularyEntry],
        couriers: Iterable[CourierProfile],
        stock: Iterable[tuple[str, str, int]],
    ) -> None:
        for entry in formulary:
            await self.prescription.save_formulary_entry(entry)
        for profile in couriers:
            await self.courier.save_courier(profile)
        stock = list(stock)
        await self.publish(*restocks(stock, requested_by="test"))

        async def stocked() -> bool:
            levels = {
                (w.warehouse_id, d): s.received
                for w in await self.inventory.all_warehouses()
                for d, s in w.stock.items()
            }
            return all(levels.get((w, d), 0) >= q for w, d, q in stock)

        await wait_until(stocked, "seeded stock to arrive", timeout=60)

    async def status(self, prescription_id: str) -> PrescriptionStatus | None:
        return await self.consultation.status.get(prescription_id)

    async def wait_terminal(
        self, prescription_ids: Iterable[str], timeout: float = 120
    ) -> dict[str, PrescriptionStatus]:
        ids = list(prescription_ids)
        found: dict[str, PrescriptionStatus] = {}

        async def all_terminal() -> bool:
            for rx in ids:
                if rx not in found:
                    status = await self.status(rx)
                    if status is not None and status.terminal:
                        found[rx] = status
            return len(found) == len(ids)

        await wait_until(all_terminal, lambda: f"terminal states for {sorted(set(ids) - set(found))}", timeout)
        return found

    async def warehouses(self) -> dict[str, Warehouse]:
        return {w.warehouse_id: w for w in await self.inventory.all_warehouses()}


async def wait_until(check: Any, what: Any, timeout: float = 60, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")


async def read_topic(settings: RuntimeSettings, topic: str, idle_s: float = 2.0) -> list[Any]:
    """Every record of a topic, from the beginning, until nothing new arrives for `idle_s`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    records = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                return records
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()


def scripted_couriers(settings: RuntimeSettings, plans: dict[str, list[Plan]]) -> CourierSimulator:
    """Couriers that follow each package's plan, attempt by attempt, and ignore other packages."""

    def plan_for(offer: c.DispatchOffered) -> Plan | None:
        steps = plans.get(offer.package_id)
        return None if steps is None else steps[min(offer.attempt, len(steps)) - 1]

    return CourierSimulator(settings, plan_for)
