"""A batch consumer over the unit of work, on the real broker and database: one document that cannot
be written fails alone and is retried alone, then dead-lettered; its neighbours in the same batch are
written and their events published once."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import date

from pydantic import BaseModel

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import AdjustmentRequested, LowStock, RestockRequested
from services.cli import bus
from services.runtime.mongo_store import MongoStore
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from services.runtime.unit_of_work import Decision, Handled, Outcome, Record
from tests.support.inprocess import TopicWatch, running
from tests.support.scenario import wait_until

TOPIC = topics.INVENTORY_COMMANDS
#: A count no 64-bit integer holds: valid for the model, refused when the database encodes it.
TOO_LARGE = 2**63


class Shelf(BaseModel):
    units: int


def restock(warehouse: str, quantity: int, marker: str) -> RestockRequested:
    return RestockRequested(
        correlation_id=marker,
        producer="test",
        warehouse_id=warehouse,
        drug_code="MET500",
        lot_id="L1",
        expiry_date=date(2030, 1, 1),
        quantity=quantity,
        requested_by="test",
    )


async def test_one_document_that_cannot_be_written_fails_alone_in_its_batch(settings: RuntimeSettings) -> None:
    settings = settings.model_copy(
        update={"kafka_group_prefix": f"t{uuid.uuid4().hex[:8]}", "handler_retry_backoff_s": 0.01}
    )
    marker = f"B{uuid.uuid4().hex[:6]}"
    runtime = ServiceRuntime("test", settings)
    shelves: MongoStore[Shelf] = MongoStore(runtime.database, f"test_batches_{marker.lower()}", Shelf)
    runtime.publish_outbox_of([shelves])
    decided: Counter[str] = Counter()
    batches: list[set[str]] = []

    def add(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        decided[command.warehouse_id] += 1
        if command.quantity > 1_000:
            return Decision.refused("too_many", "over a thousand units at once")
        units = TOO_LARGE if command.warehouse_id.endswith("HUGE") else (shelf.units if shelf else 0) + command.quantity
        alert = LowStock(
            correlation_id=marker,
            producer="test",
            warehouse_id=command.warehouse_id,
            drug_code="MET500",
            available=1,
            threshold=2,
        )
        return Decision(Shelf(units=units), [alert])

    async def restock_shelves(records: Sequence[Record[RestockRequested]]) -> Sequence[Handled[RestockRequested]]:
        batches.append({r.message.warehouse_id for r in records if r.message.correlation_id == marker})
        return await runtime.unit_of_work.run(shelves, records, key=lambda c: c.warehouse_id, decide=add)

    runtime.consume(TOPIC, group="batches", handle_batch=restock_shelves, title="test")
    valid = [f"WH-{marker}-{i}" for i in range(5)]
    huge, refused = f"WH-{marker}-HUGE", f"WH-{marker}-REFUSED"
    # Published before the consumer starts: its first fetch takes them all, as one batch.
    await bus.publish(
        settings,
        *(restock(w, 10, marker) for w in valid[:2]),
        restock(huge, 10, marker),
        restock(refused, 5_000, marker),
        *(restock(w, 10, marker) for w in valid[2:]),
    )
    async with (
        TopicWatch(settings.kafka_bootstrap_servers, TOPIC.dead_letter_topic, topics.INVENTORY_EVENTS.name) as watch,
        running(runtime.app()),
    ):

        def letters(w: TopicWatch) -> dict[bytes, dict[str, bytes]]:
            mine = [r for r in w.raw(TOPIC.dead_letter_topic) if marker.encode() in r.value]
            return {r.key: dict(r.headers) for r in mine}

        await watch.wait_for(lambda w: len(letters(w)) == 2, "two dead letters", timeout=60)
        await watch.wait_for(
            lambda w: {m.warehouse_id for m in w.messages() if m.correlation_id == marker} >= set(valid),
            "the alerts of the valid restocks",
        )
        dead = letters(watch)
        alerts = [m.warehouse_id for m in watch.messages() if m.correlation_id == marker]
        stored = await shelves.load([*valid, huge, refused])

    assert batches[0] == {*valid, huge, refused}, "all in one batch"
    assert dead[huge.encode()]["dlq.reason"] == b"processing_failed"
    assert dead[huge.encode()]["dlq.attempts"] == str(settings.handler_max_attempts).encode()
    assert dead[refused.encode()]["dlq.reason"] == b"too_many"
    # The valid ones were decided once and written once; only the failing one was tried again.
    assert all(decided[w] == 1 for w in valid) and decided[huge] == settings.handler_max_attempts
    assert sorted(alerts) == sorted(valid)
    assert all(stored[w].state == Shelf(units=10) for w in valid)
    assert not stored[huge].exists and not stored[refused].exists


async def test_records_of_types_the_group_does_not_act_on_are_passed_over_unparsed(settings: RuntimeSettings) -> None:
    settings = settings.model_copy(update={"kafka_group_prefix": f"t{uuid.uuid4().hex[:8]}"})
    marker = f"S{uuid.uuid4().hex[:6]}"
    runtime = ServiceRuntime("test", settings)
    handed: list[str] = []

    async def restock_shelves(records: Sequence[Record[RestockRequested]]) -> Sequence[Handled[RestockRequested]]:
        handed.extend(type(r.message).__name__ for r in records if r.message.correlation_id == marker)
        return [Handled(r, Outcome.UNCHANGED) for r in records]

    runtime.consume(TOPIC, group="restocks", handle_batch=restock_shelves, title="test", acts_on=[RestockRequested])
    warehouse = f"WH-{marker}"
    adjustment = AdjustmentRequested(
        correlation_id=marker,
        producer="test",
        warehouse_id=warehouse,
        drug_code="MET500",
        lot_id="L1",
        delta=-1,
        reason="count",
        requested_by="test",
    )
    # Its type header says what it is; a copy sent without one is parsed, then passed over too;
    # bytes that say nothing readable are still dead-lettered (the filter hides no bad input).
    # One key, so the restock sent last is handed over after the rest were judged.
    name, key, value, headers = bus.encode(adjustment)
    no_header = [(k, v) for k, v in headers if k != "message-type"]
    await bus.publish_records(
        settings, (name, key, value, headers), (name, key, value, no_header), (name, key, b"{not json", no_header)
    )
    await bus.publish(settings, restock(warehouse, 5, marker))
    async with TopicWatch(settings.kafka_bootstrap_servers, TOPIC.dead_letter_topic) as watch, running(runtime.app()):

        async def restock_handed() -> bool:
            return bool(handed)

        await wait_until(restock_handed, "the restock handed over", timeout=30)
        await watch.wait_for(
            lambda w: any(r.key == key for r in w.raw(TOPIC.dead_letter_topic)), "the unreadable bytes dead-lettered"
        )
        skipped = runtime.observability.metrics.records_skipped.labels(
            settings.group("restocks"), TOPIC.name, adjustment.type
        )._value.get()
    assert handed == ["RestockRequested"]
    assert skipped == 1, "the one with the header, unparsed"
