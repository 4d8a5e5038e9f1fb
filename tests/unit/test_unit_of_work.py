"""The batch unit of work on the in-memory store: one round of state per batch, duplicates known
for good, and a document that fails or loses a race never failing its neighbours."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import pytest
import structlog.testing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from pydantic import BaseModel

from pharmacy_contracts.inventory import RestockRequested
from services.runtime import hooks, unit_of_work
from services.runtime.errors import Refused
from services.runtime.relay import outbox_entry
from services.runtime.store import RECENT_MESSAGES, DocumentMemory, MemoryStore, OutboxEntry, Stored, Tracking
from services.runtime.tracking import Position
from services.runtime.unit_of_work import MAX_ROUNDS, Decision, Outcome, Record, UnitOfWork
from tests.support.stand_ins import Log


@pytest.fixture(autouse=True)
def _logs_kept_not_rendered() -> Iterator[None]:
    """Rendering a logged traceback is slow (mutmut's copies of the runtime are huge): keep it unrendered."""
    with structlog.testing.capture_logs():
        yield


@pytest.fixture(autouse=True)
def _short_clear_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clears owed wait 50 ms instead of a second, so a test that settles does not wait a second."""
    monkeypatch.setattr(unit_of_work, "CLEAR_DELAY_S", 0.05)


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


# --- the round: how many round trips, which records reach the decision ---------------------------------


async def test_an_empty_batch_makes_no_round_trip(uow: UnitOfWork, shelves: MemoryStore[Shelf]) -> None:
    assert await uow.run(shelves, [], key=by_warehouse, decide=add_units) == []
    assert shelves.round_trips == 0


async def test_a_batch_that_changes_nothing_is_not_saved(uow: UnitOfWork, shelves: MemoryStore[Shelf]) -> None:
    handled = await uow.run(
        shelves, [Record(restock("WH-A", 999)), Record(restock("WH-B", 999))], key=by_warehouse, decide=add_units
    )
    assert [h.outcome for h in handled] == [Outcome.UNCHANGED] * 2
    assert shelves.round_trips == 2, "the applied ids and one load; no save, no second round"
    shelves.put("WH-C", Shelf(units=1))
    trips = shelves.round_trips
    [handled_c] = await uow.run(shelves, [Record(restock("WH-C", 999))], key=by_warehouse, decide=add_units)
    assert handled_c.outcome is Outcome.UNCHANGED and shelves.round_trips == trips + 2
    assert shelves.stored("WH-C").version == 1, "an existing document nothing changed is not written"  # type: ignore[union-attr]


async def test_untracked_records_all_reach_the_decision_and_no_id_is_recorded(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    seen: list[str] = []

    def claim(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        seen.append(command.message_id)
        return add_units(shelf, command)

    first = restock("WH-A", 5)
    handled = await uow.run(shelves, [Record(first), Record(first)], key=by_warehouse, decide=claim, tracked=False)
    assert [h.outcome for h in handled] == [Outcome.APPLIED, Outcome.APPLIED]
    assert seen == [first.message_id] * 2 and shelves.state_of("WH-A") == Shelf(units=10)
    assert shelves.round_trips == 2, "one load and one save: no applied ids read or written"
    assert await shelves.applied([first.message_id]) == set()
    assert shelves.stored("WH-A").tracking == Tracking()  # type: ignore[union-attr]


async def test_a_tracked_record_leaves_its_id_and_position_on_the_document_and_for_good(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    command = restock("WH-A", 5)
    await uow.run(
        shelves, [Record(command, Position("t.v1", 3, offset=10, floor=7))], key=by_warehouse, decide=add_units
    )
    stored = shelves.stored("WH-A")
    assert stored is not None and stored.tracking == Tracking((command.message_id,), {"t_v1:3": 7})
    assert await shelves.applied([command.message_id]) == {command.message_id}


async def test_a_refusal_raised_by_the_decision_is_a_refusal(uow: UnitOfWork, shelves: MemoryStore[Shelf]) -> None:
    def refusing(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        raise Refused("not_here", "no such warehouse")

    [handled] = await uow.run(shelves, [Record(restock("WH-A", 1))], key=by_warehouse, decide=refusing)
    assert handled.outcome is Outcome.REFUSED and handled.refusal is not None
    assert (handled.refusal.code, handled.refusal.detail) == ("not_here", "no such warehouse")
    assert shelves.stored("WH-A") is None


async def test_each_outcome_carries_its_record_events_result_and_error(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    def deciding(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        if command.quantity == 999:
            return Decision(result="nothing to do")
        decision = add_units(shelf, command)
        return Decision(decision.state, decision.events, decision.refusal, result=f"now {decision.state}")

    records = [Record(restock("WH-A", 999)), Record(restock("WH-A", 2)), Record(restock("WH-A", 13))]
    unchanged, applied, failed = await uow.run(shelves, records, key=by_warehouse, decide=deciding)
    assert [h.record for h in (unchanged, applied, failed)] == records
    assert (unchanged.outcome, unchanged.result, unchanged.events) == (Outcome.UNCHANGED, "nothing to do", ())
    assert (applied.outcome, applied.result) == (Outcome.APPLIED, "now units=2")
    assert [e.requested_by for e in applied.events] == ["after 2"]  # type: ignore[attr-defined]
    assert (failed.outcome, failed.error) == (Outcome.FAILED, "ValueError('a bug in the rule')")


async def test_a_failed_write_fails_its_records_with_the_reason_but_a_duplicate_stays_a_duplicate(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    seen = restock("WH-A", 1)
    await run(uow, shelves, seen)
    shelves.fail_writes_of("WH-A", "value too large")
    handled = await uow.run(
        shelves,
        [Record(restock("WH-A", 1)), Record(seen), Record(restock("WH-A", 5_000)), Record(restock("WH-A", 999))],
        key=by_warehouse,
        decide=add_units,
    )
    assert [(h.outcome, h.error) for h in handled] == [
        (Outcome.FAILED, "value too large"),
        (Outcome.DUPLICATE, None),
        (Outcome.FAILED, "value too large"),
        (Outcome.FAILED, "value too large"),
    ]
    assert await shelves.applied([handled[0].record.message_id]) == set()


async def test_records_behind_a_failed_decision_fail_with_its_reason_and_duplicates_stay_duplicates(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    seen = restock("WH-A", 1)
    await run(uow, shelves, seen)
    records = [Record(restock("WH-A", 13)), Record(seen), Record(restock("WH-A", 2))]
    handled = await uow.run(shelves, records, key=by_warehouse, decide=add_units)
    assert [h.record for h in handled] == records
    assert [(h.outcome, h.error) for h in handled] == [
        (Outcome.FAILED, "ValueError('a bug in the rule')"),
        (Outcome.DUPLICATE, None),
        (Outcome.FAILED, "behind a failed record of shelves/WH-A: ValueError('a bug in the rule')"),
    ]
    assert shelves.state_of("WH-A") == Shelf(units=1)


async def test_a_broken_document_fails_its_records_with_the_reason_it_is_broken(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    shelves.break_document("WH-A", "shelves/WH-A: stored state does not validate")
    decided: list[str] = []

    def deciding(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        decided.append(command.warehouse_id)
        return add_units(shelf, command)

    handled = await uow.run(
        shelves,
        [Record(restock("WH-A", 1)), Record(restock("WH-A", 2)), Record(restock("WH-B", 1))],
        key=by_warehouse,
        decide=deciding,
    )
    assert [(h.outcome, h.error) for h in handled] == [
        (Outcome.FAILED, "shelves/WH-A: stored state does not validate"),
        (Outcome.FAILED, "shelves/WH-A: stored state does not validate"),
        (Outcome.APPLIED, None),
    ]
    assert decided == ["WH-B"], "a broken document's records reach no decision"
    assert [h.record.message.quantity for h in handled] == [1, 2, 1]


class AlwaysRaced(MemoryStore[Shelf]):
    """Someone else writes `doc_id` first, every time."""

    def __init__(self, doc_id: str) -> None:
        super().__init__("raced", Shelf)
        self.doc_id = doc_id
        self.loads: list[list[str]] = []

    async def load(self, ids: Any, *, from_memory: bool = False) -> Any:
        self.loads.append(sorted(ids))
        self.let_another_writer_win(self.doc_id)
        return await super().load(ids)


async def test_a_document_that_keeps_losing_fails_after_the_rounds_allowed(uow: UnitOfWork) -> None:
    store = AlwaysRaced("WH-A")
    records = [Record(restock("WH-A", 1)), Record(restock("WH-B", 1))]
    handled = await uow.run(store, records, key=by_warehouse, decide=add_units)
    assert [h.record for h in handled] == records
    assert [(h.outcome, h.error) for h in handled] == [
        (Outcome.FAILED, "raced/WH-A: too many writers"),
        (Outcome.APPLIED, None),
    ]
    assert store.loads == [["WH-A", "WH-B"]] + [["WH-A"]] * (MAX_ROUNDS - 1)
    assert store.state_of("WH-B") == Shelf(units=1)


async def test_records_come_back_in_the_order_given_across_documents_and_rounds(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    shelves.put("WH-A", Shelf(units=100))
    shelves.let_another_writer_win("WH-A")
    commands = [restock("WH-A", 1), restock("WH-B", 2), restock("WH-A", 3), restock("WH-C", 5_000)]
    handled = await uow.run(shelves, [Record(c) for c in commands], key=by_warehouse, decide=add_units)
    assert [h.record.message for h in handled] == commands
    assert [h.outcome for h in handled] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.APPLIED, Outcome.REFUSED]
    assert shelves.state_of("WH-A") == Shelf(units=104)


async def test_a_record_is_decided_in_the_context_it_was_admitted_in(
    uow: UnitOfWork, shelves: MemoryStore[Shelf]
) -> None:
    where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="outside")
    seen: list[str] = []

    def deciding(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        seen.append(where.get())
        return add_units(shelf, command)

    where.set("admitted")
    admitted = contextvars.copy_context()
    where.set("outside")
    records = [Record(restock("WH-A", 1), context=admitted), Record(restock("WH-B", 1))]
    await uow.run(shelves, records, key=by_warehouse, decide=deciding)
    assert seen == ["admitted", "outside"]
    assert records[0].in_context(where.get) == "admitted" and records[1].in_context(lambda x: x, 7) == 7
    for record in records:
        assert record.in_context(lambda x, *, y: (x, y, where.get()), 7, y=8)[:2] == (7, 8)


def test_a_refused_decision_carries_the_code_and_the_detail() -> None:
    decision = Decision.refused("too_many", "over a thousand units")
    assert decision.refusal is not None and (decision.refusal.code, decision.refusal.detail) == (
        "too_many",
        "over a thousand units",
    )
    assert (decision.state, decision.events, decision.result) == (None, (), None)
    with pytest.raises(ValueError, match=r"^a decision with events must give the state they come with$"):
        Decision(events=[restock("WH-A", 1)], result="x")


async def test_the_worst_moment_to_die_is_armed_only_after_a_write_that_stored_new_events(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], monkeypatch: pytest.MonkeyPatch
) -> None:
    armed: list[str] = []
    monkeypatch.setattr(hooks, "installed", hooks.Hooks(after_write=armed.append))

    def silent(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        return Decision(Shelf(units=command.quantity))

    await uow.run(shelves, [Record(restock("WH-A", 1))], key=by_warehouse, decide=silent)
    await uow.run(shelves, [Record(restock("WH-A", 999))], key=by_warehouse, decide=add_units)
    assert armed == []
    await uow.run(shelves, [Record(restock("WH-B", 1))], key=by_warehouse, decide=add_units)
    assert armed == ["shelves"]


# --- publishing and clearing -----------------------------------------------------------------------


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    recorded = Log()
    monkeypatch.setattr(unit_of_work, "log", recorded)
    return recorded


async def test_without_a_publisher_the_outbox_is_left_for_the_relay(shelves: MemoryStore[Shelf], log: Log) -> None:
    uow = UnitOfWork(None, outbox_entry)
    await uow.run(shelves, [Record(restock("WH-A", 1))], key=by_warehouse, decide=add_units)
    await uow.settled()
    assert len(shelves.stored("WH-A").outbox) == 1  # type: ignore[union-attr]
    assert log.lines == [] and uow._clearing is None


async def test_a_failed_publish_and_a_failed_decision_are_logged_with_where(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker, log: Log
) -> None:
    broker.down = True
    await run(uow, shelves, restock("WH-A", 13), restock("WH-B", 1))
    assert log.lines == [
        ("exception", "decision failed", {"document": "WH-A"}),
        ("exception", "publishing after a save failed; the relay will publish", {"store": "shelves"}),
    ]


async def test_an_outbox_entry_is_the_events_entry_with_when_it_was_queued(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    before = time.time()
    command = restock("WH-A", 1)
    await run(uow, shelves, command)
    [published] = broker.published
    event = command.model_copy(update={"requested_by": "after 1"})
    assert {k: v for k, v in published.items() if k != "queued_at"} == outbox_entry(event)
    assert before <= published["queued_at"] <= time.time()
    assert uow._clearing is not None and uow._clearing.get_name() == "outbox-clears"
    await uow.settled()


async def test_only_documents_with_entries_are_published_and_each_entry_once(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    def silent_for_b(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        decision = add_units(shelf, command)
        return Decision(decision.state) if command.warehouse_id == "WH-B" else decision

    calls: list[list[str]] = []

    async def publish(entries: Sequence[OutboxEntry]) -> None:
        calls.append([e["key"] for e in entries])
        await broker.publish(entries)

    uow = UnitOfWork(publish, outbox_entry)
    await uow.run(
        shelves, [Record(restock("WH-A", 1)), Record(restock("WH-B", 1))], key=by_warehouse, decide=silent_for_b
    )
    await uow.run(shelves, [Record(restock("WH-B", 1))], key=by_warehouse, decide=silent_for_b)
    assert calls == [["WH-A"]]


async def test_a_confirmed_entry_is_not_saved_again_even_before_it_is_cleared(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    await run(uow, shelves, restock("WH-A", 1))
    await run(uow, shelves, restock("WH-A", 2))  # before the clear: the first entry is confirmed
    stored = shelves.stored("WH-A")
    assert stored is not None and [e["key"] for e in stored.outbox] == ["WH-A"]
    assert len(broker.published) == 2 and broker.published[0] != broker.published[1]
    await uow.settled()
    assert shelves.stored("WH-A").outbox == ()  # type: ignore[union-attr]


async def test_a_failed_publish_keeps_the_entries_and_owes_no_clear(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    broker.down = True
    await run(uow, shelves, restock("WH-A", 1))
    assert uow._confirmed == {} and uow._clears == {} and uow._clearing is None
    trips = shelves.round_trips
    await uow.settled()
    assert shelves.round_trips == trips and len(shelves.stored("WH-A").outbox) == 1  # type: ignore[union-attr]


async def test_the_confirmed_ids_remembered_are_the_newest(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unit_of_work, "CONFIRMED_MEMORY", 2)
    commands = [restock(f"WH-{i}", 1) for i in range(3)]
    for command in commands:
        await run(uow, shelves, command)
    events = [e["message_id"] for e in (shelves.stored(f"WH-{i}").outbox[0] for i in range(3))]  # type: ignore[union-attr]
    assert list(uow._confirmed) == events[1:]


async def test_the_clears_owed_are_made_after_a_delay_one_drop_per_store(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unit_of_work, "CLEAR_DELAY_S", 0.05)
    dropped: list[dict[str, set[str]]] = []
    real_drop = shelves.drop_published

    async def drop_published(published: Any) -> None:
        dropped.append({k: set(v) for k, v in published.items()})
        await real_drop(published)

    shelves.drop_published = drop_published  # type: ignore[method-assign]
    await uow.run(
        shelves,
        [Record(restock("WH-A", 1)), Record(restock("WH-A", 2)), Record(restock("WH-B", 1))],
        key=by_warehouse,
        decide=add_units,
    )
    clearing = uow._clearing
    assert clearing is not None and not clearing.done() and dropped == []
    await run(uow, shelves, restock("WH-C", 1))
    assert uow._clearing is clearing, "one clear pending at a time"
    await asyncio.wait_for(clearing, 2)
    entries = {doc: {e["message_id"] for e in broker_entries(shelves, doc)} for doc in ("WH-A", "WH-B", "WH-C")}
    assert entries == {"WH-A": set(), "WH-B": set(), "WH-C": set()}
    [owed] = dropped
    assert sorted(owed) == ["WH-A", "WH-B", "WH-C"] and len(owed["WH-A"]) == 2 and len(owed["WH-B"]) == 1
    assert uow._clears == {}
    await run(uow, shelves, restock("WH-D", 1))
    assert uow._clearing is not clearing, "a new clear once the last one is done"
    await uow.settled()


def broker_entries(store: MemoryStore[Shelf], doc_id: str) -> tuple[OutboxEntry, ...]:
    stored = store.stored(doc_id)
    return () if stored is None else stored.outbox


async def test_settled_clears_at_once_then_lets_the_delayed_clear_finish(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unit_of_work, "CLEAR_DELAY_S", 0.2)
    await uow.settled()  # nothing owed, no clear pending
    assert shelves.round_trips == 0
    await run(uow, shelves, restock("WH-A", 1))
    clearing = uow._clearing
    assert clearing is not None and not clearing.done()
    trips = shelves.round_trips
    await asyncio.wait_for(uow.settled(), 2)
    assert shelves.stored("WH-A").outbox == ()  # type: ignore[union-attr]
    assert clearing.done() and not clearing.cancelled(), "a clear in progress is let finish"
    assert shelves.round_trips == trips + 1, "one drop: the delayed clear found nothing left owed"
    await uow.settled()
    assert shelves.round_trips == trips + 1, "nothing owed twice"


async def test_entries_published_while_a_clear_waits_are_cleared_by_it(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unit_of_work, "CLEAR_DELAY_S", 0.05)
    await run(uow, shelves, restock("WH-A", 1))
    clearing = uow._clearing
    assert clearing is not None
    await asyncio.sleep(0.07)  # the first clear ran; a later publish owes another
    await run(uow, shelves, restock("WH-B", 1))
    await asyncio.wait_for(uow._clearing, 2)  # type: ignore[arg-type]
    assert shelves.stored("WH-A").outbox == () and shelves.stored("WH-B").outbox == ()  # type: ignore[union-attr]


async def test_a_clear_that_fails_is_logged_and_the_other_stores_are_still_cleared(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            lines.append((event, fields))

    monkeypatch.setattr(unit_of_work, "log", Log())
    broken: MemoryStore[Shelf] = MemoryStore("broken", Shelf)

    async def drop_published(published: Any) -> None:
        raise ConnectionError("gone")

    broken.drop_published = drop_published  # type: ignore[method-assign]
    await run(uow, broken, restock("WH-A", 1))
    await run(uow, shelves, restock("WH-B", 1))
    await uow.settled()
    assert lines == [
        ("clearing published outbox entries failed", {"store": "broken", "error": "ConnectionError('gone')"})
    ]
    assert shelves.stored("WH-B").outbox == () and len(broken.stored("WH-A").outbox) == 1  # type: ignore[union-attr]


# --- a document's trace ------------------------------------------------------------------------------


TRACE_ID, SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def traceparent(span_id: int = SPAN_ID) -> str:
    return f"00-{TRACE_ID:032x}-{span_id:016x}-01"


def span(span_id: int = SPAN_ID) -> Any:
    return NonRecordingSpan(SpanContext(TRACE_ID, span_id, is_remote=False, trace_flags=TraceFlags(1)))


async def traced_run(uow: UnitOfWork, store: MemoryStore[Shelf], command: RestockRequested, **options: Any) -> None:
    await uow.run(store, [Record(command)], key=by_warehouse, decide=add_units, **options)


async def test_a_store_that_keeps_traces_remembers_the_trace_that_last_changed_a_document(
    shelves: MemoryStore[Shelf],
) -> None:
    uow = UnitOfWork(None, outbox_entry)
    flows: MemoryStore[Shelf] = MemoryStore("flows", Shelf, keeps_trace=True)
    with trace.use_span(span()):
        await traced_run(uow, flows, restock("WH-A", 1))
        await traced_run(uow, shelves, restock("WH-B", 1))
    assert flows.stored("WH-A").traceparent == traceparent()  # type: ignore[union-attr]
    assert shelves.stored("WH-B").traceparent is None, "only stores that keep traces remember one"  # type: ignore[union-attr]

    await traced_run(uow, flows, restock("WH-A", 2))  # a sweep: no trace of its own
    with trace.use_span(span(0x1111)):
        await traced_run(uow, flows, restock("WH-A", 3))
    stored = flows.stored("WH-A")
    assert stored is not None
    assert [e.get("traceparent") for e in stored.outbox] == [traceparent(), traceparent(), traceparent(0x1111)]
    assert stored.traceparent == traceparent(0x1111)
    assert stored.state == Shelf(units=6), "the work in the document's trace decided on its state"

    def silent(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        return Decision(Shelf(units=0))

    await uow.run(flows, [Record(restock("WH-A", 1))], key=by_warehouse, decide=silent)
    assert flows.stored("WH-A").traceparent == traceparent(0x1111), "no trace of its own: the flow's is kept"  # type: ignore[union-attr]
    with trace.use_span(span(0x2222)):
        await uow.run(flows, [Record(restock("WH-A", 1))], key=by_warehouse, decide=silent)
    # A change without events remembers its trace too (delivery details an approval stored are
    # what a later record without a trace, such as a courier's report, continues).
    assert flows.stored("WH-A").traceparent == traceparent(0x2222)  # type: ignore[union-attr]


async def test_without_keeping_traces_work_outside_a_trace_stays_outside(shelves: MemoryStore[Shelf]) -> None:
    uow = UnitOfWork(None, outbox_entry)
    shelves.put("WH-A", Shelf())
    stored = shelves.stored("WH-A")
    assert stored is not None
    shelves._documents["WH-A"] = dataclasses.replace(stored, traceparent=traceparent())
    await traced_run(uow, shelves, restock("WH-A", 1))
    after = shelves.stored("WH-A")
    assert after is not None and after.outbox[0].get("traceparent") is None
    assert after.traceparent == traceparent(), "a store that keeps none leaves what it found"


async def test_with_a_tracer_a_store_that_keeps_no_trace_makes_no_span(shelves: MemoryStore[Shelf]) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    uow = UnitOfWork(None, outbox_entry, provider.get_tracer("test"))
    shelves.put("WH-A", Shelf())
    stored = shelves.stored("WH-A")
    assert stored is not None
    shelves._documents["WH-A"] = dataclasses.replace(stored, traceparent=traceparent())
    await traced_run(uow, shelves, restock("WH-A", 1))
    await traced_run(uow, shelves, restock("WH-B", 1))
    assert exported.get_finished_spans() == ()
    assert [shelves.stored(d).outbox[0].get("traceparent") for d in ("WH-A", "WH-B")] == [None, None]  # type: ignore[union-attr]


async def test_with_a_tracer_work_outside_any_trace_gets_a_span_in_the_documents_trace(
    shelves: MemoryStore[Shelf],
) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    uow = UnitOfWork(None, outbox_entry, provider.get_tracer("test"))
    flows: MemoryStore[Shelf] = MemoryStore("flows", Shelf, keeps_trace=True)
    with trace.use_span(span()):
        await traced_run(uow, flows, restock("WH-A", 1))
    assert exported.get_finished_spans() == (), "inside a message's trace: no extra span"
    await traced_run(uow, flows, restock("WH-A", 2))
    [made] = exported.get_finished_spans()
    assert made.name == "flows decide"
    assert dict(made.attributes or {}) == {"db.collection.name": "flows", "pharmacy.document.id": "WH-A"}
    assert made.parent is not None and (made.parent.trace_id, made.parent.span_id) == (TRACE_ID, SPAN_ID)
    stored = flows.stored("WH-A")
    assert stored is not None
    assert stored.outbox[1]["traceparent"] == traceparent(made.context.span_id)
    assert stored.traceparent == traceparent(made.context.span_id)
    assert stored.state == Shelf(units=3)


# --- which applied ids are kept for good --------------------------------------------------------------


class CommandsOnly(MemoryStore[Shelf]):
    """Keeps for good the ids of messages from the commands topic only, and says which ids it was asked."""

    def __init__(self) -> None:
        super().__init__("shelves", Shelf)
        self.asked: list[list[str]] = []

    def remembers(self, topic: str | None) -> bool:
        return topic == "commands.v1"

    async def applied(self, message_ids: Any) -> set[str]:
        self.asked.append(sorted(message_ids))
        return await super().applied(message_ids)


async def test_only_messages_of_remembered_topics_are_looked_up_and_kept_for_good(uow: UnitOfWork) -> None:
    store = CommandsOnly()
    command = Record(restock("WH-A", 1), Position("commands.v1", 0, offset=5, floor=4))
    event = Record(restock("WH-B", 1), Position("events.v1", 0, offset=5, floor=4))
    unplaced = Record(restock("WH-C", 1))
    handled = await uow.run(store, [command, event, unplaced], key=by_warehouse, decide=add_units)
    assert [h.outcome for h in handled] == [Outcome.APPLIED] * 3
    assert store.asked == [[command.message_id]], "only the command is looked up"
    ids = [command.message_id, event.message_id, unplaced.message_id]
    assert await store.applied(ids) == {command.message_id}, "only the command is kept for good"
    stored = store.stored("WH-B")
    assert stored is not None and stored.tracking.recent == (event.message_id,), "the document still knows the event"

    store.asked.clear()
    again = Record(restock("WH-D", 1), Position("events.v1", 0, offset=6, floor=5))
    assert await run_records(uow, store, again, event) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert store.asked == [], "a batch without commands makes no lookup"


async def run_records(uow: UnitOfWork, store: MemoryStore[Shelf], *records: Record[Any]) -> list[Outcome]:
    return [h.outcome for h in await uow.run(store, list(records), key=by_warehouse, decide=add_units)]


def test_the_memory_store_remembers_every_topic() -> None:
    store: MemoryStore[Shelf] = MemoryStore("shelves", Shelf)
    assert store.remembers("commands.v1") and store.remembers(None)


# --- deciding on what the store's memory holds (DocumentMemory) ----------------------------------


@pytest.fixture
def remembering() -> MemoryStore[Shelf]:
    return MemoryStore("shelves", Shelf, memory=DocumentMemory())


async def untracked(uow: UnitOfWork, store: MemoryStore[Shelf], *commands: RestockRequested) -> list[Outcome]:
    """Without the applied-id lookup, so the round trips counted are the loads and saves alone."""
    records = [Record(c) for c in commands]
    return [h.outcome for h in await uow.run(store, records, key=by_warehouse, decide=add_units, tracked=False)]


async def test_a_document_written_a_moment_ago_is_decided_without_loading_it(
    uow: UnitOfWork, remembering: MemoryStore[Shelf]
) -> None:
    await untracked(uow, remembering, restock("WH-A", 1))
    assert remembering.round_trips == 2  # loaded (absent), saved
    await untracked(uow, remembering, restock("WH-A", 2), restock("WH-A", 3))
    assert remembering.round_trips == 3  # saved only
    assert remembering.state_of("WH-A") == Shelf(units=6)


async def test_a_copy_another_writer_made_stale_is_decided_again_on_the_database_version(
    uow: UnitOfWork, remembering: MemoryStore[Shelf], broker: Broker
) -> None:
    await untracked(uow, remembering, restock("WH-A", 1))
    remembering.put("WH-A", Shelf(units=100))  # another process wrote it since
    assert await untracked(uow, remembering, restock("WH-A", 5)) == [Outcome.APPLIED]
    assert remembering.state_of("WH-A") == Shelf(units=105)
    tags = [RestockRequested.model_validate_json(e["body"]).requested_by for e in broker.published]
    assert tags == ["after 1", "after 105"]  # nothing was published of the decision on the stale copy


@pytest.mark.parametrize(("in_memory", "in_database"), [(1, 60), (150, 90)], ids=["nothing to do", "refused"])
async def test_a_decision_that_saves_nothing_on_a_copy_stands_only_once_decided_on_the_database_version(
    uow: UnitOfWork, remembering: MemoryStore[Shelf], in_memory: int, in_database: int
) -> None:
    def until_full(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        """Nothing to do while the shelf holds under 50, refused over 100: decided on the true count."""
        units = shelf.units if shelf else 0
        if units < 50:
            return Decision.unchanged()
        if units > 100:
            return Decision.refused("full", "over a hundred")
        return Decision(Shelf(units=units + command.quantity))

    await untracked(uow, remembering, restock("WH-A", in_memory))
    remembering.put("WH-A", Shelf(units=in_database))  # another process wrote it since
    handled = await uow.run(remembering, [Record(restock("WH-A", 5))], key=by_warehouse, decide=until_full)
    assert [h.outcome for h in handled] == [Outcome.APPLIED]
    assert remembering.state_of("WH-A") == Shelf(units=in_database + 5)


async def test_an_unknown_document_presumed_new_is_inserted_without_a_load_or_found_by_the_insert(
    uow: UnitOfWork,
) -> None:
    store = MemoryStore("shelves", Shelf, memory=DocumentMemory(presumes_new=True))
    store.put("WH-OLD", Shelf(units=10))  # written before this process started
    assert await untracked(uow, store, restock("WH-NEW", 1)) == [Outcome.APPLIED]
    assert store.round_trips == 1  # the insert alone
    assert await untracked(uow, store, restock("WH-OLD", 1)) == [Outcome.APPLIED]
    assert store.state_of("WH-OLD") == Shelf(units=11)  # the insert lost, so it was loaded and decided again


async def test_a_duplicate_is_recognised_on_the_copy_without_a_load(
    uow: UnitOfWork, remembering: MemoryStore[Shelf]
) -> None:
    first = restock("WH-A", 5)
    await run(uow, remembering, first)
    before = remembering.round_trips
    assert await run(uow, remembering, first) == [Outcome.DUPLICATE]
    assert remembering.round_trips == before + 1  # the applied-id lookup; no load, no save
    assert remembering.state_of("WH-A") == Shelf(units=5)


async def test_after_its_entries_are_cleared_the_copy_is_on_the_new_version(
    uow: UnitOfWork, remembering: MemoryStore[Shelf]
) -> None:
    await untracked(uow, remembering, restock("WH-A", 1))
    await uow.clear_published()
    assert remembering.stored("WH-A").outbox == ()  # type: ignore[union-attr]
    before = remembering.round_trips
    await untracked(uow, remembering, restock("WH-A", 1))
    assert remembering.round_trips == before + 1  # saved on the cleared version: no lost race, no load
    assert remembering.state_of("WH-A") == Shelf(units=2)


def test_the_memory_keeps_the_documents_used_last() -> None:
    memory: DocumentMemory[Shelf] = DocumentMemory(capacity=2)
    memory.loaded([Stored(doc, Shelf(units=1), 1) for doc in ("a", "b")])
    memory.recall(["a"])  # used: "b" is now the oldest
    memory.loaded([Stored("c", Shelf(units=1), 1)])
    served, missing = memory.recall(["a", "b", "c"])
    assert sorted(served) == ["a", "c"] and missing == ["b"]


async def test_a_document_that_keeps_every_message_knows_one_sent_again_without_an_applied_id_list(
    uow: UnitOfWork,
) -> None:
    store = MemoryStore("deliveries", Shelf, keeps_every_message=True, remembers_commands=False)
    first = restock("WH-A", 1)
    await run(uow, store, first)
    await run(uow, store, *(restock("WH-A", 1) for _ in range(RECENT_MESSAGES + 100)))
    before = store.round_trips
    assert await run(uow, store, first) == [Outcome.DUPLICATE]
    assert store.round_trips - before == 1, "its load; no applied-id lookup"
    assert store.state_of("WH-A") == Shelf(units=RECENT_MESSAGES + 101)
    assert len(store.stored("WH-A").tracking.recent) == RECENT_MESSAGES + 101  # type: ignore[union-attr]


async def test_only_the_topics_a_store_remembers_are_looked_up_among_applied_ids(uow: UnitOfWork) -> None:
    store = MemoryStore("warehouses", Shelf, remembers_commands=["inventory.commands.v1"])
    command = Record(restock("WH-A", 1), Position("inventory.commands.v1", 0, 5, 4))
    event = Record(restock("WH-B", 1), Position("inventory.events.v1", 0, 5, 4))
    await uow.run(store, [command, event], key=by_warehouse, decide=add_units)
    assert await store.applied([command.message_id, event.message_id]) == {command.message_id}


# --- events published before the save (a projection's derived events) ---------------------------


async def run_first(uow: UnitOfWork, store: MemoryStore[Shelf], *commands: RestockRequested) -> list[Outcome]:
    handled = await uow.run(
        store, [Record(c) for c in commands], key=by_warehouse, decide=add_units, publish_first=True
    )
    return [h.outcome for h in handled]


async def test_published_first_the_events_go_out_before_the_save_and_no_outbox_is_written_or_cleared(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    for warehouse in ("WH-A", "WH-B"):
        shelves.put(warehouse, Shelf())
    saved_when_published: list[bool] = []
    publish = broker.publish

    async def watching(entries: Sequence[OutboxEntry]) -> None:
        saved_when_published.append(shelves.state_of("WH-A") != Shelf())
        await publish(entries)

    uow._publish = watching
    assert await run_first(uow, shelves, restock("WH-A", 1), restock("WH-A", 2), restock("WH-B", 1000)) == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.APPLIED,
    ]
    assert saved_when_published == [False], "one publish for the batch, before the save"
    assert len(broker.published) == 3
    assert shelves.stored("WH-A").outbox == ()  # type: ignore[union-attr]
    trips = shelves.round_trips
    await uow.settled()
    assert shelves.round_trips == trips and uow._clears == {}, "nothing to clear"


async def test_published_first_a_failed_publish_saves_nothing_and_fails_every_record_for_redelivery(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker, log: Log
) -> None:
    for warehouse in ("WH-A", "WH-B", "WH-C"):
        shelves.put(warehouse, Shelf())
    broker.down = True
    outcomes = await run_first(uow, shelves, restock("WH-A", 1), restock("WH-B", 1), restock("WH-C", 5_000))
    assert outcomes == [Outcome.FAILED] * 3
    assert shelves.state_of("WH-A") == shelves.state_of("WH-B") == Shelf()
    assert ("exception", "publishing before a save failed; the records are handled again", {"store": "shelves"}) in (
        log.lines
    )
    broker.down = False
    assert await run_first(uow, shelves, restock("WH-A", 1)) == [Outcome.APPLIED]


async def test_published_first_a_failed_save_is_decided_again_and_publishes_the_same_events_again(
    uow: UnitOfWork, shelves: MemoryStore[Shelf], broker: Broker
) -> None:
    command = restock("WH-A", 4, message_id="CMD-1")
    shelves.put("WH-A", Shelf())
    shelves.fail_writes_of("WH-A")
    assert await run_first(uow, shelves, command) == [Outcome.FAILED]
    first = [e["body"] for e in broker.published]
    shelves._failing.clear()
    assert await run_first(uow, shelves, command) == [Outcome.APPLIED]
    assert shelves.state_of("WH-A") == Shelf(units=4)
    again = [e["body"] for e in broker.published][len(first) :]
    # The decision's events are its own business (here: a copy of the command, the same each time).
    assert again == first, "at least once: the same events again, which readers drop by message id"


async def test_published_first_without_a_publisher_keeps_the_events_in_the_outbox_for_the_relay(
    shelves: MemoryStore[Shelf],
) -> None:
    uow = UnitOfWork(None, outbox_entry)
    await run_first(uow, shelves, restock("WH-A", 1))
    assert len(shelves.stored("WH-A").outbox) == 1  # type: ignore[union-attr]


async def test_published_first_a_document_not_known_to_exist_takes_the_outbox_instead(
    uow: UnitOfWork, broker: Broker
) -> None:
    """A copy presumed new may be wrong (another process wrote it): what it decides is not told
    before the insert proves it new, and is not told at all if the insert finds the document."""
    written_elsewhere = MemoryStore("shelves", Shelf, memory=DocumentMemory(presumes_new=True))
    written_elsewhere.put("WH-A", Shelf(units=5))
    written_elsewhere.memory.forget(["WH-A"])  # type: ignore[union-attr]
    command = restock("WH-A", 1)
    assert await run_first(uow, written_elsewhere, command) == [Outcome.APPLIED]
    assert written_elsewhere.state_of("WH-A") == Shelf(units=6), "decided again on the stored version"
    assert [e["body"] for e in broker.published].count(broker.published[0]["body"]) == 1
    assert "after 6" in broker.published[0]["body"], "only the decision on the stored version was told"
