"""The shared runtime against the real broker and database: commit after handling, redelivery,
retries, dead letters, the outbox relay after a crash, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from datetime import date

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from pydantic import BaseModel

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import RestockRequested
from services.cli import bus
from services.ops.devstack import DevStack
from services.runtime.documents import Change, DocumentStore
from services.runtime.errors import Refused
from services.runtime.relay import OutboxRelay
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from services.runtime.tracking import Position, current_position
from tests.support.inprocess import TopicWatch, running
from tests.support.scenario import wait_until

TOPIC = topics.INVENTORY_COMMANDS  # any consumed topic will do; these tests own their group ids


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
    release = asyncio.Event()
    handled: list[str] = []

    async def handle(message: RestockRequested) -> None:
        await release.wait()
        handled.append(message.correlation_id)

    runtime = ServiceRuntime("test", settings)
    runtime.consume(TOPIC, group="commit", handle=handle, title="test")
    marker = f"M{uuid.uuid4().hex[:6]}"
    async with running(runtime.app()):
        await bus.publish(settings, command(marker))
        await asyncio.sleep(2)  # the message is fetched and the handler is waiting
        before = await committed(settings, "commit")
        release.set()
        await wait_until(lambda: _async(bool(handled)), "the handler to finish")

        async def advanced() -> bool:
            return sum(v for v in (await committed(settings, "commit")).values() if v > 0) >= 1

        await wait_until(advanced, "the commit after handling", timeout=10)
    assert handled == [marker]
    assert all(offset <= 0 for offset in before.values()), f"committed before handling: {before}"


async def test_a_background_consumer_lets_records_gather_after_a_batch_that_was_not_full(
    settings: RuntimeSettings,
) -> None:
    linger_s = 1.5
    settings = fast(settings, background_wait_ms=int(linger_s * 1000))
    handled_at: dict[str, float] = {}

    async def handle(message: RestockRequested) -> None:
        handled_at[message.correlation_id] = time.monotonic()

    runtime = ServiceRuntime("test", settings)
    runtime.consume(TOPIC, group="background", handle=handle, title="test", background=True)
    first, second, third = (f"P{uuid.uuid4().hex[:6]}" for _ in range(3))
    async with running(runtime.app()):
        await bus.publish(settings, command(first))
        await wait_until(lambda: _async(first in handled_at), "the first record")
        await bus.publish(settings, command(second))  # both while the consumer lingers
        await bus.publish(settings, command(third))
        await wait_until(lambda: _async(third in handled_at and second in handled_at), "the others", timeout=30)
    # The consumer slept at least this long after the first, lone record...
    assert min(handled_at[second], handled_at[third]) - handled_at[first] >= linger_s * 0.95
    # ...and the two that arrived meanwhile came in one batch: in two, a second sleep would part them.
    assert abs(handled_at[third] - handled_at[second]) < linger_s / 2


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
    first.consume(TOPIC, group="redeliver", handle=hang, title="test")
    async with running(first.app()):
        await bus.publish(settings, command(marker))
        await wait_until(lambda: _async(bool(first_calls)), "the first delivery")

    async def record(message: RestockRequested) -> None:
        second_calls.append(message.correlation_id)

    second = ServiceRuntime("test", settings)
    second.consume(TOPIC, group="redeliver", handle=record, title="test")
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
    runtime.consume(TOPIC, group="retries", handle=handle, title="test")
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


async def test_events_stored_before_a_crash_are_published_by_the_next_relay(settings: RuntimeSettings) -> None:
    runtime = ServiceRuntime("test", settings)
    store: DocumentStore[Counted] = DocumentStore(runtime.database, f"test_outbox_{uuid.uuid4().hex[:6]}", Counted)
    marker = f"O{uuid.uuid4().hex[:6]}"
    # the state change and its event are written; the process dies before any relay runs
    await store.apply("doc", lambda _: Change(Counted(count=1), [command(marker)]), message_id="m1")
    assert len((await store.pending_outbox())[0][1]) == 1
    # a redelivered message changes nothing and adds no second event
    assert await store.apply("doc", lambda _: Change(Counted(count=2), [command(marker)]), message_id="m1") is None

    await runtime.broker.start()
    relay = OutboxRelay(runtime.broker, [store], poll_interval_s=0.1)
    relay.start()
    try:
        async with TopicWatch(settings.kafka_bootstrap_servers, TOPIC.name) as watch:
            await watch.wait_for(lambda w: [m for m in w.messages() if m.correlation_id == marker], "the event")
            await watch.settle()
            assert len([m for m in watch.messages() if m.correlation_id == marker]) == 1
        await wait_until(lambda: _pending_empty(store), "the outbox to be cleared", timeout=10)
        assert (await store.get("doc")) == Counted(count=1)
    finally:
        await relay.stop()
        await runtime.broker.stop()
        runtime.mongo.close()


async def test_concurrent_writers_never_lose_an_update(settings: RuntimeSettings) -> None:
    runtime = ServiceRuntime("test", settings)
    store: DocumentStore[Counted] = DocumentStore(runtime.database, f"test_race_{uuid.uuid4().hex[:6]}", Counted)

    def increment(current: Counted | None) -> Change[Counted]:
        return Change(Counted(count=(current.count if current else 0) + 1))

    try:
        await asyncio.gather(*(store.apply("doc", increment, message_id=f"m{i}") for i in range(40)))
        assert (await store.get("doc")) == Counted(count=40)
    finally:
        runtime.mongo.close()


def _increment(current: Counted | None) -> Change[Counted]:
    return Change(Counted(count=(current.count if current else 0) + 1))


async def _apply_at(store: DocumentStore[Counted], offset: int, floor: int, message_id: str) -> Change[Counted] | None:
    current_position.set(Position("t.v1", 0, offset, floor))
    try:
        return await store.apply("doc", _increment, message_id=message_id)
    finally:
        current_position.set(None)


async def test_records_of_one_batch_count_whatever_order_they_land_in(settings: RuntimeSettings) -> None:
    """Records of one partition with different keys are handled concurrently, so one document may
    absorb offset 11 before offset 10: both count; a replay of an earlier batch changes nothing."""
    runtime = ServiceRuntime("test", settings)
    store: DocumentStore[Counted] = DocumentStore(runtime.database, f"test_order_{uuid.uuid4().hex[:6]}", Counted)
    try:
        assert await _apply_at(store, 11, floor=9, message_id="m11") is not None
        assert await _apply_at(store, 10, floor=9, message_id="m10") is not None
        assert await _apply_at(store, 10, floor=9, message_id="m10") is None, "the batch redelivered"
        assert await _apply_at(store, 12, floor=11, message_id="m12") is not None
        # the next batch's floor covers offsets 10 and 11, whatever ids a replay carries
        assert await _apply_at(store, 11, floor=9, message_id="m11-published-again-as-another-id") is None
        assert (await store.get("doc")) == Counted(count=3)
    finally:
        runtime.mongo.close()


async def test_one_document_failing_leaves_the_others_of_its_group_written(settings: RuntimeSettings) -> None:
    runtime = ServiceRuntime("test", settings)
    store: DocumentStore[Counted] = DocumentStore(runtime.database, f"test_group_{uuid.uuid4().hex[:6]}", Counted)

    def broken(_: Counted | None) -> Change[Counted]:
        raise ValueError("a bug in one decision")

    def refused(_: Counted | None) -> Change[Counted]:
        raise Refused("not_yours", "refused")

    try:
        await store.apply("refused", _increment)
        outcomes = await asyncio.gather(
            store.apply("bad", broken, message_id="b1"),
            store.apply("good", _increment, message_id="g1"),
            store.apply("refused", refused, message_id="r1"),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], ValueError) and isinstance(outcomes[2], Refused)
        assert isinstance(outcomes[1], Change)
        assert await store.get("good") == Counted(count=1) and await store.get("bad") is None
        versions = await store.versions()
        assert versions["refused"][0] == 1, "a refusal is not written: it is dead-lettered, and refused again on replay"
    finally:
        runtime.mongo.close()


async def test_a_decision_on_a_stale_copy_is_taken_again(settings: RuntimeSettings) -> None:
    """A process reuses its copy of a document it wrote last; when another process wrote since, a
    decision that writes nothing (a refusal, no change) must not stand on that old copy."""
    runtime = ServiceRuntime("test", settings)
    name = f"test_stale_{uuid.uuid4().hex[:6]}"
    mine: DocumentStore[Counted] = DocumentStore(runtime.database, name, Counted)
    theirs: DocumentStore[Counted] = DocumentStore(runtime.database, name, Counted)  # another process

    def refuse_below_two(current: Counted | None) -> Change[Counted]:
        if current is None or current.count < 2:
            raise Refused("too_early", "count below 2")
        return Change(Counted(count=current.count + 10))

    def nothing_below_three(current: Counted | None) -> Change[Counted] | None:
        return None if current is None or current.count < 3 else Change(Counted(count=current.count + 100))

    try:
        await mine.apply("refused", _increment)
        await theirs.apply("refused", _increment)  # count 2: mine's copy says 1
        assert await mine.apply("refused", refuse_below_two, message_id="r1") is not None
        assert await theirs.get("refused") == Counted(count=12)

        await mine.apply("unchanged", _increment)
        for _ in range(2):
            await theirs.apply("unchanged", _increment)  # count 3: mine's copy says 1
        assert await mine.apply("unchanged", nothing_below_three, message_id="n1") is not None
        assert await theirs.get("unchanged") == Counted(count=103)
    finally:
        runtime.mongo.close()


@pytest.mark.parametrize("service", ["consultation", "inventory"])
def test_sigterm_stops_a_service_cleanly_within_ten_seconds(stack: DevStack, service: str) -> None:
    stack.start_services(service)
    pid = stack.pid_of(f"{service}-1")
    assert pid is not None
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - started
    log = (stack.logs / f"{service}-1.log").read_text()
    assert os.waitstatus_to_exitcode(status) == 0, log[-2000:]
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert "flushed its outbox" in log


async def _async(value: bool) -> bool:
    return value


async def _pending_empty(store: DocumentStore[Counted]) -> bool:
    return not await store.pending_outbox()


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
    runtime.consume(TOPIC, group="size", handle=handle, title="test")
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
