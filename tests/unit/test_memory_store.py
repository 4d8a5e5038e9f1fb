"""The in-memory `Store` the use-case tests run on keeps MongoDB's promises (`services.runtime.store`):
version-guarded saves, one document failing alone, another writer winning a race, applied ids for
good, states copied in and out; and what a document remembers of the messages it absorbed
(`Tracking`). The same promises against MongoDB: tests/integration/test_store_contract.py."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from services.runtime.store import (
    RECENT_MESSAGES,
    DocumentMemory,
    MemoryStore,
    Save,
    Saved,
    Stored,
    Tracking,
    outbox_message_ids,
    overwrite,
)
from services.runtime.tracking import Position


class Counted(BaseModel):
    count: int
    tags: list[str] = []


def entry(message_id: str) -> dict[str, object]:
    return {"message_id": message_id, "topic": "t.v1", "key": "k", "type": "x", "correlation_id": "c", "body": "{}"}


def insert(doc_id: str, count: int, *, applied: tuple[str, ...] = (), outbox: tuple[str, ...] = ()) -> Save[Counted]:
    return Save(doc_id, 0, Counted(count=count), tuple(entry(m) for m in outbox), Tracking(applied), applied)


def store() -> MemoryStore[Counted]:
    return MemoryStore("counted", Counted)


# --- Tracking --------------------------------------------------------------------------------------


def test_a_message_is_absorbed_by_its_id_or_by_an_offset_at_or_below_the_partitions_mark() -> None:
    tracking = Tracking(("m1", "m2"), {"t_v1:0": 10})
    assert tracking.absorbed("m2", None)
    assert not tracking.absorbed("m3", None) and not tracking.absorbed(None, None)
    assert tracking.absorbed(None, Position("t.v1", 0, offset=10, floor=3))
    assert tracking.absorbed("m3", Position("t.v1", 0, offset=9, floor=3))
    assert not tracking.absorbed("m3", Position("t.v1", 0, offset=11, floor=3))
    assert not tracking.absorbed("m3", Position("t.v1", 1, offset=0, floor=-1)), "another partition"
    assert Tracking().absorbed(None, Position("t.v1", 0, offset=0, floor=-1)) is False
    assert Tracking(positions={"t_v1:0": -1}).absorbed(None, Position("t.v1", 0, offset=-1, floor=-2))
    assert Tracking().absorbed(None, Position("t.v1", 0, offset=-1, floor=-2)), "nothing seen: the mark is -1"


def test_after_a_message_its_id_is_remembered_and_the_mark_moves_to_the_batch_floor() -> None:
    after = Tracking().after("m1", Position("t.v1", 0, offset=12, floor=9))
    assert after == Tracking(("m1",), {"t_v1:0": 9})
    after = after.after("m2", Position("t.v1", 0, offset=10, floor=7))
    assert after == Tracking(("m1", "m2"), {"t_v1:0": 9}), "the mark never goes back"
    after = after.after(None, Position("t.v1", 1, offset=0, floor=-1))
    assert after == Tracking(("m1", "m2"), {"t_v1:0": 9, "t_v1:1": -1})
    assert after.after("m3", None) == Tracking(("m1", "m2", "m3"), {"t_v1:0": 9, "t_v1:1": -1})


def test_after_leaves_the_tracking_it_started_from_unchanged() -> None:
    before = Tracking(("m1",), {"t_v1:0": 3})
    before.after("m2", Position("t.v1", 0, offset=12, floor=9))
    assert before == Tracking(("m1",), {"t_v1:0": 3})


def test_a_document_remembers_only_its_last_few_hundred_ids() -> None:
    tracking = Tracking()
    for i in range(RECENT_MESSAGES + 2):
        tracking = tracking.after(f"m{i}", None)
    assert len(tracking.recent) == RECENT_MESSAGES
    assert tracking.recent[0] == "m2" and tracking.recent[-1] == f"m{RECENT_MESSAGES + 1}"


def test_outbox_message_ids() -> None:
    assert outbox_message_ids([entry("a"), entry("b"), entry("a")]) == {"a", "b"}
    assert outbox_message_ids([]) == set()


def test_a_stored_document_exists_from_version_one() -> None:
    assert not Stored("a").exists and Stored("a", Counted(count=1), 1).exists
    assert Save("a", 4, Counted(count=1), (), Tracking()).version == 5


# --- MemoryStore ---------------------------------------------------------------------------------


async def test_a_save_writes_state_outbox_tracking_and_trace_at_the_next_version() -> None:
    memory = store()
    tracking = Tracking(("m1",), {"t_v1:0": 4})
    save = Save("a", 0, Counted(count=1), (entry("e1"),), tracking, ("m1",), "00-trace")
    saved = await memory.save([save])
    assert (saved.written, saved.lost, saved.failed) == (["a"], [], {})
    assert memory.stored("a") == Stored("a", Counted(count=1), 1, (entry("e1"),), tracking, "00-trace")
    assert await memory.applied(["m1", "m2"]) == {"m1"}
    assert memory.round_trips == 3, "the save, the applied ids recorded, the applied ids read"


async def test_a_save_that_applies_nothing_records_no_ids() -> None:
    memory = store()
    await memory.save([insert("a", 1)])
    assert memory.round_trips == 1


async def test_a_stale_save_is_lost_and_writes_nothing() -> None:
    memory = store()
    await memory.save([insert("a", 1)])
    saved = await memory.save([Save("a", 2, Counted(count=9), (), Tracking(), ("m9",))])
    assert (saved.written, saved.lost) == ([], ["a"])
    assert memory.state_of("a") == Counted(count=1) and await memory.applied(["m9"]) == set()
    saved = await memory.save([Save("b", 1, Counted(count=9), (), Tracking())])
    assert saved.lost == ["b"] and memory.stored("b") is None, "no such version to replace"


async def test_another_writer_wins_once_then_saves_on_the_fresh_version_stand() -> None:
    memory = store()
    memory.put("a", Counted(count=1))
    memory.let_another_writer_win("a")
    first = await memory.save([Save("a", 1, Counted(count=2), (), Tracking())])
    assert first.lost == ["a"]
    stored = memory.stored("a")
    assert stored is not None and (stored.version, stored.state) == (2, Counted(count=1))
    second = await memory.save([Save("a", 2, Counted(count=3), (), Tracking())])
    assert second.written == ["a"] and memory.state_of("a") == Counted(count=3)


async def test_another_writer_can_win_the_insert_of_a_new_document() -> None:
    memory = store()
    memory.let_another_writer_win("a")
    saved = await memory.save([insert("a", 5), insert("b", 5)])
    assert (saved.lost, saved.written) == (["a"], ["b"])
    stored = memory.stored("a")
    assert stored is not None and stored.version == 1 and stored.state is not None
    assert (await memory.save([insert("a", 6)])).lost == ["a"], "the race was won once, the document stays"


async def test_a_failing_document_fails_alone_until_healed() -> None:
    memory = store()
    memory.fail_writes_of("bad")
    memory.fail_writes_of("worse", "value too large")
    saved = await memory.save([insert("bad", 1, applied=("m1",)), insert("worse", 1), insert("good", 1)])
    assert saved.failed == {"bad": "injected write failure", "worse": "value too large"}
    assert saved.written == ["good"] and saved.lost == []
    assert memory.stored("bad") is None and await memory.applied(["m1"]) == set()
    memory.heal("bad")
    memory.heal("never-failed")
    assert (await memory.save([insert("bad", 1)])).written == ["bad"]
    assert (await memory.save([insert("worse", 1)])).failed == {"worse": "value too large"}


async def test_put_writes_a_new_version_with_an_empty_outbox() -> None:
    memory = store()
    memory.put("a", Counted(count=1))
    memory.put("a", Counted(count=2))
    assert memory.stored("a") == Stored("a", Counted(count=2), 2)


async def test_load_returns_every_id_asked_for_absent_ones_as_version_zero() -> None:
    memory = store()
    memory.put("a", Counted(count=1))
    loaded = await memory.load(["a", "b"])
    assert loaded == {"a": Stored("a", Counted(count=1), 1), "b": Stored("b")}
    assert memory.round_trips == 1


async def test_states_and_outboxes_are_copied_in_and_out() -> None:
    memory = store()
    state = Counted(count=1, tags=["x"])
    memory.put("a", state)
    state.tags.append("kept by the caller")
    assert memory.state_of("a") == Counted(count=1, tags=["x"])
    memory.state_of("a").tags.append("changed by a reader")  # type: ignore[union-attr]
    loaded = (await memory.load(["a"]))["a"]
    assert loaded.state == Counted(count=1, tags=["x"])
    loaded.state.tags.append("changed by a use case")  # type: ignore[union-attr]
    assert memory.state_of("a") == Counted(count=1, tags=["x"])
    assert memory.state_of("absent") is None

    saved_state = Counted(count=2, tags=["y"])
    await memory.save([Save("b", 0, saved_state, (entry("e1"),), Tracking())])
    saved_state.tags.append("kept by the caller")
    [pending] = await memory.pending_outbox()
    pending.outbox[0]["message_id"] = "changed by the relay"
    assert memory.state_of("b") == Counted(count=2, tags=["y"])
    assert [e["message_id"] for e in memory.stored("b").outbox] == ["e1"]  # type: ignore[union-attr]


async def test_pending_outbox_lists_documents_with_entries_up_to_the_limit() -> None:
    memory = store()
    await memory.save([insert("a", 1, outbox=("e1",)), insert("b", 1), insert("c", 1, outbox=("e2", "e3"))])
    trips = memory.round_trips
    assert [s.id for s in await memory.pending_outbox()] == ["a", "c"]
    assert memory.round_trips == trips + 1
    assert [s.id for s in await memory.pending_outbox(1)] == ["a"]
    assert (await memory.pending_outbox())[1].outbox == (entry("e2"), entry("e3"))
    assert [s.id for s in await memory.all()] == ["a", "b", "c"]


async def test_dropping_published_entries_moves_the_version_only_when_something_left() -> None:
    memory = store()
    await memory.save([insert("a", 1, outbox=("e1", "e2")), insert("b", 1, outbox=("e3",))])
    trips = memory.round_trips
    await memory.drop_published({"absent": {"e9"}, "a": {"e1"}, "b": {"other"}})
    assert memory.round_trips == trips + 1
    a, b = memory.stored("a"), memory.stored("b")
    assert a is not None and (a.version, a.outbox, a.state) == (2, (entry("e2"),), Counted(count=1))
    assert b is not None and (b.version, b.outbox) == (1, (entry("e3"),))
    assert memory.stored("absent") is None


async def test_a_broken_document_loads_with_its_reason_at_a_new_version() -> None:
    memory = store()
    memory.put("a", Counted(count=1))
    memory.break_document("a", "counted/a: stored state does not validate")
    memory.break_document("new", "never readable")
    loaded = await memory.load(["a", "new"])
    assert loaded["a"] == Stored("a", None, 2, broken="counted/a: stored state does not validate")
    assert loaded["new"] == Stored("new", None, 1, broken="never readable")


def test_a_store_keeps_traces_only_when_asked() -> None:
    assert store().keeps_trace is False
    assert MemoryStore("flows", Counted, keeps_trace=True).keeps_trace is True


async def test_pending_outbox_lists_at_most_two_hundred_documents_by_default() -> None:
    memory = store()
    await memory.save([insert(f"d{i}", 1, outbox=(f"e{i}",)) for i in range(201)])
    assert len(await memory.pending_outbox()) == 200


async def test_overwrite_makes_the_document_the_state_given_whatever_it_was_and_writes_again_after_a_race() -> None:
    class Entry(BaseModel):
        name: str

    store: MemoryStore[Entry] = MemoryStore("reference", Entry)
    await overwrite(store, "a", Entry(name="first"))
    store.let_another_writer_win("a")
    await overwrite(store, "a", Entry(name="second"))
    assert store.state_of("a") == Entry(name="second")
    store.fail_writes_of("a", "too large")
    with pytest.raises(ValueError, match="too large"):
        await overwrite(store, "a", Entry(name="third"))


async def test_overwrite_keeps_the_messages_the_document_absorbed_its_outbox_and_its_trace() -> None:
    """A person's correction of a document must not make it forget the commands it applied (a
    re-sent one would apply again) nor drop events still to publish."""
    memory = store()
    tracking = Tracking(("m1",), {"t_v1:0": 4})
    await memory.save([Save("a", 0, Counted(count=1), (entry("e1"),), tracking, ("m1",), "00-trace")])
    await overwrite(memory, "a", Counted(count=9))
    assert memory.stored("a") == Stored("a", Counted(count=9), 2, (entry("e1"),), tracking, "00-trace")


async def test_all_is_one_round_trip() -> None:
    memory = store()
    await memory.save([insert("a", 1), insert("b", 2)])
    before = memory.round_trips
    assert sorted(s.id for s in await memory.all()) == ["a", "b"]
    assert memory.round_trips == before + 1


def test_the_memory_serves_copies_a_decision_may_change_without_changing_what_it_holds() -> None:
    """Decisions run on the copy; one that is then thrown away (its save lost a race) must leave
    the held document as it was, nested lists included, or the next batch would decide on it."""
    held: DocumentMemory[Counted] = DocumentMemory()
    held.loaded([Stored("a", Counted(count=1, tags=["x"]), 3, traceparent="00-trace")])
    (copy,) = held.recall(["a"])[0].values()
    assert copy.state is not None and not copy.confirmed
    copy.state.tags.append("changed in place")
    copy.state.count = 99
    (again,) = held.recall(["a"])[0].values()
    assert again.state == Counted(count=1, tags=["x"]) and again.version == 3 and again.traceparent == "00-trace"


def test_the_memory_holds_what_was_saved_with_its_trace() -> None:
    held: DocumentMemory[Counted] = DocumentMemory()
    save = Save("a", 2, Counted(count=5), (entry("e1"),), Tracking(("m1",)), ("m1",), "00-trace")
    held.saved([save], Saved(written=["a"]))
    assert held.held("a") == Stored("a", Counted(count=5), 3, (entry("e1"),), Tracking(("m1",)), "00-trace")
