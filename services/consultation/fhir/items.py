"""One MedicationRequest as one native prescription line: which requests are dispensable, the drug
code, the quantity, the days of supply (from expectedSupplyDuration) and the dosage text.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .bundle import Resources, code_in, target
from .refusal import refuse
from .systems import FORMULARY_SYSTEM, UCUM

ORDER_INTENTS = frozenset({"order", "original-order", "instance-order"})
#: Days per unit of expectedSupplyDuration (UCUM code or its plain-English unit). A month is 30
#: days, as pharmacies count a month's supply; years are refused rather than guessed.
DAYS_PER_UNIT = {"d": 1, "wk": 7, "mo": 30}
UNIT_ALIASES = {"day": "d", "days": "d", "week": "wk", "weeks": "wk", "month": "mo", "months": "mo"}


def native_item(request: Any, found: Resources, notes: list[str]) -> dict[str, Any]:
    label = found.label(request)
    if request.status != "active":
        raise refuse(f"{label}.status is {request.status!r}; only active requests are dispensed")
    if request.intent not in ORDER_INTENTS:
        raise refuse(f"{label}.intent is {request.intent!r}; only orders are dispensed, not proposals or plans")
    if request.doNotPerform:
        raise refuse(f"{label} says doNotPerform: it forbids a medication rather than prescribing one")
    dispense = request.dispenseRequest
    if dispense is None:
        raise refuse(f"{label} has no dispenseRequest; the pharmacy needs the quantity and the supply duration")
    if dispense.numberOfRepeatsAllowed:
        # The native prescription is filled once: each repeat is sent again as its own prescription.
        notes.append(f"{label}: numberOfRepeatsAllowed={dispense.numberOfRepeatsAllowed} not mapped; filled once")
    return {
        "drug_code": _drug_code(request, found, notes),
        "quantity": _quantity(dispense.quantity, label),
        "dosage_text": _dosage_text(request, label),
        "days_supply": _days(dispense.expectedSupplyDuration, label),
        "chronic": code_in(request.courseOfTherapyType) == "continuous",
    }


def _drug_code(request: Any, found: Resources, notes: list[str]) -> str:
    label = found.label(request)
    concept = request.medicationCodeableConcept
    if concept is None:
        medication = found.resolve(request.medicationReference, within=request)
        if medication is None or medication.get_resource_type() != "Medication":
            raise refuse(f"{label}: medication {target(request.medicationReference)} is not in the bundle")
        concept = medication.code
    codings = [c for c in (concept.coding if concept else None) or () if c.code]
    ours = next((c for c in codings if c.system == FORMULARY_SYSTEM), None)
    if ours is not None:
        return str(ours.code)
    if not codings:
        raise refuse(f"{label}: the medication has no code, only text; the formulary needs a drug code")
    chosen = codings[0]
    notes.append(f"{label}: no {FORMULARY_SYSTEM} coding; {chosen.system or 'uncoded system'} code used as drug code")
    return str(chosen.code)


def _quantity(quantity: Any, label: str) -> int:
    if quantity is None or quantity.value is None:
        raise refuse(f"{label}: dispenseRequest.quantity is missing; the pharmacy dispenses a stated quantity")
    value = Decimal(quantity.value)
    if value != value.to_integral_value():
        raise refuse(f"{label}: dispenseRequest.quantity {value} is not a whole number of dispensing units")
    return int(value)


def _days(duration: Any, label: str) -> int:
    if duration is None or duration.value is None:
        raise refuse(f"{label}: dispenseRequest.expectedSupplyDuration is missing; the formulary limits days of supply")
    unit = duration.code if duration.system in (None, UCUM) and duration.code else None
    unit = unit or UNIT_ALIASES.get((duration.unit or "").strip().lower(), (duration.unit or "").strip())
    if unit not in DAYS_PER_UNIT:
        shown = duration.code or duration.unit or "none"
        raise refuse(f"{label}: expectedSupplyDuration unit {shown!r} is not one of d, wk, mo")
    days = Decimal(duration.value) * DAYS_PER_UNIT[unit]
    if days != days.to_integral_value():
        raise refuse(f"{label}: expectedSupplyDuration {duration.value} {unit} is not a whole number of days")
    return int(days)


def _dosage_text(request: Any, label: str) -> str:
    texts = [d.text.strip() for d in request.dosageInstruction or () if d.text and d.text.strip()]
    texts += [
        d.patientInstruction.strip() for d in request.dosageInstruction or () if d.patientInstruction and not d.text
    ]
    if not texts:
        raise refuse(f"{label}: no dosageInstruction has a text; structured-only dosage is not translated")
    return "; ".join(texts)
