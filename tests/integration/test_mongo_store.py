"""The batch `Store` on MongoDB (`services.runtime.mongo_store`) against the standalone dev database:
the document layout the relay reads, version-guarded saves in one bulk write with lost and failed
documents told apart, an unreachable database reported as an outage, applied ids for good, the
relay's query by age, and published entries dropped from outboxes even when another writer came
first.

The promises both stores share: test_store_contract.py; the in-memory store: tests/unit/test_memory_store.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog.testing
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pydantic import BaseModel

from services.ops.devstack import free_port
from services.runtime import mongo_store
from services.runtime.mongo import TRANSIENT_ERRORS, connect
from services.runtime.mongo_store import MongoStore
from services.runtime.store import Save, Saved, Stored, Tracking


@pytest.fixture(autouse=True)
def _logs_kept_not_rendered() -> Iterator[None]:
    with structlog.testing.capture_logs():
        yield


class Counted(BaseModel):
    count: int
    extra: Any = None


def entry(message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "topic": "t.v1",
        "key": "k",
        "type": "x",
        "correlation_id": "c",
        "body": "{}",
        **extra,
    }


def insert(doc_id: str, count: int, *, applied: tuple[str, ...] = (), outbox: tuple[str, ...] = ()) -> Save[Counted]:
    return Save(doc_id, 0, Counted(count=count), tuple(entry(m) for m in outbox), Tracking(applied), applied)


def replace(stored: Stored[Counted], count: int, *, applied: tuple[str, ...] = ()) -> Save[Counted]:
    assert stored.state is not None
    return Save(stored.id, stored.version, Counted(count=count), stored.outbox, stored.tracking, applied)


@pytest.fixture
def store(database: AsyncIOMotorDatabase) -> MongoStore[Counted]:
    return MongoStore(database, "counted", Counted, remembers_commands=True)


async def raw(store: MongoStore[Counted], doc_id: str) -> dict[str, Any]:
    document = await store._collection.find_one({"_id": doc_id})
    assert document is not None
    return document


# --- the document ---------------------------------------------------------------------------------


async def test_a_saved_document_has_the_layout_the_relay_reads(store: MongoStore[Counted]) -> None:
    tracking = Tracking(("m1", "m2"), {"t_v1:0": 7})
    outbox = (entry("e1", queued_at=200.5), entry("e2", queued_at=100.25))
    before = time.time()
    saved = await store.save(
        [
            Save("a", 0, Counted(count=1), outbox, tracking, ("m1", "m2"), "00-trace"),
            Save("b", 0, Counted(count=2), (entry("e3"),), Tracking()),
            Save("c", 0, Counted(count=3), (), Tracking()),
        ]
    )
    after = time.time()
    assert (saved.written, saved.lost, saved.failed) == (["a", "b", "c"], [], {})
    a, b, c = [await raw(store, d) for d in "abc"]
    assert {k: v for k, v in a.items() if k != "write_id"} == {
        "_id": "a",
        "version": 1,
        "state": {"count": 1, "extra": None},
        "outbox": list(outbox),
        "outbox_pending": 2,
        "outbox_at": 100.25,
        "handled": ["m1", "m2"],
        "positions": {"t_v1:0": 7},
        "traceparent": "00-trace",
    }
    assert isinstance(a["write_id"], str) and len(a["write_id"]) == 32
    assert a["write_id"] == b["write_id"] == c["write_id"], "one write id per save"
    assert "traceparent" not in b and b["outbox_pending"] == 1 and before <= b["outbox_at"] <= after
    assert (c["outbox"], c["outbox_pending"], c["outbox_at"], c["handled"], c["positions"]) == ([], 0, 0.0, [], {})
    loaded = await store.load(["a"])
    assert loaded["a"] == Stored("a", Counted(count=1), 1, outbox, tracking, "00-trace")
    again = await store.save([replace(loaded["a"], 5)])
    assert again.written == ["a"] and (await raw(store, "a"))["write_id"] != a["write_id"]


async def test_load_returns_every_id_once_absent_ones_as_version_zero(store: MongoStore[Counted]) -> None:
    await store.save([insert("a", 1)])
    loaded = await store.load(["b", "a", "b"])
    assert list(loaded) == ["b", "a"]
    assert loaded["b"] == Stored("b") and loaded["a"].state == Counted(count=1) and loaded["a"].version == 1
    assert await store.load([]) == {}


async def test_a_document_written_without_the_optional_fields_loads_with_defaults(store: MongoStore[Counted]) -> None:
    await store._collection.insert_one({"_id": "old", "version": 3, "state": {"count": 4}})
    loaded = await store.load(["old"])
    assert loaded["old"] == Stored("old", Counted(count=4), 3, (), Tracking(), None)
    assert await store.all() == [loaded["old"]]


# --- saves ------------------------------------------------------------------------------------------


async def test_an_empty_save_writes_nothing(store: MongoStore[Counted]) -> None:
    assert await store.save([]) == Saved()
    assert await store.all() == []


async def test_stale_replacements_are_lost_and_fresh_ones_and_inserts_written_in_one_save(
    store: MongoStore[Counted],
) -> None:
    await store.save([insert("a", 1), insert("b", 1), insert("c", 1)])
    loaded = await store.load(["a", "b", "c"])
    await store.save([replace(loaded["b"], 2)])
    saved = await store.save(
        [
            replace(loaded["a"], 10, applied=("m-a",)),
            replace(loaded["b"], 10, applied=("m-b",)),  # decided on version 1, now 2
            insert("c", 10, applied=("m-c",)),  # inserted meanwhile
            insert("d", 10, applied=("m-d",)),
        ]
    )
    assert sorted(saved.written) == ["a", "d"] and sorted(saved.lost) == ["b", "c"] and saved.failed == {}
    after = await store.load(["a", "b", "c", "d"])
    assert [after[d].state.count for d in "abcd"] == [10, 2, 1, 10]  # type: ignore[union-attr]
    assert [after[d].version for d in "abcd"] == [2, 2, 1, 1]
    assert await store.applied(["m-a", "m-b", "m-c", "m-d"]) == {"m-a", "m-d"}


async def test_every_replacement_lost_writes_nothing(store: MongoStore[Counted]) -> None:
    await store.save([insert("a", 1)])
    [loaded] = (await store.load(["a"])).values()
    await store.save([replace(loaded, 2)])
    saved = await store.save([replace(loaded, 3, applied=("m3",))])
    assert (saved.written, saved.lost) == ([], ["a"])
    assert await store.applied(["m3"]) == set()


async def test_a_state_that_will_not_serialise_fails_alone(store: MongoStore[Counted]) -> None:
    unserialisable = Save("bad", 0, Counted(count=1, extra=object()), (), Tracking(("m-bad",)), ("m-bad",))
    saved = await store.save([unserialisable, insert("good", 1, applied=("m-good",))])
    assert saved.written == ["good"] and list(saved.failed) == ["bad"] and saved.lost == []
    assert "serialize" in saved.failed["bad"]
    assert await store.applied(["m-bad", "m-good"]) == {"m-good"}
    assert not (await store.load(["bad"]))["bad"].exists


async def test_a_document_the_driver_refuses_fails_alone_and_its_neighbours_stand(store: MongoStore[Counted]) -> None:
    await store.save([insert("old", 1)])
    [old] = (await store.load(["old"])).values()
    saved = await store.save(
        [
            insert("big", 2**63, applied=("m-big",)),
            insert("good", 1, applied=("m-good",)),
            replace(old, 2, applied=("m-old",)),
        ]
    )
    assert sorted(saved.written) == ["good", "old"] and list(saved.failed) == ["big"] and saved.lost == []
    assert "Overflow" in saved.failed["big"] or "BSON" in saved.failed["big"] or "int" in saved.failed["big"]
    assert await store.applied(["m-big", "m-good", "m-old"]) == {"m-good", "m-old"}
    assert (await store.load(["old"]))["old"].state == Counted(count=2)


async def test_a_document_the_driver_refuses_beside_lost_ones(store: MongoStore[Counted]) -> None:
    await store.save([insert("taken", 1), insert("gone", 1)])
    saved = await store.save([insert("big", 2**63), insert("taken", 5), insert("gone", 5)])
    assert (saved.written, saved.lost, list(saved.failed)) == ([], ["taken", "gone"], ["big"])


async def test_a_write_error_report_without_a_match_count_counts_none_matched(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymongo.errors import BulkWriteError

    await store.save([insert("a", 1)])
    [loaded] = (await store.load(["a"])).values()

    async def bulk_write(operations: list[Any], ordered: bool) -> Any:
        raise BulkWriteError({"writeErrors": [{"index": 1, "code": 11000, "errmsg": "dup"}]})

    monkeypatch.setattr(store._collection, "bulk_write", bulk_write)
    saved = await store.save([replace(loaded, 2), insert("b", 1)])
    assert saved.lost == ["b", "a"] and saved.written == [], "not written by us: asked for by write id"


async def test_a_write_error_other_than_a_duplicate_fails_alone(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymongo.errors import BulkWriteError

    await store.save([insert("a", 1), insert("b", 1)])
    loaded = await store.load(["a", "b"])

    async def bulk_write(operations: list[Any], ordered: bool) -> Any:
        assert ordered is False
        raise BulkWriteError(
            {
                "writeErrors": [
                    {"index": 0, "code": 17419, "errmsg": "too large"},
                    {"index": 2, "code": 11000, "errmsg": "duplicate"},
                    {"index": 3, "code": 2},
                ],
                "nMatched": 1,
            }
        )

    monkeypatch.setattr(store._collection, "bulk_write", bulk_write)
    saved = await store.save(
        [replace(loaded["a"], 2), replace(loaded["b"], 2), insert("c", 1), insert("d", 1), insert("e", 1)]
    )
    assert saved.failed == {"a": "too large", "d": str({"index": 3, "code": 2})}
    assert saved.lost == ["c"] and sorted(saved.written) == ["b", "e"]


async def test_a_write_not_acknowledged_by_enough_replicas_is_an_outage(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymongo.errors import BulkWriteError

    from services.runtime.mongo import WriteNotDurable

    concern = [{"code": 64, "errmsg": f"timeout {i}"} for i in range(4)]

    async def bulk_write(operations: list[Any], ordered: bool) -> Any:
        raise BulkWriteError({"writeErrors": [], "writeConcernErrors": concern})

    monkeypatch.setattr(store._collection, "bulk_write", bulk_write)
    with pytest.raises(WriteNotDurable) as raised:
        await store.save([insert("a", 1)])
    assert str(raised.value) == f"counted: {concern[:3]}", "the first three, not a wall of them"


async def test_writes_refused_for_want_of_a_primary_are_an_outage_not_failed_documents(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    """During an election the server refuses each write of a bulk with a "not primary" code: not
    the documents' fault, so nothing is failed (and dead-lettered) — the batch waits for a primary."""
    from pymongo.errors import BulkWriteError

    from services.runtime.mongo import NoPrimary, is_outage

    await store.save([insert("a", 1)])
    loaded = await store.load(["a"])
    refused = [
        {"index": 0, "code": 11602, "errmsg": "operation was interrupted"},
        {"index": 1, "code": 10107, "errmsg": "not primary"},
    ]

    async def bulk_write(operations: list[Any], ordered: bool) -> Any:
        raise BulkWriteError({"writeErrors": refused, "nMatched": 0})

    monkeypatch.setattr(store._collection, "bulk_write", bulk_write)
    with pytest.raises(NoPrimary) as raised:
        await store.save([replace(loaded["a"], 2), insert("b", 1)])
    assert is_outage(raised.value)
    monkeypatch.undo()
    assert (await store.load(["a"]))["a"].state == Counted(count=1), "nothing was written"


