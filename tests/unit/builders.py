"""Shared builders for the unit tests: valid objects by default, with overrides for the case at hand."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    Coordinates,
    FollowUpRequested,
    Prescription,
    PrescriptionAccepted,
    PrescriptionSubmitted,
    SenderReceipt,
    StatusReceipt,
)
from pharmacy_contracts.envelope import Envelope
from pharmacy_contracts.patient import PatientNotified
from pharmacy_contracts.stages import Stage
from services.courier.domain import CourierProfile, Delivery, DeliveryState
from services.inventory.domain import Location, Lot, Warehouse
from services.prescription.domain import FormularyEntry

EXAMPLE_PRESCRIPTION_PATH = Path(__file__).resolve().parents[2] / "contracts" / "examples" / "prescription.json"
_EXAMPLE_PRESCRIPTION: dict[str, Any] = json.loads(EXAMPLE_PRESCRIPTION_PATH.read_text())

RX_ID = _EXAMPLE_PRESCRIPTION["prescription_id"]
ISSUED_AT = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
VALID_UNTIL = datetime(2027, 5, 25, 8, 0, tzinfo=UTC)
DURING_VALIDITY = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


# --- prescriptions ---------------------------------------------------------------------------------


def prescription_data(**overrides: Any) -> dict[str, Any]:
    """The example prescription as a plain dict (a fresh deep copy), with top-level overrides."""
    data = copy.deepcopy(_EXAMPLE_PRESCRIPTION)
    data.update(overrides)
    return data


def item_data(
    drug_code: str = "MET500", quantity: int = 60, days_supply: int = 30, dosage_text: str = "1 tablet daily"
) -> dict[str, Any]:
    return {"drug_code": drug_code, "quantity": quantity, "dosage_text": dosage_text, "days_supply": days_supply}


def make_prescription(*, items: list[dict[str, Any]] | None = None, **overrides: Any) -> Prescription:
    """A valid Prescription (the example one unless overridden). `items` takes dicts from `item_data`."""
    if items is not None:
        overrides["items"] = items
    return Prescription.model_validate(prescription_data(**overrides))


def envelope_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "message_id": "MSG-1",
        "occurred_at": DURING_VALIDITY,
        "correlation_id": RX_ID,
        "producer": "tests",
    }
    fields.update(overrides)
    return fields


def make_submitted(prescription: Prescription | None = None, **overrides: Any) -> PrescriptionSubmitted:
    prescription = prescription or make_prescription()
    fields = envelope_fields(correlation_id=prescription.prescription_id, sender_id="CLINIC-SYS-1")
    fields.update(overrides)
    return PrescriptionSubmitted(prescription=prescription, **fields)


def submitted_data(**overrides: Any) -> dict[str, Any]:
    """A valid PrescriptionSubmitted as a JSON-ready dict."""
    return make_submitted().model_dump(mode="json") | overrides


# --- formulary -------------------------------------------------------------------------------------


def make_entry(drug_code: str, max_quantity: int, max_days_supply: int, **overrides: Any) -> FormularyEntry:
    return FormularyEntry(
        drug_code=drug_code,
        name=overrides.pop("name", drug_code.title()),
        max_quantity=max_quantity,
        max_days_supply=max_days_supply,
        **overrides,
    )


def make_formulary() -> dict[str, FormularyEntry]:
    """Covers the example prescription: MET500 (at most 180 units, 90 days) and AML5 (90 units, 90 days),
    plus drugs for the safety rules: chronic limits (30 days, 90 if chronic), allergy, interaction
    and review flags. Classes as in services/ops/data/formulary.json."""
    entries = [
        make_entry("MET500", 180, 90, name="Metformin 500 mg", ingredient_classes=["biguanide"]),
        make_entry("AML5", 90, 90, name="Amlodipine", ingredient_classes=["calcium-channel-blocker"]),
        make_entry(
            "LIS10", 180, 30, name="Lisinopril", ingredient_classes=["ace-inhibitor"], max_days_supply_chronic=90
        ),
        make_entry("ATV20", 180, 30, name="Atorvastatin", ingredient_classes=["statin"], max_days_supply_chronic=90),
        make_entry(
            "WAR5",
            180,
            30,
            name="Warfarin",
            ingredient_classes=["anticoagulant"],
            max_days_supply_chronic=90,
            high_risk=True,
        ),
        make_entry("IBU400", 84, 30, name="Ibuprofen", ingredient_classes=["nsaid"]),
        make_entry("CLAR500", 28, 14, name="Clarithromycin", ingredient_classes=["macrolide"]),
        make_entry("AMOX500", 42, 14, name="Amoxicillin", ingredient_classes=["penicillin"]),
        make_entry("MOR10", 60, 30, name="Morphine", ingredient_classes=["opioid"], controlled=True),
        make_entry("DIAZ5", 60, 30, name="Diazepam", ingredient_classes=["benzodiazepine"], controlled=True),
        make_entry(
            "INSGL",
            15,
            30,
            name="Insulin glargine",
            ingredient_classes=["insulin"],
            max_days_supply_chronic=90,
            cold_chain=True,
        ),
    ]
    return {entry.drug_code: entry for entry in entries}


# --- inventory -------------------------------------------------------------------------------------


#: Far beyond any therapy the tests use: lots made by `make_warehouse` are always usable.
FAR_EXPIRY = date(2031, 12, 31)
#: Somewhere in the county of services/ops/simulation.py.
WAREHOUSE_LOCATION = Location(latitude=51.5, longitude=70.0)


def make_lot(drug_code: str, available: int, expiry_date: date = FAR_EXPIRY, **figures: int) -> Lot:
    """A lot whose units were all received and are on the shelf (unless `figures` say otherwise)."""
    fields = {"available": available, "received": available, **figures}
    return Lot(drug_code=drug_code, expiry_date=expiry_date, **fields)


def make_warehouse(
    warehouse_id: str = "WH-1",
    *,
    location: Location | None = WAREHOUSE_LOCATION,
    lots: dict[str, Lot] | None = None,
    **available: int,
) -> Warehouse:
    """A registered warehouse whose stock was all received: `make_warehouse("WH-1", MET500=10)` has
    one lot "MET500-L1" of 10 units expiring far ahead; `lots` adds lots of one's own."""
    made = {f"{drug_code}-L1": make_lot(drug_code, quantity) for drug_code, quantity in available.items()}
    return Warehouse(
        warehouse_id=warehouse_id,
        name=f"Warehouse {warehouse_id}",
        location=location,
        lots={**made, **(lots or {})},
    )


