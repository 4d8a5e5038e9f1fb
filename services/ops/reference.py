"""The county's reference data (services/ops/data/*.json), loaded the way staff load it.

The formulary, prescriber registry and interaction table go into the prescription service's
collections and the courier roster into the courier service's, as `pharmacy formulary load`,
`pharmacy review load-prescribers`, `pharmacy review load-interactions` and `pharmacy couriers
load` do. Used by the demo, the bench and the chaos run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from pharmacy_contracts.consultation import PrescriptionSubmitted
from services.courier.domain import CourierProfile
from services.courier.storage import CourierStorage
from services.inventory.domain import Location, distance_km
from services.inventory.storage import InventoryStorage
from services.prescription.domain import (
    FormularyEntry,
    Interaction,
    InteractionTable,
    PrescriberRecord,
    Safety,
    check_prescription,
)
from services.prescription.storage import PrescriptionStorage


def data(name: str) -> list[dict[str, Any]]:
    return json.loads(resources.files("services.ops").joinpath("data", name).read_text())


#: A courier capacity no run reaches: for the bench and the chaos run, which measure the pipeline,
#: not how many deliveries a courier can carry at once.
UNLIMITED_CAPACITY = 10_000


#: How long the loaders wait for inventory to hear of the formulary (a relay pass and a batch).
LISTED_WITHIN_S = 60.0


async def load_reference_data(
    database: Any, *, couriers: int | None = None, courier_capacity: int | None = None
) -> None:
    """Everything in services/ops/data; only the first `couriers` of the roster if given, each
    with `courier_capacity` if given. Returns once inventory lists the formulary's drugs (the
    prescription service announces them), so the opening stock that follows is not refused."""
    prescription = PrescriptionStorage(database)
    formulary = [FormularyEntry.model_validate(entry) for entry in data("formulary.json")]
    for entry in formulary:
        await prescription.save_formulary_entry(entry)
    for record in data("prescribers.json"):
        await prescription.save_prescriber(PrescriberRecord.model_validate(record))
    for interaction in data("interactions.json"):
        await prescription.save_interaction(Interaction.model_validate(interaction))
    roster = CourierStorage(database)
    for profile in data("couriers.json")[:couriers]:
        courier = CourierProfile.model_validate(profile)
        if courier_capacity is not None:
            courier = courier.model_copy(update={"capacity": courier_capacity})
        await roster.save_courier(courier)
    await wait_until_listed(database, [entry.drug_code for entry in formulary])


async def wait_until_listed(database: Any, drug_codes: Sequence[str], within_s: float = LISTED_WITHIN_S) -> None:
    """Until inventory lists every one of these drugs; RuntimeError after `within_s`."""
    inventory, deadline = InventoryStorage(database), time.monotonic() + within_s
    while len(await inventory.listed(drug_codes)) < len(set(drug_codes)):
        inventory.drugs.memory.forget(drug_codes)  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"inventory did not hear of the formulary within {within_s:.0f} s: "
                "are the prescription and inventory services running?"
            )
        await asyncio.sleep(0.2)


@dataclass(frozen=True)
class Reference:
    """The county's reference data (services/ops/data), as the services are seeded with it."""

    formulary: dict[str, FormularyEntry]
    prescribers: dict[str, PrescriberRecord]
    interactions: InteractionTable
    warehouses: dict[str, Location]

    @classmethod
    def load(cls) -> Reference:
        return cls(
            formulary={e["drug_code"]: FormularyEntry.model_validate(e) for e in data("formulary.json")},
            prescribers={r["licence_number"]: PrescriberRecord.model_validate(r) for r in data("prescribers.json")},
            interactions=InteractionTable(Interaction.model_validate(i) for i in data("interactions.json")),
            warehouses={w["warehouse_id"]: Location.model_validate(w["location"]) for w in data("warehouses.json")},
        )

    def approvable(self, message: PrescriptionSubmitted, now: datetime) -> bool:
        """What the prescription service's checks decide, with its own rule functions. No medication
        history: every chaos prescription is for a patient of its own (county_prescriptions(patients=None)),
        so neither a refill nor an interaction with another prescription can come up."""
        prescription = message.prescription
        safety = Safety(
            formulary=self.formulary,
            prescriber=self.prescribers.get(prescription.prescriber.licence_number),
            interactions=self.interactions,
        )
        return check_prescription(prescription, safety, now).approved

    def nearest_warehouse(self, message: PrescriptionSubmitted) -> str:
        """Where inventory looks first: the warehouse nearest the patient (ties by id)."""
        coordinates = message.prescription.patient.address.coordinates
        if coordinates is None:  # near none of them: the first by id
            return min(self.warehouses)
        patient = Location(latitude=coordinates.latitude, longitude=coordinates.longitude)
        return min(self.warehouses, key=lambda w: (distance_km(self.warehouses[w], patient), w))
