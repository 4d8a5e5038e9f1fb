"""What one message does to one delivery: plain functions `(fleet, rules, delivery, message) ->
Decision`, with no I/O. The unit of work may run one again on a fresher document (its save lost a
race), so nothing here counts or remembers anything: what a decision did comes back as its
`Decided` result, and the loads are counted from those once saved (see service.py).

`Fleet` is the roster and each courier's load a decision chooses from; the delivery rules
themselves (who is nearest, what a report may change, deadlines) are in domain.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.envelope import Identifier
from pharmacy_contracts.prescription import PrescriptionApproved, PrescriptionCancelled
from services.runtime import delivery_codes
from services.runtime.unit_of_work import Decision

from . import domain
from .domain import Attempt, CancelOutcome, CourierProfile, Delivery, DeliveryState, Policy, ReportOutcome

PRODUCER = "courier"


class Look(Envelope):
    """A sweep's look at one delivery (`deadlines`), or the waiting pass's (`offer_waiting`): the
    record the unit of work decides on. Never published."""

    type: Literal["courier.look"] = "courier.look"
    prescription_id: Identifier
    purpose: Literal["deadlines", "offer_waiting"]


@dataclass(frozen=True)
class Handover:
    """Who held a delivery before a decision and who holds it after: a courier's load is the
    number of deliveries they hold (`Delivery.active_courier_id`), so loads move by these."""

    before: str | None
    after: str | None

    @property
    def frees(self) -> str | None:
        """The courier who holds one delivery fewer, if any."""
        return self.before if self.before is not None and self.before != self.after else None


@dataclass(frozen=True)
class Fleet:
    """The roster and the deliveries each courier holds, as one decision sees them."""

    roster: tuple[CourierProfile, ...] = ()
    loads: Mapping[str, int] = field(default_factory=dict)

    def after(self, handovers: Iterable[Handover]) -> Fleet:
        loads = dict(self.loads)
        for handover in handovers:
            if handover.before == handover.after:
                continue
            if handover.before is not None and loads.get(handover.before, 0) > 0:
                loads[handover.before] -= 1
            if handover.after is not None:
                loads[handover.after] = loads.get(handover.after, 0) + 1
        return Fleet(self.roster, loads)

    def courier_for(self, delivery: Delivery) -> CourierProfile | None:
        return domain.choose_courier(self.roster, self.loads, delivery)


@dataclass(frozen=True)
class Rules:
    """What every decision of one batch goes by besides the fleet."""

    policy: Policy
    now: datetime
    #: The key patients' delivery codes are checked with (None: no code is right).
    code_key: bytes | None = None


@dataclass(frozen=True)
class Decided:
    """What a decision did, for the use case to count loads from and log, once it is saved."""

    before: Delivery | None
    after: Delivery
    report: ReportOutcome | None = None
    cancel: CancelOutcome | None = None
    offered_to: CourierProfile | None = None
    #: Why no courier could take it, when a wait for one began.
    waiting_why: str | None = None
    #: The offer that was not accepted in time.
    expired: Attempt | None = None
    overdue: domain.OverdueStage | None = None

    @property
    def handover(self) -> Handover:
        return Handover(self.before.active_courier_id if self.before else None, self.after.active_courier_id)


def decide(fleet: Fleet, rules: Rules, current: Delivery | None, message: Envelope) -> Decision[Delivery]:
    match message:
        case PrescriptionApproved():
            return take_details(fleet, rules, current, message)
        case PrescriptionCancelled():
            return cancel(current, message)
        case inv.StockReserved():
            return take_reservation(fleet, rules, current, message)
        case inv.ReservationFailed():
            return reservation_failed(current, message)
        case c.CourierReported():
            return follow_report(fleet, rules, current, message)
        case Look(purpose="deadlines"):
            return act_on_deadlines(fleet, rules, current, message)
        case Look(purpose="offer_waiting"):
            return offer_if_still_waiting(fleet, rules, current, message)
    return Decision.refused("unexpected_message", f"{type(message).__name__} is nothing the courier service acts on")


def may_offer(message: Envelope) -> bool:
    """Whether deciding this message may offer the delivery to a courier."""
    match message:
        case PrescriptionApproved() | inv.StockReserved() | Look():
            return True
        case c.CourierReported():
            return message.status == "failed"  # a retry is offered in the same write
    return False


# --- what the delivery waits for ---------------------------------------------------------------------


def take_details(
    fleet: Fleet, rules: Rules, current: Delivery | None, approved: PrescriptionApproved
) -> Decision[Delivery]:
    delivery = current or Delivery(prescription_id=approved.prescription_id)
    if delivery.details is not None:
        return Decision.unchanged()  # a redelivery, or the same approval sent again
    known = delivery.model_copy(update={"details": approved.delivery, "details_at": rules.now})
    return _offer_if_ready(fleet, rules, current, known, [], approved.message_id)


def take_reservation(
    fleet: Fleet, rules: Rules, current: Delivery | None, reserved: inv.StockReserved
) -> Decision[Delivery]:
    rx = reserved.prescription_id
    delivery = current or Delivery(prescription_id=rx)
    if delivery.warehouse_id:
        return Decision.unchanged()
    known = delivery.model_copy(
        update={"warehouse_id": reserved.warehouse_id, "pickup_location": reserved.pickup_location}
    )
    if known.cancel_notice_due:
        # Cancelled before the reservation: now inventory can be told which warehouse to release.
        notice = _cancelled(rx, reserved.message_id, reserved.warehouse_id, goods_returned=False)
        after = known.model_copy(update={"cancel_notice_due": False})
        return Decision(after, [notice], result=Decided(current, after))
    return _offer_if_ready(fleet, rules, current, known, [], reserved.message_id)


def reservation_failed(current: Delivery | None, failed: inv.ReservationFailed) -> Decision[Delivery]:
    rx = failed.prescription_id
    delivery = current or Delivery(prescription_id=rx)
    if delivery.cancel_notice_due:
        notice = _cancelled(rx, failed.message_id, None, goods_returned=False)
        after = delivery.model_copy(update={"cancel_notice_due": False})
        return Decision(after, [notice], result=Decided(current, after))
    if delivery.state is DeliveryState.WAITING:
        after = delivery.model_copy(update={"state": DeliveryState.CANCELLED})
        return Decision(after, result=Decided(current, after))
    return Decision.unchanged()


# --- offering ----------------------------------------------------------------------------------------


def _offer_if_ready(
    fleet: Fleet,
    rules: Rules,
    before: Delivery | None,
    after: Delivery,
    events: Sequence[Envelope],
    causation_id: str | None,
) -> Decision[Delivery]:
    if not domain.ready_to_offer(after):
        return Decision(after, events, result=Decided(before, after))
    return _offer(fleet, rules, before, after, events, causation_id)


def _offer(
    fleet: Fleet,
    rules: Rules,
    before: Delivery | None,
    delivery: Delivery,
    events: Sequence[Envelope],
    causation_id: str | None,
) -> Decision[Delivery]:
    assert delivery.details is not None and delivery.warehouse_id is not None
    rx = delivery.prescription_id
    courier = fleet.courier_for(delivery)
    offered = domain.offer(delivery, courier, now=rules.now, accept_timeout=rules.policy.accept_timeout)
    common = {"correlation_id": rx, "causation_id": causation_id, "producer": PRODUCER}
    if courier is None:
        if not domain.began_waiting(before, offered):
            return Decision(offered, events, result=Decided(before, offered))
        why = domain.why_no_courier(fleet.roster, fleet.loads, delivery)
        waiting = c.DeliveryWaiting(**common, prescription_id=rx, warehouse_id=delivery.warehouse_id, why=why)
        return Decision(offered, [*events, waiting], result=Decided(before, offered, waiting_why=why))
    attempt = offered.current
    assert attempt is not None
    dispatch = c.DispatchOffered(
        **common,
        dispatch_id=attempt.dispatch_id,
        courier_id=courier.courier_id,
        package_id=rx,
        attempt=attempt.number,
        pickup_warehouse_id=delivery.warehouse_id,
        address=delivery.details.address,
        contact_phone=delivery.details.contact_phone,
        cold_chain=delivery.details.cold_chain,
        controlled=delivery.details.controlled,
        pickup_location=delivery.pickup_location,
        accept_by=attempt.accept_by,
    )
    assigned = c.CourierAssigned(
        **common,
        prescription_id=rx,
        dispatch_id=attempt.dispatch_id,
        courier_id=courier.courier_id,
        attempt=attempt.number,
        warehouse_id=delivery.warehouse_id,
    )
    return Decision(offered, [*events, assigned, dispatch], result=Decided(before, offered, offered_to=courier))


def offer_if_still_waiting(fleet: Fleet, rules: Rules, current: Delivery | None, _: Look) -> Decision[Delivery]:
    """The waiting pass's offer, if the delivery still waits and a courier can take it now."""
    if current is None or current.state is not DeliveryState.AWAITING_COURIER or not domain.ready_to_offer(current):
        return Decision.unchanged()
    if fleet.courier_for(current) is None:
        return Decision.unchanged()
    return _offer(fleet, rules, current, current, [], None)