def movement(
    kind: str, lot_id: str, quantity: int, source: str, target: str, drug_code: str = "MET500"
) -> inv.Movement:
    """One ledger line: `movement("reserved", "MET500-L1", 30, "available", "reserved")`."""
    fields = {"kind": kind, "lot_id": lot_id, "drug_code": drug_code, "source": source, "target": target}
    return inv.Movement.model_validate({**fields, "quantity": quantity})


def levels(warehouse: Warehouse, drug_code: str) -> tuple[int, int, int]:
    """(available, reserved, dispatched) of one drug, summed over its lots."""
    level = warehouse.level(drug_code)
    return level.available, level.reserved, level.dispatched


# --- couriers --------------------------------------------------------------------------------------


#: Where the example patient lives (Northford) and the warehouse WH-1 of `make_delivery`.
PATIENT_AT = (51.812, 69.403)
WAREHOUSE_AT = (51.80, 69.40)


def make_courier(
    courier_id: str,
    *,
    active: bool = True,
    base: tuple[float, float] | None = WAREHOUSE_AT,
    capacity: int = 3,
    cold_chain: bool = False,
    zone: str = "north",
) -> CourierProfile:
    """A courier based at `base` (next to WH-1 and the example patient unless told otherwise)."""
    return CourierProfile(
        courier_id=courier_id,
        name=f"Courier {courier_id}",
        zone=zone,
        location=None if base is None else {"latitude": base[0], "longitude": base[1]},
        capacity=capacity,
        cold_chain=cold_chain,
        active=active,
    )