# --- applied ids, the relay's reads ---------------------------------------------------------------------


async def test_applied_ids_are_found_among_those_asked_for(store: MongoStore[Counted]) -> None:
    assert await store.applied([]) == set()
    await store.save([insert("a", 1, applied=("m1", "m2"))])
    kept = store._collection.database["counted_applied"]
    assert sorted([d["_id"] async for d in kept.find({})]) == ["m1", "m2"], "beside the collection, by message id"
    assert await store.applied(["m2", "m3"]) == {"m2"}
    assert await store.applied({"m1", "m2"}) == {"m1", "m2"}


async def test_pending_outboxes_by_age_and_up_to_a_limit(store: MongoStore[Counted]) -> None:
    await store.save(
        [
            Save("old", 0, Counted(count=1), (entry("e1", queued_at=100.0),), Tracking()),
            Save("new", 0, Counted(count=1), (entry("e2", queued_at=300.0),), Tracking()),
            insert("none", 1),
        ]
    )
    assert sorted(s.id for s in await store.pending_outbox()) == ["new", "old"]
    assert [s.id for s in await store.pending_outbox(written_before=200.0)] == ["old"]
    assert await store.pending_outbox(written_before=100.0) == []
    assert len(await store.pending_outbox(1)) == 1
    [old] = await store.pending_outbox(written_before=200.0)
    assert old == Stored("old", None, 1, (entry("e1", queued_at=100.0),)), "ids, versions and entries only"


