"""Decisions of the prescription service on `prescription.decisions.v1`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from .consultation import EXAMPLE_PRESCRIPTION, Address, CancellationReason, Phone, RequestedBy
from .envelope import Contract, Envelope, Identifier, UtcDatetime, example_id, wire_example
from .limits import MAX_DAYS_SUPPLY, MAX_ITEMS, MULTILINE, ONE_LINE, Units

Explanation = Annotated[str, Field(min_length=1, max_length=500), MULTILINE]

ReasonCode = Literal[
    "UNKNOWN_DRUG",
    "QUANTITY_NOT_POSITIVE",
    "QUANTITY_ABOVE_MAXIMUM",
    "DAYS_SUPPLY_OUT_OF_RANGE",
    "DAYS_SUPPLY_NOT_STATED",
    "QUANTITY_UNIT_MISMATCH",
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
    message: Explanation
    item_index: int | None = Field(
        default=None, ge=0, lt=MAX_ITEMS, description="Which item, when the reason is about one"
    )


class ApprovedLine(Contract):
    drug_code: Identifier
    quantity: Units
    days_supply: int = Field(gt=0, le=MAX_DAYS_SUPPLY)


class DeliveryDetails(Contract):
    """What a courier needs to find the patient: no name, no diagnosis, no drugs."""

    address: Address
    contact_phone: Phone | None = None
    cold_chain: bool = False
    controlled: bool = False
    urgent: bool = Field(default=False, description="An urgent medicine: its delivery round drives to it first")


_RX = EXAMPLE_PRESCRIPTION["prescription_id"]
_PATIENT = EXAMPLE_PRESCRIPTION["patient"]["patient_id"]
# Every check's verdict answers the same accepted prescription.
_VERDICT = {
    "correlation_id": _RX,
    "causation_id": example_id("consultation.prescription_accepted"),
    "producer": "prescription",
    "prescription_id": _RX,
}
_HOLD = {"code": "REFILL_TOO_SOON", "message": "MET500 was dispensed 20 days ago for 90 days", "item_index": 0}


class PrescriptionApproved(Envelope):
    """Every check passed (or a pharmacist released the hold): inventory reserves, courier prepares the delivery."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_VERDICT,
            patient_id=_PATIENT,
            lines=[
                {"drug_code": "MET500", "quantity": 180, "days_supply": 90},
                {"drug_code": "AML5", "quantity": 90, "days_supply": 90},
            ],
            delivery={"address": EXAMPLE_PRESCRIPTION["patient"]["address"], "contact_phone": "+7 701 555 0134"},
        )
    )

    type: Literal["prescription.approved"] = "prescription.approved"
    prescription_id: Identifier
    patient_id: Identifier
    lines: list[ApprovedLine] = Field(min_length=1, max_length=MAX_ITEMS, description="One per prescription item")
    delivery: DeliveryDetails
    reviewed_by: Identifier | None = Field(default=None, description="The pharmacist who released a hold")


class PrescriptionRejected(Envelope):
    """Refused by the checks, by a pharmacist, or because a review expired; nothing is reserved."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_VERDICT,
            reasons=[{"code": "QUANTITY_ABOVE_MAXIMUM", "message": "MET500: 400 units, at most 360", "item_index": 0}],
        )
    )

    type: Literal["prescription.rejected"] = "prescription.rejected"
    prescription_id: Identifier
    reasons: list[Reason] = Field(min_length=1)
    reviewed_by: Identifier | None = Field(default=None, description="The pharmacist who decided, if one did")


class PrescriptionHeld(Envelope):
    """The checks found something a pharmacist must look at; nothing moves until one decides."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_VERDICT,
            patient_id=_PATIENT,
            reasons=[_HOLD],
            escalate_at="2026-11-25T08:30:05Z",
            expires_at="2026-11-25T12:00:05Z",
        )
    )

    type: Literal["prescription.held_for_review"] = "prescription.held_for_review"
    prescription_id: Identifier
    patient_id: Identifier
    reasons: list[Reason] = Field(min_length=1)
    escalate_at: UtcDatetime
    expires_at: UtcDatetime


