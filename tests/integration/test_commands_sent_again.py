"""A command applied once is never applied again, however many messages later it comes back: a
warehouse system retrying a restock, a console re-sending an adjustment, a courier's phone sending
a report again. The ids of applied commands are kept for good, not only the last few hundred a
document remembers itself: in an applied-id list (warehouses, which absorb messages without end),
or on the document itself where a document's life is a bounded number of messages (a delivery)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.courier import CourierReported
from pharmacy_contracts.inventory import AdjustmentRequested, RestockRequested, WarehouseRegistrationRequested
from services.cli import bus
from services.courier.app import create_app as create_courier_app
from services.courier.storage import CourierStorage
from services.inventory.app import create_app
from services.inventory.settings import InventorySettings
from services.inventory.storage import InventoryStorage
from services.runtime.mongo import connect
from services.runtime.mongo_store import MongoStore
from services.runtime.relay import outbox_entry
from services.runtime.settings import RuntimeSettings
from services.runtime.store import RECENT_MESSAGES
from services.runtime.unit_of_work import Decision, Outcome, Record, UnitOfWork
from tests.integration import test_courier_service as courier_tests
from tests.support.inprocess import TopicWatch, own_groups, publish_noting, running, wait_consumed
from tests.unit.builders import make_report

#: More other messages than a document remembers ids of.
OTHERS = RECENT_MESSAGES + 20
FAR = datetime.now(UTC).date() + timedelta(days=700)


class Counted(BaseModel):
    count: int


def _increment(current: Counted | None, message: RestockRequested) -> Decision[Counted]:
    return Decision(Counted(count=(current.count if current else 0) + 1))


async def _apply(unit_of_work: UnitOfWork, store: MongoStore[Counted], message_id: str) -> Outcome:
    message = restock("WH", "LOT", 1).model_copy(update={"message_id": message_id})
    [handled] = await unit_of_work.run(store, [Record(message)], key=lambda _: "doc", decide=_increment)
    return handled.outcome


async def test_a_store_that_remembers_commands_knows_one_after_many_others(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    name = f"test_remembers_{uuid.uuid4().hex[:6]}"
    remembering = MongoStore(client[settings.mongo_database], name, Counted, remembers_commands=True)
    forgetting = MongoStore(client[settings.mongo_database], f"{name}_plain", Counted)
    unit_of_work = UnitOfWork(None, outbox_entry)
    try:
        for store in (remembering, forgetting):
            await _apply(unit_of_work, store, "the-command")
            for i in range(OTHERS):
                await _apply(unit_of_work, store, f"other-{i}")
        assert await _apply(unit_of_work, remembering, "the-command") is Outcome.DUPLICATE
        assert (await remembering.load(["doc"]))["doc"].state == Counted(count=1 + OTHERS)
        # Without the applied ids the document alone has forgotten it: what the option is for.
        assert await _apply(unit_of_work, forgetting, "the-command") is Outcome.APPLIED
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


async def test_a_courier_report_sent_again_byte_for_byte_after_hundreds_of_others_applies_once(
    settings: RuntimeSettings,
) -> None:
    """Wrong delivery codes are counted report by report, so one counted twice would show. The
    delivery remembers the id of every message it absorbed (a delivery's life is a few dozen of
    them in practice): no applied-id list is needed to know a report from a phone that lost signal."""
    rx = f"RX-AGAIN-{uuid.uuid4().hex[:6].upper()}"
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    app = create_courier_app(courier_tests.service_settings(settings, max_wrong_codes=10_000))
    try:
        await courier_tests.seed(storage)
        async with running(app), TopicWatch(settings.kafka_bootstrap_servers, *courier_tests.WATCHED) as watch:
            landed = await publish_noting(settings, courier_tests.approval(rx), courier_tests.reserved(rx, "WH-AGAIN"))
            await watch.wait_for(lambda w: courier_tests.offers(w, rx), "the dispatch")
            ((_, offer),) = courier_tests.offers(watch, rx)

            def reported(status: str, **fields: str) -> CourierReported:
                return make_report(
                    dispatch_id=offer.dispatch_id,
                    courier_id=offer.courier_id,
                    status=status,
                    package_id=rx,
                    correlation_id=rx,
                    message_id=str(uuid.uuid4()),
                    **fields,
                )

            wrong_code = reported("delivered", delivery_code="000000")
            sent = [bus.encode(wrong_code, settings)]
            landed += await publish_noting(settings, reported("picked_up"), wrong_code)
            others = [reported("delivered", delivery_code="000000") for _ in range(OTHERS)]
            landed += await publish_noting(settings, *others)
            await wait_consumed(settings, app, landed)
            before = await storage.delivery(rx)
            resent = await _send_again(settings, sent)
            resent += await _send_again(settings, sent)
            await wait_consumed(settings, app, resent)
            after = await storage.delivery(rx)
    finally:
        client.close()
    assert before is not None and before.attempts[-1].wrong_codes == OTHERS + 1
    assert after == before, "a report sent again after many others changed the delivery"
