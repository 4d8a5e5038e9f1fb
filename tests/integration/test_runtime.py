"""The shared runtime against the real broker and database: commit after handling, redelivery,
retries, dead letters, the outbox relay after a crash, concurrent writers through the unit of work
on `MongoStore`. (A clean SIGTERM of every service: test_runtime_shutdown.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from pydantic import BaseModel
from pymongo.errors import ConnectionFailure

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import RestockRequested
from services.cli import bus
from services.runtime import kafka
from services.runtime.errors import Refused
from services.runtime.mongo import connect
from services.runtime.mongo_store import MongoStore
from services.runtime.relay import OutboxRelay, StoreOutbox, outbox_entry
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from services.runtime.store import DocumentMemory
from services.runtime.tracking import Position
from services.runtime.unit_of_work import Decision, Handled, Outcome, Record, UnitOfWork
from tests.support.inprocess import TopicWatch, one_at_a_time, publish_noting, running
from tests.support.scenario import wait_until
from tests.support.stand_ins import Log

TOPIC = topics.INVENTORY_COMMANDS  # any consumed topic will do; these tests own their group ids
#: How often a consumer that commits what it fetched (FastStream's ACK_FIRST) commits: aiokafka's default.
AUTO_COMMIT_INTERVAL_S = 5.0


def command(marker: str) -> RestockRequested:
    return RestockRequested(
        correlation_id=marker,
        producer="test",
        warehouse_id=f"WH-{marker}",
        drug_code="D",
        lot_id="L1",
        expiry_date=date(2030, 1, 1),
        quantity=1,
        requested_by="test",
    )


def fast(settings: RuntimeSettings, **overrides: object) -> RuntimeSettings:
    return settings.model_copy(
        update={"kafka_group_prefix": f"t{uuid.uuid4().hex[:8]}", "handler_retry_backoff_s": 0.01, **overrides}
    )


async def committed(settings: RuntimeSettings, group: str) -> dict[int, int]:
    """The group's committed offsets, read by a consumer that assigns partitions itself and so
    never joins (and never disturbs) the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.group(group), enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(TOPIC.name, p) for p in consumer.partitions_for_topic(TOPIC.name) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()  # metadata of a topic we do not subscribe to
            partitions = [TopicPartition(TOPIC.name, p) for p in consumer.partitions_for_topic(TOPIC.name) or ()]
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def test_offset_is_committed_only_after_the_handler_returns(settings: RuntimeSettings) -> None:
    settings = fast(settings)
    marker = f"M{uuid.uuid4().hex[:6]}"
    entered = asyncio.Event()
    release = asyncio.Event()
    handled: list[str] = []

    async def handle(message: RestockRequested) -> None:
        if message.correlation_id == marker:  # earlier tests' messages pass through
            entered.set()
            await release.wait()
            handled.append(message.correlation_id)

    runtime = ServiceRuntime("test", settings)
    runtime.consume(TOPIC, group="commit", handle_batch=one_at_a_time(handle), title="test")
    async with running(runtime.app()):
        (landed,) = await publish_noting(settings, command(marker))
        await asyncio.wait_for(entered.wait(), timeout=30)
        # Held for longer than a consumer that commits what it fetched (FastStream's ACK_FIRST:
        # aiokafka's auto-commit) would take to commit it.
        held_until = time.monotonic() + AUTO_COMMIT_INTERVAL_S + 1
        while time.monotonic() < held_until:
            committed_while_held = (await committed(settings, "commit")).get(landed.partition, 0)
            assert committed_while_held <= landed.offset, "committed while the handler had not returned"
            await asyncio.sleep(0.5)
        release.set()

        async def committed_past_it() -> bool:
            return (await committed(settings, "commit")).get(landed.partition, 0) > landed.offset

        await wait_until(committed_past_it, "the commit after handling", timeout=10)
    assert handled == [marker]


