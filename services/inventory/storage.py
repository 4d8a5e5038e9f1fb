"""The inventory service's collections: warehouses (lots and holds), allocations, and the stock ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel, ReplaceOne

from pharmacy_contracts import topics
from services.runtime.documents import DocumentStore

from .domain import Allocation, LedgerEntry, Warehouse


class InventoryStorage:
    def __init__(self, database: Any) -> None:
        # Restocks, adjustments and registrations come from people and their systems, who may send one again.
        self.warehouses: DocumentStore[Warehouse] = DocumentStore(
            database, "inventory_warehouses", Warehouse, remembers_commands=[topics.INVENTORY_COMMANDS.name]
        )
        self.allocations: DocumentStore[Allocation] = DocumentStore(
            database, "inventory_allocations", Allocation, keeps_trace=True
        )
        # Append-only facts, not versioned state: one document per movement, keyed by event and index.
        self.ledger = database["inventory_ledger"]

    @property
    def with_outbox(self) -> list[DocumentStore[Any]]:
        return [self.warehouses, self.allocations]

    async def ensure_indexes(self) -> None:
        await self.warehouses.ensure_indexes()
        await self.allocations.ensure_indexes(plain=["state"])
        await self.ledger.create_indexes([IndexModel([("warehouse_id", ASCENDING), ("lot_id", ASCENDING)])])

    async def all_warehouses(self) -> list[Warehouse]:
        return await self.warehouses.find()

    async def record_movements(self, entries: Sequence[LedgerEntry]) -> None:
        """Upserts by id: an event recorded twice (redelivered, replayed) leaves one entry per movement."""
        if not entries:
            return
        operations = [ReplaceOne({"_id": e.entry_id}, _ledger_doc(e), upsert=True) for e in entries]
        await self.ledger.bulk_write(operations, ordered=False)

    async def movements(self, warehouse_id: str | None = None, lot_id: str | None = None) -> list[LedgerEntry]:
        query = {k: v for k, v in (("warehouse_id", warehouse_id), ("lot_id", lot_id)) if v is not None}
        entries = [_ledger_entry(d) async for d in self.ledger.find(query)]
        return sorted(entries, key=lambda e: (e.occurred_at, e.message_id, e.index))


def _ledger_doc(entry: LedgerEntry) -> dict[str, Any]:
    doc = entry.model_dump(exclude={"entry_id"})
    doc["_id"] = entry.entry_id
    return doc


def _ledger_entry(doc: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry.model_validate({**{k: v for k, v in doc.items() if k != "_id"}, "entry_id": doc["_id"]})
