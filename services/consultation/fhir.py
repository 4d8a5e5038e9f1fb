"""FHIR R4 at the front door: a Bundle of MedicationRequests becomes the native prescription, and a
prescription's status is told back as MedicationRequest, MedicationDispense and SupplyDelivery.

Pure: bytes and headers in, contract messages or FHIR JSON out; no I/O, no clock. Bundles are read
and built with fhir.resources' R4B models, which read R4 (4.0) bundles too for every element used here.
Whatever cannot be mapped faithfully is refused with `fhir_unmappable` and a sentence saying where
and why: the runtime dead-letters it with the original bytes, so nothing is dropped or guessed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from pharmacy_contracts import signing
from pharmacy_contracts.consultation import Prescription, PrescriptionItem, PrescriptionSubmitted
from services.runtime.errors import Refused

from .domain import PrescriptionStatus, Stage

#: The content type that marks a FHIR bundle on consultation.prescriptions.v1 (native messages are
#: application/json). An optional `fhirVersion` parameter must name R4 or R4B when present.
FHIR_JSON = "application/fhir+json"
READABLE_FHIR_VERSIONS = ("4.0", "4.3")
UNMAPPABLE = "fhir_unmappable"

#: Our own code and identifier systems; upstream systems use them where the pharmacy's meaning is needed.
BASE = "https://pharmacy.example.org/fhir"
FORMULARY_SYSTEM = f"{BASE}/CodeSystem/formulary"
LICENCE_SYSTEM = f"{BASE}/sid/prescriber-licence"
PRESCRIPTION_SYSTEM = f"{BASE}/sid/prescription"
DELIVERY_SYSTEM = f"{BASE}/sid/delivery"
#: Bundle.meta.source in this namespace names the sending system; it must match the signature's sender.
SENDER_SOURCE_PREFIX = f"{BASE}/sender/"

GEOLOCATION = "http://hl7.org/fhir/StructureDefinition/geolocation"
V2_IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
LICENCE_TYPE_CODES = frozenset({"MD", "LN"})  # Medical License number, License number
UCUM = "http://unitsofmeasure.org"
COURSE_OF_THERAPY = "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy"
SNOMED = "http://snomed.info/sct"
#: SNOMED "no known (drug / food / environmental) allergy": recorded absences, not allergies.
NO_KNOWN_ALLERGY = frozenset({"716186003", "409137002", "429625007", "428607008"})

READ_BUNDLE_TYPES = ("transaction", "collection", "message")
ORDER_INTENTS = frozenset({"order", "original-order", "instance-order"})
#: Days per unit of expectedSupplyDuration (UCUM code or its plain-English unit). A month is 30
#: days, as pharmacies count a month's supply; years are refused rather than guessed.
DAYS_PER_UNIT = {"d": 1, "wk": 7, "mo": 30}
UNIT_ALIASES = {"day": "d", "days": "d", "week": "wk", "weeks": "wk", "month": "mo", "months": "mo"}

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def _refuse(detail: str) -> Refused:
    return Refused(UNMAPPABLE, detail)


# --- recognising and reading a bundle -------------------------------------------------------------


def _content_type(headers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    raw = next((value for name, value in headers.items() if name.lower() == "content-type"), "")
    media_type, *parameters = raw.split(";")
    params = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), params


def is_fhir(headers: Mapping[str, str]) -> bool:
    return _content_type(headers)[0] == FHIR_JSON


def parse_bundle(body: bytes, headers: Mapping[str, str] | None = None) -> Bundle:
    """The R4 Bundle in `body`, or Refused(fhir_unmappable) saying why it is not one."""
    version = _content_type(headers or {})[1].get("fhirversion")
    if version is not None and not version.startswith(READABLE_FHIR_VERSIONS):
        raise _refuse(f"content type says fhirVersion={version}; only FHIR R4 (4.0) and R4B (4.3) bundles are read")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _refuse("the body is not JSON; a FHIR bundle is sent as application/fhir+json") from None
    kind = data.get("resourceType") if isinstance(data, dict) else None
    if kind != "Bundle":
        what = f"a {kind} resource" if isinstance(kind, str) else "not a FHIR resource (no resourceType)"
        raise _refuse(f"{what}, not a Bundle: MedicationRequests travel in a Bundle")
    entries = data.get("entry")
    for number, entry in enumerate(entries if isinstance(entries, list) else (), 1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        name = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(name, str) and not _is_r4_resource(name):
            raise _refuse(f"entry {number}: resourceType {name!r} is not a FHIR R4 resource")
    try:
        return Bundle.model_validate(data)
    except ValidationError as error:
        raise _refuse(f"not a valid FHIR R4 Bundle: {_brief(error)}") from None
    except Exception as error:  # fhir.resources raises more than ValidationError on odd input
        raise _refuse(f"not a valid FHIR R4 Bundle: {error!r}") from None


def _is_r4_resource(name: str) -> bool:
    try:
        get_fhir_model_class(name)
    except (ValueError, KeyError):
        return False
    return True


def claimed_sender(body: bytes) -> str | None:
    """The sending system the bundle names in meta.source (our sender namespace only), if any.

    The sender of a FHIR bundle is the signature's sender; nothing else in FHIR names our sender
    ids. A bundle that does name one (meta.source = SENDER_SOURCE_PREFIX + id) must name the signer.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    meta = data.get("meta") if isinstance(data, dict) else None
    source = meta.get("source") if isinstance(meta, dict) else None
    if isinstance(source, str) and source.startswith(SENDER_SOURCE_PREFIX):
        return source.removeprefix(SENDER_SOURCE_PREFIX)
    return None


