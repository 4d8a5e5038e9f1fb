"""The inventory service alone, in-process, against the real broker and database."""

from __future__ import annotations

from uuid import uuid4

from aiokafka.structs import ConsumerRecord

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts.courier import DeliveryAbandoned, DeliveryCompleted, DeliveryFailed, DeliveryPickedUp
from pharmacy_contracts.inventory import (
    AdjustmentRequested,
    LowStock,
    ReservationFailed,
    RestockRequested,
    Shortage,
    StockAdjusted,
    StockCommandRefused,
    StockDispatched,
    StockLevel,
    StockLine,
    StockReleased,
    StockReserved,
    StockRestocked,
    StockReturned,
)
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from services.cli import bus
from services.inventory.app import create_app
from services.inventory.domain import AllocationState, DrugStock, Warehouse
from services.inventory.settings import InventorySettings
from services.inventory.storage import InventoryStorage
from services.runtime.documents import connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch, of_type, own_groups, publish_noting, running, wait_consumed
from tests.support.scenario import prescription_message

THRESHOLD = 5
EVENTS = topics.INVENTORY_EVENTS.name
COMMANDS_DLQ = topics.INVENTORY_COMMANDS.dead_letter_topic


def service_settings(settings: RuntimeSettings) -> InventorySettings:
    return own_groups(InventorySettings, settings, low_stock_threshold=THRESHOLD)


def restock(warehouse_id: str, drug_code: str, quantity: int) -> RestockRequested:
    command_id = f"RESTOCK-{uuid4().hex[:8]}"
    return RestockRequested(
        correlation_id=command_id,
        producer="test",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        quantity=quantity,
        requested_by="Warehouse Staff",
    )


def adjustment(warehouse_id: str, drug_code: str, delta: int, reason: str = "stock count") -> AdjustmentRequested:
    command_id = f"ADJUST-{uuid4().hex[:8]}"
    return AdjustmentRequested(
        correlation_id=command_id,
        producer="test",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        delta=delta,
        reason=reason,
        requested_by="Warehouse Staff",
    )


def approval(prescription_id: str, lines: list[tuple[str, int]]) -> PrescriptionApproved:
    patient = prescription_message(prescription_id, lines).prescription.patient
    return PrescriptionApproved(
        correlation_id=prescription_id,
        producer="prescription",
        prescription_id=prescription_id,
        patient_id=patient.patient_id,
        lines=[ApprovedLine(drug_code=d, quantity=q, days_supply=30) for d, q in lines],
        delivery=DeliveryDetails(address=patient.address, contact_phone=patient.phone),
    )


def attempt(prescription_id: str, warehouse_id: str) -> dict[str, object]:
    return {
        "correlation_id": prescription_id,
        "producer": "courier",
        "prescription_id": prescription_id,
        "dispatch_id": f"{prescription_id}-D1",
        "courier_id": "CR-I",
        "attempt": 1,
        "warehouse_id": warehouse_id,
    }


def events_for(watch: TopicWatch, key: str, cls: type[Envelope] | None = None) -> list[Envelope]:
    """Events on inventory.events.v1 keyed by `key` (a prescription or warehouse id), in order."""
    found = [topics.INVENTORY_EVENTS.parse(r.value) for r in watch.raw(EVENTS) if r.key == key.encode()]
    return [e for e in found if cls is None or isinstance(e, cls)]


def dead_letters(watch: TopicWatch, warehouse_id: str) -> list[ConsumerRecord[bytes, bytes]]:
    return [r for r in watch.raw(COMMANDS_DLQ) if r.key == warehouse_id.encode()]


def level(drug_code: str, available: int, reserved: int = 0, dispatched: int = 0) -> StockLevel:
    return StockLevel(drug_code=drug_code, available=available, reserved=reserved, dispatched=dispatched)


