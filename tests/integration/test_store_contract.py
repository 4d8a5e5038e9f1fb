"""The same promises from both stores: the in-memory one the use-case tests run on, and MongoDB's
(here the dev server): version-guarded saves, one document failing alone, applied ids for good."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from services.runtime.mongo import connect
from services.runtime.mongo_store import MongoStore
from services.runtime.settings import RuntimeSettings
from services.runtime.store import DocumentMemory, MemoryStore, Save, Store, Stored, Tracking


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
async def stores(database: RuntimeSettings | None) -> AsyncIterator[tuple[Store[Counted], Store[Counted]]]:
    """Two stores over the same documents, as two processes have: the first remembers what it wrote
    and read (a `DocumentMemory` that presumes unknown ids new), the second does not."""
    name = f"test_store_{uuid.uuid4().hex[:8]}"
    if database is None:
        remembering = MemoryStore(name, Counted, memory=DocumentMemory(presumes_new=True))
        other = copy.copy(remembering)  # the same documents, without the memory
        other.memory = None
        yield remembering, other
        return
    settings = database
    client = connect(settings.mongo_url.get_secret_value())
    try:
        db = client[settings.mongo_database]
        yield (
            MongoStore(db, name, Counted, remembers_commands=True, memory=DocumentMemory(presumes_new=True)),
            MongoStore(db, name, Counted, remembers_commands=True),
        )
    finally:
        client.close()


@pytest.fixture
def store(stores: tuple[Store[Counted], Store[Counted]]) -> Store[Counted]:
    return stores[0]


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


# --- a store's memory of its documents (DocumentMemory) -------------------------------------------


async def test_a_document_written_is_served_from_memory_unconfirmed(store: Store[Counted]) -> None:
    await store.save([insert("a", 1, outbox=("e1",))])
    remembered = (await store.load(["a"], from_memory=True))["a"]
    assert (remembered.state, remembered.version, remembered.confirmed) == (Counted(count=1), 1, False)
    assert [e["message_id"] for e in remembered.outbox] == ["e1"]
    assert (await store.load(["a"]))["a"].confirmed  # without from_memory: the database's


async def test_an_unknown_id_is_presumed_new_and_its_insert_proves_it_or_loses(
    stores: tuple[Store[Counted], Store[Counted]],
) -> None:
    store, other = stores
    await other.save([insert("made-elsewhere", 7)])
    presumed = await store.load(["new", "made-elsewhere"], from_memory=True)
    assert presumed == {
        "new": Stored("new", confirmed=False),
        "made-elsewhere": Stored("made-elsewhere", confirmed=False),
    }
    saved = await store.save([insert("new", 1), insert("made-elsewhere", 1)])
    assert saved.written == ["new"] and saved.lost == ["made-elsewhere"]
    assert (await store.load(["made-elsewhere"]))["made-elsewhere"].state == Counted(count=7)


async def test_a_copy_another_writer_made_stale_loses_its_save_and_is_read_again(
    stores: tuple[Store[Counted], Store[Counted]],
) -> None:
    store, other = stores
    await store.save([insert("a", 1)])
    await other.save([replace((await other.load(["a"]))["a"], 50)])
    stale = (await store.load(["a"], from_memory=True))["a"]
    assert stale.state == Counted(count=1)
    assert (await store.save([replace(stale, 2)])).lost == ["a"]
    fresh = (await store.load(["a"], from_memory=True))["a"]
    assert (fresh.state, fresh.version, fresh.confirmed) == (Counted(count=50), 2, True)


async def test_a_document_read_is_remembered_and_a_copy_is_not_the_remembered_one(store: Store[Counted]) -> None:
    await store.save([insert("a", 1)])
    copy_one = (await store.load(["a"], from_memory=True))["a"]
    assert copy_one.state is not None
    copy_one.state.count = 99  # a decision that changes its state in place must not change the memory
    assert (await store.load(["a"], from_memory=True))["a"].state == Counted(count=1)


async def test_clearing_published_entries_keeps_the_memory_on_the_new_version(
    stores: tuple[Store[Counted], Store[Counted]],
) -> None:
    store, other = stores
    await store.save([insert("a", 1, outbox=("e1", "e2"))])
    await store.drop_published({"a": {"e1"}})
    remembered = (await store.load(["a"], from_memory=True))["a"]
    assert remembered.version == 2 and [e["message_id"] for e in remembered.outbox] == ["e2"]
    assert not remembered.confirmed, "served from the memory, not read again"
    assert (await store.save([replace(remembered, 2)])).written == ["a"]
    # A clear decided on a stale copy misses, and is made again on the database's version.
    await other.save([replace((await other.load(["a"]))["a"], 3)])
    await store.drop_published({"a": {"e2"}})
    assert (await other.load(["a"]))["a"].outbox == ()