# --- a bundle's resources, found by reference -----------------------------------------------------


class _Resources:
    def __init__(self, bundle: Bundle) -> None:
        self._entries: list[Any] = []
        self._by_reference: dict[str, Any] = {}
        self._labels: dict[int, str] = {}
        for number, entry in enumerate(bundle.entry or (), 1):
            resource = entry.resource
            if resource is None:
                continue
            kind = resource.get_resource_type()
            self._entries.append(resource)
            if entry.fullUrl:
                self._by_reference[entry.fullUrl] = resource
            if resource.id:
                self._by_reference[f"{kind}/{resource.id}"] = resource
            self._labels[id(resource)] = f"{kind}/{resource.id}" if resource.id else f"{kind} (entry {number})"

    def of_type(self, kind: str) -> list[Any]:
        return [r for r in self._entries if r.get_resource_type() == kind]

    def label(self, resource: Any) -> str:
        return self._labels.get(id(resource), resource.get_resource_type())

    def resolve(self, reference: Any, within: Any = None) -> Any | None:
        """The resource a Reference points at inside the bundle (or `within`'s contained resources)."""
        target = getattr(reference, "reference", None)
        if not target:
            return None
        if target.startswith("#"):
            return next((c for c in getattr(within, "contained", None) or () if c.id == target[1:]), None)
        if target in self._by_reference:
            return self._by_reference[target]
        # An absolute URL to a resource whose entry gave only its Type/id, or the other way round.
        return self._by_reference.get("/".join(target.split("/")[-2:])) if "/" in target else None


# --- the mapping ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapped:
    prescription: Prescription
    #: What was read but has no place in the native contract (repeats, foreign drug codes), for the log.
    notes: tuple[str, ...] = ()