def assert_conserved(warehouses: list[Warehouse]) -> None:
    """For each drug in each warehouse: received + adjusted == available + reserved + dispatched."""
    for warehouse in warehouses:
        for drug, stock in warehouse.stock.items():
            assert stock.received + stock.adjusted == stock.available + stock.reserved + stock.dispatched, (
                f"{warehouse.warehouse_id}/{drug}: {stock}"
            )
        for rx, hold in warehouse.holds.items():
            for drug, quantity in hold.lines.items():
                held = warehouse.level(drug).dispatched if hold.dispatched else warehouse.level(drug).reserved
                assert held >= quantity, f"{warehouse.warehouse_id} holds {quantity} {drug} for {rx}"


async def test_restocks_and_adjustments(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    wh, drug = "WH-I-CMD", "DRUG-CMD"
    first = restock(wh, drug, 10)
    commands = [
        first,
        restock(wh, drug, 5),
        first,  # delivered twice: applied once
        adjustment(wh, drug, -3, "breakage"),  # 12
        too_many := adjustment(wh, drug, -100, "miscount"),  # refused: would go below zero
        adjustment(wh, drug, +2, "found in the back"),  # 14
        crossing := adjustment(wh, drug, -10, "expired"),  # 4: falls below the threshold of 5
        adjustment(wh, drug, -1, "breakage"),  # 3: already below, no second alert
        nowhere := adjustment("WH-I-NOWHERE", drug, +1, "wrong warehouse"),
    ]
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS, COMMANDS_DLQ) as watch,
        ):
            landed = await publish_noting(settings, *commands)
            await watch.wait_for(lambda w: len(events_for(w, wh, StockAdjusted)) >= 4, "four adjustments")
            await watch.wait_for(lambda w: dead_letters(w, "WH-I-NOWHERE"), "a dead letter")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            warehouse = await storage.warehouses.get(wh)
            unknown = await storage.warehouses.get("WH-I-NOWHERE")
            everything = await storage.all_warehouses()
    finally:
        client.close()

    restocked = events_for(watch, wh, StockRestocked)
    assert [(e.quantity, e.level) for e in restocked] == [(10, level(drug, 10)), (5, level(drug, 15))]
    assert restocked[0].causation_id == first.message_id
    assert restocked[0].requested_by == "Warehouse Staff"

    adjusted = events_for(watch, wh, StockAdjusted)
    assert [(e.delta, e.reason, e.level.available) for e in adjusted] == [
        (-3, "breakage", 12),
        (2, "found in the back", 14),
        (-10, "expired", 4),
        (-1, "breakage", 3),
    ]
    refused = events_for(watch, wh, StockCommandRefused)
    assert len(refused) == 1
    assert refused[0].causation_id == too_many.message_id
    assert refused[0].drug_code == drug
    assert "12" in refused[0].reason, refused[0].reason

    alerts = events_for(watch, wh, LowStock)
    assert [(a.drug_code, a.available, a.threshold) for a in alerts] == [(drug, 4, THRESHOLD)], "alerted once"
    assert alerts[0].causation_id == crossing.message_id

    assert warehouse is not None
    assert warehouse.stock[drug] == DrugStock(available=3, reserved=0, dispatched=0, received=15, adjusted=-12)
    assert unknown is None, "an adjustment does not create a warehouse"

    dead = dead_letters(watch, "WH-I-NOWHERE")
    assert len(dead) == 1
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert headers["dlq.reason"] == "unknown_warehouse"
    assert "WH-I-NOWHERE" in headers["dlq.detail"]
    assert headers["dlq.topic"] == topics.INVENTORY_COMMANDS.name
    assert headers["dlq.offset"] == str(landed[-1].offset)
    assert headers["dlq.partition"] == str(landed[-1].partition)
    assert dead[0].value == bus.encode(nowhere)[2]
    assert dead_letters(watch, wh) == [], "refusals are events, not dead letters"

    assert_conserved(everything)


