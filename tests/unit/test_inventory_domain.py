"""Stock rules: lots and expiry, the nearest warehouse that has everything, first expiry first out,
state moves idempotent, quarantine, alerts, and books that balance and can be rebuilt from the ledger."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest

from pharmacy_contracts.limits import MAX_STOCK_UNITS
from services.inventory.domain import (
    RECENT_DEMAND,
    DrugStock,
    Figures,
    Hold,
    Line,
    Location,
    Outcome,
    Pick,
    Shortage,
    StockRefused,
    Warehouse,
    adjust,
    apply_movement,
    can_fill,
    choose_warehouse,
    clear_quarantine,
    current_lots,
    deliver,
    dispatch,
    distance_km,
    expire,
    expired_lots,
    fell_below,
    is_usable,
    ledger_entries,
    mark_near_expiry_alerted,
    merge_lines,
    merge_quantities,
    nearing_expiry,
    plan_picks,
    quarantine,
    recompute_lots,
    register,
    release,
    reserve,
    restock,
    return_goods,
    shortages,
    threshold_for,
    usable_until,
    withdraw,
)
from tests.unit.builders import FAR_EXPIRY, levels, make_lot, make_warehouse, movement

TODAY = date(2027, 1, 15)
DELIVERY_DAYS = 2
PATIENT = Location(latitude=51.81, longitude=69.40)  # Northford


def demand(*lines: tuple[str, int] | tuple[str, int, int]) -> dict[str, Line]:
    """Lines as (drug, quantity) or (drug, quantity, days of supply); 30 days unless given."""
    return merge_lines((line[0], line[1], line[2] if len(line) == 3 else 30) for line in lines)


def reserved_for(warehouse: Warehouse, rx: str, *lines: tuple[str, int] | tuple[str, int, int]) -> Warehouse:
    return reserve(warehouse, rx, demand(*lines), today=TODAY, delivery_days=DELIVERY_DAYS).warehouse


def lot_figures(warehouse: Warehouse, lot_id: str) -> tuple[int, ...]:
    """(available, reserved, dispatched, quarantined, expired, delivered) of one lot."""
    lot = warehouse.lots[lot_id]
    return lot.available, lot.reserved, lot.dispatched, lot.quarantined, lot.expired, lot.delivered


# --- merging lines ------------------------------------------------------------------------------------


def test_merge_quantities_adds_up_the_same_drug_on_several_lines():
    assert merge_quantities([("MET500", 60), ("AML5", 30), ("MET500", 120)]) == {"MET500": 180, "AML5": 30}


def test_merge_lines_adds_quantities_and_keeps_the_longest_therapy():
    merged = merge_lines([("MET500", 60, 30), ("AML5", 30, 90), ("MET500", 120, 90)])

    assert merged == {"MET500": Line("MET500", 180, 90), "AML5": Line("AML5", 30, 90)}
    assert list(merged) == ["MET500", "AML5"], "first-seen order"
    assert merge_lines([]) == {}


# --- registration ---------------------------------------------------------------------------------------


def test_register_creates_a_located_warehouse():
    where = Location(latitude=51.32, longitude=70.95)

    warehouse = register(None, "PH-RIVERTON", name="Riverton pharmacy", kind="township", location=where)

    assert warehouse == Warehouse(warehouse_id="PH-RIVERTON", name="Riverton pharmacy", kind="township", location=where)
    assert warehouse.registered


def test_register_again_moves_and_renames_but_keeps_lots_and_holds():
    held = reserved_for(make_warehouse("WH-1", MET500=10), "RX-1", ("MET500", 4))
    moved = Location(latitude=50.61, longitude=70.02)

    again = register(held, "WH-1", name="Central", kind="central", location=moved)

    assert (again.name, again.kind, again.location) == ("Central", "central", moved)
    assert again.lots == held.lots and again.holds == held.holds


def test_a_warehouse_without_a_location_is_not_registered():
    assert not Warehouse(warehouse_id="WH-OLD").registered


# --- restock --------------------------------------------------------------------------------------------


def test_restock_of_a_new_lot_puts_it_on_the_shelf_and_records_the_receipt():
    outcome = restock(make_warehouse(), "L-1", "MET500", date(2028, 3, 31), 100, today=TODAY)

    lot = outcome.warehouse.lots["L-1"]
    assert (lot.drug_code, lot.expiry_date, lot.available, lot.received) == ("MET500", date(2028, 3, 31), 100, 100)
    assert outcome.movements == (movement("received", "L-1", 100, "outside", "available"),)


def test_restock_of_an_existing_lot_with_the_same_drug_and_expiry_adds_to_it():
    first = restock(make_warehouse(), "L-1", "MET500", date(2028, 3, 31), 100, today=TODAY).warehouse

    again = restock(first, "L-1", "MET500", date(2028, 3, 31), 20, today=TODAY).warehouse

    assert (again.lots["L-1"].available, again.lots["L-1"].received) == (120, 120)


@pytest.mark.parametrize(
    ("drug_code", "expiry_date", "match"),
    [("AML5", date(2028, 3, 31), "is MET500"), ("MET500", date(2028, 4, 1), "expiring 2028-03-31")],
)
def test_restock_refuses_a_known_lot_id_with_another_drug_or_expiry(drug_code, expiry_date, match):
    first = restock(make_warehouse(), "L-1", "MET500", date(2028, 3, 31), 100, today=TODAY).warehouse

    with pytest.raises(StockRefused, match=match):
        restock(first, "L-1", drug_code, expiry_date, 5, today=TODAY)


@pytest.mark.parametrize("quantity", [0, -1])
def test_restock_refuses_nothing_or_less(quantity):
    with pytest.raises(StockRefused):
        restock(make_warehouse(), "L-1", "MET500", FAR_EXPIRY, quantity, today=TODAY)


@pytest.mark.parametrize("expiry_date", [TODAY - timedelta(days=400), TODAY - timedelta(days=1), TODAY])
def test_restock_of_a_lot_already_expired_is_refused_and_changes_nothing(expiry_date):
    # On its expiry date a lot counts as expired, as for the sweep (`expired_lots`).
    warehouse = make_warehouse(MET500=10)

    with pytest.raises(StockRefused, match=f"lot L-OLD of MET500 expired on {expiry_date} \\(today is {TODAY}\\)"):
        restock(warehouse, "L-OLD", "MET500", expiry_date, 50, today=TODAY)
    assert "L-OLD" not in warehouse.lots


def test_restock_of_a_lot_expiring_tomorrow_is_taken():
    outcome = restock(make_warehouse(), "L-1", "MET500", TODAY + timedelta(days=1), 50, today=TODAY)

    assert outcome.warehouse.lots["L-1"].available == 50


def test_restock_or_adjustment_past_what_a_warehouse_may_hold_of_a_drug_is_refused():
    # Every figure an event reports must fit the contracts' bound; at it exactly is fine.
    full = restock(make_warehouse(MET500=MAX_STOCK_UNITS - 5), "L-2", "MET500", FAR_EXPIRY, 5, today=TODAY).warehouse
    assert full.level("MET500").available == MAX_STOCK_UNITS

    with pytest.raises(StockRefused, match=f"would pass the {MAX_STOCK_UNITS} units"):
        restock(full, "L-2", "MET500", FAR_EXPIRY, 1, today=TODAY)
    with pytest.raises(StockRefused, match=f"would pass the {MAX_STOCK_UNITS} units"):
        adjust(full, "L-2", "MET500", 1)
    assert adjust(full, "L-2", "MET500", -1).warehouse.level("MET500").available == MAX_STOCK_UNITS - 1
    assert restock(full, "L-9", "AML5", FAR_EXPIRY, 1, today=TODAY).warehouse.level("AML5").available == 1


def test_restock_leaves_other_lots_alone_and_levels_sum_over_lots():
    warehouse = restock(make_warehouse(MET500=10), "MET500-L2", "MET500", date(2028, 1, 1), 5, today=TODAY).warehouse

    assert lot_figures(warehouse, "MET500-L1") == (10, 0, 0, 0, 0, 0)
    assert levels(warehouse, "MET500") == (15, 0, 0)
    assert warehouse.level("MET500").received == 15
    assert warehouse.level("NEVER") == DrugStock()


# --- adjust ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "available", "adjusted", "moved"),
    [
        (5, 15, 5, movement("adjusted", "MET500-L1", 5, "outside", "available")),
        (-1, 9, -1, movement("adjusted", "MET500-L1", 1, "available", "outside")),
        (-10, 0, -10, movement("adjusted", "MET500-L1", 10, "available", "outside")),  # exactly all of it
    ],
)
def test_adjust_moves_the_lots_shelf_units_and_records_the_adjustment(delta, available, adjusted, moved):
    outcome = adjust(make_warehouse(MET500=10), "MET500-L1", "MET500", delta)

    lot = outcome.warehouse.lots["MET500-L1"]
    assert (lot.available, lot.received, lot.adjusted) == (available, 10, adjusted)
    assert outcome.movements == (moved,)


def test_adjust_refuses_one_unit_more_than_the_lot_has_on_the_shelf():
    with pytest.raises(StockRefused, match="only 10 units of MET500 in lot MET500-L1"):
        adjust(make_warehouse(MET500=10), "MET500-L1", "MET500", -11)


def test_adjust_counts_only_its_own_lot():
    warehouse = make_warehouse(lots={"A": make_lot("MET500", 3), "B": make_lot("MET500", 50)})

    with pytest.raises(StockRefused):
        adjust(warehouse, "A", "MET500", -4)


def test_adjust_cannot_remove_reserved_units():
    warehouse = reserved_for(make_warehouse(MET500=10), "RX-1", ("MET500", 8))

    with pytest.raises(StockRefused):
        adjust(warehouse, "MET500-L1", "MET500", -3)
    assert levels(adjust(warehouse, "MET500-L1", "MET500", -2).warehouse, "MET500") == (0, 8, 0)


@pytest.mark.parametrize(
    ("lot_id", "drug_code", "delta", "match"),
    [
        ("MET500-L1", "MET500", 0, "at least one unit"),
        ("NO-SUCH-LOT", "MET500", 3, "no lot NO-SUCH-LOT"),
        ("MET500-L1", "AML5", 3, "is MET500, not AML5"),
    ],
)
def test_adjust_refuses_zero_an_unknown_lot_and_the_wrong_drug(lot_id, drug_code, delta, match):
    with pytest.raises(StockRefused, match=match):
        adjust(make_warehouse(MET500=10), lot_id, drug_code, delta)


# --- the usable rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expiry_date", "usable"),
    [
        (TODAY + timedelta(days=2 + 30), True),  # lasts the delivery and the therapy exactly
        (TODAY + timedelta(days=2 + 30 - 1), False),  # one day short
        (TODAY + timedelta(days=2 + 30 + 1), True),
        (TODAY, False),
        (TODAY - timedelta(days=1), False),
    ],
)
def test_a_lot_is_usable_only_if_it_lasts_the_delivery_and_the_whole_therapy(expiry_date, usable):
    lot = make_lot("MET500", 10, expiry_date)

    assert is_usable(lot, today=TODAY, delivery_days=DELIVERY_DAYS, days_supply=30) is usable


def test_usable_until_adds_delivery_days_and_days_of_supply():
    assert usable_until(TODAY, 2, 90) == date(2027, 4, 17)
    assert usable_until(TODAY, 0, 0) == TODAY


# --- first expiry, first out ----------------------------------------------------------------------------


def fefo_warehouse() -> Warehouse:
    """MET500 in four lots: expired, too short for a 30-day therapy, soonest usable, later."""
    return make_warehouse(
        lots={
            "EXPIRED": make_lot("MET500", 100, TODAY - timedelta(days=1)),
            "SHORT": make_lot("MET500", 100, TODAY + timedelta(days=31)),  # one day short of 2 + 30
            "SOON": make_lot("MET500", 40, TODAY + timedelta(days=32)),  # exactly enough
            "LATER": make_lot("MET500", 100, TODAY + timedelta(days=400)),
        }
    )


def picks(*items: tuple[str, int]) -> list[Pick]:
    return [Pick(lot_id=lot_id, drug_code="MET500", quantity=quantity) for lot_id, quantity in items]


def test_fefo_skips_expired_and_short_dated_lots_and_takes_the_soonest_usable_first():
    found = plan_picks(fefo_warehouse(), demand(("MET500", 30)), today=TODAY, delivery_days=DELIVERY_DAYS)

    assert found == picks(("SOON", 30))


def test_fefo_takes_units_from_several_lots_when_the_first_is_not_enough():
    found = plan_picks(fefo_warehouse(), demand(("MET500", 90)), today=TODAY, delivery_days=DELIVERY_DAYS)

    assert found == picks(("SOON", 40), ("LATER", 50))


def test_fefo_can_take_every_usable_unit_but_never_an_unusable_one():
    warehouse = fefo_warehouse()

    assert plan_picks(warehouse, demand(("MET500", 140)), today=TODAY, delivery_days=DELIVERY_DAYS) == picks(
        ("SOON", 40), ("LATER", 100)
    )
    # 340 units on the shelf, but only 140 last a 30-day therapy
    assert plan_picks(warehouse, demand(("MET500", 141)), today=TODAY, delivery_days=DELIVERY_DAYS) is None


def test_a_longer_therapy_needs_a_later_lot():
    found = plan_picks(fefo_warehouse(), demand(("MET500", 30, 90)), today=TODAY, delivery_days=DELIVERY_DAYS)

    assert found == picks(("LATER", 30))


def test_fefo_breaks_a_tie_of_expiry_dates_by_lot_id_and_skips_empty_lots():
    same_day = TODAY + timedelta(days=100)
    warehouse = make_warehouse(
        lots={
            "B": make_lot("MET500", 10, same_day),
            "A": make_lot("MET500", 10, same_day),
            "0-EMPTY": make_lot("MET500", 0, TODAY + timedelta(days=50), received=10, adjusted=-10),
        }
    )

    found = plan_picks(warehouse, demand(("MET500", 15)), today=TODAY, delivery_days=DELIVERY_DAYS)

    assert found == picks(("A", 10), ("B", 5))


def test_delivery_days_count_in_the_usable_rule():
    warehouse = make_warehouse(lots={"L": make_lot("MET500", 10, TODAY + timedelta(days=32))})

    assert can_fill(warehouse, demand(("MET500", 10)), today=TODAY, delivery_days=2)
    assert not can_fill(warehouse, demand(("MET500", 10)), today=TODAY, delivery_days=3)


# --- choosing the warehouse -----------------------------------------------------------------------------


def located(warehouse_id: str, latitude: float, longitude: float, **available: int) -> Warehouse:
    return make_warehouse(warehouse_id, location=Location(latitude=latitude, longitude=longitude), **available)


def choose(warehouses: list[Warehouse], *lines: tuple[str, int]) -> str | None:
    chosen = choose_warehouse(warehouses, demand(*lines), PATIENT, today=TODAY, delivery_days=DELIVERY_DAYS)
    return None if chosen is None else chosen.warehouse_id


def test_the_nearest_warehouse_that_has_everything_beats_a_nearer_one_that_lacks_an_item():
    warehouses = [
        located("PH-NORTHFORD", 51.81, 69.40, MET500=500, AML5=10),  # at the patient's door, short of AML5
        located("WH-CENTRAL", 51.55, 70.40, MET500=500, AML5=500),  # ~75 km
        located("PH-RIVERTON", 51.32, 70.95, MET500=500, AML5=500),  # ~120 km
    ]

    assert choose(warehouses, ("MET500", 180), ("AML5", 90)) == "WH-CENTRAL"
    assert choose(warehouses, ("MET500", 180), ("AML5", 10)) == "PH-NORTHFORD"


def test_the_choice_ignores_the_order_warehouses_come_in_and_ties_go_by_id():
    a = located("WH-A", 51.0, 70.0, MET500=10)
    b = located("WH-B", 51.0, 70.0, MET500=10)

    assert choose([b, a], ("MET500", 5)) == "WH-A"
    assert choose([a, b], ("MET500", 5)) == "WH-A"


def test_a_warehouse_whose_lots_would_not_last_the_therapy_cannot_fill_it():
    near = make_warehouse(
        "PH-NEAR", location=PATIENT, lots={"OLD": make_lot("MET500", 500, TODAY + timedelta(days=10))}
    )
    far = located("WH-FAR", 50.61, 72.10, MET500=100)

    assert choose([near, far], ("MET500", 50)) == "WH-FAR"


def test_unregistered_warehouses_are_never_chosen():
    unregistered = make_warehouse("WH-OLD", location=None, MET500=500)

    assert choose([unregistered], ("MET500", 1)) is None


def test_the_whole_prescription_comes_from_one_warehouse():
    # Together they have enough of both drugs, but no single one does: couriers make one pickup.
    warehouses = [located("WH-A", 51.0, 70.0, MET500=200), located("WH-B", 51.1, 70.0, AML5=200)]

    assert choose(warehouses, ("MET500", 1), ("AML5", 1)) is None
    assert choose([], ("MET500", 1)) is None


def test_reserved_units_do_not_count_when_choosing():
    a = reserved_for(located("WH-A", 51.81, 69.40, MET500=10), "RX-0", ("MET500", 8))
    b = located("WH-B", 52.47, 69.15, MET500=5)

    assert choose([a, b], ("MET500", 3)) == "WH-B"
    assert choose([a, b], ("MET500", 2)) == "WH-A"


def test_distance_is_great_circle_kilometres():
    one_degree_north = distance_km(Location(latitude=51.0, longitude=70.0), Location(latitude=52.0, longitude=70.0))

    assert one_degree_north == pytest.approx(111.2, abs=0.1)
    assert distance_km(PATIENT, PATIENT) == 0.0


# --- shortages ------------------------------------------------------------------------------------------


def test_shortages_count_usable_units_of_the_best_single_warehouse():
    warehouses = [
        fefo_warehouse(),  # 340 MET500 on the shelf, 140 usable for 30 days
        located("WH-B", 51.0, 70.0, MET500=60, AML5=100),
    ]

    found = shortages(warehouses, demand(("MET500", 200), ("AML5", 90), ("NEW1", 2)), today=TODAY, delivery_days=2)

    assert found == [Shortage("MET500", 200, 140), Shortage("NEW1", 2, 0)]


def test_shortages_are_empty_when_each_drug_is_usable_somewhere_and_ignore_unregistered_warehouses():
    usable = [located("WH-A", 51.0, 70.0, MET500=180), located("WH-B", 51.0, 70.0, AML5=90)]
    unregistered = make_warehouse("WH-OLD", location=None, AML5=500)

    assert shortages(usable, demand(("MET500", 180), ("AML5", 90)), today=TODAY, delivery_days=2) == []
    assert shortages([unregistered], demand(("AML5", 1)), today=TODAY, delivery_days=2) == [Shortage("AML5", 1, 0)]


# --- reserve ------------------------------------------------------------------------------------------


def test_reserve_moves_each_pick_from_available_to_reserved_and_records_a_hold():
    outcome = reserve(fefo_warehouse(), "RX-1", demand(("MET500", 90)), today=TODAY, delivery_days=DELIVERY_DAYS)

    after = outcome.warehouse
    assert lot_figures(after, "SOON") == (0, 40, 0, 0, 0, 0)
    assert lot_figures(after, "LATER") == (50, 50, 0, 0, 0, 0)
    assert lot_figures(after, "EXPIRED") == (100, 0, 0, 0, 0, 0), "untouched"
    assert after.holds == {"RX-1": Hold(picks=picks(("SOON", 40), ("LATER", 50)), days_supply={"MET500": 30})}
    assert after.holds["RX-1"].lines == {"MET500": 90}
    assert outcome.picks == tuple(picks(("SOON", 40), ("LATER", 50)))
    assert outcome.movements == (
        movement("reserved", "SOON", 40, "available", "reserved"),
        movement("reserved", "LATER", 50, "available", "reserved"),
    )


def test_reserve_does_not_change_the_warehouse_it_was_given():
    warehouse = make_warehouse(MET500=200)

    reserved_for(warehouse, "RX-1", ("MET500", 180))

    assert levels(warehouse, "MET500") == (200, 0, 0)
    assert warehouse.holds == {}


def test_reserve_can_take_the_last_unit_but_not_one_more():
    assert levels(reserved_for(make_warehouse(MET500=5), "RX-1", ("MET500", 5)), "MET500") == (0, 5, 0)
    with pytest.raises(StockRefused):
        reserved_for(make_warehouse(MET500=5), "RX-1", ("MET500", 6))


def test_reserve_is_all_or_nothing_when_one_line_is_short():
    warehouse = make_warehouse(MET500=200, AML5=89)

    with pytest.raises(StockRefused):
        reserved_for(warehouse, "RX-1", ("MET500", 180), ("AML5", 90))
    assert levels(warehouse, "MET500") == (200, 0, 0)
    assert warehouse.holds == {}


def test_reserve_cannot_take_units_already_reserved_for_another_prescription():
    warehouse = reserved_for(make_warehouse(MET500=10), "RX-1", ("MET500", 6))

    with pytest.raises(StockRefused):
        reserved_for(warehouse, "RX-2", ("MET500", 5))
    assert levels(reserved_for(warehouse, "RX-2", ("MET500", 4)), "MET500") == (0, 10, 0)


def test_reserve_again_for_the_same_prescription_changes_nothing_even_when_stock_is_gone():
    once = reserved_for(make_warehouse(MET500=180), "RX-1", ("MET500", 180))

    again = reserve(once, "RX-1", demand(("MET500", 180)), today=TODAY, delivery_days=DELIVERY_DAYS)

    assert again == Outcome(once)


def test_reserve_refuses_empty_or_non_positive_lines():
    with pytest.raises(StockRefused):
        reserve(make_warehouse(MET500=10), "RX-1", {}, today=TODAY, delivery_days=DELIVERY_DAYS)
    with pytest.raises(StockRefused):
        reserve(make_warehouse(MET500=10), "RX-1", demand(("MET500", 0)), today=TODAY, delivery_days=DELIVERY_DAYS)


# --- the delivery moves held stock ------------------------------------------------------------------


@pytest.fixture
def held() -> Warehouse:
    """MET500 in two lots (20 + 200) and AML5 (100); RX-1 holds 180 MET500 (20 + 160) and 90 AML5."""
    warehouse = make_warehouse(
        AML5=100,
        lots={"M-A": make_lot("MET500", 20, date(2028, 1, 1)), "M-B": make_lot("MET500", 200, date(2029, 1, 1))},
    )
    return reserved_for(warehouse, "RX-1", ("MET500", 180), ("AML5", 90))


def test_the_fixture_holds_from_two_lots(held):
    assert held.holds["RX-1"].picks == [
        Pick(lot_id="M-A", drug_code="MET500", quantity=20),
        Pick(lot_id="M-B", drug_code="MET500", quantity=160),
        Pick(lot_id="AML5-L1", drug_code="AML5", quantity=90),
    ]


def test_dispatch_moves_every_pick_from_reserved_to_dispatched(held):
    outcome = dispatch(held, "RX-1")

    assert outcome is not None
    assert levels(outcome.warehouse, "MET500") == (40, 0, 180)
    assert levels(outcome.warehouse, "AML5") == (10, 0, 90)
    assert outcome.warehouse.holds["RX-1"].dispatched is True
    assert [(m.kind, m.lot_id, m.quantity, m.source, m.target) for m in outcome.movements] == [
        ("dispatched", "M-A", 20, "reserved", "dispatched"),
        ("dispatched", "M-B", 160, "reserved", "dispatched"),
        ("dispatched", "AML5-L1", 90, "reserved", "dispatched"),
    ]


def test_dispatch_twice_or_of_an_unknown_prescription_is_none(held):
    once = dispatch(held, "RX-1").warehouse

    assert dispatch(once, "RX-1") is None
    assert dispatch(held, "RX-404") is None


def test_return_goods_moves_dispatched_back_to_reserved_and_keeps_the_hold(held):
    outcome = return_goods(dispatch(held, "RX-1").warehouse, "RX-1")

    assert outcome is not None
    assert levels(outcome.warehouse, "MET500") == (40, 180, 0)
    assert outcome.warehouse.holds["RX-1"].dispatched is False
    assert outcome.warehouse.holds["RX-1"].travelled is True, "back, but it has been on the road"
    assert {(m.kind, m.source, m.target) for m in outcome.movements} == {("returned", "dispatched", "reserved")}


def test_return_goods_twice_or_before_dispatch_is_none(held):
    returned = return_goods(dispatch(held, "RX-1").warehouse, "RX-1").warehouse

    assert return_goods(returned, "RX-1") is None
    assert return_goods(held, "RX-1") is None
    assert return_goods(held, "RX-404") is None


def test_returned_goods_can_be_dispatched_again(held):
    again = dispatch(return_goods(dispatch(held, "RX-1").warehouse, "RX-1").warehouse, "RX-1")

    assert levels(again.warehouse, "MET500") == (40, 0, 180)


def test_release_puts_reserved_units_back_on_their_lots_shelf_and_drops_the_hold(held):
    outcome = release(held, "RX-1")

    assert outcome is not None
    assert lot_figures(outcome.warehouse, "M-A") == (20, 0, 0, 0, 0, 0)
    assert lot_figures(outcome.warehouse, "M-B") == (200, 0, 0, 0, 0, 0)
    assert "RX-1" not in outcome.warehouse.holds
    assert {(m.kind, m.source, m.target) for m in outcome.movements} == {("released", "reserved", "available")}


def test_release_refuses_goods_on_the_road_they_never_go_straight_back_on_the_shelf(held):
    assert release(dispatch(held, "RX-1").warehouse, "RX-1") is None


def test_release_refuses_goods_back_from_a_failed_attempt(held):
    back = return_goods(dispatch(held, "RX-1").warehouse, "RX-1").warehouse

    assert release(back, "RX-1") is None


def test_a_hold_has_not_travelled_until_dispatched(held):
    assert held.holds["RX-1"].travelled is False
    assert dispatch(held, "RX-1").warehouse.holds["RX-1"].travelled is True


def test_a_hold_stored_on_the_road_before_travelled_existed_has_travelled():
    stored = Hold.model_validate(
        {"picks": [{"lot_id": "L-1", "drug_code": "MET500", "quantity": 1}], "dispatched": True}
    )

    assert stored.travelled is True


def test_withdraw_puts_goods_that_never_left_back_on_the_shelf(held):
    outcome = withdraw(held, "RX-1")

    assert outcome is not None
    assert levels(outcome.warehouse, "MET500") == (220, 0, 0)
    assert {(m.kind, m.source, m.target) for m in outcome.movements} == {("released", "reserved", "available")}


def test_withdraw_after_pickup_failure_quarantines_the_package_held_for_the_retry(held):
    """Picked up, failed (the sealed package came back and is held), then cancelled: quarantine."""
    back = return_goods(dispatch(held, "RX-1").warehouse, "RX-1").warehouse

    outcome = withdraw(back, "RX-1")

    assert outcome is not None
    assert levels(outcome.warehouse, "MET500") == (40, 0, 0)
    assert outcome.warehouse.level("MET500").quarantined == 180
    assert outcome.warehouse.holds == {}
    assert {(m.kind, m.source, m.target) for m in outcome.movements} == {("returned", "reserved", "quarantine")}


def test_withdraw_of_goods_on_the_road_quarantines_them(held):
    outcome = withdraw(dispatch(held, "RX-1").warehouse, "RX-1")

    assert outcome is not None
    assert {(m.source, m.target) for m in outcome.movements} == {("dispatched", "quarantine")}
    assert withdraw(outcome.warehouse, "RX-1") is None
    assert withdraw(held, "RX-404") is None


def test_release_twice_is_none_and_leaves_other_holds_alone(held):
    both = reserved_for(held, "RX-2", ("MET500", 20))

    after = release(both, "RX-1").warehouse

    assert release(after, "RX-1") is None
    assert levels(after, "MET500") == (200, 20, 0)
    assert list(after.holds) == ["RX-2"]


def test_quarantine_takes_goods_back_from_the_road_into_quarantine(held):
    outcome = quarantine(dispatch(held, "RX-1").warehouse, "RX-1")

    assert outcome is not None
    assert lot_figures(outcome.warehouse, "M-B") == (40, 0, 0, 160, 0, 0)
    assert outcome.warehouse.level("MET500").quarantined == 180
    assert outcome.warehouse.holds == {}
    assert {(m.kind, m.source, m.target) for m in outcome.movements} == {("returned", "dispatched", "quarantine")}


def test_quarantine_of_a_returned_package_held_for_a_retry_takes_it_from_reserved(held):
    back = return_goods(dispatch(held, "RX-1").warehouse, "RX-1").warehouse

    outcome = quarantine(back, "RX-1")

    assert levels(outcome.warehouse, "MET500") == (40, 0, 0)
    assert outcome.warehouse.level("MET500").quarantined == 180
    assert {(m.source, m.target) for m in outcome.movements} == {("reserved", "quarantine")}


def test_quarantined_units_are_never_allocated(held):
    quarantined = quarantine(dispatch(held, "RX-1").warehouse, "RX-1").warehouse

    assert not can_fill(quarantined, demand(("MET500", 41)), today=TODAY, delivery_days=DELIVERY_DAYS)
    assert quarantine(quarantined, "RX-1") is None


def test_deliver_takes_dispatched_units_off_the_books_and_closes_the_hold(held):
    outcome = deliver(dispatch(held, "RX-1").warehouse, "RX-1")

    assert outcome is not None
    assert lot_figures(outcome.warehouse, "M-B") == (40, 0, 0, 0, 0, 160)
    assert levels(outcome.warehouse, "MET500") == (40, 0, 0)
    assert outcome.warehouse.holds == {}
    assert {(m.kind, m.source, m.target) for m in outcome.movements} == {("delivered", "dispatched", "outside")}


def test_deliver_needs_the_goods_to_have_left_and_happens_once(held):
    delivered = deliver(dispatch(held, "RX-1").warehouse, "RX-1").warehouse

    assert deliver(held, "RX-1") is None
    assert deliver(delivered, "RX-1") is None
    assert release(delivered, "RX-1") is None
    assert dispatch(delivered, "RX-1") is None
    assert quarantine(delivered, "RX-1") is None


# --- expiry ---------------------------------------------------------------------------------------------


def expiry_warehouse() -> Warehouse:
    return make_warehouse(
        lots={
            "YESTERDAY": make_lot("MET500", 10, TODAY - timedelta(days=1)),
            "TODAY": make_lot("MET500", 20, TODAY),
            "TOMORROW": make_lot("MET500", 30, TODAY + timedelta(days=1)),
            "IN-30": make_lot("MET500", 5, TODAY + timedelta(days=30)),
            "IN-31": make_lot("MET500", 5, TODAY + timedelta(days=31)),
            "EMPTY": make_lot("AML5", 0, TODAY - timedelta(days=3), received=4, adjusted=-4),
        }
    )


def test_expire_takes_shelf_units_of_lots_at_or_past_their_date_off_the_shelf():
    outcome = expire(expiry_warehouse(), TODAY)

    assert outcome.movements == (
        movement("expired", "TODAY", 20, "available", "expired"),
        movement("expired", "YESTERDAY", 10, "available", "expired"),
    )
    assert lot_figures(outcome.warehouse, "TODAY") == (0, 0, 0, 0, 20, 0)
    assert lot_figures(outcome.warehouse, "TOMORROW") == (30, 0, 0, 0, 0, 0), "expires tomorrow, not today"


def test_expire_again_changes_nothing():
    once = expire(expiry_warehouse(), TODAY).warehouse

    assert expire(once, TODAY) == Outcome(once)
    assert expired_lots(once, TODAY) == []


def test_expire_leaves_reserved_units_held():
    warehouse = make_warehouse(lots={"L": make_lot("MET500", 10, TODAY + timedelta(days=40))})
    held = reserved_for(warehouse, "RX-1", ("MET500", 4))

    later = expire(held, TODAY + timedelta(days=40)).warehouse

    assert lot_figures(later, "L") == (0, 4, 0, 0, 6, 0)


def test_nearing_expiry_warns_within_the_window_inclusive_and_not_for_expired_or_empty_lots():
    assert nearing_expiry(expiry_warehouse(), TODAY, 30) == ["IN-30", "TOMORROW"]
    assert nearing_expiry(expiry_warehouse(), TODAY, 31) == ["IN-30", "IN-31", "TOMORROW"]
    assert nearing_expiry(expiry_warehouse(), TODAY, 0) == []


def test_a_lot_nearing_expiry_is_alerted_once():
    warehouse = mark_near_expiry_alerted(expiry_warehouse(), ["IN-30"])

    assert warehouse.lots["IN-30"].near_expiry_alerted
    assert nearing_expiry(warehouse, TODAY, 30) == ["TOMORROW"]


# --- low-stock alerts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (10, 9, True),  # crosses: was at the threshold, now below
        (50, 0, True),  # crosses by a lot
        (11, 10, False),  # reaches the threshold but not below
        (9, 8, False),  # was already below: alerted before, not again
        (9, 12, False),  # going up
        (10, 10, False),  # no change
    ],
)
def test_fell_below_alerts_only_when_available_crosses_below_the_threshold(before, after, expected):
    assert fell_below(make_warehouse(MET500=before), make_warehouse(MET500=after), "MET500", 10) is expected


def test_fell_below_sums_the_drugs_lots():
    before = make_warehouse(lots={"A": make_lot("MET500", 6), "B": make_lot("MET500", 6)})
    after = reserved_for(before, "RX-1", ("MET500", 3))

    assert fell_below(before, after, "MET500", 10) is True
    assert fell_below(before, after, "AML5", 10) is False


def test_fell_below_with_threshold_zero_never_alerts():
    assert fell_below(make_warehouse(MET500=1), make_warehouse(MET500=0), "MET500", 0) is False


def test_a_drugs_own_threshold_overrides_the_default():
    assert threshold_for("INSGL", {"INSGL": 5}, 20) == 5
    assert threshold_for("MET500", {"INSGL": 5}, 20) == 20


def test_a_warehouse_remembers_what_recent_prescriptions_took_and_the_threshold_never_falls_below_it():
    warehouse = make_warehouse(MET500=10_000)
    for number, quantity in enumerate([30, 180, 60, *[10] * RECENT_DEMAND], 1):
        warehouse = reserved_for(warehouse, f"RX-{number}", ("MET500", quantity))
        if number == 3:
            assert warehouse.recent_demand["MET500"] == [30, 180, 60]
            assert threshold_for("MET500", {}, 20, warehouse) == 180
            assert threshold_for("MET500", {"MET500": 500}, 20, warehouse) == 500, "a set threshold above it stands"
    assert warehouse.recent_demand["MET500"] == [10] * RECENT_DEMAND, f"only the last {RECENT_DEMAND}"
    assert threshold_for("MET500", {}, 20, warehouse) == 20
    assert threshold_for("AML5", {}, 20, warehouse) == 20, "a drug never asked for here: the setting"


# --- movements ----------------------------------------------------------------------------------------


def test_a_movement_that_takes_more_than_its_source_holds_is_refused():
    lot = make_lot("MET500", 3)

    with pytest.raises(StockRefused):
        apply_movement(lot, movement("reserved", "L", 4, "available", "reserved"))
    assert apply_movement(lot, movement("reserved", "L", 3, "available", "reserved")).reserved == 3


# --- the conservation law and the ledger ------------------------------------------------------------------

DRUGS = ("MET500", "AML5", "INS10")
PRESCRIPTIONS = ("RX-1", "RX-2", "RX-3", "RX-4")


def assert_books_balance(warehouse: Warehouse) -> None:
    for lot_id, lot in warehouse.lots.items():
        assert lot.balanced, (lot_id, lot)
        buckets = (lot.available, lot.reserved, lot.dispatched, lot.quarantined, lot.expired, lot.delivered)
        assert min(*buckets, lot.received) >= 0, (lot_id, lot)
        held = [p for h in warehouse.holds.values() if not h.dispatched for p in h.picks if p.lot_id == lot_id]
        on_the_road = [p for h in warehouse.holds.values() if h.dispatched for p in h.picks if p.lot_id == lot_id]
        assert lot.reserved == sum(p.quantity for p in held), (lot_id, lot, warehouse.holds)
        assert lot.dispatched == sum(p.quantity for p in on_the_road), (lot_id, lot, warehouse.holds)


class Books:
    """A warehouse driven through operations, with the ledger its movements make."""

    def __init__(self) -> None:
        self.warehouse = make_warehouse()
        self.entries: list = []
        self.today = TODAY
        self.clock = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
        self.applied: set[str] = set()

    def do(self, name: str, *args: object) -> None:
        """One operation; a refusal or a no-op leaves the warehouse as it was."""
        w = self.warehouse
        try:
            match name:
                case "restock":
                    outcome = restock(w, *args, today=self.today)  # type: ignore[arg-type]
                case "adjust":
                    outcome = adjust(w, *args)  # type: ignore[arg-type]
                case "reserve":
                    rx, lines = args
                    outcome = reserve(w, rx, demand(*lines), today=self.today, delivery_days=DELIVERY_DAYS)  # type: ignore[arg-type]
                case "expire":
                    self.today += timedelta(days=int(args[0]))  # type: ignore[call-overload]
                    outcome = expire(w, self.today)
                case _:
                    rule = {
                        "dispatch": dispatch,
                        "return_goods": return_goods,
                        "release": release,
                        "quarantine": quarantine,
                        "deliver": deliver,
                        "withdraw": withdraw,
                    }[name]
                    outcome = rule(w, *args)  # type: ignore[arg-type]
        except StockRefused:
            return
        if outcome is None or not outcome.movements:
            return
        self.applied.add(name)
        self.clock += timedelta(minutes=1)
        message_id = f"MSG-{len(self.entries)}"
        self.entries += ledger_entries(message_id, name, w.warehouse_id, self.clock, outcome.movements)
        self.warehouse = outcome.warehouse


LOTS = {
    "M-1": ("MET500", TODAY + timedelta(days=20)),
    "M-2": ("MET500", TODAY + timedelta(days=120)),
    "A-1": ("AML5", TODAY + timedelta(days=300)),
    "I-1": ("INS10", TODAY + timedelta(days=45)),
}

HANDCRAFTED = {
    "delivered from two lots": [
        ("restock", "M-1", "MET500", LOTS["M-1"][1], 30),
        ("restock", "M-2", "MET500", LOTS["M-2"][1], 200),
        ("reserve", "RX-1", [("MET500", 180, 7)]),  # M-1 lasts 20 days: usable for 7 days + 2
        ("dispatch", "RX-1"),
        ("deliver", "RX-1"),
    ],
    "failed attempt, then undeliverable": [
        ("restock", "M-2", "MET500", LOTS["M-2"][1], 50),
        ("reserve", "RX-1", [("MET500", 30)]),
        ("dispatch", "RX-1"),
        ("return_goods", "RX-1"),
        ("dispatch", "RX-1"),
        ("quarantine", "RX-1"),
        ("quarantine", "RX-1"),
    ],
    "withdrawn before pickup": [
        ("restock", "A-1", "AML5", LOTS["A-1"][1], 90),
        ("reserve", "RX-1", [("AML5", 90)]),
        ("release", "RX-1"),
        ("release", "RX-1"),
    ],
    "picked up, failed, then cancelled": [
        ("restock", "A-1", "AML5", LOTS["A-1"][1], 90),
        ("reserve", "RX-1", [("AML5", 40)]),
        ("dispatch", "RX-1"),
        ("return_goods", "RX-1"),
        ("release", "RX-1"),  # refused: the package travelled
        ("withdraw", "RX-1"),
        ("withdraw", "RX-1"),
    ],
    "adjustments, refusals and expiry": [
        ("restock", "M-1", "MET500", LOTS["M-1"][1], 10),
        ("adjust", "M-1", "MET500", -4),
        ("reserve", "RX-1", [("MET500", 7, 7)]),  # refused: 6 available
        ("reserve", "RX-1", [("MET500", 6, 7)]),
        ("adjust", "M-1", "MET500", -1),  # refused: nothing on the shelf
        ("adjust", "M-1", "MET500", 3),
        ("adjust", "M-9", "MET500", 3),  # refused: no such lot
        ("expire", 20),  # M-1 expires: its 3 shelf units, not the 6 held
        ("dispatch", "RX-1"),
        ("deliver", "RX-1"),
    ],
}


@pytest.mark.parametrize("operations", list(HANDCRAFTED.values()), ids=list(HANDCRAFTED))
def test_books_balance_after_every_step_and_the_ledger_rebuilds_every_lot(operations):
    books = Books()
    for operation in operations:
        books.do(*operation)
        assert_books_balance(books.warehouse)
        assert recompute_lots(books.entries) == current_lots([books.warehouse])


def test_handcrafted_sequences_end_where_expected():
    ends = {}
    for name, operations in HANDCRAFTED.items():
        books = Books()
        for operation in operations:
            books.do(*operation)
        ends[name] = books.warehouse

    delivered = ends["delivered from two lots"]
    assert lot_figures(delivered, "M-1") == (0, 0, 0, 0, 0, 30)
    assert lot_figures(delivered, "M-2") == (50, 0, 0, 0, 0, 150)
    assert lot_figures(ends["failed attempt, then undeliverable"], "M-2") == (20, 0, 0, 30, 0, 0)
    assert lot_figures(ends["withdrawn before pickup"], "A-1") == (90, 0, 0, 0, 0, 0)
    assert lot_figures(ends["picked up, failed, then cancelled"], "A-1") == (50, 0, 0, 40, 0, 0)
    expired = ends["adjustments, refusals and expiry"].lots["M-1"]
    assert lot_figures(ends["adjustments, refusals and expiry"], "M-1") == (0, 0, 0, 0, 3, 6)
    assert (expired.received, expired.adjusted) == (10, -4 + 3)


def test_the_ledger_gives_a_lots_figures_at_any_earlier_time():
    books = Books()
    for operation in HANDCRAFTED["delivered from two lots"]:
        books.do(*operation)
        if operation[0] == "reserve":
            after_reserve = current_lots([books.warehouse])
            reserved_at = books.clock

    assert recompute_lots(books.entries, until=reserved_at) == after_reserve
    assert recompute_lots(books.entries, until=reserved_at)["WH-1", "M-1"] == Figures(reserved=30, received=30)
    assert recompute_lots(books.entries, until=books.clock - timedelta(days=1)) == {}


def test_a_ledger_entry_recorded_twice_counts_once():
    books = Books()
    for operation in HANDCRAFTED["failed attempt, then undeliverable"]:
        books.do(*operation)

    assert recompute_lots(books.entries + books.entries[:3]) == current_lots([books.warehouse])


def test_ledger_entries_are_keyed_by_event_and_index():
    at = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)
    moved = [
        movement("reserved", "L-1", 3, "available", "reserved"),
        movement("reserved", "L-2", 4, "available", "reserved"),
    ]

    entries = ledger_entries("MSG-9", "inventory.stock_reserved", "WH-1", at, moved)

    assert [(e.entry_id, e.index, e.warehouse_id, e.occurred_at) for e in entries] == [
        ("MSG-9:0", 0, "WH-1", at),
        ("MSG-9:1", 1, "WH-1", at),
    ]
    assert [e.movement for e in entries] == moved


OPERATIONS = ("restock", "restock", "adjust", "reserve", "reserve", "dispatch", "return_goods", "release")
OPERATIONS += ("quarantine", "deliver", "deliver", "expire", "withdraw", "reserve", "dispatch", "release", "deliver")


def random_operation(rng: random.Random) -> tuple:
    kind = rng.choice(OPERATIONS)
    if kind == "restock":
        lot_id = rng.choice(list(LOTS))
        drug, expiry = LOTS[lot_id]
        return (kind, lot_id, drug, expiry, rng.randint(1, 40))
    if kind == "adjust":
        lot_id = rng.choice(list(LOTS))
        return (kind, lot_id, LOTS[lot_id][0], rng.choice([-1, 1]) * rng.randint(1, 15))
    if kind == "reserve":
        drugs = rng.sample(DRUGS, rng.randint(1, len(DRUGS)))
        rx = rng.choice(PRESCRIPTIONS) + f"-{rng.randint(0, 1)}"
        return (kind, rx, [(d, rng.randint(1, 20), rng.choice([7, 30, 90])) for d in drugs])
    if kind == "expire":
        return (kind, rng.choice([0, 0, 1, 5]))
    return (kind, rng.choice(PRESCRIPTIONS) + f"-{rng.randint(0, 1)}")


@pytest.mark.parametrize("seed", range(20))
def test_books_balance_and_the_ledger_matches_after_random_sequences(seed):
    rng = random.Random(seed)
    books = Books()
    for _ in range(400):
        books.do(*random_operation(rng))
        assert_books_balance(books.warehouse)
    assert recompute_lots(books.entries) == current_lots([books.warehouse])
    # The sequence must do real work, not only refusals and no-ops.
    assert {"restock", "adjust", "reserve", "dispatch", "release", "quarantine", "deliver", "withdraw"} <= books.applied


def test_an_address_without_coordinates_goes_to_the_first_warehouse_by_id_that_has_everything():
    warehouses = [
        located("WH-B", 51.81, 69.40, MET500=500),
        located("WH-A", 10.0, 10.0, MET500=10),
        located("WH-C", 51.55, 70.40, MET500=500),
    ]
    chosen = choose_warehouse(warehouses, demand(("MET500", 100)), None, today=TODAY, delivery_days=DELIVERY_DAYS)
    assert chosen is not None and chosen.warehouse_id == "WH-B"


# --- quarantine decisions --------------------------------------------------------------------------------


def _inspected(expiry: date = TODAY + timedelta(days=365)) -> Warehouse:
    """A lot with 6 units on the shelf and 4 back in quarantine (returned damaged)."""
    lot = make_lot("MET500", 6, expiry, quarantined=4, received=10)
    return make_warehouse(lots={"MET500-Q": lot})


@pytest.mark.parametrize(
    ("release", "available", "adjusted", "kind", "target"),
    [(True, 9, 0, "released", "available"), (False, 6, -3, "adjusted", "outside")],
    ids=["release", "write-off"],
)
def test_quarantined_units_are_released_to_the_shelf_or_written_off_and_the_books_balance(
    release, available, adjusted, kind, target
):
    cleared = clear_quarantine(_inspected(), "MET500-Q", "MET500", 3, release=release, today=TODAY)
    lot = cleared.warehouse.lots["MET500-Q"]
    assert (lot.available, lot.quarantined, lot.adjusted) == (available, 1, adjusted)
    (movement,) = cleared.movements
    assert (movement.kind, movement.source, movement.target, movement.quantity) == (kind, "quarantine", target, 3)
    assert lot.available + lot.quarantined + lot.reserved + lot.dispatched + lot.expired + lot.delivered == (
        lot.received + lot.adjusted
    )


@pytest.mark.parametrize(
    ("lot_id", "drug", "quantity", "release", "expiry", "why"),
    [
        ("NOPE", "MET500", 1, True, None, "no lot NOPE in WH-1"),
        ("MET500-Q", "AML5", 1, True, None, "lot MET500-Q is MET500, not AML5"),
        ("MET500-Q", "MET500", 5, False, None, "only 4 units of lot MET500-Q are in quarantine"),
        ("MET500-Q", "MET500", 1, True, TODAY - timedelta(days=1), "expired on 2027-01-14: it can only be written off"),
    ],
    ids=["unknown lot", "other drug", "more than quarantined", "release an expired lot"],
)
def test_a_quarantine_decision_the_books_cannot_take_is_refused_with_the_reason(
    lot_id, drug, quantity, release, expiry, why
):
    with pytest.raises(StockRefused, match=why):
        clear_quarantine(
            _inspected(expiry or TODAY + timedelta(days=365)), lot_id, drug, quantity, release=release, today=TODAY
        )
