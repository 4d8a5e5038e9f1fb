"""Delivery rules: who gets the next dispatch, what a courier's report may change, deadlines, cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.courier import DispatchOffered, DispatchWithdrawn
from pharmacy_contracts.geo import great_circle_km
from services.courier.domain import (
    DEFAULT_RETRY_LIMITS,
    Attempt,
    AttemptStatus,
    CancelOutcome,
    Delivery,
    DeliveryState,
    Policy,
    ReportOutcome,
    ReportRefused,
    apply_report,
    await_courier,
    began_waiting,
    cancel,
    choose_courier,
    dispatch_id_for,
    expire_offer,
    failures,
    goods_travelled,
    mark_overdue,
    offer,
    offer_expired,
    overdue,
    ready_to_offer,
    trip_km,
    waiting_for_stock,
    why_no_courier,
    will_retry,
)
from services.courier.service import CourierService
from services.courier.settings import CourierSettings, MissingDeliveryCodeKey
from services.ops.simulation import reports_for, returned_report, wrong_code
from services.runtime.delivery_codes import delivery_code, is_right_code
from services.runtime.relay import outbox_entry
from services.runtime.store import MemoryStore
from services.runtime.unit_of_work import Record, UnitOfWork
from tests.unit.builders import RX_ID, make_courier, make_delivery, reserved

T0 = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)
ACCEPT = timedelta(minutes=15)
POLICY = Policy(
    max_attempts=3,
    retry_limits=DEFAULT_RETRY_LIMITS,
    accept_timeout=ACCEPT,
    on_the_road_deadline=timedelta(hours=24),
    courier_wait_deadline=timedelta(hours=4),
)
#: Enough attempts that a test building history never gives up by accident.
PATIENT = Policy(max_attempts=99, retry_limits={})
EPSILON = timedelta(microseconds=1)

# Bases around the example patient (Northford, 51.812 N 69.403 E) and warehouse WH-1 (51.80, 69.40).
NEAR = (51.80, 69.40)
MIDDLE = (51.32, 70.95)  # Riverton, ~120 km
FAR = (50.61, 70.02)  # Lone Poplar, ~140 km


def report(
    delivery: Delivery,
    status: str,
    *,
    courier_id: str | None = None,
    dispatch_id: str | None = None,
    failure_reason: str | None = None,
    code_is_right: bool = True,
    policy: Policy = POLICY,
    now: datetime = T0,
) -> tuple[Delivery, ReportOutcome]:
    """A report on the current dispatch by its courier, unless told otherwise. A failure defaults to
    patient_absent; a 'delivered' report carries the right code unless told otherwise."""
    current = delivery.current
    if status == "failed" and failure_reason is None:
        failure_reason = "patient_absent"
    return apply_report(
        delivery,
        dispatch_id=dispatch_id or current.dispatch_id,
        courier_id=courier_id or current.courier_id,
        status=status,
        failure_reason=failure_reason,
        code_is_right=code_is_right,
        policy=policy,
        now=now,
    )


def offer_to(delivery: Delivery, courier_id: str | None, now: datetime = T0) -> Delivery:
    return offer(delivery, None if courier_id is None else make_courier(courier_id), now=now, accept_timeout=ACCEPT)


def offered_to(*courier_ids: str) -> Delivery:
    """A delivery offered to each courier in turn, every attempt but the last failed (patient absent)."""
    delivery = make_delivery()
    for index, courier_id in enumerate(courier_ids):
        if index:
            delivery, _ = report(delivery, "failed", policy=PATIENT)
        delivery = offer_to(delivery, courier_id)
    return delivery


def walked(delivery: Delivery, *statuses: str, now: datetime = T0) -> Delivery:
    for status in statuses:
        delivery, _ = report(delivery, status, now=now)
    return delivery


def refusal_code(delivery: Delivery, status: str, **kwargs) -> str:
    with pytest.raises(ReportRefused) as refused:
        report(delivery, status, **kwargs)
    return refused.value.code


def courier_ids(roster, loads, delivery) -> str | None:
    chosen = choose_courier(roster, loads, delivery)
    return None if chosen is None else chosen.courier_id


# --- distance --------------------------------------------------------------------------------------


def km(a: Coordinates, b: Coordinates) -> float:
    return great_circle_km((a.latitude, a.longitude), (b.latitude, b.longitude))


def test_trip_is_base_to_pickup_plus_base_to_patient():
    courier = make_courier("CUR-A", base=MIDDLE)
    delivery = make_delivery()
    base = courier.location
    expected = km(base, delivery.pickup_location) + km(base, delivery.details.address.coordinates)

    assert trip_km(courier, delivery) == pytest.approx(expected)


def test_a_courier_without_a_base_is_infinitely_far():
    assert trip_km(make_courier("CUR-A", base=None), make_delivery()) == float("inf")


# --- choose_courier --------------------------------------------------------------------------------


def test_choose_courier_prefers_the_nearest():
    roster = [make_courier("CUR-A", base=FAR), make_courier("CUR-B", base=NEAR), make_courier("CUR-C", base=MIDDLE)]

    assert courier_ids(roster, {}, make_delivery()) == "CUR-B"


def failed_by(*courier_ids: str) -> list[Attempt]:
    return [
        Attempt(
            number=n,
            dispatch_id=f"{RX_ID}-D{n}",
            courier_id=courier_id,
            status=AttemptStatus.FAILED,
            failure_reason="patient_absent",
        )
        for n, courier_id in enumerate(courier_ids, start=1)
    ]


def test_after_a_failure_a_courier_who_has_not_tried_comes_first():
    roster = [make_courier("CUR-A", base=NEAR), make_courier("CUR-B", base=FAR)]

    assert courier_ids(roster, {}, make_delivery(attempts=failed_by("CUR-A"))) == "CUR-B"


def test_when_every_courier_has_tried_the_nearest_tries_again():
    roster = [make_courier("CUR-A", base=NEAR), make_courier("CUR-B", base=FAR)]

    assert courier_ids(roster, {}, make_delivery(attempts=failed_by("CUR-B", "CUR-A"))) == "CUR-A"


def test_nearest_counts_both_the_pickup_and_the_patient_leg():
    # The warehouse is east at Riverton, the patient in Northford. A courier just past the warehouse
    # is nearest to the pickup; one halfway to the patient has the shorter trip overall.
    delivery = make_delivery(pickup_location=Coordinates(latitude=51.32, longitude=70.95))
    past_the_warehouse = make_courier("CUR-A", base=(51.30, 71.25))
    halfway = make_courier("CUR-B", base=(51.56, 70.18))
    pickup = delivery.pickup_location
    assert km(past_the_warehouse.location, pickup) < km(halfway.location, pickup)

    assert courier_ids([past_the_warehouse, halfway], {}, delivery) == "CUR-B"


def test_nearness_beats_load():
    roster = [make_courier("CUR-A", base=NEAR), make_courier("CUR-B", base=FAR)]

    assert courier_ids(roster, {"CUR-A": 2, "CUR-B": 0}, make_delivery()) == "CUR-A"


def test_at_the_same_distance_the_fewest_deliveries_on_hand_wins_then_the_id():
    roster = [make_courier("CUR-C"), make_courier("CUR-A"), make_courier("CUR-B")]

    assert courier_ids(roster, {"CUR-A": 2, "CUR-B": 1, "CUR-C": 1}, make_delivery()) == "CUR-B"
    assert courier_ids(roster, {}, make_delivery()) == "CUR-A"


@pytest.mark.parametrize(
    ("load", "capacity", "eligible"),
    [(0, 1, True), (1, 1, False), (2, 3, True), (3, 3, False), (4, 3, False)],
    ids=["empty", "full-of-one", "one-slot-left", "exactly-full", "over-full"],
)
def test_a_courier_at_capacity_is_not_offered_more(load, capacity, eligible):
    roster = [make_courier("CUR-A", base=NEAR, capacity=capacity), make_courier("CUR-Z", base=FAR)]

    expected = "CUR-A" if eligible else "CUR-Z"
    assert courier_ids(roster, {"CUR-A": load}, make_delivery()) == expected


def test_a_courier_missing_from_loads_carries_nothing():
    assert courier_ids([make_courier("CUR-A", capacity=1)], {}, make_delivery()) == "CUR-A"


def test_cold_chain_goods_go_only_to_a_cold_chain_courier_even_a_farther_one():
    cold = make_delivery(details=make_delivery().details.model_copy(update={"cold_chain": True}))
    roster = [make_courier("CUR-A", base=NEAR), make_courier("CUR-B", base=FAR, cold_chain=True)]

    assert courier_ids(roster, {}, cold) == "CUR-B"
    assert courier_ids(roster[:1], {}, cold) is None


def test_ordinary_goods_may_go_to_a_cold_chain_courier():
    roster = [make_courier("CUR-A", base=FAR), make_courier("CUR-B", base=NEAR, cold_chain=True)]

    assert courier_ids(roster, {}, make_delivery()) == "CUR-B"


def test_a_full_cold_chain_courier_leaves_cold_goods_waiting():
    cold = make_delivery(details=make_delivery().details.model_copy(update={"cold_chain": True}))
    roster = [make_courier("CUR-A"), make_courier("CUR-B", cold_chain=True, capacity=2)]

    assert courier_ids(roster, {"CUR-B": 2}, cold) is None
    assert (
        why_no_courier(roster, {"CUR-B": 2}, cold)
        == "every cold-chain courier on duty is carrying as many deliveries as they can"
    )


def test_choose_courier_skips_inactive_couriers():
    roster = [make_courier("CUR-A", base=NEAR, active=False), make_courier("CUR-B", base=FAR)]

    assert courier_ids(roster, {}, make_delivery()) == "CUR-B"


def test_a_courier_who_let_the_offer_expire_is_not_asked_again():
    delivery = expire_offer(offer_to(make_delivery(), "CUR-A"), T0 + ACCEPT)
    roster = [make_courier("CUR-A", base=NEAR), make_courier("CUR-B", base=FAR)]

    assert courier_ids(roster, {}, delivery) == "CUR-B"
    assert courier_ids(roster[:1], {}, delivery) is None
    assert why_no_courier(roster[:1], {}, delivery).startswith("every suitable courier has already let")


def test_a_courier_the_patient_refused_is_not_sent_again_but_one_who_found_nobody_home_may_be():
    roster = [make_courier("CUR-A", base=NEAR), make_courier("CUR-B", base=FAR)]
    absent, _ = report(offer_to(make_delivery(), "CUR-A"), "failed", failure_reason="patient_absent", policy=PATIENT)
    refused, _ = report(offer_to(make_delivery(), "CUR-A"), "failed", failure_reason="refused", policy=PATIENT)

    assert courier_ids(roster, {}, absent) == "CUR-B"  # someone who has not tried comes first
    assert courier_ids(roster[:1], {}, absent) == "CUR-A"  # ... but the only courier may try again
    assert courier_ids(roster, {}, refused) == "CUR-B"
    assert choose_courier(roster[:1], {}, refused) is None  # never back to a patient who refused them


def test_a_courier_with_an_unknown_base_comes_last_but_still_comes():
    roster = [make_courier("CUR-A", base=None), make_courier("CUR-B", base=FAR)]

    assert courier_ids(roster, {}, make_delivery()) == "CUR-B"
    assert courier_ids(roster[:1], {}, make_delivery()) == "CUR-A"


@pytest.mark.parametrize(
    ("roster", "why"),
    [
        ([], "no courier is on duty"),
        ([make_courier("CUR-A", active=False)], "no courier is on duty"),
        ([make_courier("CUR-A", capacity=1)], "every courier on duty is carrying as many deliveries as they can"),
    ],
    ids=["empty-roster", "all-inactive", "all-full"],
)
def test_choose_courier_is_none_without_an_eligible_courier(roster, why):
    assert choose_courier(roster, {"CUR-A": 1}, make_delivery()) is None
    assert why_no_courier(roster, {"CUR-A": 1}, make_delivery()) == why


def test_no_cold_chain_courier_on_duty_is_said_so():
    cold = make_delivery(details=make_delivery().details.model_copy(update={"cold_chain": True}))

    assert why_no_courier([make_courier("CUR-A")], {}, cold) == "no cold-chain courier is on duty"


def test_choose_courier_accepts_any_iterables():
    roster = (make_courier(i) for i in ["CUR-B", "CUR-A"])

    assert courier_ids(roster, {}, make_delivery()) == "CUR-A"


# --- offer ---------------------------------------------------------------------------------------


def test_dispatch_ids_are_deterministic():
    assert dispatch_id_for("RX-9", 1) == "RX-9-D1"
    assert dispatch_id_for("RX-9", 2) == "RX-9-D2"


def test_offer_creates_the_first_attempt_with_its_acceptance_deadline():
    delivery = offer_to(make_delivery(), "CUR-A")

    assert delivery.state is DeliveryState.OFFERED
    assert delivery.active_courier_id == "CUR-A"
    assert delivery.attempts == [
        Attempt(number=1, dispatch_id=f"{RX_ID}-D1", courier_id="CUR-A", offered_at=T0, accept_by=T0 + ACCEPT)
    ]
    assert delivery.current.status is AttemptStatus.OFFERED


def test_an_offer_is_determined_by_the_delivery_and_the_courier():
    """Two workers offering the same delivery state compute the same dispatch (id, attempt, times).
    An already-offered delivery asked again gets no second offer: that is the decision's rule,
    proved in tests/integration/test_courier_service.py
    (`test_a_delivery_requested_again_after_its_offer_gets_no_second_dispatch`)."""
    assert offer_to(make_delivery(), "CUR-A") == offer_to(make_delivery(), "CUR-A")


def test_a_second_offer_after_a_failure_is_attempt_two():
    delivery = offered_to("CUR-A", "CUR-B")

    assert [(a.number, a.dispatch_id, a.courier_id, a.status) for a in delivery.attempts] == [
        (1, f"{RX_ID}-D1", "CUR-A", AttemptStatus.FAILED),
        (2, f"{RX_ID}-D2", "CUR-B", AttemptStatus.OFFERED),
    ]
    assert delivery.attempts[0].failure_reason == "patient_absent"


def test_an_offer_after_an_expired_one_takes_the_next_number():
    delivery = offer_to(expire_offer(offer_to(make_delivery(), "CUR-A"), T0 + ACCEPT), "CUR-B", T0 + ACCEPT)

    assert [(a.dispatch_id, a.status) for a in delivery.attempts] == [
        (f"{RX_ID}-D1", AttemptStatus.TIMED_OUT),
        (f"{RX_ID}-D2", AttemptStatus.OFFERED),
    ]


def test_offer_without_a_courier_starts_a_wait_once():
    first = offer_to(make_delivery(), None, T0)
    still = offer_to(first, None, T0 + timedelta(hours=1))

    assert first.state is DeliveryState.AWAITING_COURIER
    assert first.attempts == [] and first.active_courier_id is None
    assert first.awaiting_since == T0
    assert began_waiting(make_delivery(), first) is True
    assert still.awaiting_since == T0, "the same wait keeps its start"
    assert began_waiting(first, still) is False


def test_an_offer_ends_the_wait_and_a_later_wait_is_a_new_one():
    waited = offer_to(make_delivery(), None, T0)
    offered = offer_to(waited, "CUR-A", T0 + timedelta(minutes=5))
    again, _ = report(offered, "failed", now=T0 + timedelta(hours=2))

    assert offered.awaiting_since is None
    assert again.awaiting_since == T0 + timedelta(hours=2)
    assert began_waiting(offered, again) is True


def test_await_courier_resets_the_waiting_alert_for_a_new_wait_only():
    alerted = mark_overdue(offer_to(make_delivery(), None, T0), "awaiting_courier")

    assert await_courier(alerted, T0 + timedelta(hours=9)) == alerted
    assert await_courier(make_delivery(), T0).waiting_overdue_alerted is False


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

    delivery, outcome = report(delivery, "accepted", now=T0 + timedelta(minutes=1))
    assert (delivery.state, outcome, delivery.active_courier_id) == (
        DeliveryState.ACCEPTED,
        ReportOutcome.ACCEPTED,
        "CUR-A",
    )
    assert delivery.current.accepted_at == T0 + timedelta(minutes=1)

    delivery, outcome = report(delivery, "picked_up", now=T0 + timedelta(minutes=30))
    assert (delivery.state, outcome, delivery.active_courier_id) == (
        DeliveryState.PICKED_UP,
        ReportOutcome.PICKED_UP,
        "CUR-A",
    )
    assert delivery.current.picked_up_at == T0 + timedelta(minutes=30)
    assert delivery.current.accepted_at == T0 + timedelta(minutes=1)

    delivery, outcome = report(delivery, "delivered")
    assert (delivery.state, outcome, delivery.active_courier_id) == (
        DeliveryState.DELIVERED,
        ReportOutcome.DELIVERED,
        None,
    )
    assert delivery.current.status is AttemptStatus.DELIVERED


def test_picked_up_without_a_separate_accept_is_allowed_and_counts_as_accepted():
    delivery, outcome = report(offered_to("CUR-A"), "picked_up", now=T0 + timedelta(minutes=3))

    assert (delivery.state, outcome) == (DeliveryState.PICKED_UP, ReportOutcome.PICKED_UP)
    assert delivery.current.accepted_at == delivery.current.picked_up_at == T0 + timedelta(minutes=3)


def test_acceptance_is_decided_by_the_state_not_the_clock():
    # An acceptance that reaches us after accept_by but before the sweep withdrew the offer counts.
    delivery, outcome = report(offered_to("CUR-A"), "accepted", now=T0 + ACCEPT + timedelta(minutes=1))

    assert (delivery.state, outcome) == (DeliveryState.ACCEPTED, ReportOutcome.ACCEPTED)


def test_apply_report_does_not_change_the_delivery_it_was_given():
    delivery = offered_to("CUR-A")

    report(delivery, "accepted")

    assert delivery.state is DeliveryState.OFFERED


# --- apply_report: the delivery code ---------------------------------------------------------------


def test_a_wrong_code_changes_nothing_but_the_wrong_code_count():
    picked = walked(offered_to("CUR-A"), "accepted", "picked_up")

    once, outcome = report(picked, "delivered", code_is_right=False)

    assert outcome is ReportOutcome.CODE_REJECTED
    assert once.state is DeliveryState.PICKED_UP
    assert once.active_courier_id == "CUR-A"
    assert once.current.wrong_codes == 1
    assert once.model_copy(update={"attempts": picked.attempts}) == picked


def test_every_wrong_code_counts_then_the_right_code_delivers():
    delivery = walked(offered_to("CUR-A"), "picked_up")
    for expected in (1, 2):
        delivery, outcome = report(delivery, "delivered", code_is_right=False)
        assert (outcome, delivery.current.wrong_codes) == (ReportOutcome.CODE_REJECTED, expected)

    delivered, outcome = report(delivery, "delivered", code_is_right=True)

    assert (delivered.state, outcome) == (DeliveryState.DELIVERED, ReportOutcome.DELIVERED)
    assert delivered.current.wrong_codes == 2


def test_a_wrong_code_before_pickup_is_out_of_order_not_counted():
    assert refusal_code(offered_to("CUR-A"), "delivered", code_is_right=False) == "out_of_order"


def test_a_code_after_delivery_is_a_repeat():
    delivered = walked(offered_to("CUR-A"), "picked_up", "delivered")

    again, outcome = report(delivered, "delivered", code_is_right=False)

    assert (again, outcome) == (delivered, ReportOutcome.IGNORED)


def wrong_codes(delivery: Delivery, count: int, policy: Policy = POLICY) -> tuple[Delivery, list[ReportOutcome]]:
    outcomes = []
    for _ in range(count):
        delivery, outcome = report(delivery, "delivered", code_is_right=False, policy=policy)
        outcomes.append(outcome)
    return delivery, outcomes


def test_the_fourth_wrong_code_is_refused_and_the_right_code_still_delivers():
    picked = walked(offered_to("CUR-A"), "picked_up")

    four, outcomes = wrong_codes(picked, 4)

    assert outcomes == [ReportOutcome.CODE_REJECTED] * 4
    assert (four.current.wrong_codes, four.current.code_locked) == (4, False)
    assert report(four, "delivered", code_is_right=True)[1] is ReportOutcome.DELIVERED


def test_the_fifth_wrong_code_locks_the_attempt():
    picked = walked(offered_to("CUR-A"), "picked_up")

    locked, outcomes = wrong_codes(picked, 5)

    assert outcomes[-1] is ReportOutcome.CODE_LOCKED
    assert (locked.current.wrong_codes, locked.current.code_locked) == (5, True)
    assert (locked.state, locked.active_courier_id) == (DeliveryState.PICKED_UP, "CUR-A"), "the goods are still out"
    for right in (False, True):
        assert refusal_code(locked, "delivered", code_is_right=right) == "code_locked"
    with pytest.raises(ReportRefused, match="5 wrong codes were reported"):
        report(locked, "delivered")


def test_a_locked_attempt_can_still_be_reported_failed_and_the_next_attempt_takes_codes_again():
    locked, _ = wrong_codes(walked(offered_to("CUR-A"), "picked_up"), 5)

    failed, outcome = report(locked, "failed", failure_reason="other")
    retry = walked(offer_to(failed, "CUR-B"), "picked_up")

    assert outcome is ReportOutcome.FAILED_WILL_RETRY
    assert report(retry, "delivered", code_is_right=False)[1] is ReportOutcome.CODE_REJECTED
    assert report(retry, "delivered")[1] is ReportOutcome.DELIVERED


@pytest.mark.parametrize(("limit", "wrong", "locked"), [(1, 1, True), (3, 2, False), (3, 3, True)])
def test_the_wrong_code_limit_is_a_policy(limit, wrong, locked):
    policy = Policy(max_wrong_codes=limit)

    after, outcomes = wrong_codes(walked(offered_to("CUR-A"), "picked_up"), wrong, policy)

    assert after.current.code_locked is locked
    assert outcomes[-1] is (ReportOutcome.CODE_LOCKED if locked else ReportOutcome.CODE_REJECTED)


# --- apply_report: repeats are ignored ----------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "repeat"),
    [
        (["accepted"], "accepted"),
        (["accepted", "picked_up"], "picked_up"),
        (["picked_up"], "picked_up"),
        (["picked_up", "delivered"], "delivered"),
    ],
)
def test_a_repeat_report_is_ignored(steps, repeat):
    delivery = walked(offered_to("CUR-A"), *steps)

    again, outcome = report(delivery, repeat, now=T0 + timedelta(hours=1))

    assert outcome is ReportOutcome.IGNORED
    assert again == delivery


def test_a_repeat_failed_report_is_ignored_not_counted_as_another_failure():
    delivery, outcome = report(offered_to("CUR-A"), "failed")
    assert (delivery.state, outcome) == (DeliveryState.AWAITING_COURIER, ReportOutcome.FAILED_WILL_RETRY)

    again, outcome = report(delivery, "failed")

    assert outcome is ReportOutcome.IGNORED
    assert again == delivery


# --- apply_report: refusals ------------------------------------------------------------------------


def test_report_on_a_delivery_never_offered_is_an_unknown_dispatch():
    assert refusal_code(make_delivery(), "accepted", dispatch_id=f"{RX_ID}-D1", courier_id="CUR-A") == (
        "unknown_dispatch"
    )


def test_report_on_a_dispatch_this_delivery_never_had_is_an_unknown_dispatch():
    assert refusal_code(offered_to("CUR-A"), "accepted", dispatch_id=f"{RX_ID}-D7") == "unknown_dispatch"


def test_report_by_another_courier_is_not_your_dispatch():
    assert refusal_code(offered_to("CUR-A"), "accepted", courier_id="CUR-B") == "not_your_dispatch"


def test_report_by_the_new_courier_on_the_old_couriers_dispatch_is_not_your_dispatch():
    code = refusal_code(offered_to("CUR-A", "CUR-B"), "picked_up", courier_id="CUR-B", dispatch_id=f"{RX_ID}-D1")

    assert code == "not_your_dispatch"


@pytest.mark.parametrize("status", ["accepted", "picked_up", "delivered", "failed", "returned"])
def test_report_on_an_old_attempt_is_dispatch_closed(status):
    delivery = offered_to("CUR-A", "CUR-B")

    assert refusal_code(delivery, status, courier_id="CUR-A", dispatch_id=f"{RX_ID}-D1") == "dispatch_closed"


def test_report_by_the_same_courier_on_an_old_attempt_is_dispatch_closed():
    delivery = offered_to("CUR-A", "CUR-A")

    assert refusal_code(delivery, "accepted", dispatch_id=f"{RX_ID}-D1") == "dispatch_closed"
    assert report(delivery, "accepted")[1] is ReportOutcome.ACCEPTED


@pytest.mark.parametrize("status", ["accepted", "picked_up", "failed"])
def test_reports_after_delivery_are_dispatch_closed(status):
    assert refusal_code(walked(offered_to("CUR-A"), "picked_up", "delivered"), status) == "dispatch_closed"


@pytest.mark.parametrize(
    ("steps", "status"),
    [
        ([], "delivered"),  # delivered before pickup
        (["accepted"], "delivered"),  # delivered before pickup
        (["picked_up"], "accepted"),  # going backwards
        (["picked_up"], "returned"),  # nobody asked for the goods back
    ],
)
def test_reports_out_of_order_are_refused(steps, status):
    assert refusal_code(walked(offered_to("CUR-A"), *steps), status) == "out_of_order"


def test_refusals_carry_a_human_readable_detail():
    with pytest.raises(ReportRefused, match="assigned to another courier"):
        report(offered_to("CUR-A"), "accepted", courier_id="CUR-Z")


# --- failures and the retry policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "failures", "expected"),
    [
        ("patient_absent", 2, True),
        ("patient_absent", 3, False),
        ("address_not_found", 1, True),
        ("address_not_found", 2, False),
        ("refused", 1, False),
        ("damaged", 1, True),  # packed again once
        ("damaged", 2, False),
        ("other", 2, True),
        ("other", 3, False),
    ],
)
def test_will_retry_per_reason_up_to_its_limit(reason, failures, expected):
    assert will_retry(failures, reason, POLICY) is expected


@pytest.mark.parametrize(("failures", "expected"), [(1, True), (2, False), (3, False)])
def test_max_attempts_caps_every_reason(failures, expected):
    capped = Policy(max_attempts=2, retry_limits=DEFAULT_RETRY_LIMITS)

    assert will_retry(failures, "patient_absent", capped) is expected


def test_a_reason_without_a_limit_gets_max_attempts():
    policy = Policy(max_attempts=2, retry_limits={"refused": 1})

    assert will_retry(1, "damaged", policy) is True
    assert will_retry(2, "damaged", policy) is False


@pytest.mark.parametrize("before", [[], ["accepted"], ["accepted", "picked_up"]], ids=["offered", "accepted", "picked"])
def test_a_failure_below_the_limit_will_retry(before):
    delivery = walked(offered_to("CUR-A"), *before)

    after, outcome = report(delivery, "failed", failure_reason="address_not_found", now=T0 + timedelta(hours=1))

    assert outcome is ReportOutcome.FAILED_WILL_RETRY
    assert after.state is DeliveryState.AWAITING_COURIER
    assert after.active_courier_id is None
    assert after.awaiting_since == T0 + timedelta(hours=1)
    assert (after.current.status, after.current.failure_reason) == (AttemptStatus.FAILED, "address_not_found")


@pytest.mark.parametrize(("reason", "attempts"), [("refused", 1), ("damaged", 2), ("address_not_found", 2)])
def test_a_failure_at_the_limit_of_its_reason_gives_up(reason, attempts):
    delivery = offered_to(*[f"CUR-{n}" for n in range(attempts)])

    after, outcome = report(delivery, "failed", failure_reason=reason)

    assert outcome is ReportOutcome.FAILED_GIVEN_UP
    assert after.state is DeliveryState.UNDELIVERABLE
    assert after.active_courier_id is None
    assert failures(after) == attempts


def test_the_latest_failures_reason_decides():
    # Two absent patients (limit 3), then an address nobody finds (limit 2): three failures are over 2.
    delivery = offered_to("CUR-A", "CUR-B", "CUR-C")

    assert report(delivery, "failed", failure_reason="address_not_found")[1] is ReportOutcome.FAILED_GIVEN_UP
    assert report(delivery, "failed", failure_reason="patient_absent")[1] is ReportOutcome.FAILED_GIVEN_UP
    two = offered_to("CUR-A", "CUR-B")
    assert report(two, "failed", failure_reason="patient_absent")[1] is ReportOutcome.FAILED_WILL_RETRY
    assert report(two, "failed", failure_reason="address_not_found")[1] is ReportOutcome.FAILED_GIVEN_UP


def test_expired_offers_are_not_failures():
    delivery = make_delivery()
    for courier_id in ("CUR-A", "CUR-B", "CUR-C"):
        delivery = expire_offer(offer_to(delivery, courier_id), T0 + ACCEPT)
    delivery = offer_to(delivery, "CUR-D")

    after, outcome = report(delivery, "failed", failure_reason="address_not_found")

    assert failures(after) == 1
    assert outcome is ReportOutcome.FAILED_WILL_RETRY


def test_goods_travelled_once_any_attempt_picked_them_up():
    first = walked(offered_to("CUR-A"), "picked_up")
    back, _ = report(first, "failed")
    second = offer_to(back, "CUR-B")

    assert goods_travelled(offered_to("CUR-A", "CUR-B")) is False
    assert goods_travelled(second) is True


def test_no_report_is_acted_on_after_giving_up():
    delivery, outcome = report(offered_to("CUR-A"), "failed", failure_reason="refused")
    assert outcome is ReportOutcome.FAILED_GIVEN_UP

    for status in ["accepted", "picked_up", "delivered"]:
        assert refusal_code(delivery, status) == "dispatch_closed"


# --- the acceptance deadline --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after_offer", "expired"),
    [(ACCEPT - EPSILON, False), (ACCEPT, True), (ACCEPT + EPSILON, True)],
    ids=["just-before", "exactly-at-accept-by", "just-after"],
)
def test_an_offer_expires_exactly_at_accept_by(after_offer, expired):
    assert offer_expired(offer_to(make_delivery(), "CUR-A"), T0 + after_offer) is expired


@pytest.mark.parametrize("steps", [["accepted"], ["picked_up"]])
def test_an_accepted_offer_never_expires(steps):
    assert offer_expired(walked(offered_to("CUR-A"), *steps), T0 + timedelta(days=3)) is False


def test_an_expired_offer_times_out_and_the_delivery_waits_for_the_next_courier():
    late = T0 + ACCEPT

    expired = expire_offer(offer_to(make_delivery(), "CUR-A"), late)

    assert expired.state is DeliveryState.AWAITING_COURIER
    assert expired.active_courier_id is None
    assert expired.awaiting_since == late
    assert expired.current.status is AttemptStatus.TIMED_OUT
    assert offer_expired(expired, late) is False


def test_a_report_on_an_expired_offer_is_refused():
    expired = expire_offer(offer_to(make_delivery(), "CUR-A"), T0 + ACCEPT)
    reoffered = offer_to(expired, "CUR-B", T0 + ACCEPT)

    assert refusal_code(expired, "accepted") == "offer_expired"
    assert refusal_code(reoffered, "accepted", courier_id="CUR-A", dispatch_id=f"{RX_ID}-D1") == "offer_expired"


# --- deadlines on the road and while waiting ------------------------------------------------------------------

DAY = timedelta(hours=24)
FOUR_HOURS = timedelta(hours=4)


@pytest.mark.parametrize(
    ("elapsed", "due"), [(DAY - EPSILON, False), (DAY, True), (DAY + EPSILON, True)], ids=["before", "at", "after"]
)
def test_on_the_road_deadline_from_acceptance(elapsed, due):
    delivery = walked(offered_to("CUR-A"), "accepted", now=T0)

    expected = ("on_the_road", T0) if due else None
    assert overdue(delivery, T0 + elapsed, POLICY) == expected


def test_on_the_road_counts_from_pickup_when_never_accepted_separately():
    delivery = walked(offered_to("CUR-A"), "picked_up", now=T0 + timedelta(hours=1))

    assert overdue(delivery, T0 + DAY, POLICY) is None
    assert overdue(delivery, T0 + timedelta(hours=1) + DAY, POLICY) == ("on_the_road", T0 + timedelta(hours=1))


def test_on_the_road_is_alerted_once_per_attempt():
    delivery = walked(offered_to("CUR-A"), "accepted")
    alerted = mark_overdue(delivery, "on_the_road")

    assert overdue(alerted, T0 + 3 * DAY, POLICY) is None
    failed, _ = report(alerted, "failed", now=T0 + 2 * DAY)
    again = walked(offer_to(failed, "CUR-B", T0 + 2 * DAY), "accepted", now=T0 + 2 * DAY)
    assert overdue(again, T0 + 3 * DAY, POLICY) == ("on_the_road", T0 + 2 * DAY)


def test_an_offer_not_yet_accepted_has_no_road_deadline():
    assert overdue(offered_to("CUR-A"), T0 + 3 * DAY, POLICY) is None


def test_goods_coming_back_are_still_on_the_road():
    returning, _ = cancel(walked(offered_to("CUR-A"), "picked_up"))

    assert overdue(returning, T0 + DAY, POLICY) == ("on_the_road", T0)


@pytest.mark.parametrize(
    ("elapsed", "due"),
    [(FOUR_HOURS - EPSILON, False), (FOUR_HOURS, True), (FOUR_HOURS + EPSILON, True)],
    ids=["before", "at", "after"],
)
def test_waiting_for_a_courier_deadline(elapsed, due):
    waiting = offer_to(make_delivery(), None, T0)

    expected = ("awaiting_courier", T0) if due else None
    assert overdue(waiting, T0 + elapsed, POLICY) == expected


def test_waiting_is_alerted_once_per_wait():
    waiting = mark_overdue(offer_to(make_delivery(), None, T0), "awaiting_courier")
    assert overdue(offer_to(waiting, None, T0 + DAY), T0 + DAY, POLICY) is None

    failed, _ = report(offer_to(waiting, "CUR-A", T0 + DAY), "failed", now=T0 + DAY)

    assert overdue(failed, T0 + DAY + FOUR_HOURS, POLICY) == ("awaiting_courier", T0 + DAY)


def approved_without_stock(at: datetime = T0) -> Delivery:
    return make_delivery(warehouse_id=None, pickup_location=None, details_at=at)


@pytest.mark.parametrize(
    ("elapsed", "due"),
    [(FOUR_HOURS - EPSILON, False), (FOUR_HOURS, True), (FOUR_HOURS + EPSILON, True)],
    ids=["before", "at", "after"],
)
def test_waiting_for_the_stock_after_approval_has_the_courier_wait_deadline(elapsed, due):
    delivery = approved_without_stock()

    assert waiting_for_stock(delivery) is True
    expected = ("awaiting_stock", T0) if due else None
    assert overdue(delivery, T0 + elapsed, POLICY) == expected


def test_waiting_for_the_stock_is_alerted_once():
    alerted = mark_overdue(approved_without_stock(), "awaiting_stock")

    assert alerted.stock_overdue_alerted is True
    assert overdue(alerted, T0 + 10 * DAY, POLICY) is None


@pytest.mark.parametrize(
    "delivery",
    [
        make_delivery(details_at=T0),  # the reservation came: waiting for nothing
        make_delivery(warehouse_id=None, details=None),  # not approved yet: nothing promised
        make_delivery(warehouse_id=None),  # stored before details_at existed
        make_delivery(warehouse_id=None, details_at=T0, state=DeliveryState.CANCELLED),
    ],
    ids=["reserved", "not-approved", "older-document", "cancelled"],
)
def test_only_an_approved_delivery_without_its_reservation_waits_for_stock(delivery):
    assert waiting_for_stock(delivery) is False
    assert overdue(delivery, T0 + 10 * DAY, POLICY) is None


@pytest.mark.parametrize("state", [DeliveryState.DELIVERED, DeliveryState.CANCELLED, DeliveryState.WAITING])
def test_closed_or_unready_deliveries_have_no_deadline(state):
    assert overdue(make_delivery(state=state), T0 + 10 * DAY, POLICY) is None


# --- cancellation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [DeliveryState.WAITING, DeliveryState.AWAITING_COURIER])
def test_cancelling_before_any_courier_closes_the_delivery(state):
    after, outcome = cancel(make_delivery(state=state, awaiting_since=T0))

    assert outcome is CancelOutcome.CANCELLED
    assert after.state is DeliveryState.CANCELLED
    assert after.awaiting_since is None
    assert after.cancel_notice_due is False, "the warehouse is known: the notice goes out now"


def test_cancelling_before_the_reservation_leaves_the_notice_for_the_warehouse():
    after, outcome = cancel(make_delivery(warehouse_id=None))

    assert (after.state, outcome, after.cancel_notice_due) == (DeliveryState.CANCELLED, CancelOutcome.CANCELLED, True)
    assert ready_to_offer(after.model_copy(update={"warehouse_id": "WH-1"})) is False


def test_cancelling_an_offer_not_yet_accepted_withdraws_the_dispatch_and_frees_the_courier():
    after, outcome = cancel(offered_to("CUR-A"))

    assert outcome is CancelOutcome.WITHDRAWN
    assert after.state is DeliveryState.CANCELLED
    assert after.active_courier_id is None
    assert after.current.status is AttemptStatus.WITHDRAWN
    assert refusal_code(after, "picked_up") == "dispatch_closed"


def test_cancelling_after_pickup_recalls_the_goods_until_they_are_returned():
    picked = walked(offered_to("CUR-A"), "accepted", "picked_up")

    returning, outcome = cancel(picked)

    assert outcome is CancelOutcome.RECALLED
    assert returning.state is DeliveryState.RETURNING
    assert returning.active_courier_id == "CUR-A", "the courier still carries the goods"
    assert returning.current.status is AttemptStatus.WITHDRAWN
    for status in ["failed", "accepted"]:
        assert refusal_code(returning, status) == "dispatch_withdrawn"
    assert report(returning, "picked_up") == (returning, ReportOutcome.IGNORED), "a repeat of the pickup"

    back, outcome = report(returning, "returned", now=T0 + timedelta(hours=2))

    assert outcome is ReportOutcome.RETURNED
    assert back.state is DeliveryState.CANCELLED
    assert back.active_courier_id is None
    assert back.current.returned_at == T0 + timedelta(hours=2)
    assert report(back, "returned") == (back, ReportOutcome.IGNORED)


def test_cancelling_after_acceptance_recalls_the_courier_who_may_already_hold_the_goods():
    accepted = walked(offered_to("CUR-A"), "accepted")

    returning, outcome = cancel(accepted)

    assert outcome is CancelOutcome.RECALLED
    assert returning.state is DeliveryState.RETURNING
    assert returning.active_courier_id == "CUR-A", "counted against the courier until they confirm"
    assert returning.current.status is AttemptStatus.WITHDRAWN
    assert goods_travelled(returning) is False


def test_a_recalled_courier_who_never_picked_up_confirms_and_nothing_travelled():
    returning, _ = cancel(walked(offered_to("CUR-A"), "accepted"))

    back, outcome = report(returning, "returned", now=T0 + timedelta(minutes=30))

    assert outcome is ReportOutcome.RETURNED
    assert (back.state, back.active_courier_id) == (DeliveryState.CANCELLED, None)
    assert goods_travelled(back) is False, "the stock goes back on the shelf"


def test_a_pickup_reported_after_the_cancellation_counts_and_the_goods_come_back():
    """The courier picked up before the recall reached them: cancel first, then 'picked_up'."""
    returning, _ = cancel(walked(offered_to("CUR-A"), "accepted"))

    taken, outcome = report(returning, "picked_up", now=T0 + timedelta(minutes=5))

    assert outcome is ReportOutcome.PICKED_UP
    assert taken.state is DeliveryState.RETURNING, "still recalled"
    assert taken.current.picked_up_at == T0 + timedelta(minutes=5)
    assert goods_travelled(taken) is True
    assert report(taken, "picked_up") == (taken, ReportOutcome.IGNORED)
    back, outcome = report(taken, "returned")
    assert (back.state, outcome) == (DeliveryState.CANCELLED, ReportOutcome.RETURNED)
    assert goods_travelled(back) is True, "the goods travelled: quarantine"


def test_a_pickup_reported_before_the_cancellation_ends_the_same_way():
    """The other order of arrival: 'picked_up', then the cancellation."""
    picked = walked(offered_to("CUR-A"), "accepted", "picked_up")

    returning, outcome = cancel(picked)
    back, _ = report(returning, "returned")

    assert outcome is CancelOutcome.RECALLED
    assert (back.state, goods_travelled(back)) == (DeliveryState.CANCELLED, True)


def test_a_pickup_after_an_unaccepted_offer_was_withdrawn_is_refused():
    withdrawn, _ = cancel(offered_to("CUR-A"))

    assert refusal_code(withdrawn, "picked_up") == "dispatch_closed"


def test_a_delivery_made_before_the_recall_arrived_counts():
    returning, _ = cancel(walked(offered_to("CUR-A"), "accepted", "picked_up"))

    delivered, outcome = report(returning, "delivered", code_is_right=True)

    assert outcome is ReportOutcome.DELIVERED
    assert (delivered.state, delivered.active_courier_id) == (DeliveryState.DELIVERED, None)
    assert delivered.current.status is AttemptStatus.DELIVERED
    assert report(delivered, "delivered") == (delivered, ReportOutcome.IGNORED)
    assert refusal_code(delivered, "returned") == "dispatch_closed"
    assert cancel(delivered) == (delivered, CancelOutcome.TOO_LATE)


def test_wrong_codes_while_returning_count_and_lock_like_any_other():
    returning, _ = cancel(walked(offered_to("CUR-A"), "picked_up"))

    once, outcome = report(returning, "delivered", code_is_right=False)
    locked, outcomes = wrong_codes(once, 4)

    assert outcome is ReportOutcome.CODE_REJECTED
    assert once.state is DeliveryState.RETURNING
    assert outcomes[-1] is ReportOutcome.CODE_LOCKED
    assert refusal_code(locked, "delivered") == "code_locked"
    assert report(locked, "returned")[1] is ReportOutcome.RETURNED


def test_a_delivery_while_returning_needs_the_goods_to_have_been_picked_up():
    returning, _ = cancel(walked(offered_to("CUR-A"), "accepted"))

    assert refusal_code(returning, "delivered") == "out_of_order"


def test_goods_that_came_back_from_a_failed_attempt_still_travelled_when_cancelled():
    failed, _ = report(walked(offered_to("CUR-A"), "picked_up"), "failed")

    cancelled, outcome = cancel(failed)

    assert (cancelled.state, outcome) == (DeliveryState.CANCELLED, CancelOutcome.CANCELLED)
    assert goods_travelled(cancelled) is True


@pytest.mark.parametrize(
    ("steps", "outcome"),
    [
        (["picked_up", "delivered"], CancelOutcome.TOO_LATE),
        (["failed-refused"], CancelOutcome.TOO_LATE),
    ],
    ids=["delivered", "undeliverable"],
)
def test_too_late_to_cancel(steps, outcome):
    delivery = offered_to("CUR-A")
    for step in steps:
        if step == "failed-refused":
            delivery, _ = report(delivery, "failed", failure_reason="refused")
        else:
            delivery, _ = report(delivery, step)

    assert cancel(delivery) == (delivery, outcome)


def test_cancelling_twice_changes_nothing():
    cancelled, _ = cancel(make_delivery())
    returning, _ = cancel(walked(offered_to("CUR-A"), "picked_up"))

    assert cancel(cancelled) == (cancelled, CancelOutcome.ALREADY)
    assert cancel(returning) == (returning, CancelOutcome.ALREADY)


# --- settings ----------------------------------------------------------------------------------------------------


def test_settings_defaults_make_the_policy(monkeypatch):
    monkeypatch.delenv("PHARMACY_RETRY_LIMITS", raising=False)
    policy = CourierSettings().policy()

    assert policy.retry_limits == DEFAULT_RETRY_LIMITS
    assert (policy.max_attempts, policy.accept_timeout) == (3, timedelta(minutes=15))
    assert (policy.on_the_road_deadline, policy.courier_wait_deadline) == (timedelta(hours=24), timedelta(hours=4))
    assert policy.max_wrong_codes == 5


def test_the_wrong_code_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PHARMACY_MAX_WRONG_CODES", "3")

    assert CourierSettings().policy().max_wrong_codes == 3


def test_retry_limits_come_from_json(monkeypatch):
    monkeypatch.setenv("PHARMACY_RETRY_LIMITS", '{"patient_absent": 5, "refused": 2}')

    assert CourierSettings().policy().retry_limits == {"patient_absent": 5, "refused": 2}


@pytest.mark.parametrize("limits", ['{"lost_in_space": 2}', '{"refused": 0}'])
def test_retry_limits_refuse_unknown_reasons_and_zero(monkeypatch, limits):
    monkeypatch.setenv("PHARMACY_RETRY_LIMITS", limits)

    with pytest.raises(ValueError):
        CourierSettings()


def test_the_delivery_code_key_is_required_with_a_clear_message(monkeypatch):
    monkeypatch.delenv("PHARMACY_DELIVERY_CODE_KEY", raising=False)

    with pytest.raises(MissingDeliveryCodeKey, match="PHARMACY_DELIVERY_CODE_KEY is not set"):
        CourierSettings().delivery_code_secret()
    assert CourierSettings(delivery_code_key="k3y").delivery_code_secret() == b"k3y"


# --- the simulated couriers and patients ------------------------------------------------------------------------

KEY = b"test-delivery-code-key"


def dispatch() -> DispatchOffered:
    details = make_delivery().details
    return DispatchOffered(
        correlation_id=RX_ID,
        producer="courier",
        dispatch_id=f"{RX_ID}-D1",
        courier_id="CUR-A",
        package_id=RX_ID,
        attempt=1,
        pickup_warehouse_id="WH-1",
        address=details.address,
        contact_phone=details.contact_phone,
        cold_chain=False,
        controlled=False,
    )


def statuses_and_codes(plan: str) -> list[tuple[str, str | None]]:
    return [(r.status, r.delivery_code) for r in reports_for(dispatch(), plan, code_key=KEY)]


def test_simulated_patients_read_out_the_right_code():
    right = delivery_code(KEY, RX_ID)

    assert statuses_and_codes("deliver") == [("accepted", None), ("picked_up", None), ("delivered", right)]
    assert is_right_code(KEY, RX_ID, right)


def test_the_wrong_code_plan_misreads_once_then_reads_right():
    right = delivery_code(KEY, RX_ID)

    (_, _, (_, misread), last) = statuses_and_codes("wrong-code")

    assert not is_right_code(KEY, RX_ID, misread)
    assert last == ("delivered", right)
    assert wrong_code("999999") == "000000"


def test_plans_that_wait():
    assert statuses_and_codes("ignore") == []
    assert statuses_and_codes("hold-after-pickup") == [("accepted", None), ("picked_up", None)]
    assert statuses_and_codes("fail:refused") == [("accepted", None), ("failed", None)]
    with pytest.raises(ValueError, match="delivery code key"):
        reports_for(dispatch(), "deliver", code_key=None)


def test_a_courier_asked_to_bring_the_goods_back_reports_returned():
    withdrawn = DispatchWithdrawn(
        correlation_id=RX_ID,
        producer="courier",
        dispatch_id=f"{RX_ID}-D1",
        courier_id="CUR-A",
        package_id=RX_ID,
        reason="cancelled",
        return_goods=True,
    )

    back = returned_report(withdrawn)

    assert (back.status, back.dispatch_id, back.courier_id, back.package_id) == (
        "returned",
        f"{RX_ID}-D1",
        "CUR-A",
        RX_ID,
    )


def test_documents_written_before_attempt_statuses_still_count_their_failures():
    stored = {
        "prescription_id": RX_ID,
        "state": "delivered",
        "attempts": [
            {"number": 1, "dispatch_id": f"{RX_ID}-D1", "courier_id": "CUR-A", "failure_reason": "patient_absent"},
            {"number": 2, "dispatch_id": f"{RX_ID}-D2", "courier_id": "CUR-B"},
        ],
    }

    delivery = Delivery.model_validate(stored)

    assert [a.status for a in delivery.attempts] == [AttemptStatus.FAILED, AttemptStatus.DELIVERED]
    assert failures(delivery) == 1


# --- the service counts each offer once against the courier's capacity ------------------------------------------


class RacingDeliveries(MemoryStore[Delivery]):
    """Deliveries in memory whose first saves of a change lose a version race, as against a second
    instance: the unit of work loads the document again and decides again."""

    def __init__(self, *deliveries: Delivery, races: int = 1, fail: bool = False) -> None:
        super().__init__("courier_deliveries", Delivery)
        for delivery in deliveries:
            self.put(delivery.prescription_id, delivery)
        self.ids = [delivery.prescription_id for delivery in deliveries]
        self.races = races
        self.fail = fail

    async def save(self, saves):
        if saves and self.fail:
            raise ConnectionError("the database went away")
        if saves and self.races:
            self.races -= 1
            for save in saves:
                self.let_another_writer_win(save.id)
        return await super().save(saves)

    @property
    def docs(self) -> dict[str, Delivery | None]:
        return {doc_id: self.state_of(doc_id) for doc_id in self.ids}


class FakeCourierStorage:
    def __init__(self, deliveries: RacingDeliveries, roster: list) -> None:
        self.deliveries = deliveries
        self.roster = roster

    async def couriers(self):
        return self.roster

    async def loads(self, roster):
        return {c.courier_id: 0 for c in roster}


def approved_only(rx: str) -> Delivery:
    return make_delivery(prescription_id=rx, warehouse_id=None, pickup_location=None, details_at=T0)


def courier_service(deliveries: RacingDeliveries, capacity: int) -> CourierService:
    storage = FakeCourierStorage(deliveries, [make_courier("CUR-A", capacity=capacity)])
    return CourierService(
        storage,  # type: ignore[arg-type]
        UnitOfWork(None, outbox_entry),
        policy=POLICY,
        roster_refresh_s=3600,
        code_key=b"k",
        clock=lambda: T0,
    )


def stock_reserved(rx: str) -> list[Record]:
    """The inventory consumer's batch of one reservation."""
    return [Record(reserved(prescription_id=rx))]


