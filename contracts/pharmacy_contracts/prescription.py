"""Decisions of the prescription service on `prescription.decisions.v1`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .consultation import Address, Phone
from .envelope import Contract, Envelope, Identifier

ReasonCode = Literal[
    "UNKNOWN_DRUG",
    "QUANTITY_NOT_POSITIVE",
    "QUANTITY_ABOVE_MAXIMUM",
    "DAYS_SUPPLY_OUT_OF_RANGE",
    "PRESCRIPTION_EXPIRED",
    "PRESCRIPTION_NOT_YET_VALID",
    "VALIDITY_WINDOW_INVALID",
]


class Reason(Contract):
    """Why a prescription was refused: a code for machines, a sentence for people."""

    code: ReasonCode
    message: Annotated[str, Field(min_length=1, max_length=500)]
    item_index: int | None = Field(default=None, ge=0, description="Which item, when the reason is about one")


class ApprovedLine(Contract):
    drug_code: Identifier
    quantity: int = Field(gt=0)
    days_supply: int = Field(gt=0)


class DeliveryDetails(Contract):
    """What a courier needs to find the patient: no name, no diagnosis, no drugs."""

    address: Address
    contact_phone: Phone
    cold_chain: bool = False
    controlled: bool = False


class PrescriptionApproved(Envelope):
    type: Literal["prescription.approved"] = "prescription.approved"
    prescription_id: Identifier
    patient_id: Identifier
    lines: list[ApprovedLine] = Field(min_length=1)
    delivery: DeliveryDetails


class PrescriptionRejected(Envelope):
    type: Literal["prescription.rejected"] = "prescription.rejected"
    prescription_id: Identifier
    reasons: list[Reason] = Field(min_length=1)
