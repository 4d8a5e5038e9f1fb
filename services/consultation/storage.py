"""The consultation service's collections, as repositories. Only this module (and the runtime) knows MongoDB."""

from __future__ import annotations

from typing import Any

from services.runtime.mongo_store import MongoStore
from services.runtime.store import DocumentMemory

from .domain import IntakeRecord, MessageClaim, PrescriptionStatus

#: Intake records held in memory: each holds a whole prescription, the largest document here.
INTAKE_MEMORY = 1024


class ConsultationStorage:
    def __init__(self, database: Any) -> None:
        # Each document is created by its prescription's first message, and this process handles
        # its next ones a moment later: the memory spares a load of each (see DocumentMemory).
        #: One document per prescription received, with the events it caused (its outbox).
        # Upstream systems may send a message again at any time; no id list is needed to know it:
        # its claim in `messages` is kept for good, and the record knows the message it came in
        # and its cancellation, so a message sent again changes nothing.
        self.intake: MongoStore[IntakeRecord] = MongoStore(
            database,
            "consultation_prescriptions",
            IntakeRecord,
            keeps_trace=True,
            marks_published=True,
            # Written once, then only by a cancellation or the clear of its outbox: a short memory
            # serves the clear that follows within a second, and holds no prescriptions for long.
            memory=DocumentMemory(INTAKE_MEMORY, presumes_new=True),
        )
        #: One claim per sender's message id: the content first seen under it.
        self.messages: MongoStore[MessageClaim] = MongoStore(
            database, "consultation_messages", MessageClaim, memory=DocumentMemory(presumes_new=True)
        )
        #: What the patient and the hospital see of each prescription, folded from every lifecycle event.
        self.status: MongoStore[PrescriptionStatus] = MongoStore(
            database,
            "consultation_status",
            PrescriptionStatus,
            memory=DocumentMemory(presumes_new=True),
            marks_published=True,
        )

    @property
    def with_outbox(self) -> list[MongoStore[Any]]:
        # The status's receipts are published before its save, except on a status not known to
        # exist yet (see UnitOfWork.run's publish_first): those wait in its outbox like any event.
        return [self.intake, self.status]

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