def delivery_details(**overrides: Any) -> rx.DeliveryDetails:
    fields: dict[str, Any] = {
        "address": _EXAMPLE_PRESCRIPTION["patient"]["address"],
        "contact_phone": _EXAMPLE_PRESCRIPTION["patient"]["phone"],
    }
    fields.update(overrides)
    return rx.DeliveryDetails.model_validate(fields)


def make_delivery(**overrides: Any) -> Delivery:
    """A delivery ready to offer: details and warehouse known, nobody tried yet."""
    fields: dict[str, Any] = {
        "prescription_id": RX_ID,
        "state": DeliveryState.WAITING,
        "details": delivery_details(),
        "warehouse_id": "WH-1",
        "pickup_location": {"latitude": WAREHOUSE_AT[0], "longitude": WAREHOUSE_AT[1]},
    }
    fields.update(overrides)
    return Delivery(**fields)


def make_report(
    *, dispatch_id: str, courier_id: str, status: str = "accepted", failure_reason: str | None = None, **overrides: Any
) -> c.CourierReported:
    fields = envelope_fields(
        dispatch_id=dispatch_id,
        courier_id=courier_id,
        package_id=RX_ID,
        status=status,
        failure_reason=failure_reason,
        producer="courier-app",
    )
    fields.update(overrides)
    return c.CourierReported(**fields)


# --- lifecycle events (what the consultation service tracks) ----------------------------------------


def at(minute: int) -> datetime:
    """A point in time, `minute` minutes into the test's day."""
    return datetime(2027, 1, 15, 9, 0, tzinfo=UTC) + timedelta(minutes=minute)


def _common(prescription_id: str, minute: int, message_id: str | None = None) -> dict[str, Any]:
    return envelope_fields(
        message_id=message_id or f"MSG-{prescription_id}-{minute}",
        occurred_at=at(minute),
        correlation_id=prescription_id,
    )


def accepted(minute: int = 0, prescription_id: str = RX_ID) -> PrescriptionAccepted:
    prescription = make_prescription(prescription_id=prescription_id)
    return PrescriptionAccepted(**_common(prescription_id, minute), sender_id="CLINIC-SYS-1", prescription=prescription)


def approved(minute: int = 1, prescription_id: str = RX_ID) -> rx.PrescriptionApproved:
    return rx.PrescriptionApproved(
        **_common(prescription_id, minute),
        prescription_id=prescription_id,
        patient_id="PAT-5521",
        lines=[rx.ApprovedLine(drug_code="MET500", quantity=180, days_supply=90)],
        delivery=delivery_details(),
    )


def rejected(minute: int = 1, prescription_id: str = RX_ID) -> rx.PrescriptionRejected:
    return rx.PrescriptionRejected(
        **_common(prescription_id, minute),
        prescription_id=prescription_id,
        reasons=[rx.Reason(code="UNKNOWN_DRUG", message="XYZ is not in the formulary", item_index=0)],
    )


def reserved(minute: int = 2, prescription_id: str = RX_ID, warehouse_id: str = "WH-1") -> inv.StockReserved:
    return inv.StockReserved(
        **_common(prescription_id, minute),
        prescription_id=prescription_id,
        warehouse_id=warehouse_id,
        pickup_location=Coordinates(latitude=51.5, longitude=70.0),
        lines=[inv.StockLine(drug_code="MET500", quantity=180)],
        picks=[
            inv.LotPick(drug_code="MET500", lot_id="MET500-L0", expiry_date=date(2027, 9, 30), quantity=30),
            inv.LotPick(drug_code="MET500", lot_id="MET500-L1", expiry_date=date(2031, 12, 31), quantity=150),
        ],
        levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=180, dispatched=0)],
        movements=[
            movement("reserved", "MET500-L0", 30, "available", "reserved"),
            movement("reserved", "MET500-L1", 150, "available", "reserved"),
        ],
    )


