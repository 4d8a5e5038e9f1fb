"""Published outbox entries known by each writer's mark, on the real database server: the document
is written once, and what a writer that died left is still published (see runtime/outbox_marks.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorDatabase
from pydantic import BaseModel

from services.runtime import outbox_marks
from services.runtime.mongo_store import MongoStore
from services.runtime.outbox_marks import CLOSED, unpublished, writers_of
from services.runtime.store import DocumentMemory, Save, Stored, Tracking


class Counted(BaseModel):
    count: int


@pytest.fixture(autouse=True)
def _marks_noted_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay's pass notes a mark at most every few seconds, a little below the present: here at once."""
    monkeypatch.setattr(outbox_marks, "NOTE_EVERY_S", 0.0)
    monkeypatch.setattr(outbox_marks, "CLOCK_SLACK_S", 0.0)


def entry(message_id: str) -> dict[str, Any]:
    return {"message_id": message_id, "topic": "t.v1", "key": "k", "type": "x", "correlation_id": "c", "body": "{}"}


def insert(doc_id: str, *outbox: str) -> Save[Counted]:
    return Save(doc_id, 0, Counted(count=1), tuple(entry(m) for m in outbox), Tracking())


def replace(stored: Stored[Counted], count: int, *outbox: str) -> Save[Counted]:
    entries = (*stored.outbox, *(entry(m) for m in outbox))
    return Save(stored.id, stored.version, Counted(count=count), entries, stored.tracking)


def writer(database: AsyncIOMotorDatabase, memory: DocumentMemory[Counted] | None = None) -> MongoStore[Counted]:
    """One process's store (each has a writer of its own)."""
    return MongoStore(database, "counted", Counted, marks_published=True, memory=memory)


async def raw(database: AsyncIOMotorDatabase, doc_id: str) -> dict[str, Any]:
    document = await database["counted"].find_one({"_id": doc_id})
    assert document is not None
    return document


def ids(pending: list[Stored[Counted]]) -> dict[str, list[str]]:
    return {s.id: [e["message_id"] for e in s.outbox] for s in pending}


async def test_a_published_entry_is_known_by_the_mark_and_the_document_is_not_written_again(
    database: AsyncIOMotorDatabase,
) -> None:
    store = writer(database)
    await store.ensure_indexes()
    await store.save([insert("a", "e1", "e2"), insert("b")])
    document = await raw(database, "a")
    assert (document["outbox_writer"], document["version"]) == (store.marks.writer, 1)  # type: ignore[union-attr]
    mark = await writers_of(database, "counted").find_one({"_id": store.marks.writer})  # type: ignore[union-attr]
    assert mark is not None and mark["through"] < document["saved_at"], "the mark was noted before the save"
    assert ids(await store.pending_outbox()) == {"a": ["e1", "e2"]}
    assert await unpublished(database, "counted") == ["a"]

    await store.drop_published({"a": {"e1", "e2"}})
    await store.note_mark()

    assert await store.pending_outbox() == []
    assert await unpublished(database, "counted") == []
    assert (await raw(database, "a"))["version"] == 1, "published without a second write"
    assert [e["message_id"] for e in (await raw(database, "a"))["outbox"]] == ["e1", "e2"], "kept as history"


async def test_what_a_writer_that_died_left_is_handed_to_another_and_its_mark_moves_up(
    database: AsyncIOMotorDatabase,
) -> None:
    dead, alive = writer(database), writer(database)
    await dead.save([insert("a", "e1"), insert("b")])
    await dead.drop_published({"b": set()})
    # It dies before the broker confirmed e1: another process's relay finds it...
    assert ids(await alive.pending_outbox()) == {"a": ["e1"]}
    assert await unpublished(database, "counted") == ["a"]
    await alive.drop_published({"a": {"e1"}})
    # ...but a writer that may be alive moves its own mark: only a silent one is moved up.
    assert await unpublished(database, "counted") == ["a"]
    assert dead.marks is not None
    silent_since = time.time() - 3 * outbox_marks.BEAT_S
    await writers_of(database, "counted").update_one({"_id": dead.marks.writer}, {"$set": {"noted_at": silent_since}})

    assert await alive.pending_outbox() == [], "published once by this relay: not handed out again"

    assert await unpublished(database, "counted") == []


async def test_a_writer_silent_for_long_is_closed_once_what_it_left_is_published(
    database: AsyncIOMotorDatabase,
) -> None:
    dead, alive = writer(database), writer(database)
    await dead.save([insert("a", "e1")])
    assert dead.marks is not None
    long_ago = time.time() - 2 * outbox_marks.CLOSE_AFTER_S
    await writers_of(database, "counted").update_one({"_id": dead.marks.writer}, {"$set": {"noted_at": long_ago}})

    await alive.drop_published({s.id: {e["message_id"] for e in s.outbox} for s in await alive.pending_outbox()})

    mark = await writers_of(database, "counted").find_one({"_id": dead.marks.writer})
    assert mark is not None and mark["through"] == CLOSED
    assert await alive.pending_outbox() == []


