"""Simulated users for the demo and the tests: an internet hospital in a rural county, and couriers."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

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
from services.cli.warehouses import registrations
from services.runtime import delivery_codes
from services.runtime.settings import RuntimeSettings

# A plan for one delivery attempt: "deliver", "fail:<reason>" (before pickup),
# "fail-after-pickup:<reason>" (the goods travel and come back), "wrong-code" (the first code the
# courier reports is wrong, then the right one), "ignore" (never answer: the offer expires) or
# "hold-after-pickup" (accept, pick up, then wait: for a cancellation after pickup).
Plan = str


@dataclass
class CourierSimulator:
    """Plays every courier, and every patient at the door: follows courier.dispatch.v1 and reports
    accepted, picked up, then delivered (with the code the patient reads out) or failed, as
    `plan_for` decides for each offer. A withdrawn dispatch stops the trip; goods the courier is
    asked to bring back are reported 'returned'."""

    settings: RuntimeSettings
    plan_for: Callable[[c.DispatchOffered], Plan | None]
    delay_s: Callable[[], float] = lambda: 0.0
    offers: list[c.DispatchOffered] = field(default_factory=list)
    withdrawals: list[c.DispatchWithdrawn] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _trips: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _taken: set[str] = field(default_factory=set)
    _code_key: bytes | None = None

    def start(self) -> None:
        key = self.settings.delivery_code_key
        if key is None:
            raise ValueError("the simulated patients need PHARMACY_DELIVERY_CODE_KEY to read out their delivery codes")
        self._code_key = key.get_secret_value().encode()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with bus.producer(self.settings) as producer:
            trips: set[asyncio.Task[None]] = set()

            def drive(dispatch_id: str, reports: list[c.CourierReported]) -> asyncio.Task[None]:
                trip = asyncio.create_task(self._drive(producer, reports))
                trips.add(trip)
                trip.add_done_callback(trips.discard)
                trip.add_done_callback(lambda done: self._forget_trip(dispatch_id, done))
                self._trips[dispatch_id] = trip
                return trip

            async for _, message, _ in bus.follow(self.settings, COURIER_DISPATCH, from_beginning=True):
                if isinstance(message, c.DispatchWithdrawn):
                    if message.dispatch_id not in self._taken:
                        continue  # someone else's package, or seen before
                    self._taken.discard(message.dispatch_id)
                    self.withdrawals.append(message)
                    if (trip := self._trips.pop(message.dispatch_id, None)) is not None:
                        trip.cancel()
                    if message.return_goods:
                        drive(message.dispatch_id, [returned_report(message)])
                    continue
                if not isinstance(message, c.DispatchOffered) or message.dispatch_id in self._taken:
                    continue  # a round's stop sent again when the round was re-planned: the same job
                plan = self.plan_for(message)
                if plan is None:
                    continue
                self.offers.append(message)
                self._taken.add(message.dispatch_id)
                drive(message.dispatch_id, reports_for(message, plan, code_key=self._code_key))

    def _forget_trip(self, dispatch_id: str, trip: asyncio.Task[None]) -> None:
        if self._trips.get(dispatch_id) is trip:
            del self._trips[dispatch_id]

    async def _drive(self, producer: object, reports: list[c.CourierReported]) -> None:
        for report in reports:
            if delay := self.delay_s():
                await asyncio.sleep(delay)
            await bus.publish_all(producer, [report], self.settings)  # type: ignore[arg-type]


def wrong_code(right: str) -> str:
    """A code that is surely not `right`: the patient misread a digit."""
    return f"{(int(right) + 1) % 10 ** len(right):0{len(right)}d}"


def reports_for(offer: c.DispatchOffered, plan: Plan, *, code_key: bytes | None) -> list[c.CourierReported]:
    """What the courier (and the patient at the door) report for one offer under `plan`."""

    def report(status: str, reason: str | None = None, code: str | None = None) -> c.CourierReported:
        return c.CourierReported(
            correlation_id=offer.package_id,
            producer=f"courier-app-{offer.courier_id}",
            dispatch_id=offer.dispatch_id,
            courier_id=offer.courier_id,
            package_id=offer.package_id,
            status=status,
            failure_reason=reason,
            delivery_code=code,
        )

    def right_code() -> str:
        if code_key is None:
            raise ValueError(f"plan {plan!r} delivers: the patient's code needs the delivery code key")
        return delivery_codes.delivery_code(code_key, offer.package_id)

    match plan:
        case "deliver":
            return [report("accepted"), report("picked_up"), report("delivered", code=right_code())]
        case "wrong-code":
            right = right_code()
            return [
                report("accepted"),
                report("picked_up"),
                report("delivered", code=wrong_code(right)),
                report("delivered", code=right),
            ]
        case "ignore":
            return []
        case "hold-after-pickup":
            return [report("accepted"), report("picked_up")]
    kind, _, reason = plan.partition(":")
    if kind == "fail-after-pickup":
        return [report("accepted"), report("picked_up"), report("failed", reason)]
    if kind == "fail":
        return [report("accepted"), report("failed", reason)]
    raise ValueError(f"unknown plan {plan!r}")


def returned_report(withdrawn: c.DispatchWithdrawn) -> c.CourierReported:
    """The courier is back at the warehouse with the goods of a withdrawn dispatch."""
    return c.CourierReported(
        correlation_id=withdrawn.package_id,
        producer=f"courier-app-{withdrawn.courier_id}",
        dispatch_id=withdrawn.dispatch_id,
        courier_id=withdrawn.courier_id,
        package_id=withdrawn.package_id,
        status="returned",
    )


#: A restock's lot expires this long after the day it is entered, unless the lot is given.
DEFAULT_SHELF_LIFE = timedelta(days=730)

#: (warehouse, drug, quantity), or (warehouse, drug, quantity, lot id, expiry date) for a lot of one's own.
StockLine = tuple[str, str, int] | tuple[str, str, int, str, date]


def restocks(
    stock: Iterable[StockLine],
    *,
    requested_by: str,
    round_name: str = "opening",
    today: date | None = None,
    shelf_life: timedelta = DEFAULT_SHELF_LIFE,
) -> list[inv.RestockRequested]:
    """Stock as warehouse staff would enter it: one restock command (one lot) per line.

    Without a lot of its own, a line gets the lot `L<today>-<round>-<warehouse>-<drug>` expiring
    `shelf_life` after today: the same round entered twice on one day tops up the same lot."""
    today = today or datetime.now(UTC).date()
    commands = []
    for line in stock:
        warehouse, drug, quantity = line[:3]
        if len(line) == 5:
            lot_id, expiry_date = line[3], line[4]  # type: ignore[misc]
        else:
            lot_id, expiry_date = f"L{today:%Y%m%d}-{round_name}-{warehouse}-{drug}", today + shelf_life
        commands.append(
            inv.RestockRequested(
                correlation_id=f"{round_name}-{warehouse}-{drug}",
                producer="simulation",
                warehouse_id=warehouse,
                drug_code=drug,
                lot_id=lot_id,
                expiry_date=expiry_date,
                quantity=quantity,
                requested_by=requested_by,
            )
        )
    return commands


def warehouse_registrations(
    source: str | Path | Iterable[Mapping[str, Any]] | None = None, *, requested_by: str = "simulation"
) -> list[inv.WarehouseRegistrationRequested]:
    """Registration commands for the county's warehouses (services/ops/data/warehouses.json by
    default), a file like it, or the entries themselves."""
    if source is None:
        source = json.loads(resources.files("services.ops").joinpath("data", "warehouses.json").read_text())
    return registrations(
        Path(source) if isinstance(source, str) else source, requested_by=requested_by, producer="simulation"
    )


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
# Mistakes the checks must catch: a quantity above the maximum, a drug not in the formulary, a
# severe interaction (warfarin with ibuprofen).
FAULTY = [
    (["E11.9"], [("MET500", 720, "2 tablets twice daily", 180)]),
    (["G47.0"], [("ZOLP10", 30, "1 tablet at night", 30)]),
    (["I48.91", "M54.5"], [("WAR5", 30, "1 tablet daily", 30), ("IBU400", 20, "1 tablet when needed", 10)]),
]
# What a pharmacist must look at: a controlled drug, a moderate interaction (ACE inhibitor with an NSAID).
NEEDS_REVIEW = [
    (["C79.51"], [("MOR10", 20, "1 tablet every 6 hours when needed", 5)]),
    (["I10", "M54.5"], [("LIS10", 30, "1 tablet once daily", 30), ("IBU400", 20, "1 tablet when needed", 10)]),
]
#: The licences of the county's prescribers (services/ops/data/prescribers.json); the last is expired.
LICENCES = ["LIC-10001", "LIC-10002", "LIC-10003", "LIC-10004", "LIC-10005", "LIC-10006"]
EXPIRED_LICENCE = "LIC-90001"


def county_prescriptions(
    count: int, *, seed: int, faulty_share: float = 0.08, review_share: float = 0.0, patients: int | None = 9000
) -> Iterator[PrescriptionSubmitted]:
    """Prescriptions of the county's chronic patients; `faulty_share` of them break a rule (and a
    few of those are signed under an expired licence), `review_share` need a pharmacist. Drawn
    from `patients` patients (None: a new patient each time): when one comes up twice with the
    same drug, the refill check holds it for a pharmacist."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for number in range(1, count + 1):
        town, lat, lon = rng.choice(TOWNS)
        draw = rng.random()
        if draw < faulty_share:
            kind = FAULTY
        elif draw < faulty_share + review_share:
            kind = NEEDS_REVIEW
        else:
            kind = REGIMENS
        diagnoses, items = rng.choice(kind)
        licence = EXPIRED_LICENCE if kind is FAULTY and rng.random() < 0.2 else rng.choice(LICENCES)
        prescription_id = f"RX-{seed:04d}-{number:05d}"
        remote = rng.random() < 0.3
        prescription = Prescription(
            prescription_id=prescription_id,
            consultation_id=f"CONS-{seed:04d}-{number:05d}",
            patient=Patient(
                patient_id=f"PAT-{seed:04d}-{number:05d}"
                if patients is None
                else f"PAT-{rng.randint(1, patients):05d}",
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
                licence_number=licence,
                remote_expert=remote,
            ),
            diagnosis_codes=diagnoses,
            items=[
                # Therapies longer than a month are chronic care: the formulary's longer limit applies.
                PrescriptionItem(drug_code=code, quantity=qty, dosage_text=text, days_supply=days, chronic=days > 30)
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
