"""Townships restocked from the centre: the reorder point from recent demand, the suggested transfer,
its shipment, receipt and close, books that balance at each warehouse and across the county, and
every step applied once. First the pure rules (services/inventory/transfers.py), then the use cases
on the in-memory store, then what staff and the board see."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console
from typer.testing import CliRunner

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts import inventory as inv
from services.board.projection import EMPTY, fold_all, snapshot
from services.cli import main as cli
from services.cli import warehouse_staff
from services.cli.transfer_view import transfer_rows, transfers_table
from services.inventory import transfers
from services.inventory.domain import (
    DEMAND_DAYS,
    FINISHED_TRANSFERS_KEPT,
    DayDemand,
    DrugDemand,
    Figures,
    Line,
    Location,
    StockRefused,
    Transfer,
    TransferPick,
    Warehouse,
    apply_movement,
    current_lots,
    ledger_entries,
    recompute_lots,
    reserve,
)
from services.inventory.service import InventoryService
from services.inventory.settings import InventorySettings
from services.inventory.transfers import ReorderPolicy, TransferRules, county_books
from services.runtime.relay import outbox_entry
from services.runtime.unit_of_work import Outcome, Record, UnitOfWork
from tests.unit.builders import make_lot, make_warehouse
from tests.unit.test_inventory_service import NOW, TODAY, Published, Storage, approval

LEV = "MET500"  # a drug the in-memory formulary lists
TOWNSHIP, CENTRE, OTHER_CENTRE = "PH-KARA-BULAK", "WH-CENTRAL", "WH-EAST"
HOME = Location(latitude=51.81, longitude=69.40)  # the township is at the patients' door
CENTRE_AT = Location(latitude=51.55, longitude=70.40)  # about 75 km off
EAST_AT = Location(latitude=50.61, longitude=72.10)  # about 230 km off
RULES = TransferRules(
    today=TODAY, window_days=14, min_shelf_days=30, default=ReorderPolicy(lead_time_days=3, safety_stock=20, cover=50)
)
#: Lots sent now must last the lead time and still have 30 days left: from this date on.
SENDABLE = TODAY + timedelta(days=33)


def township(
    available: int = 60, *, demand: dict[date, int] | None = None, lots: dict[str, Any] | None = None
) -> Warehouse:
    """A township with one lot of the drug (and `lots`), and the demand of the days given (default:
    30 a day for 3 days)."""
    demand = {TODAY - timedelta(days=n): 30 for n in range(3)} if demand is None else demand
    days = [DayDemand(day=d, units=u) for d, u in sorted(demand.items())]
    history = {LEV: DrugDemand(since=min(demand), days=days)} if demand else {}
    made = make_warehouse(TOWNSHIP, location=HOME, lots={"LEV-T1": make_lot(LEV, available), **(lots or {})})
    return made.model_copy(update={"daily_demand": history})


def centre(warehouse_id: str = CENTRE, at: Location = CENTRE_AT, **lots: tuple[int, date]) -> Warehouse:
    made = make_warehouse(
        warehouse_id, location=at, lots={lot: make_lot(LEV, units, expiry) for lot, (units, expiry) in lots.items()}
    )
    return made.model_copy(update={"kind": "central"})


def stocked_centre(**extra: Any) -> Warehouse:
    """1,000 units: 100 expiring too soon to send, 200 first to go, 700 later."""
    return centre(
        **{
            "C-TOO-SOON": (100, SENDABLE - timedelta(days=1)),
            "C-FIRST": (200, SENDABLE),
            "C-LATER": (700, date(2030, 1, 1)),
        },
        **extra,
    )


def suggest(town: Warehouse, *others: Warehouse, rules: TransferRules = RULES) -> transfers.Suggestion | None:
    return transfers.suggest(town, LEV, others, rules, transfer_id="TR-1", at=NOW)


# --- demand and the reorder point --------------------------------------------------------------------


def test_a_warehouse_remembers_demand_per_day_for_a_bounded_number_of_days() -> None:
    demand = DrugDemand(since=TODAY)
    for n in range(DEMAND_DAYS + 10):
        demand = demand.taken(TODAY + timedelta(days=n), 5)
    demand = demand.taken(TODAY + timedelta(days=DEMAND_DAYS + 9), 7)  # the same day again: added up
    assert len(demand.days) == DEMAND_DAYS, "one figure per day, the oldest forgotten"
    assert demand.days[-1] == DayDemand(day=TODAY + timedelta(days=DEMAND_DAYS + 9), units=12)
    assert demand.since == TODAY, "when demand was first seen stays"


def test_reservations_record_the_days_demand_beside_the_recent_quantities() -> None:
    warehouse = make_warehouse(TOWNSHIP, **{LEV: 500})
    for rx, quantity in (("RX-1", 30), ("RX-2", 60)):
        warehouse = reserve(warehouse, rx, {LEV: Line(LEV, quantity)}, today=TODAY, delivery_days=2).warehouse
    assert warehouse.daily_demand[LEV] == DrugDemand(since=TODAY, days=[DayDemand(day=TODAY, units=90)])
    assert warehouse.recent_demand[LEV] == [30, 60]


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        ({TODAY: 30, TODAY - timedelta(days=1): 30, TODAY - timedelta(days=2): 30}, 30 * 3 + 20),  # 3 days, 30/day
        ({TODAY: 10}, 10 * 3 + 20),  # one day of history: averaged over that day, not the whole window
        ({TODAY - timedelta(days=13): 140}, 140 * 3 // 14 + 20),  # a full window: 10 a day
        ({TODAY - timedelta(days=14): 1000, TODAY - timedelta(days=13): 14}, 3 + 20),  # older than the window
        ({TODAY: 1, TODAY - timedelta(days=6): 1}, 1 + 20),  # 2 in 7 days, times 3: 0.86, rounded up
    ],
)
def test_the_reorder_point_is_average_daily_demand_times_lead_time_plus_safety_stock(
    demand: dict[date, int], expected: int
) -> None:
    assert transfers.reorder_point(township(demand=demand), LEV, RULES) == expected


def test_a_drug_of_its_own_has_its_own_lead_time_safety_stock_and_cover() -> None:
    settings = InventorySettings.model_validate(
        {"transfer_policies": {LEV: {"lead_time_days": 5, "cover": 120}}, "transfer_safety_stock": 7}
    )
    assert settings.reorder_policies == {LEV: ReorderPolicy(lead_time_days=5, safety_stock=7, cover=120)}
    rules = TransferRules(TODAY, 14, 30, settings.reorder_policies, settings.reorder_default)
    assert transfers.reorder_point(township(), LEV, rules) == 30 * 5 + 7
    assert transfers.reorder_point(township(), "OTHER", rules) == 7, "no demand: the safety stock alone"


@pytest.mark.parametrize(
    "overrides",
    [
        {"transfer_policies": {LEV: {"lead_time": 5}}},  # a misspelt setting is not ignored
        {"transfer_policies": {LEV: {"safety_stock": -1}}},
        {"demand_window_days": DEMAND_DAYS + 1},  # longer than warehouses remember
        {"demand_window_days": 0},
        {"transfer_cover": 10**10},
    ],
)
def test_reorder_settings_no_warehouse_or_event_could_hold_are_refused_at_start(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InventorySettings.model_validate(overrides)


def test_usable_stock_leaves_out_lots_too_close_to_their_expiry() -> None:
    town = township(60, lots={"LEV-SOON": make_lot(LEV, 40, TODAY + timedelta(days=29))})
    assert transfers.usable_stock(town, LEV, RULES) == 60


# --- the suggestion ----------------------------------------------------------------------------------


def test_a_township_at_its_reorder_point_is_sent_enough_for_reorder_point_plus_cover_first_expiry_first() -> None:
    found = suggest(township(110), stocked_centre())  # reorder point 30 a day for 3 days + 20 = 110
    assert found is not None
    assert (found.usable, found.reorder_point, found.transfer.quantity) == (110, 110, 50)
    assert found.transfer.from_warehouse_id == CENTRE and found.transfer.state == "suggested"
    assert [(p.lot_id, p.quantity) for p in found.transfer.picks] == [("C-FIRST", 50)], (
        "never a lot too close to expiry"
    )
    assert found.township.incoming["TR-1"] == found.transfer, "the township remembers it open"

    bigger = suggest(township(10), stocked_centre())
    assert bigger is not None and bigger.transfer.quantity == 110 + 50 - 10
    assert [(p.lot_id, p.quantity) for p in bigger.transfer.picks] == [("C-FIRST", 150)]


def test_no_transfer_above_the_reorder_point_without_recent_demand_or_while_one_is_open() -> None:
    assert suggest(township(111), stocked_centre()) is None, "above the reorder point"
    assert suggest(township(0, demand={}), stocked_centre()) is None, "nothing prescribed there lately"
    opened = suggest(township(10), stocked_centre())
    assert opened is not None
    assert suggest(opened.township, stocked_centre()) is None, "one open per township and drug"
    in_transit = opened.transfer.model_copy(update={"state": "in_transit"})
    travelling = opened.township.model_copy(update={"incoming": {"TR-1": in_transit}})
    assert suggest(travelling, stocked_centre()) is None, "in transit is open too"
    received = opened.transfer.model_copy(update={"state": "received", "finished_at": NOW})
    done = opened.township.model_copy(update={"incoming": {"TR-1": received}})
    assert suggest(done, stocked_centre()) is not None, "once received, the next may come"


def test_only_what_the_centre_can_spare_above_its_own_reorder_point_and_its_promises() -> None:
    small = centre(**{"C-ONE": (80, SENDABLE)})  # no demand of its own: it keeps its safety stock of 20
    found = suggest(township(10), small)
    assert found is not None and found.transfer.quantity == 60

    other_town = township(10).model_copy(update={"warehouse_id": "PH-OTHER"})
    promised = Transfer(
        transfer_id="TR-0",
        drug_code=LEV,
        quantity=50,
        from_warehouse_id=CENTRE,
        to_warehouse_id="PH-OTHER",
        state="suggested",
    )
    other_town = other_town.model_copy(update={"incoming": {"TR-0": promised}})
    found = suggest(township(10), small, other_town)
    assert found is not None and found.transfer.quantity == 10, "50 of its 60 spare were promised to another"

    assert suggest(township(10), centre(**{"C-ONE": (20, SENDABLE)})) is None, "nothing to spare"
    assert suggest(township(10), centre(**{"C-OLD": (900, SENDABLE - timedelta(days=1))})) is None, "nothing lasts"
    assert suggest(township(10), make_warehouse(CENTRE, **{LEV: 900})) is None, "another township is no centre"


def test_the_centre_that_can_spare_the_most_sends_the_nearest_of_equals() -> None:
    near = centre(CENTRE, CENTRE_AT, **{"C-1": (100, SENDABLE)})
    far_rich = centre(OTHER_CENTRE, EAST_AT, **{"E-1": (500, SENDABLE)})
    found = suggest(township(10), near, far_rich)
    assert found is not None and found.transfer.from_warehouse_id == OTHER_CENTRE
    far_equal = centre(OTHER_CENTRE, EAST_AT, **{"E-1": (100, SENDABLE)})
    found = suggest(township(10), far_equal, near)
    assert found is not None and found.transfer.from_warehouse_id == CENTRE


# --- shipped, received, closed: the books -------------------------------------------------------------


def shipped() -> tuple[Warehouse, Warehouse, transfers.Suggestion]:
    suggestion = suggest(township(10), stocked_centre())
    assert suggestion is not None
    town = suggestion.township
    outcome, transfer = transfers.ship(
        stocked_centre(), "TR-1", TOWNSHIP, LEV, 150, RULES, destination=town, by="Aigerim", at=NOW
    )
    noted = transfers.shipment_heard(town, transfer)
    assert noted is not None
    return outcome.warehouse, noted, suggestion


def test_a_transfer_shipped_received_and_closed_keeps_every_book_and_the_countys_balanced() -> None:
    before = [stocked_centre(), township(10)]
    books_before = county_books(before)[LEV]
    suggestion = suggest(township(10), stocked_centre())
    assert suggestion is not None
    at_township = suggestion.township
    ledger = []

    out, transfer = transfers.ship(
        stocked_centre(), "TR-1", TOWNSHIP, LEV, 150, RULES, destination=at_township, by="Aigerim", at=NOW
    )
    assert {(m.kind, m.lot_id, m.quantity, m.source, m.target) for m in out.movements} == {
        ("transfer_out", "C-FIRST", 150, "available", "in_transit")
    }
    at_centre = out.warehouse
    ledger += ledger_entries("M-SHIP", "inventory.transfer_shipped", CENTRE, NOW, out.movements)
    assert at_centre.level(LEV).in_transit == 150 and at_centre.outgoing["TR-1"].state == "in_transit"
    noted = transfers.shipment_heard(at_township, transfer)
    assert noted is not None and noted.incoming["TR-1"].state == "in_transit"
    assert noted.incoming["TR-1"].suggested_at == NOW, "still the suggestion it was"
    assert transfers.shipment_heard(noted, transfer) is None, "heard twice: nothing more"
    books = county_books([at_centre, noted])[LEV]
    assert books.balanced and books.on_the_way == 150 and books.settled

    into, received = transfers.receive(noted, "TR-1", by="Gulnara", at=NOW)
    at_township = into.warehouse
    ledger += ledger_entries("M-RECEIVE", "inventory.transfer_received", TOWNSHIP, NOW, into.movements)
    lot = at_township.lots["C-FIRST"]
    assert (lot.available, lot.transferred_in, lot.expiry_date) == (150, 150, SENDABLE), "the lot keeps id and expiry"
    assert received.state == "received" and received.received_by == "Gulnara"
    # Received at the township, not yet closed at the centre: counted once all the same.
    books = county_books([at_centre, at_township])[LEV]
    assert books.balanced and books.on_the_way == 0 and not books.settled

    closing = transfers.close(at_centre, "TR-1", at=NOW)
    assert closing is not None
    closed_out, closed = closing
    at_centre = closed_out.warehouse
    ledger += ledger_entries("M-CLOSE", "inventory.transfer_closed", CENTRE, NOW, closed_out.movements)
    assert closed.state == "closed" and at_centre.level(LEV).in_transit == 0
    assert at_centre.level(LEV).transferred_out == 150
    assert transfers.close(at_centre, "TR-1", at=NOW) is None, "closed once"

    after = [at_centre, at_township]
    books = county_books(after)[LEV]
    assert books.balanced and books.settled and books.on_the_way == 0
    assert books.figures.available == books_before.figures.available, "nothing made or lost in the county"
    for warehouse in after:
        assert all(lot.balanced for lot in warehouse.lots.values()), warehouse.warehouse_id
        assert warehouse.level(LEV).balanced
    # The ledger of the transfer: the township's lot whole, the centre's by what the transfer moved.
    documents = current_lots(after)
    assert recompute_lots(ledger) == {
        (TOWNSHIP, "C-FIRST"): documents[(TOWNSHIP, "C-FIRST")],
        (CENTRE, "C-FIRST"): Figures.model_construct(available=-150, transferred_out=150),
    }
    assert documents[(TOWNSHIP, "C-FIRST")] == Figures(available=150, transferred_in=150)
    assert documents[(CENTRE, "C-FIRST")] == Figures(available=50, received=200, transferred_out=150)


def test_a_transfer_is_shipped_once_from_a_centre_and_only_as_far_as_lots_last() -> None:
    at_centre, at_township, _ = shipped()
    with pytest.raises(StockRefused, match="shipped already"):
        transfers.ship(at_centre, "TR-1", TOWNSHIP, LEV, 150, RULES, destination=at_township, by="Aigerim", at=NOW)
    with pytest.raises(StockRefused, match=r"900 units .* in lots expiring on or after"):
        transfers.ship(
            stocked_centre(), "TR-2", TOWNSHIP, LEV, 901, RULES, destination=at_township, by="Aigerim", at=NOW
        )
    with pytest.raises(StockRefused, match="transfers leave from a central warehouse"):
        transfers.ship(
            township(500), "TR-3", CENTRE, LEV, 10, RULES, destination=stocked_centre(), by="Aigerim", at=NOW
        )
    with pytest.raises(StockRefused, match="not a registered warehouse"):
        transfers.ship(stocked_centre(), "TR-4", "PH-NOWHERE", LEV, 10, RULES, destination=None, by="Aigerim", at=NOW)
    unregistered = township().model_copy(update={"location": None})
    with pytest.raises(StockRefused, match="not a registered warehouse"):
        transfers.ship(
            stocked_centre(), "TR-5", TOWNSHIP, LEV, 10, RULES, destination=unregistered, by="Aigerim", at=NOW
        )


def test_a_transfer_is_received_once_and_only_once_shipped() -> None:
    _, at_township, suggestion = shipped()
    with pytest.raises(StockRefused, match="has not been shipped yet"):
        transfers.receive(suggestion.township, "TR-1", by="Gulnara", at=NOW)
    with pytest.raises(StockRefused, match="no transfer TR-9"):
        transfers.receive(at_township, "TR-9", by="Gulnara", at=NOW)
    received, _ = transfers.receive(at_township, "TR-1", by="Gulnara", at=NOW)
    with pytest.raises(StockRefused, match="received already"):
        transfers.receive(received.warehouse, "TR-1", by="Gulnara", at=NOW)
    clash = at_township.model_copy(update={"lots": {**at_township.lots, "C-FIRST": make_lot("OTHER", 5)}})
    with pytest.raises(StockRefused, match="lot C-FIRST here is OTHER"):
        transfers.receive(clash, "TR-1", by="Gulnara", at=NOW)


def test_finished_transfers_are_kept_to_a_bound_and_open_ones_for_good() -> None:
    def finished(n: int) -> Transfer:
        return Transfer(
            transfer_id=f"TR-{n:04d}",
            drug_code=LEV,
            quantity=1,
            from_warehouse_id=CENTRE,
            to_warehouse_id=TOWNSHIP,
            state="received",
            finished_at=NOW + timedelta(minutes=n),
        )

    old = {f"TR-{n:04d}": finished(n) for n in range(FINISHED_TRANSFERS_KEPT + 5)}
    open_one = Transfer(
        transfer_id="TR-OPEN",
        drug_code=LEV,
        quantity=1,
        from_warehouse_id=CENTRE,
        to_warehouse_id=TOWNSHIP,
        state="in_transit",
        picks=[TransferPick(lot_id="C-FIRST", expiry_date=SENDABLE, quantity=1)],
    )
    town = township().model_copy(update={"incoming": {**old, "TR-OPEN": open_one}})
    town = town.model_copy(update={"lots": {**town.lots, "C-FIRST": make_lot(LEV, 0, SENDABLE, received=0)}})
    received, _ = transfers.receive(town, "TR-OPEN", by="Gulnara", at=NOW + timedelta(days=1))
    kept = received.warehouse.incoming
    assert len(kept) == FINISHED_TRANSFERS_KEPT and "TR-OPEN" in kept and "TR-0000" not in kept


# --- the use cases, on the in-memory store ---------------------------------------------------------------


@pytest.fixture
def storage() -> Storage:
    found = Storage()
    found.put_warehouse(township(100, demand={}))
    found.put_warehouse(stocked_centre())
    return found


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def service(storage: Storage, published: Published) -> InventoryService:
    return InventoryService(storage, UnitOfWork(published, outbox_entry), InventorySettings(), clock=lambda: NOW)


def events(published: Published, type_: str) -> list[Envelope]:
    """The events of a type published so far, each once, parsed as inventory's readers parse them."""
    unique = {e["message_id"]: e for e in published.entries if e["type"] == f"inventory.{type_}"}
    return [topics.INVENTORY_EVENTS.parse(e["body"]) for e in unique.values()]


