"""The stock ledger on the real database server: pages of movements, one insert per batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from motor.motor_asyncio import AsyncIOMotorDatabase

from services.inventory.domain import LedgerEntry, ledger_entries
from services.inventory.storage import LEDGER_PAGE_ENTRIES, InventoryStorage
from tests.unit.builders import movement

AT = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)


def reserved(message_id: str, warehouse_id: str, *lots: str, minutes: int = 0) -> list[LedgerEntry]:
    moved = [movement("reserved", lot, 3, "available", "reserved") for lot in lots]
    at = AT + timedelta(minutes=minutes)
    return ledger_entries(message_id, "inventory.stock_reserved", warehouse_id, at, moved, prescription_id="RX-1")


async def test_a_batch_of_movements_is_one_page_and_one_write(database: AsyncIOMotorDatabase) -> None:
    storage = InventoryStorage(database)
    await storage.ensure_indexes()
    batch = [*reserved("M-1", "WH-1", "L-1", "L-2"), *reserved("M-2", "WH-2", "L-1", minutes=1)]

    await storage.record_movements(batch)

    assert await database["inventory_ledger"].count_documents({}) == 1
    assert await storage.movements() == batch
    assert [e.entry_id for e in await storage.movements("WH-1", "L-1")] == ["M-1:0"]
    assert [e.entry_id for e in await storage.movements("WH-1")] == ["M-1:0", "M-1:1"]
    assert await storage.movements("WH-3") == []


async def test_movements_recorded_again_add_nothing_and_the_new_ones_of_a_batch_get_their_page(
    database: AsyncIOMotorDatabase,
) -> None:
    storage = InventoryStorage(database)
    await storage.ensure_indexes()
    first = reserved("M-1", "WH-1", "L-1")
    await storage.record_movements(first)
    pages_before = [page async for page in database["inventory_ledger"].find({})]

    await storage.record_movements(first)  # a batch handled again (a crash before its commit, a replay)
    assert [page async for page in database["inventory_ledger"].find({})] == pages_before

    later = reserved("M-2", "WH-1", "L-1", minutes=5)
    await storage.record_movements([*first, *later])  # redelivered beside a new one
    assert await database["inventory_ledger"].count_documents({}) == 2
    assert [e.entry_id for e in await storage.movements("WH-1", "L-1")] == ["M-1:0", "M-2:0"]


async def test_a_page_written_twice_by_two_consumers_is_one_page_and_each_movement_counts_once(
    database: AsyncIOMotorDatabase,
) -> None:
    one, other = InventoryStorage(database), InventoryStorage(database)
    await one.ensure_indexes()
    entries = reserved("M-1", "WH-1", "L-1", "L-2")
    # Both looked before either wrote (a rebalance hands a partition over mid-batch).
    await one.record_movements(entries)
    await database["inventory_ledger"].update_many({}, {"$set": {"entry_ids": []}})  # hide it from the look
    await other.record_movements(entries)

    assert await database["inventory_ledger"].count_documents({}) == 1, "the same movements make the same page id"
    assert [e.entry_id for e in await one.movements()] == ["M-1:0", "M-1:1"]


async def test_a_large_batch_is_split_into_pages_of_bounded_size(database: AsyncIOMotorDatabase) -> None:
    storage = InventoryStorage(database)
    await storage.ensure_indexes()
    entries = [e for i in range(LEDGER_PAGE_ENTRIES + 10) for e in reserved(f"M-{i:04}", "WH-1", "L-1", minutes=i)]

    await storage.record_movements(entries)

    assert await database["inventory_ledger"].count_documents({}) == 2
    assert len(await storage.movements("WH-1", "L-1")) == LEDGER_PAGE_ENTRIES + 10
