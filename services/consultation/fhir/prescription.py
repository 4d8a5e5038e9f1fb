"""A whole Bundle as the native Prescription: assembles the patient, prescriber, ids and lines from
the other modules, adds the diagnosis codes and the validity period, and checks the result against
the native contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from pharmacy_contracts.consultation import Prescription

from .bundle import Resources
from .identifiers import consultation_id, prescription_id
from .items import native_item
from .patient import native_patient, the_patient
from .prescriber import native_prescriber
from .refusal import brief, refuse

READ_BUNDLE_TYPES = ("transaction", "collection", "message")


@dataclass(frozen=True)
class Mapped:
    prescription: Prescription
    #: What was read but has no place in the native contract (repeats, foreign drug codes), for the log.
    notes: tuple[str, ...] = ()


def to_prescription(bundle: Bundle) -> Mapped:
    """The native prescription a Bundle of one patient's MedicationRequests stands for."""
    if bundle.type not in READ_BUNDLE_TYPES:
        raise refuse(f"Bundle.type is {bundle.type!r}; prescriptions are read from {', '.join(READ_BUNDLE_TYPES)}")
    found = Resources(bundle)
    requests = found.of_type("MedicationRequest")
    if not requests:
        raise refuse("the bundle holds no MedicationRequest")
    notes: list[str] = []
    patient = the_patient(requests, found)
    items = [native_item(request, found, notes) for request in requests]
    issued = [_issued_at(request, found) for request in requests]
    valid_until = [_valid_until(request, found) for request in requests]
    data = {
        "prescription_id": prescription_id(requests, found),
        "consultation_id": consultation_id(requests, found),
        "patient": native_patient(patient, found),
        "prescriber": native_prescriber(requests, found),
        "diagnosis_codes": _diagnosis_codes(requests, found, notes),
        "items": items,
        # One prescription, one validity: from its earliest line's start to its earliest line's end.
        "issued_at": min(issued),
        "valid_until": min(valid_until),
    }
    try:
        prescription = Prescription.model_validate(data)
    except ValidationError as error:
        raise refuse(f"the bundle maps to a prescription the native contract refuses: {brief(error)}") from None
    return Mapped(prescription, tuple(notes))


def _issued_at(request: Any, found: Resources) -> datetime:
    period = request.dispenseRequest.validityPeriod if request.dispenseRequest else None
    start = (period.start if period else None) or request.authoredOn
    if start is None:
        raise refuse(f"{found.label(request)} has neither dispenseRequest.validityPeriod.start nor authoredOn")
    return _instant(start, f"{found.label(request)} issue date")


def _valid_until(request: Any, found: Resources) -> datetime:
    period = request.dispenseRequest.validityPeriod if request.dispenseRequest else None
    if period is None or period.end is None:
        raise refuse(
            f"{found.label(request)}: dispenseRequest.validityPeriod.end is missing; "
            "the pharmacy must know until when it may dispense"
        )
    return _instant(period.end, f"{found.label(request)} validityPeriod.end", end_of_day=True)


def _instant(value: Any, what: str, *, end_of_day: bool = False) -> datetime:
    """A FHIR date or dateTime as a UTC instant. A bare date is read in UTC: from its first second,
    or to its last one for the end of a validity period (the day itself is included)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(23, 59, 59) if end_of_day else time(0, 0), tzinfo=UTC)
    raise refuse(f"{what} {value!r} is not a full date")


def _diagnosis_codes(requests: list[Any], found: Resources, notes: list[str]) -> list[str]:
    concepts: list[Any] = []
    for request in requests:
        concepts += request.reasonCode or ()
        for reference in request.reasonReference or ():
            condition = found.resolve(reference)
            if condition is not None and condition.get_resource_type() == "Condition" and condition.code:
                concepts.append(condition.code)
            else:
                notes.append(f"{found.label(request)}: a reasonReference outside the bundle was left out")
    codes: list[str] = []
    for concept in concepts:
        codings = [c for c in concept.coding or () if c.code]
        icd = [c for c in codings if "icd-10" in (c.system or "")]
        chosen = (icd or codings or [None])[0]
        if chosen is None:
            continue
        if len(chosen.code) > 16:
            notes.append("a reason code longer than 16 characters was left out")
        elif chosen.code not in codes:
            codes.append(str(chosen.code))
    if len(codes) > 20:
        notes.append(f"{len(codes) - 20} diagnosis codes beyond the first 20 were left out")
    return codes[:20]