# --- cancellation ------------------------------------------------------------------------------------


def cancel(current: Delivery | None, cancelled: PrescriptionCancelled) -> Decision[Delivery]:
    if not cancelled.was_approved:
        return Decision.unchanged()  # never approved: no delivery exists or ever will
    # A delivery not seen yet is recorded cancelled, so a late approval or reservation never dispatches it.
    before = current or Delivery(prescription_id=cancelled.prescription_id)
    after, outcome = domain.cancel(before)
    events = _cancel_events(before, after, outcome, cancelled.message_id)
    if events is None:
        return Decision(result=Decided(before, before, cancel=outcome))
    return Decision(after, events, result=Decided(before, after, cancel=outcome))


def _cancel_events(
    before: Delivery, after: Delivery, outcome: CancelOutcome, causation_id: str
) -> list[Envelope] | None:
    rx = before.prescription_id
    attempt = before.current
    # An earlier attempt's goods that travelled and came back (held for the retry) never go back on the shelf.
    travelled = domain.goods_travelled(before)
    match outcome:
        case CancelOutcome.CANCELLED:
            if after.cancel_notice_due:
                return []
            return [_cancelled(rx, causation_id, before.warehouse_id, goods_returned=travelled)]
        case CancelOutcome.WITHDRAWN:
            assert attempt is not None
            return [
                _withdrawn(attempt, rx, causation_id, reason="cancelled", return_goods=False),
                _cancelled(rx, causation_id, before.warehouse_id, goods_returned=travelled),
            ]
        case CancelOutcome.RECALLED:
            assert attempt is not None
            return [_withdrawn(attempt, rx, causation_id, reason="cancelled", return_goods=True)]
    return None