def reservation_failed(minute: int = 2, prescription_id: str = RX_ID) -> inv.ReservationFailed:
    return inv.ReservationFailed(
        **_common(prescription_id, minute),
        prescription_id=prescription_id,
        shortages=[inv.Shortage(drug_code="MET500", requested=180, best_available=40)],
    )


def _delivery_fields(prescription_id: str, minute: int, courier_id: str, attempt: int) -> dict[str, Any]:
    return {
        **_common(prescription_id, minute),
        "prescription_id": prescription_id,
        "dispatch_id": f"{prescription_id}-D{attempt}",
        "courier_id": courier_id,
        "attempt": attempt,
    }


def assigned(minute: int = 3, courier_id: str = "CUR-1", attempt: int = 1, prescription_id: str = RX_ID):
    return c.CourierAssigned(**_delivery_fields(prescription_id, minute, courier_id, attempt), warehouse_id="WH-1")


def delivery_accepted(minute: int = 4, courier_id: str = "CUR-1", attempt: int = 1, prescription_id: str = RX_ID):
    return c.DeliveryAccepted(**_delivery_fields(prescription_id, minute, courier_id, attempt))


def picked_up(minute: int = 5, courier_id: str = "CUR-1", attempt: int = 1, prescription_id: str = RX_ID):
    return c.DeliveryPickedUp(**_delivery_fields(prescription_id, minute, courier_id, attempt), warehouse_id="WH-1")


def delivery_failed(
    minute: int = 6, courier_id: str = "CUR-1", attempt: int = 1, will_retry: bool = True, prescription_id: str = RX_ID
):
    return c.DeliveryFailed(
        **_delivery_fields(prescription_id, minute, courier_id, attempt),
        warehouse_id="WH-1",
        reason="patient_absent",
        goods_returned=True,
        will_retry=will_retry,
    )


def completed(minute: int = 7, courier_id: str = "CUR-1", attempt: int = 1, prescription_id: str = RX_ID):
    return c.DeliveryCompleted(**_delivery_fields(prescription_id, minute, courier_id, attempt), warehouse_id="WH-1")


def abandoned(minute: int = 8, attempts: int = 3, prescription_id: str = RX_ID) -> c.DeliveryAbandoned:
    return c.DeliveryAbandoned(
        **_common(prescription_id, minute),
        prescription_id=prescription_id,
        warehouse_id="WH-1",
        attempts=attempts,
        last_reason="address_not_found",
    )


def cancelled(minute: int = 30, was_approved: bool = True, prescription_id: str = RX_ID) -> rx.PrescriptionCancelled:
    return rx.PrescriptionCancelled(
        **_common(prescription_id, minute),
        prescription_id=prescription_id,
        reason="therapy changed",
        requested_by="Dr. Karimov",
        was_approved=was_approved,
    )


def restocked(minute: int = 0, warehouse_id: str = "WH-1") -> inv.StockRestocked:
    return inv.StockRestocked(
        **envelope_fields(message_id=f"MSG-restock-{minute}", occurred_at=at(minute), correlation_id="CMD-1"),
        warehouse_id=warehouse_id,
        drug_code="MET500",
        lot_id="MET500-L1",
        expiry_date=date(2031, 12, 31),
        quantity=100,
        requested_by="Aigerim",
        level=inv.StockLevel(drug_code="MET500", available=100, reserved=0, dispatched=0),
        movements=[movement("received", "MET500-L1", 100, "outside", "available")],
    )


def transfer_messages() -> list[Envelope]:
    """The transfer and lot recall commands and events, as their published examples show them."""
    classes = (
        inv.TransferShipRequested,
        inv.TransferReceiptRequested,
        inv.TransferSuggested,
        inv.TransferShipped,
        inv.TransferReceived,
        inv.TransferClosed,
        inv.LotRecallRequested,
        inv.LotRecalled,
        inv.PrescriptionRecalled,
    )
    return [cls.model_validate(cls.model_json_schema()["examples"][0]) for cls in classes]


