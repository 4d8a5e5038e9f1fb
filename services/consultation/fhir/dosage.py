"""Structured dosage (FHIR `Dosage`: dose, timing, route) as the sentence a pharmacist reads, and as
a daily dose from which the days a quantity lasts are worked out when the bundle does not say.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: Days per unit of a timing's period (UCUM); years are not a dosing period anyone writes.
PERIOD_DAYS = {"min": Decimal(1) / 1440, "h": Decimal(1) / 24, "d": Decimal(1), "wk": Decimal(7), "mo": Decimal(30)}
PERIOD_WORDS = {"min": "minute", "h": "hour", "d": "day", "wk": "week", "mo": "month"}
#: Event timing codes (v3 TimingEvent and FHIR event-timing) as words.
WHEN_WORDS = {
    "MORN": "morning",
    "MORN.early": "early morning",
    "MORN.late": "late morning",
    "NOON": "noon",
    "AFT": "afternoon",
    "EVE": "evening",
    "NIGHT": "night",
    "HS": "bedtime",
    "WAKE": "on waking",
    "C": "with a meal",
    "CM": "with breakfast",
    "CD": "with lunch",
    "CV": "with dinner",
    "AC": "before a meal",
    "ACM": "before breakfast",
    "ACD": "before lunch",
    "ACV": "before dinner",
    "PC": "after a meal",
    "PCM": "after breakfast",
    "PCD": "after lunch",
    "PCV": "after dinner",
}


@dataclass(frozen=True)
class DailyDose:
    amount: Decimal
    unit: str | None


def dosage_text(dosage: Any) -> str | None:
    """The dosage as a sentence: its own text, else one made from its structure (None: nothing to say)."""
    if dosage.text and dosage.text.strip():
        return str(dosage.text.strip())
    parts = [p for p in (_dose_words(dosage), _timing_words(dosage.timing), _route_words(dosage)) if p]
    if dosage.asNeededBoolean or dosage.asNeededCodeableConcept is not None:
        parts.append("when needed")
    if dosage.patientInstruction and dosage.patientInstruction.strip():
        parts.append(f"({dosage.patientInstruction.strip()})")
    return " ".join(parts) or None


def daily_dose(dosages: list[Any]) -> DailyDose | None:
    """The amount taken per day over every dosage line, or None when it cannot be told exactly
    (as needed, a range, a taper in steps, no timing, doses in different units)."""
    total, unit = Decimal(0), None
    steps = {d.sequence for d in dosages if d.sequence is not None}
    if not dosages or len(steps) > 1:
        return None
    for dosage in dosages:
        if dosage.asNeededBoolean or dosage.asNeededCodeableConcept is not None:
            return None
        dose = _dose(dosage)
        per_day = _times_per_day(dosage.timing)
        if dose is None or per_day is None:
            return None
        value, dose_unit = dose
        if unit is not None and dose_unit is not None and dose_unit != unit:
            return None
        unit = unit or dose_unit
        total += value * per_day
    return DailyDose(total, unit) if total > 0 else None


def _dose(dosage: Any) -> tuple[Decimal, str | None] | None:
    for dose_and_rate in dosage.doseAndRate or ():
        quantity = dose_and_rate.doseQuantity
        if quantity is not None and quantity.value is not None:
            return Decimal(quantity.value), _unit_of(quantity)
    return None


def _unit_of(quantity: Any) -> str | None:
    unit = quantity.unit or quantity.code
    return str(unit).strip().lower() if unit else None


def _times_per_day(timing: Any) -> Decimal | None:
    repeat = timing.repeat if timing is not None else None
    if repeat is None:
        return None
    events = len(repeat.when or ()) + len(repeat.timeOfDay or ())
    if repeat.period is not None and repeat.periodUnit in PERIOD_DAYS:
        frequency = Decimal(repeat.frequency or max(events, 1))
        return frequency / (Decimal(repeat.period) * PERIOD_DAYS[repeat.periodUnit])
    return Decimal(events) if events else None


def _dose_words(dosage: Any) -> str | None:
    for dose_and_rate in dosage.doseAndRate or ():
        if (quantity := dose_and_rate.doseQuantity) is not None and quantity.value is not None:
            return " ".join(p for p in (_number(quantity.value), _unit_of(quantity)) if p)
        if (dose_range := dose_and_rate.doseRange) is not None and dose_range.low and dose_range.high:
            return f"{_number(dose_range.low.value)}-{_number(dose_range.high.value)} {_unit_of(dose_range.high) or ''}"
    return None


def _timing_words(timing: Any) -> str | None:
    if timing is None:
        return None
    if timing.code is not None and (timing.code.text or timing.code.coding):
        return str(timing.code.text or timing.code.coding[0].display or timing.code.coding[0].code)
    repeat = timing.repeat
    if repeat is None:
        return None
    words = []
    if repeat.period is not None and repeat.periodUnit in PERIOD_WORDS:
        frequency = repeat.frequency or 1
        unit = PERIOD_WORDS[repeat.periodUnit]
        every = f"a {unit}" if Decimal(repeat.period) == 1 else f"every {_number(repeat.period)} {unit}s"
        words.append(("once" if frequency == 1 else f"{frequency} times") + f" {every}")
    events = [WHEN_WORDS.get(code, code) for code in repeat.when or ()]
    events += [str(time)[:5] for time in repeat.timeOfDay or ()]
    if events:
        words.append(f"({', '.join(events)})")
    if repeat.boundsDuration is not None and repeat.boundsDuration.value is not None:
        words.append(f"for {_number(repeat.boundsDuration.value)} {repeat.boundsDuration.unit or ''}".strip())
    return " ".join(words) or None


def _route_words(dosage: Any) -> str | None:
    route = dosage.route
    if route is None:
        return None
    text = route.text or next((c.display for c in route.coding or () if c.display), None)
    return str(text).lower() if text else None


def _number(value: Any) -> str:
    return format(Decimal(value).normalize(), "f")
