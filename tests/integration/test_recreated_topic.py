"""A topic deleted and created again starts its offsets anew: on the real dev broker, its
messages are consumed, not passed over as below the offset floor a document kept from the topic's
earlier incarnation (issue 16: replay protection keyed by topic id)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import date

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import RestockRequested
from services.cli import bus
from services.runtime.mongo_store import MongoStore
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_ids import KafkaTopicIds
from services.runtime.unit_of_work import Decision, Handled, Record
from tests.support.inprocess import running
from tests.support.scenario import wait_until

# This module's stack is its own (the fixture is per module): deleting the topic harms no other test.
TOPIC = topics.INVENTORY_COMMANDS


class Shelf(BaseModel):
    units: int
    lots: list[str]


def restock(warehouse: str, lot: str) -> RestockRequested:
    return RestockRequested(
        correlation_id=f"RX-{lot}",
        producer="test",
        warehouse_id=warehouse,
        drug_code="MET500",
        lot_id=lot,
        expiry_date=date(2030, 1, 1),
        quantity=1,
        requested_by="test",
    )


async def recreate(settings: RuntimeSettings, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([name])
        await asyncio.sleep(1)
        await admin.create_topics([NewTopic(name, settings.kafka_topic_partitions, 1)])
    finally:
        await admin.close()


async def test_a_recreated_topic_is_consumed_not_passed_over(settings: RuntimeSettings) -> None:
    settings = settings.model_copy(update={"kafka_group_prefix": f"t{uuid.uuid4().hex[:8]}"})
    warehouse = f"WH-{uuid.uuid4().hex[:6]}"
    shelves_name = f"test_recreated_{warehouse.lower().replace('-', '_')}"

    def add(shelf: Shelf | None, command: RestockRequested) -> Decision[Shelf]:
        held = shelf or Shelf(units=0, lots=[])
        return Decision(Shelf(units=held.units + command.quantity, lots=[*held.lots, command.lot_id]))

    async def shelved(runtime: ServiceRuntime, lots: Sequence[str]) -> Shelf | None:
        """Consume the topic until the shelf holds `lots`, publishing each one only after the one
        before was absorbed (so the floor the document keeps moves past the earlier offsets)."""
        shelves: MongoStore[Shelf] = MongoStore(runtime.database, shelves_name, Shelf)

        async def handle(records: Sequence[Record[RestockRequested]]) -> Sequence[Handled[RestockRequested]]:
            return await runtime.unit_of_work.run(shelves, records, key=lambda c: c.warehouse_id, decide=add)

        runtime.consume(TOPIC, group="shelves", handle_batch=handle, title="test")
        async with running(runtime.app()):
            for lot in lots:
                await bus.publish(settings, restock(warehouse, lot))

                async def has(lot: str = lot) -> bool:
                    state = (await shelves.load([warehouse]))[warehouse].state
                    return state is not None and lot in state.lots

                await wait_until(has, f"{lot} on the shelf", timeout=30)
            return (await shelves.load([warehouse]))[warehouse].state

    before = (await KafkaTopicIds(settings)([TOPIC.name]))[TOPIC.name]
    first = await shelved(ServiceRuntime("test", settings), ["L1", "L2", "L3", "L4"])
    assert first is not None and first.lots == ["L1", "L2", "L3", "L4"]

    await recreate(settings, TOPIC.name)
    after = (await KafkaTopicIds(settings)([TOPIC.name]))[TOPIC.name]
    assert before is not None and after is not None and before != after, "a new topic id"

    # The new topic's first record sits at an offset the document's floor already covers.
    second = await shelved(ServiceRuntime("test", settings), ["L5"])
    assert second is not None and second.lots == ["L1", "L2", "L3", "L4", "L5"]
