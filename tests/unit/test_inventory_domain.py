"""Stock rules: reservations all-or-nothing, state moves idempotent, and the books always balance."""

from __future__ import annotations

import random

import pytest

from services.inventory.domain import (
    DrugStock,
    Hold,
    Shortage,
    StockRefused,
    Warehouse,
    adjust,
    can_fill,
    choose_warehouse,
    complete,
    dispatch,
    fell_below,
    merge_lines,
    release,
    reserve,
    restock,
    return_goods,
    shortages,
)
from tests.unit.builders import levels, make_warehouse

# --- merge_lines -----------------------------------------------------------------------------------


def test_merge_lines_adds_up_the_same_drug_on_several_lines():
    assert merge_lines([("MET500", 60), ("AML5", 30), ("MET500", 120)]) == {"MET500": 180, "AML5": 30}


def test_merge_lines_keeps_first_seen_order_and_handles_nothing():
    assert list(merge_lines([("B", 1), ("A", 1), ("B", 1)])) == ["B", "A"]
    assert merge_lines([]) == {}


# --- restock and adjust ----------------------------------------------------------------------------


def test_restock_adds_to_available_and_received():
    warehouse = restock(make_warehouse(MET500=10), "MET500", 5)

    assert warehouse.level("MET500") == DrugStock(available=15, received=15)


def test_restock_of_a_new_drug_creates_its_level_and_leaves_others_alone():
    warehouse = restock(make_warehouse(MET500=10), "AML5", 3)

    assert warehouse.level("AML5") == DrugStock(available=3, received=3)
    assert warehouse.level("MET500") == DrugStock(available=10, received=10)


@pytest.mark.parametrize("quantity", [0, -1, -100])
def test_restock_refuses_nothing_or_less(quantity):
    with pytest.raises(StockRefused):
        restock(make_warehouse(MET500=10), "MET500", quantity)


def test_level_of_an_unknown_drug_is_all_zero():
    assert make_warehouse().level("NEVER") == DrugStock()


@pytest.mark.parametrize(("delta", "available", "adjusted"), [(5, 15, 5), (-1, 9, -1), (-10, 0, -10)])
def test_adjust_moves_available_and_records_the_adjustment(delta, available, adjusted):
    warehouse = adjust(make_warehouse(MET500=10), "MET500", delta)

    assert warehouse.level("MET500") == DrugStock(available=available, received=10, adjusted=adjusted)


@pytest.mark.parametrize("delta", [-11, -1000])
def test_adjust_refuses_to_take_available_below_zero(delta):
    with pytest.raises(StockRefused, match="only 10 units of MET500"):
        adjust(make_warehouse(MET500=10), "MET500", delta)


def test_adjust_cannot_remove_reserved_units():
    warehouse = reserve(make_warehouse(MET500=10), "RX-1", {"MET500": 8})

    with pytest.raises(StockRefused):
        adjust(warehouse, "MET500", -3)
    assert levels(adjust(warehouse, "MET500", -2), "MET500") == (0, 8, 0)


def test_adjust_refuses_a_zero_delta():
    with pytest.raises(StockRefused, match="at least one unit"):
        adjust(make_warehouse(MET500=10), "MET500", 0)


def test_adjust_can_add_a_drug_never_received():
    warehouse = adjust(make_warehouse(), "FOUND", 4)

    assert warehouse.level("FOUND") == DrugStock(available=4, adjusted=4)


# --- reserve -------------------------------------------------------------------------------------


def test_reserve_moves_available_to_reserved_and_records_a_hold():
    warehouse = make_warehouse(MET500=200, AML5=100)

    after = reserve(warehouse, "RX-1", {"MET500": 180, "AML5": 90})

    assert levels(after, "MET500") == (20, 180, 0)
    assert levels(after, "AML5") == (10, 90, 0)
    assert after.holds == {"RX-1": Hold(lines={"MET500": 180, "AML5": 90}, dispatched=False)}


def test_reserve_does_not_change_the_warehouse_it_was_given():
    warehouse = make_warehouse(MET500=200)

    reserve(warehouse, "RX-1", {"MET500": 180})

    assert levels(warehouse, "MET500") == (200, 0, 0)
    assert warehouse.holds == {}


def test_reserve_can_take_the_last_unit():
    after = reserve(make_warehouse(MET500=5), "RX-1", {"MET500": 5})

    assert levels(after, "MET500") == (0, 5, 0)


def test_reserve_is_all_or_nothing_when_one_line_is_short():
    warehouse = make_warehouse(MET500=200, AML5=89)

    with pytest.raises(StockRefused):
        reserve(warehouse, "RX-1", {"MET500": 180, "AML5": 90})
    assert levels(warehouse, "MET500") == (200, 0, 0)
    assert levels(warehouse, "AML5") == (89, 0, 0)
    assert warehouse.holds == {}


