"""Drive the running system as its users do: seed it, submit prescriptions, play couriers, wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import (
    Address,
    Coordinates,
    Patient,
    Prescriber,
    Prescription,
    PrescriptionItem,
    PrescriptionSubmitted,
)
from pharmacy_contracts.topics import COURIER_DISPATCH
from services.cli import bus
from services.consultation.domain import PrescriptionStatus
from services.consultation.storage import ConsultationStorage
from services.courier.domain import CourierProfile
from services.courier.storage import CourierStorage
from services.inventory.domain import Warehouse
from services.inventory.storage import InventoryStorage
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
        await self.publish(
            *(
                inv.RestockRequested(
                    correlation_id=f"seed-{w}-{d}",
                    producer="test",
                    warehouse_id=w,
                    drug_code=d,
                    quantity=q,
                    requested_by="test",
                )
                for w, d, q in stock
            )
        )

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


# A courier's plan for one attempt: "deliver", or "fail:<reason>" before pickup, or
# "fail-after-pickup:<reason>".
Plan = str


@dataclass
class CourierSimulator:
    """Plays the couriers: follows courier.dispatch.v1 and reports as each package's plan says."""

    settings: RuntimeSettings
    plans: dict[str, list[Plan]]
    offers: list[c.DispatchOffered] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with bus.producer(self.settings) as producer:
            async for _, offer, _ in bus.follow(self.settings, COURIER_DISPATCH, from_beginning=True):
                if not isinstance(offer, c.DispatchOffered) or offer.package_id not in self.plans:
                    continue
                self.offers.append(offer)
                plans = self.plans[offer.package_id]
                plan = plans[min(offer.attempt, len(plans)) - 1]
                await bus.publish_all(producer, self.reports(offer, plan))

    @staticmethod
    def reports(offer: c.DispatchOffered, plan: Plan) -> list[c.CourierReported]:
        def report(status: str, reason: str | None = None) -> c.CourierReported:
            return c.CourierReported(
                correlation_id=offer.package_id,
                producer=f"courier-{offer.courier_id}",
                dispatch_id=offer.dispatch_id,
                courier_id=offer.courier_id,
                package_id=offer.package_id,
                status=status,
                failure_reason=reason,
            )

        if plan == "deliver":
            return [report("accepted"), report("picked_up"), report("delivered")]
        if plan.startswith("fail-after-pickup:"):
            return [report("accepted"), report("picked_up"), report("failed", plan.split(":", 1)[1])]
        if plan.startswith("fail:"):
            return [report("accepted"), report("failed", plan.split(":", 1)[1])]
        raise ValueError(plan)
