"""Drive the running system as its users do: seed it, submit prescriptions, play couriers, wait."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as pr
from pharmacy_contracts.consultation import (
    Address,
    CancellationRequested,
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
from services.ops.reference import wait_until_listed
from services.ops.simulation import CourierSimulator, Plan
from services.prescription.domain import FormularyEntry, Interaction, PrescriberRecord
from services.prescription.storage import PrescriptionStorage
from services.runtime.mongo import connect
from services.runtime.settings import RuntimeSettings

#: Where the test patients live unless a test says otherwise (Northford).
PATIENT_HOME = (51.8, 69.4)
#: The licence every test prescription is signed under; `System.seed` registers it.
TEST_LICENCE = "LIC-T"


def registered_prescriber() -> PrescriberRecord:
    """The registered, licensed prescriber of every test prescription."""
    return PrescriberRecord(
        licence_number=TEST_LICENCE, prescriber_id="DR-T", name="Dr Test", licensed_until=date(2099, 12, 31)
    )


def prescription_message(
    prescription_id: str,
    items: Iterable[tuple[str, int]],
    *,
    days_supply: int = 30,
    sender_id: str = "hospital-test",
    valid_for: timedelta = timedelta(days=30),
    patient_id: str | None = None,
    allergies: Iterable[str] = (),
    home: tuple[float, float] = PATIENT_HOME,
    licence_number: str = TEST_LICENCE,
) -> PrescriptionSubmitted:
    now = datetime.now(UTC)
    prescription = Prescription(
        prescription_id=prescription_id,
        consultation_id=f"CONS-{prescription_id}",
        patient=Patient(
            patient_id=patient_id or f"PAT-{prescription_id}",
            name="Test Patient",
            phone="+7 700 000 0000",
            date_of_birth="1960-01-01",
            allergies=list(allergies),
            address=Address(
                line="Farm 1", town="Northford", coordinates=Coordinates(latitude=home[0], longitude=home[1])
            ),
        ),
        prescriber=Prescriber(prescriber_id="DR-T", name="Dr Test", licence_number=licence_number),
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
        self._registered: set[str] = set()
        self._client = connect(settings.mongo_url.get_secret_value())
        db = self._client[settings.mongo_database]
        self.database = db
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
        stock: Iterable[tuple[str, str, int] | tuple[str, str, int, str, date]],
        *,
        locations: Mapping[str, tuple[float, float]] | None = None,
        interactions: Iterable[Interaction] = (),
    ) -> None:
        """Formulary, couriers and stock, as pharmacists, dispatchers and warehouse staff enter them.

        Stock rows are (warehouse, drug, units) or (warehouse, drug, units, lot, expiry). Every
        warehouse is registered first, at `locations[warehouse]` or next to the test patients."""
        await self.prescription.save_prescriber(registered_prescriber())
        formulary = list(formulary)
        for entry in formulary:
            await self.prescription.save_formulary_entry(entry)
        for interaction in interactions:
            await self.prescription.save_interaction(interaction)
        for profile in couriers:
            await self.courier.save_courier(profile)
        rows = [_lot_row(row) for row in stock]
        # Inventory stocks only what the formulary lists: the prescription service announces it.
        await wait_until_listed(self.database, [entry.drug_code for entry in formulary])
        stocked_drugs = {row[1] for row in rows}
        unlisted = stocked_drugs - await self.inventory.listed(stocked_drugs)
        if unlisted:
            raise ValueError(f"seed stock of drugs no formulary lists (pass them as formulary): {sorted(unlisted)}")
        locations = dict(locations or {})
        warehouses = dict.fromkeys(row[0] for row in rows)
        await self.publish(
            *(
                registration(warehouse, locations.get(warehouse, PATIENT_HOME))
                for warehouse in warehouses
                if warehouse not in self._registered
            )
        )
        self._registered.update(warehouses)
        await self.publish(
            *(
                inv.RestockRequested(
                    correlation_id=f"seed-{warehouse}-{lot}",
                    producer="test",
                    warehouse_id=warehouse,
                    drug_code=drug,
                    lot_id=lot,
                    expiry_date=expiry,
                    quantity=units,
                    requested_by="test",
                )
                for warehouse, drug, units, lot, expiry in rows
            )
        )

        async def stocked() -> bool:
            found = {w.warehouse_id: w for w in await self.inventory.all_warehouses()}
            return all(
                warehouse in found and lot in found[warehouse].lots and found[warehouse].lots[lot].received >= units
                for warehouse, _, units, lot, _ in rows
            )

        await wait_until(stocked, "seeded stock to arrive", timeout=60)

    async def review(self, prescription_id: str, decision: str, note: str = "checked with the patient") -> None:
        await self.publish(
            pr.ReviewDecided(
                correlation_id=prescription_id,
                producer="pharmacist-test",
                prescription_id=prescription_id,
                decision=decision,
                pharmacist_id="PH-TEST",
                note=note,
            )
        )

    async def cancel(self, prescription_id: str, sender_id: str = "hospital-test") -> None:
        await self.publish(
            CancellationRequested(
                correlation_id=prescription_id,
                producer=sender_id,
                sender_id=sender_id,
                prescription_id=prescription_id,
                reason="the doctor changed the therapy",
                requested_by="Dr Test",
            )
        )

    async def wait_stage(self, prescription_id: str, stage: str, timeout: float = 60) -> PrescriptionStatus:
        seen: list[PrescriptionStatus | None] = [None]

        async def reached() -> bool:
            seen[0] = await self.status(prescription_id)
            return seen[0] is not None and seen[0].stage.value == stage

        await wait_until(reached, lambda: f"{prescription_id} to reach {stage} (now {seen[0]})", timeout)
        assert seen[0] is not None
        return seen[0]

    async def status(self, prescription_id: str) -> PrescriptionStatus | None:
        return await self.consultation.status_of(prescription_id)

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


def registration(warehouse_id: str, location: tuple[float, float]) -> inv.WarehouseRegistrationRequested:
    return inv.WarehouseRegistrationRequested(
        correlation_id=f"register-{warehouse_id}",
        producer="test",
        warehouse_id=warehouse_id,
        name=f"Test warehouse {warehouse_id}",
        kind="township",
        location=Coordinates(latitude=location[0], longitude=location[1]),
        requested_by="test",
    )


def _lot_row(row: tuple[str, str, int] | tuple[str, str, int, str, date]) -> tuple[str, str, int, str, date]:
    if len(row) == 5:
        return row  # type: ignore[return-value]
    warehouse, drug, units = row[:3]
    return warehouse, drug, units, f"LOT-{warehouse}-{drug}", date.today() + timedelta(days=730)


async def topic_events(settings: RuntimeSettings, topic: str, prescription_id: str) -> list[dict[str, Any]]:
    """The readable messages of a topic about one prescription, in order, each once."""
    found: dict[str, dict[str, Any]] = {}
    for record in await read_topic(settings, topic, idle_s=0.5):
        try:
            body = json.loads(record.value)
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("correlation_id") == prescription_id:
            found.setdefault(body["message_id"], body)
    return list(found.values())


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


# --- what a test's world is made of -------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6].upper()}"


def drug(code: str, *classes: str, **flags: object) -> FormularyEntry:
    return FormularyEntry.model_validate(
        {
            "drug_code": code,
            "name": f"Drug {code}",
            "max_quantity": 500,
            "max_days_supply": 90,
            "ingredient_classes": list(classes),
            **flags,
        }
    )


def courier(name: str, at: tuple[float, float] = PATIENT_HOME, **extra: object) -> CourierProfile:
    return CourierProfile.model_validate(
        {
            "courier_id": unique(f"C-{name}"),
            "name": name,
            "zone": name.lower(),
            "location": {"latitude": at[0], "longitude": at[1]},
            **extra,
        }
    )


async def stocked_drugs(system: System, *entries: FormularyEntry, units: int = 100, **seed: object) -> str:
    """The drugs in the formulary and in a warehouse of their own next to the patients; its id."""
    warehouse = unique("WH")
    await system.seed(
        formulary=entries,
        couriers=[courier("Amina")],
        stock=[(warehouse, e.drug_code, units) for e in entries],
        **seed,  # type: ignore[arg-type]
    )
    return warehouse