def patient_messages() -> list[Envelope]:
    """What the patient and the hospital are told (patient.notified, consultation.follow_up_requested), as
    their published examples show them."""
    classes = (PatientNotified, FollowUpRequested)
    return [cls.model_validate(cls.model_json_schema()["examples"][0]) for cls in classes]


def more_inventory_messages() -> list[Envelope]:
    """The inventory messages of lots, warehouses, quarantine and delivery (for `one_of_each_message`)."""
    where = Coordinates(latitude=51.81, longitude=69.40)
    held = {
        "prescription_id": RX_ID,
        "warehouse_id": "WH-1",
        "lines": [inv.StockLine(drug_code="MET500", quantity=180)],
    }
    return [
        inv.WarehouseRegistrationRequested(
            **envelope_fields(correlation_id="CMD-4"),
            warehouse_id="PH-NORTHFORD",
            name="Northford pharmacy",
            kind="township",
            location=where,
            requested_by="Aigerim",
        ),
        inv.WarehouseRegistered(
            **envelope_fields(correlation_id="CMD-4"),
            warehouse_id="PH-NORTHFORD",
            name="Northford pharmacy",
            kind="township",
            location=where,
        ),
        inv.StockQuarantined(
            **envelope_fields(),
            **held,
            levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=0, dispatched=0, quarantined=180)],
            why="damaged",
            packed_again=True,
        ),
        inv.StockRepacked(
            **envelope_fields(),
            **held,
            picks=[inv.LotPick(drug_code="MET500", lot_id="MET500-L2", expiry_date=date(2028, 3, 31), quantity=180)],
            levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=180, dispatched=0, quarantined=180)],
        ),
        inv.StockDelivered(
            **envelope_fields(),
            **held,
            levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=0, dispatched=0)],
        ),
        inv.LotNearingExpiry(
            **envelope_fields(correlation_id="MET500-L0"),
            warehouse_id="WH-1",
            drug_code="MET500",
            lot_id="MET500-L0",
            expiry_date=date(2027, 2, 10),
            available=30,
        ),
        inv.LotExpired(
            **envelope_fields(correlation_id="MET500-L0"),
            warehouse_id="WH-1",
            drug_code="MET500",
            lot_id="MET500-L0",
            expiry_date=date(2027, 2, 10),
            removed=30,
            level=inv.StockLevel(drug_code="MET500", available=100, reserved=0, dispatched=0),
            movements=[movement("expired", "MET500-L0", 30, "available", "expired")],
        ),
    ]


def low_stock(minute: int = 0, warehouse_id: str = "WH-1") -> inv.LowStock:
    return inv.LowStock(
        **envelope_fields(message_id=f"MSG-low-{minute}", occurred_at=at(minute), correlation_id="CMD-2"),
        warehouse_id=warehouse_id,
        drug_code="MET500",
        available=3,
        threshold=10,
    )


def cancellation_requested(prescription_id: str = RX_ID, **overrides: Any) -> CancellationRequested:
    """A signed-by-upstream withdrawal of the prescription (correlation is the prescription id)."""
    fields = envelope_fields(
        message_id=f"MSG-cancel-{prescription_id}",
        correlation_id=prescription_id,
        sender_id="CLINIC-SYS-1",
        prescription_id=prescription_id,
        reason="the doctor changed the therapy",
        requested_by="Dr Test",
    )
    fields.update(overrides)
    return CancellationRequested(**fields)


