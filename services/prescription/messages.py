"""The prescription service's events: the verdicts it announces (approved, held, rejected,
cancelled) and what a held review's passed deadline announces.

Each event belongs to its prescription (`correlation_id`) and names the message that caused it;
the sweep's deadline events have no cause but the clock.
"""

from __future__ import annotations

from pharmacy_contracts import Envelope
from pharmacy_contracts.consultation import CancellationAccepted, Prescription
from pharmacy_contracts.envelope import Producer
from pharmacy_contracts.prescription import (
    ApprovedLine,
    CancellationOrdered,
    DecisionAnswered,
    DeliveryDetails,
    DrugListed,
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionHeld,
    PrescriptionRejected,
    ReviewDecided,
    ReviewEscalated,
)

from . import domain
from .domain import Verdict

PRODUCER = Producer("prescription")


def approved(
    prescription: Prescription, delivery: DeliveryDetails, cause: Envelope, *, reviewed_by: str | None = None
) -> PrescriptionApproved:
    """The one way an approval is announced, whether the checks or a pharmacist approved."""
    return PrescriptionApproved(
        **PRODUCER.envelope(prescription.prescription_id, cause),
        prescription_id=prescription.prescription_id,
        patient_id=prescription.patient.patient_id,
        lines=[
            ApprovedLine(drug_code=i.drug_code, quantity=i.quantity, days_supply=i.days_supply or 0)
            for i in prescription.items
        ],
        delivery=delivery,
        reviewed_by=reviewed_by,
    )


def held_for_review(verdict: Verdict, patient_id: str, cause: Envelope) -> PrescriptionHeld:
    assert verdict.escalate_at is not None and verdict.expires_at is not None
    return PrescriptionHeld(
        **PRODUCER.envelope(verdict.prescription_id, cause),
        prescription_id=verdict.prescription_id,
        patient_id=patient_id,
        reasons=verdict.reasons,
        escalate_at=verdict.escalate_at,
        expires_at=verdict.expires_at,
    )


def rejected_by_checks(verdict: Verdict, cause: Envelope) -> PrescriptionRejected:
    return PrescriptionRejected(
        **PRODUCER.envelope(verdict.prescription_id, cause),
        prescription_id=verdict.prescription_id,
        reasons=verdict.reasons,
    )


def rejected_by_pharmacist(decision: ReviewDecided) -> PrescriptionRejected:
    return PrescriptionRejected(
        **PRODUCER.envelope(decision.prescription_id, decision),
        prescription_id=decision.prescription_id,
        reasons=[domain.pharmacist_rejection(decision.pharmacist_id, decision.note)],
        reviewed_by=decision.pharmacist_id,
    )


def cancelled(
    cancellation: CancellationAccepted | CancellationOrdered, *, requested_by: str, was_approved: bool
) -> PrescriptionCancelled:
    return PrescriptionCancelled(
        **PRODUCER.envelope(cancellation.prescription_id, cancellation),
        prescription_id=cancellation.prescription_id,
        reason=cancellation.reason,
        requested_by=requested_by,
        was_approved=was_approved,
    )


def deadline_passed(held: Verdict, action: domain.ReviewAction) -> ReviewEscalated | PrescriptionRejected:
    """What a passed deadline of a held review announces, proposed by the sweep."""
    assert held.held_at is not None and held.expires_at is not None
    envelope = PRODUCER.envelope(held.prescription_id)
    if action == "escalate":
        return ReviewEscalated(
            **envelope,
            prescription_id=held.prescription_id,
            held_since=held.held_at,
            expires_at=held.expires_at,
            reasons=held.reasons,
        )
    return PrescriptionRejected(**envelope, prescription_id=held.prescription_id, reasons=[domain.review_expiry(held)])


def decision_answered(decided: ReviewDecided | CancellationOrdered, detail: str) -> DecisionAnswered:
    """The pharmacist's answer: their decision or cancellation was applied."""
    return DecisionAnswered(
        **PRODUCER.envelope(decided.prescription_id, decided),
        pharmacist_id=decided.pharmacist_id,
        prescription_id=decided.prescription_id,
        answers_message_id=decided.message_id,
        outcome="applied",
        detail=detail,
    )


def decision_refused(
    pharmacist_id: str, *, prescription_id: str | None, message_id: str | None, code: str, detail: str
) -> DecisionAnswered:
    """The answer to a decision refused before it changed anything (its dead letter keeps it)."""
    return DecisionAnswered(
        **PRODUCER.envelope(prescription_id or pharmacist_id, message_id),
        pharmacist_id=pharmacist_id,
        prescription_id=prescription_id,
        answers_message_id=message_id,
        outcome="refused",
        code=code[:64],
        detail=detail[:2000] or None,
    )


def drug_listed(entry: domain.FormularyEntry) -> DrugListed:
    """The formulary lists the drug, as its entry now reads (what inventory needs of it)."""
    return DrugListed(
        **PRODUCER.envelope(entry.drug_code),
        drug_code=entry.drug_code,
        name=entry.name,
        form=entry.form,
        cold_chain=entry.cold_chain,
        controlled=entry.controlled,
    )