def to_prescription(bundle: Bundle) -> Mapped:
    """The native prescription a Bundle of one patient's MedicationRequests stands for."""
    if bundle.type not in READ_BUNDLE_TYPES:
        raise _refuse(f"Bundle.type is {bundle.type!r}; prescriptions are read from {', '.join(READ_BUNDLE_TYPES)}")
    found = _Resources(bundle)
    requests = found.of_type("MedicationRequest")
    if not requests:
        raise _refuse("the bundle holds no MedicationRequest")
    notes: list[str] = []
    patient = _the_patient(requests, found)
    items = [_item(request, found, notes) for request in requests]
    issued = [_issued_at(request, found) for request in requests]
    valid_until = [_valid_until(request, found) for request in requests]
    data = {
        "prescription_id": _prescription_id(requests, found),
        "consultation_id": _consultation_id(requests, found),
        "patient": _patient(patient, found),
        "prescriber": _prescriber(requests, found),
        "diagnosis_codes": _diagnosis_codes(requests, found, notes),
        "items": items,
        # One prescription, one validity: from its earliest line's start to its earliest line's end.
        "issued_at": min(issued),
        "valid_until": min(valid_until),
    }
    try:
        prescription = Prescription.model_validate(data)
    except ValidationError as error:
        raise _refuse(f"the bundle maps to a prescription the native contract refuses: {_brief(error)}") from None
    return Mapped(prescription, tuple(notes))


def _the_patient(requests: list[Any], found: _Resources) -> Any:
    patients = []
    for request in requests:
        subject = found.resolve(request.subject)
        if subject is None or subject.get_resource_type() != "Patient":
            raise _refuse(
                f"{found.label(request)}: subject {_target(request.subject)} is not a Patient in the bundle; "
                "the patient's address and phone are needed for delivery"
            )
        if all(subject is not p for p in patients):
            patients.append(subject)
    if len(patients) > 1:
        names = ", ".join(found.label(p) for p in patients)
        raise _refuse(f"MedicationRequests for {len(patients)} different patients ({names}): one bundle, one patient")
    return patients[0]


def _patient(patient: Any, found: _Resources) -> dict[str, Any]:
    label = found.label(patient)
    birth = patient.birthDate
    if birth is None:
        raise _refuse(f"{label} has no birthDate; the checks need the patient's age")
    if not isinstance(birth, date):
        raise _refuse(f"{label}.birthDate {birth!r} is not a full date (year-month-day)")
    return {
        "patient_id": _business_id(patient, label),
        "name": _person_name(patient, label),
        "phone": _phone(patient, label),
        "date_of_birth": birth,
        "allergies": _allergies(patient, found),
        "address": _address(patient, label),
    }


def _business_id(resource: Any, label: str) -> str:
    """The first business identifier (stable across the sender's systems), else the logical id."""
    for identifier in resource.identifier or ():
        if identifier.value:
            return str(identifier.value)
    if resource.id:
        return str(resource.id)
    raise _refuse(f"{label} has neither an identifier nor an id")


def _person_name(resource: Any, label: str) -> str:
    names = [n for n in resource.name or () if n.use not in ("old", "maiden")]
    names.sort(key=lambda n: n.use not in ("official", "usual"))
    for name in names:
        text = name.text or " ".join([*(name.prefix or ()), *(name.given or ()), name.family or ""]).strip()
        if text:
            return text
    raise _refuse(f"{label} has no name")


def _phone(patient: Any, label: str) -> str:
    phones = [t for t in patient.telecom or () if t.system == "phone" and t.value and t.use != "old"]
    phones.sort(key=lambda t: t.use != "mobile")  # the courier calls from the road
    if not phones:
        raise _refuse(f"{label} has no telecom with system phone; the courier must be able to call the patient")
    return str(phones[0].value)


def _address(patient: Any, label: str) -> dict[str, Any]:
    # Goods go to a physical address: not an old one, not a postal box.
    candidates = [a for a in patient.address or () if a.use != "old" and a.type != "postal"]
    candidates.sort(key=lambda a: a.use != "home")
    if not candidates:
        raise _refuse(f"{label} has no current physical address to deliver to")
    address = candidates[0]
    where = f"{label}'s {address.use or 'first'} address"
    latitude, longitude = _geolocation(address)
    if latitude is None or longitude is None:
        raise _refuse(
            f"{where} has no coordinates (extension {GEOLOCATION} with latitude and longitude); "
            "couriers are dispatched by coordinates"
        )
    line = ", ".join(address.line or ()) or address.text
    return {
        "line": line,
        "town": address.city,
        "postcode": address.postalCode,
        "coordinates": {"latitude": float(latitude), "longitude": float(longitude)},
    }


