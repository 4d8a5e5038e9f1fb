"""One MedicationRequest as one native prescription line: which requests are dispensable, the drug
code, the quantity and its unit, the days of supply (stated, or worked out from the dosage), the
dosage text, the course (acute or long-term), and what the pharmacist must see: substitution,
notes, the controlled-drug schedule, endorsements.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .bundle import Resources, code_in, target
from .dosage import daily_dose, dosage_text
from .notes import Notes
from .refusal import refuse
from .systems import CONTROLLED_DRUG_EXTENSIONS, ENDORSEMENT_EXTENSIONS, FORMULARY_SYSTEM, UCUM

ORDER_INTENTS = frozenset({"order", "original-order", "instance-order", "filler-order", "reflex-order"})
#: Courses of therapy that are long-term: the formulary's chronic limits apply.
LONG_TERM_COURSES = frozenset({"continuous", "continuous-repeat-dispensing", "seasonal"})
#: Days per unit of expectedSupplyDuration (UCUM code or its plain-English unit). A month is 30
#: days, as pharmacies count a month's supply; years are refused rather than guessed.
DAYS_PER_UNIT = {"d": 1, "wk": 7, "mo": 30}
UNIT_ALIASES = {"day": "d", "days": "d", "week": "wk", "weeks": "wk", "month": "mo", "months": "mo"}
#: Quantities counted in packs: multiplied out by the pack size the Medication gives.
PACKS = frozenset({"{package}", "package", "pack", "packs", "packung"})
#: Codings that say what kind of medication entry this is, not which drug (Germany's eRezept).
NOT_DRUG_CODES = frozenset({"https://fhir.kbv.de/CodeSystem/KBV_CS_ERP_Medication_Type"})
#: Quantities written in litres are dispensed in millilitres (exactly: a whole number of ml or refused).
IN_MILLILITRES = {"l": 1000, "litre": 1000, "liter": 1000, "ml": 1, "millilitre": 1, "milliliter": 1}
#: What the line reads of a MedicationRequest; anything else present is named in the mapping notes.
READ_ELEMENTS = frozenset(
    {
        "resource_type", "id", "meta", "text", "identifier", "status", "intent", "doNotPerform",
        "medicationCodeableConcept", "medicationReference", "subject", "encounter", "authoredOn", "requester",
        "reasonCode", "reasonReference", "groupIdentifier", "courseOfTherapyType", "dosageInstruction",
        "dispenseRequest", "substitution", "note", "extension", "contained",
    }
)  # fmt: skip
READ_DISPENSE_ELEMENTS = frozenset(
    {"validityPeriod", "numberOfRepeatsAllowed", "quantity", "expectedSupplyDuration", "extension", "id"}
)


def native_item(request: Any, found: Resources, notes: Notes) -> dict[str, Any]:
    label = found.label(request)
    if request.status != "active":
        raise refuse(f"{label}.status is {request.status!r}; only active requests are dispensed")
    if request.intent not in ORDER_INTENTS:
        raise refuse(f"{label}.intent is {request.intent!r}; only orders are dispensed, not proposals or plans")
    if request.doNotPerform:
        raise refuse(f"{label} says doNotPerform: it forbids a medication rather than prescribing one")
    dispense = request.dispenseRequest
    if dispense is None:
        raise refuse(f"{label} has no dispenseRequest; the pharmacy needs the quantity to dispense")
    medication = _medication(request, found)
    quantity, unit = _quantity(dispense.quantity, medication, label, notes)
    days, basis = _days(request, quantity, unit, label, notes)
    _note_unread(request, label, notes)
    return {
        "drug_code": _drug_code(request, medication, label, notes),
        "quantity": quantity,
        "quantity_unit": unit,
        "dosage_text": _dosage_text(request, label, notes),
        "days_supply": days,
        "days_supply_basis": basis,
        "chronic": _long_term(request, label, notes),
        "substitution_allowed": _substitution_allowed(request),
        "note_to_pharmacist": _notes_to_pharmacist(request),
        "controlled_drug": controlled_drug(request),
        "endorsements": _endorsements(request),
    }


def _medication(request: Any, found: Resources) -> Any | None:
    """The Medication resource the request points at (None when it codes the medication itself)."""
    if request.medicationCodeableConcept is not None:
        return None
    medication = found.resolve(request.medicationReference, within=request)
    if medication is None or medication.get_resource_type() != "Medication":
        raise refuse(f"{found.label(request)}: medication {target(request.medicationReference)} is not in the bundle")
    return medication


def _drug_code(request: Any, medication: Any | None, label: str, notes: Notes) -> str:
    concept = request.medicationCodeableConcept if medication is None else medication.code
    codings = [c for c in (concept.coding if concept else None) or () if c.code and c.system not in NOT_DRUG_CODES]
    ours = next((c for c in codings if c.system == FORMULARY_SYSTEM), None)
    if ours is not None:
        return str(ours.code)
    if not codings:
        raise refuse(f"{label}: the medication has no code, only text; the formulary needs a drug code")
    chosen = codings[0]
    shown = f" ({chosen.display})" if chosen.display else ""
    notes.add(f"{label}: no {FORMULARY_SYSTEM} coding; {chosen.system or 'uncoded'} code {chosen.code}{shown} used")
    return str(chosen.code)


def _quantity(quantity: Any, medication: Any | None, label: str, notes: Notes) -> tuple[int, str | None]:
    if quantity is None or quantity.value is None:
        raise refuse(f"{label}: dispenseRequest.quantity is missing; the pharmacy dispenses a stated quantity")
    value = Decimal(quantity.value)
    unit = (quantity.unit or (quantity.code if quantity.system == UCUM else None) or "").strip() or None
    pack = _pack_size(medication) if unit is not None and unit.lower() in PACKS else None
    if pack is not None:
        pack_size, pack_unit = pack
        notes.add(f"{label}: {value} {unit} of {pack_size} {pack_unit or 'units'} dispensed as {value * pack_size}")
        value, unit = value * pack_size, pack_unit
    factor = IN_MILLILITRES.get(unit.lower()) if unit else None
    if factor is not None and factor != 1:
        notes.add(f"{label}: {value} {unit} dispensed as {value * factor} ml")
        value, unit = value * factor, "ml"
    if value != value.to_integral_value():
        raise refuse(
            f"{label}: dispenseRequest.quantity {value} {unit or ''} is not a whole number of dispensing units"
        )
    return int(value), unit


def _days(request: Any, quantity: int, unit: str | None, label: str, notes: Notes) -> tuple[int | None, str | None]:
    """Stated by expectedSupplyDuration; else the quantity over the structured daily dose; else None
    (the prescription service takes the formulary's default for the drug)."""
    duration = request.dispenseRequest.expectedSupplyDuration
    if duration is not None and duration.value is not None:
        return _stated_days(duration, label), "prescribed"
    dose = daily_dose(list(request.dosageInstruction or ()))
    if dose is not None and (dose.unit is None or unit is None or _same_unit(dose.unit, unit)):
        days = int(Decimal(quantity) / dose.amount)
        if days >= 1:
            notes.add(f"{label}: days of supply worked out from the dosage: {quantity} at {dose.amount} a day")
            return days, "dosage"
    notes.add(f"{label}: no expectedSupplyDuration, nor a dosage to work it out; the formulary's default applies")
    return None, None


def _pack_size(medication: Any | None) -> tuple[Decimal, str | None] | None:
    """Units per pack, from Medication.amount (numerator per one pack), when it says so exactly."""
    amount = medication.amount if medication is not None else None
    numerator = amount.numerator if amount is not None else None
    if numerator is None or numerator.value is None:
        return None
    if amount.denominator is not None and amount.denominator.value not in (None, 1):
        return None
    return Decimal(numerator.value), (numerator.unit or numerator.code)


def _stated_days(duration: Any, label: str) -> int:
    unit = duration.code if duration.system in (None, UCUM) and duration.code else None
    unit = unit or UNIT_ALIASES.get((duration.unit or "").strip().lower(), (duration.unit or "").strip())
    if unit not in DAYS_PER_UNIT:
        shown = duration.code or duration.unit or "none"
        raise refuse(f"{label}: expectedSupplyDuration unit {shown!r} is not one of d, wk, mo")
    days = Decimal(duration.value) * DAYS_PER_UNIT[unit]
    if days != days.to_integral_value():
        raise refuse(f"{label}: expectedSupplyDuration {duration.value} {unit} is not a whole number of days")
    return int(days)


def _same_unit(a: str, b: str) -> bool:
    def singular(word: str) -> str:
        word = word.strip().lower().replace("(s)", "")
        return word[:-1] if word.endswith("s") else word

    return singular(a) == singular(b)


#: A prescription may leave the dosage to a plan the patient already has (Germany's "Dosierung: nein").
AS_DIRECTED = "as directed by the prescriber (the prescription gives no dosage)"


def _dosage_text(request: Any, label: str, notes: Notes) -> str:
    texts = [text for dosage in request.dosageInstruction or () if (text := dosage_text(dosage))]
    if not texts:
        notes.add(f"{label}: no dosage (no text, no dose and timing): dispensed {AS_DIRECTED}")
        return AS_DIRECTED
    return "; ".join(texts)


def _long_term(request: Any, label: str, notes: Notes) -> bool:
    course = code_in(request.courseOfTherapyType)
    repeats = request.dispenseRequest.numberOfRepeatsAllowed
    if repeats:
        # The native prescription is filled once: each issue of a repeat arrives as its own prescription.
        notes.add(f"{label}: numberOfRepeatsAllowed={repeats}; this issue is filled once, as long-term therapy")
    return course in LONG_TERM_COURSES or bool(repeats)


def _substitution_allowed(request: Any) -> bool:
    substitution = request.substitution
    if substitution is None:
        return True
    if substitution.allowedBoolean is not None:
        return bool(substitution.allowedBoolean)
    # v3 ActSubstanceAdminSubstitutionCode: N = none allowed; E, EC, G, TE... are kinds allowed.
    return code_in(substitution.allowedCodeableConcept) not in ("N", None)


def _notes_to_pharmacist(request: Any) -> str | None:
    texts = [n.text.strip() for n in request.note or () if n.text and n.text.strip()]
    return "\n".join(texts)[:1000] or None


def controlled_drug(request: Any) -> str | None:
    """The schedule and the quantity in words, from a national controlled-drug extension."""
    for extension in request.extension or ():
        if extension.url in CONTROLLED_DRUG_EXTENSIONS:
            parts = {part.url: part for part in extension.extension or ()}
            schedule = parts.get("schedule")
            words = parts.get("quantityWords")
            schedule_code = code_in_coding(schedule.valueCoding) if schedule is not None else None
            said = [
                f"schedule {schedule_code}" if schedule_code else None,
                f"quantity in words: {words.valueString}" if words is not None and words.valueString else None,
            ]
            return ", ".join(s for s in said if s) or "controlled drug"
    return None


def code_in_coding(coding: Any) -> str | None:
    if coding is None:
        return None
    return str(coding.display or coding.code) if (coding.display or coding.code) else None


def _endorsements(request: Any) -> list[str]:
    found = []
    for extension in request.extension or ():
        if extension.url in ENDORSEMENT_EXTENSIONS and extension.valueCodeableConcept is not None:
            concept = extension.valueCodeableConcept
            found += [str(c.code) for c in concept.coding or () if c.code] or ([concept.text] if concept.text else [])
    return found[:10]


def _note_unread(request: Any, label: str, notes: Notes) -> None:
    """Every element of the request the line does not read, and every extension it does not know."""
    present = {name for name, value in request if value not in (None, [], {})}
    unread = sorted(present - READ_ELEMENTS)
    dispense = request.dispenseRequest
    unread += sorted(
        f"dispenseRequest.{name}"
        for name, value in dispense
        if value not in (None, [], {}) and name not in READ_DISPENSE_ELEMENTS
    )
    known = CONTROLLED_DRUG_EXTENSIONS | ENDORSEMENT_EXTENSIONS
    unread += [f"extension {e.url.rsplit('/', 1)[-1]}" for e in request.extension or () if e.url not in known]
    unread += [f"dispenseRequest.extension {e.url.rsplit('/', 1)[-1]}" for e in dispense.extension or ()]
    if unread:
        notes.add(f"{label}: not used: {', '.join(dict.fromkeys(unread))}")


def _present(element: Any) -> list[str]:
    """The elements set on a FHIR element (primitive extensions, `x__ext`, count as their element)."""
    names = (name.removesuffix("__ext") for name, value in element if value not in (None, [], {}))
    return sorted(set(names))
