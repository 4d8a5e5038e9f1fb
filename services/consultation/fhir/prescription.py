"""A whole Bundle as the native Prescription: assembles the patient, prescriber, ids and lines from
the other modules, adds the diagnosis codes, the issue date and the validity period (with their
fallbacks), keeps the mapping's notes, and checks the result against the native contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from pharmacy_contracts.consultation import Prescription

from .bundle import Resources
from .identifiers import consultation_id, prescription_id
from .items import controlled_drug, native_item
from .notes import Notes
from .patient import native_patient, the_patient
from .prescriber import native_prescriber
from .refusal import brief, refuse
from .rules import DEFAULT_RULES, MappingRules

#: Documents too: national profiles (CH EMED, KBV eRezept) send a prescription as a document bundle.
READ_BUNDLE_TYPES = ("transaction", "collection", "message", "document")


@dataclass(frozen=True)
class Mapped:
    prescription: Prescription
    #: What was read but has no place in the native contract, and the defaults taken (also in
    #: `prescription.mapping_notes`).
    notes: tuple[str, ...] = ()


def to_prescription(bundle: Bundle, rules: MappingRules = DEFAULT_RULES) -> Mapped:
    """The native prescription a Bundle of one patient's MedicationRequests stands for."""
    if bundle.type not in READ_BUNDLE_TYPES:
        raise refuse(f"Bundle.type is {bundle.type!r}; prescriptions are read from {', '.join(READ_BUNDLE_TYPES)}")
    found = Resources(bundle)
    requests = found.of_type("MedicationRequest")
    if not requests:
        raise refuse("the bundle holds no MedicationRequest")
    notes = Notes()
    patient = the_patient(requests, found)
    items = [native_item(request, found, notes) for request in requests]
    issued_at = min(_issued_at(request, found, bundle, notes) for request in requests)
    controlled = any(controlled_drug(request) is not None for request in requests)
    valid_until = min(_valid_until(request, found, issued_at, controlled, rules, notes) for request in requests)
    data = {
        "prescription_id": prescription_id(requests, found, bundle, notes),
        "consultation_id": consultation_id(requests, found, bundle, notes),
        "patient": native_patient(patient, found, notes),
        "prescriber": native_prescriber(requests, found, rules, notes),
        "diagnosis_codes": _diagnosis_codes(requests, found, notes),
        "items": items,
        # One prescription, one validity: from its earliest line's start to its earliest line's end.
        "issued_at": issued_at,
        "valid_until": valid_until,
        "mapping_notes": list(notes.all()),
    }
    try:
        prescription = Prescription.model_validate(data)
    except ValidationError as error:
        raise refuse(f"the bundle maps to a prescription the native contract refuses: {brief(error)}") from None
    return Mapped(prescription, notes.all())


def _issued_at(request: Any, found: Resources, bundle: Bundle, notes: Notes) -> datetime:
    """From when it may be dispensed: the validity's start; else authoredOn; else when a Provenance
    recorded it or its signature was made."""
    label = found.label(request)
    period = request.dispenseRequest.validityPeriod if request.dispenseRequest else None
    if period is not None and period.start is not None:
        return _instant(period.start, f"{label} validityPeriod.start")
    if request.authoredOn is not None:
        return _instant(request.authoredOn, f"{label} authoredOn")
    for source, value in _signed_times(request, found, bundle):
        notes.add(f"{label} has no authoredOn: issued at the {source}")
        return _instant(value, f"{label} {source}")
    raise refuse(
        f"{label} has no issue date: no dispenseRequest.validityPeriod.start, authoredOn, "
        "Provenance.recorded or signature time"
    )


def _signed_times(request: Any, found: Resources, bundle: Bundle) -> list[tuple[str, Any]]:
    times = []
    for provenance in found.of_type("Provenance"):
        if not provenance.target or any(found.resolve(t) is request for t in provenance.target):
            times.append(("Provenance.recorded", provenance.recorded))
            times += [("Provenance signature time", s.when) for s in provenance.signature or () if s.when]
    if bundle.signature is not None and bundle.signature.when is not None:
        times.append(("Bundle.signature time", bundle.signature.when))
    return [(source, value) for source, value in times if value is not None]


def _valid_until(
    request: Any, found: Resources, issued_at: datetime, controlled: bool, rules: MappingRules, notes: Notes
) -> datetime:
    label = found.label(request)
    period = request.dispenseRequest.validityPeriod if request.dispenseRequest else None
    if period is not None and period.end is not None:
        return _instant(period.end, f"{label} validityPeriod.end", end_of_day=True)
    kind, days = rules.validity_for(controlled)
    notes.add(f"{label} has no validityPeriod.end: valid {days} days from issue ({kind} medicines)")
    return issued_at + timedelta(days=days)


def _instant(value: Any, what: str, *, end_of_day: bool = False) -> datetime:
    """A FHIR date or dateTime as a UTC instant. A bare date is read in UTC: from its first second,
    or to its last one for the end of a validity period (the day itself is included)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(23, 59, 59) if end_of_day else time(0, 0), tzinfo=UTC)
    raise refuse(f"{what} {value!r} is not a full date")


def _diagnosis_codes(requests: list[Any], found: Resources, notes: Notes) -> list[str]:
    concepts: list[Any] = []
    for request in requests:
        concepts += request.reasonCode or ()
        for reference in request.reasonReference or ():
            condition = found.resolve(reference)
            if condition is not None and condition.get_resource_type() == "Condition" and condition.code:
                concepts.append(condition.code)
            else:
                notes.add(f"{found.label(request)}: a reasonReference outside the bundle was left out")
    codes: list[str] = []
    for concept in concepts:
        codings = [c for c in concept.coding or () if c.code]
        icd = [c for c in codings if "icd-10" in (c.system or "")]
        chosen = (icd or codings or [None])[0]
        if chosen is None:
            continue
        if len(chosen.code) > 16:
            notes.add(f"a reason code longer than 16 characters was left out: {chosen.code}")
        elif chosen.code not in codes:
            codes.append(str(chosen.code))
    if len(codes) > 20:
        notes.add(f"{len(codes) - 20} diagnosis codes beyond the first 20 were left out")
    return codes[:20]
