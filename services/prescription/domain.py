"""Formulary rules. Pure functions of data: no I/O, the time is passed in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field

from pharmacy_contracts.consultation import Prescription
from pharmacy_contracts.prescription import Reason


class FormularyEntry(BaseModel):
    drug_code: str
    name: str
    form: str = "tablet"
    strength: str = ""
    max_quantity: int = Field(gt=0, description="Most dispensing units one prescription may ask for")
    max_days_supply: int = Field(gt=0)
    cold_chain: bool = False
    controlled: bool = False


class Verdict(BaseModel):
    """What the prescription service decided, kept as its record of the prescription."""

    prescription_id: str
    approved: bool
    reasons: list[Reason] = Field(default_factory=list)
    decided_at: datetime


@dataclass(frozen=True)
class Check:
    approved: bool
    reasons: tuple[Reason, ...]


def check_prescription(prescription: Prescription, formulary: Mapping[str, FormularyEntry], now: datetime) -> Check:
    """Every reason found, not just the first: a pharmacist wants the whole list."""
    reasons: list[Reason] = []
    if prescription.valid_until <= prescription.issued_at:
        reasons.append(Reason(code="VALIDITY_WINDOW_INVALID", message="valid-until is not after issued-at"))
    if now < prescription.issued_at:
        reasons.append(
            Reason(code="PRESCRIPTION_NOT_YET_VALID", message=f"issued at {prescription.issued_at:%Y-%m-%d %H:%M} UTC")
        )
    if now > prescription.valid_until:
        reasons.append(
            Reason(code="PRESCRIPTION_EXPIRED", message=f"expired at {prescription.valid_until:%Y-%m-%d %H:%M} UTC")
        )
    for index, item in enumerate(prescription.items):
        entry = formulary.get(item.drug_code)
        if entry is None:
            reasons.append(
                Reason(code="UNKNOWN_DRUG", message=f"{item.drug_code} is not in the formulary", item_index=index)
            )
            continue
        if item.quantity <= 0:
            reasons.append(
                Reason(
                    code="QUANTITY_NOT_POSITIVE", message=f"{entry.name}: quantity {item.quantity}", item_index=index
                )
            )
        elif item.quantity > entry.max_quantity:
            reasons.append(
                Reason(
                    code="QUANTITY_ABOVE_MAXIMUM",
                    message=f"{entry.name}: {item.quantity} units, at most {entry.max_quantity}",
                    item_index=index,
                )
            )
        if not 1 <= item.days_supply <= entry.max_days_supply:
            reasons.append(
                Reason(
                    code="DAYS_SUPPLY_OUT_OF_RANGE",
                    message=f"{entry.name}: {item.days_supply} days, allowed 1-{entry.max_days_supply}",
                    item_index=index,
                )
            )
    return Check(approved=not reasons, reasons=tuple(reasons))