async def test_a_reservation_follows_the_delivery(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    rx, drug = "RX-I-RES", "DRUG-RES"
    approved = approval(rx, [(drug, 4), (drug, 2)])  # one drug on two lines: one demand of 6
    picked_up = DeliveryPickedUp(**attempt(rx, "WH-I-RES-B"))
    failed = DeliveryFailed(**attempt(rx, "WH-I-RES-B"), reason="patient_absent", goods_returned=True, will_retry=True)
    abandoned = DeliveryAbandoned(
        correlation_id=rx,
        producer="courier",
        prescription_id=rx,
        warehouse_id="WH-I-RES-B",
        attempts=2,
        last_reason="patient_absent",
    )
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS) as watch,
        ):
            # WH-I-RES-A sorts first but cannot fill 6; WH-I-RES-B can.
            await publish_noting(settings, restock("WH-I-RES-A", drug, 3), restock("WH-I-RES-B", drug, 10))
            await watch.wait_for(
                lambda w: events_for(w, "WH-I-RES-A", StockRestocked) and events_for(w, "WH-I-RES-B", StockRestocked),
                "the restocks",
            )
            landed = await publish_noting(settings, approved, approved)
            await watch.wait_for(lambda w: events_for(w, rx, StockReserved), "the reservation")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            reserved_events = events_for(watch, rx)
            allocation = await storage.allocations.get(rx)
            after_reserve = await storage.warehouses.get("WH-I-RES-B")

            await publish_noting(settings, picked_up)
            await watch.wait_for(lambda w: events_for(w, rx, StockDispatched), "the dispatch")
            after_pickup = await storage.warehouses.get("WH-I-RES-B")

            landed = await publish_noting(settings, failed, picked_up, failed, abandoned, abandoned)
            await watch.wait_for(lambda w: events_for(w, rx, StockReleased), "the release")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            after_release = await storage.warehouses.get("WH-I-RES-B")
            untouched = await storage.warehouses.get("WH-I-RES-A")
            everything = await storage.all_warehouses()
    finally:
        client.close()

    assert [type(e) for e in reserved_events] == [StockReserved], "the repeated approval reserves once"
    reserved = reserved_events[0]
    assert isinstance(reserved, StockReserved)
    assert reserved.warehouse_id == "WH-I-RES-B"
    assert reserved.lines == [StockLine(drug_code=drug, quantity=6)]
    assert reserved.levels == [level(drug, 4, reserved=6)]
    assert reserved.causation_id == approved.message_id
    alerts = events_for(watch, "WH-I-RES-B", LowStock)
    assert [(a.drug_code, a.available, a.threshold, a.correlation_id) for a in alerts] == [(drug, 4, THRESHOLD, rx)]

    assert allocation is not None
    assert allocation.state is AllocationState.RESERVED
    assert allocation.warehouse_id == "WH-I-RES-B"
    assert allocation.lines == {drug: 6}
    assert after_reserve is not None
    assert after_reserve.stock[drug] == DrugStock(available=4, reserved=6, received=10)
    assert after_reserve.holds[rx].lines == {drug: 6} and after_reserve.holds[rx].dispatched is False
    assert after_pickup is not None
    assert after_pickup.stock[drug] == DrugStock(available=4, dispatched=6, received=10)
    assert after_pickup.holds[rx].dispatched is True

    moves = [e for e in events_for(watch, rx) if not isinstance(e, StockReserved)]
    assert [type(e) for e in moves] == [StockDispatched, StockReturned, StockReleased], "redeliveries change nothing"
    dispatched, returned, released = moves
    assert isinstance(dispatched, StockDispatched) and dispatched.levels == [level(drug, 4, dispatched=6)]
    assert dispatched.causation_id == picked_up.message_id
    assert isinstance(returned, StockReturned) and returned.levels == [level(drug, 4, reserved=6)]
    assert returned.causation_id == failed.message_id
    assert isinstance(released, StockReleased) and released.levels == [level(drug, 10)]
    assert released.lines == [StockLine(drug_code=drug, quantity=6)]
    assert released.warehouse_id == "WH-I-RES-B"

    assert after_release is not None
    assert after_release.stock[drug] == DrugStock(available=10, received=10)
    assert rx not in after_release.holds
    assert untouched is not None and untouched.stock[drug] == DrugStock(available=3, received=3)
    assert_conserved(everything)