# --- what couriers report --------------------------------------------------------------------------


def follow_report(
    fleet: Fleet, rules: Rules, current: Delivery | None, report: c.CourierReported
) -> Decision[Delivery]:
    rx = report.package_id
    if current is None:
        return Decision.refused("unknown_package", f"no delivery for package {rx}")
    code_is_right = (
        report.status == "delivered"
        and rules.code_key is not None
        and delivery_codes.is_right_code(rules.code_key, rx, report.delivery_code)
    )
    try:
        updated, outcome = domain.apply_report(
            current,
            dispatch_id=report.dispatch_id,
            courier_id=report.courier_id,
            status=report.status,
            failure_reason=report.failure_reason,
            code_is_right=code_is_right,
            policy=rules.policy,
            now=rules.now,
        )
    except domain.ReportRefused as refused:
        return Decision.refused(refused.code, str(refused))
    if outcome is ReportOutcome.IGNORED:
        return Decision(result=Decided(current, current, report=outcome))
    decision = _report_decision(fleet, rules, current, updated, outcome, report)
    assert isinstance(decision.result, Decided)
    return Decision(decision.state, decision.events, result=replace(decision.result, report=outcome))


def _report_decision(
    fleet: Fleet,
    rules: Rules,
    before: Delivery,
    after: Delivery,
    outcome: ReportOutcome,
    report: c.CourierReported,
) -> Decision[Delivery]:
    attempt = before.current
    assert attempt is not None and before.warehouse_id is not None
    rx = before.prescription_id
    common = {
        "correlation_id": rx,
        "causation_id": report.message_id,
        "producer": PRODUCER,
        "prescription_id": rx,
        "dispatch_id": attempt.dispatch_id,
        "courier_id": attempt.courier_id,
        "attempt": attempt.number,
    }
    where = {"warehouse_id": before.warehouse_id}
    decided = Decided(before, after)
    match outcome:
        case ReportOutcome.ACCEPTED:
            return Decision(after, [c.DeliveryAccepted(**common)], result=decided)
        case ReportOutcome.PICKED_UP:
            return Decision(after, [c.DeliveryPickedUp(**common, **where)], result=decided)
        case ReportOutcome.DELIVERED:
            return Decision(after, [c.DeliveryCompleted(**common, **where)], result=decided)
        case ReportOutcome.CODE_REJECTED | ReportOutcome.CODE_LOCKED:
            wrong = after.current.wrong_codes if after.current else 1
            locked = outcome is ReportOutcome.CODE_LOCKED
            return Decision(after, [c.DeliveryCodeRejected(**common, wrong_codes=wrong, locked=locked)], result=decided)
        case ReportOutcome.RETURNED:
            # Confirmed by a courier recalled before pickup, nothing travelled: the stock goes back on the shelf.
            travelled = domain.goods_travelled(after)
            notice = _cancelled(rx, report.message_id, before.warehouse_id, goods_returned=travelled)
            return Decision(after, [notice], result=decided)
    assert report.failure_reason is not None
    failed = c.DeliveryFailed(
        **common,
        **where,
        reason=report.failure_reason,
        goods_returned=before.state is DeliveryState.PICKED_UP,
        will_retry=outcome is ReportOutcome.FAILED_WILL_RETRY,
    )
    if outcome is ReportOutcome.FAILED_GIVEN_UP:
        abandoned = c.DeliveryAbandoned(
            correlation_id=rx,
            causation_id=report.message_id,
            producer=PRODUCER,
            prescription_id=rx,
            warehouse_id=before.warehouse_id,
            attempts=max(1, domain.failures(after)),
            last_reason=report.failure_reason,
            goods_travelled=domain.goods_travelled(after),
        )
        return Decision(after, [failed, abandoned], result=decided)
    return _offer_if_ready(fleet, rules, before, after, [failed], report.message_id)