def test_reserve_refuses_a_drug_the_warehouse_never_had():
    with pytest.raises(StockRefused):
        reserve(make_warehouse(MET500=200), "RX-1", {"MET500": 1, "AML5": 1})


def test_reserve_cannot_take_units_already_reserved_for_another_prescription():
    warehouse = reserve(make_warehouse(MET500=10), "RX-1", {"MET500": 6})

    with pytest.raises(StockRefused):
        reserve(warehouse, "RX-2", {"MET500": 5})
    assert levels(reserve(warehouse, "RX-2", {"MET500": 4}), "MET500") == (0, 10, 0)


def test_reserve_again_for_the_same_prescription_changes_nothing():
    once = reserve(make_warehouse(MET500=200), "RX-1", {"MET500": 180})

    twice = reserve(once, "RX-1", {"MET500": 180})

    assert twice == once
    assert levels(twice, "MET500") == (20, 180, 0)


def test_reserve_again_for_the_same_prescription_is_not_refused_even_when_stock_is_gone():
    once = reserve(make_warehouse(MET500=180), "RX-1", {"MET500": 180})

    assert reserve(once, "RX-1", {"MET500": 180}) == once


# --- choose_warehouse and shortages ---------------------------------------------------------------


def test_choose_warehouse_picks_the_first_by_id_that_fills_every_line():
    warehouses = [
        make_warehouse("WH-C", MET500=500, AML5=500),
        make_warehouse("WH-A", MET500=500, AML5=10),  # first by id but short of AML5
        make_warehouse("WH-B", MET500=180, AML5=90),
    ]

    chosen = choose_warehouse(warehouses, {"MET500": 180, "AML5": 90})

    assert chosen is not None
    assert chosen.warehouse_id == "WH-B"


def test_choose_warehouse_ignores_the_order_it_is_given():
    a = make_warehouse("WH-A", MET500=10)
    b = make_warehouse("WH-B", MET500=10)

    assert choose_warehouse([b, a], {"MET500": 5}).warehouse_id == "WH-A"
    assert choose_warehouse([a, b], {"MET500": 5}).warehouse_id == "WH-A"


def test_choose_warehouse_needs_one_warehouse_for_the_whole_prescription():
    # Together they have enough of both drugs, but no single one does: couriers make one pickup.
    warehouses = [make_warehouse("WH-A", MET500=200), make_warehouse("WH-B", AML5=200)]

    assert choose_warehouse(warehouses, {"MET500": 1, "AML5": 1}) is None


def test_choose_warehouse_with_no_warehouses_is_none():
    assert choose_warehouse([], {"MET500": 1}) is None


def test_choose_warehouse_does_not_count_reserved_units():
    a = reserve(make_warehouse("WH-A", MET500=10), "RX-0", {"MET500": 8})
    b = make_warehouse("WH-B", MET500=5)

    assert choose_warehouse([a, b], {"MET500": 3}).warehouse_id == "WH-B"


def test_can_fill_is_true_only_when_every_line_fits():
    warehouse = make_warehouse(MET500=10, AML5=5)

    assert can_fill(warehouse, {"MET500": 10, "AML5": 5}) is True
    assert can_fill(warehouse, {"MET500": 10, "AML5": 6}) is False


def test_shortages_report_each_short_drug_with_the_best_single_warehouse():
    warehouses = [make_warehouse("WH-A", MET500=40, AML5=100), make_warehouse("WH-B", MET500=60)]

    found = shortages(warehouses, {"MET500": 100, "AML5": 90, "NEW1": 2})

    assert found == [Shortage("MET500", 100, 60), Shortage("NEW1", 2, 0)]


def test_shortages_are_empty_when_each_drug_is_available_somewhere():
    warehouses = [make_warehouse("WH-A", MET500=180)]

    assert shortages(warehouses, {"MET500": 180}) == []


def test_shortages_with_no_warehouses_have_zero_best_available():
    assert shortages([], {"MET500": 3}) == [Shortage("MET500", 3, 0)]


# --- dispatch, return_goods, release, complete ----------------------------------------------------


@pytest.fixture
def held() -> Warehouse:
    """200 MET500 and 100 AML5 received; RX-1 holds 180 MET500 and 90 AML5."""
    return reserve(make_warehouse(MET500=200, AML5=100), "RX-1", {"MET500": 180, "AML5": 90})


def test_dispatch_moves_reserved_to_dispatched(held):
    after = dispatch(held, "RX-1")

    assert after is not None
    assert levels(after, "MET500") == (20, 0, 180)
    assert levels(after, "AML5") == (10, 0, 90)
    assert after.holds["RX-1"].dispatched is True


