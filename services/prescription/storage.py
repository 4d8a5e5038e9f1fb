"""The prescription service's collections, as repositories: verdicts (with the outbox), patients'
medication histories, and the reference data the checks read (formulary, prescriber registry,
interaction table). Only this module (and the runtime) knows MongoDB.

Every query a use case makes is one round trip over a whole batch at most: `verdicts_of(ids)` once
per batch, never once per message. The reference data is kept in memory whole and read again when
its change stamp moves: every write of it (`pharmacy formulary load`, …) goes through `save_*`
here, which moves the stamp, so another process's change is seen at the next look at the stamp.
The stamp is looked at when a batch names a drug or prescriber the memory does not hold (a new
one is seen at once), and otherwise at most every `reference_check_s`, so a change to an existing
entry (a drug withdrawn) is seen within that time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from pharmacy_contracts.consultation import Prescription
from services.runtime.mongo_store import MongoStore
from services.runtime.relay import outbox_entry
from services.runtime.store import DocumentMemory, overwrite

from . import messages
from .domain import (
    FormularyEntry,
    Interaction,
    InteractionTable,
    MedicationHistory,
    PrescriberRecord,
    Reference,
    Verdict,
    VerdictState,
)

#: The one document of `prescription_reference_stamp`.
STAMP_ID = "reference"


class ReferenceStamp(BaseModel):
    """Moves on every write of reference data, so a process holding it in memory reads it again."""

    stamp: str


class PrescriptionStorage:
    def __init__(self, database: Any, *, reference_check_s: float = 1.0) -> None:
        #: One document per prescription: the verdict, with the events it caused (its outbox).
        # Pharmacists' decisions may be sent again at any time: a verdict absorbs a handful of
        # messages in its life, and remembers every one's id. Created by the prescription's check,
        # then changed by this process a moment later (its memory spares the loads; see DocumentMemory).
        self.verdicts: MongoStore[Verdict] = MongoStore(
            database,
            "prescription_verdicts",
            Verdict,
            keeps_trace=True,
            keeps_every_message=True,
            memory=DocumentMemory(presumes_new=True),
            marks_published=True,
        )
        #: One document per patient: the medicine approved for them, which later checks read.
        self.histories: MongoStore[MedicationHistory] = MongoStore(
            database, "prescription_patient_history", MedicationHistory, memory=DocumentMemory()
        )
        self.formulary: MongoStore[FormularyEntry] = MongoStore(database, "prescription_formulary", FormularyEntry)
        self.prescribers: MongoStore[PrescriberRecord] = MongoStore(
            database, "prescription_prescribers", PrescriberRecord
        )
        self.interactions: MongoStore[Interaction] = MongoStore(database, "prescription_interactions", Interaction)
        self.reference_stamp: MongoStore[ReferenceStamp] = MongoStore(
            database, "prescription_reference_stamp", ReferenceStamp
        )
        self._verdict_documents = database["prescription_verdicts"]
        self._reference_check_s = reference_check_s
        self._reference: Reference | None = None
        self._reference_stamp: str | None = None
        self._reference_checked_at = float("-inf")

    @property
    def with_outbox(self) -> list[MongoStore[Any]]:
        return [self.verdicts]

    @property
    def written_by_tools(self) -> list[MongoStore[Any]]:
        """The formulary: each entry written announces the drug to inventory (DrugListed)."""
        return [self.formulary]

    async def ensure_indexes(self) -> None:
        await self.verdicts.ensure_indexes(plain=["state"])
        for store in (self.histories, self.formulary, self.prescribers, self.interactions):
            await store.ensure_indexes()

    # --- reference data ---------------------------------------------------------------------------

    async def reference_for(self, prescriptions: Iterable[Prescription]) -> Reference:
        """What the checks of these prescriptions read: their drugs' formulary entries, their
        prescribers and the interaction table, from memory (see the module's docstring)."""
        prescriptions = list(prescriptions)
        codes = {item.drug_code for p in prescriptions for item in p.items}
        licences = {p.prescriber.licence_number for p in prescriptions}
        reference = await self._current_reference(codes, licences)
        return Reference(
            formulary={c: reference.formulary[c] for c in codes if c in reference.formulary},
            prescribers={n: reference.prescribers[n] for n in licences if n in reference.prescribers},
            interactions=reference.interactions,
        )

    async def formulary_entries(self, drug_codes: Iterable[str]) -> dict[str, FormularyEntry]:
        codes = set(drug_codes)
        formulary = (await self._current_reference(codes, set())).formulary
        return {c: formulary[c] for c in codes if c in formulary}

    async def _current_reference(self, codes: set[str], licences: set[str]) -> Reference:
        held = self._reference
        unknown = held is None or not (codes <= held.formulary.keys() and licences <= held.prescribers.keys())
        if not unknown and time.monotonic() - self._reference_checked_at < self._reference_check_s:
            return held  # type: ignore[return-value]
        stamp = (await self.reference_stamp.load([STAMP_ID]))[STAMP_ID].state
        self._reference_checked_at = time.monotonic()
        current = stamp.stamp if stamp is not None else None
        if held is None or current != self._reference_stamp:
            held = await self._read_reference()
            self._reference, self._reference_stamp = held, current
        return held

    async def _read_reference(self) -> Reference:
        """All of it, one query a collection, asked together: a few thousand small documents at most."""
        formulary, prescribers, interactions = await asyncio.gather(
            self.formulary.all(), self.prescribers.all(), self.interactions.all()
        )
        return Reference(
            formulary={s.id: s.state for s in formulary if s.state is not None},
            prescribers={s.id: s.state for s in prescribers if s.state is not None},
            interactions=InteractionTable(s.state for s in interactions if s.state is not None),
        )

    async def save_formulary_entry(self, entry: FormularyEntry) -> None:
        """The entry, and in the same write its announcement to inventory (published by the
        service's relay: whoever writes it, the CLI or a loader, inventory hears)."""
        await overwrite(self.formulary, entry.drug_code, entry, [outbox_entry(messages.drug_listed(entry))])
        await self._move_reference_stamp()

    async def save_prescriber(self, record: PrescriberRecord) -> None:
        await overwrite(self.prescribers, record.licence_number, record)
        await self._move_reference_stamp()

    async def save_interaction(self, interaction: Interaction) -> None:
        await overwrite(self.interactions, interaction.pair_id, interaction)
        await self._move_reference_stamp()

    async def _move_reference_stamp(self) -> None:
        """After the write it announces, so whoever sees the new stamp reads the new data."""
        await overwrite(self.reference_stamp, STAMP_ID, ReferenceStamp(stamp=uuid.uuid4().hex))
        self._reference_checked_at = float("-inf")  # this process looks at once

    # --- verdicts and histories -------------------------------------------------------------------

    async def verdicts_of(
        self, prescription_ids: Iterable[str], *, from_memory: bool = False
    ) -> dict[str, Verdict | None]:
        """Each prescription's verdict, None where there is none yet: one round trip. `from_memory`:
        as this process last wrote or read them, and None for those it does not know (see
        DocumentMemory: for a guess that a version-guarded write will check)."""
        ids = list(dict.fromkeys(prescription_ids))
        if not ids:
            return {}
        loaded = await self.verdicts.load(ids, from_memory=from_memory)
        return {doc_id: stored.state for doc_id, stored in loaded.items()}

    async def verdict_of(self, prescription_id: str) -> Verdict | None:
        return (await self.verdicts_of([prescription_id]))[prescription_id]

    async def held_verdicts(self) -> list[Verdict]:
        """The review queue, oldest hold first (indexed on the state)."""
        cursor = self._verdict_documents.find({"state.state": VerdictState.HELD.value}, {"state": 1})
        held = [Verdict.model_validate(d["state"]) async for d in cursor]
        return _oldest_hold_first(held)

    async def all_verdicts(self) -> list[Verdict]:
        """Every verdict (tools and checks; not on any message's path)."""
        return [s.state for s in await self.verdicts.all() if s.state is not None]

    async def history_of(self, patient_id: str) -> MedicationHistory | None:
        return (await self.histories.load([patient_id]))[patient_id].state


def _oldest_hold_first(held: list[Verdict]) -> list[Verdict]:
    return sorted(held, key=lambda v: (v.held_at is None, v.held_at, v.prescription_id))