def lifecycle_messages_of_reviews_and_cancellations() -> list[Envelope]:
    """The consultation, prescription and courier messages of holds, reviews, cancellations and
    delivery deadlines (for `one_of_each_message`)."""
    hold_reasons = [rx.Reason(code="HIGH_RISK_DRUG", message="WAR5 needs a pharmacist's eye", item_index=0)]
    trip = _delivery_fields(RX_ID, 4, "CUR-1", 1)
    return [
        cancellation_requested(),
        CancellationAccepted(
            **_common(RX_ID, 1),
            sender_id="CLINIC-SYS-1",
            prescription_id=RX_ID,
            reason="the doctor changed the therapy",
            requested_by="Dr Test",
        ),
        rx.PrescriptionHeld(
            **_common(RX_ID, 1),
            prescription_id=RX_ID,
            patient_id="PAT-5521",
            reasons=hold_reasons,
            escalate_at=at(31),
            expires_at=at(24 * 60),
        ),
        rx.ReviewEscalated(
            **_common(RX_ID, 31),
            prescription_id=RX_ID,
            held_since=at(1),
            expires_at=at(24 * 60),
            reasons=hold_reasons,
        ),
        rx.PrescriptionCancelled(
            **_common(RX_ID, 9),
            prescription_id=RX_ID,
            reason="the doctor changed the therapy",
            requested_by="Dr Test",
            was_approved=True,
        ),
        rx.ReviewDecided(
            **_common(RX_ID, 20),
            prescription_id=RX_ID,
            decision="approve",
            pharmacist_id="PH-1",
            note="INR checked with the patient",
        ),
        rx.DecisionAnswered(
            **_common(RX_ID, 22),
            pharmacist_id="PH-1",
            prescription_id=RX_ID,
            answers_message_id="MSG-20",
            outcome="applied",
            detail="approved",
        ),
        rx.CancellationOrdered(
            **_common(RX_ID, 21),
            prescription_id=RX_ID,
            pharmacist_id="PH-1",
            reason="the patient called: therapy stopped",
        ),
        c.DispatchWithdrawn(
            **_common(RX_ID, 10),
            dispatch_id=f"{RX_ID}-D1",
            courier_id="CUR-1",
            package_id=RX_ID,
            reason="cancelled",
            return_goods=True,
        ),
        c.DeliveryOfferExpired(**trip),
        c.RoundOffered(
            **_common("R-WH-1-CUR-1", 3),
            round_id="R-WH-1-CUR-1",
            courier_id="CUR-1",
            planned_at=at(3),
            pickup_warehouse_id="WH-1",
            departs_at=at(3),
            returns_at=at(90),
            km=42.0,
            stops=[
                c.RoundStop(
                    stop=1,
                    dispatch_id=f"{RX_ID}-D1",
                    package_id=RX_ID,
                    address=delivery_details().address,
                    cold_chain=False,
                    expected_at=at(30),
                )
            ],
        ),
        c.DeliveryWaiting(
            **_common(RX_ID, 3), prescription_id=RX_ID, warehouse_id="WH-1", why="no cold-chain courier is free"
        ),
        c.DeliveryCodeRejected(**trip, wrong_codes=1),
        c.DeliveryOverdue(
            **_common(RX_ID, 90), prescription_id=RX_ID, stage="on_the_road", since=at(5), courier_id="CUR-1"
        ),
        c.DeliveryCancelled(**_common(RX_ID, 11), prescription_id=RX_ID, warehouse_id="WH-1", goods_returned=True),
    ]


