"""The inventory service's collections, as repositories: warehouses (lots and holds), allocations
(one per approved prescription: which warehouse its stock comes from), and the stock ledger. Only
this module (and the runtime) knows MongoDB.

Warehouses are few (tens), so a batch of reservations (and the expiry sweep) reads them all with one
query and plans on them; the read goes into the store's memory (`DocumentMemory`), so the unit of
work writes on it instead of loading the warehouses a second time. Allocations are created by their
prescription's first message and changed by this process a moment later, so their memory presumes
an unknown one new (its insert proves it). The ledger is append-only facts, not versioned state: one
unordered bulk upsert per batch, keyed by event and movement.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel, ReplaceOne

from pharmacy_contracts import topics
from services.runtime.mongo_store import MongoStore
from services.runtime.store import DocumentMemory, S, Stored, overwrite

from .domain import Allocation, LedgerEntry, ListedDrug, Warehouse

#: How long this process plans reservations on its memory of the warehouses before it reads them
#: all again (so a warehouse another instance registered or restocked is seen within this).
WAREHOUSES_REREAD_S = 1.0


class Documents(MongoStore[S]):
    """A `MongoStore` that also answers readers (tools, checks, tests) in plain terms."""

    async def get(self, doc_id: str) -> S | None:
        return (await self.load([doc_id]))[doc_id].state

    async def find(self, **state_equals: Any) -> list[S]:
        """The states whose fields equal these (every state, with none)."""
        query = {f"state.{name}": value for name, value in state_equals.items()}
        return [self.model.model_validate(d["state"]) async for d in self._collection.find(query, {"state": 1})]

    async def every_document(self) -> dict[str, Stored[S]]:
        """Every document as stored, in one query; one whose state no longer validates comes back
        broken (its records fail alone) instead of failing the read."""
        found = {d["_id"]: self._stored_or_broken(d) async for d in self._collection.find({})}
        if self.memory is not None:
            self.memory.loaded(found.values())
        return found


class InventoryStorage:
    #: The warehouses the last read of them all found, and when (see `warehouses_to_plan_on`).
    _warehouse_ids: frozenset[str] = frozenset()
    _warehouses_read_at = float("-inf")

    def __init__(self, database: Any) -> None:
        # Registrations, restocks and adjustments come from people and their systems, who may send
        # one again at any time: their message ids are kept for good.
        self.warehouses: Documents[Warehouse] = Documents(
            database,
            "inventory_warehouses",
            Warehouse,
            remembers_commands=[topics.INVENTORY_COMMANDS.name],
            memory=DocumentMemory(),
        )
        # One per prescription: its events are the prescription's story, so they keep its trace.
        self.allocations: Documents[Allocation] = Documents(
            database, "inventory_allocations", Allocation, keeps_trace=True, memory=DocumentMemory(presumes_new=True)
        )
        #: The drugs the formulary lists (prescription.formulary.v1): only these are restocked.
        self.drugs: Documents[ListedDrug] = Documents(database, "inventory_drugs", ListedDrug, memory=DocumentMemory())
        self._ledger = database["inventory_ledger"]

    @property
    def with_outbox(self) -> list[MongoStore[Any]]:
        return [self.warehouses, self.allocations]

    async def ensure_indexes(self) -> None:
        await self.warehouses.ensure_indexes()
        await self.drugs.ensure_indexes()
        await self.allocations.ensure_indexes(plain=["state"])
        await self._ledger.create_indexes([IndexModel([("warehouse_id", ASCENDING), ("lot_id", ASCENDING)])])

    # --- warehouses and allocations ---------------------------------------------------------------

    async def warehouse_documents(self) -> dict[str, Stored[Warehouse]]:
        """Every warehouse as stored (with its version), for a batch to plan on and then write."""
        found = await self._every_warehouse()
        self._warehouse_ids, self._warehouses_read_at = frozenset(found), time.monotonic()
        return found

    async def _every_warehouse(self) -> dict[str, Stored[Warehouse]]:
        return await self.warehouses.every_document()

    async def warehouses_to_plan_on(self) -> tuple[dict[str, Stored[Warehouse]], bool]:
        """Every warehouse, from this process's memory when it read them all less than
        `WAREHOUSES_REREAD_S` ago (a copy may be stale: the version-guarded write of a hold finds
        out, and a plan that fails is made again on a fresh read); and whether they were read now."""
        memory = self.warehouses.memory
        if memory is not None and time.monotonic() - self._warehouses_read_at < WAREHOUSES_REREAD_S:
            held, missing = memory.recall(self._warehouse_ids)
            if not missing:
                return held, False
        return await self.warehouse_documents(), True

    async def all_warehouses(self) -> list[Warehouse]:
        return [s.state for s in (await self.warehouse_documents()).values() if s.state is not None]

    async def allocation_documents(self, prescription_ids: Iterable[str]) -> dict[str, Stored[Allocation]]:
        """Each prescription's allocation, from memory where held (absent ones too): at most one
        round trip. A copy from memory may be stale; only a version-guarded save vouches for it."""
        ids = list(dict.fromkeys(prescription_ids))
        return await self.allocations.load(ids, from_memory=True) if ids else {}

    # --- the formulary's drugs --------------------------------------------------------------------

    async def listed(self, drug_codes: Iterable[str]) -> frozenset[str]:
        """Those of these drugs the formulary lists: one round trip (none for drugs held in memory)."""
        codes = list(dict.fromkeys(drug_codes))
        if not codes:
            return frozenset()
        found = await self.drugs.load(codes, from_memory=True)
        return frozenset(code for code, stored in found.items() if stored.state is not None)

    async def list_drugs(self, drugs: Iterable[ListedDrug]) -> None:
        """As if the formulary had announced them (tools and tests that run no prescription service)."""
        for drug in drugs:
            await overwrite(self.drugs, drug.drug_code, drug)

    # --- the ledger -------------------------------------------------------------------------------

    async def record_movements(self, entries: Sequence[LedgerEntry]) -> None:
        """Upserts by id: an event recorded twice (redelivered, replayed) leaves one entry per movement."""
        if not entries:
            return
        operations = [ReplaceOne({"_id": e.entry_id}, _ledger_doc(e), upsert=True) for e in entries]
        await self._ledger.bulk_write(operations, ordered=False)

    async def movements(self, warehouse_id: str | None = None, lot_id: str | None = None) -> list[LedgerEntry]:
        query = {k: v for k, v in (("warehouse_id", warehouse_id), ("lot_id", lot_id)) if v is not None}
        entries = [_ledger_entry(d) async for d in self._ledger.find(query)]
        return sorted(entries, key=lambda e: (e.occurred_at, e.message_id, e.index))

    async def delivered_units(self, lots: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, int]]:
        """Units of each (warehouse, lot) delivered, by prescription, as the ledger has them."""
        found: dict[tuple[str, str], dict[str, int]] = {}
        for warehouse_id, lot_id in dict.fromkeys(lots):
            delivered = found.setdefault((warehouse_id, lot_id), {})
            for entry in await self.movements(warehouse_id, lot_id):
                if entry.kind == "delivered" and entry.prescription_id is not None:
                    delivered[entry.prescription_id] = delivered.get(entry.prescription_id, 0) + entry.quantity
        return found


def _ledger_doc(entry: LedgerEntry) -> dict[str, Any]:
    doc = entry.model_dump(exclude={"entry_id"})
    doc["_id"] = entry.entry_id
    return doc


def _ledger_entry(doc: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry.model_validate({**{k: v for k, v in doc.items() if k != "_id"}, "entry_id": doc["_id"]})
