"""Use cases of the consultation service."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from pharmacy_contracts import Envelope, signing
from pharmacy_contracts.consultation import PrescriptionAccepted, PrescriptionSubmitted
from services.runtime.documents import Change
from services.runtime.errors import Refused

from . import domain
from .storage import ConsultationStorage

log = structlog.get_logger()
PRODUCER = "consultation"


class ConsultationService:
    def __init__(
        self,
        storage: ConsultationStorage,
        clock: Callable[[], datetime],
        sender_keys: Mapping[str, Mapping[str, bytes]],
    ):
        self._storage = storage
        self._clock = clock
        self._sender_keys = sender_keys

    def check_signature(self, body: bytes, headers: dict[str, str]) -> None:
        """Only registered upstream systems may send prescriptions, and only in their own name.

        Runs on the raw bytes before parsing; a refusal quarantines the message (dead letter)."""
        try:
            sender = signing.verify(body, headers, self._sender_keys)
        except signing.SignatureRefused as refused:
            raise Refused(refused.code, str(refused)) from None
        claimed = _sender_in(body)
        if claimed is not None and claimed != sender:
            raise Refused("sender_mismatch", f"signed by {sender!r} but claims to be {claimed!r}")

    async def receive_prescription(self, submitted: PrescriptionSubmitted) -> None:
        prescription = submitted.prescription
        await self._claim_message_id(submitted)

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

    async def _claim_message_id(self, submitted: PrescriptionSubmitted) -> None:
        content = hashlib.sha256(submitted.model_dump_json().encode()).hexdigest()

        def decide(existing: domain.MessageClaim | None) -> Change[domain.MessageClaim] | None:
            if domain.is_replay(existing, content):
                raise Refused("message_id_replayed", f"message {submitted.message_id} was seen with other content")
            if existing is not None:
                return None
            claim = domain.MessageClaim(
                sender_id=submitted.sender_id,
                message_id=submitted.message_id,
                content_sha256=content,
                prescription_id=submitted.prescription.prescription_id,
            )
            return Change(claim)

        # No message_id here: the claim is keyed by it, and a replay must reach `decide` to be caught.
        await self._storage.messages.apply(f"{submitted.sender_id}:{submitted.message_id}", decide)

    async def track(self, event: Envelope) -> None:
        prescription_id = domain.prescription_of(event)
        if prescription_id is None:
            return

        def decide(status: domain.PrescriptionStatus | None) -> Change[domain.PrescriptionStatus] | None:
            updated = domain.track(status, event)
            return None if updated is None else Change(updated)

        change = await self._storage.status.apply(prescription_id, decide, message_id=event.message_id)
        if change is not None:
            # A projection of decisions logged where they were taken: debug only, ~8 per prescription.
            log.debug("status updated", stage=change.state.stage, terminal=change.state.terminal)

    async def status_of(self, prescription_id: str) -> domain.PrescriptionStatus | None:
        return await self._storage.status.get(prescription_id)


def _sender_in(body: bytes) -> str | None:
    """The sender id the message body claims, if it is readable at all (parsing proper comes later)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting thousands deep
        return None
    sender = data.get("sender_id") if isinstance(data, dict) else None
    return sender if isinstance(sender, str) else None
