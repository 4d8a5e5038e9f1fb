"""The inventory service's collections, as repositories: warehouses (lots and holds), allocations
(one per approved prescription: which warehouse its stock comes from), and the stock ledger. Only
this module (and the runtime) knows MongoDB.

Warehouses are few (tens), so a batch of reservations (and the expiry sweep) reads them all with one
query and plans on them; the read goes into the store's memory (`DocumentMemory`), so the unit of
work writes on it instead of loading the warehouses a second time. Allocations are created by their
prescription's first message and changed by this process a moment later, so their memory presumes
an unknown one new (its insert proves it).

The ledger is append-only facts, not versioned state, kept in pages (MongoDB's bucket pattern): a
batch's new movements become one document, so recording them costs one insert however many there
are, where one document per movement cost a write each. A page lists the movement ids, lots and
warehouses it holds (multikey indexes), so a lot's history is one query; a batch handled again finds
its movements recorded and writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from pharmacy_contracts import topics
from services.runtime.mongo_store import MongoStore
from services.runtime.store import DocumentMemory, S, Stored, overwrite

from .domain import Allocation, LedgerEntry, ListedDrug, Warehouse

#: Movements one ledger page holds at most (a page of this many is about 200 KB, far below 16 MB).
LEDGER_PAGE_ENTRIES = 500

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
            marks_published=True,
        )
        # One per prescription: its events are the prescription's story, so they keep its trace.
        self.allocations: Documents[Allocation] = Documents(
            database,
            "inventory_allocations",
            Allocation,
            keeps_trace=True,
            memory=DocumentMemory(presumes_new=True),
            marks_published=True,
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
        await self._ledger.create_indexes(
            [IndexModel([(field, ASCENDING)]) for field in ("entry_ids", "lots", "warehouses")]
        )

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
        """The movements not recorded yet, as pages of one insert: an event recorded again
        (redelivered, replayed) finds its movements there and adds nothing. One query and one write."""
        fresh = list({e.entry_id: e for e in entries}.values())
        if not fresh:
            return
        # `$in` over an array field: the dev server matches array members with `$in`, not with
        # equality, and MongoDB does both.
        recorded = self._ledger.find({"entry_ids": {"$in": [e.entry_id for e in fresh]}}, {"entry_ids": 1})
        known = {entry_id async for page in recorded for entry_id in page["entry_ids"]}
        fresh = [e for e in fresh if e.entry_id not in known]
        for start in range(0, len(fresh), LEDGER_PAGE_ENTRIES):
            page = _ledger_page(fresh[start : start + LEDGER_PAGE_ENTRIES])
            # Another consumer may have recorded these very movements (a rebalance): one page.
            with contextlib.suppress(DuplicateKeyError):
                await self._ledger.insert_one(page)

    async def movements(self, warehouse_id: str | None = None, lot_id: str | None = None) -> list[LedgerEntry]:
        """The movements of a lot, of a warehouse, or all, oldest first, each once."""
        if warehouse_id is not None and lot_id is not None:
            query: dict[str, Any] = {"lots": {"$in": [_lot_key(warehouse_id, lot_id)]}}
        elif warehouse_id is not None:
            query = {"warehouses": {"$in": [warehouse_id]}}
        else:
            query = {}
        found: dict[str, LedgerEntry] = {}
        async for page in self._ledger.find(query, {"entries": 1}):
            for doc in page["entries"]:
                if warehouse_id in (None, doc["warehouse_id"]) and lot_id in (None, doc["lot_id"]):
                    entry = LedgerEntry.model_validate(doc)
                    found.setdefault(entry.entry_id, entry)
        return sorted(found.values(), key=lambda e: (e.occurred_at, e.message_id, e.index))

    async def delivered_units(self, lots: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, int]]:
        """Units of each (warehouse, lot) delivered, by prescription, as the ledger has them."""
        found: dict[tuple[str, str], dict[str, int]] = {}
        for warehouse_id, lot_id in dict.fromkeys(lots):
            delivered = found.setdefault((warehouse_id, lot_id), {})
            for entry in await self.movements(warehouse_id, lot_id):
                if entry.kind == "delivered" and entry.prescription_id is not None:
                    delivered[entry.prescription_id] = delivered.get(entry.prescription_id, 0) + entry.quantity
        return found


def _lot_key(warehouse_id: str, lot_id: str) -> str:
    return f"{warehouse_id}/{lot_id}"


def _ledger_page(entries: Sequence[LedgerEntry]) -> dict[str, Any]:
    """One page; its id follows from the movements it holds, so two consumers that record the same
    ones write one page."""
    ids = [e.entry_id for e in entries]
    return {
        "_id": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32],
        "entry_ids": ids,
        "lots": sorted({_lot_key(e.warehouse_id, e.lot_id) for e in entries}),
        "warehouses": sorted({e.warehouse_id for e in entries}),
        "entries": [e.model_dump(mode="json") for e in entries],
    }