async def test_delivered_stock_stays_dispatched(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    rx, wh, drug = "RX-I-DONE", "WH-I-DONE", "DRUG-DONE"
    picked_up = DeliveryPickedUp(**attempt(rx, wh))
    delivered = DeliveryCompleted(**attempt(rx, wh))
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS) as watch,
        ):
            await publish_noting(settings, restock(wh, drug, 20))
            await watch.wait_for(lambda w: events_for(w, wh, StockRestocked), "the restock")
            await publish_noting(settings, approval(rx, [(drug, 5)]))
            await watch.wait_for(lambda w: events_for(w, rx, StockReserved), "the reservation")
            landed = await publish_noting(settings, picked_up, picked_up, delivered, delivered)
            await watch.wait_for(lambda w: events_for(w, rx, StockDispatched), "the dispatch")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            warehouse = await storage.warehouses.get(wh)
            everything = await storage.all_warehouses()
    finally:
        client.close()

    assert [type(e) for e in events_for(watch, rx)] == [StockReserved, StockDispatched]
    assert events_for(watch, wh, LowStock) == [], "15 left is above the threshold"
    assert warehouse is not None
    assert warehouse.stock[drug] == DrugStock(available=15, dispatched=5, received=20)
    assert warehouse.holds == {}, "delivery closes the hold"
    assert_conserved(everything)


async def test_an_approval_nobody_can_fill_changes_no_stock(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    short = approval("RX-I-SHORT", [("DRUG-X", 8)])
    split = approval("RX-I-SPLIT", [("DRUG-X", 2), ("DRUG-Y", 2)])
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS) as watch,
        ):
            await publish_noting(settings, restock("WH-I-X", "DRUG-X", 6), restock("WH-I-Y", "DRUG-Y", 9))
            await watch.wait_for(
                lambda w: events_for(w, "WH-I-X", StockRestocked) and events_for(w, "WH-I-Y", StockRestocked),
                "the restocks",
            )
            before = {w.warehouse_id: w for w in await storage.all_warehouses()}
            landed = await publish_noting(settings, short, split)
            await watch.wait_for(
                lambda w: events_for(w, "RX-I-SHORT") and events_for(w, "RX-I-SPLIT"), "two failed reservations"
            )
            await wait_consumed(settings, app, landed)
            await watch.settle()
            after = {w.warehouse_id: w for w in await storage.all_warehouses()}
            allocations = [await storage.allocations.get(rx) for rx in ("RX-I-SHORT", "RX-I-SPLIT")]
    finally:
        client.close()

    (short_failed,) = events_for(watch, "RX-I-SHORT")
    assert isinstance(short_failed, ReservationFailed)
    assert short_failed.reason == "OUT_OF_STOCK"
    assert short_failed.shortages == [Shortage(drug_code="DRUG-X", requested=8, best_available=6)]
    assert short_failed.causation_id == short.message_id
    (split_failed,) = events_for(watch, "RX-I-SPLIT")
    assert isinstance(split_failed, ReservationFailed)
    assert split_failed.reason == "NOT_IN_ONE_WAREHOUSE"
    assert split_failed.shortages == []
    assert of_type(watch.messages(EVENTS), StockReserved, prescription_id="RX-I-SHORT") == []

    assert after == before, "nothing was reserved anywhere"
    assert after["WH-I-X"].stock["DRUG-X"] == DrugStock(available=6, received=6)
    for allocation, rx in zip(allocations, ("RX-I-SHORT", "RX-I-SPLIT"), strict=True):
        assert allocation is not None
        assert allocation.prescription_id == rx
        assert allocation.state is AllocationState.OUT_OF_STOCK
        assert allocation.warehouse_id is None
    assert_conserved(list(after.values()))