async def test_a_document_another_writer_published_comes_with_no_outbox_to_publish_again(
    database: AsyncIOMotorDatabase,
) -> None:
    first, second = writer(database), writer(database)
    await first.save([insert("a", "e1")])
    await first.drop_published({"a": {"e1"}})
    await first.note_mark()  # its relay's next pass

    loaded = (await second.load(["a"]))["a"]
    assert loaded.outbox == (), "e1 is known published: a save of this copy does not carry it again"
    await second.save([replace(loaded, 2, "e2")])
    assert ids(await second.pending_outbox()) == {"a": ["e2"]}


async def test_an_unconfirmed_entry_is_carried_by_the_next_save_and_a_lost_save_registers_nothing(
    database: AsyncIOMotorDatabase,
) -> None:
    store, other = writer(database), writer(database)
    await store.save([insert("a", "e1")])
    loaded = (await store.load(["a"]))["a"]
    assert [e["message_id"] for e in loaded.outbox] == ["e1"], "not confirmed yet: still to publish"
    await other.save([replace((await other.load(["a"]))["a"], 5)])  # someone else writes first

    saved = await store.save([replace(loaded, 2, "e2")])

    assert saved.lost == ["a"]
    assert "e2" not in [m for entries in ids(await store.pending_outbox()).values() for m in entries]


async def test_an_entry_the_document_no_longer_holds_is_dropped_from_the_writers_memory(
    database: AsyncIOMotorDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_marks, "WRITE_UNDER_WAY_S", 0.0)  # its save is long done
    store, other = writer(database), writer(database)
    await store.save([insert("a", "e1")])
    # Another writer saved over it without e1 (its relay had published it).
    await other.save([Save("a", 1, Counted(count=9), (), Tracking())])

    assert await store.pending_outbox() == []
    assert store.marks is not None and store.marks.unconfirmed(None) == {}


async def test_a_clean_stop_closes_the_mark(database: AsyncIOMotorDatabase) -> None:
    store = writer(database)
    await store.save([insert("a", "e1")])
    await store.retire()  # e1 unconfirmed: the mark stays for another process to go by
    assert await unpublished(database, "counted") == ["a"]

    await store.drop_published({"a": {"e1"}})
    await store.retire()

    mark = await writers_of(database, "counted").find_one({})
    assert mark is not None and mark["through"] == CLOSED
    assert await unpublished(database, "counted") == []


async def test_the_copy_in_memory_drops_published_entries_and_stays_on_the_stored_version(
    database: AsyncIOMotorDatabase,
) -> None:
    store = writer(database, DocumentMemory())
    await store.save([insert("a", "e1", "e2")])

    await store.drop_published({"a": {"e1"}})

    remembered = (await store.load(["a"], from_memory=True))["a"]
    assert ([e["message_id"] for e in remembered.outbox], remembered.version) == (["e2"], 1)
    assert (await store.save([replace(remembered, 2)])).written == ["a"], "its version is the database's"


async def test_a_live_writers_document_published_once_is_not_handed_out_again_but_one_landing_late_is(
    database: AsyncIOMotorDatabase,
) -> None:
    other, relay = writer(database), writer(database)
    await other.save([insert("a", "e1")])
    assert ids(await relay.pending_outbox()) == {"a": ["e1"]}
    await relay.drop_published({"a": {"e1"}})
    # A write of the other process that was under way then lands now, saved before that pass.
    late = await raw(database, "a")
    await database["counted"].insert_one(
        {**late, "_id": "b", "outbox": [entry("e2")], "saved_at": late["saved_at"] + 0.001}
    )

    assert ids(await relay.pending_outbox()) == {"b": ["e2"]}, "a not again; b although saved before the pass"


async def test_entries_of_a_write_still_under_way_are_not_taken_for_saved_over(database: AsyncIOMotorDatabase) -> None:
    store = writer(database)
    await store.save([insert("a", "e1")])
    assert store.marks is not None
    store.marks.saving("a", time.time(), ["e2"])  # the next save of it, its write not landed yet

    assert ids(await store.pending_outbox()) == {"a": ["e1"]}
    assert store.marks.unconfirmed(None) == {"a": {"e1", "e2"}}, "e2 waits for its write"


async def test_the_relay_looks_documents_up_by_writer_and_moment_not_by_outbox_count(
    database: AsyncIOMotorDatabase,
) -> None:
    await writer(database).ensure_indexes()
    keys = [tuple(index["key"].items()) async for index in database["counted"].list_indexes()]
    assert (("outbox_writer", 1), ("saved_at", 1)) in keys
    assert (("outbox_pending", 1),) not in keys
