"""Use cases of the consultation service."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from pharmacy_contracts import Envelope, signing
from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    PrescriptionAccepted,
    PrescriptionSubmitted,
)
from pharmacy_contracts.topics import Topic
from services.runtime.delivery_codes import delivery_code
from services.runtime.documents import Change
from services.runtime.errors import Refused
from services.runtime.observability import prescription_finished

from . import domain, fhir
from .storage import ConsultationStorage

log = structlog.get_logger()
PRODUCER = "consultation"

#: What upstream systems publish on consultation.prescriptions.v1.
FromUpstream = PrescriptionSubmitted | CancellationRequested


class ConsultationService:
    def __init__(
        self,
        storage: ConsultationStorage,
        clock: Callable[[], datetime],
        sender_keys: Mapping[str, Mapping[str, bytes]],
        delivery_code_key: bytes,
    ):
        self._storage = storage
        self._clock = clock
        self._sender_keys = sender_keys
        self._delivery_code_key = delivery_code_key

    def check_signature(self, body: bytes, headers: dict[str, str]) -> None:
        """Only registered upstream systems may send prescriptions or cancel them, and only in their own name.

        Runs on the raw bytes before parsing; a refusal quarantines the message (dead letter)."""
        try:
            sender = signing.verify(body, headers, self._sender_keys)
        except signing.SignatureRefused as refused:
            raise Refused(refused.code, str(refused)) from None
        # A FHIR bundle has no sender_id field; it may name its sender in meta.source (see fhir.claimed_sender).
        claimed = fhir.claimed_sender(body) if fhir.is_fhir(headers) else _sender_in(body)
        if claimed is not None and claimed != sender:
            raise Refused("sender_mismatch", f"signed by {sender!r} but claims to be {claimed!r}")

    async def receive_from_upstream(self, message: FromUpstream) -> None:
        """Everything a (signature-checked) upstream system sends: prescriptions and their cancellations."""
        match message:
            case PrescriptionSubmitted():
                await self.receive_prescription(message)
            case CancellationRequested():
                await self.receive_cancellation(message)
            case _:  # the topic's contract admits nothing else; kept for a person if that ever changes
                raise Refused("unexpected_message", f"{type(message).__name__} is not sent by upstream systems")

    async def receive_prescription(self, submitted: PrescriptionSubmitted) -> None:
        prescription = submitted.prescription
        await self._claim_message_id(submitted, prescription.prescription_id)

        def decide(existing: domain.IntakeRecord | None) -> Change[domain.IntakeRecord] | None:
            verdict = domain.judge_intake(existing, submitted.sender_id, submitted.message_id)
            if verdict is domain.IntakeVerdict.DUPLICATE:
                return None
            if verdict is domain.IntakeVerdict.ID_REUSED:
                raise Refused(
                    "prescription_id_reused",
                    f"prescription {prescription.prescription_id} was already received in another message",
                )
            record = domain.IntakeRecord(
                prescription_id=prescription.prescription_id,
                sender_id=submitted.sender_id,
                message_id=submitted.message_id,
                received_at=self._clock(),
                prescription=prescription,
            )
            accepted = PrescriptionAccepted(
                correlation_id=prescription.prescription_id,
                causation_id=submitted.message_id,
                producer=PRODUCER,
                sender_id=submitted.sender_id,
                prescription=prescription,
            )
            return Change(record, [accepted])

        if await self._storage.intake.apply(prescription.prescription_id, decide, message_id=submitted.message_id):
            log.info("prescription received", sender_id=submitted.sender_id, items=len(prescription.items))
        else:
            log.info("duplicate prescription message dropped")

    async def receive_cancellation(self, requested: CancellationRequested) -> None:
        prescription_id = requested.prescription_id
        await self._claim_message_id(requested, prescription_id)

        def decide(existing: domain.IntakeRecord | None) -> Change[domain.IntakeRecord] | None:
            verdict = domain.judge_cancellation(existing, requested.sender_id)
            if verdict is domain.CancellationVerdict.UNKNOWN_PRESCRIPTION:
                raise Refused("unknown_prescription", f"no prescription {prescription_id} was received to cancel")
            if verdict is domain.CancellationVerdict.NOT_YOUR_PRESCRIPTION:
                # Which system did send it is not the requester's business.
                raise Refused(
                    "not_your_prescription",
                    f"prescription {prescription_id} came from another system; {requested.sender_id} may not cancel it",
                )
            if verdict is domain.CancellationVerdict.ALREADY_CANCELLED or existing is None:
                return None
            cancellation = domain.Cancellation(
                message_id=requested.message_id,
                requested_by=requested.requested_by,
                reason=requested.reason,
                received_at=self._clock(),
            )
            accepted = CancellationAccepted(
                correlation_id=prescription_id,
                causation_id=requested.message_id,
                producer=PRODUCER,
                sender_id=requested.sender_id,
                prescription_id=prescription_id,
                reason=requested.reason,
                requested_by=requested.requested_by,
            )
            return Change(domain.with_cancellation(existing, cancellation), [accepted])

        if await self._storage.intake.apply(prescription_id, decide, message_id=requested.message_id):
            log.info("cancellation accepted", sender_id=requested.sender_id)
        else:
            log.info("cancellation already recorded; nothing changed", sender_id=requested.sender_id)

    async def _claim_message_id(self, message: FromUpstream, prescription_id: str) -> None:
        """A sender's message id stands for one content forever, whichever kind of message it is."""
        content = hashlib.sha256(message.model_dump_json().encode()).hexdigest()

        def decide(existing: domain.MessageClaim | None) -> Change[domain.MessageClaim] | None:
            if domain.is_replay(existing, content):
                raise Refused("message_id_replayed", f"message {message.message_id} was seen with other content")
            if existing is not None:
                return None
            claim = domain.MessageClaim(
                sender_id=message.sender_id,
                message_id=message.message_id,
                content_sha256=content,
                prescription_id=prescription_id,
            )
            return Change(claim)

        # No message_id here: the claim is keyed by it, and a replay must reach `decide` to be caught.
        await self._storage.messages.apply(f"{message.sender_id}:{message.message_id}", decide)

    async def track(self, event: Envelope) -> None:
        prescription_id = domain.prescription_of(event)
        if prescription_id is None:
            return

        # Derived, never stored elsewhere or logged: the patient reads it to the courier at the door.
        code = delivery_code(self._delivery_code_key, prescription_id)

        was_terminal = False

        def decide(status: domain.PrescriptionStatus | None) -> Change[domain.PrescriptionStatus] | None:
            nonlocal was_terminal
            was_terminal = status is not None and status.terminal
            updated = domain.track(status, event, delivery_code=code)
            return None if updated is None else Change(updated)

        change = await self._storage.status.apply(prescription_id, decide, message_id=event.message_id)
        if change is not None:
            if change.state.terminal and not was_terminal:
                prescription_finished(change.state.stage.value)
            # A projection of decisions logged where they were taken: debug only, ~8 per prescription.
            log.debug("status updated", stage=change.state.stage, terminal=change.state.terminal)


def decode_upstream(body: bytes, headers: dict[str, str], topic: Topic) -> Envelope:
    """Native messages as the topic's contract says; a FHIR R4 bundle (content-type
    application/fhir+json) as the PrescriptionSubmitted it maps onto, or Refused(fhir_unmappable)."""
    if not fhir.is_fhir(headers):
        return topic.parse(body)
    submitted, notes = fhir.to_submission(body, headers)
    log.info(
        "FHIR bundle mapped onto a prescription",
        correlation_id=submitted.correlation_id,
        items=len(submitted.prescription.items),
        not_mapped=list(notes),
    )
    return submitted


def _sender_in(body: bytes) -> str | None:
    """The sender id the message body claims, if it is readable at all (parsing proper comes later)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting thousands deep
        return None
    sender = data.get("sender_id") if isinstance(data, dict) else None
    return sender if isinstance(sender, str) else None