async def test_a_background_consumer_handles_what_its_window_gathers_as_one_batch(
    settings: RuntimeSettings,
) -> None:
    """Records that come within the window after the first one fetched are handled together, so a
    projection writes each document once for all of them; each is committed only after handling
    (the commit tests above hold for background consumers too). The others are published once the
    consumer has fetched the first: a consumer that handled what each fetch brings would have
    handled the first alone by then."""
    settings = fast(settings, background_wait_ms=5000, background_max_batch_records=5000)
    warm_up = f"W{uuid.uuid4().hex[:6]}"
    first, *others = markers = [f"G{uuid.uuid4().hex[:6]}" for _ in range(3)]
    batches: list[list[str]] = []
    warmed = asyncio.Event()
    runtime = ServiceRuntime("test", settings)

    async def handle(records: Sequence[Record[RestockRequested]]) -> list[Handled[RestockRequested]]:
        mine = [r.message.correlation_id for r in records if r.message.correlation_id in markers]
        if mine:
            batches.append(mine)
        if any(r.message.correlation_id == warm_up for r in records):
            warmed.set()
        return [Handled(r, Outcome.APPLIED) for r in records]

    runtime.consume(TOPIC, group="background", handle_batch=handle, title="test", background=True)
    async with running(runtime.app()):
        # Earlier tests' records on the topic come first, in a window of their own: the test's
        # window must start with its own first record.
        await publish_noting(settings, command(warm_up))
        await asyncio.wait_for(warmed.wait(), timeout=60)
        (landed,) = await publish_noting(settings, command(first))
        (consumer,) = (subscriber.consumer for subscriber in runtime.broker.subscribers)
        partition = TopicPartition(TOPIC.name, landed.partition)

        async def fetched() -> bool:  # a fetch response that reported the partition past it brought it
            return (consumer.highwater(partition) or 0) > landed.offset

        await wait_until(fetched, "the consumer to fetch the first record", timeout=30, interval=0.02)
        await asyncio.sleep(0.5)  # what handles each fetch's records would be handling the first now
        for marker in others:
            await publish_noting(settings, command(marker))
        await wait_until(lambda: _async(sum(map(len, batches)) == len(markers)), "the three records", timeout=30)
    assert len(batches) == 1 and sorted(batches[0]) == sorted(markers), batches  # partitions interleave


async def test_a_message_interrupted_mid_handling_is_delivered_again(settings: RuntimeSettings) -> None:
    settings = fast(settings, shutdown_grace_s=1.0)
    first_calls: list[str] = []
    second_calls: list[str] = []

    marker = f"R{uuid.uuid4().hex[:6]}"

    async def hang(message: RestockRequested) -> None:
        if message.correlation_id == marker:  # earlier tests' messages pass through
            first_calls.append(message.correlation_id)
            await asyncio.Event().wait()  # never finishes: the process "dies" holding it

    first = ServiceRuntime("test", settings)
    first.consume(TOPIC, group="redeliver", handle_batch=one_at_a_time(hang), title="test")
    async with running(first.app()):
        await bus.publish(settings, command(marker))
        await wait_until(lambda: _async(bool(first_calls)), "the first delivery")

    async def record(message: RestockRequested) -> None:
        second_calls.append(message.correlation_id)

    second = ServiceRuntime("test", settings)
    second.consume(TOPIC, group="redeliver", handle_batch=one_at_a_time(record), title="test")
    async with running(second.app()):
        await wait_until(lambda: _async(marker in second_calls), "the redelivery", timeout=30)
    assert first_calls == [marker]


