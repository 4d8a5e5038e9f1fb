"""A command applied once is never applied again, however many messages later it comes back: a
warehouse system retrying a restock, a console re-sending an adjustment, a courier's phone sending
a report again. The ids of applied commands are kept for good, not only the last few hundred a
document remembers itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.inventory import AdjustmentRequested, RestockRequested, WarehouseRegistrationRequested
from services.cli import bus
from services.inventory.app import create_app
from services.inventory.settings import InventorySettings
from services.inventory.storage import InventoryStorage
from services.runtime.documents import HANDLED_MEMORY, Change, DocumentStore, connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import own_groups, publish_noting, running, wait_consumed

#: More other messages than a document remembers ids of.
OTHERS = HANDLED_MEMORY + 20
FAR = datetime.now(UTC).date() + timedelta(days=700)


class Counted(BaseModel):
    count: int


def _increment(current: Counted | None) -> Change[Counted]:
    return Change(Counted(count=(current.count if current else 0) + 1))


async def test_a_store_that_remembers_commands_knows_one_after_many_others(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    name = f"test_remembers_{uuid.uuid4().hex[:6]}"
    remembering: DocumentStore[Counted] = DocumentStore(
        client[settings.mongo_database], name, Counted, remembers_commands=True
    )
    forgetting: DocumentStore[Counted] = DocumentStore(client[settings.mongo_database], f"{name}_plain", Counted)
    try:
        for store in (remembering, forgetting):
            await store.apply("doc", _increment, message_id="the-command")
            for i in range(OTHERS):
                await store.apply("doc", _increment, message_id=f"other-{i}")
        assert await remembering.apply("doc", _increment, message_id="the-command") is None
        assert await remembering.get("doc") == Counted(count=1 + OTHERS)
        # Without the applied ids the document alone has forgotten it: what the option is for.
        assert await forgetting.apply("doc", _increment, message_id="the-command") is not None
    finally:
        client.close()


def restock(warehouse: str, lot: str, quantity: int) -> RestockRequested:
    return RestockRequested(
        correlation_id=f"RESTOCK-{uuid.uuid4().hex[:8]}",
        producer="warehouse-system",
        warehouse_id=warehouse,
        drug_code="MET500",
        lot_id=lot,
        expiry_date=FAR,
        quantity=quantity,
        requested_by="Warehouse Staff",
    )


async def test_a_restock_and_an_adjustment_sent_again_byte_for_byte_apply_once(settings: RuntimeSettings) -> None:
    service_settings = own_groups(InventorySettings, settings)
    warehouse = f"WH-AGAIN-{uuid.uuid4().hex[:6].upper()}"
    registration = WarehouseRegistrationRequested(
        correlation_id=f"REGISTER-{warehouse}",
        producer="test",
        warehouse_id=warehouse,
        name="Retrying township pharmacy",
        kind="township",
        location=Coordinates(latitude=51.8, longitude=69.4),
        requested_by="Warehouse Staff",
    )
    first = restock(warehouse, "LOT-FIRST", 100)
    adjustment = AdjustmentRequested(
        correlation_id=f"ADJUST-{warehouse}",
        producer="warehouse-console",
        warehouse_id=warehouse,
        drug_code="MET500",
        lot_id="LOT-FIRST",
        delta=-7,
        reason="breakage",
        requested_by="Warehouse Staff",
    )
    # Exactly as the warehouse systems sent them: the bytes a retry re-sends.
    sent = [bus.encode(message, settings) for message in (first, adjustment)]
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    app = create_app(service_settings)
    try:
        async with running(app):
            landed = await publish_noting(settings, registration, first, adjustment)
            landed += await publish_noting(settings, *(restock(warehouse, f"LOT-{i}", 1) for i in range(OTHERS)))
            await wait_consumed(settings, app, landed)
            before = await storage.warehouses.get(warehouse)
            assert before is not None
            resent = await _send_again(settings, sent)
            resent += await _send_again(settings, sent)  # and once more, as a second retry would
            await wait_consumed(settings, app, resent)
            after = await storage.warehouses.get(warehouse)
    finally:
        client.close()
    assert before.lots["LOT-FIRST"].available == 93  # 100 received, 7 broken
    assert after == before, "a command sent again after many others changed the warehouse"


async def _send_again(settings: RuntimeSettings, records: list[tuple[str, bytes, bytes, list]]) -> list:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        return [await producer.send_and_wait(t, value, key=key, headers=headers) for t, key, value, headers in records]
    finally:
        await producer.stop()