async def test_an_offer_decided_again_after_a_version_race_is_counted_once():
    deliveries = RacingDeliveries(approved_only("RX-A"), approved_only("RX-B"), races=1)
    service = courier_service(deliveries, capacity=2)

    await service.on_inventory_event(stock_reserved("RX-A"))
    await service.on_inventory_event(stock_reserved("RX-B"))

    assert deliveries.races == 0, "the race happened"
    assert [deliveries.docs[rx].state for rx in ("RX-A", "RX-B")] == [DeliveryState.OFFERED, DeliveryState.OFFERED]
    assert deliveries.docs["RX-B"].active_courier_id == "CUR-A", "the courier had room for a second delivery"


async def test_an_offer_whose_write_failed_is_not_counted():
    deliveries = RacingDeliveries(approved_only("RX-A"), approved_only("RX-B"), races=0, fail=True)
    service = courier_service(deliveries, capacity=1)

    with pytest.raises(ConnectionError):
        await service.on_inventory_event(stock_reserved("RX-A"))
    deliveries.fail = False
    await service.on_inventory_event(stock_reserved("RX-B"))

    assert deliveries.docs["RX-A"].state is DeliveryState.WAITING
    assert deliveries.docs["RX-B"].state is DeliveryState.OFFERED


async def test_offers_decided_together_still_respect_capacity():
    deliveries = RacingDeliveries(approved_only("RX-A"), approved_only("RX-B"), races=0)
    service = courier_service(deliveries, capacity=1)

    await service.on_inventory_event(stock_reserved("RX-A"))
    await service.on_inventory_event(stock_reserved("RX-B"))

    assert deliveries.docs["RX-A"].state is DeliveryState.OFFERED
    assert deliveries.docs["RX-B"].state is DeliveryState.AWAITING_COURIER, "the only courier is full"


def test_an_address_without_coordinates_counts_only_the_way_to_the_pickup():
    courier = make_courier("CUR-A", base=MIDDLE)
    delivery = make_delivery()
    assert delivery.details is not None and delivery.pickup_location is not None
    address = delivery.details.address.model_copy(update={"coordinates": None})
    unlocated = delivery.model_copy(update={"details": delivery.details.model_copy(update={"address": address})})

    assert trip_km(courier, unlocated) == pytest.approx(km(courier.location, delivery.pickup_location))