async def test_failing_handlers_are_retried_then_dead_lettered(settings: RuntimeSettings) -> None:
    settings = fast(settings, handler_max_attempts=3)
    calls: Counter[str] = Counter()

    async def handle(message: RestockRequested) -> None:
        calls[message.correlation_id] += 1
        if message.correlation_id.startswith("FLAKY") and calls[message.correlation_id] < 3:
            raise RuntimeError("flaky dependency")
        if message.correlation_id.startswith("BROKEN"):
            raise RuntimeError("a bug")
        if message.correlation_id.startswith("FORGED"):
            raise Refused("forged_sender", "this sender may not send that")

    suffix = uuid.uuid4().hex[:6]
    flaky, broken, forged, fine = (f"{p}{suffix}" for p in ("FLAKY", "BROKEN", "FORGED", "FINE"))
    runtime = ServiceRuntime("test", settings)
    runtime.consume(TOPIC, group="retries", handle_batch=one_at_a_time(handle), title="test")
    async with running(runtime.app()), TopicWatch(settings.kafka_bootstrap_servers, TOPIC.dead_letter_topic) as dlq:
        await bus.publish(settings, command(flaky), command(broken), command(forged), command(fine))
        await wait_until(lambda: _async(calls[fine] == 1 and calls[flaky] == 3), "handling", timeout=30)

        def mine(watch: TopicWatch) -> list:
            return [r for r in watch.raw(TOPIC.dead_letter_topic) if suffix.encode() in r.value]

        await dlq.wait_for(lambda w: len(mine(w)) >= 2, "two dead letters")
        letters = mine(dlq)
    by_reason = {dict(r.headers)["dlq.reason"]: r for r in letters}
    assert set(by_reason) == {b"processing_failed", b"forged_sender"}
    assert dict(by_reason[b"processing_failed"].headers)["dlq.attempts"] == b"3"
    assert dict(by_reason[b"forged_sender"].headers)["dlq.attempts"] == b"1"
    assert calls[broken] == 3 and calls[forged] == 1 and calls[fine] == 1
    assert command(broken).correlation_id.encode() in by_reason[b"processing_failed"].value


class Counted(BaseModel):
    count: int


def _increment(current: Counted | None, message: RestockRequested) -> Decision[Counted]:
    return Decision(Counted(count=(current.count if current else 0) + 1))


def _record(message_id: str, position: Position | None = None, *, doc: str = "doc") -> Record[RestockRequested]:
    """A message about document `doc` (its warehouse), with an id of our choosing."""
    message = command(message_id).model_copy(update={"message_id": message_id, "warehouse_id": doc})
    return Record(message, position)


def _on(message: RestockRequested) -> str:
    return message.warehouse_id


async def _run(
    unit_of_work: UnitOfWork,
    store: MongoStore[Counted],
    *records: Record[RestockRequested],
    decide: Callable[[Counted | None, RestockRequested], Decision[Counted]] = _increment,
    key: Callable[[RestockRequested], str] = _on,
) -> list[Outcome]:
    return [h.outcome for h in await unit_of_work.run(store, records, key=key, decide=decide)]


async def test_events_stored_before_a_crash_are_published_by_the_next_relay(settings: RuntimeSettings) -> None:
    runtime = ServiceRuntime("test", settings)
    store = MongoStore(runtime.database, f"test_outbox_{uuid.uuid4().hex[:6]}", Counted)
    marker = f"O{uuid.uuid4().hex[:6]}"
    # Without a publisher: the state change and its event are written, and the process dies
    # before anything publishes them.
    died = UnitOfWork(None, outbox_entry)

    def with_event(current: Counted | None, message: RestockRequested) -> Decision[Counted]:
        return Decision(Counted(count=(current.count if current else 0) + 1), [command(marker)])

    assert await _run(died, store, _record("m1"), decide=with_event) == [Outcome.APPLIED]
    [pending] = await store.pending_outbox()
    assert len(pending.outbox) == 1
    # a redelivered message changes nothing and adds no second event
    assert await _run(died, store, _record("m1"), decide=with_event) == [Outcome.DUPLICATE]

    await runtime.broker.start()
    relay = OutboxRelay(runtime.broker, [StoreOutbox(store, UnitOfWork(None, outbox_entry))], poll_interval_s=0.1)
    relay.start()
    try:
        async with TopicWatch(settings.kafka_bootstrap_servers, TOPIC.name) as watch:
            await watch.wait_for(lambda w: [m for m in w.messages() if m.correlation_id == marker], "the event")
            await watch.settle()
            assert len([m for m in watch.messages() if m.correlation_id == marker]) == 1
        await wait_until(lambda: _pending_empty(store), "the outbox to be cleared", timeout=10)
        assert (await store.load(["doc"]))["doc"].state == Counted(count=1)
    finally:
        await relay.stop()
        await runtime.broker.stop()
        runtime.mongo.close()


