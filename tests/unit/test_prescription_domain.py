"""The prescription checks and the review lifecycle: every reason code, at and just past every boundary."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest

from services.prescription.domain import (
    BY_CHECKS,
    BY_REVIEW_TIMEOUT,
    Check,
    FormularyEntry,
    Interaction,
    InteractionTable,
    MedicationEntry,
    MedicationHistory,
    PrescriberRecord,
    ReviewPolicy,
    Safety,
    Verdict,
    VerdictState,
    approved_by_pharmacist,
    cancelled,
    check_prescription,
    delivery_details,
    due_review_action,
    escalated,
    expired_review,
    history_to_withdraw,
    outcome_of,
    refill_too_soon,
    rejected_by_pharmacist,
    verdict_of_check,
    with_cancelled,
    with_formulary_defaults,
    with_not_supplied,
    with_supply,
)
from services.prescription.settings import PrescriptionSettings
from tests.unit.builders import (
    DURING_VALIDITY,
    ISSUED_AT,
    VALID_UNTIL,
    item_data,
    make_formulary,
    make_prescription,
)

TICK = timedelta(microseconds=1)
FORMULARY = make_formulary()  # MET500: at most 180 units and 90 days; AML5: 90 units, 90 days; see builders
EXAMPLE_LICENCE = "LIC-KZ-77120"
PRESCRIBER = PrescriberRecord(
    licence_number=EXAMPLE_LICENCE,
    prescriber_id="DR-0042",
    name="Dr. Ilyas Karimov",
    licensed_until=date(2030, 12, 31),
    remote_expert=True,
)
INTERACTIONS = InteractionTable(
    [
        Interaction(class_a="anticoagulant", class_b="nsaid", severity="severe", note="bleeding risk"),
        # Stored the other way round on purpose: pairs are unordered.
        Interaction(class_a="benzodiazepine", class_b="opioid", severity="severe", note="respiratory depression"),
        Interaction(class_a="statin", class_b="macrolide", severity="severe", note="myopathy"),
        Interaction(class_a="ace-inhibitor", class_b="nsaid", severity="moderate", note="watch kidneys"),
        Interaction(class_a="anticoagulant", class_b="macrolide", severity="moderate", note="raised INR"),
    ]
)
NOW = DURING_VALIDITY


def safety(**overrides: Any) -> Safety:
    fields: dict[str, Any] = {"formulary": FORMULARY, "prescriber": PRESCRIBER, "interactions": INTERACTIONS}
    fields.update(overrides)
    return Safety(**fields)


def check(prescription=None, now: datetime = NOW, **overrides: Any) -> Check:
    return check_prescription(prescription or make_prescription(), safety(**overrides), now)


def items(*specs: tuple[str, int, int] | dict[str, Any]) -> list[dict[str, Any]]:
    return [spec if isinstance(spec, dict) else item_data(*spec) for spec in specs]


def chronic(drug_code: str, quantity: int, days_supply: int) -> dict[str, Any]:
    return {**item_data(drug_code, quantity, days_supply), "chronic": True}


def rx(*specs: tuple[str, int, int] | dict[str, Any], allergies: list[str] | None = None, **overrides: Any):
    prescription = make_prescription(items=items(*specs), **overrides)
    if allergies is not None:
        patient = prescription.patient.model_copy(update={"allergies": allergies})
        prescription = prescription.model_copy(update={"patient": patient})
    return prescription


def check_one_item(**item: Any) -> Check:
    return check(make_prescription(items=[item_data(**item)]))


def codes(result: Check) -> list[str]:
    return [reason.code for reason in result.reasons]


def taken(drug_code: str, classes: list[str], started_at: datetime, days_supply: int = 30, **kw: Any):
    return MedicationEntry(
        prescription_id=kw.pop("prescription_id", "RX-EARLIER"),
        drug_code=drug_code,
        ingredient_classes=classes,
        started_at=started_at,
        days_supply=days_supply,
        **kw,
    )


def test_the_example_prescription_is_approved_with_no_reasons():
    result = check()

    assert result.outcome is VerdictState.APPROVED
    assert result.approved is True
    assert result.reasons == ()


# --- the formulary ---------------------------------------------------------------------------------


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
    result = check_one_item(drug_code="MET500", quantity=quantity, days_supply=30)

    assert codes(result) == expected_codes
    assert result.approved is (expected_codes == [])


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
    result = check_one_item(drug_code="MET500", quantity=60, days_supply=days_supply)

    assert codes(result) == expected_codes
    assert result.approved is (expected_codes == [])


@pytest.mark.parametrize(
    ("item", "expected_codes"),
    [
        (item_data("LIS10", 30, 30), []),
        (item_data("LIS10", 30, 31), ["DAYS_SUPPLY_OUT_OF_RANGE"]),
        (item_data("LIS10", 90, 90), ["DAYS_SUPPLY_OUT_OF_RANGE"]),
        (chronic("LIS10", 90, 1), []),
        (chronic("LIS10", 90, 31), []),
        (chronic("LIS10", 90, 90), []),
        (chronic("LIS10", 90, 91), ["DAYS_SUPPLY_OUT_OF_RANGE"]),
        (chronic("LIS10", 90, 0), ["DAYS_SUPPLY_OUT_OF_RANGE"]),
        # No chronic limit in the formulary: the flag changes nothing.
        (chronic("IBU400", 30, 30), []),
        (chronic("IBU400", 30, 31), ["DAYS_SUPPLY_OUT_OF_RANGE"]),
    ],
    ids=[
        "acute-at-30",
        "acute-at-31",
        "acute-90",
        "chronic-1",
        "chronic-31",
        "chronic-at-90",
        "chronic-at-91",
        "chronic-0",
        "chronic-flag-without-chronic-limit",
        "chronic-flag-without-chronic-limit-over",
    ],
)
def test_chronic_items_get_the_longer_days_supply_limit(item, expected_codes):
    assert codes(check(make_prescription(items=[item]))) == expected_codes


def test_days_supply_reason_names_the_allowed_range_and_the_chronic_limit():
    (acute,) = check(rx(("LIS10", 90, 90))).reasons
    (long,) = check(rx(chronic("LIS10", 90, 91))).reasons
    (plain,) = check(rx(("AML5", 30, 91))).reasons

    assert acute.message == "Lisinopril: 90 days, allowed 1-30 (90 if marked chronic)"
    assert long.message == "Lisinopril: 91 days, allowed 1-90 for chronic therapy"
    assert plain.message == "Amlodipine: 91 days, allowed 1-90"


def test_days_supply_limit_of_an_entry():
    entry = FormularyEntry(drug_code="X", name="X", max_quantity=1, max_days_supply=30, max_days_supply_chronic=90)

    assert entry.days_supply_limit(chronic=False) == 30
    assert entry.days_supply_limit(chronic=True) == 90
    assert entry.model_copy(update={"max_days_supply_chronic": None}).days_supply_limit(chronic=True) == 30


def test_quantity_reason_names_the_drug_the_amount_and_the_maximum():
    (reason,) = check_one_item(drug_code="MET500", quantity=181, days_supply=30).reasons

    assert reason.item_index == 0
    assert reason.message == "Metformin 500 mg: 181 units, at most 180"


def test_maximum_is_per_drug():
    # 91 units is within MET500's maximum (180) but above AML5's (90).
    assert codes(check_one_item(drug_code="MET500", quantity=91, days_supply=30)) == []
    assert codes(check_one_item(drug_code="AML5", quantity=91, days_supply=30)) == ["QUANTITY_ABOVE_MAXIMUM"]


def test_unknown_drug_is_reported_with_its_item_index_and_nothing_else_about_that_item():
    result = check(rx(("MET500", 60, 30), ("NOPE-1", 0, 0)))

    assert result.approved is False
    (reason,) = result.reasons
    assert (reason.code, reason.item_index) == ("UNKNOWN_DRUG", 1)
    assert reason.message == "NOPE-1 is not in the formulary"


def test_empty_formulary_makes_every_item_unknown():
    result = check(formulary={})

    assert [(r.code, r.item_index) for r in result.reasons] == [("UNKNOWN_DRUG", 0), ("UNKNOWN_DRUG", 1)]


# --- the prescriber --------------------------------------------------------------------------------


def test_unknown_licence_is_rejected():
    result = check(prescriber=None)

    assert result.outcome is VerdictState.REJECTED
    (reason,) = result.reasons
    assert reason.code == "PRESCRIBER_UNKNOWN"
    assert reason.item_index is None
    assert EXAMPLE_LICENCE in reason.message


@pytest.mark.parametrize(
    ("licensed_until", "expected_codes"),
    [
        (date(2030, 12, 31), []),
        (date(2026, 11, 26), []),
        (ISSUED_AT.date(), []),  # licensed through the day of issue: valid
        (date(2026, 11, 24), ["PRESCRIBER_LICENCE_EXPIRED"]),  # one day before
        (date(2024, 1, 31), ["PRESCRIBER_LICENCE_EXPIRED"]),
    ],
    ids=["far-future", "day-after-issue", "day-of-issue", "day-before-issue", "long-expired"],
)
def test_licence_must_be_valid_on_the_day_of_issue(licensed_until, expected_codes):
    record = PRESCRIBER.model_copy(update={"licensed_until": licensed_until})

    assert codes(check(prescriber=record)) == expected_codes


def test_licence_day_is_the_utc_date_of_issue_even_late_in_the_day():
    record = PRESCRIBER.model_copy(update={"licensed_until": date(2026, 11, 25)})
    late = make_prescription(issued_at="2026-11-25T23:59:59Z")
    next_day = make_prescription(issued_at="2026-11-26T00:00:00Z")

    assert codes(check(late, prescriber=record)) == []
    assert codes(check(next_day, prescriber=record)) == ["PRESCRIBER_LICENCE_EXPIRED"]


def test_licence_expired_after_issue_does_not_matter():
    # The licence was valid when the prescription was written; it lapsed before it was dispensed.
    record = PRESCRIBER.model_copy(update={"licensed_until": date(2026, 12, 1)})

    assert check(prescriber=record, now=datetime(2027, 1, 15, tzinfo=NOW.tzinfo)).approved


def test_suspended_licence_is_rejected_as_expired():
    (reason,) = check(prescriber=PRESCRIBER.model_copy(update={"suspended": True})).reasons

    assert reason.code == "PRESCRIBER_LICENCE_EXPIRED"
    assert "suspended" in reason.message


def test_expired_licence_reason_names_the_dates():
    record = PRESCRIBER.model_copy(update={"licensed_until": date(2024, 1, 31)})

    (reason,) = check(prescriber=record).reasons

    assert reason.message == (
        f"licence {EXAMPLE_LICENCE} of Dr. Ilyas Karimov expired on 2024-01-31, "
        "before the prescription was issued on 2026-11-25"
    )


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
    result = check(now=now)

    assert codes(result) == expected_codes
    assert result.approved is (expected_codes == [])


def test_expired_and_not_yet_valid_reasons_are_about_the_whole_prescription():
    expired = check(now=VALID_UNTIL + TICK).reasons[0]
    early = check(now=ISSUED_AT - TICK).reasons[0]

    assert expired.item_index is None
    assert expired.message == "expired at 2027-05-25 08:00 UTC"
    assert early.item_index is None
    assert early.message == "issued at 2026-11-25 08:00 UTC"


def test_times_in_other_timezones_are_compared_as_instants():
    # 08:00Z issue written as 13:00+05:00: the same instant, so a check at that instant passes.
    prescription = make_prescription(issued_at="2026-11-25T13:00:00+05:00")

    assert check(prescription, now=ISSUED_AT).approved is True
    assert codes(check(prescription, now=ISSUED_AT - TICK)) == ["PRESCRIPTION_NOT_YET_VALID"]


def test_valid_until_equal_to_issued_at_is_an_invalid_window():
    result = check(make_prescription(valid_until="2026-11-25T08:00:00Z"), now=ISSUED_AT)

    assert codes(result) == ["VALIDITY_WINDOW_INVALID"]
    assert result.approved is False


def test_valid_until_before_issued_at_is_an_invalid_window_and_any_time_is_outside_it():
    prescription = make_prescription(issued_at="2026-11-25T08:00:00Z", valid_until="2026-11-20T08:00:00Z")

    between = check(prescription, now=ISSUED_AT - timedelta(days=2))

    assert codes(between) == ["VALIDITY_WINDOW_INVALID", "PRESCRIPTION_NOT_YET_VALID", "PRESCRIPTION_EXPIRED"]


# --- allergies -------------------------------------------------------------------------------------


def test_an_item_of_a_class_the_patient_is_allergic_to_is_rejected_naming_item_and_class():
    # The example patient is allergic to penicillin.
    result = check(rx(("MET500", 60, 30), ("AMOX500", 21, 7)))

    assert result.outcome is VerdictState.REJECTED
    (reason,) = result.reasons
    assert (reason.code, reason.item_index) == ("ALLERGY_CONFLICT", 1)
    assert reason.message == "Amoxicillin is a penicillin; the patient is recorded as allergic to it"


@pytest.mark.parametrize("allergy", ["penicillin", "Penicillin", "PENICILLIN", " penicillin "])
def test_allergies_match_classes_case_insensitively(allergy):
    assert codes(check(rx(("AMOX500", 21, 7), allergies=[allergy]))) == ["ALLERGY_CONFLICT"]


@pytest.mark.parametrize("allergies", [[], ["sulfonamides"], ["penicillins"], ["amoxicillin"]])
def test_no_conflict_without_a_matching_class(allergies):
    assert codes(check(rx(("AMOX500", 21, 7), allergies=allergies))) == []


# --- interactions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ((("WAR5", 30, 30), ("IBU400", 20, 10)), ("rejected", ["SEVERE_INTERACTION"])),
        ((("IBU400", 20, 10), ("WAR5", 30, 30)), ("rejected", ["SEVERE_INTERACTION"])),
        ((("MOR10", 20, 5), ("DIAZ5", 10, 5)), ("rejected", ["SEVERE_INTERACTION"])),
        ((("ATV20", 30, 30), ("CLAR500", 14, 7)), ("rejected", ["SEVERE_INTERACTION"])),
        ((("LIS10", 30, 30), ("IBU400", 20, 10)), ("held", ["MODERATE_INTERACTION"])),
        ((("MET500", 60, 30), ("AML5", 30, 30)), ("approved", [])),
    ],
    ids=["anticoagulant-nsaid", "reversed-order", "opioid-benzodiazepine", "statin-macrolide", "moderate", "none"],
)
def test_interactions_within_one_prescription(specs, expected):
    result = check(rx(*specs))

    assert (result.outcome.value, codes(result)) == expected


def test_interaction_reason_names_both_drugs_classes_and_the_note():
    (reason,) = check(rx(("LIS10", 30, 30), ("AML5", 30, 30), ("IBU400", 20, 10))).reasons

    assert (reason.code, reason.item_index) == ("MODERATE_INTERACTION", 2)
    assert reason.message == "Ibuprofen (nsaid) with Lisinopril (ace-inhibitor): moderate interaction: watch kidneys"


def test_interaction_classes_match_case_insensitively():
    table = InteractionTable([Interaction(class_a="ACE-Inhibitor", class_b="NSAID", severity="moderate")])

    assert codes(check(rx(("LIS10", 30, 30), ("IBU400", 20, 10)), interactions=table)) == ["MODERATE_INTERACTION"]


def test_no_interactions_known_means_none_found():
    assert check(rx(("LIS10", 30, 30), ("IBU400", 20, 10)), interactions=InteractionTable()).approved


def test_interaction_pair_id_is_order_and_case_insensitive():
    one = Interaction(class_a="NSAID", class_b="anticoagulant", severity="severe")
    other = Interaction(class_a="anticoagulant", class_b="nsaid", severity="severe")

    assert one.pair_id == other.pair_id == "anticoagulant+nsaid"


STARTED = NOW - timedelta(days=10)


def test_interaction_with_the_patients_other_active_prescription():
    warfarin = taken("WAR5", ["anticoagulant"], STARTED, days_supply=30, prescription_id="RX-WAR")

    result = check(rx(("IBU400", 20, 10)), history=[warfarin])

    assert result.outcome is VerdictState.REJECTED
    (reason,) = result.reasons
    assert (reason.code, reason.item_index) == ("SEVERE_INTERACTION", 0)
    assert reason.message == (
        "Ibuprofen (nsaid) with WAR5 (anticoagulant) of active prescription RX-WAR (supply until 2027-02-04): "
        "severe interaction: bleeding risk"
    )


def test_moderate_interaction_with_an_active_prescription_is_held():
    lisinopril = taken("LIS10", ["ace-inhibitor"], STARTED)

    assert codes(check(rx(("IBU400", 20, 10)), history=[lisinopril])) == ["MODERATE_INTERACTION"]


@pytest.mark.parametrize(
    ("supply_ends", "expected_codes"),
    [
        (NOW + timedelta(days=1), ["SEVERE_INTERACTION"]),
        (NOW + TICK, ["SEVERE_INTERACTION"]),
        (NOW, []),  # the supply ends now: no longer active
        (NOW - TICK, []),
    ],
    ids=["a-day-left", "a-tick-left", "ends-now", "ended"],
)
def test_only_active_prescriptions_interact(supply_ends, expected_codes):
    warfarin = taken("WAR5", ["anticoagulant"], supply_ends - timedelta(days=30), days_supply=30)

    assert codes(check(rx(("IBU400", 20, 10)), history=[warfarin])) == expected_codes


def test_cancelled_prescriptions_do_not_interact():
    warfarin = taken("WAR5", ["anticoagulant"], STARTED, cancelled=True)

    assert check(rx(("IBU400", 20, 10)), history=[warfarin]).approved


def test_never_supplied_prescriptions_do_not_interact():
    warfarin = taken("WAR5", ["anticoagulant"], STARTED, not_supplied="OUT_OF_STOCK")

    assert check(rx(("IBU400", 20, 10)), history=[warfarin]).approved


def test_entry_active_boundary():
    entry = taken("WAR5", ["anticoagulant"], NOW - timedelta(days=30), days_supply=30)

    assert entry.active_at(NOW - TICK) is True
    assert entry.active_at(NOW) is False
    assert entry.model_copy(update={"cancelled": True}).active_at(NOW - TICK) is False
    assert entry.model_copy(update={"not_supplied": "DELIVERY_ABANDONED"}).active_at(NOW - TICK) is False


# --- refill too soon -------------------------------------------------------------------------------

EARLIER = taken("MET500", ["biguanide"], NOW - timedelta(days=24), days_supply=30)  # 80% of 30 days ago


@pytest.mark.parametrize(
    ("now", "too_soon"),
    [
        (EARLIER.started_at, True),
        (EARLIER.started_at + timedelta(days=24) - TICK, True),
        (EARLIER.started_at + timedelta(days=24), False),  # exactly 80%: allowed
        (EARLIER.started_at + timedelta(days=24) + TICK, False),
        (EARLIER.started_at + timedelta(days=40), False),
    ],
    ids=["same-moment", "a-tick-before-80pc", "at-80pc", "a-tick-after-80pc", "after-the-supply"],
)
def test_refill_too_soon_boundary(now, too_soon):
    assert refill_too_soon(EARLIER, now, 0.8) is too_soon


def test_refill_tolerance_is_a_share_of_the_days_supply():
    earlier = taken("MET500", [], NOW - timedelta(days=27), days_supply=30)

    assert refill_too_soon(earlier, NOW, 0.8) is False
    assert refill_too_soon(earlier, NOW, 0.9) is False
    assert refill_too_soon(earlier, NOW - TICK, 0.9) is True
    assert refill_too_soon(earlier, NOW, 1.0) is True


def test_cancelled_supply_is_never_too_soon():
    assert refill_too_soon(EARLIER.model_copy(update={"cancelled": True}), EARLIER.started_at, 0.8) is False


@pytest.mark.parametrize("why", ["OUT_OF_STOCK", "NOT_IN_ONE_WAREHOUSE", "DELIVERY_ABANDONED", "DELIVERY_CANCELLED"])
def test_a_supply_that_never_reached_the_patient_is_never_too_soon(why):
    assert refill_too_soon(EARLIER.model_copy(update={"not_supplied": why}), EARLIER.started_at, 0.8) is False


def test_refill_too_soon_holds_the_prescription_and_says_when_it_is_due():
    early = EARLIER.model_copy(update={"started_at": NOW - timedelta(days=10)})

    result = check(rx(("AML5", 30, 30), ("MET500", 60, 30)), history=[early])

    assert result.outcome is VerdictState.HELD
    (reason,) = result.reasons
    assert (reason.code, reason.item_index) == ("REFILL_TOO_SOON", 1)
    assert reason.message == (
        "MET500: 30 days were supplied on 2027-01-05 (RX-EARLIER); a refill is due from 2027-01-29 12:00 UTC"
    )


def test_refill_at_80_percent_goes_through_and_tolerance_is_configurable():
    prescription = rx(("MET500", 60, 30))

    assert check(prescription, history=[EARLIER]).approved
    assert codes(check(prescription, history=[EARLIER], refill_tolerance=0.9)) == ["REFILL_TOO_SOON"]


def test_a_different_drug_is_no_refill():
    assert check(rx(("AML5", 30, 30)), history=[EARLIER.model_copy(update={"started_at": NOW})]).approved


# --- always reviewed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "expected_codes"),
    [
        ((("MOR10", 20, 5),), ["CONTROLLED_SUBSTANCE"]),
        ((("WAR5", 30, 30),), ["HIGH_RISK_DRUG"]),
        ((("MET500", 60, 30), ("MOR10", 20, 5), ("WAR5", 30, 30)), ["CONTROLLED_SUBSTANCE", "HIGH_RISK_DRUG"]),
    ],
)
def test_controlled_and_high_risk_drugs_are_held(specs, expected_codes):
    result = check(rx(*specs))

    assert result.outcome is VerdictState.HELD
    assert codes(result) == expected_codes


def test_hold_reasons_name_the_item():
    controlled, high_risk = check(rx(("MET500", 60, 30), ("MOR10", 20, 5), ("WAR5", 30, 30))).reasons

    assert (controlled.item_index, controlled.message) == (1, "Morphine is a controlled substance")
    assert (high_risk.item_index, high_risk.message) == (2, "Warfarin is a high-risk drug")


# --- the outcome -----------------------------------------------------------------------------------


def test_outcome_rules():
    some = check(rx(("MOR10", 20, 5))).reasons

    assert outcome_of([], []) is VerdictState.APPROVED
    assert outcome_of([], some) is VerdictState.HELD
    assert outcome_of(some, []) is VerdictState.REJECTED
    assert outcome_of(some, some) is VerdictState.REJECTED


def test_a_rejection_lists_every_reject_reason_and_the_holds_are_kept_aside():
    result = check(rx(("MOR10", 20, 5), ("DIAZ5", 10, 5), ("AMOX500", 21, 7)))

    assert result.outcome is VerdictState.REJECTED
    assert codes(result) == ["ALLERGY_CONFLICT", "SEVERE_INTERACTION"]
    assert [r.code for r in result.holds] == ["CONTROLLED_SUBSTANCE", "CONTROLLED_SUBSTANCE"]


def test_every_reason_is_reported_in_order_not_just_the_first():
    prescription = rx(
        ("MET500", 181, 0),  # two reasons on one item
        ("AML5", 30, 30),  # fine
        ("GHOST", 1, 1),  # unknown
        ("AML5", 0, 91),  # two reasons on one item
        ("AMOX500", 21, 7),  # allergy
    )

    result = check(prescription, now=VALID_UNTIL + timedelta(days=1), prescriber=None)

    assert [(r.code, r.item_index) for r in result.reasons] == [
        ("PRESCRIPTION_EXPIRED", None),
        ("PRESCRIBER_UNKNOWN", None),
        ("QUANTITY_ABOVE_MAXIMUM", 0),
        ("DAYS_SUPPLY_OUT_OF_RANGE", 0),
        ("UNKNOWN_DRUG", 2),
        ("QUANTITY_NOT_POSITIVE", 3),
        ("DAYS_SUPPLY_OUT_OF_RANGE", 3),
        ("ALLERGY_CONFLICT", 4),
    ]


def test_same_drug_on_two_lines_is_checked_line_by_line():
    result = check(rx(("AML5", 90, 90), ("AML5", 91, 90)))

    assert [(r.code, r.item_index) for r in result.reasons] == [("QUANTITY_ABOVE_MAXIMUM", 1)]


def test_check_is_a_pure_function_of_its_inputs():
    prescription = rx(("MET500", 181, 30))

    assert check(prescription) == check(prescription)
    assert prescription.items[0].quantity == 181


def test_long_messages_are_cut_to_the_contract_limit():
    table = InteractionTable(
        [Interaction(class_a="ace-inhibitor", class_b="nsaid", severity="moderate", note="x" * 600)]
    )

    (reason,) = check(rx(("LIS10", 30, 30), ("IBU400", 20, 10)), interactions=table).reasons

    assert len(reason.message) == 500


# --- the medication history ------------------------------------------------------------------------


def test_approved_supply_is_recorded_once_per_prescription():
    prescription = rx(("MET500", 60, 30), ("AML5", 30, 30))

    history = with_supply(None, prescription, FORMULARY, NOW)

    assert history is not None
    assert history.patient_id == "PAT-5521"
    assert [(e.drug_code, e.ingredient_classes, e.started_at, e.days_supply) for e in history.entries] == [
        ("MET500", ["biguanide"], NOW, 30),
        ("AML5", ["calcium-channel-blocker"], NOW, 30),
    ]
    assert with_supply(history, prescription, FORMULARY, NOW + timedelta(days=1)) is None


def test_a_prescription_never_conflicts_with_its_own_history_entry():
    prescription = rx(("WAR5", 30, 30), ("LIS10", 30, 30))
    history = with_supply(None, prescription, FORMULARY, NOW)
    assert history is not None

    result = check(prescription, history=history.others_than(prescription.prescription_id))

    assert codes(result) == ["HIGH_RISK_DRUG"], "no refill-too-soon against itself"


def test_cancelling_marks_the_entries_and_is_idempotent():
    prescription = rx(("MET500", 60, 30))
    history = with_supply(None, prescription, FORMULARY, NOW)
    assert history is not None

    marked = with_cancelled(history, prescription.prescription_id)

    assert marked is not None
    assert [e.cancelled for e in marked.entries] == [True]
    assert with_cancelled(marked, prescription.prescription_id) is None
    assert with_cancelled(history, "RX-OTHER") is None
    assert with_cancelled(None, prescription.prescription_id) is None


def test_a_cancelled_entry_stays_cancelled_when_the_approval_is_recorded_late():
    # The cancellation marked it first; the (late) approval must not bring it back to life.
    prescription = rx(("MET500", 60, 30))
    history = with_cancelled(with_supply(None, prescription, FORMULARY, NOW), prescription.prescription_id)

    assert with_supply(history, prescription, FORMULARY, NOW) is None


def test_never_supplied_marks_only_that_prescriptions_entries_and_is_idempotent():
    prescription = rx(("MET500", 60, 30), ("AML5", 30, 30))
    other = taken("LIS10", ["ace-inhibitor"], NOW, prescription_id="RX-OTHER")
    history = with_supply(MedicationHistory(patient_id="PAT-5521", entries=[other]), prescription, FORMULARY, NOW)
    assert history is not None

    marked = with_not_supplied(history, prescription.prescription_id, "OUT_OF_STOCK")

    assert marked is not None
    assert [(e.prescription_id, e.not_supplied) for e in marked.entries] == [
        ("RX-OTHER", None),
        (prescription.prescription_id, "OUT_OF_STOCK"),
        (prescription.prescription_id, "OUT_OF_STOCK"),
    ]
    assert with_not_supplied(marked, prescription.prescription_id, "DELIVERY_CANCELLED") is None, "first reason kept"
    assert with_not_supplied(history, "RX-UNKNOWN", "OUT_OF_STOCK") is None
    assert with_not_supplied(None, prescription.prescription_id, "OUT_OF_STOCK") is None


def test_a_cancelled_entry_is_not_marked_again_as_never_supplied():
    prescription = rx(("MET500", 60, 30))
    history = with_cancelled(with_supply(None, prescription, FORMULARY, NOW), prescription.prescription_id)

    assert with_not_supplied(history, prescription.prescription_id, "DELIVERY_CANCELLED") is None


def test_a_never_supplied_entry_stays_so_when_the_approval_is_recorded_again():
    prescription = rx(("MET500", 60, 30))
    history = with_not_supplied(
        with_supply(None, prescription, FORMULARY, NOW), prescription.prescription_id, "DELIVERY_ABANDONED"
    )

    assert with_supply(history, prescription, FORMULARY, NOW) is None


def test_supplies_that_ended_a_year_ago_are_dropped_when_the_history_is_next_written():
    old = taken("AML5", [], NOW - timedelta(days=30 + 365), days_supply=30, prescription_id="RX-OLD")
    recent = taken("AML5", [], NOW - timedelta(days=30 + 364), days_supply=30, prescription_id="RX-RECENT")
    history = MedicationHistory(patient_id="PAT-5521", entries=[old, recent])

    updated = with_supply(history, rx(("MET500", 60, 30)), FORMULARY, NOW)

    assert updated is not None
    assert [e.prescription_id for e in updated.entries] == ["RX-RECENT", "RX-2026-000123"]


# --- verdicts and the review ---------------------------------------------------------------------

POLICY = ReviewPolicy(escalate_after=timedelta(hours=4), expire_after=timedelta(hours=24))


def held_verdict() -> Verdict:
    prescription = rx(("MOR10", 20, 5))
    return verdict_of_check(prescription, check(prescription), FORMULARY, POLICY, NOW)


def test_a_hold_keeps_the_prescription_and_sets_its_deadlines():
    verdict = held_verdict()

    assert verdict.state is VerdictState.HELD
    assert [r.code for r in verdict.reasons] == ["CONTROLLED_SUBSTANCE"]
    assert verdict.prescription is not None and verdict.prescription.prescription_id == verdict.prescription_id
    assert verdict.delivery is not None and verdict.delivery.controlled is True
    assert (verdict.held_at, verdict.escalate_at, verdict.expires_at) == (
        NOW,
        NOW + timedelta(hours=4),
        NOW + timedelta(hours=24),
    )
    assert (verdict.decided_by, verdict.decided_at, verdict.escalated) == (None, None, False)


def test_an_automatic_decision_records_the_checks_as_decider():
    prescription = make_prescription()

    verdict = verdict_of_check(prescription, check(prescription), FORMULARY, POLICY, NOW)

    assert (verdict.state, verdict.decided_by, verdict.decided_at) == (VerdictState.APPROVED, BY_CHECKS, NOW)
    assert verdict.prescription is None and verdict.held_at is None
    assert verdict.approved is True


ESCALATE_AT = NOW + timedelta(hours=4)
EXPIRES_AT = NOW + timedelta(hours=24)


@pytest.mark.parametrize(
    ("now", "already_escalated", "action"),
    [
        (NOW, False, None),
        (ESCALATE_AT - TICK, False, None),
        (ESCALATE_AT, False, "escalate"),
        (ESCALATE_AT + TICK, False, "escalate"),
        (ESCALATE_AT, True, None),
        (EXPIRES_AT - TICK, True, None),
        (EXPIRES_AT - TICK, False, "escalate"),
        (EXPIRES_AT, True, "expire"),
        (EXPIRES_AT, False, "expire"),  # both due: expiry wins, no point alerting about it
        (EXPIRES_AT + timedelta(days=3), True, "expire"),
    ],
)
def test_review_deadlines(now, already_escalated, action):
    verdict = held_verdict().model_copy(update={"escalated": already_escalated})

    assert due_review_action(verdict, now) == action


@pytest.mark.parametrize("state", [VerdictState.APPROVED, VerdictState.REJECTED, VerdictState.CANCELLED])
def test_only_holds_have_deadlines(state):
    verdict = held_verdict().model_copy(update={"state": state})

    assert due_review_action(verdict, EXPIRES_AT + timedelta(days=1)) is None


def test_escalation_is_recorded():
    assert escalated(held_verdict()).escalated is True


def test_pharmacist_approval_records_who_when_and_why_and_drops_the_kept_prescription():
    decided_at = NOW + timedelta(hours=1)

    verdict = approved_by_pharmacist(held_verdict(), "PH-7", "checked with the GP", decided_at)

    assert verdict.state is VerdictState.APPROVED
    assert (verdict.decided_by, verdict.decided_at, verdict.note) == ("PH-7", decided_at, "checked with the GP")
    assert verdict.prescription is None and verdict.delivery is None
    assert verdict.held_at == NOW, "the hold stays on record"


def test_pharmacist_rejection_adds_its_reason_to_the_checks_reasons():
    verdict = rejected_by_pharmacist(held_verdict(), "PH-7", "dose too high", NOW + timedelta(hours=1))

    assert verdict.state is VerdictState.REJECTED
    assert [r.code for r in verdict.reasons] == ["CONTROLLED_SUBSTANCE", "PHARMACIST_REJECTED"]
    assert verdict.reasons[-1].message == "rejected by pharmacist PH-7: dose too high"
    assert (verdict.decided_by, verdict.note) == ("PH-7", "dose too high")


def test_an_expired_review_is_rejected_by_the_timeout():
    verdict = expired_review(held_verdict(), EXPIRES_AT)

    assert verdict.state is VerdictState.REJECTED
    assert (verdict.decided_by, verdict.decided_at) == (BY_REVIEW_TIMEOUT, EXPIRES_AT)
    assert verdict.reasons[-1].code == "REVIEW_EXPIRED"
    assert verdict.reasons[-1].message == (
        "held for review since 2027-01-15 12:00 UTC; no pharmacist decided by 2027-01-16 12:00 UTC"
    )


@pytest.mark.parametrize(
    ("state", "cancellable"),
    [
        (VerdictState.APPROVED, True),
        (VerdictState.HELD, True),
        (VerdictState.REJECTED, False),
        (VerdictState.CANCELLED, False),
    ],
)
def test_cancellation_is_honoured_while_approved_or_held(state, cancellable):
    verdict = held_verdict().model_copy(update={"state": state})

    result = cancelled(verdict, verdict.prescription_id, "Dr. Karimov", "patient moved", NOW)

    if cancellable:
        assert result is not None
        assert (result.state, result.decided_by, result.note) == (
            VerdictState.CANCELLED,
            "Dr. Karimov",
            "patient moved",
        )
        assert result.prescription is None
    else:
        assert result is None


@pytest.mark.parametrize(
    ("state", "withdraws"),
    [
        (VerdictState.CANCELLED, True),
        (VerdictState.APPROVED, False),
        (VerdictState.HELD, False),
        (VerdictState.REJECTED, False),
    ],
)
def test_a_verdict_that_ends_cancelled_withdraws_the_patients_supply(state, withdraws):
    # Asked after every cancellation's write, also a duplicate or a no-op: an approval that ran at the
    # same time may have recorded the supply after the cancellation looked, then lost to it.
    verdict = held_verdict().model_copy(update={"state": state})

    assert history_to_withdraw(verdict) == ("PAT-5521" if withdraws else None)


def test_no_history_to_withdraw_without_a_verdict_or_a_patient():
    assert history_to_withdraw(None) is None
    before_the_checks = cancelled(None, "RX-9", "Dr. Karimov", "issued by mistake", NOW)
    assert history_to_withdraw(before_the_checks) is None


def test_a_cancellation_before_the_checks_leaves_a_cancelled_verdict():
    result = cancelled(None, "RX-9", "Dr. Karimov", "issued by mistake", NOW)

    assert result is not None
    assert (result.prescription_id, result.state, result.decided_at) == ("RX-9", VerdictState.CANCELLED, NOW)


# --- delivery and settings -------------------------------------------------------------------------


def test_delivery_flags_come_from_the_formulary():
    plain = delivery_details(rx(("MET500", 60, 30)), FORMULARY)
    cold = delivery_details(rx(("MET500", 60, 30), ("INSGL", 5, 30)), FORMULARY)
    controlled = delivery_details(rx(("MOR10", 20, 5)), FORMULARY)

    assert (plain.cold_chain, plain.controlled) == (False, False)
    assert (cold.cold_chain, cold.controlled) == (True, False)
    assert (controlled.cold_chain, controlled.controlled) == (False, True)


def test_settings_defaults_and_the_review_policy():
    policy = PrescriptionSettings().review_policy()

    assert policy == ReviewPolicy(
        escalate_after=timedelta(hours=4), expire_after=timedelta(hours=24), refill_tolerance=0.8
    )


def test_expiry_must_come_after_escalation():
    with pytest.raises(ValueError, match="longer than"):
        PrescriptionSettings(review_escalate_after_s=60, review_expire_after_s=60)


# --- lines as FHIR bundles send them: no days of supply, a unit of their own ---------------------


def test_a_line_without_days_of_supply_takes_the_formularys_default_and_says_so():
    formulary = {**FORMULARY, "MET500": FORMULARY["MET500"].model_copy(update={"default_days_supply": 30})}
    prescription = make_prescription(items=[{**item_data("MET500", 60, 1), "days_supply": None}])
    completed = with_formulary_defaults(prescription, formulary)

    assert (completed.items[0].days_supply, completed.items[0].days_supply_basis) == (30, "formulary")
    assert check_prescription(completed, safety(formulary=formulary), NOW).approved


def test_a_line_without_days_of_supply_and_no_default_is_refused_with_the_reason():
    prescription = make_prescription(items=[{**item_data("MET500", 60, 1), "days_supply": None}])
    (reason,) = check(with_formulary_defaults(prescription, FORMULARY)).reasons

    assert reason.code == "DAYS_SUPPLY_NOT_STATED"
    assert reason.message == (
        "Metformin 500 mg: the prescription states no days of supply and the formulary has no default"
    )


@pytest.mark.parametrize(
    ("unit", "expected_codes"),
    [
        (None, []),
        ("tablet", []),
        ("Tablets", []),
        ("TAB", []),
        ("tab(s)", []),
        ("ml", ["QUANTITY_UNIT_MISMATCH"]),
        ("{Package}", ["QUANTITY_UNIT_MISMATCH"]),
    ],
)
def test_a_quantity_in_another_unit_than_the_drug_is_dispensed_in_is_refused(unit, expected_codes):
    result = check(make_prescription(items=[{**item_data("MET500", 60, 30), "quantity_unit": unit}]))
    assert codes(result) == expected_codes
    if expected_codes:
        assert result.reasons[0].message == f"Metformin 500 mg: 60 {unit} prescribed, dispensed by the tablet"