def ship_command(transfer_id: str, quantity: int, **kw: Any) -> inv.TransferShipRequested:
    return inv.TransferShipRequested(
        correlation_id=transfer_id,
        producer="test",
        warehouse_id=kw.pop("at", CENTRE),
        transfer_id=transfer_id,
        to_warehouse_id=kw.pop("to", TOWNSHIP),
        drug_code=LEV,
        quantity=quantity,
        requested_by="Aigerim Bekova",
        **kw,
    )


def receipt(transfer_id: str, **kw: Any) -> inv.TransferReceiptRequested:
    return inv.TransferReceiptRequested(
        correlation_id=transfer_id,
        producer="test",
        warehouse_id=kw.pop("at", TOWNSHIP),
        transfer_id=transfer_id,
        requested_by="Gulnara Sadykova",
        **kw,
    )


async def read_back(service: InventoryService, published: Published, *types: str) -> list[Outcome]:
    """Inventory's ledger consumer reading back the events of these types (as the topic carries them)."""
    found = [e for type_ in types for e in events(published, type_)]
    return [h.outcome for h in await service.on_inventory_event([Record(e) for e in found])]


async def test_prescriptions_drawing_a_township_down_suggest_one_transfer_from_the_centre(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    # 100 on the shelf: 40 and 30 taken today make the reorder point 40 a day for 3 days + 20 = 140
    # at the first (one day of history), 60 left.
    for rx, quantity in (("RX-1", 40), ("RX-2", 30)):
        assert [h.outcome for h in await service.on_decision([Record(approval(rx, (LEV, quantity)))])] == [
            Outcome.APPLIED
        ]
    (suggested,) = events(published, "transfer_suggested")
    assert isinstance(suggested, inv.TransferSuggested)
    assert (suggested.warehouse_id, suggested.from_warehouse_id, suggested.drug_code) == (TOWNSHIP, CENTRE, LEV)
    assert (suggested.usable, suggested.reorder_point, suggested.quantity) == (60, 40 * 3 + 20, 140 + 50 - 60)
    assert [(p.lot_id, p.quantity) for p in suggested.picks] == [("C-FIRST", 130)]
    assert suggested.causation_id == "MSG-RX-1" and suggested.recent_demand == 40
    entry = next(e for e in published.entries if e["type"] == "inventory.transfer_suggested")
    assert (entry["topic"], entry["key"]) == (topics.INVENTORY_EVENTS.name, TOWNSHIP), "staff watch the township"
    town = storage.warehouse(TOWNSHIP)
    assert town.incoming[suggested.transfer_id].state == "suggested"
    assert town.daily_demand[LEV].days == [DayDemand(day=TODAY, units=70)]
    assert len(events(published, "transfer_suggested")) == 1, "not again while it is open"


async def test_a_suggested_transfer_shipped_received_and_closed_through_the_use_cases(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    await service.on_decision([Record(approval("RX-1", (LEV, 80)))])
    (suggested,) = events(published, "transfer_suggested")
    tid = suggested.transfer_id

    ship = ship_command(tid, suggested.quantity)
    assert [h.outcome for h in await service.on_command([Record(ship), Record(ship)])] == [
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]
    (shipped_event,) = events(published, "transfer_shipped")
    assert shipped_event.causation_id == ship.message_id, "the answer the staff's tool waits for"
    assert storage.warehouse(CENTRE).level(LEV).in_transit == suggested.quantity
    again = ship_command(tid, suggested.quantity)  # the same transfer, shipped again by hand
    await service.on_command([Record(again)])
    (refused,) = events(published, "stock_command_refused")
    assert refused.causation_id == again.message_id and "shipped already" in refused.reason

    early = receipt("TR-NOT-HEARD-YET")
    await service.on_command([Record(early)])
    assert "no transfer TR-NOT-HEARD-YET" in events(published, "stock_command_refused")[-1].reason

    assert await read_back(service, published, "transfer_shipped") == [Outcome.APPLIED]
    assert storage.warehouse(TOWNSHIP).incoming[tid].state == "in_transit"

    take = receipt(tid)
    await service.on_command([Record(take)])
    (received,) = events(published, "transfer_received")
    assert received.causation_id == take.message_id and received.quantity == suggested.quantity
    await service.on_command([Record(receipt(tid))])
    assert "received already" in events(published, "stock_command_refused")[-1].reason

    await read_back(service, published, "transfer_received")
    (closed,) = events(published, "transfer_closed")
    assert closed.causation_id == received.message_id and closed.in_transit == 0
    await read_back(service, published, "transfer_closed")
    before = (storage.warehouse(CENTRE), storage.warehouse(TOWNSHIP))
    await read_back(service, published, "transfer_shipped", "transfer_received")  # redelivered
    assert (storage.warehouse(CENTRE), storage.warehouse(TOWNSHIP)) == before, "each step taken once"
    assert len(events(published, "transfer_closed")) == 1

    at_centre, at_township = before
    assert at_centre.outgoing[tid].state == "closed" and at_township.incoming[tid].state == "received"
    assert at_township.level(LEV).available == 100 - 80 + suggested.quantity
    books = county_books([at_centre, at_township])[LEV]
    assert books.balanced and books.settled and books.on_the_way == 0
    for warehouse in (at_centre, at_township):
        assert all(lot.balanced for lot in warehouse.lots.values()), warehouse
    # The ledger the read-back wrote: the township's new lots whole, the centre's by what moved.
    ledger = recompute_lots(storage.ledger.values())
    documents = current_lots([at_centre, at_township])
    for lot_id, units in ((m.lot_id, m.quantity) for m in closed.movements):
        assert (
            ledger[(TOWNSHIP, lot_id)]
            == documents[(TOWNSHIP, lot_id)]
            == Figures(available=units, transferred_in=units)
        )
        opening = stocked_centre().lots[lot_id].available
        assert ledger[(CENTRE, lot_id)] == Figures.model_construct(available=-units, transferred_out=units)
        assert documents[(CENTRE, lot_id)] == Figures(
            available=opening - units, received=opening, transferred_out=units
        )
    notes = {e.kind: e.reason for e in storage.ledger.values() if e.lot_id == "C-FIRST"}
    assert notes == {
        "transfer_out": f"transfer {tid} to {TOWNSHIP}",
        "transfer_in": f"transfer {tid} from {CENTRE}",
        "transfer_closed": f"transfer {tid} received at {TOWNSHIP}",
    }
    by = {e.kind: e.by for e in storage.ledger.values() if e.lot_id == "C-FIRST"}
    assert by["transfer_out"] == "Aigerim Bekova" and by["transfer_in"] == "Gulnara Sadykova"


async def test_a_shipment_to_a_warehouse_not_registered_or_from_one_not_registered_is_refused(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    handled = await service.on_command(
        [Record(ship_command("TR-X", 10, to="PH-NOWHERE")), Record(ship_command("TR-Y", 10, at="WH-NOWHERE"))]
    )
    assert [h.outcome for h in handled] == [Outcome.APPLIED, Outcome.REFUSED]
    assert handled[1].refusal is not None and handled[1].refusal.code == "unknown_warehouse"
    (refused,) = events(published, "stock_command_refused")
    assert "PH-NOWHERE is not a registered warehouse WH-CENTRAL can ship to" in refused.reason
    assert refused.drug_code == LEV
    assert storage.warehouse(CENTRE).level(LEV).in_transit == 0


async def test_the_sweep_suggests_what_no_reservation_did_and_only_once(storage: Storage, published: Published) -> None:
    # Demand was recorded, but the centre had nothing then: no suggestion at the reservation.
    storage.put_warehouse(centre(**{"C-OLD": (500, SENDABLE - timedelta(days=1))}))
    settings = InventorySettings()
    service = InventoryService(storage, UnitOfWork(published, outbox_entry), settings, clock=lambda: NOW)
    await service.on_decision([Record(approval("RX-1", (LEV, 80)))])
    assert events(published, "transfer_suggested") == []
    storage.put_warehouse(stocked_centre())  # restocked since
    await service.sweep_transfers()
    await service.sweep_transfers()
    (suggested,) = events(published, "transfer_suggested")
    assert suggested.causation_id is None and suggested.warehouse_id == TOWNSHIP
    assert storage.warehouse(TOWNSHIP).incoming[suggested.transfer_id].state == "suggested"


# --- what staff and the board see -------------------------------------------------------------------------


def county(*states: str) -> list[Warehouse]:
    """A long-named centre and township with one transfer in each of these states."""
    at_centre, at_township = stocked_centre(), township()
    for n, state in enumerate(states):
        tid = f"TR-5F0C2A9D41B{n}"
        transfer = Transfer(
            transfer_id=tid,
            drug_code="LEV50-LONG-CODE",
            quantity=1000000,
            from_warehouse_id=CENTRE,
            to_warehouse_id=TOWNSHIP,
            state=state,  # type: ignore[arg-type]
            picks=[TransferPick(lot_id="LEV50-L2702-CENTRAL", expiry_date=date(2027, 9, 30), quantity=1000000)],
            suggested_at=NOW,
            shipped_at=None if state == "suggested" else NOW,
            finished_at=NOW if state == "received" else None,
            shipped_by=None if state == "suggested" else "Aigerim Nurlanovna",
        )
        at_township.incoming[tid] = transfer
        if state != "suggested":
            at_centre.outgoing[tid] = transfer.model_copy(update={"state": "in_transit"})
    return [at_centre, at_township]


def rendered(renderable: Any, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_transfers_listing_fits_80_columns_with_every_id_and_figure_whole() -> None:
    from tests.unit.test_tables_80_columns import assert_whole, header_row

    rows = transfer_rows(county("suggested", "in_transit", "received"))
    assert [row.state for row in rows] == ["suggested", "in_transit", "received"]
    assert rows[2].closed_at_source is False
    text = rendered(transfers_table(rows))
    assert_whole(text, "TR-5F0C2A9D41B0", "TR-5F0C2A9D41B2", "LEV50-LONG-CODE", "1000000", CENTRE, TOWNSHIP)
    assert_whole(text, "suggested", "received")
    assert "in transit" in text and "(closing at source)" in text
    wide = rendered(transfers_table(rows, wide=True))
    assert_whole(wide, "TR-5F0C2A9D41B1", "LEV50-L2702-CENTRAL", "2027-09-30", "1000000", "Aigerim")
    assert header_row(rendered(transfers_table(rows), width=120), "transfer", "drug", "units", "from", "to", "state")


def test_warehouse_transfers_lists_them_and_gives_scripts_one_json_document(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    class Inventory:
        def __init__(self, db: Any) -> None:
            pass

        async def all_warehouses(self) -> list[Warehouse]:
            return county("suggested", "in_transit")

    async def with_database(use: Any) -> Any:
        return await use(None)

    monkeypatch.setattr(warehouse_staff, "with_database", with_database)
    monkeypatch.setattr(warehouse_staff, "InventoryStorage", Inventory)
    monkeypatch.setenv("PHARMACY_DEV_HOME", str(tmp_path))
    runner = CliRunner()
    listed = runner.invoke(cli.app, ["warehouse", "transfers"], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    assert "TR-5F0C2A9D41B0" in listed.stdout and "in transit" in listed.stdout
    document = json.loads(runner.invoke(cli.app, ["warehouse", "transfers", "--json"]).stdout)
    assert [(t["transfer_id"], t["state"]) for t in document] == [
        ("TR-5F0C2A9D41B0", "suggested"),
        ("TR-5F0C2A9D41B1", "in_transit"),
    ]
    assert document[1]["lots"] == [{"lot_id": "LEV50-L2702-CENTRAL", "expiry_date": "2027-09-30", "quantity": 1000000}]
    unknown = runner.invoke(cli.app, ["warehouse", "transfers", "ship", "TR-NONE", "--by", "Aigerim"])
    assert unknown.exit_code == 1 and "no transfer TR-NONE is known" in unknown.stdout


def board_events() -> list[Envelope]:
    """A shipment's event and its receipt's, from the published examples."""
    examples = {
        cls: cls.model_validate(cls.model_json_schema()["examples"][0])
        for cls in (inv.TransferShipped, inv.TransferReceived, inv.TransferClosed)
    }
    return list(examples.values())


def test_the_board_shows_a_transfer_in_transit_under_both_warehouses_until_it_is_received() -> None:
    shipped_event, received_event, closed_event = board_events()
    board = fold_all(EMPTY, [shipped_event])
    stock = {w["warehouse_id"]: w for w in snapshot(board)["stock"]}
    centre_view, township_view = stock["WH-NORTHFORD"], stock["PH-KARA-BULAK"]
    assert centre_view["in_transit"] == [
        {
            "transfer_id": "TR-5F0C2A9D41B7",
            "drug_code": "LEV50",
            "quantity": 190,
            "direction": "out",
            "other_warehouse_id": "PH-KARA-BULAK",
        }
    ]
    assert township_view["in_transit"][0]["direction"] == "in"
    (drug,) = centre_view["drugs"]
    assert drug["in_transit"] == 190, "the units counted at the source, from the movements"

    for order in ([shipped_event, received_event, closed_event], [received_event, shipped_event, closed_event]):
        board = fold_all(EMPTY, order)
        stock = {w["warehouse_id"]: w for w in snapshot(board)["stock"]}
        assert all(w["in_transit"] == [] for w in stock.values()), "received, in any order of reading"
        (drug,) = stock["WH-NORTHFORD"]["drugs"]
        assert drug["in_transit"] == 0
        assert stock["PH-KARA-BULAK"]["drugs"][0]["available"] == 190


def test_the_board_alerts_staff_to_a_suggested_transfer() -> None:
    suggested = inv.TransferSuggested.model_validate(inv.TransferSuggested.model_json_schema()["examples"][0])
    (alert,) = snapshot(fold_all(EMPTY, [suggested, suggested]))["alerts"]
    assert alert["kind"] == "transfer_suggested" and "TR-5F0C2A9D41B7" in alert["text"]


def test_the_ledger_movement_kinds_of_a_transfer_count_where_units_came_from_and_went() -> None:
    lot = Figures(available=5, received=5)
    for kind, source, target in (
        ("transfer_out", "available", "in_transit"),
        ("transfer_closed", "in_transit", "outside"),
    ):
        lot = apply_movement(
            lot, inv.Movement(kind=kind, lot_id="L", drug_code=LEV, quantity=5, source=source, target=target)
        )
        assert lot.balanced, lot
    assert lot == Figures(received=5, transferred_out=5)
    arrived = apply_movement(
        Figures(),
        inv.Movement(kind="transfer_in", lot_id="L", drug_code=LEV, quantity=5, source="outside", target="available"),
    )
    assert arrived == Figures(available=5, transferred_in=5) and arrived.balanced
    with pytest.raises(StockRefused):
        apply_movement(
            Figures(),
            inv.Movement(
                kind="transfer_closed", lot_id="L", drug_code=LEV, quantity=1, source="in_transit", target="outside"
            ),
        )


# --- the chaos run's checks know transfers ------------------------------------------------------------


def chaos_checked(warehouses: list[Warehouse], inventory_events: list[Envelope]) -> list[str]:
    import random

    from services.ops.chaos.checks import check
    from services.ops.chaos.evidence import Evidence, TopicLog
    from services.ops.chaos.load import Couriers, Load
    from services.ops.chaos.report import ChaosReport
    from services.runtime.settings import RuntimeSettings

    read = (topics.INVENTORY_EVENTS, topics.COURIER_DISPATCH, topics.COURIER_DELIVERIES)
    logs = {
        t.name: TopicLog(inventory_events if t is topics.INVENTORY_EVENTS else [], republished=0, unreadable=0)
        for t in read
    }
    seen = Evidence(
        ids=[],
        statuses={},
        allocations={},
        deliveries={},
        verdicts={},
        warehouses=warehouses,
        logs=logs,
        dead_letters={},
        ledger=[],
        load=Load(RuntimeSettings(), rate=1.0, rng=random.Random(0)),
        couriers=Couriers(seed=1, unreachable=set()),
    )
    report = ChaosReport(prescriptions=0, faulty_submitted=0, rate_per_s=1.0, seed=1, settled=True)
    check(report, seen)
    return report.violations()


def test_the_chaos_checks_find_a_receipt_never_closed_and_a_step_taken_twice() -> None:
    at_centre, at_township, _ = shipped()
    received, _ = transfers.receive(at_township, "TR-1", by="Gulnara", at=NOW)
    closing = transfers.close(at_centre, "TR-1", at=NOW)
    assert closing is not None
    # (The evidence holds no ledger and no restocks: only what transfers touch is looked at.)
    closed = chaos_checked([closing[0].warehouse, received.warehouse], [])
    about_transfers = ("do not balance", "not closed at their source", "transfer steps")
    assert not [v for v in closed if any(words in v for words in about_transfers)], "all balanced once closed"

    unclosed = chaos_checked([at_centre, received.warehouse], [])
    assert any("received but not closed at their source" in v for v in unclosed)
    assert not any("county's books do not balance" in v for v in unclosed), "counted once all the same"

    shipped_event, _, _ = board_events()
    again = shipped_event.model_copy(update={"message_id": "M-SHIPPED-AGAIN"})
    twice = chaos_checked([], [shipped_event, again])
    assert any("transfer steps taken more than once" in v and "TransferShipped ×2" in v for v in twice)
