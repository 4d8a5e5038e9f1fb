"""Simulated users for the demo and the tests: an internet hospital in a rural county, and couriers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

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
from services.runtime.settings import RuntimeSettings

# A plan for one delivery attempt: "deliver", "fail:<reason>" (before pickup) or
# "fail-after-pickup:<reason>" (the goods travel and come back).
Plan = str


@dataclass
class CourierSimulator:
    """Plays every courier: follows courier.dispatch.v1 and reports accepted, picked up, then
    delivered or failed, as `plan_for` decides for each offer."""

    settings: RuntimeSettings
    plan_for: Callable[[c.DispatchOffered], Plan | None]
    delay_s: Callable[[], float] = lambda: 0.0
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
            trips: set[asyncio.Task[None]] = set()
            async for _, offer, _ in bus.follow(self.settings, COURIER_DISPATCH, from_beginning=True):
                if not isinstance(offer, c.DispatchOffered):
                    continue
                plan = self.plan_for(offer)
                if plan is None:
                    continue
                self.offers.append(offer)
                trip = asyncio.create_task(self._drive(producer, offer, plan))
                trips.add(trip)
                trip.add_done_callback(trips.discard)

    async def _drive(self, producer: object, offer: c.DispatchOffered, plan: Plan) -> None:
        for report in reports_for(offer, plan):
            if delay := self.delay_s():
                await asyncio.sleep(delay)
            await bus.publish_all(producer, [report])  # type: ignore[arg-type]


def reports_for(offer: c.DispatchOffered, plan: Plan) -> list[c.CourierReported]:
    def report(status: str, reason: str | None = None) -> c.CourierReported:
        return c.CourierReported(
            correlation_id=offer.package_id,
            producer=f"courier-app-{offer.courier_id}",
            dispatch_id=offer.dispatch_id,
            courier_id=offer.courier_id,
            package_id=offer.package_id,
            status=status,
            failure_reason=reason,
        )

    if plan == "deliver":
        return [report("accepted"), report("picked_up"), report("delivered")]
    kind, _, reason = plan.partition(":")
    if kind == "fail-after-pickup":
        return [report("accepted"), report("picked_up"), report("failed", reason)]
    if kind == "fail":
        return [report("accepted"), report("failed", reason)]
    raise ValueError(f"unknown plan {plan!r}")


def restocks(
    stock: Iterable[tuple[str, str, int]], *, requested_by: str, round_name: str = "opening"
) -> list[inv.RestockRequested]:
    """Stock as warehouse staff would enter it: one restock command per warehouse and drug."""
    return [
        inv.RestockRequested(
            correlation_id=f"{round_name}-{warehouse}-{drug}",
            producer="simulation",
            warehouse_id=warehouse,
            drug_code=drug,
            quantity=quantity,
            requested_by=requested_by,
        )
        for warehouse, drug, quantity in stock
    ]


# --- the county ----------------------------------------------------------------------------------

TOWNS = [
    ("Northford", 51.81, 69.40),
    ("Riverton", 51.32, 70.95),
    ("Steppe Wells", 50.88, 68.72),
    ("Kara-Bulak", 52.20, 71.38),
    ("Ozernoye", 51.05, 72.10),
    ("Lone Poplar", 50.61, 70.02),
    ("Highpass", 52.47, 69.15),
]
GIVEN = ["Aigerim", "Bolat", "Dana", "Ermek", "Farida", "Gulnara", "Kairat", "Lyudmila", "Marat", "Nurlan", "Olga"]
FAMILY = ["Abenov", "Baimukhanova", "Chernova", "Dzhaksybekov", "Esimova", "Ivanov", "Kassymova", "Ospanov"]
# (diagnosis codes, items) for the chronic conditions a rural internet hospital sees every month
REGIMENS = [
    (["E11.9"], [("MET500", 180, "1 tablet twice daily with meals", 90)]),
    (["I10"], [("AML5", 90, "1 tablet once daily", 90), ("LIS10", 90, "1 tablet once daily", 90)]),
    (["E11.9", "I10"], [("MET500", 180, "1 tablet twice daily", 90), ("AML5", 90, "1 tablet once daily", 90)]),
    (["E78.5"], [("ATV20", 90, "1 tablet at night", 90)]),
    (["E03.9"], [("LEV50", 90, "1 tablet before breakfast", 90)]),
    (["J45.9"], [("SALB100", 2, "2 puffs when needed", 60)]),
    (["E10.9"], [("INSGL", 5, "20 units at night", 30)]),
    (["J02.9"], [("AMOX500", 21, "1 capsule three times daily", 7)]),
]
# Mistakes a formulary check must catch: a quantity above the maximum, a drug not in the formulary.
FAULTY = [
    (["E11.9"], [("MET500", 720, "2 tablets twice daily", 180)]),
    (["G47.0"], [("ZOLP10", 30, "1 tablet at night", 30)]),
]


def county_prescriptions(count: int, *, seed: int, faulty_share: float = 0.08) -> Iterator[PrescriptionSubmitted]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for number in range(1, count + 1):
        town, lat, lon = rng.choice(TOWNS)
        diagnoses, items = rng.choice(FAULTY if rng.random() < faulty_share else REGIMENS)
        prescription_id = f"RX-{seed:04d}-{number:05d}"
        remote = rng.random() < 0.3
        prescription = Prescription(
            prescription_id=prescription_id,
            consultation_id=f"CONS-{seed:04d}-{number:05d}",
            patient=Patient(
                patient_id=f"PAT-{rng.randint(1000, 9999)}",
                name=f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}",
                phone=f"+7 7{rng.randint(0, 99):02d} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
                date_of_birth=date(rng.randint(1940, 1990), rng.randint(1, 12), rng.randint(1, 28)),
                allergies=rng.choice([[], [], ["penicillin"], ["sulfonamides"]]),
                address=Address(
                    line=f"Farmstead {rng.randint(1, 240)}",
                    town=town,
                    coordinates=Coordinates(
                        latitude=round(lat + rng.uniform(-0.2, 0.2), 4),
                        longitude=round(lon + rng.uniform(-0.2, 0.2), 4),
                    ),
                ),
            ),
            prescriber=Prescriber(
                prescriber_id=f"DR-{rng.randint(10, 60)}",
                name=rng.choice(["Dr. Karimov", "Dr. Lee", "Dr. Petrova", "Dr. Nurlanova"]),
                licence_number=f"LIC-{rng.randint(10000, 99999)}",
                remote_expert=remote,
            ),
            diagnosis_codes=diagnoses,
            items=[
                PrescriptionItem(drug_code=code, quantity=qty, dosage_text=text, days_supply=days)
                for code, qty, text, days in items
            ],
            issued_at=now - timedelta(minutes=rng.randint(1, 90)),
            valid_until=now + timedelta(days=30),
        )
        yield PrescriptionSubmitted(
            correlation_id=prescription_id,
            producer="internet-hospital",
            sender_id="internet-hospital",
            prescription=prescription,
        )
