"""The consultation service's collections, as repositories. Only this module (and the runtime) knows MongoDB."""

from __future__ import annotations

from typing import Any

from pharmacy_contracts import topics
from services.runtime.mongo_store import MongoStore

from .domain import IntakeRecord, MessageClaim, PrescriptionStatus


class ConsultationStorage:
    def __init__(self, database: Any) -> None:
        #: One document per prescription received, with the events it caused (its outbox).
        # Upstream systems may send a prescription again at any time: its message id is kept for good.
        self.intake: MongoStore[IntakeRecord] = MongoStore(
            database,
            "consultation_prescriptions",
            IntakeRecord,
            remembers_commands=[topics.CONSULTATION_PRESCRIPTIONS.name],
            keeps_trace=True,
        )
        #: One claim per sender's message id: the content first seen under it.
        self.messages: MongoStore[MessageClaim] = MongoStore(database, "consultation_messages", MessageClaim)
        #: What the patient and the hospital see of each prescription, folded from every lifecycle event.
        self.status: MongoStore[PrescriptionStatus] = MongoStore(database, "consultation_status", PrescriptionStatus)

    @property
    def with_outbox(self) -> list[MongoStore[Any]]:
        return [self.intake]

    async def ensure_indexes(self) -> None:
        await self.intake.ensure_indexes(plain=["patient_id"])
        await self.status.ensure_indexes(plain=["stage"])
        await self.messages.ensure_indexes()

    async def status_of(self, prescription_id: str) -> PrescriptionStatus | None:
        return (await self.status.load([prescription_id]))[prescription_id].state

    async def intake_of(self, prescription_id: str) -> IntakeRecord | None:
        return (await self.intake.load([prescription_id]))[prescription_id].state

    async def statuses(self) -> list[PrescriptionStatus]:
        """Every prescription's status (tools and checks; not on any message's path)."""
        return [s.state for s in await self.status.all() if s.state is not None]