async def test_concurrent_writers_never_lose_an_update(settings: RuntimeSettings) -> None:
    """Two processes (two stores, two clients) increment one document at once through their units
    of work, one of them starting from the copy its memory kept before the other wrote. Nothing
    serialises the two: only the version guard of each save keeps every increment."""
    name = f"test_race_{uuid.uuid4().hex[:6]}"
    clients = [connect(settings.mongo_url.get_secret_value()) for _ in range(2)]
    memory: DocumentMemory[Counted] = DocumentMemory()
    stale = MongoStore(clients[0][settings.mongo_database], name, Counted, memory=memory)
    other = MongoStore(clients[1][settings.mongo_database], name, Counted)
    increments_each = 25

    async def increment_one_at_a_time(store: MongoStore[Counted], writer: str) -> None:
        unit_of_work = UnitOfWork(None, outbox_entry)
        for i in range(increments_each):
            # A record that lost every round is failed, and its consumer tries it again.
            while await _run(unit_of_work, store, _record(f"{writer}-{i}")) == [Outcome.FAILED]:
                pass

    try:
        assert await _run(UnitOfWork(None, outbox_entry), stale, _record("stale-seed")) == [Outcome.APPLIED]
        assert await _run(UnitOfWork(None, outbox_entry), other, _record("other-seed")) == [Outcome.APPLIED]
        held = memory.held("doc")
        assert held is not None and held.state == Counted(count=1), "the stale store's copy still says 1"
        await asyncio.gather(increment_one_at_a_time(stale, "stale"), increment_one_at_a_time(other, "other"))
        assert (await other.load(["doc"]))["doc"].state == Counted(count=2 + 2 * increments_each)
    finally:
        for client in clients:
            client.close()


async def test_records_of_one_batch_count_whatever_order_they_land_in(settings: RuntimeSettings) -> None:
    """A record that failed is tried again after its neighbours were saved, so one document may
    absorb offset 11 before offset 10: both count; a replay of an earlier batch changes nothing."""
    runtime = ServiceRuntime("test", settings)
    store = MongoStore(runtime.database, f"test_order_{uuid.uuid4().hex[:6]}", Counted)
    unit_of_work = UnitOfWork(None, outbox_entry)

    def at(offset: int, floor: int, message_id: str) -> Record[RestockRequested]:
        return _record(message_id, Position("t.v1", 0, offset, floor))

    try:
        assert await _run(unit_of_work, store, at(11, 9, "m11")) == [Outcome.APPLIED]
        assert await _run(unit_of_work, store, at(10, 9, "m10")) == [Outcome.APPLIED]
        assert await _run(unit_of_work, store, at(10, 9, "m10")) == [Outcome.DUPLICATE], "the batch redelivered"
        assert await _run(unit_of_work, store, at(12, 11, "m12")) == [Outcome.APPLIED]
        # the next batch's floor covers offsets 10 and 11, whatever ids a replay carries
        assert await _run(unit_of_work, store, at(11, 9, "m11-published-again-as-another-id")) == [Outcome.DUPLICATE]
        assert (await store.load(["doc"]))["doc"].state == Counted(count=3)
    finally:
        runtime.mongo.close()


async def test_one_document_failing_leaves_the_others_of_its_batch_written(settings: RuntimeSettings) -> None:
    runtime = ServiceRuntime("test", settings)
    store = MongoStore(runtime.database, f"test_group_{uuid.uuid4().hex[:6]}", Counted)
    unit_of_work = UnitOfWork(None, outbox_entry)

    def decide(current: Counted | None, message: RestockRequested) -> Decision[Counted]:
        if message.warehouse_id == "bad":
            raise ValueError("a bug in one decision")
        if message.warehouse_id == "refused" and current is not None:
            raise Refused("not_yours", "refused")
        return _increment(current, message)

    def to(doc: str, message_id: str) -> Record[RestockRequested]:
        return _record(message_id, doc=doc)

    try:
        assert await _run(unit_of_work, store, to("refused", "r0"), decide=decide) == [Outcome.APPLIED]
        outcomes = await _run(
            unit_of_work, store, to("bad", "b1"), to("good", "g1"), to("refused", "r1"), decide=decide
        )
        assert outcomes == [Outcome.FAILED, Outcome.APPLIED, Outcome.REFUSED]
        loaded = await store.load(["good", "bad", "refused"])
        assert loaded["good"].state == Counted(count=1) and not loaded["bad"].exists
        assert loaded["refused"].version == 1, (
            "a refusal is not written: it is dead-lettered, and refused again on replay"
        )
    finally:
        runtime.mongo.close()


