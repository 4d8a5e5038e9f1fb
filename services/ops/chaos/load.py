"""The load and the people around it: the hospital publishes prescriptions at a steady rate,
warehouse staff register the warehouses, stock them and restock and correct counts while the
prescriptions flow, and couriers deliver, fail or hear a wrong delivery code."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import PrescriptionSubmitted
from services.cli import bus
from services.inventory.storage import InventoryStorage
from services.runtime.settings import RuntimeSettings

from ..reference import Reference
from ..simulation import Plan, restocks, warehouse_registrations

FAILURES = ("patient_absent", "refused", "damaged", "address_not_found", "other")
OPENING_SHARE = 0.65  # of the expected demand, before the first prescription
RESTOCK_ROUNDS = (0.25, 0.5, 0.75)  # restock (and adjust) when this share of the load is published
RESTOCK_SHARE = 0.08  # of the expected demand, per round
WRONG_CODE_SHARE = 0.03  # of the offers: the patient first reads out a wrong delivery code


@dataclass
class Couriers:
    """Plans every offer once. A dispatch id seen again is not acted on again: counted instead."""

    seed: int
    unreachable: set[str]
    failure_rate: float = 0.12
    wrong_code_share: float = WRONG_CODE_SHARE
    acted: dict[str, c.DispatchOffered] = field(default_factory=dict)
    duplicates: list[c.DispatchOffered] = field(default_factory=list)
    wrong_codes: int = 0

    def plan_for(self, offer: c.DispatchOffered) -> Plan | None:
        if offer.dispatch_id in self.acted:
            self.duplicates.append(offer)
            return None
        self.acted[offer.dispatch_id] = offer
        rng = random.Random(f"{self.seed}:{offer.dispatch_id}")
        if offer.package_id in self.unreachable:
            # Never found: the first attempt fails before pickup, the second after it; address_not_found
            # allows two attempts, so the delivery is undeliverable and its goods, which travelled, are
            # quarantined.
            return "fail:address_not_found" if offer.attempt % 2 else "fail-after-pickup:address_not_found"
        roll = rng.random()
        if roll < self.failure_rate / 2:
            return f"fail:{rng.choice(FAILURES)}"
        if roll < self.failure_rate:
            return f"fail-after-pickup:{rng.choice(FAILURES)}"
        if roll < self.failure_rate + self.wrong_code_share:
            self.wrong_codes += 1
            return "wrong-code"
        return "deliver"


Shelf = tuple[str, str]  # (warehouse id, drug code)


def demand_of(messages: Iterable[PrescriptionSubmitted], reference: Reference) -> Counter[Shelf]:
    """The units the approvable prescriptions will ask of each warehouse nearest their patients."""
    now = datetime.now(UTC)
    demand: Counter[Shelf] = Counter()
    for message in messages:
        if reference.approvable(message, now):
            warehouse = reference.nearest_warehouse(message)
            for item in message.prescription.items:
                demand[warehouse, item.drug_code] += item.quantity
    return demand


def restock_round(demand: Counter[Shelf], share: float, by: str, round_no: int) -> list[inv.RestockRequested]:
    """A share of each warehouse's expected demand, as one new lot per shelf. A warehouse that runs
    out sends its prescriptions to the next nearest that has everything, or they end out of stock."""
    lines = [
        (warehouse, drug, quantity)
        for (warehouse, drug), units in sorted(demand.items())
        if (quantity := round(units * share)) > 0
    ]
    return restocks(lines, requested_by=by, round_name=f"chaos-restock-{round_no}")


def count_corrections(lots: dict[Shelf, list[str]], rng: random.Random, round_no: int) -> list[inv.AdjustmentRequested]:
    """A few stock-count corrections of lots restocked before: breakage (some refused if the lot's
    shelf is already empty), a find."""
    commands = []
    shelves = sorted(lots)
    for number in range(3):
        warehouse, drug = rng.choice(shelves)
        delta = rng.choice([-1, -1, 1]) * rng.randint(1, 5)
        commands.append(
            inv.AdjustmentRequested(
                correlation_id=f"chaos-adjust-{round_no}-{number}",
                producer="chaos",
                warehouse_id=warehouse,
                drug_code=drug,
                lot_id=rng.choice(lots[warehouse, drug]),
                delta=delta,
                reason="breakage found at stock count" if delta < 0 else "found during stock count",
                requested_by="night shift",
            )
        )
    return commands


class Load:
    """Publishes the warehouse staff's commands and the hospital's prescriptions, and remembers
    what staff asked for: the checks compare it with what the system did."""

    def __init__(self, settings: RuntimeSettings, *, rate: float, rng: random.Random) -> None:
        self.settings = settings
        self.rate = rate
        self.rng = rng
        self.restocked: Counter[Shelf] = Counter()
        self.lots: defaultdict[Shelf, list[str]] = defaultdict(list)
        self.adjustments: list[inv.AdjustmentRequested] = []
        self.restocks: list[inv.RestockRequested] = []
        self.submitted = 0

    async def publish_commands(self, commands: list[inv.RestockRequested] | list[inv.AdjustmentRequested]) -> None:
        await bus.publish(self.settings, *commands)
        for command in commands:
            if isinstance(command, inv.RestockRequested):
                shelf = (command.warehouse_id, command.drug_code)
                self.restocks.append(command)
                self.restocked[shelf] += command.quantity
                if command.lot_id not in self.lots[shelf]:
                    self.lots[shelf].append(command.lot_id)
            else:
                self.adjustments.append(command)

    async def open_stock(self, demand: Counter[Shelf], inventory: InventoryStorage) -> None:
        """The warehouses registered (before any restock: inventory refuses stock for a warehouse it
        does not know; both go by warehouse id, so in order), then the opening stock, until it arrived."""
        await bus.publish(self.settings, *warehouse_registrations(requested_by="opening stock count"))
        await self.publish_commands(restock_round(demand, OPENING_SHARE, "opening stock count", 0))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            warehouses = await inventory.all_warehouses()
            received = {(w.warehouse_id, d): s.received for w in warehouses for d, s in w.stock.items()}
            if all(received.get(k, 0) >= q for k, q in self.restocked.items()):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError("the opening stock did not arrive within 120 s")

    async def submit(self, messages: list[PrescriptionSubmitted], demand: Counter[Shelf]) -> None:
        """Every prescription at `rate` per second; restocks and count corrections at set shares of them."""
        rounds = {round(share * len(messages)): number for number, share in enumerate(RESTOCK_ROUNDS, start=1)}
        async with bus.producer(self.settings) as producer:
            started = time.monotonic()
            for index, message in enumerate(messages):
                if (number := rounds.get(index)) is not None:
                    await self.publish_commands(
                        restock_round(demand, RESTOCK_SHARE, "delivery from the wholesaler", number)
                    )
                    await self.publish_commands(count_corrections(self.lots, self.rng, number))
                if (delay := started + index / self.rate - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                await bus.publish_all(producer, [message], self.settings)
                self.submitted += 1
