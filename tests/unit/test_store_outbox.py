"""No event lost between a `Store` and Kafka: `StoreOutbox` shows a store whose writes a unit of work
publishes to the relay (`services.runtime.relay`), and the relay publishes what such a write left
behind, removes exactly that, and at a stop lets the unit of work settle first."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import date

import pytest
import structlog.testing
from pydantic import BaseModel

from pharmacy_contracts.inventory import RestockRequested
from services.runtime.relay import OutboxRelay, StoreOutbox, outbox_entry
from services.runtime.store import MemoryStore, OutboxEntry, Save, Stored, Tracking, overwrite
from services.runtime.unit_of_work import Decision, Record, UnitOfWork
from tests.unit.test_outbox_relay import Broker


@pytest.fixture(autouse=True)
def _logs_kept_not_rendered() -> Iterator[None]:
    with structlog.testing.capture_logs():
        yield


class Shelf(BaseModel):
    units: int = 0


def entry(message_id: str) -> OutboxEntry:
    return {
        "message_id": message_id,
        "topic": "inventory.events.v1",
        "key": f"WH-{message_id}",
        "type": "inventory.reserved",
        "correlation_id": f"RX-{message_id}",
        "body": "{}",
    }


class Recorded(MemoryStore[Shelf]):
    """The in-memory store, remembering how the relay called it."""

    def __init__(self) -> None:
        super().__init__("shelves", Shelf)
        self.asked: list[tuple[int, float | None]] = []
        self.dropped: list[dict[str, set[str]]] = []

    async def pending_outbox(self, limit: int = 200, *, written_before: float | None = None) -> list[Stored[Shelf]]:
        self.asked.append((limit, written_before))
        return await super().pending_outbox(limit, written_before=written_before)

    async def drop_published(self, published: Mapping[str, Collection[str]]) -> None:
        self.dropped.append({doc_id: set(ids) for doc_id, ids in published.items()})
        await super().drop_published(published)


class Settling:
    def __init__(self) -> None:
        self.calls = 0

    async def settled(self) -> None:
        self.calls += 1


def outbox_of(store: Recorded) -> StoreOutbox:
    return StoreOutbox(store, Settling())  # type: ignore[arg-type]


async def test_the_outbox_of_a_store_is_named_after_it_and_publishes_its_writes() -> None:
    outbox = outbox_of(Recorded())
    assert outbox.name == "shelves" and outbox.publishes_its_writes is True


async def test_pending_entries_are_listed_per_document_with_the_limit_and_age_asked_for() -> None:
    store = Recorded()
    await store.save(
        [
            Save("a", 0, Shelf(units=1), (entry("e1"), entry("e2")), Tracking()),
            Save("b", 0, Shelf(units=1), (), Tracking()),
            Save("c", 0, Shelf(units=1), (entry("e3"),), Tracking()),
        ]
    )
    outbox = outbox_of(store)
    pending = await outbox.pending_outbox()
    assert pending == [("a", [entry("e1"), entry("e2")]), ("c", [entry("e3")])]
    assert all(isinstance(entries, list) for _, entries in pending)
    assert await outbox.pending_outbox(1, written_before=12.5) == [("a", [entry("e1"), entry("e2")])]
    assert store.asked == [(200, None), (1, 12.5)]


async def test_published_entries_are_removed_from_their_document() -> None:
    store = Recorded()
    await store.save([Save("a", 0, Shelf(units=1), (entry("e1"), entry("e2")), Tracking())])
    await outbox_of(store).remove_published("a", {"e1"})
    assert store.dropped == [{"a": {"e1"}}]
    assert store.stored("a").outbox == (entry("e2"),)  # type: ignore[union-attr]


async def test_settling_the_outbox_settles_its_unit_of_work() -> None:
    settling = Settling()
    await StoreOutbox(Recorded(), settling).settled()  # type: ignore[arg-type]
    assert settling.calls == 1


def restock(warehouse: str) -> RestockRequested:
    return RestockRequested(
        correlation_id=warehouse,
        producer="test",
        warehouse_id=warehouse,
        drug_code="MET500",
        lot_id="L1",
        expiry_date=date(2030, 1, 1),
        quantity=1,
        requested_by="test",
    )


def add_one(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
    return Decision(Shelf(units=(shelf.units if shelf else 0) + 1), [command])


async def test_the_relay_publishes_what_a_failed_publish_left_behind_and_removes_exactly_that() -> None:
    down: list[bool] = [True]

    async def publish(entries: Sequence[OutboxEntry]) -> None:
        if down[0]:
            raise ConnectionError("broker unreachable")

    store = Recorded()
    uow = UnitOfWork(publish, outbox_entry)
    commands = [restock("WH-A"), restock("WH-B")]
    await uow.run(store, [Record(c) for c in commands], key=lambda c: c.warehouse_id, decide=add_one)
    broker = Broker()
    relay = OutboxRelay(broker, [StoreOutbox(store, uow)], poll_interval_s=1, stale_after_s=60)  # type: ignore[arg-type]
    before = time.time()
    assert await relay.left_behind() == 2
    assert await relay.drain_once(everything=True) == 2
    assert sorted(broker.ids()) == sorted(c.message_id for c in commands)
    assert store.asked[-1] == (200, None)
    assert store.dropped == [{"WH-A": {commands[0].message_id}}, {"WH-B": {commands[1].message_id}}]
    assert await relay.left_behind() == 0
    await relay.drain_once()
    assert store.asked[-1][1] is not None and store.asked[-1][1] <= before - 59, "only stale entries"


async def test_a_stop_settles_the_unit_of_work_before_the_last_pass() -> None:
    published: list[str] = []

    async def publish(entries: Sequence[OutboxEntry]) -> None:
        published.extend(e["message_id"] for e in entries)

    store = Recorded()
    uow = UnitOfWork(publish, outbox_entry)
    command = restock("WH-A")
    await uow.run(store, [Record(command)], key=lambda c: c.warehouse_id, decide=add_one)
    broker = Broker()
    relay = OutboxRelay(broker, [StoreOutbox(store, uow)], poll_interval_s=60)  # type: ignore[arg-type]
    relay.start()
    assert await relay.stop() == 0, "the write's own publish was confirmed and cleared: nothing left to relay"
    assert published == [command.message_id] and broker.ids() == []
    assert store.stored("WH-A").outbox == ()  # type: ignore[union-attr]


async def test_a_store_peoples_tools_write_is_relayed_at_once_not_after_the_stale_delay() -> None:
    """Reference data a tool wrote with its announcement: no live write publishes it."""
    store, command = Recorded(), restock("WH-A")
    await overwrite(store, "WH-A", Shelf(units=1), [outbox_entry(command)])
    uow, broker = UnitOfWork(None, outbox_entry), Broker()
    relay = OutboxRelay(broker, [StoreOutbox(store, uow, publishes_its_writes=False)], 1, stale_after_s=60)  # type: ignore[arg-type]
    assert await relay.drain_once() == 1 and broker.ids() == [command.message_id]
    assert store.asked[-1] == (200, None), "asked for every entry, however new"
    assert store.stored("WH-A").outbox == ()  # type: ignore[union-attr]