def _geolocation(address: Any) -> tuple[Decimal | None, Decimal | None]:
    for extension in address.extension or ():
        if extension.url == GEOLOCATION:
            parts = {part.url: part.valueDecimal for part in extension.extension or ()}
            return parts.get("latitude"), parts.get("longitude")
    return None, None


def _allergies(patient: Any, found: _Resources) -> list[str]:
    allergies: list[str] = []
    for allergy in found.of_type("AllergyIntolerance"):
        label = found.label(allergy)
        if found.resolve(allergy.patient) is not patient:
            # An allergy the checks would not see is a safety hole: refuse rather than drop it.
            raise _refuse(f"{label} is about {_target(allergy.patient)}, not the prescription's patient")
        if _code_in(allergy.clinicalStatus) in ("inactive", "resolved"):
            continue
        if _code_in(allergy.verificationStatus) in ("refuted", "entered-in-error"):
            continue
        concept = allergy.code
        codings = list(concept.coding or ()) if concept else []
        if any(c.system == SNOMED and c.code in NO_KNOWN_ALLERGY for c in codings):
            continue
        text = (concept.text if concept else None) or next(
            (c.display or c.code for c in codings if c.display or c.code), None
        )
        if not text:
            raise _refuse(f"{label} has no code the checks can read; a recorded allergy is never ignored")
        if text not in allergies:
            allergies.append(str(text))
    return allergies


def _prescriber(requests: list[Any], found: _Resources) -> dict[str, Any]:
    prescribers = []
    for request in requests:
        requester = found.resolve(request.requester)
        if requester is not None and requester.get_resource_type() == "PractitionerRole":
            requester = found.resolve(requester.practitioner)
        if requester is None or requester.get_resource_type() != "Practitioner":
            raise _refuse(
                f"{found.label(request)}: requester {_target(request.requester)} is not a Practitioner in the bundle"
            )
        if all(requester is not p for p in prescribers):
            prescribers.append(requester)
    if len(prescribers) > 1:
        raise _refuse(f"MedicationRequests signed by {len(prescribers)} different practitioners: one prescriber each")
    practitioner = prescribers[0]
    label = found.label(practitioner)
    return {
        "prescriber_id": _business_id(practitioner, label),
        "name": _person_name(practitioner, label),
        "licence_number": _licence(practitioner, label),
    }


def _licence(practitioner: Any, label: str) -> str:
    for identifier in practitioner.identifier or ():
        typed = identifier.type and any(
            c.system == V2_IDENTIFIER_TYPES and c.code in LICENCE_TYPE_CODES for c in identifier.type.coding or ()
        )
        if identifier.value and (typed or identifier.system == LICENCE_SYSTEM):
            return str(identifier.value)
    raise _refuse(
        f"{label} has no licence number: an identifier typed {V2_IDENTIFIER_TYPES} MD or LN, "
        f"or with system {LICENCE_SYSTEM}"
    )


def _prescription_id(requests: list[Any], found: _Resources) -> str:
    groups = {r.groupIdentifier.value for r in requests if r.groupIdentifier and r.groupIdentifier.value}
    ungrouped = [r for r in requests if not (r.groupIdentifier and r.groupIdentifier.value)]
    if len(groups) > 1:
        raise _refuse(f"several prescriptions in one bundle (groupIdentifier {', '.join(sorted(groups))})")
    if groups and ungrouped:
        raise _refuse(f"{found.label(ungrouped[0])} has no groupIdentifier while the others belong to {groups.pop()}")
    if groups:
        return str(groups.pop())
    first = requests[0]
    value = next((i.value for i in first.identifier or () if i.value), None)
    if value is None:
        raise _refuse(f"{found.label(first)} has neither groupIdentifier nor identifier: the prescription has no id")
    return str(value)


