"""The formulary check: every reason code, at and just past every boundary."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.prescription.domain import check_prescription
from tests.unit.builders import (
    DURING_VALIDITY,
    ISSUED_AT,
    VALID_UNTIL,
    item_data,
    make_formulary,
    make_prescription,
)

TICK = timedelta(microseconds=1)
FORMULARY = make_formulary()  # MET500: at most 180 units and 90 days; AML5: 90 units, 90 days


def check_one_item(**item):
    prescription = make_prescription(items=[item_data(**item)])
    return check_prescription(prescription, FORMULARY, DURING_VALIDITY)


def codes(check) -> list[str]:
    return [reason.code for reason in check.reasons]


def test_the_example_prescription_is_approved_with_no_reasons():
    check = check_prescription(make_prescription(), FORMULARY, DURING_VALIDITY)

    assert check.approved is True
    assert check.reasons == ()


@pytest.mark.parametrize(
    ("quantity", "expected_codes"),
    [
        (1, []),
        (179, []),
        (180, []),
        (181, ["QUANTITY_ABOVE_MAXIMUM"]),
        (10_000, ["QUANTITY_ABOVE_MAXIMUM"]),
        (0, ["QUANTITY_NOT_POSITIVE"]),
        (-1, ["QUANTITY_NOT_POSITIVE"]),
        (-500, ["QUANTITY_NOT_POSITIVE"]),
    ],
)
def test_quantity_boundaries(quantity, expected_codes):
    check = check_one_item(drug_code="MET500", quantity=quantity, days_supply=30)

    assert codes(check) == expected_codes
    assert check.approved is (expected_codes == [])


@pytest.mark.parametrize(
    ("days_supply", "expected_codes"),
    [
        (-1, ["DAYS_SUPPLY_OUT_OF_RANGE"]),
        (0, ["DAYS_SUPPLY_OUT_OF_RANGE"]),
        (1, []),
        (89, []),
        (90, []),
        (91, ["DAYS_SUPPLY_OUT_OF_RANGE"]),
    ],
)
def test_days_supply_boundaries(days_supply, expected_codes):
    check = check_one_item(drug_code="MET500", quantity=60, days_supply=days_supply)

    assert codes(check) == expected_codes
    assert check.approved is (expected_codes == [])


def test_quantity_reason_names_the_drug_the_amount_and_the_maximum():
    (reason,) = check_one_item(drug_code="MET500", quantity=181, days_supply=30).reasons

    assert reason.item_index == 0
    assert reason.message == "Metformin 500 mg: 181 units, at most 180"


def test_days_supply_reason_names_the_allowed_range():
    (reason,) = check_one_item(drug_code="AML5", quantity=30, days_supply=91).reasons

    assert reason.code == "DAYS_SUPPLY_OUT_OF_RANGE"
    assert reason.message == "Amlodipine: 91 days, allowed 1-90"


def test_maximum_is_per_drug():
    # 91 units is within MET500's maximum (180) but above AML5's (90).
    assert codes(check_one_item(drug_code="MET500", quantity=91, days_supply=30)) == []
    assert codes(check_one_item(drug_code="AML5", quantity=91, days_supply=30)) == ["QUANTITY_ABOVE_MAXIMUM"]


def test_unknown_drug_is_reported_with_its_item_index_and_nothing_else_about_that_item():
    prescription = make_prescription(
        items=[item_data("MET500", 60, 30), item_data("NOPE-1", quantity=0, days_supply=0)]
    )

    check = check_prescription(prescription, FORMULARY, DURING_VALIDITY)

    assert check.approved is False
    assert len(check.reasons) == 1
    (reason,) = check.reasons
    assert (reason.code, reason.item_index) == ("UNKNOWN_DRUG", 1)
    assert reason.message == "NOPE-1 is not in the formulary"


def test_empty_formulary_makes_every_item_unknown():
    check = check_prescription(make_prescription(), {}, DURING_VALIDITY)

    assert [(r.code, r.item_index) for r in check.reasons] == [("UNKNOWN_DRUG", 0), ("UNKNOWN_DRUG", 1)]


# --- time ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected_codes"),
    [
        (ISSUED_AT - timedelta(days=1), ["PRESCRIPTION_NOT_YET_VALID"]),
        (ISSUED_AT - TICK, ["PRESCRIPTION_NOT_YET_VALID"]),
        (ISSUED_AT, []),
        (ISSUED_AT + TICK, []),
        (VALID_UNTIL - TICK, []),
        (VALID_UNTIL, []),
        (VALID_UNTIL + TICK, ["PRESCRIPTION_EXPIRED"]),
        (VALID_UNTIL + timedelta(days=365), ["PRESCRIPTION_EXPIRED"]),
    ],
    ids=[
        "a-day-early",
        "just-before-issue",
        "at-issue",
        "just-after-issue",
        "just-before-expiry",
        "at-valid-until",
        "just-after-valid-until",
        "a-year-late",
    ],
)
def test_validity_period_boundaries(now, expected_codes):
    check = check_prescription(make_prescription(), FORMULARY, now)

    assert codes(check) == expected_codes
    assert check.approved is (expected_codes == [])


def test_expired_and_not_yet_valid_reasons_are_about_the_whole_prescription():
    expired = check_prescription(make_prescription(), FORMULARY, VALID_UNTIL + TICK).reasons[0]
    early = check_prescription(make_prescription(), FORMULARY, ISSUED_AT - TICK).reasons[0]

    assert expired.item_index is None
    assert expired.message == "expired at 2027-05-25 08:00 UTC"
    assert early.item_index is None
    assert early.message == "issued at 2026-11-25 08:00 UTC"


def test_times_in_other_timezones_are_compared_as_instants():
    # 08:00Z issue written as 13:00+05:00: the same instant, so a check at that instant passes.
    prescription = make_prescription(issued_at="2026-11-25T13:00:00+05:00")

    assert check_prescription(prescription, FORMULARY, ISSUED_AT).approved is True
    assert codes(check_prescription(prescription, FORMULARY, ISSUED_AT - TICK)) == ["PRESCRIPTION_NOT_YET_VALID"]


def test_valid_until_equal_to_issued_at_is_an_invalid_window():
    prescription = make_prescription(valid_until="2026-11-25T08:00:00Z")

    check = check_prescription(prescription, FORMULARY, ISSUED_AT)

    assert codes(check) == ["VALIDITY_WINDOW_INVALID"]
    assert check.approved is False


def test_valid_until_before_issued_at_is_an_invalid_window_and_any_time_is_outside_it():
    prescription = make_prescription(issued_at="2026-11-25T08:00:00Z", valid_until="2026-11-20T08:00:00Z")

    between = check_prescription(prescription, FORMULARY, ISSUED_AT - timedelta(days=2))

    assert codes(between) == ["VALIDITY_WINDOW_INVALID", "PRESCRIPTION_NOT_YET_VALID", "PRESCRIPTION_EXPIRED"]


# --- several reasons at once ----------------------------------------------------------------------


def test_every_reason_is_reported_in_order_not_just_the_first():
    prescription = make_prescription(
        items=[
            item_data("MET500", quantity=181, days_supply=0),  # two reasons on one item
            item_data("AML5", quantity=30, days_supply=30),  # fine
            item_data("GHOST", quantity=1, days_supply=1),  # unknown
            item_data("AML5", quantity=0, days_supply=91),  # two reasons on one item
        ]
    )

    check = check_prescription(prescription, FORMULARY, VALID_UNTIL + timedelta(days=1))

    assert check.approved is False
    assert [(r.code, r.item_index) for r in check.reasons] == [
        ("PRESCRIPTION_EXPIRED", None),
        ("QUANTITY_ABOVE_MAXIMUM", 0),
        ("DAYS_SUPPLY_OUT_OF_RANGE", 0),
        ("UNKNOWN_DRUG", 2),
        ("QUANTITY_NOT_POSITIVE", 3),
        ("DAYS_SUPPLY_OUT_OF_RANGE", 3),
    ]


def test_same_drug_on_two_lines_is_checked_line_by_line():
    prescription = make_prescription(items=[item_data("AML5", 90, 90), item_data("AML5", 91, 90)])

    check = check_prescription(prescription, FORMULARY, DURING_VALIDITY)

    assert [(r.code, r.item_index) for r in check.reasons] == [("QUANTITY_ABOVE_MAXIMUM", 1)]


def test_check_is_a_pure_function_of_its_inputs():
    prescription = make_prescription(items=[item_data("MET500", 181, 30)])
    first = check_prescription(prescription, FORMULARY, DURING_VALIDITY)
    second = check_prescription(prescription, FORMULARY, DURING_VALIDITY)

    assert first == second
    assert prescription.items[0].quantity == 181
