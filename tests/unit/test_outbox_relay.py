"""No event lost between MongoDB and Kafka: the outbox relay and the publisher (`services.runtime.relay`)
with a stand-in broker and stores. Entries are published with their headers and key, every
confirmation is awaited, only then are they removed; a store whose writes publish themselves is
relayed only once its entries are stale, except at shutdown when everything goes.

The relay after a real crash, on the real broker: tests/integration/test_runtime.py, test_outbox_crash.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog.testing

from services.runtime import relay as relay_module
from services.runtime.relay import OutboxRelay, publisher_for


@pytest.fixture(autouse=True)
def _logs_kept_not_rendered() -> Iterator[None]:
    """Rendering a logged traceback is slow (mutmut's copies of the runtime are huge): keep it unrendered."""
    with structlog.testing.capture_logs():
        yield


def entry(message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "topic": "inventory.events.v1",
        "key": f"WH-{message_id}",
        "type": "inventory.reserved",
        "correlation_id": f"RX-{message_id}",
        "body": f'{{"id": "{message_id}"}}',
        **extra,
    }


class Broker:
    """Stands in for the KafkaBroker: each publish returns a confirmation that resolves later."""

    middlewares: tuple[Any, ...] = ()

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.confirmed: list[str] = []
        self.failing = False

    async def publish(self, body: bytes, *, topic: str, key: bytes, headers: dict[str, str], no_confirm: bool) -> Any:
        if self.failing:
            raise ConnectionError("broker down")
        self.sent.append({"body": body, "topic": topic, "key": key, "headers": headers, "no_confirm": no_confirm})
        message_id = headers["message-id"]

        async def confirmation() -> None:
            await asyncio.sleep(0.01)
            self.confirmed.append(message_id)

        return asyncio.ensure_future(confirmation())

    def ids(self) -> list[str]:
        return [s["headers"]["message-id"] for s in self.sent]


class Store:
    """Stands in for a `StoreOutbox`: documents' entries and when each was written."""

    def __init__(self, name: str, *, publishes_its_writes: bool = False, page: int = 200) -> None:
        self.name = name
        self.publishes_its_writes = publishes_its_writes
        self.outboxes: dict[str, tuple[list[dict[str, Any]], float]] = {}
        self.asked: list[float | None] = []
        self.removed: list[tuple[str, set[str]]] = []
        self.page = page
        self.settled_calls = 0
        self.failures = 0
        self.marks_noted = 0
        self.retired = False

    def write(self, doc_id: str, *entries: dict[str, Any], at: float | None = None) -> None:
        self.outboxes[doc_id] = ([*self.outboxes.get(doc_id, ([], 0.0))[0], *entries], at or time.time())

    async def pending_outbox(
        self, limit: int = 200, *, written_before: float | None = None
    ) -> list[tuple[str, list[dict[str, Any]]]]:
        self.asked.append(written_before)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database unreachable")
        due = [
            (doc_id, list(entries))
            for doc_id, (entries, at) in self.outboxes.items()
            if entries and (written_before is None or at < written_before)
        ]
        return due[: min(limit, self.page)]

    async def remove_published(self, doc_id: str, message_ids: set[str]) -> None:
        self.removed.append((doc_id, message_ids))
        entries, at = self.outboxes[doc_id]
        self.outboxes[doc_id] = ([e for e in entries if e["message_id"] not in message_ids], at)

    async def settled(self) -> None:
        self.settled_calls += 1

    async def note_mark(self) -> None:
        self.marks_noted += 1

    async def retire(self) -> None:
        self.retired = True

    def left(self) -> list[str]:
        return [e["message_id"] for entries, _ in self.outboxes.values() for e in entries]


class Metrics:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.relayed: list[tuple[str, int]] = []

    def outbox_seen(self, store: str, documents: int) -> None:
        self.seen.append((store, documents))

    def outbox_relayed_events(self, store: str, events: int) -> None:
        self.relayed.append((store, events))


# --- the publisher ---------------------------------------------------------------------------------


async def test_the_publisher_sends_every_entry_with_its_headers_then_awaits_every_confirmation() -> None:
    broker = Broker()
    publish = publisher_for(broker)  # type: ignore[arg-type]
    await publish([entry("a", traceparent="00-abc-def-01"), entry("b"), entry("c", traceparent="")])
    assert broker.ids() == ["a", "b", "c"], "in order: one key's events stay in order"
    assert broker.confirmed == ["a", "b", "c"], "returns only once the broker confirmed every one"
    first = broker.sent[0]
    assert first == {
        "body": b'{"id": "a"}',
        "topic": "inventory.events.v1",
        "key": b"WH-a",
        "headers": {
            "content-type": "application/json",
            "message-type": "inventory.reserved",
            "message-id": "a",
            "correlation-id": "RX-a",
            "traceparent": "00-abc-def-01",
        },
        "no_confirm": True,
    }
    assert "traceparent" not in broker.sent[1]["headers"] and "traceparent" not in broker.sent[2]["headers"]


async def test_the_publisher_sends_all_before_waiting_for_the_first_confirmation() -> None:
    broker, order = Broker(), []
    real = broker.publish

    async def publish(body: bytes, **kwargs: Any) -> Any:
        order.append(("send", kwargs["headers"]["message-id"], list(broker.confirmed)))
        return await real(body, **kwargs)

    broker.publish = publish  # type: ignore[method-assign]
    await publisher_for(broker)([entry("a"), entry("b")])  # type: ignore[arg-type]
    assert order == [("send", "a", []), ("send", "b", [])]


async def test_a_publish_that_fails_fails_the_whole_call() -> None:
    broker = Broker()
    broker.failing = True
    with pytest.raises(ConnectionError):
        await publisher_for(broker)([entry("a")])  # type: ignore[arg-type]


async def test_with_tracing_each_entry_is_published_in_its_own_stored_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    under: list[str | None] = []

    @contextlib.contextmanager
    def publishing_under(traceparent: str | None) -> Iterator[None]:
        under.append(traceparent)
        yield

    monkeypatch.setattr(relay_module, "traces_publishes", lambda broker: True)
    monkeypatch.setattr(relay_module, "publishing_under", publishing_under)
    broker = Broker()
    await publisher_for(broker)([entry("a", traceparent="00-abc-def-01"), entry("b")])  # type: ignore[arg-type]
    assert under == ["00-abc-def-01", None]


async def test_without_tracing_no_trace_is_made_current(monkeypatch: pytest.MonkeyPatch) -> None:
    def publishing_under(traceparent: str | None) -> Any:
        raise AssertionError("tracing is off")

    monkeypatch.setattr(relay_module, "publishing_under", publishing_under)
    await publisher_for(Broker())([entry("a", traceparent="00-abc-def-01")])  # type: ignore[arg-type]


# --- one pass ------------------------------------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))

    def exception(self, event: str, **fields: Any) -> None:
        self.lines.append(("exception", event, fields))


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    recorded = Log()
    monkeypatch.setattr(relay_module, "log", recorded)
    return recorded


async def test_a_pass_publishes_every_waiting_entry_then_removes_exactly_those(log: Log) -> None:
    broker, metrics = Broker(), Metrics()
    quiet, busy = Store("quiet"), Store("busy")
    busy.write("d1", entry("a"), entry("b"))
    busy.write("d2", entry("c"))
    relay = OutboxRelay(broker, [quiet, busy], poll_interval_s=1, metrics=metrics)  # type: ignore[arg-type, list-item]
    assert await relay.drain_once() == 3
    assert broker.ids() == ["a", "b", "c"] and broker.confirmed == ["a", "b", "c"]
    assert busy.removed == [("d1", {"a", "b"}), ("d2", {"c"})] and busy.left() == []
    assert quiet.asked == [None] and busy.asked == [None], "stores that do not publish their writes: everything"
    assert metrics.relayed == [("busy", 3)], "nothing counted for a store with nothing waiting"
    assert log.lines == [("info", "outbox leftovers published", {"store": "busy", "events": 3})]
    assert await relay.drain_once() == 0


async def test_a_pass_counts_what_it_sent_from_every_store() -> None:
    broker, one, other = Broker(), Store("one"), Store("other")
    one.write("d1", entry("a"), entry("b"))
    other.write("d2", entry("c"))
    assert await OutboxRelay(broker, [one, other], poll_interval_s=1).drain_once() == 3  # type: ignore[arg-type, list-item]


async def test_by_default_entries_a_live_write_published_are_relayed_as_soon_as_seen() -> None:
    store = Store("s", publishes_its_writes=True)
    relay = OutboxRelay(Broker(), [store], poll_interval_s=1)  # type: ignore[arg-type, list-item]
    before = time.time()
    await relay.drain_once()
    [asked] = store.asked
    assert asked is not None and before <= asked <= time.time()


async def test_entries_are_removed_only_after_the_broker_confirmed_them() -> None:
    broker, store = Broker(), Store("s")
    store.write("d", entry("a"))
    broker.failing = True
    relay = OutboxRelay(broker, [store], poll_interval_s=1)  # type: ignore[arg-type, list-item]
    with pytest.raises(ConnectionError):
        await relay.drain_once()
    assert store.removed == [] and store.left() == ["a"]


async def test_a_store_that_publishes_its_own_writes_is_relayed_only_when_stale() -> None:
    broker, store = Broker(), Store("s", publishes_its_writes=True)
    store.write("fresh", entry("new"))
    store.write("old", entry("left-behind"), at=time.time() - 60)
    relay = OutboxRelay(broker, [store], poll_interval_s=1, stale_after_s=5)  # type: ignore[arg-type, list-item]
    before = time.time()
    assert await relay.drain_once() == 1
    after = time.time()
    [asked] = store.asked
    assert asked is not None and before - 5 <= asked <= after - 5
    assert broker.ids() == ["left-behind"]
    assert await relay.drain_once(everything=True) == 1, "at shutdown, fresh entries go too"
    assert store.asked[-1] is None and broker.ids() == ["left-behind", "new"]


async def test_the_largest_backlog_of_a_poll_is_reported_per_store() -> None:
    broker, metrics, store = Broker(), Metrics(), Store("s", page=2)
    for i in range(5):
        store.write(f"d{i}", entry(str(i)))
    relay = OutboxRelay(broker, [store], poll_interval_s=0.05, metrics=metrics)  # type: ignore[arg-type, list-item]
    relay.start()
    try:
        await asyncio.wait_for(_until(lambda: store.left() == [] and metrics.seen), 5)
    finally:
        await relay.stop()
    assert broker.ids() == ["0", "1", "2", "3", "4"], "pages are drained one after another in one poll"
    assert metrics.seen[0] == ("s", 2)
    assert metrics.relayed[:3] == [("s", 2), ("s", 2), ("s", 1)]


# --- the background task -------------------------------------------------------------------------------


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


async def test_the_relay_keeps_polling_and_survives_a_failed_pass(log: Log) -> None:
    broker, store = Broker(), Store("s")
    store.failures = 1
    relay = OutboxRelay(broker, [store], poll_interval_s=0.05)  # type: ignore[arg-type, list-item]
    relay.start()
    try:
        await asyncio.sleep(0.02)
        store.write("d", entry("a"))
        await asyncio.wait_for(_until(lambda: store.left() == []), 5)
        store.write("d", entry("b"))
        await asyncio.wait_for(_until(lambda: store.left() == []), 5)
    finally:
        await relay.stop()
    assert broker.ids() == ["a", "b"]
    assert log.lines[0] == ("exception", "outbox relay pass failed; will retry", {})


async def test_stop_settles_every_store_then_publishes_everything_left() -> None:
    broker, metrics = Broker(), Metrics()
    own, relayed = Store("own", publishes_its_writes=True), Store("relayed")
    relay = OutboxRelay(broker, [own, relayed], poll_interval_s=60, stale_after_s=60, metrics=metrics)  # type: ignore[arg-type, list-item]
    relay.start()
    await asyncio.sleep(0.02)
    own.write("d", entry("fresh"))
    started = time.monotonic()
    await asyncio.wait_for(relay.stop(), 5)
    assert time.monotonic() - started < 5, "stop wakes the relay instead of waiting for the next poll"
    assert (own.settled_calls, relayed.settled_calls) == (1, 1)
    assert broker.ids() == ["fresh"] and own.left() == []
    assert own.asked[-1] is None, "everything, however fresh"
    assert ("own", 1) in metrics.seen and ("relayed", 0) in metrics.seen


async def test_stop_without_start_only_settles() -> None:
    store = Store("s")
    assert await OutboxRelay(Broker(), [store], poll_interval_s=1).stop() == 0  # type: ignore[arg-type, list-item]
    assert store.settled_calls == 1 and store.asked == []


async def test_stop_reports_how_many_events_its_own_last_pass_published() -> None:
    broker, store = Broker(), Store("s", publishes_its_writes=True, page=1)
    store.write("old", entry("stale"), at=time.time() - 600)
    relay = OutboxRelay(broker, [store], poll_interval_s=0.02, stale_after_s=60)  # type: ignore[arg-type, list-item]
    relay.start()
    await _until(lambda: broker.ids() == ["stale"])  # an ordinary pass: not counted at stop
    store.write("d1", entry("fresh-1"))
    store.write("d2", entry("fresh-2"))
    assert await relay.stop() == 2
    assert broker.ids() == ["stale", "fresh-1", "fresh-2"]


async def test_what_is_left_behind_is_counted_over_every_store() -> None:
    broker, one, other = Broker(), Store("one"), Store("other")
    one.write("d1", entry("a"), entry("b"))
    one.write("d2", entry("c"))
    other.write("d3", entry("d"))
    relay = OutboxRelay(broker, [one, other], poll_interval_s=1)  # type: ignore[arg-type, list-item]
    assert await relay.left_behind() == 4
    await relay.drain_once()
    assert await relay.left_behind() == 0