def _consultation_id(requests: list[Any], found: _Resources) -> str:
    consultations = set()
    for request in requests:
        reference = request.encounter
        if reference is None:
            continue
        encounter = found.resolve(reference)
        if encounter is not None:
            consultations.add(_business_id(encounter, found.label(encounter)))
        elif reference.identifier is not None and reference.identifier.value:
            consultations.add(str(reference.identifier.value))
        elif reference.reference and reference.reference.startswith("Encounter/"):
            consultations.add(reference.reference.removeprefix("Encounter/"))
        else:
            raise _refuse(f"{found.label(request)}: encounter {_target(reference)} is neither in the bundle nor named")
    if not consultations:
        raise _refuse("no MedicationRequest names its encounter, the consultation the prescription came from")
    if len(consultations) > 1:
        raise _refuse(f"MedicationRequests from {len(consultations)} consultations: {', '.join(sorted(consultations))}")
    return consultations.pop()


def _item(request: Any, found: _Resources, notes: list[str]) -> dict[str, Any]:
    label = found.label(request)
    if request.status != "active":
        raise _refuse(f"{label}.status is {request.status!r}; only active requests are dispensed")
    if request.intent not in ORDER_INTENTS:
        raise _refuse(f"{label}.intent is {request.intent!r}; only orders are dispensed, not proposals or plans")
    if request.doNotPerform:
        raise _refuse(f"{label} says doNotPerform: it forbids a medication rather than prescribing one")
    dispense = request.dispenseRequest
    if dispense is None:
        raise _refuse(f"{label} has no dispenseRequest; the pharmacy needs the quantity and the supply duration")
    if dispense.numberOfRepeatsAllowed:
        # The native prescription is filled once: each repeat is sent again as its own prescription.
        notes.append(f"{label}: numberOfRepeatsAllowed={dispense.numberOfRepeatsAllowed} not mapped; filled once")
    return {
        "drug_code": _drug_code(request, found, notes),
        "quantity": _quantity(dispense.quantity, label),
        "dosage_text": _dosage_text(request, label),
        "days_supply": _days(dispense.expectedSupplyDuration, label),
        "chronic": _code_in(request.courseOfTherapyType) == "continuous",
    }


def _drug_code(request: Any, found: _Resources, notes: list[str]) -> str:
    label = found.label(request)
    concept = request.medicationCodeableConcept
    if concept is None:
        medication = found.resolve(request.medicationReference, within=request)
        if medication is None or medication.get_resource_type() != "Medication":
            raise _refuse(f"{label}: medication {_target(request.medicationReference)} is not in the bundle")
        concept = medication.code
    codings = [c for c in (concept.coding if concept else None) or () if c.code]
    ours = next((c for c in codings if c.system == FORMULARY_SYSTEM), None)
    if ours is not None:
        return str(ours.code)
    if not codings:
        raise _refuse(f"{label}: the medication has no code, only text; the formulary needs a drug code")
    chosen = codings[0]
    notes.append(f"{label}: no {FORMULARY_SYSTEM} coding; {chosen.system or 'uncoded system'} code used as drug code")
    return str(chosen.code)


def _quantity(quantity: Any, label: str) -> int:
    if quantity is None or quantity.value is None:
        raise _refuse(f"{label}: dispenseRequest.quantity is missing; the pharmacy dispenses a stated quantity")
    value = Decimal(quantity.value)
    if value != value.to_integral_value():
        raise _refuse(f"{label}: dispenseRequest.quantity {value} is not a whole number of dispensing units")
    return int(value)


