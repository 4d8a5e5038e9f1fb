"""The batch unit of work on the in-memory store: one round of state per batch, duplicates known
for good, and a document that fails or loses a race never failing its neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import pytest
from pydantic import BaseModel

from pharmacy_contracts.inventory import RestockRequested
from services.runtime.documents import outbox_entry
from services.runtime.store import RECENT_MESSAGES, MemoryStore, OutboxEntry
from services.runtime.tracking import Position
from services.runtime.unit_of_work import Decision, Outcome, Record, UnitOfWork


class Shelf(BaseModel):
    units: int = 0


def restock(warehouse: str, quantity: int, *, message_id: str | None = None) -> RestockRequested:
    command = RestockRequested(
        correlation_id=warehouse,
        producer="test",
        warehouse_id=warehouse,
        drug_code="MET500",
        lot_id="L1",
        expiry_date=date(2030, 1, 1),
        quantity=quantity,
        requested_by="test",
    )
    return command if message_id is None else command.model_copy(update={"message_id": message_id})


def add_units(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
    if command.quantity > 1_000:
        return Decision.refused("too_many", "over a thousand units")
    if command.quantity == 13:
        raise ValueError("a bug in the rule")
    if command.quantity == 999:  # nothing to do
        return Decision.unchanged()
    units = (shelf.units if shelf else 0) + command.quantity
    return Decision(Shelf(units=units), [command.model_copy(update={"requested_by": f"after {units}"})])


def by_warehouse(command: RestockRequested) -> str:
    return command.warehouse_id


class Broker:
    def __init__(self) -> None:
        self.published: list[OutboxEntry] = []
        self.down = False

    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.published += entries


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def uow(broker: Broker) -> UnitOfWork:
    return UnitOfWork(broker.publish, outbox_entry)


@pytest.fixture
def shelves() -> MemoryStore[Shelf]:
    return MemoryStore("shelves", Shelf)


async def run(uow: UnitOfWork, store: MemoryStore[Shelf], *commands: RestockRequested) -> list[Outcome]:
    handled = await uow.run(store, [Record(c) for c in commands], key=by_warehouse, decide=add_units)
    return [h.outcome for h in handled]


async def test_a_batch_over_many_documents_is_one_load_and_one_save(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    commands = [restock(f"WH-{i % 10}", 1) for i in range(100)]
    assert await run(uow, shelves, *commands) == [Outcome.APPLIED] * 100
    # applied ids looked up, documents loaded, saved, applied ids recorded: four, not a hundred.
    assert shelves.round_trips == 4
    assert all(shelves.state_of(f"WH-{i}") == Shelf(units=10) for i in range(10))


async def test_records_of_one_document_see_each_others_result_in_order(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    await run(uow, shelves, restock("WH-A", 5), restock("WH-A", 7), restock("WH-A", 1))
    assert shelves.state_of("WH-A") == Shelf(units=13)
    tags = [RestockRequested.model_validate_json(e["body"]).requested_by for e in broker.published]
    assert tags == ["after 5", "after 12", "after 13"]


async def test_a_message_seen_in_the_same_batch_or_before_is_a_duplicate(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    first = restock("WH-A", 5)
    assert await run(uow, shelves, first, first) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert await run(uow, shelves, first) == [Outcome.DUPLICATE]
    assert shelves.state_of("WH-A") == Shelf(units=5)


async def test_a_command_sent_again_after_many_others_is_still_a_duplicate(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    """The document remembers only its last few hundred message ids; the applied ids are kept for good."""
    original = restock("WH-A", 100, message_id="restock-from-the-warehouse-system")
    await run(uow, shelves, original)
    for _ in range(0, RECENT_MESSAGES + 50, 100):
        await run(uow, shelves, *(restock("WH-A", 1) for _ in range(100)))
    before = shelves.state_of("WH-A")
    assert original.message_id not in shelves.stored("WH-A").tracking.recent  # type: ignore[union-attr]
    assert await run(uow, shelves, original) == [Outcome.DUPLICATE]
    assert shelves.state_of("WH-A") == before


async def test_a_record_below_the_documents_offset_floor_is_a_duplicate(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    first = Record(restock("WH-A", 5), Position("t.v1", 0, offset=10, floor=9))
    later = Record(restock("WH-A", 1), Position("t.v1", 0, offset=12, floor=11))
    for record in (first, later):
        await uow.run(shelves, [record], key=by_warehouse, decide=add_units)
    # offset 10 read again from the beginning, under another id: the later batch's floor covers it
    replayed = Record(restock("WH-A", 5), Position("t.v1", 0, offset=10, floor=9))
    [handled] = await uow.run(shelves, [replayed], key=by_warehouse, decide=add_units)
    assert handled.outcome is Outcome.DUPLICATE
    assert shelves.state_of("WH-A") == Shelf(units=6)


async def test_a_refusal_writes_nothing_and_its_neighbours_are_applied(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    handled = await uow.run(
        shelves,
        [Record(restock("WH-A", 5)), Record(restock("WH-A", 5_000)), Record(restock("WH-B", 2))],
        key=by_warehouse,
        decide=add_units,
    )
    assert [h.outcome for h in handled] == [Outcome.APPLIED, Outcome.REFUSED, Outcome.APPLIED]
    assert handled[1].refusal is not None and handled[1].refusal.code == "too_many"
    assert shelves.state_of("WH-A") == Shelf(units=5) and shelves.state_of("WH-B") == Shelf(units=2)
    # refused, not absorbed: a replay is refused again (and dead-lettered again), never skipped
    assert await run(uow, shelves, handled[1].record.message) == [Outcome.REFUSED]


async def test_a_decision_that_raises_fails_its_document_from_there_and_nothing_else(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    """Records of one document keep their order: the one behind a failed record fails with it (both
    are tried again, in order); another document's records are applied."""
    outcomes = await run(uow, shelves, restock("WH-A", 2), restock("WH-A", 13), restock("WH-A", 4), restock("WH-B", 3))
    assert outcomes == [Outcome.APPLIED, Outcome.FAILED, Outcome.FAILED, Outcome.APPLIED]
    assert shelves.state_of("WH-A") == Shelf(units=2) and shelves.state_of("WH-B") == Shelf(units=3)