async def test_a_decision_on_a_stale_copy_is_taken_again(settings: RuntimeSettings) -> None:
    """A process decides on its memory's copy of a document it wrote last; when another process
    wrote since, a decision that writes nothing (a refusal, no change) must not stand on that old
    copy: no version guard checks it, so it is decided again on the database's version."""
    runtime = ServiceRuntime("test", settings)
    name = f"test_stale_{uuid.uuid4().hex[:6]}"
    mine = MongoStore(runtime.database, name, Counted, memory=DocumentMemory())
    theirs = MongoStore(runtime.database, name, Counted)  # another process
    unit_of_work = UnitOfWork(None, outbox_entry)

    def to(doc: str, message_id: str) -> Record[RestockRequested]:
        return _record(message_id, doc=doc)

    def refuse_below_two(current: Counted | None, message: RestockRequested) -> Decision[Counted]:
        if current is None or current.count < 2:
            return Decision.refused("too_early", "count below 2")
        return Decision(Counted(count=current.count + 10))

    def nothing_below_three(current: Counted | None, message: RestockRequested) -> Decision[Counted]:
        if current is None or current.count < 3:
            return Decision.unchanged()
        return Decision(Counted(count=current.count + 100))

    try:
        await _run(unit_of_work, mine, to("refused", "r0"))
        await _run(unit_of_work, theirs, to("refused", "r00"))  # count 2: mine's copy says 1
        assert await _run(unit_of_work, mine, to("refused", "r1"), decide=refuse_below_two) == [Outcome.APPLIED]
        assert (await theirs.load(["refused"]))["refused"].state == Counted(count=12)

        await _run(unit_of_work, mine, to("unchanged", "u0"))
        for i in range(2):
            await _run(unit_of_work, theirs, to("unchanged", f"u0{i}"))  # count 3: mine's copy says 1
        assert await _run(unit_of_work, mine, to("unchanged", "n1"), decide=nothing_below_three) == [Outcome.APPLIED]
        assert (await theirs.load(["unchanged"]))["unchanged"].state == Counted(count=103)
    finally:
        runtime.mongo.close()


async def _async(value: bool) -> bool:
    return value


async def _pending_empty(store: MongoStore[Counted]) -> bool:
    return not await store.pending_outbox()