def one_of_each_message() -> list[Envelope]:
    """A valid instance of every message class in the contracts."""
    return [
        make_submitted(),
        accepted(),
        SenderReceipt(
            **envelope_fields(),
            sender_id="CLINIC-SYS-1",
            answers_message_id="MSG-1",
            prescription_id=RX_ID,
            outcome="refused",
            code="prescription_id_reused",
            detail="already received in another message",
        ),
        StatusReceipt(
            **envelope_fields(),
            sender_id="CLINIC-SYS-1",
            answers_message_id="MSG-1",
            prescription_id=RX_ID,
            stage=Stage.DELIVERED,
            terminal=True,
            detail="delivered by CUR-1",
            medication_request_status="completed",
            medication_dispense_status="completed",
            supply_delivery_status="completed",
        ),
        approved(),
        rejected(),
        rx.DrugListed(
            **envelope_fields(correlation_id="MET500"),
            drug_code="MET500",
            name="Metformin 500 mg",
            form="tablet",
        ),
        inv.RestockRequested(
            **envelope_fields(correlation_id="CMD-1"),
            warehouse_id="WH-1",
            drug_code="MET500",
            lot_id="MET500-L1",
            expiry_date=date(2031, 12, 31),
            quantity=10,
            requested_by="Aigerim",
        ),
        inv.AdjustmentRequested(
            **envelope_fields(correlation_id="CMD-2"),
            warehouse_id="WH-1",
            drug_code="MET500",
            lot_id="MET500-L1",
            delta=-2,
            reason="broken bottle",
            requested_by="Aigerim",
        ),
        reserved(),
        reservation_failed(),
        inv.StockReleased(
            **envelope_fields(),
            prescription_id=RX_ID,
            warehouse_id="WH-1",
            lines=[inv.StockLine(drug_code="MET500", quantity=180)],
            levels=[inv.StockLevel(drug_code="MET500", available=200, reserved=0, dispatched=0)],
        ),
        inv.StockDispatched(
            **envelope_fields(),
            prescription_id=RX_ID,
            warehouse_id="WH-1",
            lines=[inv.StockLine(drug_code="MET500", quantity=180)],
            levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=0, dispatched=180)],
        ),
        inv.StockReturned(
            **envelope_fields(),
            prescription_id=RX_ID,
            warehouse_id="WH-1",
            lines=[inv.StockLine(drug_code="MET500", quantity=180)],
            levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=180, dispatched=0)],
        ),
        restocked(),
        inv.StockAdjusted(
            **envelope_fields(correlation_id="CMD-2"),
            warehouse_id="WH-1",
            drug_code="MET500",
            lot_id="MET500-L1",
            delta=-2,
            reason="broken bottle",
            requested_by="Aigerim",
            level=inv.StockLevel(drug_code="MET500", available=98, reserved=0, dispatched=0),
        ),
        inv.StockCommandRefused(
            **envelope_fields(correlation_id="CMD-3"), warehouse_id="WH-1", drug_code="MET500", reason="below zero"
        ),
        inv.QuarantineDecided(
            **envelope_fields(correlation_id="CMD-4"),
            warehouse_id="WH-1",
            drug_code="MET500",
            lot_id="MET500-L1",
            quantity=2,
            decision="write_off",
            reason="crushed",
            requested_by="Aigerim",
        ),
        inv.QuarantineCleared(
            **envelope_fields(correlation_id="CMD-4"),
            warehouse_id="WH-1",
            drug_code="MET500",
            lot_id="MET500-L1",
            quantity=2,
            decision="write_off",
            reason="crushed",
            requested_by="Aigerim",
            level=inv.StockLevel(drug_code="MET500", available=98, reserved=0, dispatched=0),
        ),
        low_stock(),
        *more_inventory_messages(),
        *transfer_messages(),
        *patient_messages(),
        c.DispatchOffered(
            **envelope_fields(),
            dispatch_id=f"{RX_ID}-D1",
            courier_id="CUR-1",
            package_id=RX_ID,
            attempt=1,
            pickup_warehouse_id="WH-1",
            address=delivery_details().address,
            contact_phone=delivery_details().contact_phone,
            cold_chain=False,
            controlled=False,
            pickup_location=Coordinates(latitude=WAREHOUSE_AT[0], longitude=WAREHOUSE_AT[1]),
            accept_by=at(13),
        ),
        make_report(dispatch_id=f"{RX_ID}-D1", courier_id="CUR-1"),
        c.ReportAnswered(
            **envelope_fields(),
            courier_id="CUR-1",
            dispatch_id=f"{RX_ID}-D1",
            answers_message_id="MSG-1",
            outcome="refused",
            code="wrong_code",
            detail="ask the patient again",
        ),
        c.AddressLocated(
            **envelope_fields(correlation_id=RX_ID),
            prescription_id=RX_ID,
            coordinates={"latitude": 51.81, "longitude": 69.4},
            located_by="DSP-1",
            place="Northford (NORTHFORD)",
        ),
        assigned(),
        delivery_accepted(),
        picked_up(),
        completed(),
        delivery_failed(),
        abandoned(),
        *lifecycle_messages_of_reviews_and_cancellations(),
    ]