def _days(duration: Any, label: str) -> int:
    if duration is None or duration.value is None:
        raise _refuse(
            f"{label}: dispenseRequest.expectedSupplyDuration is missing; the formulary limits days of supply"
        )
    unit = duration.code if duration.system in (None, UCUM) and duration.code else None
    unit = unit or UNIT_ALIASES.get((duration.unit or "").strip().lower(), (duration.unit or "").strip())
    if unit not in DAYS_PER_UNIT:
        shown = duration.code or duration.unit or "none"
        raise _refuse(f"{label}: expectedSupplyDuration unit {shown!r} is not one of d, wk, mo")
    days = Decimal(duration.value) * DAYS_PER_UNIT[unit]
    if days != days.to_integral_value():
        raise _refuse(f"{label}: expectedSupplyDuration {duration.value} {unit} is not a whole number of days")
    return int(days)


def _dosage_text(request: Any, label: str) -> str:
    texts = [d.text.strip() for d in request.dosageInstruction or () if d.text and d.text.strip()]
    texts += [
        d.patientInstruction.strip() for d in request.dosageInstruction or () if d.patientInstruction and not d.text
    ]
    if not texts:
        raise _refuse(f"{label}: no dosageInstruction has a text; structured-only dosage is not translated")
    return "; ".join(texts)


def _issued_at(request: Any, found: _Resources) -> datetime:
    period = request.dispenseRequest.validityPeriod if request.dispenseRequest else None
    start = (period.start if period else None) or request.authoredOn
    if start is None:
        raise _refuse(f"{found.label(request)} has neither dispenseRequest.validityPeriod.start nor authoredOn")
    return _instant(start, f"{found.label(request)} issue date")


def _valid_until(request: Any, found: _Resources) -> datetime:
    period = request.dispenseRequest.validityPeriod if request.dispenseRequest else None
    if period is None or period.end is None:
        raise _refuse(
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
    raise _refuse(f"{what} {value!r} is not a full date")


def _diagnosis_codes(requests: list[Any], found: _Resources, notes: list[str]) -> list[str]:
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


def _code_in(concept: Any) -> str | None:
    codings = getattr(concept, "coding", None) or ()
    return next((c.code for c in codings if c.code), None)


def _target(reference: Any) -> str:
    if reference is None:
        return "(none)"
    if reference.reference:
        return reference.reference
    if reference.identifier is not None and reference.identifier.value:
        return f"identifier {reference.identifier.value}"
    return reference.display or "(empty reference)"


def _brief(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in error.errors()[:5])


# --- the native message ---------------------------------------------------------------------------


def message_id_of(bundle: Bundle, body: bytes, headers: Mapping[str, str]) -> str:
    """The message id a bundle travels under: the `message-id` header if the sender set one, else
    one derived from the bundle itself, so the same bundle delivered twice is recognised."""
    if headers.get("message-id"):
        return headers["message-id"]
    for candidate in (bundle.identifier.value if bundle.identifier else None, bundle.id):
        if candidate and _IDENTIFIER.match(str(candidate)):
            return str(candidate)
    return "sha256-" + hashlib.sha256(body).hexdigest()[:32]


def to_submission(body: bytes, headers: Mapping[str, str]) -> tuple[PrescriptionSubmitted, tuple[str, ...]]:
    """The PrescriptionSubmitted a signed FHIR bundle stands for, and the mapping's notes.

    Deterministic: the same bytes and headers give the same message (id, time and all), so a
    redelivery is a duplicate and never a replay with other content."""
    bundle = parse_bundle(body, headers)
    mapped = to_prescription(bundle)
    sender = headers.get(signing.SENDER_HEADER)
    if not sender:
        raise Refused("unsigned", f"a FHIR bundle is signed like any prescription; no {signing.SENDER_HEADER} header")
    prescription = mapped.prescription
    try:
        submitted = PrescriptionSubmitted(
            message_id=message_id_of(bundle, body, headers),
            occurred_at=bundle.timestamp or prescription.issued_at,
            correlation_id=prescription.prescription_id,
            producer=sender,
            sender_id=sender,
            prescription=prescription,
        )
    except ValidationError as error:
        raise _refuse(f"the bundle maps to a message the native contract refuses: {_brief(error)}") from None
    return submitted, mapped.notes


# --- statuses back out ----------------------------------------------------------------------------

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