async def test_a_long_outage_gives_the_batch_back_and_its_message_is_handled_once_the_database_answers(
    settings: RuntimeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage longer than half of `max_poll_interval_ms` (here 10 of 20 s): the batch is rewound
    and fetched again rather than held until the group evicts the consumer; nothing is lost, nothing
    dead-lettered, and the offset moves once the database answers."""
    settings = fast(settings, kafka_max_poll_interval_ms=20_000, handler_retry_backoff_s=0.2)
    handled: list[str] = []
    batches: list[float] = []
    started: list[float] = []

    async def handle_batch(records: Any) -> list[Handled[Any]]:
        now = time.monotonic()
        started[:] = started or [now]
        batches.append(now)
        if now - started[0] < 13:
            raise ConnectionFailure("database gone")
        handled.extend(r.message.correlation_id for r in records if r.message.correlation_id == marker)
        return [Handled(r, Outcome.APPLIED) for r in records]

    marker = f"OUT{uuid.uuid4().hex[:6]}"  # the topic also holds earlier tests' records
    runtime = ServiceRuntime("test", settings)
    runtime.consume(TOPIC, group="outage", handle_batch=handle_batch, title="test")
    logs = Log()  # the module's logger itself: a structlog logger cached by an earlier test ignores capture_logs
    monkeypatch.setattr(kafka, "log", logs)
    async with (
        running(runtime.app()),
        TopicWatch(settings.kafka_bootstrap_servers, TOPIC.dead_letter_topic) as dlq,
    ):
        await publish_noting(settings, command(marker))
        await wait_until(lambda: _async(marker in handled), "the message, once the database answers", timeout=40)
        await wait_until(lambda: _async_committed(settings), "the offset to move", timeout=10)
        letters = [r for r in dlq.raw(TOPIC.dead_letter_topic) if marker.encode() in (r.value or b"")]
    assert handled == [marker] and letters == []
    given_back = [f for _, event, f in logs.lines if event == "database still unreachable; the batch is fetched again"]
    assert given_back and all(fields["waited_s"] <= 10 for fields in given_back)
    assert batches[-1] - batches[0] >= 13, "the outage outlasted one batch's wait"


async def _async_committed(settings: RuntimeSettings) -> bool:
    return sum((await committed(settings, "outage")).values()) > 0


async def test_a_record_near_the_brokers_size_limit_is_dead_lettered_cut_and_its_partition_moves_on(
    settings: RuntimeSettings,
) -> None:
    """A record just under the producer's largest request: whole, with the dead-letter headers, it
    would not fit, its dead-letter send would fail and its batch rewind for good. It is dead-lettered
    cut to a preview, and the record behind it on the same partition is handled."""
    settings = fast(settings)
    handled: list[str] = []

    async def handle(message: RestockRequested) -> None:
        handled.append(message.correlation_id)

    marker = f"HUGE{uuid.uuid4().hex[:6]}"
    body = command(marker).model_dump_json().encode()
    body = body[:-1] + b',"padding":"' + b"y" * (1_040_000 - len(body)) + b'"}'
    after = command(f"{marker}-after")
    runtime = ServiceRuntime("test", settings)
    runtime.consume(TOPIC, group="near-limit", handle_batch=one_at_a_time(handle), title="test")
    async with running(runtime.app()), TopicWatch(settings.kafka_bootstrap_servers, TOPIC.dead_letter_topic) as dlq:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, max_request_size=1_100_000)
        await producer.start()
        try:
            await producer.send_and_wait(TOPIC.name, body, key=b"same-key", partition=0)
            await producer.send_and_wait(TOPIC.name, after.model_dump_json().encode(), key=b"same-key", partition=0)
        finally:
            await producer.stop()
        await wait_until(lambda: _async(after.correlation_id in handled), "the record behind it", timeout=30)
        await dlq.wait_for(lambda w: [r for r in w.raw(TOPIC.dead_letter_topic) if r.key == b"same-key"], "it")
    letter = next(r for r in dlq.raw(TOPIC.dead_letter_topic) if r.key == b"same-key")
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["dlq.reason"] == "too_large" and headers["dlq.truncated"] == "true"
    assert headers["dlq.original-bytes"] == str(len(body))
    assert len(letter.value) == 64 * 1024 and body.startswith(letter.value)
    assert marker not in handled


async def test_an_oversized_message_is_dead_lettered_unread(settings: RuntimeSettings) -> None:
    settings = fast(settings, max_message_bytes=4096)
    handled: list[str] = []

    async def handle(message: RestockRequested) -> None:
        handled.append(message.correlation_id)

    marker = f"BIG{uuid.uuid4().hex[:6]}"
    huge = command(marker).model_copy(update={"requested_by": "x" * 80})
    body = (
        huge.model_dump_json().encode().replace(b'"requested_by"', b'"padding":"' + b"y" * 5000 + b'","requested_by"')
    )
    runtime = ServiceRuntime("test", settings)
    runtime.consume(TOPIC, group="size", handle_batch=one_at_a_time(handle), title="test")
    async with running(runtime.app()), TopicWatch(settings.kafka_bootstrap_servers, TOPIC.dead_letter_topic) as dlq:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(TOPIC.name, body, key=marker.encode())
        finally:
            await producer.stop()
        await dlq.wait_for(lambda w: [r for r in w.raw(TOPIC.dead_letter_topic) if r.key == marker.encode()], "it")
    letter = next(r for r in dlq.raw(TOPIC.dead_letter_topic) if r.key == marker.encode())
    assert dict(letter.headers)["dlq.reason"] == b"too_large"
    assert letter.value == body
    assert marker not in handled
