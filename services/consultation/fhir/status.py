"""Statuses back out: a prescription's stage told to a FHIR-speaking hospital as a searchset Bundle
of MedicationRequest, MedicationDispense and SupplyDelivery.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from fhir.resources.R4B.bundle import Bundle

from pharmacy_contracts.consultation import Prescription, PrescriptionItem

from ..domain import PrescriptionStatus, Stage
from .systems import BASE, COURSE_OF_THERAPY, DELIVERY_SYSTEM, FORMULARY_SYSTEM, PRESCRIPTION_SYSTEM, UCUM

_REQUEST_STATUS = {
    Stage.HELD_FOR_REVIEW: "on-hold",
    Stage.DELIVERED: "completed",
    # Refused or withdrawn by a person: the request is cancelled, nothing was dispensed.
    Stage.REJECTED: "cancelled",
    Stage.CANCELLED: "cancelled",
    # Halted by fulfilment (no stock, no delivery possible): the request is stopped.
    Stage.OUT_OF_STOCK: "stopped",
    Stage.UNDELIVERABLE: "stopped",
}
_ON_THE_ROAD = frozenset({Stage.PICKED_UP, Stage.DELIVERY_FAILED})


def request_status(status: PrescriptionStatus) -> str:
    """MedicationRequest.status for a stage: active while it moves, on-hold under review."""
    return _REQUEST_STATUS.get(status.stage, "active")


def dispense_status(status: PrescriptionStatus) -> str | None:
    """MedicationDispense.status once a warehouse holds the goods (or declined for lack of stock)."""
    if status.stage is Stage.OUT_OF_STOCK:
        return "declined"
    if status.warehouse_id is None:
        return None
    if status.stage is Stage.DELIVERED:
        return "completed"
    if status.stage in _ON_THE_ROAD:
        return "in-progress"
    if status.stage is Stage.UNDELIVERABLE:
        return "stopped"
    if status.stage is Stage.CANCELLED:
        return "stopped" if _first_at(status, Stage.PICKED_UP) else "cancelled"
    return "preparation"


def delivery_status(status: PrescriptionStatus) -> str | None:
    """SupplyDelivery.status once a courier is involved."""
    if status.courier_id is None:
        return None
    if status.stage is Stage.DELIVERED:
        return "completed"
    if status.stage in (Stage.UNDELIVERABLE, Stage.CANCELLED):
        return "abandoned"
    return "in-progress"


def status_to_fhir(status: PrescriptionStatus, prescription: Prescription | None = None) -> dict[str, Any]:
    """A searchset Bundle telling a FHIR-speaking hospital where its prescription is.

    One MedicationRequest per line (`prescription` given) or one for the whole prescription, each
    with its MedicationDispense once a warehouse is involved, and one SupplyDelivery once a courier
    is. Built and checked with fhir.resources R4B; returns plain JSON-ready data.
    """
    rx = status.prescription_id
    lines: list[PrescriptionItem | None] = list(prescription.items) if prescription else [None]
    subject = (
        {"identifier": {"value": prescription.patient.patient_id}}
        if prescription
        else {"display": f"the patient of prescription {rx}"}
    )
    entries = []
    dispenses = []
    for number, item in enumerate(lines, 1):
        request_id = _resource_id("MedicationRequest", rx, number)
        medication = _medication(item, rx)
        entries.append(
            _entry("MedicationRequest", _request(status, prescription, item, request_id, medication, subject))
        )
        dispense = _dispense(status, item, request_id, medication, subject, number)
        if dispense is not None:
            dispenses.append(_entry("MedicationDispense", dispense, mode="include"))
    delivery = _delivery(status, subject)
    bundle = {
        "resourceType": "Bundle",
        "id": _resource_id("Bundle", rx, 0),
        "type": "searchset",
        "total": len(entries),
        "entry": entries + dispenses + ([_entry("SupplyDelivery", delivery, mode="include")] if delivery else []),
    }
    if status.history:
        bundle["meta"] = {"lastUpdated": _when(status.history[-1].at)}
    return json.loads(Bundle.model_validate(bundle).model_dump_json())


def _request(
    status: PrescriptionStatus,
    prescription: Prescription | None,
    item: PrescriptionItem | None,
    request_id: str,
    medication: dict[str, Any],
    subject: dict[str, Any],
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": request_id,
        "groupIdentifier": {"system": PRESCRIPTION_SYSTEM, "value": status.prescription_id},
        "status": request_status(status),
        "intent": "order",
        "medicationCodeableConcept": medication,
        "subject": subject,
    }
    if status.why:
        request["statusReason"] = {"text": "; ".join(status.why)}
    if status.history:
        latest = status.history[-1]
        request["note"] = [{"time": _when(latest.at), "text": latest.detail}]
    if prescription is not None and item is not None:
        request["authoredOn"] = _when(prescription.issued_at)
        request["dosageInstruction"] = [{"text": item.dosage_text}]
        request["dispenseRequest"] = {
            "validityPeriod": {"start": _when(prescription.issued_at), "end": _when(prescription.valid_until)},
            "quantity": {"value": item.quantity},
            "expectedSupplyDuration": {"value": item.days_supply, "unit": "days", "system": UCUM, "code": "d"},
        }
        if item.chronic:
            request["courseOfTherapyType"] = {"coding": [{"system": COURSE_OF_THERAPY, "code": "continuous"}]}
    return request


def _dispense(
    status: PrescriptionStatus,
    item: PrescriptionItem | None,
    request_id: str,
    medication: dict[str, Any],
    subject: dict[str, Any],
    number: int,
) -> dict[str, Any] | None:
    state = dispense_status(status)
    if state is None:
        return None
    dispense: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "id": _resource_id("MedicationDispense", status.prescription_id, number),
        "status": state,
        "medicationCodeableConcept": medication,
        "subject": subject,
        "authorizingPrescription": [{"reference": f"MedicationRequest/{request_id}"}],
    }
    if status.warehouse_id:
        dispense["location"] = {"display": f"warehouse {status.warehouse_id}"}
    if state in ("declined", "stopped", "cancelled") and status.why:
        dispense["statusReasonCodeableConcept"] = {"text": "; ".join(status.why)}
    if item is not None:
        dispense["quantity"] = {"value": item.quantity}
        dispense["daysSupply"] = {"value": item.days_supply, "unit": "days", "system": UCUM, "code": "d"}
    if prepared := _first_at(status, Stage.RESERVED):
        dispense["whenPrepared"] = _when(prepared)
    if handed_over := _first_at(status, Stage.DELIVERED):
        dispense["whenHandedOver"] = _when(handed_over)
    return dispense


def _delivery(status: PrescriptionStatus, subject: dict[str, Any]) -> dict[str, Any] | None:
    state = delivery_status(status)
    if state is None:
        return None
    delivery: dict[str, Any] = {
        "resourceType": "SupplyDelivery",
        "id": _resource_id("SupplyDelivery", status.prescription_id, 0),
        "identifier": [{"system": DELIVERY_SYSTEM, "value": status.prescription_id}],
        "status": state,
        "patient": subject,
        "supplier": {"display": f"courier {status.courier_id}"},
    }
    if status.history:
        delivery["occurrenceDateTime"] = _when(status.history[-1].at)
    return delivery


def _medication(item: PrescriptionItem | None, rx: str) -> dict[str, Any]:
    if item is None:
        return {"text": f"the items of prescription {rx}"}
    return {"coding": [{"system": FORMULARY_SYSTEM, "code": item.drug_code}]}


def _entry(kind: str, resource: dict[str, Any], mode: str = "match") -> dict[str, Any]:
    return {"fullUrl": f"{BASE}/{kind}/{resource['id']}", "resource": resource, "search": {"mode": mode}}


def _resource_id(kind: str, rx: str, number: int) -> str:
    # Prescription ids may hold characters a FHIR id may not (":", "_"); a name-based UUID is stable.
    return str(uuid5(NAMESPACE_URL, f"{BASE}/{kind}/{rx}/{number}"))


def _first_at(status: PrescriptionStatus, stage: Stage) -> datetime | None:
    return next((h.at for h in status.history if h.stage is stage), None)


def _when(moment: datetime) -> str:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
