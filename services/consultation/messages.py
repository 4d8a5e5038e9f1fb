"""The consultation service's events: what it announces about the prescriptions and cancellations
it takes in from upstream systems, each caused by the upstream message it answers."""

from __future__ import annotations

from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    PrescriptionAccepted,
    PrescriptionSubmitted,
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
