"""The document store against the real dev database (no broker): what `apply` promises.

State, events and the handled message id are written in one version-guarded write; a message
applied twice changes nothing; a writer that lost a race decides again on a fresh read; events wait
in the outbox until the broker confirmed them; a document that cannot be written fails alone.
Everything here goes through the store's public methods, so it holds for any implementation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import pytest
import structlog.testing
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pydantic import BaseModel
from pymongo.errors import ConnectionFailure

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import RestockRequested
from services.ops.devstack import free_port
from services.runtime.documents import Change, ConcurrencyConflict, DocumentStore
from services.runtime.errors import Refused
from services.runtime.tracking import Position, current_position

TOPIC = topics.INVENTORY_COMMANDS


@pytest.fixture(autouse=True)
def _logs_kept_not_rendered() -> Iterator[None]:
    """Rendering a logged traceback is slow (mutmut's copies of the runtime are huge): keep it unrendered."""
    with structlog.testing.capture_logs():
        yield


class Counted(BaseModel):
    count: int
    tag: str = ""


class Dated(BaseModel):
    count: int
    due: date


def event(marker: str) -> RestockRequested:
    return RestockRequested(
        correlation_id=f"RX-{marker}",
        producer="test",
        warehouse_id=f"WH-{marker}",
        drug_code="D",
        lot_id="L1",
        expiry_date=date(2030, 1, 1),
        quantity=1,
        requested_by="test",
    )


def increment(current: Counted | None) -> Change[Counted]:
    return Change(Counted(count=(current.count if current else 0) + 1, tag=current.tag if current else ""))


def emitting(*events: RestockRequested) -> Any:
    def decide(current: Counted | None) -> Change[Counted]:
        return Change(increment(current).state, list(events))

    return decide


def new_store(database: AsyncIOMotorDatabase, name: str | None = None) -> DocumentStore[Counted]:
    return DocumentStore(database, name or f"c{uuid.uuid4().hex[:10]}", Counted)


async def raw(store: DocumentStore[Any], doc_id: str) -> dict[str, Any] | None:
    return await store._collection.database[store.name].find_one({"_id": doc_id})


# --- state, version and handled ids ---------------------------------------------------------------


async def test_a_new_document_holds_its_state_version_and_handled_id(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    change = await store.apply("d", increment, message_id="m1")
    assert change is not None and change.state == Counted(count=1) and list(change.events) == []
    assert await store.get("d") == Counted(count=1)
    doc = await raw(store, "d")
    assert doc is not None
    assert (doc["version"], doc["state"], doc["handled"]) == (1, {"count": 1, "tag": ""}, ["m1"])
    assert (doc["outbox"], doc["outbox_pending"], doc["positions"]) == ([], 0, {})
    assert isinstance(doc["write_id"], str) and len(doc["write_id"]) == 32

    await store.apply("d", increment, message_id="m2")
    doc = await raw(store, "d")
    assert doc is not None and (doc["version"], doc["state"]["count"], doc["handled"]) == (2, 2, ["m1", "m2"])
    assert await store.versions() == {"d": (2, {"count": 2, "tag": ""})}


async def test_a_message_applied_twice_changes_nothing(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    calls: list[Counted | None] = []

    def counting(current: Counted | None) -> Change[Counted]:
        calls.append(current)
        return increment(current)

    assert await store.apply("d", counting, message_id="m1") is not None
    assert await store.apply("d", counting, message_id="m1") is None
    # another process (no cached copy) recognises it too
    assert await new_store(database, store.name).apply("d", counting, message_id="m1") is None
    assert calls == [None], "a duplicate is recognised before its decision runs"
    assert await store.versions() == {"d": (1, {"count": 1, "tag": ""})}


async def test_messages_without_an_id_are_applied_every_time(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    current_position.set(Position("t.v1", 0, 5, 4))
    try:
        assert await store.apply("d", increment) is not None
        assert await store.apply("d", increment) is not None, "no id: not tracked, not even by its offset"
    finally:
        current_position.set(None)
    doc = await raw(store, "d")
    assert doc is not None and (doc["state"]["count"], doc["handled"], doc["positions"]) == (2, [], {})


async def test_a_decision_that_changes_nothing_writes_nothing(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    assert await store.apply("new", lambda _: None, message_id="m0") is None
    assert await store.get("new") is None and await store.versions() == {}

    await store.apply("d", increment, message_id="m1")
    assert await store.apply("d", lambda _: None, message_id="m2") is None
    assert await store.versions() == {"d": (1, {"count": 1, "tag": ""})}
    # not remembered either: the same message may still change the document later
    assert await store.apply("d", increment, message_id="m2") is not None


async def test_decisions_queued_together_see_each_other(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    results = await asyncio.gather(*(store.apply("d", increment, message_id=f"m{i}") for i in range(5)))
    assert sorted(r.state.count for r in results if r is not None) == [1, 2, 3, 4, 5]
    doc = await raw(store, "d")
    assert doc is not None and doc["state"]["count"] == 5 and sorted(doc["handled"]) == [f"m{i}" for i in range(5)]


async def test_events_of_decisions_queued_together_are_all_kept(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    events = [event(str(i)) for i in range(3)]
    await asyncio.gather(*(store.apply("d", emitting(e), message_id=f"m{i}") for i, e in enumerate(events)))
    [(_, entries)] = await store.pending_outbox()
    assert [e["message_id"] for e in entries] == [e.message_id for e in events]


async def test_a_duplicate_or_a_failing_decision_does_not_hold_up_the_next_one_on_the_document(
    database: AsyncIOMotorDatabase,
) -> None:
    store = new_store(database)
    await store.apply("d", increment, message_id="m1")

    def broken(_: Counted | None) -> Change[Counted]:
        raise ValueError("a bug in one decision")

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            store.apply("d", increment, message_id="m1"),  # a duplicate
            store.apply("d", broken, message_id="m2"),
            store.apply("d", increment, message_id="m3"),
            return_exceptions=True,
        ),
        5,
    )
    assert outcomes[0] is None and isinstance(outcomes[1], ValueError) and isinstance(outcomes[2], Change)
    doc = await raw(store, "d")
    assert doc is not None and doc["handled"] == ["m1", "m3"] and doc["state"]["count"] == 2


async def test_a_document_remembers_exactly_its_last_500_message_ids(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    await asyncio.gather(*(store.apply("d", increment, message_id=f"m{i}") for i in range(501)))
    doc = await raw(store, "d")
    assert doc is not None and len(doc["handled"]) == 500 and doc["handled"][0] == "m1"
    assert await store.apply("d", increment, message_id="m1") is None, "the oldest remembered"
    assert await store.apply("d", increment, message_id="m0") is not None, "forgotten after 500 newer ones"


# --- positions (tracking) -------------------------------------------------------------------------


async def _apply_at(store: DocumentStore[Counted], position: Position, message_id: str) -> Change[Counted] | None:
    current_position.set(position)
    try:
        return await store.apply("d", increment, message_id=message_id)
    finally:
        current_position.set(None)


async def test_a_replay_below_the_absorbed_offset_changes_nothing_whatever_its_id(
    database: AsyncIOMotorDatabase,
) -> None:
    store = new_store(database)
    assert await _apply_at(store, Position("orders.v1", 2, offset=11, floor=9), "a") is not None
    assert await _apply_at(store, Position("orders.v1", 2, offset=10, floor=9), "b") is not None
    doc = await raw(store, "d")
    assert doc is not None and doc["positions"] == {"orders_v1:2": 9}, "the floor, under a key without dots"
    assert await _apply_at(store, Position("orders.v1", 2, offset=9, floor=8), "other-id") is None
    assert await _apply_at(store, Position("orders.v1", 2, offset=10, floor=8), "c") is not None, "above the floor"
    # a lower floor never moves the absorbed offset back
    doc = await raw(store, "d")
    assert doc is not None and doc["positions"] == {"orders_v1:2": 9}
    # another partition and another topic are tracked apart
    assert await _apply_at(store, Position("orders.v1", 3, offset=0, floor=-1), "d") is not None
    assert await _apply_at(store, Position("orders_v2", 2, offset=1, floor=0), "e") is not None
    doc = await raw(store, "d")
    assert doc is not None and doc["positions"] == {"orders_v1:2": 9, "orders_v1:3": -1, "orders_v2:2": 0}
    assert doc["state"]["count"] == 5


async def test_a_first_record_at_offset_zero_is_not_taken_for_a_replay(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    assert await _apply_at(store, Position("t.v1", 0, offset=0, floor=-1), "first") is not None
    assert await _apply_at(store, Position("t.v1", 0, offset=1, floor=0), "second") is not None
    assert await _apply_at(store, Position("t.v1", 0, offset=0, floor=-1), "first-again") is None
    doc = await raw(store, "d")
    assert doc is not None and doc["positions"] == {"t_v1:0": 0} and doc["state"]["count"] == 2


# --- the version guard ------------------------------------------------------------------------------


async def test_a_writer_whose_copy_is_stale_decides_again_on_a_fresh_read(database: AsyncIOMotorDatabase) -> None:
    mine = new_store(database)
    theirs = new_store(database, mine.name)  # another process on the same collection
    seen: list[int | None] = []

    def counting(current: Counted | None) -> Change[Counted]:
        seen.append(current.count if current else None)
        return increment(current)

    await mine.apply("d", increment, message_id="a")
    await theirs.apply("d", increment, message_id="b")
    await theirs.apply("d", increment, message_id="c")
    assert await mine.apply("d", counting, message_id="d") is not None
    assert seen == [1, 3], "decided on its own last copy, lost the guard, decided again on the database's"
    assert await mine.versions() == {"d": (4, {"count": 4, "tag": ""})}
    doc = await raw(mine, "d")
    assert doc is not None and doc["handled"] == ["a", "b", "c", "d"]


async def test_two_writers_creating_one_document_both_count(database: AsyncIOMotorDatabase) -> None:
    mine = new_store(database)
    theirs = new_store(database, mine.name)
    await asyncio.gather(mine.apply("d", increment, message_id="a"), theirs.apply("d", increment, message_id="b"))
    assert await mine.versions() == {"d": (2, {"count": 2, "tag": ""})}


async def test_concurrent_writers_in_two_processes_lose_no_update(database: AsyncIOMotorDatabase) -> None:
    mine = new_store(database)
    theirs = new_store(database, mine.name)
    await asyncio.gather(
        *(mine.apply("d", increment, message_id=f"a{i}") for i in range(15)),
        *(theirs.apply("d", increment, message_id=f"b{i}") for i in range(15)),
    )
    assert await mine.get("d") == Counted(count=30)


async def test_a_write_that_can_never_succeed_gives_up(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    await store.ensure_indexes(("tag",), plain=["count"])
    await store.apply("a", lambda _: Change(Counted(count=1, tag="same")))
    attempts: list[Counted | None] = []

    def same_tag(current: Counted | None) -> Change[Counted]:
        attempts.append(current)
        return Change(Counted(count=1, tag="same"))

    doomed, fine = await asyncio.gather(
        store.apply("b", same_tag),
        store.apply("c", lambda _: Change(Counted(count=1, tag="c"))),  # in the same bulk write, after b
        return_exceptions=True,
    )
    assert isinstance(doomed, ConcurrencyConflict)
    assert str(doomed) == f"{store.name}/b: too many concurrent writers"
    assert len(attempts) == 50, "decided afresh each time, 50 times in all"
    assert await store.get("b") is None
    assert isinstance(fine, Change) and await store.get("c") == Counted(count=1, tag="c"), "b's failure is b's alone"
    # the store carries on
    assert await store.apply("c", lambda _: Change(Counted(count=1, tag="other"))) is not None


async def test_a_cancelled_callers_write_is_dropped_and_its_neighbours_still_retried(
    database: AsyncIOMotorDatabase,
) -> None:
    mine = new_store(database)
    theirs = new_store(database, mine.name)
    await mine.apply("d", increment, message_id="a")
    await theirs.apply("d", increment, message_id="b")  # mine's copy is stale now
    abandoned = asyncio.create_task(mine.apply("d", increment, message_id="x"))
    kept = asyncio.create_task(mine.apply("d", increment, message_id="y"))
    await asyncio.sleep(0)  # both queued for the same group write
    abandoned.cancel()
    assert await asyncio.wait_for(kept, 5) is not None
    doc = await raw(mine, "d")
    assert doc is not None and doc["handled"] == ["a", "b", "y"] and doc["state"]["count"] == 3


async def test_a_clear_that_loses_a_race_leaves_the_rest_of_its_group_written(
    database: AsyncIOMotorDatabase,
) -> None:
    store, broker = new_store(database), Broker()
    store.publish_with(broker.publish)
    await store.apply("d", emitting(event("1")))  # published; its clear is due in a second
    await new_store(database, store.name).apply("d", increment)  # another process writes it first
    time.sleep(1.1)  # noqa: ASYNC251 - blocks the loop on purpose: the clear and the next write form one group
    assert await asyncio.wait_for(store.apply("other", increment), 5) is not None
    await asyncio.wait_for(store.settled(), 10)
    doc = await raw(store, "d")
    assert doc is not None and doc["state"]["count"] == 2 and len(doc["outbox"]) == 1, "left for the relay"


async def test_queries_may_compare_with_dates(database: AsyncIOMotorDatabase) -> None:
    store: DocumentStore[Dated] = DocumentStore(database, f"c{uuid.uuid4().hex[:10]}", Dated)
    await store.apply("a", lambda _: Change(Dated(count=1, due=date(2030, 1, 1))))
    await store.apply("b", lambda _: Change(Dated(count=2, due=date(2031, 1, 1))))
    assert await store.find(due=date(2030, 1, 1)) == [Dated(count=1, due=date(2030, 1, 1))]
    assert await store.values_of("count", due=date(2031, 1, 1)) == [2]


async def test_a_stale_cached_copy_does_not_make_a_refusal_stand(database: AsyncIOMotorDatabase) -> None:
    mine = new_store(database)
    theirs = new_store(database, mine.name)

    def refuse_below_two(current: Counted | None) -> Change[Counted]:
        if current is None or current.count < 2:
            raise Refused("too_early", "count below 2")
        return increment(current)

    await mine.apply("d", increment)
    await theirs.apply("d", increment)  # mine's copy says 1, the database 2
    assert await mine.apply("d", refuse_below_two, message_id="r1") is not None
    assert await mine.get("d") == Counted(count=3)

    def nothing_below_three(current: Counted | None) -> Change[Counted] | None:
        return None if current is None or current.count < 3 else increment(current)

    await mine.apply("f", increment)
    await theirs.apply("f", increment)
    await theirs.apply("f", increment)  # mine's copy says 1, the database 3
    assert await mine.apply("f", nothing_below_three, message_id="n1") is not None
    assert await mine.get("f") == Counted(count=4)

    await mine.apply("e", increment)
    with pytest.raises(Refused):
        await mine.apply("e", refuse_below_two, message_id="r2")  # right: the database agrees
    versions = await mine.versions()
    assert (versions["d"], versions["e"]) == ((3, {"count": 3, "tag": ""}), (1, {"count": 1, "tag": ""}))


# --- refusals and failures ----------------------------------------------------------------------------


async def test_a_refusal_or_a_failing_decision_writes_nothing_and_fails_alone(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    await store.apply("refused", increment, message_id="m0")

    def refuse(_: Counted | None) -> Change[Counted]:
        raise Refused("not_yours", "refused")

    def broken(_: Counted | None) -> Change[Counted]:
        raise ValueError("a bug in one decision")

    outcomes = await asyncio.gather(
        store.apply("refused", refuse, message_id="r1"),
        store.apply("broken", broken, message_id="b1"),
        store.apply("good", increment, message_id="g1"),
        store.apply("refused", increment, message_id="r2"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], Refused) and isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[2], Change) and isinstance(outcomes[3], Change)
    doc = await raw(store, "refused")
    assert doc is not None and doc["handled"] == ["m0", "r2"], "a refused message is not remembered"
    assert doc["state"]["count"] == 2
    assert await store.get("broken") is None and await store.get("good") == Counted(count=1)
    # the refused message is refused again, not absorbed
    with pytest.raises(Refused):
        await store.apply("refused", refuse, message_id="r1")


async def test_an_unreachable_database_fails_each_waiting_write() -> None:
    client = AsyncIOMotorClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=200)
    store = new_store(client["nowhere"])
    try:
        outcomes = await asyncio.gather(
            store.apply("a", increment), store.apply("b", increment), return_exceptions=True
        )
        assert all(isinstance(o, ConnectionFailure) for o in outcomes), outcomes
        with pytest.raises(ConnectionFailure):
            await store.apply("a", increment)  # and the next write tries again
        await asyncio.wait_for(store.settled(), 5)
    finally:
        client.close()


async def test_a_document_whose_state_no_longer_validates_fails_alone(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    await database[store.name].insert_one(
        {"_id": "old", "version": 4, "state": {"count": "many"}, "outbox": [], "outbox_pending": 0, "handled": []}
    )
    outcomes = await asyncio.gather(
        store.apply("old", increment, message_id="o1"),
        store.apply("old", increment, message_id="o2"),
        store.apply("fine", increment, message_id="f1"),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == ["ValidationError", "ValidationError", "Change"]
    doc = await raw(store, "old")
    assert doc is not None and doc["version"] == 4
    assert await store.get("fine") == Counted(count=1)


async def test_a_document_written_before_positions_were_kept_is_still_applied(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    await database[store.name].insert_one(
        {"_id": "old", "version": 4, "state": {"count": 1}, "outbox": [], "outbox_pending": 0, "handled": ["m0"]}
    )
    current_position.set(Position("t.v1", 0, offset=3, floor=2))
    try:
        assert await store.apply("old", increment, message_id="m2") is not None
        assert await store.apply("old", increment, message_id="m0") is None
    finally:
        current_position.set(None)
    doc = await raw(store, "old")
    assert doc is not None and (doc["version"], doc["state"]["count"], doc["positions"]) == (5, 2, {"t_v1:0": 2})


async def test_a_document_whose_outbox_has_no_age_is_relayed_at_once(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    left = {"message_id": "left", "topic": TOPIC.name, "key": "k", "type": "t", "correlation_id": "c", "body": "{}"}
    await database[store.name].insert_one(
        {"_id": "old", "version": 1, "state": {"count": 1}, "outbox": [left], "outbox_pending": 1, "handled": []}
    )
    await store.apply("old", emitting(event("1")))
    doc = await raw(store, "old")
    assert doc is not None and doc["outbox_at"] == 0.0, "as old as can be"
    assert [d for d, _ in await store.pending_outbox(written_before=time.time() - 60)] == ["old"]


# --- traces ------------------------------------------------------------------------------------------


TRACE_ID, SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def _span(trace_id: int = TRACE_ID, span_id: int = SPAN_ID) -> Any:
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)))


def _traceparent(trace_id: int = TRACE_ID, span_id: int = SPAN_ID) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


async def test_events_carry_the_trace_they_were_caused_in(database: AsyncIOMotorDatabase) -> None:
    from opentelemetry import trace

    store = new_store(database)
    with trace.use_span(_span()):
        await store.apply("d", emitting(event("1")))
    await store.apply("d", emitting(event("2")))  # outside any trace
    [(_, entries)] = await store.pending_outbox()
    assert [e.get("traceparent") for e in entries] == [_traceparent(), None]
    doc = await raw(store, "d")
    assert doc is not None and "traceparent" not in doc, "only stores that keep traces remember one"


async def test_a_document_keeps_its_trace_and_work_outside_any_trace_continues_it(
    database: AsyncIOMotorDatabase,
) -> None:
    from opentelemetry import trace

    store: DocumentStore[Counted] = DocumentStore(database, f"c{uuid.uuid4().hex[:10]}", Counted, keeps_trace=True)
    with trace.use_span(_span()):
        await store.apply("d", emitting(event("1")))
    doc = await raw(store, "d")
    assert doc is not None and doc["traceparent"] == _traceparent()

    await store.apply("d", emitting(event("2")))  # a sweep: no trace of its own
    with trace.use_span(_span(span_id=0x1111)):
        await store.apply("d", emitting(event("3")))  # a message in the same trace, a later span
    [(_, entries)] = await store.pending_outbox()
    assert [e.get("traceparent") for e in entries] == [
        _traceparent(),
        _traceparent(),
        _traceparent(span_id=0x1111),
    ]
    doc = await raw(store, "d")
    assert doc is not None and doc["traceparent"] == _traceparent(span_id=0x1111)

    await store.apply("d", increment)  # no events: the trace is kept all the same
    doc = await raw(store, "d")
    assert doc is not None and doc["traceparent"] == _traceparent(span_id=0x1111)


async def test_with_a_tracer_work_outside_any_trace_gets_a_span_in_the_documents_trace(
    database: AsyncIOMotorDatabase,
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    store: DocumentStore[Counted] = DocumentStore(database, f"c{uuid.uuid4().hex[:10]}", Counted, keeps_trace=True)
    store.trace_with(provider.get_tracer("test"))
    with trace.use_span(_span()):
        await store.apply("d", emitting(event("1")))
    assert exported.get_finished_spans() == (), "inside a message's trace: no extra span"
    await store.apply("d", emitting(event("2")))
    [span] = exported.get_finished_spans()
    assert span.name == f"{store.name} apply"
    assert dict(span.attributes or {}) == {"db.collection.name": store.name, "pharmacy.document.id": "d"}
    assert span.parent is not None and (span.parent.trace_id, span.parent.span_id) == (TRACE_ID, SPAN_ID)
    [(_, entries)] = await store.pending_outbox()
    assert entries[1]["traceparent"] == _traceparent(span_id=span.context.span_id)
    doc = await raw(store, "d")
    assert doc is not None and doc["traceparent"] == _traceparent(span_id=span.context.span_id)


# --- reads -----------------------------------------------------------------------------------------


async def test_reads_by_id_and_by_state(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    for doc_id, count, tag in (("a", 1, "x"), ("b", 2, "x"), ("c", 3, "y")):
        await store.apply(doc_id, lambda _, c=count, t=tag: Change(Counted(count=c, tag=t)))
    reader = new_store(database, store.name)
    assert await reader.get("a") == Counted(count=1, tag="x") and await reader.get("zz") is None
    many = await reader.get_many(["a", "c", "zz", "a"])
    assert many == {"a": Counted(count=1, tag="x"), "c": Counted(count=3, tag="y")}
    assert sorted(m.count for m in await reader.find(tag="x")) == [1, 2]
    assert await reader.find(tag="none") == []
    assert sorted(await reader.values_of("count", tag="x")) == [1, 2]
    assert sorted(await reader.values_of("tag", count={"$gt": 1})) == ["x", "y"]
    both = await asyncio.gather(reader.find(tag="y"), reader.values_of("count", tag="y"))
    assert both == [[Counted(count=3, tag="y")], [3]], "concurrent queries of both kinds share a round trip"


# --- the outbox ------------------------------------------------------------------------------------


async def test_events_wait_in_the_outbox_with_everything_needed_to_publish_them(
    database: AsyncIOMotorDatabase,
) -> None:
    store = new_store(database)
    assert not store.publishes_its_writes
    first, second = event("1"), event("2")
    before = time.time()
    await store.apply("d", emitting(first), message_id="m1")
    after = time.time()
    pending = await store.pending_outbox()
    assert pending == [
        (
            "d",
            [
                {
                    "message_id": first.message_id,
                    "topic": TOPIC.name,
                    "key": "WH-1",
                    "type": first.type,
                    "correlation_id": "RX-1",
                    "body": first.model_dump_json(),
                }
            ],
        )
    ]
    doc = await raw(store, "d")
    assert doc is not None and doc["outbox_pending"] == 1 and before <= doc["outbox_at"] <= after

    await store.apply("d", emitting(second), message_id="m2")
    doc = await raw(store, "d")
    assert doc is not None and [e["message_id"] for e in doc["outbox"]] == [first.message_id, second.message_id]
    assert doc["outbox_pending"] == 2 and before <= doc["outbox_at"] <= after, "the age of the oldest entry"

    assert await store.pending_outbox(written_before=before) == []
    assert [d for d, _ in await store.pending_outbox(written_before=time.time() + 1)] == ["d"]


async def test_only_documents_with_events_are_pending_and_the_limit_holds(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    await store.apply("quiet", increment)
    for i in range(3):
        await store.apply(f"loud{i}", emitting(event(str(i))))
    assert sorted(d for d, _ in await store.pending_outbox()) == ["loud0", "loud1", "loud2"]
    assert len(await store.pending_outbox(limit=2)) == 2


async def test_one_look_at_the_outbox_returns_at_most_200_documents(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    await asyncio.gather(*(store.apply(f"d{i}", emitting(event(str(i)))) for i in range(201)))
    assert len(await store.pending_outbox()) == 200


async def test_remove_published_drops_exactly_the_published_entries(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    first, second = event("1"), event("2")
    await store.apply("d", emitting(first, second))
    await store.remove_published("d", {first.message_id})
    doc = await raw(store, "d")
    assert doc is not None and [e["message_id"] for e in doc["outbox"]] == [second.message_id]
    assert (doc["outbox_pending"], doc["version"], doc["state"]["count"]) == (1, 2, 1)

    await store.remove_published("d", {"never-stored"})
    doc = await raw(store, "d")
    assert doc is not None and doc["version"] == 2, "nothing to remove: no write"
    await store.remove_published("missing", {second.message_id})  # no such document: nothing to do

    await store.remove_published("d", {second.message_id})
    assert await store.pending_outbox() == []
    doc = await raw(store, "d")
    assert doc is not None and (doc["outbox"], doc["outbox_pending"], doc["version"]) == ([], 0, 3)
    # the next write starts a new outbox with a new age
    await store.apply("d", emitting(event("3")))
    doc = await raw(store, "d")
    assert doc is not None and doc["outbox_at"] > time.time() - 5


async def test_remove_published_after_another_write_keeps_that_write(database: AsyncIOMotorDatabase) -> None:
    store = new_store(database)
    other = new_store(database, store.name)
    first = event("1")
    await store.apply("d", emitting(first))
    pending = await store.pending_outbox()
    await other.apply("d", emitting(event("2")))  # written between the relay's read and its removal
    await store.remove_published("d", {e["message_id"] for _, entries in pending for e in entries})
    doc = await raw(store, "d")
    assert doc is not None and doc["state"]["count"] == 2 and len(doc["outbox"]) == 1 and doc["outbox_pending"] == 1


class Broker:
    """Stands in for the broker: records what was published, or fails."""

    def __init__(self) -> None:
        self.published: list[list[str]] = []
        self.failing = False

    async def publish(self, entries: Sequence[dict[str, Any]]) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.published.append([e["message_id"] for e in entries])


async def test_a_store_that_publishes_its_writes_clears_its_outbox_after_the_broker_confirmed(
    database: AsyncIOMotorDatabase,
) -> None:
    store, broker = new_store(database), Broker()
    store.publish_with(broker.publish)
    assert store.publishes_its_writes
    first = event("1")
    await store.apply("d", emitting(first))
    assert broker.published == [[first.message_id]]
    doc = await raw(store, "d")
    assert doc is not None and doc["outbox_pending"] == 1, "cleared a moment later, not in the write itself"
    started = time.monotonic()
    await asyncio.wait_for(store.settled(), 10)
    assert time.monotonic() - started >= 0.5, "the clear waits a while, in case the document is written again"
    doc = await raw(store, "d")
    assert doc is not None and (doc["outbox"], doc["outbox_pending"], doc["version"]) == ([], 0, 2)
    assert doc["state"]["count"] == 1
    assert await store.pending_outbox() == []


async def test_a_document_written_again_drops_its_published_entries_in_that_write(
    database: AsyncIOMotorDatabase,
) -> None:
    store, broker = new_store(database), Broker()
    store.publish_with(broker.publish)
    await store.apply("d", emitting(event("1")))
    await store.apply("d", increment)  # before the delayed clear is due
    doc = await raw(store, "d")
    assert doc is not None and (doc["outbox"], doc["outbox_pending"], doc["version"]) == ([], 0, 2)
    await asyncio.wait_for(store.settled(), 10)
    doc = await raw(store, "d")
    assert doc is not None and doc["version"] == 2, "no separate clear was needed"


async def test_a_decision_that_changes_nothing_still_drops_published_entries(
    database: AsyncIOMotorDatabase,
) -> None:
    store, broker = new_store(database), Broker()
    store.publish_with(broker.publish)
    await store.apply("d", emitting(event("1")))
    assert await store.apply("d", lambda _: None) is None  # before the delayed clear is due
    doc = await raw(store, "d")
    assert doc is not None and (doc["outbox"], doc["version"], doc["state"]["count"]) == ([], 2, 1)


async def test_events_the_broker_did_not_confirm_stay_and_go_out_first_next_time(
    database: AsyncIOMotorDatabase,
) -> None:
    store, broker = new_store(database), Broker()
    store.publish_with(broker.publish)
    first, second = event("1"), event("2")
    broker.failing = True
    assert await store.apply("d", emitting(first)) is not None, "the write stands; the relay publishes later"
    await asyncio.wait_for(store.settled(), 5)
    assert [e["message_id"] for _, entries in await store.pending_outbox() for e in entries] == [first.message_id]

    broker.failing = False
    await store.apply("d", emitting(second))
    assert broker.published == [[first.message_id, second.message_id]], "oldest first, so one key keeps its order"
    await asyncio.wait_for(store.settled(), 10)
    assert await store.pending_outbox() == []


async def test_a_process_that_did_not_write_a_document_does_not_drop_its_unconfirmed_events(
    database: AsyncIOMotorDatabase,
) -> None:
    crashed = new_store(database)
    first = event("1")
    await crashed.apply("d", emitting(first))  # written, never published (the process died)
    survivor, broker = new_store(database, crashed.name), Broker()
    survivor.publish_with(broker.publish)
    await survivor.apply("d", emitting(event("2")))
    assert broker.published[0][0] == first.message_id, "the leftover goes out with the new event"
    await asyncio.wait_for(survivor.settled(), 10)
    assert await survivor.pending_outbox() == []
