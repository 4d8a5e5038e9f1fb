"""The prescription's patient: the one Patient every MedicationRequest is about, mapped to the native
patient with name, phone (if any), date of birth, delivery address (with coordinates if the bundle
has them), current allergies, and the language they are told things in (if the bundle says).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from .bundle import Resources, code_in, target
from .identifiers import business_id, person_name
from .notes import Notes
from .refusal import refuse
from .systems import BCP47, GEOLOCATION, SNOMED

#: SNOMED "no known (drug / food / environmental) allergy": recorded absences, not allergies.
NO_KNOWN_ALLERGY = frozenset({"716186003", "409137002", "429625007", "428607008"})


def the_patient(requests: list[Any], found: Resources) -> Any:
    patients = []
    for request in requests:
        subject = found.resolve(request.subject)
        if subject is None or subject.get_resource_type() != "Patient":
            raise refuse(
                f"{found.label(request)}: subject {target(request.subject)} is not a Patient in the bundle; "
                "the patient's address and phone are needed for delivery"
            )
        if all(subject is not p for p in patients):
            patients.append(subject)
    if len(patients) > 1:
        names = ", ".join(found.label(p) for p in patients)
        raise refuse(f"MedicationRequests for {len(patients)} different patients ({names}): one bundle, one patient")
    return patients[0]


def native_patient(patient: Any, found: Resources, notes: Notes) -> dict[str, Any]:
    label = found.label(patient)
    birth = _birth_date(patient, label, notes)
    return {
        "patient_id": business_id(patient, label),
        "name": person_name(patient, label),
        "phone": _phone(patient, label, notes),
        "date_of_birth": birth,
        "allergies": _allergies(patient, found),
        "address": _address(patient, label, notes),
        "preferred_language": _language(patient, label, notes),
    }


def _birth_date(patient: Any, label: str, notes: Notes) -> date:
    """A full date; a year-month or a year (FHIR allows both) is read from its first day, and said so."""
    birth = patient.birthDate
    if birth is None:
        raise refuse(f"{label} has no birthDate; the checks need the patient's age")
    if isinstance(birth, date):
        return birth
    parts = str(birth).split("-")
    if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
        year, month = int(parts[0]), int(parts[1]) if len(parts) == 2 else 1
        notes.add(f"{label}.birthDate is given as {birth}: read as {year:04d}-{month:02d}-01 for the age checks")
        return date(year, month, 1)
    raise refuse(f"{label}.birthDate {birth!r} is not a date")


def _phone(patient: Any, label: str, notes: Notes) -> str | None:
    phones = [t for t in patient.telecom or () if t.system in ("phone", "sms") and t.value and t.use != "old"]
    phones.sort(key=lambda t: (t.use != "mobile", t.system != "phone"))  # the courier calls from the road
    if not phones:
        notes.add(f"{label} has no phone: the courier is told so")
        return None
    return str(phones[0].value)


#: The languages patients are told things in (patient.notifications.v1), by their BCP 47 base language.
TOLD_IN = ("ug", "zh", "en")


def _language(patient: Any, label: str, notes: Notes) -> str | None:
    """The first language of Patient.communication that patients can be told things in, the
    preferred ones first, by its base language (ug-CN and ug-Arab-CN are Uyghur, zh-CN and
    zh-Hans Chinese, en-GB English). None when it names none: the service's default applies."""
    communication = sorted(patient.communication or (), key=lambda c: c.preferred is not True)
    spoken = []
    for entry in communication:
        concept = entry.language
        codes = [c.code for c in (concept.coding or ()) if c.code and c.system in (None, BCP47)] if concept else []
        for code in codes:
            base = str(code).replace("_", "-").split("-")[0].lower()
            if base in TOLD_IN:
                return base
            spoken.append(str(code))
    if spoken:
        notes.add(
            f"{label} speaks {', '.join(dict.fromkeys(spoken))}: notifications are not written in it, "
            "the default language applies"
        )
    return None


def _address(patient: Any, label: str, notes: Notes) -> dict[str, Any]:
    # Goods go to a physical address: not an old one, not a postal box.
    candidates = [a for a in patient.address or () if a.use != "old" and a.type != "postal"]
    candidates.sort(key=lambda a: a.use != "home")
    if not candidates:
        raise refuse(f"{label} has no current physical address to deliver to")
    address = candidates[0]
    where = f"{label}'s {address.use or 'first'} address"
    latitude, longitude = _geolocation(address)
    coordinates = None
    if latitude is None or longitude is None:
        notes.add(f"{where} has no coordinates (extension {GEOLOCATION}): found by its text")
    else:
        coordinates = {"latitude": float(latitude), "longitude": float(longitude)}
    lines = [str(line).strip() for line in address.line or () if line and str(line).strip()]
    line = ", ".join(lines) or (address.text or "").strip()
    if not line:
        raise refuse(f"{where} has neither lines nor text: no door to deliver to")
    town = _town(address, lines, where, notes)
    return {"line": line, "town": town, "postcode": address.postalCode, "coordinates": coordinates}


def _town(address: Any, lines: list[str], where: str, notes: Notes) -> str:
    """The city; else the district; else the address's last line (many national profiles put the
    town there, and only the street in the first)."""
    if address.city:
        return str(address.city)
    for part, value in (("district", address.district), ("last line", lines[-1] if len(lines) > 1 else None)):
        if value:
            notes.add(f"{where} has no city: the town is taken from its {part}, {value!r}")
            return str(value)
    raise refuse(f"{where} names no town (no city, no district, one line only)")


def _geolocation(address: Any) -> tuple[Decimal | None, Decimal | None]:
    for extension in address.extension or ():
        if extension.url == GEOLOCATION:
            parts = {part.url: part.valueDecimal for part in extension.extension or ()}
            return parts.get("latitude"), parts.get("longitude")
    return None, None


def _allergies(patient: Any, found: Resources) -> list[str]:
    allergies: list[str] = []
    for allergy in found.of_type("AllergyIntolerance"):
        label = found.label(allergy)
        if found.resolve(allergy.patient) is not patient:
            # An allergy the checks would not see is a safety hole: refuse rather than drop it.
            raise refuse(f"{label} is about {target(allergy.patient)}, not the prescription's patient")
        if code_in(allergy.clinicalStatus) in ("inactive", "resolved"):
            continue
        if code_in(allergy.verificationStatus) in ("refuted", "entered-in-error"):
            continue
        concept = allergy.code
        codings = list(concept.coding or ()) if concept else []
        if any(c.system == SNOMED and c.code in NO_KNOWN_ALLERGY for c in codings):
            continue
        text = (concept.text if concept else None) or next(
            (c.display or c.code for c in codings if c.display or c.code), None
        )
        if not text:
            raise refuse(f"{label} has no code the checks can read; a recorded allergy is never ignored")
        if text not in allergies:
            allergies.append(str(text))
    return allergies
