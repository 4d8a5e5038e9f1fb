"""Decisions of the prescription service on `prescription.decisions.v1`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .consultation import Address, Phone
from .envelope import Contract, Envelope, Identifier, UtcDatetime

ReasonCode = Literal[
    "UNKNOWN_DRUG",
    "QUANTITY_NOT_POSITIVE",
    "QUANTITY_ABOVE_MAXIMUM",
    "DAYS_SUPPLY_OUT_OF_RANGE",
    "PRESCRIPTION_EXPIRED",
    "PRESCRIPTION_NOT_YET_VALID",
    "VALIDITY_WINDOW_INVALID",
    "PRESCRIBER_UNKNOWN",
    "PRESCRIBER_LICENCE_EXPIRED",
    "ALLERGY_CONFLICT",
    "SEVERE_INTERACTION",
    "MODERATE_INTERACTION",
    "REFILL_TOO_SOON",
    "CONTROLLED_SUBSTANCE",
    "HIGH_RISK_DRUG",
    "PHARMACIST_REJECTED",
    "REVIEW_EXPIRED",
]
"""Rejections and holds share one vocabulary; `prescription.held_for_review` carries the hold codes."""


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
    reviewed_by: Identifier | None = Field(default=None, description="The pharmacist who released a hold")


class PrescriptionRejected(Envelope):
    type: Literal["prescription.rejected"] = "prescription.rejected"
    prescription_id: Identifier
    reasons: list[Reason] = Field(min_length=1)
    reviewed_by: Identifier | None = Field(default=None, description="The pharmacist who decided, if one did")


class PrescriptionHeld(Envelope):
    """The checks found something a pharmacist must look at; nothing moves until one decides."""

    type: Literal["prescription.held_for_review"] = "prescription.held_for_review"
    prescription_id: Identifier
    patient_id: Identifier
    reasons: list[Reason] = Field(min_length=1)
    escalate_at: UtcDatetime
    expires_at: UtcDatetime


class ReviewEscalated(Envelope):
    """A hold nobody decided in time: the pharmacist on duty is alerted. It expires later."""

    type: Literal["prescription.review_escalated"] = "prescription.review_escalated"
    prescription_id: Identifier
    held_since: UtcDatetime
    expires_at: UtcDatetime
    reasons: list[Reason] = Field(min_length=1)


class PrescriptionCancelled(Envelope):
    """Withdrawn by the upstream system or a pharmacist. Inventory and couriers undo what they did."""

    type: Literal["prescription.cancelled"] = "prescription.cancelled"
    prescription_id: Identifier
    reason: Annotated[str, Field(min_length=1, max_length=300)]
    requested_by: Annotated[str, Field(min_length=1, max_length=120)]
    was_approved: bool = Field(description="It had been approved, so stock or a courier may be involved")


# --- the pharmacist's commands on `prescription.reviews.v1` ------------------------------------


class ReviewDecided(Envelope):
    type: Literal["prescription.review_decided"] = "prescription.review_decided"
    prescription_id: Identifier
    decision: Literal["approve", "reject"]
    pharmacist_id: Identifier
    note: Annotated[str, Field(min_length=1, max_length=500)]


class CancellationOrdered(Envelope):
    """A pharmacist withdraws a prescription (a safety concern, a patient's call to the pharmacy)."""

    type: Literal["prescription.cancellation_ordered"] = "prescription.cancellation_ordered"
    prescription_id: Identifier
    pharmacist_id: Identifier
    reason: Annotated[str, Field(min_length=1, max_length=300)]