def test_dispatch_twice_is_a_no_op_the_second_time(held):
    once = dispatch(held, "RX-1")

    assert dispatch(once, "RX-1") is None


def test_dispatch_of_an_unknown_prescription_is_none(held):
    assert dispatch(held, "RX-404") is None


def test_return_goods_moves_dispatched_back_to_reserved_and_keeps_the_hold(held):
    after = return_goods(dispatch(held, "RX-1"), "RX-1")

    assert after is not None
    assert levels(after, "MET500") == (20, 180, 0)
    assert after.holds["RX-1"] == Hold(lines={"MET500": 180, "AML5": 90}, dispatched=False)


def test_return_goods_twice_or_before_dispatch_is_none(held):
    returned = return_goods(dispatch(held, "RX-1"), "RX-1")

    assert return_goods(returned, "RX-1") is None
    assert return_goods(held, "RX-1") is None
    assert return_goods(held, "RX-404") is None


def test_returned_goods_can_be_dispatched_again(held):
    again = dispatch(return_goods(dispatch(held, "RX-1"), "RX-1"), "RX-1")

    assert levels(again, "MET500") == (20, 0, 180)


def test_release_of_reserved_stock_makes_it_available_and_drops_the_hold(held):
    after = release(held, "RX-1")

    assert after is not None
    assert levels(after, "MET500") == (200, 0, 0)
    assert levels(after, "AML5") == (100, 0, 0)
    assert "RX-1" not in after.holds


def test_release_of_dispatched_stock_returns_it_first(held):
    after = release(dispatch(held, "RX-1"), "RX-1")

    assert after is not None
    assert levels(after, "MET500") == (200, 0, 0)
    assert after.holds == {}


def test_release_twice_is_a_no_op_the_second_time(held):
    once = release(held, "RX-1")

    assert release(once, "RX-1") is None
    assert release(held, "RX-404") is None


def test_release_leaves_other_holds_alone(held):
    both = reserve(held, "RX-2", {"MET500": 20})

    after = release(both, "RX-1")

    assert levels(after, "MET500") == (180, 20, 0)
    assert list(after.holds) == ["RX-2"]


def test_complete_closes_the_hold_and_keeps_units_counted_as_dispatched(held):
    after = complete(dispatch(held, "RX-1"), "RX-1")

    assert after is not None
    assert levels(after, "MET500") == (20, 0, 180)
    assert after.holds == {}


def test_complete_twice_is_a_no_op_the_second_time(held):
    once = complete(dispatch(held, "RX-1"), "RX-1")

    assert complete(once, "RX-1") is None


def test_complete_needs_the_goods_to_have_been_dispatched(held):
    assert complete(held, "RX-1") is None
    assert complete(held, "RX-404") is None


def test_after_complete_the_prescription_cannot_be_released_or_dispatched_again(held):
    done = complete(dispatch(held, "RX-1"), "RX-1")

    assert release(done, "RX-1") is None
    assert dispatch(done, "RX-1") is None
    assert return_goods(done, "RX-1") is None


# --- fell_below ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (10, 9, True),  # crosses: was at the threshold, now below
        (50, 0, True),  # crosses by a lot
        (11, 10, False),  # reaches the threshold but not below
        (9, 8, False),  # was already below: alerted before, not again
        (9, 12, False),  # going up
        (10, 10, False),  # no change
        (5, 15, False),  # recovering above
    ],
)
def test_fell_below_alerts_only_when_available_crosses_below_the_threshold(before, after, expected):
    assert fell_below(make_warehouse(MET500=before), make_warehouse(MET500=after), "MET500", 10) is expected


def test_fell_below_after_a_reservation():
    before = make_warehouse(MET500=12)
    after = reserve(before, "RX-1", {"MET500": 5})

    assert fell_below(before, after, "MET500", 10) is True
    assert fell_below(before, after, "AML5", 10) is False


def test_fell_below_with_threshold_zero_never_alerts():
    assert fell_below(make_warehouse(MET500=1), make_warehouse(MET500=0), "MET500", 0) is False


# --- the conservation law ---------------------------------------------------------------------------

DRUGS = ("MET500", "AML5", "INS10")
PRESCRIPTIONS = ("RX-1", "RX-2", "RX-3", "RX-4")


def assert_books_balance(warehouse: Warehouse) -> None:
    for drug, level in warehouse.stock.items():
        assert min(level.available, level.reserved, level.dispatched, level.received) >= 0, (drug, level)
        assert level.available + level.reserved + level.dispatched == level.received + level.adjusted, (drug, level)
        held = sum(h.lines.get(drug, 0) for h in warehouse.holds.values() if not h.dispatched)
        on_the_road = sum(h.lines.get(drug, 0) for h in warehouse.holds.values() if h.dispatched)
        assert level.reserved == held, (drug, level, warehouse.holds)
        assert level.dispatched >= on_the_road, (drug, level, warehouse.holds)


