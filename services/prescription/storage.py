"""The prescription service's collections: its verdicts and the formulary."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.runtime.documents import Change, DocumentStore

from .domain import FormularyEntry, Verdict


class PrescriptionStorage:
    def __init__(self, database: Any) -> None:
        self.verdicts: DocumentStore[Verdict] = DocumentStore(database, "prescription_verdicts", Verdict)
        self.formulary: DocumentStore[FormularyEntry] = DocumentStore(
            database, "prescription_formulary", FormularyEntry
        )

    @property
    def with_outbox(self) -> list[DocumentStore[Any]]:
        return [self.verdicts]

    async def ensure_indexes(self) -> None:
        await self.verdicts.ensure_indexes(plain=["approved"])
        await self.formulary.ensure_indexes()

    async def formulary_entries(self, drug_codes: Iterable[str]) -> dict[str, FormularyEntry]:
        return await self.formulary.get_many(drug_codes)

    async def save_formulary_entry(self, entry: FormularyEntry) -> None:
        await self.formulary.apply(entry.drug_code, lambda _: Change(entry))