# --- deadlines (the sweep) -----------------------------------------------------------------------------


def act_on_deadlines(fleet: Fleet, rules: Rules, current: Delivery | None, look: Look) -> Decision[Delivery]:
    """An offer not accepted in time goes to the next courier; a passed deadline is alerted once.
    Both are looked at again on the version decided on, so a courier's report or another instance's
    sweep meanwhile is never acted on twice."""
    if current is None:
        return Decision.unchanged()
    rx = current.prescription_id
    after, events, decided = current, [], Decided(current, current)
    attempt = current.current
    if domain.offer_expired(current, rules.now):
        assert attempt is not None
        common = {"correlation_id": rx, "causation_id": None, "producer": PRODUCER}
        expired_events: list[Envelope] = [
            c.DeliveryOfferExpired(
                **common,
                prescription_id=rx,
                dispatch_id=attempt.dispatch_id,
                courier_id=attempt.courier_id,
                attempt=attempt.number,
            ),
            _withdrawn(attempt, rx, None, reason="acceptance_timeout", return_goods=False),
        ]
        redispatch = _offer(fleet, rules, current, domain.expire_offer(current, rules.now), expired_events, None)
        assert redispatch.state is not None and isinstance(redispatch.result, Decided)
        after, events = redispatch.state, list(redispatch.events)
        decided = replace(redispatch.result, expired=attempt)
    passed = domain.overdue(after, rules.now, rules.policy)
    if passed is not None:
        stage, since = passed
        after = domain.mark_overdue(after, stage)
        courier_id = after.current.courier_id if stage == "on_the_road" and after.current else None
        events.append(
            c.DeliveryOverdue(
                correlation_id=rx,
                producer=PRODUCER,
                prescription_id=rx,
                stage=stage,
                since=since,
                courier_id=courier_id,
            )
        )
        decided = replace(decided, after=after, overdue=stage)
    if after is current:
        return Decision.unchanged()
    return Decision(after, events, result=decided)


def due(delivery: Delivery, rules: Rules) -> bool:
    """Whether a sweep has something to do on this delivery now."""
    return domain.offer_expired(delivery, rules.now) or domain.overdue(delivery, rules.now, rules.policy) is not None


# --- events --------------------------------------------------------------------------------------------


def _cancelled(
    rx: str, causation_id: str | None, warehouse_id: str | None, *, goods_returned: bool = False
) -> c.DeliveryCancelled:
    return c.DeliveryCancelled(
        correlation_id=rx,
        causation_id=causation_id,
        producer=PRODUCER,
        prescription_id=rx,
        warehouse_id=warehouse_id,
        goods_returned=goods_returned,
    )


def _withdrawn(
    attempt: Attempt,
    rx: str,
    causation_id: str | None,
    *,
    reason: Literal["acceptance_timeout", "cancelled"],
    return_goods: bool,
) -> c.DispatchWithdrawn:
    return c.DispatchWithdrawn(
        correlation_id=rx,
        causation_id=causation_id,
        producer=PRODUCER,
        dispatch_id=attempt.dispatch_id,
        courier_id=attempt.courier_id,
        package_id=rx,
        reason=reason,
        return_goods=return_goods,
    )


def delivery_key(message: Envelope) -> str:
    """The delivery (one per prescription) a message is about."""
    if isinstance(message, c.CourierReported):
        return message.package_id
    prescription_id = getattr(message, "prescription_id", None)
    return prescription_id if isinstance(prescription_id, str) else message.correlation_id
