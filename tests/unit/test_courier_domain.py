"""Delivery rules: who gets the next dispatch, and what a courier's report may change."""

from __future__ import annotations

import pytest

from services.courier.domain import (
    Attempt,
    Delivery,
    DeliveryState,
    ReportOutcome,
    ReportRefused,
    apply_report,
    choose_courier,
    dispatch_id_for,
    offer,
    ready_to_offer,
)
from tests.unit.builders import RX_ID, make_courier, make_delivery

MAX_ATTEMPTS = 3


def report(
    delivery: Delivery,
    status: str,
    *,
    courier_id: str | None = None,
    dispatch_id: str | None = None,
    failure_reason: str | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> tuple[Delivery, ReportOutcome]:
    """A report on the current dispatch by its courier, unless told otherwise. A failure defaults to patient_absent."""
    current = delivery.current
    if status == "failed" and failure_reason is None:
        failure_reason = "patient_absent"
    return apply_report(
        delivery,
        dispatch_id=dispatch_id or current.dispatch_id,
        courier_id=courier_id or current.courier_id,
        status=status,
        failure_reason=failure_reason,
        max_attempts=max_attempts,
    )


def offered_to(*courier_ids: str) -> Delivery:
    """A delivery offered to each courier in turn, every attempt but the last failed."""
    delivery = make_delivery()
    for index, courier_id in enumerate(courier_ids):
        if index:
            delivery, _ = report(delivery, "failed", max_attempts=len(courier_ids) + 1)
        delivery = offer(delivery, make_courier(courier_id))
    return delivery


def refusal_code(delivery: Delivery, status: str, **kwargs) -> str:
    with pytest.raises(ReportRefused) as refused:
        report(delivery, status, **kwargs)
    return refused.value.code


# --- choose_courier ------------------------------------------------------------------------------


def test_choose_courier_prefers_the_fewest_deliveries_on_the_road():
    roster = [make_courier("CUR-A"), make_courier("CUR-B"), make_courier("CUR-C")]

    chosen = choose_courier(roster, {"CUR-A": 2, "CUR-B": 0, "CUR-C": 1}, tried=[])

    assert chosen.courier_id == "CUR-B"


def test_choose_courier_counts_a_courier_missing_from_loads_as_free():
    roster = [make_courier("CUR-A"), make_courier("CUR-B")]

    assert choose_courier(roster, {"CUR-A": 1}, tried=[]).courier_id == "CUR-B"


def test_choose_courier_breaks_ties_by_id():
    roster = [make_courier("CUR-C"), make_courier("CUR-A"), make_courier("CUR-B")]

    assert choose_courier(roster, {}, tried=[]).courier_id == "CUR-A"


def test_choose_courier_prefers_an_untried_courier_even_with_more_load():
    roster = [make_courier("CUR-A"), make_courier("CUR-B")]

    chosen = choose_courier(roster, {"CUR-A": 0, "CUR-B": 5}, tried=["CUR-A"])

    assert chosen.courier_id == "CUR-B"


def test_choose_courier_falls_back_to_tried_couriers_when_everyone_has_tried():
    roster = [make_courier("CUR-A"), make_courier("CUR-B")]

    chosen = choose_courier(roster, {"CUR-A": 3, "CUR-B": 1}, tried=["CUR-A", "CUR-B", "CUR-A"])

    assert chosen.courier_id == "CUR-B"


def test_choose_courier_skips_inactive_couriers():
    roster = [make_courier("CUR-A", active=False), make_courier("CUR-B")]

    assert choose_courier(roster, {"CUR-B": 9}, tried=[]).courier_id == "CUR-B"


def test_choose_courier_falls_back_to_an_active_tried_courier_rather_than_an_inactive_untried_one():
    roster = [make_courier("CUR-A"), make_courier("CUR-B", active=False)]

    assert choose_courier(roster, {}, tried=["CUR-A"]).courier_id == "CUR-A"


@pytest.mark.parametrize(
    "roster",
    [[], [make_courier("CUR-A", active=False), make_courier("CUR-B", active=False)]],
    ids=["empty-roster", "all-inactive"],
)
def test_choose_courier_is_none_without_an_active_courier(roster):
    assert choose_courier(roster, {}, tried=[]) is None
    assert choose_courier(roster, {}, tried=["CUR-A"]) is None


def test_choose_courier_accepts_any_iterables():
    roster = (make_courier(i) for i in ["CUR-B", "CUR-A"])

    assert choose_courier(roster, {}, tried=iter(["CUR-A"])).courier_id == "CUR-B"


# --- offer ---------------------------------------------------------------------------------------


def test_dispatch_ids_are_deterministic():
    assert dispatch_id_for("RX-9", 1) == "RX-9-D1"
    assert dispatch_id_for("RX-9", 2) == "RX-9-D2"
    assert dispatch_id_for("RX-9", 2) == dispatch_id_for("RX-9", 2)


def test_offer_creates_the_first_attempt():
    delivery = offer(make_delivery(), make_courier("CUR-A"))

    assert delivery.state is DeliveryState.OFFERED
    assert delivery.active_courier_id == "CUR-A"
    assert delivery.attempts == [Attempt(number=1, dispatch_id=f"{RX_ID}-D1", courier_id="CUR-A")]
    assert delivery.current == delivery.attempts[0]


def test_offering_the_same_delivery_twice_gives_the_same_dispatch_id():
    first = offer(make_delivery(), make_courier("CUR-A"))
    again = offer(make_delivery(), make_courier("CUR-A"))

    assert first == again
    assert first.current.dispatch_id == again.current.dispatch_id == f"{RX_ID}-D1"


def test_a_second_offer_after_a_failure_is_attempt_two():
    delivery = offered_to("CUR-A", "CUR-B")

    assert [(a.number, a.dispatch_id, a.courier_id) for a in delivery.attempts] == [
        (1, f"{RX_ID}-D1", "CUR-A"),
        (2, f"{RX_ID}-D2", "CUR-B"),
    ]
    assert delivery.attempts[0].failure_reason == "patient_absent"
    assert delivery.active_courier_id == "CUR-B"


def test_offer_without_a_courier_waits_for_one():
    delivery = offer(make_delivery(), None)

    assert delivery.state is DeliveryState.AWAITING_COURIER
    assert delivery.attempts == []
    assert delivery.active_courier_id is None


def test_ready_to_offer_needs_details_and_a_warehouse_and_a_waiting_state():
    assert ready_to_offer(make_delivery()) is True
    assert ready_to_offer(make_delivery(state=DeliveryState.AWAITING_COURIER)) is True
    assert ready_to_offer(make_delivery(details=None)) is False
    assert ready_to_offer(make_delivery(warehouse_id=None)) is False
    assert ready_to_offer(make_delivery(state=DeliveryState.OFFERED)) is False
    assert ready_to_offer(make_delivery(state=DeliveryState.CANCELLED)) is False


# --- apply_report: the happy path ------------------------------------------------------------------


def test_accepted_then_picked_up_then_delivered():
    delivery = offered_to("CUR-A")

    delivery, outcome = report(delivery, "accepted")
    assert (delivery.state, outcome, delivery.active_courier_id) == (
        DeliveryState.ACCEPTED,
        ReportOutcome.ACCEPTED,
        "CUR-A",
    )

    delivery, outcome = report(delivery, "picked_up")
    assert (delivery.state, outcome, delivery.active_courier_id) == (
        DeliveryState.PICKED_UP,
        ReportOutcome.PICKED_UP,
        "CUR-A",
    )

    delivery, outcome = report(delivery, "delivered")
    assert (delivery.state, outcome, delivery.active_courier_id) == (
        DeliveryState.DELIVERED,
        ReportOutcome.DELIVERED,
        None,
    )


def test_picked_up_without_a_separate_accept_is_allowed():
    delivery, outcome = report(offered_to("CUR-A"), "picked_up")

    assert (delivery.state, outcome) == (DeliveryState.PICKED_UP, ReportOutcome.PICKED_UP)


def test_apply_report_does_not_change_the_delivery_it_was_given():
    delivery = offered_to("CUR-A")

    report(delivery, "accepted")

    assert delivery.state is DeliveryState.OFFERED


# --- apply_report: repeats are ignored ----------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "repeat"),
    [
        (["accepted"], "accepted"),
        (["accepted", "picked_up"], "picked_up"),
        (["picked_up"], "picked_up"),
    ],
)
def test_a_repeat_report_on_the_road_is_ignored(steps, repeat):
    delivery = offered_to("CUR-A")
    for status in steps:
        delivery, _ = report(delivery, status)

    again, outcome = report(delivery, repeat)

    assert outcome is ReportOutcome.IGNORED
    assert again == delivery