async def test_a_document_that_cannot_be_written_fails_every_record_decided_on_it(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    """A refusal decided on changes never written must not stand: it is tried again with them."""
    shelves.fail_writes_of("WH-A")
    outcomes = await run(uow, shelves, restock("WH-A", 5), restock("WH-A", 5_000), restock("WH-B", 1))
    assert outcomes == [Outcome.FAILED, Outcome.FAILED, Outcome.APPLIED]


async def test_a_stored_state_that_no_longer_validates_fails_only_its_records(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    shelves.break_document("WH-A", "stored state does not validate")
    outcomes = await run(uow, shelves, restock("WH-A", 1), restock("WH-B", 1))
    assert outcomes == [Outcome.FAILED, Outcome.APPLIED]


def test_a_decision_with_events_must_say_the_state_they_come_with() -> None:
    with pytest.raises(ValueError, match="events"):
        Decision(events=[restock("WH-A", 1)])


async def test_a_document_that_cannot_be_written_fails_alone(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    shelves.fail_writes_of("WH-BAD", "value too large")
    outcomes = await run(
        uow, shelves, restock("WH-1", 1), restock("WH-BAD", 1), restock("WH-2", 1), restock("WH-BAD", 2)
    )
    assert outcomes == [Outcome.APPLIED, Outcome.FAILED, Outcome.APPLIED, Outcome.FAILED]
    assert shelves.state_of("WH-BAD") is None
    assert {e["key"] for e in broker.published} == {"WH-1", "WH-2"}
    # nothing of the failed document counts as applied: once it heals, the same messages apply
    shelves.heal("WH-BAD")
    assert await run(uow, shelves, restock("WH-BAD", 1)) == [Outcome.APPLIED]


async def test_a_document_that_loses_a_race_is_decided_again_alone(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    shelves.put("WH-A", Shelf(units=100))
    shelves.let_another_writer_win("WH-A")
    outcomes = await run(uow, shelves, restock("WH-A", 1), restock("WH-B", 1))
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert shelves.state_of("WH-A") == Shelf(units=101)
    # the first round saved both and lost WH-A; the second loaded and saved WH-A alone
    assert shelves.stored("WH-B").version == 1  # type: ignore[union-attr]


async def test_unchanged_writes_nothing(uow: UnitOfWork, shelves: MemoryStore[Shelf]) -> None:
    assert await run(uow, shelves, restock("WH-A", 999)) == [Outcome.UNCHANGED]
    assert shelves.stored("WH-A") is None


async def test_published_entries_leave_the_outbox_and_unpublished_ones_stay(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    await run(uow, shelves, restock("WH-A", 1))
    assert len(shelves.stored("WH-A").outbox) == 1  # type: ignore[union-attr]
    await uow.settled()
    assert shelves.stored("WH-A").outbox == ()  # type: ignore[union-attr]

    broker.down = True
    await run(uow, shelves, restock("WH-B", 1))
    await uow.settled()
    assert len(shelves.stored("WH-B").outbox) == 1  # type: ignore[union-attr]  # for the relay
    broker.down = False
    await run(uow, shelves, restock("WH-B", 1))
    # the next save publishes the whole outbox, oldest first
    assert [e["key"] for e in broker.published] == ["WH-A", "WH-B", "WH-B"]