async def test_indexes_for_the_relay_and_the_state(store: MongoStore[Counted]) -> None:
    await store.ensure_indexes(("count",), plain=("extra",))
    indexes = {tuple(i["key"].items()): i.get("unique", False) async for i in store._collection.list_indexes()}
    assert indexes[(("outbox_pending", 1),)] is False
    assert indexes[(("state.count", 1),)] is True
    assert indexes[(("state.extra", 1),)] is False


# --- dropping published entries ------------------------------------------------------------------------


async def test_published_entries_are_dropped_and_the_rest_of_the_document_kept(store: MongoStore[Counted]) -> None:
    tracking = Tracking(("m1",), {"t_v1:0": 3})
    await store.save(
        [
            Save("a", 0, Counted(count=1), (entry("e1"), entry("e2", queued_at=50.0)), tracking, (), "00-t"),
            Save("b", 0, Counted(count=1), (entry("e3"),), Tracking()),
            insert("c", 1, outbox=("e4",)),
        ]
    )
    await store.drop_published({"a": {"e1"}, "b": {"other"}, "c": set(), "absent": {"e9"}})
    a, b, c = (await store.load(["a", "b", "c"])).values()
    assert a == Stored("a", Counted(count=1), 2, (entry("e2", queued_at=50.0),), tracking, "00-t")
    assert (await raw(store, "a"))["outbox_pending"] == 1 and (await raw(store, "a"))["outbox_at"] == 50.0
    assert (b.version, len(b.outbox)) == (1, 1), "nothing of it published: not written"
    assert (c.version, len(c.outbox)) == (1, 1)
    assert not (await store.load(["absent"]))["absent"].exists
    await store.drop_published({})