def test_a_repeat_delivered_report_is_ignored():
    # A courier app re-sending "delivered" (a new message id) must not be refused for a person.
    delivery = offered_to("CUR-A")
    for status in ["accepted", "picked_up", "delivered"]:
        delivery, _ = report(delivery, status)

    again, outcome = report(delivery, "delivered")

    assert outcome is ReportOutcome.IGNORED
    assert again == delivery


def test_a_repeat_failed_report_is_ignored_not_counted_as_another_failure():
    delivery = offered_to("CUR-A")
    delivery, outcome = report(delivery, "failed", failure_reason="patient_absent")
    assert (delivery.state, outcome) == (DeliveryState.AWAITING_COURIER, ReportOutcome.FAILED_WILL_RETRY)

    again, outcome = report(delivery, "failed", failure_reason="patient_absent")

    assert outcome is ReportOutcome.IGNORED
    assert again == delivery


# --- apply_report: refusals ------------------------------------------------------------------------


def test_report_on_a_delivery_never_offered_is_an_unknown_dispatch():
    with pytest.raises(ReportRefused) as refused:
        apply_report(
            make_delivery(),
            dispatch_id=f"{RX_ID}-D1",
            courier_id="CUR-A",
            status="accepted",
            failure_reason=None,
            max_attempts=MAX_ATTEMPTS,
        )

    assert refused.value.code == "unknown_dispatch"