class ReviewEscalated(Envelope):
    """A hold nobody decided in time: the pharmacist on duty is alerted. It expires later."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="prescription",
            prescription_id=_RX,
            held_since="2026-11-25T08:00:05Z",
            expires_at="2026-11-25T12:00:05Z",
            reasons=[_HOLD],
        )
    )

    type: Literal["prescription.review_escalated"] = "prescription.review_escalated"
    prescription_id: Identifier
    held_since: UtcDatetime
    expires_at: UtcDatetime
    reasons: list[Reason] = Field(min_length=1)


class PrescriptionCancelled(Envelope):
    """Withdrawn by the upstream system or a pharmacist. Inventory and couriers undo what they did."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("consultation.cancellation_accepted"),
            producer="prescription",
            prescription_id=_RX,
            reason="Therapy changed after the follow-up call",
            requested_by="Dr. Ilyas Karimov",
            was_approved=True,
        )
    )

    type: Literal["prescription.cancelled"] = "prescription.cancelled"
    prescription_id: Identifier
    reason: CancellationReason
    requested_by: RequestedBy
    was_approved: bool = Field(description="It had been approved, so stock or a courier may be involved")


# --- the pharmacist's commands on `prescription.reviews.v1` ------------------------------------


class ReviewDecided(Envelope):
    """A pharmacist's decision on a held prescription, with who and why."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("prescription.held_for_review"),
            producer="pharmacist-console",
            prescription_id=_RX,
            decision="approve",
            pharmacist_id="PH-014",
            note="The last pack was lost in the flood; early refill confirmed with the patient",
        )
    )

    type: Literal["prescription.review_decided"] = "prescription.review_decided"
    prescription_id: Identifier
    decision: Literal["approve", "reject"]
    pharmacist_id: Identifier
    note: Explanation


class CancellationOrdered(Envelope):
    """A pharmacist withdraws a prescription (a safety concern, a patient's call to the pharmacy)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="pharmacist-console",
            prescription_id=_RX,
            pharmacist_id="PH-014",
            reason="The patient called: she was given the medicines at the district hospital",
        )
    )

    type: Literal["prescription.cancellation_ordered"] = "prescription.cancellation_ordered"
    prescription_id: Identifier
    pharmacist_id: Identifier
    reason: CancellationReason


class DecisionAnswered(Envelope):
    """prescription → `prescription.answers.v1`, keyed by pharmacist id: what became of a pharmacist's
    signed decision or cancellation: `applied`, or `refused` with the reason (not held any more...)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("prescription.review_decided"),
            producer="prescription",
            pharmacist_id="PH-014",
            prescription_id=_RX,
            answers_message_id=example_id("prescription.review_decided"),
            outcome="refused",
            code="not_under_review",
            detail=f"{_RX} is not held for review (approved by the checks)",
        )
    )

    type: Literal["prescription.decision_answered"] = "prescription.decision_answered"
    pharmacist_id: Identifier
    prescription_id: Identifier | None = None
    answers_message_id: Identifier | None = None
    outcome: Literal["applied", "refused"]
    code: Annotated[str, Field(min_length=1, max_length=64), ONE_LINE] | None = None
    detail: Annotated[str, Field(min_length=1, max_length=2000), MULTILINE] | None = None


class DrugListed(Envelope):
    """prescription → `prescription.formulary.v1`, keyed by drug code: the formulary lists this drug,
    as its entry was loaded or changed (`pharmacy formulary load`). Inventory keeps the list, and
    refuses a restock of a drug not on it: nothing is stocked that no prescription may ask for."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="MET500",
            producer="prescription",
            drug_code="MET500",
            name="Metformin 500 mg tablets",
            form="tablet",
            cold_chain=False,
            controlled=False,
        )
    )

    type: Literal["prescription.drug_listed"] = "prescription.drug_listed"
    drug_code: Identifier
    name: Annotated[str, Field(min_length=1, max_length=200), ONE_LINE]
    form: Annotated[str, Field(min_length=1, max_length=64), ONE_LINE]
    cold_chain: bool = False
    controlled: bool = False
