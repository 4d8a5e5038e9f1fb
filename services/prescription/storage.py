"""The prescription service's collections: verdicts, patients' medication histories, and the
reference data the checks read (formulary, prescriber registry, interaction table)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.runtime.documents import Change, DocumentStore

from .domain import (
    FormularyEntry,
    Interaction,
    InteractionTable,
    MedicationHistory,
    PrescriberRecord,
    Verdict,
    VerdictState,
)


class PrescriptionStorage:
    def __init__(self, database: Any) -> None:
        self.verdicts: DocumentStore[Verdict] = DocumentStore(
            database, "prescription_verdicts", Verdict, keeps_trace=True
        )
        self.histories: DocumentStore[MedicationHistory] = DocumentStore(
            database, "prescription_patient_history", MedicationHistory
        )
        self.formulary: DocumentStore[FormularyEntry] = DocumentStore(
            database, "prescription_formulary", FormularyEntry
        )
        self.prescribers: DocumentStore[PrescriberRecord] = DocumentStore(
            database, "prescription_prescribers", PrescriberRecord
        )
        self.interactions: DocumentStore[Interaction] = DocumentStore(
            database, "prescription_interactions", Interaction
        )

    @property
    def with_outbox(self) -> list[DocumentStore[Any]]:
        return [self.verdicts]

    async def ensure_indexes(self) -> None:
        await self.verdicts.ensure_indexes(plain=["state"])
        for store in (self.histories, self.formulary, self.prescribers, self.interactions):
            await store.ensure_indexes()

    # --- reference data ---------------------------------------------------------------------------

    async def formulary_entries(self, drug_codes: Iterable[str]) -> dict[str, FormularyEntry]:
        return await self.formulary.get_many(drug_codes)

    async def save_formulary_entry(self, entry: FormularyEntry) -> None:
        await self.formulary.apply(entry.drug_code, lambda _: Change(entry))

    async def prescriber(self, licence_number: str) -> PrescriberRecord | None:
        return await self.prescribers.get(licence_number)

    async def save_prescriber(self, record: PrescriberRecord) -> None:
        await self.prescribers.apply(record.licence_number, lambda _: Change(record))

    async def interaction_table(self) -> InteractionTable:
        # A few dozen documents, read whole; concurrent checks share the query (see DocumentStore.find).
        return InteractionTable(await self.interactions.find())

    async def save_interaction(self, interaction: Interaction) -> None:
        await self.interactions.apply(interaction.pair_id, lambda _: Change(interaction))

    # --- verdicts and histories -------------------------------------------------------------------

    async def held_verdicts(self) -> list[Verdict]:
        """The review queue, oldest hold first."""
        held = await self.verdicts.find(state=VerdictState.HELD.value)
        return sorted(held, key=lambda v: (v.held_at is None, v.held_at, v.prescription_id))

    async def history_of(self, patient_id: str) -> MedicationHistory | None:
        return await self.histories.get(patient_id)
