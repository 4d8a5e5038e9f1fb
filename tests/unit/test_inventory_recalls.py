"""Lot recalls: the rules (services/inventory/recalls.py) on plain warehouses, then the use case on
the in-memory store: the shelf quarantined, a reservation re-picked or withdrawn, a delivery on the
road named for the courier, the patients served listed, each warehouse's part applied once, and the
books balanced throughout."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from services.inventory import recalls
from services.inventory.domain import Hold, Pick, StockRefused, Transfer, TransferPick, Warehouse
from services.inventory.service import InventoryService
from services.inventory.transfers import receive
from services.runtime.relay import outbox_entry
from services.runtime.unit_of_work import Outcome, Record, UnitOfWork
from tests.unit.builders import make_lot, make_warehouse
from tests.unit.test_inventory_service import (
    NEAR,
    Published,
    Storage,
    approval,
    attempt,
    balanced,
    cancelled,
    figures,
    outcomes,
    restock,
    settings,
    warehouse,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TODAY = NOW.date()
NOTE = recalls.note_for("RC-1", "supplier recall notice 118", "Aigerim", NOW)
SOON, LATER, SHORT = date(2028, 1, 31), date(2029, 6, 30), date(2026, 12, 20)


def held(warehouse: Warehouse, rx: str, *picks: tuple[str, int], days: int | None = 30, **state: bool) -> Warehouse:
    """`warehouse` with a hold for `rx` taking these units of these lots (moved from available)."""
    lots = dict(warehouse.lots)
    out = state.get("dispatched", False)
    for lot_id, quantity in picks:
        lot = lots[lot_id]
        bucket = "dispatched" if out else "reserved"
        lots[lot_id] = lot.model_copy(
            update={"available": lot.available - quantity, bucket: getattr(lot, bucket) + quantity}
        )
    hold = Hold(
        picks=[Pick(lot_id=lot_id, drug_code=lots[lot_id].drug_code, quantity=q) for lot_id, q in picks],
        days_supply={} if days is None else {lots[picks[0][0]].drug_code: days},
        **state,
    )
    return warehouse.model_copy(update={"lots": lots, "holds": {**warehouse.holds, rx: hold}})


def shelf(**lots: tuple[int, date]) -> Warehouse:
    return make_warehouse("WH-1", lots={lot_id: make_lot("MET500", n, expiry) for lot_id, (n, expiry) in lots.items()})


def recalled(w: Warehouse, lot_id: str = "BAD", **kw: Any) -> recalls.Recalled:
    return recalls.recall(w, lot_id, NOTE, today=TODAY, delivery_days=2, **kw)


# --- the rules -------------------------------------------------------------------------------------


def test_the_shelf_goes_to_quarantine_and_a_reservation_is_re_picked_from_a_lot_that_lasts():
    w = held(shelf(BAD=(100, SOON), GOOD=(100, LATER)), "RX-1", ("BAD", 30))

    done = recalled(w)

    after = done.warehouse
    assert (after.lots["BAD"].available, after.lots["BAD"].reserved, after.lots["BAD"].quarantined) == (0, 0, 100)
    assert (after.lots["GOOD"].available, after.lots["GOOD"].reserved) == (70, 30)
    assert after.holds["RX-1"].picks == [Pick(lot_id="GOOD", drug_code="MET500", quantity=30)]
    assert (done.quarantined, done.re_picked, done.withdrawn) == (70, ("RX-1",), ())
    assert [(m.kind, m.source, m.target, m.quantity) for m in done.movements] == [
        ("recalled", "available", "quarantine", 70),
        ("recalled", "reserved", "quarantine", 30),
        ("reserved", "available", "reserved", 30),
    ]
    assert all(lot.balanced for lot in after.lots.values())
    assert after.recalled_lots["BAD"] == NOTE


def test_a_reservation_nothing_else_covers_is_withdrawn_and_its_other_units_go_back():
    w = held(shelf(BAD=(10, SOON), OTHER=(20, LATER), SHORT=(500, SHORT)), "RX-1", ("BAD", 10), ("OTHER", 20))

    done = recalled(w)

    after = done.warehouse
    assert done.withdrawn == ("RX-1",) and "RX-1" not in after.holds
    assert figures(after, "BAD")[:4] == (0, 0, 0, 10)
    assert figures(after, "OTHER")[:2] == (20, 0), "the other units back on the shelf"
    assert figures(after, "SHORT")[:2] == (500, 0), "a lot that does not last the therapy is no replacement"


def test_a_withdrawn_reservation_that_travelled_goes_to_quarantine_whole():
    w = held(shelf(BAD=(10, SOON), OTHER=(20, LATER)), "RX-1", ("BAD", 10), ("OTHER", 20), travelled=True)

    after = recalled(w).warehouse

    assert figures(after, "OTHER")[:4] == (0, 0, 0, 20)
    assert all(lot.balanced for lot in after.lots.values())


def test_an_old_hold_without_its_therapy_is_re_picked_from_lots_lasting_as_long_as_the_recalled_one():
    w = held(shelf(BAD=(10, LATER), EARLIER=(50, SOON)), "RX-1", ("BAD", 10), days=None)

    assert recalled(w).withdrawn == ("RX-1",)


def test_the_road_and_the_patients_served_are_named_and_nothing_on_the_road_moves():
    w = held(shelf(BAD=(100, SOON)), "RX-ROAD", ("BAD", 10), dispatched=True)
    bad = w.lots["BAD"].model_copy(update={"delivered_to": {"RX-SERVED": 5}})
    w = w.model_copy(update={"lots": {**w.lots, "BAD": bad}})

    done = recalled(w, delivered_before={"RX-OLD": 7})

    assert done.on_the_road == ("RX-ROAD",) and done.delivered_to == ("RX-OLD", "RX-SERVED")
    assert done.units == {"RX-OLD": 7, "RX-SERVED": 5, "RX-ROAD": 10}
    assert figures(done.warehouse, "BAD")[:4] == (0, 0, 10, 90)


def test_the_same_recall_is_applied_once_and_a_recalled_lot_never_goes_back_on_the_shelf():
    after = recalled(shelf(BAD=(100, SOON))).warehouse

    with pytest.raises(StockRefused, match="applied here already"):
        recalled(after)
    again = recalls.recall(after, "BAD", recalls.note_for("RC-2", "again", "A", NOW), today=TODAY, delivery_days=2)
    assert again.quarantined == 0 and again.movements == ()


def test_a_warehouse_without_the_lot_remembers_the_recall_and_quarantines_it_on_arrival():
    township = recalled(make_warehouse("PH-T"), "BAD").warehouse
    transfer = Transfer(
        transfer_id="TR-1",
        drug_code="MET500",
        quantity=40,
        from_warehouse_id="WH-C",
        to_warehouse_id="PH-T",
        state="in_transit",
        picks=[TransferPick(lot_id="BAD", expiry_date=SOON, quantity=40)],
    )
    township = township.model_copy(update={"incoming": {"TR-1": transfer}})

    outcome, _ = receive(township, "TR-1", by="Gulnara", at=NOW)

    assert figures(outcome.warehouse, "BAD")[:4] == (0, 0, 0, 40)
    assert outcome.warehouse.lots["BAD"].balanced


# --- the use case ------------------------------------------------------------------------------------


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def service(storage: Storage, published: Published) -> InventoryService:
    return InventoryService(storage, UnitOfWork(published, outbox_entry), settings(), clock=lambda: NOW)


def recall_command(warehouse_id: str, *, message_id: str | None = None, recall_id: str = "RC-1") -> Any:
    return inv.LotRecallRequested(
        **({"message_id": message_id} if message_id else {}),
        correlation_id=recall_id,
        producer="test",
        warehouse_id=warehouse_id,
        recall_id=recall_id,
        lot_id="A-L1",
        reason="supplier recall notice 118",
        requested_by="Aigerim",
    )


async def test_a_recall_catches_the_shelf_a_reservation_and_the_road_and_lists_the_patients_served(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    near = warehouse("PH-NEAR", NEAR, A=100)
    near = near.model_copy(update={"lots": {**near.lots, "A-L2": make_lot("A", 50, date(2032, 6, 30))}})
    storage.put_warehouse(near)
    await service.on_decision([Record(approval(rx, ("A", 10))) for rx in ("RX-SERVED", "RX-ROAD", "RX-HELD")])
    await service.on_delivery_event(
        [
            Record(c.DeliveryPickedUp(**attempt("RX-SERVED", "PH-NEAR"))),
            Record(c.DeliveryCompleted(**attempt("RX-SERVED", "PH-NEAR"))),
            Record(c.DeliveryPickedUp(**attempt("RX-ROAD", "PH-NEAR"))),
        ]
    )
    published.entries.clear()
    command = recall_command("PH-NEAR")

    assert await outcomes(service.on_command, command, command) == [Outcome.APPLIED, Outcome.DUPLICATE]

    (answer,) = published.of_kind("lot_recalled")
    assert (answer["quarantined"], answer["re_picked"], answer["withdrawn"]) == (70, ["RX-HELD"], [])
    assert (answer["on_the_road"], answer["delivered_to"]) == (["RX-ROAD"], ["RX-SERVED"])
    assert answer["causation_id"] == command.message_id
    told = {(e["prescription_id"], e["status"], e["quantity"]) for e in published.of_kind("prescription_recalled")}
    assert told == {("RX-SERVED", "delivered", 10), ("RX-ROAD", "on_the_road", 10)}
    after = storage.warehouse("PH-NEAR")
    assert figures(after, "A-L1") == (0, 0, 10, 80, 0, 10)
    assert after.holds["RX-HELD"].picks == [Pick(lot_id="A-L2", drug_code="A", quantity=10)]
    assert balanced(after)

    # The package on the road comes back: to quarantine; the books still balance.
    await service.on_delivery_event([Record(cancelled("RX-ROAD", "PH-NEAR", returned=True))])
    after = storage.warehouse("PH-NEAR")
    assert figures(after, "A-L1") == (0, 0, 0, 90, 0, 10) and balanced(after)

    # The same recall sent again (a new message): refused; a restock of the lot: refused.
    published.entries.clear()
    await service.on_command([Record(recall_command("PH-NEAR", message_id="AGAIN"))])
    await service.on_command([Record(restock("PH-NEAR", "A", 10, "A-L1"))])
    refusals = [e["reason"] for e in published.of_kind("stock_command_refused")]
    assert len(refusals) == 2 and "applied here already" in refusals[0] and "recalled" in refusals[1]


async def test_a_reservation_no_other_lot_covers_is_withdrawn_and_told(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=15))
    await service.on_decision([Record(approval("RX-1", ("A", 10)))])
    published.entries.clear()

    await service.on_command([Record(recall_command("PH-NEAR"))])

    (told,) = published.of_kind("prescription_recalled")
    assert (told["prescription_id"], told["status"]) == ("RX-1", "withdrawn")
    after = storage.warehouse("PH-NEAR")
    assert "RX-1" not in after.holds and figures(after, "A-L1")[:4] == (0, 0, 0, 15) and balanced(after)


async def test_the_patients_served_before_lots_remembered_them_come_from_the_ledger(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=100))
    await service.on_decision([Record(approval("RX-OLD", ("A", 10)))])
    await service.on_delivery_event(
        [
            Record(c.DeliveryPickedUp(**attempt("RX-OLD", "PH-NEAR"))),
            Record(c.DeliveryCompleted(**attempt("RX-OLD", "PH-NEAR"))),
        ]
    )
    await service.record_movements([Record(e) for e in _events(published)])
    # As a document written before lots remembered their deliveries.
    old = storage.warehouse("PH-NEAR")
    storage.put_warehouse(
        old.model_copy(update={"lots": {"A-L1": old.lots["A-L1"].model_copy(update={"delivered_to": {}})}})
    )
    published.entries.clear()

    await service.on_command([Record(recall_command("PH-NEAR"))])

    assert published.of_kind("lot_recalled")[0]["delivered_to"] == ["RX-OLD"]


async def test_a_delivery_completed_after_the_recall_tells_the_patient_they_received_it(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=100))
    await service.on_decision([Record(approval("RX-LATE", ("A", 10)))])
    await service.on_delivery_event([Record(c.DeliveryPickedUp(**attempt("RX-LATE", "PH-NEAR")))])
    await service.on_command([Record(recall_command("PH-NEAR"))])
    published.entries.clear()

    await service.on_delivery_event([Record(c.DeliveryCompleted(**attempt("RX-LATE", "PH-NEAR")))])

    (told,) = published.of_kind("prescription_recalled")
    assert (told["prescription_id"], told["status"]) == ("RX-LATE", "delivered")


def _events(published: Published) -> list[Any]:
    from pharmacy_contracts import topics

    unique = {e["message_id"]: e for e in published.entries}.values()
    return [topics.INVENTORY_EVENTS.parse(e["body"]) for e in unique if e["topic"] == topics.INVENTORY_EVENTS.name]
