"""The same promises from both stores: the in-memory one the use-case tests run on, and MongoDB's
(here the dev server): version-guarded saves, one document failing alone, applied ids for good."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from services.runtime.documents import connect
from services.runtime.mongo_store import MongoStore
from services.runtime.settings import RuntimeSettings
from services.runtime.store import MemoryStore, Save, Store, Stored, Tracking


class Counted(BaseModel):
    count: int


def entry(message_id: str) -> dict[str, object]:
    return {"message_id": message_id, "topic": "t.v1", "key": "k", "type": "x", "correlation_id": "c", "body": "{}"}


def insert(doc_id: str, count: int, *, applied: tuple[str, ...] = (), outbox: tuple[str, ...] = ()) -> Save[Counted]:
    return Save(doc_id, 0, Counted(count=count), tuple(entry(m) for m in outbox), Tracking(applied), applied)


def replace(stored: Stored[Counted], count: int, *, applied: tuple[str, ...] = ()) -> Save[Counted]:
    return Save(stored.id, stored.version, Counted(count=count), stored.outbox, stored.tracking, applied)


@pytest.fixture(params=["memory", "mongo"])
def database(request: pytest.FixtureRequest) -> RuntimeSettings | None:
    """The dev stack's settings for MongoDB (started only for those cases), None in memory."""
    return request.getfixturevalue("settings") if request.param == "mongo" else None


@pytest.fixture
async def store(database: RuntimeSettings | None) -> AsyncIterator[Store[Counted]]:
    name = f"test_store_{uuid.uuid4().hex[:8]}"
    if database is None:
        yield MemoryStore(name, Counted)
        return
    settings = database
    client = connect(settings.mongo_url.get_secret_value())
    try:
        yield MongoStore(client[settings.mongo_database], name, Counted, remembers_commands=True)
    finally:
        client.close()


async def test_absent_documents_load_as_version_zero(store: Store[Counted]) -> None:
    loaded = await store.load(["a", "b"])
    assert loaded == {"a": Stored("a"), "b": Stored("b")}
    assert not loaded["a"].exists


async def test_a_save_replaces_the_version_it_was_decided_on(store: Store[Counted]) -> None:
    saved = await store.save([insert("a", 1), insert("b", 1)])
    assert sorted(saved.written) == ["a", "b"] and not saved.lost and not saved.failed
    loaded = await store.load(["a", "b"])
    assert loaded["a"].state == Counted(count=1) and loaded["a"].version == 1

    fresh = await store.save([replace(loaded["a"], 2)])
    assert fresh.written == ["a"]
    # b is replaced on its loaded version; a's save was decided on version 1, now 2: lost
    stale = await store.save([replace(loaded["a"], 99), replace(loaded["b"], 2)])
    assert stale.lost == ["a"] and stale.written == ["b"]
    after = await store.load(["a", "b"])
    assert after["a"].state == Counted(count=2) and after["a"].version == 2
    assert after["b"].state == Counted(count=2)


async def test_inserting_a_document_someone_created_meanwhile_is_lost(store: Store[Counted]) -> None:
    await store.save([insert("a", 1)])
    saved = await store.save([insert("a", 5), insert("b", 5)])
    assert saved.lost == ["a"] and saved.written == ["b"]
    assert (await store.load(["a"]))["a"].state == Counted(count=1)


async def test_a_document_that_cannot_be_written_fails_alone(store: Store[Counted]) -> None:
    if isinstance(store, MemoryStore):
        store.fail_writes_of("bad", "value too large")
        too_large = 1
    else:
        too_large = 2**63  # valid for the model, but no 64-bit integer holds it: the driver refuses it
    saved = await store.save([insert("good", 1, applied=("m-good",)), insert("bad", too_large, applied=("m-bad",))])
    assert saved.written == ["good"] and list(saved.failed) == ["bad"] and not saved.lost
    loaded = await store.load(["good", "bad"])
    assert loaded["good"].state == Counted(count=1) and not loaded["bad"].exists
    assert await store.applied(["m-good", "m-bad"]) == {"m-good"}


async def test_applied_ids_are_kept_only_for_saves_that_stood(store: Store[Counted]) -> None:
    await store.save([insert("a", 1, applied=("m1", "m2"))])
    loaded = await store.load(["a"])
    await store.save([replace(loaded["a"], 2, applied=("m3",))])
    await store.save([replace(loaded["a"], 3, applied=("m4",))])  # lost: decided on version 1
    assert await store.applied(["m1", "m2", "m3", "m4", "m5"]) == {"m1", "m2", "m3"}


async def test_published_entries_are_dropped_from_the_outbox(store: Store[Counted]) -> None:
    await store.save([insert("a", 1, outbox=("e1", "e2")), insert("b", 1), insert("c", 1, outbox=("e3",))])
    pending = await store.pending_outbox()
    assert {s.id: [e["message_id"] for e in s.outbox] for s in pending} == {"a": ["e1", "e2"], "c": ["e3"]}
    await store.drop_published({"a": {"e1"}, "c": {"e3"}})
    pending = await store.pending_outbox()
    assert {s.id: [e["message_id"] for e in s.outbox] for s in pending} == {"a": ["e2"]}
    assert (await store.load(["a"]))["a"].state == Counted(count=1)
