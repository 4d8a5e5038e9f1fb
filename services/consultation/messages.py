"""The consultation service's events: what it announces about the prescriptions and cancellations
it takes in from upstream systems, each caused by the upstream message it answers."""

from __future__ import annotations

from uuid import NAMESPACE_URL, uuid5

from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    FollowUpRequested,
    PrescriptionAccepted,
    PrescriptionSubmitted,
    SenderReceipt,
    StatusReceipt,
)
from pharmacy_contracts.envelope import Envelope, Producer
from pharmacy_contracts.patient import PatientNotified
from pharmacy_contracts.stages import TERMINAL

from . import fhir
from .domain import FollowUp, Notice, PrescriptionStatus, Told
from .wording import Wording

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


def patient_notified(
    status: PrescriptionStatus, notice: Notice, cause: Envelope, *, wording: Wording, delivery_code: str
) -> PatientNotified:
    """What the patient is told, worded in their language. Like a status receipt, everything in it
    follows from the status and the notice, so telling it again is the same message. The delivery
    code goes only into `out_for_delivery`: the patient needs it at the door, and nowhere before."""
    patient = status.patient
    assert patient is not None and patient.phone is not None
    code = delivery_code if notice.kind == "out_for_delivery" else None
    expected = (
        (notice.expected_from, notice.expected_by)
        if notice.expected_from is not None and notice.expected_by is not None
        else None
    )
    return PatientNotified(
        **PRODUCER.envelope(status.prescription_id, cause, at=notice.at),
        message_id=str(
            uuid5(
                NAMESPACE_URL,
                f"pharmacy:patient-notified:{status.prescription_id}:{notice.kind}:{notice.at.isoformat()}",
            )
        ),
        prescription_id=status.prescription_id,
        phone=patient.phone,
        language=notice.language,
        kind=notice.kind,
        text=wording.text(
            notice.kind,
            notice.language,
            prescription_id=status.prescription_id,
            reason=notice.reason,
            delivery_code=code,
            expected=expected,
        ),
        reason=notice.reason,
        delivery_code=code,
        will_retry=notice.will_retry,
        expected_from=notice.expected_from,
        expected_by=notice.expected_by,
    )


def follow_up_requested(status: PrescriptionStatus, follow_up: FollowUp, cause: Envelope) -> FollowUpRequested:
    """The hospital's call to make, keyed by its sender id like its receipts; the same every time it is told."""
    assert status.sender_id is not None and status.patient is not None
    return FollowUpRequested(
        **PRODUCER.envelope(status.prescription_id, cause, at=follow_up.at),
        message_id=str(
            uuid5(
                NAMESPACE_URL,
                f"pharmacy:follow-up:{status.prescription_id}:{follow_up.stage}:{follow_up.at.isoformat()}"
                + (f":recalled:{follow_up.recalled_lot}" if follow_up.recalled_lot is not None else ""),
            )
        ),
        sender_id=status.sender_id,
        answers_message_id=status.sender_message_id,
        prescription_id=status.prescription_id,
        patient_id=status.patient.patient_id,
        stage=follow_up.ending,
        reason=follow_up.reason[:2000],
        chronic=status.chronic,
    )
