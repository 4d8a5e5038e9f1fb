"""The consultation service's events: what it announces about the prescriptions and cancellations
it takes in from upstream systems, each caused by the upstream message it answers."""

from __future__ import annotations

from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    PrescriptionAccepted,
    PrescriptionSubmitted,
    SenderReceipt,
)
from pharmacy_contracts.envelope import Producer

PRODUCER = Producer("consultation")


def prescription_accepted(submitted: PrescriptionSubmitted) -> PrescriptionAccepted:
    prescription = submitted.prescription
    return PrescriptionAccepted(
        **PRODUCER.envelope(prescription.prescription_id, submitted),
        sender_id=submitted.sender_id,
        prescription=prescription,
    )


def cancellation_accepted(requested: CancellationRequested) -> CancellationAccepted:
    return CancellationAccepted(
        **PRODUCER.envelope(requested.prescription_id, requested),
        sender_id=requested.sender_id,
        prescription_id=requested.prescription_id,
        reason=requested.reason,
        requested_by=requested.requested_by,
    )


def accepted_receipt(received: PrescriptionSubmitted | CancellationRequested) -> SenderReceipt:
    """The sender's answer: taken in (a prescription to be checked, a cancellation to be honoured)."""
    prescription_id = (
        received.prescription.prescription_id
        if isinstance(received, PrescriptionSubmitted)
        else received.prescription_id
    )
    return SenderReceipt(
        **PRODUCER.envelope(prescription_id, received),
        sender_id=received.sender_id,
        answers_message_id=received.message_id,
        prescription_id=prescription_id,
        outcome="accepted",
    )


def refused_receipt(
    sender_id: str, *, message_id: str | None, prescription_id: str | None, code: str, detail: str
) -> SenderReceipt:
    """The sender's answer to a message refused at the door, with the dead letter's reason."""
    return SenderReceipt(
        **PRODUCER.envelope(prescription_id or message_id or sender_id, None),
        sender_id=sender_id,
        answers_message_id=message_id,
        prescription_id=prescription_id,
        outcome="refused",
        code=code[:64],
        detail=detail[:2000] or None,
    )
