"""Shared builders for the unit tests: valid objects by default, with overrides for the case at hand."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import Prescription, PrescriptionAccepted, PrescriptionSubmitted
from pharmacy_contracts.envelope import Envelope
from services.courier.domain import CourierProfile, Delivery, DeliveryState
from services.inventory.domain import DrugStock, Warehouse
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
    """Covers the example prescription: MET500 (at most 180 units, 90 days) and AML5 (90 units, 90 days)."""
    entries = [make_entry("MET500", 180, 90, name="Metformin 500 mg"), make_entry("AML5", 90, 90, name="Amlodipine")]
    return {entry.drug_code: entry for entry in entries}


# --- inventory -------------------------------------------------------------------------------------


def make_warehouse(warehouse_id: str = "WH-1", **available: int) -> Warehouse:
    """A warehouse whose available stock was all received: `make_warehouse("WH-1", MET500=10)`."""
    stock = {drug_code: DrugStock(available=quantity, received=quantity) for drug_code, quantity in available.items()}
    return Warehouse(warehouse_id=warehouse_id, stock=stock)


def levels(warehouse: Warehouse, drug_code: str) -> tuple[int, int, int]:
    """(available, reserved, dispatched) of one drug."""
    level = warehouse.level(drug_code)
    return level.available, level.reserved, level.dispatched


# --- couriers --------------------------------------------------------------------------------------


def make_courier(courier_id: str, *, active: bool = True) -> CourierProfile:
    return CourierProfile(courier_id=courier_id, name=f"Courier {courier_id}", active=active)


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
        lines=[inv.StockLine(drug_code="MET500", quantity=180)],
        levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=180, dispatched=0)],
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


def restocked(minute: int = 0, warehouse_id: str = "WH-1") -> inv.StockRestocked:
    return inv.StockRestocked(
        **envelope_fields(message_id=f"MSG-restock-{minute}", occurred_at=at(minute), correlation_id="CMD-1"),
        warehouse_id=warehouse_id,
        drug_code="MET500",
        quantity=100,
        requested_by="Aigerim",
        level=inv.StockLevel(drug_code="MET500", available=100, reserved=0, dispatched=0),
    )


def low_stock(minute: int = 0, warehouse_id: str = "WH-1") -> inv.LowStock:
    return inv.LowStock(
        **envelope_fields(message_id=f"MSG-low-{minute}", occurred_at=at(minute), correlation_id="CMD-2"),
        warehouse_id=warehouse_id,
        drug_code="MET500",
        available=3,
        threshold=10,
    )


def one_of_each_message() -> list[Envelope]:
    """A valid instance of every message class in the contracts."""
    return [
        make_submitted(),
        accepted(),
        approved(),
        rejected(),
        inv.RestockRequested(
            **envelope_fields(correlation_id="CMD-1"),
            warehouse_id="WH-1",
            drug_code="MET500",
            quantity=10,
            requested_by="Aigerim",
        ),
        inv.AdjustmentRequested(
            **envelope_fields(correlation_id="CMD-2"),
            warehouse_id="WH-1",
            drug_code="MET500",
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
            delta=-2,
            reason="broken bottle",
            requested_by="Aigerim",
            level=inv.StockLevel(drug_code="MET500", available=98, reserved=0, dispatched=0),
        ),
        inv.StockCommandRefused(
            **envelope_fields(correlation_id="CMD-3"), warehouse_id="WH-1", drug_code="MET500", reason="below zero"
        ),
        low_stock(),
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
        ),
        make_report(dispatch_id=f"{RX_ID}-D1", courier_id="CUR-1"),
        assigned(),
        delivery_accepted(),
        picked_up(),
        completed(),
        delivery_failed(),
        abandoned(),
    ]
