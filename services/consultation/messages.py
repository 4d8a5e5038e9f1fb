"""The consultation service's events: what it announces about the prescriptions and cancellations
it takes in from upstream systems, each caused by the upstream message it answers."""

from __future__ import annotations

from uuid import NAMESPACE_URL, uuid5

from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    PrescriptionAccepted,
    PrescriptionSubmitted,
    SenderReceipt,
    StatusReceipt,
)
from pharmacy_contracts.envelope import Envelope, Producer
from pharmacy_contracts.stages import TERMINAL

from . import fhir
from .domain import PrescriptionStatus, Told

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
    sender_id: str,
    *,
    message_id: str | None,
    prescription_id: str | None,
    code: str,
    detail: str,
    as_fhir: bool = False,
) -> SenderReceipt:
    """The sender's answer to a message refused at the door, with the dead letter's reason (and,
    for a FHIR message, the same as an OperationOutcome)."""
    return SenderReceipt(
        **PRODUCER.envelope(prescription_id or message_id or sender_id, None),
        sender_id=sender_id,
        answers_message_id=message_id,
        prescription_id=prescription_id,
        outcome="refused",
        code=code[:64],
        detail=detail[:2000] or None,
        operation_outcome=fhir.operation_outcome(code, detail) if as_fhir else None,
    )


def status_receipt(status: PrescriptionStatus, told: Told, cause: Envelope) -> StatusReceipt:
    """The sender's receipt for one change of stage. Everything in it, its id and time included,
    follows from the status and the change alone, so telling it again is the same receipt."""
    assert status.sender_id is not None
    at_stage = status.model_copy(update={"stage": told.stage})
    return StatusReceipt(
        **PRODUCER.envelope(status.prescription_id, cause, at=told.at),
        message_id=str(
            uuid5(NAMESPACE_URL, f"pharmacy:status-receipt:{status.prescription_id}:{told.stage}:{told.at.isoformat()}")
        ),
        sender_id=status.sender_id,
        answers_message_id=status.sender_message_id,
        prescription_id=status.prescription_id,
        stage=told.stage,
        terminal=told.stage in TERMINAL,
        detail=told.detail[:2000],
        reasons=[reason[:2000] for reason in told.why[:50]],
        medication_request_status=fhir.request_status(at_stage),
        medication_dispense_status=fhir.dispense_status(at_stage),
        supply_delivery_status=fhir.delivery_status(at_stage),
    )