def contended(store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch, doc_id: str, times: int) -> list[int]:
    """Another writer changes `doc_id` between the store's read and its write, `times` times; the
    sizes of the store's bulk writes."""
    real_bulk_write = store._collection.bulk_write
    writes: list[int] = []

    async def bulk_write(operations: list[Any], ordered: bool) -> Any:
        writes.append(len(operations))
        if len(writes) <= times:
            await store._collection.update_one({"_id": doc_id}, {"$inc": {"version": 1, "state.count": 1}})
        return await real_bulk_write(operations, ordered=ordered)

    monkeypatch.setattr(store._collection, "bulk_write", bulk_write)
    return writes


async def test_a_drop_that_loses_a_race_is_tried_again_on_a_fresh_read(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save([insert("a", 1, outbox=("e1", "e2")), insert("b", 1, outbox=("e3",))])
    writes = contended(store, monkeypatch, "a", times=2)
    await store.drop_published({"a": {"e1"}, "b": {"e3"}})
    assert writes == [2, 1, 1], "both, then the one that lost, twice"
    a, b = (await store.load(["a", "b"])).values()
    assert [e["message_id"] for e in a.outbox] == ["e2"] and a.state == Counted(count=3) and a.version == 4
    assert b.outbox == () and b.version == 2
    assert (await raw(store, "a"))["outbox_pending"] == 1 and (await raw(store, "b"))["outbox_pending"] == 0


async def test_a_drop_that_keeps_losing_gives_up_after_the_attempts_allowed_and_says_so(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save([insert("a", 1, outbox=("e1",))])
    writes = contended(store, monkeypatch, "a", times=100)
    with pytest.raises(RuntimeError, match=r"counted: could not clear published entries of \['a'\]"):
        await store.drop_published({"a": {"e1"}})
    assert len(writes) == mongo_store.CLEAR_ATTEMPTS
    assert len((await raw(store, "a"))["outbox"]) == 1


async def test_a_drop_with_nothing_left_to_remove_writes_nothing(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save([insert("a", 1, outbox=("e1",))])
    writes = contended(store, monkeypatch, "a", times=0)
    await store.drop_published({"a": {"other"}, "absent": {"e9"}, "b": set()})
    await store.drop_published({})
    assert writes == [] and (await raw(store, "a"))["version"] == 1


# --- documents whose state no longer validates -------------------------------------------------------


async def test_a_document_whose_state_no_longer_validates_loads_broken_and_its_outbox_still_drains(
    store: MongoStore[Counted],
) -> None:
    await store.save([insert("good", 1)])
    await store._collection.insert_one(
        {"_id": "old", "version": 4, "state": {"count": "many"}, "outbox": [entry("e1")], "outbox_pending": 1}
    )
    loaded = await store.load(["old", "good"])
    old = loaded["old"]
    assert (old.id, old.state, old.version, old.outbox) == ("old", None, 4, ())
    assert old.broken is not None and old.broken.startswith("counted/old: stored state does not validate: [")
    assert "count" in old.broken
    assert loaded["good"].broken is None and loaded["good"].state == Counted(count=1)
    [pending] = await store.pending_outbox()
    assert (pending.id, pending.version, pending.outbox) == ("old", 4, (entry("e1"),))
    await store.drop_published({"old": {"e1"}})
    document = await raw(store, "old")
    assert (document["outbox"], document["outbox_pending"], document["version"]) == ([], 0, 5)
    assert document["state"] == {"count": "many"}, "the state is neither read nor rewritten"


async def test_a_broken_document_without_a_version_loads_as_version_zero(store: MongoStore[Counted]) -> None:
    await store._collection.insert_one({"_id": "odd", "state": {}})
    odd = (await store.load(["odd"]))["odd"]
    assert (odd.version, odd.state) == (0, None) and odd.broken is not None


# --- options ----------------------------------------------------------------------------------------------


async def test_a_store_that_does_not_remember_commands_keeps_no_applied_ids(database: AsyncIOMotorDatabase) -> None:
    projection = MongoStore(database, "projection", Counted)
    assert projection.keeps_trace is False
    await projection.save([insert("a", 1, applied=("m1",))])
    assert await projection.applied(["m1"]) == set()
    assert "projection_applied" not in await database.list_collection_names()
    assert MongoStore(database, "flows", Counted, keeps_trace=True).keeps_trace is True


async def test_a_duplicate_of_another_unique_key_fails_the_document_instead_of_losing_it(
    store: MongoStore[Counted], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymongo.errors import BulkWriteError

    async def bulk_write(operations: list[Any], ordered: bool) -> Any:
        raise BulkWriteError(
            {
                "writeErrors": [
                    {"index": 0, "code": 11000, "errmsg": "dup state", "keyPattern": {"state.count": 1}},
                    {"index": 1, "code": 11000, "errmsg": "dup id", "keyPattern": {"_id": 1}},
                    {"index": 2, "code": 11000, "errmsg": "dup, no pattern"},
                ],
                "nMatched": 0,
            }
        )

    monkeypatch.setattr(store._collection, "bulk_write", bulk_write)
    saved = await store.save([insert("a", 1), insert("b", 1), insert("c", 1)])
    assert saved.failed == {"a": "dup state"} and saved.lost == ["b", "c"] and saved.written == []


async def test_a_save_whose_every_state_will_not_serialise_reports_each_failed(store: MongoStore[Counted]) -> None:
    saved = await store.save([Save("bad", 0, Counted(count=1, extra=object()), (), Tracking())])
    assert saved.written == [] and list(saved.failed) == ["bad"]


async def test_pending_outboxes_are_read_two_hundred_documents_at_a_time_by_default(store: MongoStore[Counted]) -> None:
    await store.save([insert(f"d{i:03}", 1, outbox=(f"e{i}",)) for i in range(201)])
    assert len(await store.pending_outbox()) == 200


def test_a_store_remembers_the_commands_of_the_topics_it_is_given() -> None:
    client = connect("mongodb://127.0.0.1:1")  # never reached: nothing here makes a round trip
    try:
        database = client["unused"]
        assert MongoStore(database, "c", Counted).remembers("commands.v1") is False
        assert MongoStore(database, "c", Counted, remembers_commands=True).remembers(None) is True
        some = MongoStore(database, "c", Counted, remembers_commands=("commands.v1",))
        assert some.remembers("commands.v1") is True
        assert some.remembers("events.v1") is False and some.remembers(None) is False
    finally:
        client.close()


def test_a_store_keeps_every_message_id_only_when_asked() -> None:
    """A warehouse absorbs messages without end: its documents keep only their last few hundred
    ids. Only a document whose life is a bounded number of messages keeps them all."""
    client = connect("mongodb://127.0.0.1:1")  # never reached: nothing here makes a round trip
    try:
        database = client["unused"]
        assert MongoStore(database, "c", Counted).keeps_every_message is False
        assert MongoStore(database, "c", Counted, keeps_every_message=True).keeps_every_message is True
    finally:
        client.close()


async def test_an_unreachable_database_is_an_outage_not_a_failed_document() -> None:
    """The consumer waits an outage out and dead-letters failed documents: a save that reported
    the outage as failed documents would dead-letter every record of the batch."""
    client: AsyncIOMotorClient = AsyncIOMotorClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=200)
    store = MongoStore(client["nowhere"], "counted", Counted, remembers_commands=True)
    try:
        with pytest.raises(TRANSIENT_ERRORS):
            await store.load(["a"])
        with pytest.raises(TRANSIENT_ERRORS):
            await store.save([insert("a", 1, applied=("m1",)), insert("b", 2)])
        with pytest.raises(TRANSIENT_ERRORS):
            await store.applied(["m1"])
        with pytest.raises(TRANSIENT_ERRORS):
            await store.pending_outbox()
    finally:
        client.close()
