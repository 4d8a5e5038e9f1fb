"""The consultation service's collections. Only this module (and the runtime) knows MongoDB."""

from __future__ import annotations

from typing import Any

from services.runtime.documents import DocumentStore

from .domain import IntakeRecord, MessageClaim, PrescriptionStatus


class ConsultationStorage:
    def __init__(self, database: Any) -> None:
        self.intake: DocumentStore[IntakeRecord] = DocumentStore(
            database, "consultation_prescriptions", IntakeRecord, keeps_trace=True
        )
        self.messages: DocumentStore[MessageClaim] = DocumentStore(database, "consultation_messages", MessageClaim)
        self.status: DocumentStore[PrescriptionStatus] = DocumentStore(
            database, "consultation_status", PrescriptionStatus
        )

    @property
    def with_outbox(self) -> list[DocumentStore[Any]]:
        return [self.intake]

    async def ensure_indexes(self) -> None:
        await self.intake.ensure_indexes(plain=["patient_id"])
        await self.status.ensure_indexes(plain=["stage"])
        await self.messages.ensure_indexes()