def test_report_on_a_dispatch_this_delivery_never_had_is_an_unknown_dispatch():
    assert refusal_code(offered_to("CUR-A"), "accepted", dispatch_id=f"{RX_ID}-D7") == "unknown_dispatch"


def test_report_by_another_courier_is_not_your_dispatch():
    assert refusal_code(offered_to("CUR-A"), "accepted", courier_id="CUR-B") == "not_your_dispatch"


def test_report_by_the_new_courier_on_the_old_couriers_dispatch_is_not_your_dispatch():
    delivery = offered_to("CUR-A", "CUR-B")

    code = refusal_code(delivery, "picked_up", courier_id="CUR-B", dispatch_id=f"{RX_ID}-D1")

    assert code == "not_your_dispatch"


@pytest.mark.parametrize("status", ["accepted", "picked_up", "delivered", "failed"])
def test_report_on_an_old_attempt_is_dispatch_closed(status):
    delivery = offered_to("CUR-A", "CUR-B")

    code = refusal_code(delivery, status, courier_id="CUR-A", dispatch_id=f"{RX_ID}-D1")

    assert code == "dispatch_closed"
    assert delivery.state is DeliveryState.OFFERED


def test_report_by_the_same_courier_on_an_old_attempt_is_dispatch_closed():
    delivery = offered_to("CUR-A", "CUR-A")

    assert refusal_code(delivery, "accepted", dispatch_id=f"{RX_ID}-D1") == "dispatch_closed"
    assert report(delivery, "accepted")[1] is ReportOutcome.ACCEPTED


@pytest.mark.parametrize("status", ["accepted", "picked_up", "failed"])
def test_reports_after_delivery_are_dispatch_closed(status):
    delivery = offered_to("CUR-A")
    for step in ["picked_up", "delivered"]:
        delivery, _ = report(delivery, step)

    assert refusal_code(delivery, status) == "dispatch_closed"


@pytest.mark.parametrize(
    ("steps", "status"),
    [
        ([], "delivered"),  # delivered before pickup
        (["accepted"], "delivered"),  # delivered before pickup
        (["picked_up"], "accepted"),  # going backwards
    ],
)
def test_reports_out_of_order_are_refused(steps, status):
    delivery = offered_to("CUR-A")
    for step in steps:
        delivery, _ = report(delivery, step)

    assert refusal_code(delivery, status) == "out_of_order"


def test_refusals_carry_a_human_readable_detail():
    with pytest.raises(ReportRefused, match="assigned to another courier"):
        report(offered_to("CUR-A"), "accepted", courier_id="CUR-Z")


# --- apply_report: failures --------------------------------------------------------------------------


@pytest.mark.parametrize("before", [[], ["accepted"], ["accepted", "picked_up"]], ids=["offered", "accepted", "picked"])
def test_failure_below_max_attempts_will_retry(before):
    delivery = offered_to("CUR-A")
    for step in before:
        delivery, _ = report(delivery, step)

    after, outcome = report(delivery, "failed", failure_reason="address_not_found")

    assert outcome is ReportOutcome.FAILED_WILL_RETRY
    assert after.state is DeliveryState.AWAITING_COURIER
    assert after.active_courier_id is None
    assert after.current.failure_reason == "address_not_found"
    assert len(after.attempts) == 1


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "expected"),
    [
        (1, 1, ReportOutcome.FAILED_GIVEN_UP),
        (1, 2, ReportOutcome.FAILED_WILL_RETRY),
        (2, 3, ReportOutcome.FAILED_WILL_RETRY),
        (3, 3, ReportOutcome.FAILED_GIVEN_UP),
        (3, 4, ReportOutcome.FAILED_WILL_RETRY),
    ],
)
def test_failure_gives_up_exactly_at_max_attempts(attempts, max_attempts, expected):
    couriers = [f"CUR-{n}" for n in range(attempts)]
    delivery = offered_to(*couriers)
    assert len(delivery.attempts) == attempts

    after, outcome = report(delivery, "failed", failure_reason="refused", max_attempts=max_attempts)

    assert outcome is expected
    expected_state = (
        DeliveryState.UNDELIVERABLE if expected is ReportOutcome.FAILED_GIVEN_UP else DeliveryState.AWAITING_COURIER
    )
    assert after.state is expected_state
    assert after.active_courier_id is None
    assert after.current.failure_reason == "refused"
    assert [a.failure_reason for a in after.attempts[:-1]] == ["patient_absent"] * (attempts - 1)


def test_no_report_is_acted_on_after_giving_up():
    delivery, outcome = report(offered_to("CUR-A"), "failed", max_attempts=1)
    assert outcome is ReportOutcome.FAILED_GIVEN_UP

    for status in ["accepted", "picked_up", "delivered"]:
        assert refusal_code(delivery, status) == "dispatch_closed"
