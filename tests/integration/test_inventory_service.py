"""The inventory service alone, in-process, against the real broker and database.

Each test uses drugs of its own: every registered warehouse of the module is a candidate for every
reservation, so a shared drug would let one test's stock answer another's prescription."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

from aiokafka.structs import ConsumerRecord

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts.consultation import Address, Coordinates
from pharmacy_contracts.courier import (
    DeliveryAbandoned,
    DeliveryCancelled,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryPickedUp,
)
from pharmacy_contracts.inventory import (
    AdjustmentRequested,
    LotExpired,
    LotNearingExpiry,
    LotPick,
    LowStock,
    Movement,
    ReservationFailed,
    RestockRequested,
    Shortage,
    StockAdjusted,
    StockCommandRefused,
    StockDelivered,
    StockDispatched,
    StockLevel,
    StockLine,
    StockQuarantined,
    StockReleased,
    StockReserved,
    StockRestocked,
    StockReturned,
    WarehouseRegistered,
    WarehouseRegistrationRequested,
)
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from services.cli import bus
from services.inventory.app import create_app
from services.inventory.domain import Allocation, AllocationState, Warehouse, current_lots, recompute_lots
from services.inventory.service import InventoryService
from services.inventory.settings import InventorySettings
from services.inventory.storage import InventoryStorage
from services.runtime.mongo import connect
from services.runtime.relay import outbox_entry
from services.runtime.settings import RuntimeSettings
from services.runtime.store import Save, Tracking
from services.runtime.unit_of_work import Record, UnitOfWork
from tests.support.inprocess import Clock, TopicWatch, of_type, own_groups, publish_noting, running, wait_consumed
from tests.support.scenario import wait_until

THRESHOLD = 5
EVENTS = topics.INVENTORY_EVENTS.name
COMMANDS_DLQ = topics.INVENTORY_COMMANDS.dead_letter_topic
TODAY = datetime.now(UTC).date()
FAR = TODAY + timedelta(days=700)
# Northford, where the test patients live; the warehouses are placed around it.
HOME = (51.81, 69.40)


def service_settings(settings: RuntimeSettings, **overrides: object) -> InventorySettings:
    return own_groups(InventorySettings, settings, low_stock_threshold=THRESHOLD, sweep_interval_s=0.2, **overrides)


def registration(warehouse_id: str, latitude: float, longitude: float, kind: str = "township"):
    return WarehouseRegistrationRequested(
        correlation_id=f"REGISTER-{uuid4().hex[:8]}",
        producer="test",
        warehouse_id=warehouse_id,
        name=f"Test {warehouse_id}",
        kind=kind,
        location=Coordinates(latitude=latitude, longitude=longitude),
        requested_by="Warehouse Staff",
    )


def restock(warehouse_id: str, drug_code: str, quantity: int, lot: str | None = None, expiry: date = FAR):
    return RestockRequested(
        correlation_id=f"RESTOCK-{uuid4().hex[:8]}",
        producer="test",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        lot_id=lot or f"{warehouse_id}-{drug_code}-L1",
        expiry_date=expiry,
        quantity=quantity,
        requested_by="Warehouse Staff",
    )


def adjustment(warehouse_id: str, drug_code: str, lot: str, delta: int, reason: str = "stock count"):
    return AdjustmentRequested(
        correlation_id=f"ADJUST-{uuid4().hex[:8]}",
        producer="test",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        lot_id=lot,
        delta=delta,
        reason=reason,
        requested_by="Warehouse Staff",
    )


def approval(prescription_id: str, lines: list[tuple[str, int]], days_supply: int = 30) -> PrescriptionApproved:
    home = Coordinates(latitude=HOME[0], longitude=HOME[1])
    return PrescriptionApproved(
        correlation_id=prescription_id,
        producer="prescription",
        prescription_id=prescription_id,
        patient_id=f"PAT-{prescription_id}",
        lines=[ApprovedLine(drug_code=d, quantity=q, days_supply=days_supply) for d, q in lines],
        delivery=DeliveryDetails(
            address=Address(line="Farm 1", town="Northford", coordinates=home), contact_phone="+7 700 000 0000"
        ),
    )


def attempt(prescription_id: str, warehouse_id: str, number: int = 1) -> dict[str, object]:
    return {
        "correlation_id": prescription_id,
        "producer": "courier",
        "prescription_id": prescription_id,
        "dispatch_id": f"{prescription_id}-D{number}",
        "courier_id": "CR-I",
        "attempt": number,
        "warehouse_id": warehouse_id,
    }


def abandoned(prescription_id: str, warehouse_id: str, *, travelled: bool, last_reason: str = "patient_absent"):
    return DeliveryAbandoned(
        correlation_id=prescription_id,
        producer="courier",
        prescription_id=prescription_id,
        warehouse_id=warehouse_id,
        attempts=3,
        last_reason=last_reason,
        goods_travelled=travelled,
    )


def cancelled(prescription_id: str, warehouse_id: str | None, *, returned: bool) -> DeliveryCancelled:
    return DeliveryCancelled(
        correlation_id=prescription_id,
        producer="courier",
        prescription_id=prescription_id,
        warehouse_id=warehouse_id,
        goods_returned=returned,
    )


def events_for(watch: TopicWatch, key: str, cls: type[Envelope] | None = None) -> list[Envelope]:
    """Events on inventory.events.v1 keyed by `key` (a prescription or warehouse id), in order."""
    found = [topics.INVENTORY_EVENTS.parse(r.value) for r in watch.raw(EVENTS) if r.key == key.encode()]
    return [e for e in found if cls is None or isinstance(e, cls)]


def dead_letters(watch: TopicWatch, warehouse_id: str) -> list[ConsumerRecord[bytes, bytes]]:
    return [r for r in watch.raw(COMMANDS_DLQ) if r.key == warehouse_id.encode()]


async def stock_barrier(settings: RuntimeSettings, watch: TopicWatch) -> None:
    """After every write already made (messages `wait_consumed` saw handled): an approval nobody
    can fill, whose ReservationFailed goes out through the allocation store after whatever earlier
    allocation writes caused, and an adjustment at a warehouse nobody registered, refused inside
    the warehouse store's write and dead-lettered after whatever earlier warehouse writes caused
    (see `TopicWatch.wait_for_barrier`; the watch must follow the commands' dead-letter topic).
    Neither moves any stock."""
    barrier = uuid4().hex[:8]
    rx, warehouse_id, drug = f"RX-I-BARRIER-{barrier}", f"WH-I-BARRIER-{barrier}", "DRUG-BARRIER-NOWHERE"
    await bus.publish(settings, approval(rx, [(drug, 1)]), adjustment(warehouse_id, drug, "LOT-BARRIER", 1, "barrier"))
    await watch.wait_for_barrier(
        lambda w: events_for(w, rx, ReservationFailed) and dead_letters(w, warehouse_id), "the stock barriers"
    )


def level(drug_code: str, available: int, reserved: int = 0, dispatched: int = 0, quarantined: int = 0) -> StockLevel:
    return StockLevel(
        drug_code=drug_code, available=available, reserved=reserved, dispatched=dispatched, quarantined=quarantined
    )


def figures(warehouse: Warehouse | None, lot_id: str) -> tuple[int, ...]:
    """(available, reserved, dispatched, quarantined, expired, delivered) of one lot."""
    assert warehouse is not None
    lot = warehouse.lots[lot_id]
    return lot.available, lot.reserved, lot.dispatched, lot.quarantined, lot.expired, lot.delivered


def assert_conserved(warehouses: list[Warehouse]) -> None:
    """Every lot balances, and what holds say is held is exactly what the lots hold."""
    for warehouse in warehouses:
        for lot_id, lot in warehouse.lots.items():
            assert lot.balanced, f"{warehouse.warehouse_id}/{lot_id}: {lot}"
            picks = [(p, h.dispatched) for h in warehouse.holds.values() for p in h.picks if p.lot_id == lot_id]
            assert lot.reserved == sum(p.quantity for p, out in picks if not out), f"{warehouse.warehouse_id}/{lot_id}"
            assert lot.dispatched == sum(p.quantity for p, out in picks if out), f"{warehouse.warehouse_id}/{lot_id}"


async def test_registration_restocks_and_adjustments(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    wh, drug, lot = "WH-I-CMD", "DRUG-CMD", "LOT-CMD-1"
    early = restock(wh, drug, 7, lot)  # before the warehouse is registered: dead-lettered
    first = restock(wh, drug, 10, lot)
    commands = [
        early,
        registration(wh, 51.5, 70.0),
        first,
        restock(wh, drug, 5, lot),
        first,  # delivered twice: applied once
        other_expiry := restock(wh, drug, 1, lot, expiry=FAR + timedelta(days=1)),  # refused: the lot says otherwise
        adjustment(wh, drug, lot, -3, "breakage"),  # 12
        too_many := adjustment(wh, drug, lot, -100, "miscount"),  # refused: would go below zero
        no_lot := adjustment(wh, drug, "LOT-NOWHERE", 2, "found"),  # refused: no such lot
        adjustment(wh, drug, lot, +2, "found in the back"),  # 14
        crossing := adjustment(wh, drug, lot, -10, "expired"),  # 4: falls below the threshold of 5
        adjustment(wh, drug, lot, -1, "breakage"),  # 3: already below, no second alert
        nowhere := adjustment("WH-I-NOWHERE", drug, lot, +1, "wrong warehouse"),
    ]
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS, COMMANDS_DLQ) as watch,
        ):
            landed = await publish_noting(settings, *commands)
            await watch.wait_for(lambda w: len(events_for(w, wh, StockAdjusted)) >= 4, "four adjustments")
            await watch.wait_for(lambda w: dead_letters(w, "WH-I-NOWHERE") and dead_letters(w, wh), "dead letters")
            await wait_consumed(settings, app, landed)
            before_replay = await storage.warehouses.get(wh)
            # The dead-lettered restock, replayed now that the warehouse is registered, is applied.
            replayed = await publish_noting(settings, early)
            await watch.wait_for(lambda w: len(events_for(w, wh, StockRestocked)) >= 3, "the replayed restock")
            await wait_consumed(settings, app, replayed)
            await stock_barrier(settings, watch)
            warehouse = await storage.warehouses.get(wh)
            unknown = await storage.warehouses.get("WH-I-NOWHERE")
            everything = await storage.all_warehouses()
    finally:
        client.close()

    (registered,) = events_for(watch, wh, WarehouseRegistered)
    assert (registered.kind, registered.location) == ("township", Coordinates(latitude=51.5, longitude=70.0))

    restocked = events_for(watch, wh, StockRestocked)
    assert [(e.lot_id, e.quantity, e.level) for e in restocked] == [
        (lot, 10, level(drug, 10)),
        (lot, 5, level(drug, 15)),
        (lot, 7, level(drug, 10)),  # the replay, after the adjustments
    ]
    assert restocked[0].causation_id == first.message_id
    assert restocked[0].movements == [
        Movement(kind="received", lot_id=lot, drug_code=drug, quantity=10, source="outside", target="available")
    ]

    adjusted = events_for(watch, wh, StockAdjusted)
    assert [(e.delta, e.reason, e.level.available) for e in adjusted] == [
        (-3, "breakage", 12),
        (2, "found in the back", 14),
        (-10, "expired", 4),
        (-1, "breakage", 3),
    ]
    assert adjusted[0].movements == [
        Movement(kind="adjusted", lot_id=lot, drug_code=drug, quantity=3, source="available", target="outside")
    ]
    refused = events_for(watch, wh, StockCommandRefused)
    assert [r.causation_id for r in refused] == [other_expiry.message_id, too_many.message_id, no_lot.message_id]
    assert "expiring" in refused[0].reason and "12" in refused[1].reason and "LOT-NOWHERE" in refused[2].reason

    alerts = events_for(watch, wh, LowStock)
    assert [(a.drug_code, a.available, a.threshold) for a in alerts] == [(drug, 4, THRESHOLD)], "alerted once"
    assert alerts[0].causation_id == crossing.message_id

    assert before_replay is not None and warehouse is not None
    assert figures(before_replay, lot) == (3, 0, 0, 0, 0, 0)
    lot_now = warehouse.lots[lot]
    assert (lot_now.available, lot_now.received, lot_now.adjusted, lot_now.expiry_date) == (10, 22, -12, FAR)
    assert unknown is None, "an adjustment does not create a warehouse"

    dead = dead_letters(watch, "WH-I-NOWHERE")
    assert len(dead) == 1
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert headers["dlq.reason"] == "unknown_warehouse"
    assert "WH-I-NOWHERE" in headers["dlq.detail"]
    assert headers["dlq.topic"] == topics.INVENTORY_COMMANDS.name
    assert headers["dlq.offset"] == str(landed[-1].offset)
    assert dead[0].value == bus.encode(nowhere)[2]
    (early_dead,) = dead_letters(watch, wh)
    assert {k: v.decode() for k, v in early_dead.headers}["dlq.reason"] == "unknown_warehouse"
    assert early_dead.value == bus.encode(early)[2]

    assert_conserved(everything)


async def test_the_nearest_warehouse_with_everything_fills_it_first_expiry_first(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    rx, a, b = "RX-I-RES", "DRUG-RES-A", "DRUG-RES-B"
    near, mid, far = "PH-I-NEAR", "PH-I-MID", "WH-I-FAR"
    setup = [
        registration(near, *HOME),  # at the patient's door, but without B
        registration(mid, 51.55, 70.40),  # ~75 km: has everything
        registration(far, 50.61, 72.10, kind="central"),  # ~230 km: has plenty of everything
        restock(near, a, 500),
        restock(mid, a, 50, "A-EXPIRED", TODAY - timedelta(days=1)),  # refused: never on the shelf
        restock(mid, a, 50, "A-SHORT", TODAY + timedelta(days=2 + 30 - 1)),  # one day short
        restock(mid, a, 20, "A-SOON", TODAY + timedelta(days=2 + 30)),  # lasts exactly
        restock(mid, a, 50, "A-LATER", TODAY + timedelta(days=300)),
        restock(mid, b, 10, "B-1"),
        restock(far, a, 500),
        restock(far, b, 500),
    ]
    approved = approval(rx, [(a, 20), (b, 4), (a, 10)])  # one drug on two lines: one demand of 30
    # Another worker handling this approval claimed the far warehouse and is still at it (or crashed).
    resumed = approval(f"{rx}-CLAIMED", [(b, 5)])
    claim = Allocation(
        prescription_id=resumed.prescription_id, state=AllocationState.RESERVING, lines={b: 5}, warehouse_id=far
    )
    picked_up = DeliveryPickedUp(**attempt(rx, mid))
    failed = DeliveryFailed(**attempt(rx, mid), reason="patient_absent", goods_returned=True, will_retry=True)
    picked_up_again = DeliveryPickedUp(**attempt(rx, mid, 2))
    delivered = DeliveryCompleted(**attempt(rx, mid, 2))
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS, COMMANDS_DLQ) as watch,
        ):
            landed = await publish_noting(settings, *setup)
            await wait_consumed(settings, app, landed)
            await storage.allocations.save([Save(resumed.prescription_id, 0, claim, (), Tracking())])
            landed = await publish_noting(settings, approved, approved, resumed)
            await watch.wait_for(
                lambda w: events_for(w, rx, StockReserved) and events_for(w, resumed.prescription_id, StockReserved),
                "the reservations",
            )
            await wait_consumed(settings, app, landed)
            allocation = await storage.allocations.get(rx)
            resumed_allocation = await storage.allocations.get(resumed.prescription_id)
            after_reserve = await storage.warehouses.get(mid)

            await publish_noting(settings, picked_up)
            await watch.wait_for(lambda w: events_for(w, rx, StockDispatched), "the dispatch")
            landed = await publish_noting(settings, failed, picked_up, failed)
            await watch.wait_for(lambda w: events_for(w, rx, StockReturned), "the return")
            await wait_consumed(settings, app, landed)
            after_return = await storage.warehouses.get(mid)
            landed = await publish_noting(settings, picked_up_again, delivered, delivered, picked_up_again)
            await watch.wait_for(lambda w: events_for(w, rx, StockDelivered), "the delivery")
            await wait_consumed(settings, app, landed)
            await stock_barrier(settings, watch)
            after_delivery = await storage.warehouses.get(mid)
            everything = await storage.all_warehouses()
    finally:
        client.close()

    reserved_events = events_for(watch, rx, StockReserved)
    assert len(reserved_events) == 1, "the repeated approval reserves once"
    reserved = reserved_events[0]
    assert isinstance(reserved, StockReserved)
    assert reserved.warehouse_id == mid
    assert reserved.pickup_location == Coordinates(latitude=51.55, longitude=70.40)
    assert reserved.lines == [StockLine(drug_code=a, quantity=30), StockLine(drug_code=b, quantity=4)]
    assert reserved.picks == [
        LotPick(drug_code=a, lot_id="A-SOON", expiry_date=TODAY + timedelta(days=32), quantity=20),
        LotPick(drug_code=a, lot_id="A-LATER", expiry_date=TODAY + timedelta(days=300), quantity=10),
        LotPick(drug_code=b, lot_id="B-1", expiry_date=FAR, quantity=4),
    ]
    assert [(m.kind, m.lot_id, m.quantity, m.source, m.target) for m in reserved.movements] == [
        ("reserved", "A-SOON", 20, "available", "reserved"),
        ("reserved", "A-LATER", 10, "available", "reserved"),
        ("reserved", "B-1", 4, "available", "reserved"),
    ]
    assert reserved.levels[1] == level(b, 6, reserved=4)
    assert reserved.causation_id == approved.message_id

    assert allocation is not None
    assert (allocation.state, allocation.warehouse_id, allocation.lines) == (
        AllocationState.RESERVED,
        mid,
        {a: 30, b: 4},
    )
    (resumed_reservation,) = events_for(watch, resumed.prescription_id, StockReserved)
    assert resumed_reservation.warehouse_id == far, "the warehouse another worker claimed, though mid is nearer"
    assert resumed_allocation is not None
    assert (resumed_allocation.state, resumed_allocation.warehouse_id) == (AllocationState.RESERVED, far)
    assert figures(after_reserve, "A-SOON") == (0, 20, 0, 0, 0, 0)
    assert figures(after_reserve, "A-LATER") == (40, 10, 0, 0, 0, 0)
    assert figures(after_reserve, "A-SHORT")[:2] == (50, 0), "short-dated: not taken"
    assert after_reserve is not None and "A-EXPIRED" not in after_reserve.lots, "expired: not even taken in"
    (expired_refused,) = events_for(watch, mid, StockCommandRefused)
    assert "lot A-EXPIRED of DRUG-RES-A expired on" in expired_refused.reason
    assert after_return is not None and after_return.holds[rx].dispatched is False
    assert figures(after_return, "A-SOON") == (0, 20, 0, 0, 0, 0), "the sealed package is held for the retry"

    moves = [e for e in events_for(watch, rx) if not isinstance(e, StockReserved)]
    assert [type(e) for e in moves] == [StockDispatched, StockReturned, StockDispatched, StockDelivered], (
        "redeliveries change nothing"
    )
    assert moves[0].causation_id == picked_up.message_id
    assert moves[1].causation_id == failed.message_id
    assert moves[3].levels == [level(a, 90), level(b, 6)]
    assert figures(after_delivery, "A-SOON") == (0, 0, 0, 0, 0, 20)
    assert figures(after_delivery, "B-1") == (6, 0, 0, 0, 0, 4)
    assert after_delivery is not None and after_delivery.holds == {}, "delivery closes the hold"
    assert_conserved(everything)


async def test_goods_that_travelled_go_to_quarantine_and_goods_that_did_not_go_back(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    wh, drug, lot = "PH-I-Q", "DRUG-Q", "LOT-Q"
    damaged, kept, withdrawn, unknown_wh, early, came_back = (f"RX-I-Q{n}" for n in range(1, 7))
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS, COMMANDS_DLQ) as watch,
        ):
            landed = await publish_noting(
                settings,
                registration(wh, *HOME),
                restock(wh, drug, 100, lot),
                cancelled(early, None, returned=False),  # withdrawn before inventory saw the approval
            )
            await wait_consumed(settings, app, landed)
            landed = await publish_noting(
                settings,
                *(approval(rx, [(drug, 10)]) for rx in (damaged, kept, withdrawn, unknown_wh, early, came_back)),
            )
            await wait_consumed(settings, app, landed)
            landed = await publish_noting(
                settings,
                DeliveryPickedUp(**attempt(damaged, wh)),
                abandoned(damaged, wh, travelled=True, last_reason="damaged"),
                abandoned(kept, wh, travelled=False),
                DeliveryPickedUp(**attempt(withdrawn, wh)),
                cancelled(withdrawn, wh, returned=True),
                cancelled(withdrawn, wh, returned=True),
                cancelled(unknown_wh, None, returned=False),
                # Picked up, failed (the sealed package is back, held for the retry), then cancelled; even
                # if the notice says the goods were not returned, this warehouse saw them leave.
                DeliveryPickedUp(**attempt(came_back, wh)),
                DeliveryFailed(**attempt(came_back, wh), reason="patient_absent", goods_returned=True, will_retry=True),
                cancelled(came_back, wh, returned=False),
            )
            await wait_consumed(settings, app, landed)
            await stock_barrier(settings, watch)
            warehouse = await storage.warehouses.get(wh)
            allocations = {rx: await storage.allocations.get(rx) for rx in (damaged, early)}
            everything = await storage.all_warehouses()
    finally:
        client.close()

    (quarantined_damaged,) = events_for(watch, damaged, StockQuarantined)
    assert quarantined_damaged.why == "damaged"
    assert quarantined_damaged.lines == [StockLine(drug_code=drug, quantity=10)]
    assert {(m.source, m.target) for m in quarantined_damaged.movements} == {("dispatched", "quarantine")}
    (released,) = events_for(watch, kept, StockReleased)
    assert {(m.kind, m.source, m.target) for m in released.movements} == {("released", "reserved", "available")}
    (quarantined_cancelled,) = events_for(watch, withdrawn, StockQuarantined)
    assert quarantined_cancelled.why == "cancelled"
    assert [type(e) for e in events_for(watch, unknown_wh)] == [StockReserved, StockReleased], (
        "found through the allocation"
    )
    assert events_for(watch, early) == [], "a delivery withdrawn first leaves nothing to reserve"
    assert allocations[early] is not None and allocations[early].state is AllocationState.CANCELLED
    assert allocations[damaged] is not None and allocations[damaged].state is AllocationState.RESERVED

    assert [type(e) for e in events_for(watch, came_back)] == [
        StockReserved,
        StockDispatched,
        StockReturned,
        StockQuarantined,
    ]
    quarantined_came_back = events_for(watch, came_back, StockQuarantined)[0]
    assert quarantined_came_back.why == "cancelled"
    assert {(m.kind, m.source, m.target) for m in quarantined_came_back.movements} == {
        ("returned", "reserved", "quarantine")
    }
    assert figures(warehouse, lot) == (70, 0, 0, 30, 0, 0), "30 quarantined, never back on the shelf"
    assert warehouse is not None and warehouse.holds == {}
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
            landed = await publish_noting(
                settings,
                registration("WH-I-X", 51.0, 70.0),
                registration("WH-I-Y", 51.1, 70.0),
                restock("WH-I-X", "DRUG-X", 6),
                restock("WH-I-X", "DRUG-X", 50, "X-SHORT", TODAY + timedelta(days=10)),  # too short: does not count
                restock("WH-I-Y", "DRUG-Y", 9),
            )
            await wait_consumed(settings, app, landed)
            before = {w.warehouse_id: w for w in await storage.all_warehouses()}
            landed = await publish_noting(settings, short, split)
            await watch.wait_for(
                lambda w: events_for(w, "RX-I-SHORT") and events_for(w, "RX-I-SPLIT"), "two failed reservations"
            )
            await wait_consumed(settings, app, landed)
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
    assert (split_failed.reason, split_failed.shortages) == ("NOT_IN_ONE_WAREHOUSE", [])
    assert of_type(watch.messages(EVENTS), StockReserved, prescription_id="RX-I-SHORT") == []

    for wid in ("WH-I-X", "WH-I-Y"):
        assert after[wid].holds == {} and after[wid].stock == before[wid].stock, "nothing was reserved"
    for allocation, rx in zip(allocations, ("RX-I-SHORT", "RX-I-SPLIT"), strict=True):
        assert allocation is not None
        assert (allocation.prescription_id, allocation.state, allocation.warehouse_id) == (
            rx,
            AllocationState.OUT_OF_STOCK,
            None,
        )


async def test_expiry_alerts_and_the_ledger_rebuilds_every_lot(settings: RuntimeSettings) -> None:
    """Runs last: its ledger consumer reads every event of the module, so the ledger it leaves must
    rebuild every lot of every warehouse the module's tests touched."""
    client = connect(settings.mongo_url.get_secret_value())
    storage = InventoryStorage(client[settings.mongo_database])
    wh, drug = "PH-I-EXP", "DRUG-EXP"
    start = datetime.combine(TODAY, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    clock = Clock(start)
    setup = [
        registration(wh, 52.2, 71.38),
        restock(wh, drug, 4, "EXP-TOMORROW", TODAY + timedelta(days=1)),
        restock(wh, drug, 5, "EXP-IN-30", TODAY + timedelta(days=30)),
        restock(wh, drug, 6, "EXP-IN-31", TODAY + timedelta(days=31)),
        restock(wh, drug, 20, "EXP-LATER", FAR),
        adjustment(wh, drug, "EXP-LATER", -17, "broken in transport"),  # 4 + 5 + 6 + 3 = 18: not below 16
    ]
    try:
        async with (
            running(create_app(service_settings(settings, low_stock_thresholds={drug: 16}), clock=clock)) as app,
            TopicWatch(settings.kafka_bootstrap_servers, EVENTS) as watch,
        ):
            landed = await publish_noting(settings, *setup)
            await wait_consumed(settings, app, landed)
            await watch.wait_for(lambda w: len(events_for(w, wh, LotNearingExpiry)) >= 2, "the near-expiry alerts")
            # Time, not a barrier: what must not happen is a second alert from a later run of the
            # service's own sweep (every 0.2 s), so several runs must have had their chance.
            await watch.settle(quiet_s=1.0)
            nearing_today = events_for(watch, wh, LotNearingExpiry)
            before_expiry = clock.now
            clock.now = start + timedelta(days=1)  # EXP-TOMORROW expires; EXP-IN-31 is now 30 days away
            await watch.wait_for(lambda w: events_for(w, wh, LotExpired), "the expiry")
            await watch.settle(quiet_s=1.0)  # the same: later sweeps must not expire or alert again
            warehouse = await storage.warehouses.get(wh)

            async def ledger_caught_up() -> bool:
                return recompute_lots(await storage.movements()) == current_lots(await storage.all_warehouses())

            await wait_until(ledger_caught_up, "the ledger to account for every lot", timeout=30)
            entries = await storage.movements()
            everything = await storage.all_warehouses()

            # Every event recorded again (a redelivery, a replay): the ledger does not change.
            recorder = InventoryService(storage, UnitOfWork(None, outbox_entry), service_settings(settings))
            await recorder.record_movements([Record(event) for event in watch.messages(EVENTS)])
            entries_after_replay = await storage.movements()
            lot_history = await storage.movements(wh, "EXP-TOMORROW")
    finally:
        client.close()

    assert sorted((e.lot_id, e.available, e.expiry_date) for e in nearing_today) == [
        ("EXP-IN-30", 5, TODAY + timedelta(days=30)),
        ("EXP-TOMORROW", 4, TODAY + timedelta(days=1)),
    ], "once per lot, within 30 days inclusive"
    nearing_tomorrow = events_for(watch, wh, LotNearingExpiry)[len(nearing_today) :]
    assert [(e.lot_id, e.occurred_at) for e in nearing_tomorrow] == [("EXP-IN-31", start + timedelta(days=1))]
    (expired,) = events_for(watch, wh, LotExpired)
    assert (expired.lot_id, expired.removed, expired.level) == ("EXP-TOMORROW", 4, level(drug, 14))
    assert expired.movements == [
        Movement(
            kind="expired", lot_id="EXP-TOMORROW", drug_code=drug, quantity=4, source="available", target="expired"
        )
    ]
    assert expired.occurred_at == start + timedelta(days=1), "events carry the service's clock"
    (low,) = events_for(watch, wh, LowStock)
    assert (low.available, low.threshold) == (14, 16), "the drug's own threshold, crossed by the expiry"
    assert figures(warehouse, "EXP-TOMORROW") == (0, 0, 0, 0, 4, 0)

    assert len(entries) == len({e.entry_id for e in entries})
    assert entries_after_replay == entries
    assert recompute_lots(entries) == current_lots(everything)
    assert len(current_lots(everything)) >= 15, "every test's lots are accounted for"
    # The lot as it was before it expired, from the ledger alone.
    history = recompute_lots(lot_history, until=before_expiry)
    assert (history[wh, "EXP-TOMORROW"].available, history[wh, "EXP-TOMORROW"].expired) == (4, 0)
    assert [e.kind for e in lot_history] == ["received", "expired"]
    assert_conserved(everything)