def apply(warehouse: Warehouse, operation: tuple) -> Warehouse:
    """One operation; a refusal or a no-op leaves the warehouse as it was."""
    name, *args = operation
    function = {
        "restock": restock,
        "adjust": adjust,
        "reserve": reserve,
        "dispatch": dispatch,
        "return_goods": return_goods,
        "release": release,
        "complete": complete,
    }[name]
    try:
        result = function(warehouse, *args)
    except StockRefused:
        return warehouse
    return warehouse if result is None else result


HANDCRAFTED = {
    "happy path": [
        ("restock", "MET500", 200),
        ("restock", "AML5", 100),
        ("reserve", "RX-1", {"MET500": 180, "AML5": 90}),
        ("dispatch", "RX-1"),
        ("complete", "RX-1"),
    ],
    "failed attempts then given up": [
        ("restock", "MET500", 50),
        ("reserve", "RX-1", {"MET500": 30}),
        ("dispatch", "RX-1"),
        ("return_goods", "RX-1"),
        ("dispatch", "RX-1"),
        ("release", "RX-1"),
        ("release", "RX-1"),
    ],
    "adjustments and refusals": [
        ("restock", "MET500", 10),
        ("adjust", "MET500", -4),
        ("reserve", "RX-1", {"MET500": 7}),  # refused: 6 available
        ("reserve", "RX-1", {"MET500": 6}),
        ("adjust", "MET500", -1),  # refused: nothing available
        ("adjust", "MET500", 3),
        ("adjust", "INS10", 2),
        ("dispatch", "RX-1"),
        ("complete", "RX-1"),
        ("adjust", "MET500", -3),
    ],
    "repeats of everything": [
        ("restock", "AML5", 90),
        ("reserve", "RX-1", {"AML5": 90}),
        ("reserve", "RX-1", {"AML5": 90}),
        ("dispatch", "RX-1"),
        ("dispatch", "RX-1"),
        ("return_goods", "RX-1"),
        ("return_goods", "RX-1"),
        ("dispatch", "RX-1"),
        ("complete", "RX-1"),
        ("complete", "RX-1"),
        ("release", "RX-1"),
    ],
}


@pytest.mark.parametrize("operations", list(HANDCRAFTED.values()), ids=list(HANDCRAFTED))
def test_books_balance_after_every_step_of_handcrafted_sequences(operations):
    warehouse = make_warehouse()
    for operation in operations:
        warehouse = apply(warehouse, operation)
        assert_books_balance(warehouse)


def test_handcrafted_sequences_end_where_expected():
    ends = {}
    for name, operations in HANDCRAFTED.items():
        warehouse = make_warehouse()
        for operation in operations:
            warehouse = apply(warehouse, operation)
        ends[name] = warehouse

    assert levels(ends["happy path"], "MET500") == (20, 0, 180)
    assert levels(ends["failed attempts then given up"], "MET500") == (50, 0, 0)
    assert ends["adjustments and refusals"].level("MET500") == DrugStock(
        available=0, reserved=0, dispatched=6, received=10, adjusted=-4 + 3 - 3
    )
    assert levels(ends["repeats of everything"], "AML5") == (0, 0, 90)


def random_operation(rng: random.Random) -> tuple:
    kind = rng.choice(["restock", "adjust", "reserve", "reserve", "dispatch", "return_goods", "release", "complete"])
    if kind == "restock":
        return (kind, rng.choice(DRUGS), rng.randint(1, 30))
    if kind == "adjust":
        return (kind, rng.choice(DRUGS), rng.choice([-1, 1]) * rng.randint(1, 15))
    if kind == "reserve":
        drugs = rng.sample(DRUGS, rng.randint(1, len(DRUGS)))
        return (kind, rng.choice(PRESCRIPTIONS) + f"-{rng.randint(0, 5)}", {d: rng.randint(1, 20) for d in drugs})
    held = rng.choice(PRESCRIPTIONS) + f"-{rng.randint(0, 5)}"
    return (kind, held)


@pytest.mark.parametrize("seed", range(20))
def test_books_balance_after_every_step_of_random_sequences(seed):
    rng = random.Random(seed)
    warehouse = make_warehouse()
    applied: set[str] = set()
    for _ in range(300):
        operation = random_operation(rng)
        after = apply(warehouse, operation)
        if after is not warehouse:
            applied.add(operation[0])
        warehouse = after
        assert_books_balance(warehouse)
    # The sequence must do real work, not only refusals and no-ops.
    assert {"restock", "adjust", "reserve", "dispatch", "release"} <= applied
