"""The prescription service's collections, as repositories: verdicts (with the outbox), patients'
medication histories, and the reference data the checks read (formulary, prescriber registry,
interaction table). Only this module (and the runtime) knows MongoDB.

Every query a use case makes is one round trip over a whole batch: `verdicts_of(ids)` and
`reference_for(prescriptions)` are asked once per batch, never once per message. The reference data
is read per batch rather than cached: it is written by people (`pharmacy formulary load`, …) straight
into these collections, with no event another instance could refresh a cache on, so a per-batch read
is the simple way for two instances to agree on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import Prescription
from services.runtime.mongo_store import MongoStore
from services.runtime.store import S, Save, Store

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

#: Times a put of reference data is tried again when someone wrote the document first.
PUT_ATTEMPTS = 5


class PrescriptionStorage:
    def __init__(self, database: Any) -> None:
        #: One document per prescription: the verdict, with the events it caused (its outbox).
        # Pharmacists' decisions may be sent again at any time: their message ids are kept for good.
        self.verdicts: MongoStore[Verdict] = MongoStore(
            database,
            "prescription_verdicts",
            Verdict,
            remembers_commands=[topics.PRESCRIPTION_REVIEWS.name],
            keeps_trace=True,
        )
        #: One document per patient: the medicine approved for them, which later checks read.
        self.histories: MongoStore[MedicationHistory] = MongoStore(
            database, "prescription_patient_history", MedicationHistory
        )
        self.formulary: MongoStore[FormularyEntry] = MongoStore(database, "prescription_formulary", FormularyEntry)
        self.prescribers: MongoStore[PrescriberRecord] = MongoStore(
            database, "prescription_prescribers", PrescriberRecord
        )
        self.interactions: MongoStore[Interaction] = MongoStore(database, "prescription_interactions", Interaction)
        self._verdict_documents = database["prescription_verdicts"]

    @property
    def with_outbox(self) -> list[MongoStore[Any]]:
        return [self.verdicts]

    async def ensure_indexes(self) -> None:
        await self.verdicts.ensure_indexes(plain=["state"])
        for store in (self.histories, self.formulary, self.prescribers, self.interactions):
            await store.ensure_indexes()

    # --- reference data ---------------------------------------------------------------------------

    async def reference_for(self, prescriptions: Iterable[Prescription]) -> Reference:
        """What the checks of these prescriptions read: their drugs' formulary entries, their
        prescribers and the interaction table, one query each, asked together."""
        prescriptions = list(prescriptions)
        codes = {item.drug_code for p in prescriptions for item in p.items}
        licences = {p.prescriber.licence_number for p in prescriptions}
        formulary, prescribers, interactions = await asyncio.gather(
            self.formulary_entries(codes), self._states(self.prescribers, licences), self.interaction_table()
        )
        return Reference(formulary=formulary, prescribers=prescribers, interactions=interactions)

    async def formulary_entries(self, drug_codes: Iterable[str]) -> dict[str, FormularyEntry]:
        return await self._states(self.formulary, drug_codes)

    async def interaction_table(self) -> InteractionTable:
        # A few dozen documents, read whole.
        return InteractionTable(s.state for s in await self.interactions.all() if s.state is not None)

    async def save_formulary_entry(self, entry: FormularyEntry) -> None:
        await _put(self.formulary, entry.drug_code, entry)

    async def save_prescriber(self, record: PrescriberRecord) -> None:
        await _put(self.prescribers, record.licence_number, record)

    async def save_interaction(self, interaction: Interaction) -> None:
        await _put(self.interactions, interaction.pair_id, interaction)

    # --- verdicts and histories -------------------------------------------------------------------

    async def verdicts_of(self, prescription_ids: Iterable[str]) -> dict[str, Verdict | None]:
        """Each prescription's verdict, None where there is none yet: one round trip."""
        ids = list(dict.fromkeys(prescription_ids))
        if not ids:
            return {}
        return {doc_id: stored.state for doc_id, stored in (await self.verdicts.load(ids)).items()}

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

    @staticmethod
    async def _states(store: Store[S], ids: Iterable[str]) -> dict[str, S]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        return {doc_id: s.state for doc_id, s in (await store.load(wanted)).items() if s.state is not None}


def _oldest_hold_first(held: list[Verdict]) -> list[Verdict]:
    return sorted(held, key=lambda v: (v.held_at is None, v.held_at, v.prescription_id))


async def _put(store: Store[Any], doc_id: str, state: BaseModel) -> None:
    """Reference data entered by a person: the document becomes `state`, whatever it was."""
    for _ in range(PUT_ATTEMPTS):
        current = (await store.load([doc_id]))[doc_id]
        saved = await store.save(
            [Save(doc_id, current.version, state, current.outbox, current.tracking, traceparent=current.traceparent)]
        )
        if saved.failed:
            raise ValueError(f"{store.name}/{doc_id}: {saved.failed[doc_id]}")
        if not saved.lost:
            return
    raise RuntimeError(f"{store.name}/{doc_id}: too many concurrent writers")
