"""Use cases of the consultation service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from pharmacy_contracts import Envelope
from pharmacy_contracts.consultation import PrescriptionAccepted, PrescriptionSubmitted
from services.runtime.documents import Change
from services.runtime.kafka import Refused

from . import domain
from .storage import ConsultationStorage

log = structlog.get_logger()
PRODUCER = "consultation"


class ConsultationService:
    def __init__(self, storage: ConsultationStorage, notify_relay: Callable[[], None], clock: Callable[[], datetime]):
        self._storage = storage
        self._notify_relay = notify_relay
        self._clock = clock

    async def receive_prescription(self, submitted: PrescriptionSubmitted) -> None:
        prescription = submitted.prescription
        verdicts: list[domain.IntakeVerdict] = []

        def decide(existing: domain.IntakeRecord | None) -> Change[domain.IntakeRecord] | None:
            verdict = domain.judge_intake(existing, submitted.sender_id, submitted.message_id)
            verdicts.append(verdict)
            if verdict is not domain.IntakeVerdict.NEW:
                return None
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
            self._notify_relay()
        elif verdicts and verdicts[-1] is domain.IntakeVerdict.ID_REUSED:
            raise Refused(
                "prescription_id_reused",
                f"prescription {prescription.prescription_id} was already received in another message",
            )
        else:
            log.info("duplicate prescription message dropped")

    async def track(self, event: Envelope) -> None:
        prescription_id = domain.prescription_of(event)
        if prescription_id is None:
            return

        def decide(status: domain.PrescriptionStatus | None) -> Change[domain.PrescriptionStatus] | None:
            updated = domain.track(status, event)
            return None if updated is None else Change(updated)

        change = await self._storage.status.apply(prescription_id, decide, message_id=event.message_id)
        if change is not None:
            log.info("status updated", stage=change.state.stage, terminal=change.state.terminal)

    async def status_of(self, prescription_id: str) -> domain.PrescriptionStatus | None:
        return await self._storage.status.get(prescription_id)
