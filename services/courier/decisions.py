"""What one message does to one delivery: plain functions `(fleet, rules, delivery, message) ->
Decision`, with no I/O. The unit of work may run one again on a fresher document (its save lost a
race), so nothing here counts or remembers anything: what a decision did comes back as its
`Decided` result, and the loads are counted from those once saved (see service.py).

`Fleet` is the roster and each courier's load a decision chooses from; the delivery rules
themselves (who is nearest, what a report may change, deadlines) are in domain.py, and the events
a decision causes are assembled in messages.py.
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

from . import domain, messages
from .domain import Attempt, CancelOutcome, CourierProfile, Delivery, DeliveryState, Policy, ReportOutcome


class Look(Envelope):
    """A sweep's look at one delivery (`deadlines`), the waiting pass's (`offer_waiting`), or the
    round planner's (`offer_in_round`: this delivery is stop `stop` of `round_id` for `courier_id`):
    the record the unit of work decides on. Never published."""

    type: Literal["courier.look"] = "courier.look"
    prescription_id: Identifier
    purpose: Literal["deadlines", "offer_waiting", "offer_in_round"]
    courier_id: Identifier | None = None
    round_id: Identifier | None = None
    stop: int | None = None
    expected_at: datetime | None = None
    #: The whole round, told by the decision on its first stop.
    round_offered: c.RoundOffered | None = None


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


#: Why a delivery waits when deliveries go out in rounds (a plan, not a shortage of couriers).
NEXT_ROUND = "waiting for the next delivery round from"


@dataclass(frozen=True)
class Rules:
    """What every decision of one batch goes by besides the fleet."""

    policy: Policy
    now: datetime
    #: The key patients' delivery codes are checked with (None: no code is right).
    code_key: bytes | None = None
    #: Deliveries go out in planned rounds (the round planner offers them), not one trip each.
    rounds: bool = False


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
        case inv.PrescriptionRecalled():
            return recall(current, message)
        case inv.StockRepacked():
            return take_repack(fleet, rules, current, message)
        case inv.StockQuarantined(why="damaged", packed_again=False):
            return repack_failed(current, message)
        case inv.StockQuarantined():
            return Decision.unchanged()
        case c.CourierReported():
            return follow_report(fleet, rules, current, message)
        case c.AddressLocated():
            return locate(fleet, rules, current, message)
        case Look(purpose="deadlines"):
            return act_on_deadlines(fleet, rules, current, message)
        case Look(purpose="offer_waiting"):
            return offer_if_still_waiting(fleet, rules, current, message)
        case Look(purpose="offer_in_round"):
            return offer_in_round(fleet, rules, current, message)
    return Decision.refused("unexpected_message", f"{type(message).__name__} is nothing the courier service acts on")


def may_offer(message: Envelope) -> bool:
    """Whether deciding this message may offer the delivery to a courier."""
    match message:
        case PrescriptionApproved() | inv.StockReserved() | inv.StockRepacked() | c.AddressLocated() | Look():
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
        notice = messages.delivery_cancelled(rx, reserved.message_id, reserved.warehouse_id, goods_returned=False)
        after = known.model_copy(update={"cancel_notice_due": False})
        return Decision(after, [notice], result=Decided(current, after))
    return _offer_if_ready(fleet, rules, current, known, [], reserved.message_id)


def reservation_failed(current: Delivery | None, failed: inv.ReservationFailed) -> Decision[Delivery]:
    rx = failed.prescription_id
    delivery = current or Delivery(prescription_id=rx)
    if delivery.cancel_notice_due:
        notice = messages.delivery_cancelled(rx, failed.message_id, None, goods_returned=False)
        after = delivery.model_copy(update={"cancel_notice_due": False})
        return Decision(after, [notice], result=Decided(current, after))
    if delivery.state is DeliveryState.WAITING:
        after = delivery.model_copy(update={"state": DeliveryState.CANCELLED})
        return Decision(after, result=Decided(current, after))
    return Decision.unchanged()


def take_repack(
    fleet: Fleet, rules: Rules, current: Delivery | None, repacked: inv.StockRepacked
) -> Decision[Delivery]:
    """The damaged package was packed again: the next attempt is offered (or waits for its round)."""
    if current is None or not current.repack_pending:
        return Decision.unchanged()
    return _offer_if_ready(fleet, rules, current, domain.packed_again(current), [], repacked.message_id)


def repack_failed(current: Delivery | None, quarantined: inv.StockQuarantined) -> Decision[Delivery]:
    """The shelf cannot pack the damaged package again: the delivery is given up (the hospital is
    asked to call the patient), its goods already in quarantine."""
    if current is None or not current.repack_pending:
        return Decision.unchanged()
    after = domain.not_packed_again(current)
    abandoned = messages.delivery_abandoned(
        current.prescription_id,
        quarantined.warehouse_id,
        quarantined.message_id,
        attempts=max(1, domain.failures(after)),
        last_reason="damaged",
        goods_travelled=domain.goods_travelled(after),
    )
    return Decision(after, [abandoned], result=Decided(current, after))


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
    *,
    alone: bool = False,
) -> Decision[Delivery]:
    assert delivery.details is not None and delivery.warehouse_id is not None
    # Not on the map: no courier is sent looking; it waits for a dispatcher to place it. With
    # rounds, it waits for the planner to put it in the next round from its depot.
    courier = fleet.courier_for(delivery) if domain.located(delivery) and (alone or not rules.rounds) else None
    offered = domain.offer(delivery, courier, now=rules.now, accept_timeout=rules.policy.accept_timeout)
    if courier is None:
        if not domain.began_waiting(before, offered):
            return Decision(offered, events, result=Decided(before, offered))
        if not domain.located(delivery):
            why = domain.UNLOCATED.format(rx=delivery.prescription_id)
        elif rules.rounds:
            why = f"{NEXT_ROUND} {delivery.warehouse_id}"
        else:
            why = domain.why_no_courier(fleet.roster, fleet.loads, delivery)
        waiting = messages.delivery_waiting(delivery, why, causation_id)
        return Decision(offered, [*events, waiting], result=Decided(before, offered, waiting_why=why))
    attempt = offered.current
    assert attempt is not None
    dispatch = messages.dispatch_offered(delivery, attempt, courier, causation_id)
    assigned = messages.courier_assigned(delivery, attempt, courier, causation_id)
    return Decision(offered, [*events, assigned, dispatch], result=Decided(before, offered, offered_to=courier))


def offer_if_still_waiting(fleet: Fleet, rules: Rules, current: Delivery | None, _: Look) -> Decision[Delivery]:
    """The waiting pass's offer, if the delivery still waits and a courier can take it now."""
    if current is None or current.state is not DeliveryState.AWAITING_COURIER or not domain.ready_to_offer(current):
        return Decision.unchanged()
    if not domain.located(current) or fleet.courier_for(current) is None:
        return Decision.unchanged()
    # With rounds, the planner asks this only for a delivery no round can take: a trip of its own.
    return _offer(fleet, rules, current, current, [], None, alone=True)


def offer_in_round(fleet: Fleet, rules: Rules, current: Delivery | None, look: Look) -> Decision[Delivery]:
    """The round planner put this delivery at a stop of a round: a waiting delivery is offered to
    the round's courier; a stop of that round that has not left takes its new place and time (the
    courier is sent the stop again). Anything that changed meanwhile (cancelled, taken, picked up,
    a courier it must not go to) leaves it as it is: the next plan sees it as it is now."""
    assert look.courier_id is not None and look.round_id is not None and look.stop is not None
    assert look.expected_at is not None
    if current is None:
        return Decision.unchanged()
    slot = domain.RoundSlot(look.round_id, look.stop, look.expected_at)
    told = [look.round_offered] if look.round_offered is not None else []
    attempt = current.current
    if domain.in_round_not_left(current) and attempt is not None and attempt.round_id == look.round_id:
        if (attempt.stop, attempt.expected_at) == (slot.stop, slot.expected_at):
            return Decision.unchanged()
        after = domain.resequenced(current, slot)
        moved = after.current
        assert moved is not None and current.warehouse_id is not None
        courier = next((p for p in fleet.roster if p.courier_id == look.courier_id), None)
        if courier is None:
            return Decision.unchanged()
        dispatch = messages.dispatch_offered(after, moved, courier, None)
        return Decision(after, [*told, dispatch], result=Decided(current, after))
    if current.state is not DeliveryState.AWAITING_COURIER or not domain.ready_to_offer(current):
        return Decision.unchanged()
    courier = next((p for p in fleet.roster if p.courier_id == look.courier_id), None)
    if courier is None or not domain.located(current) or not domain.may_carry(courier, current):
        return Decision.unchanged()
    offered = domain.offer(current, courier, now=rules.now, accept_timeout=rules.policy.accept_timeout, slot=slot)
    attempt = offered.current
    assert attempt is not None
    dispatch = messages.dispatch_offered(current, attempt, courier, None)
    assigned = messages.courier_assigned(current, attempt, courier, None)
    return Decision(offered, [*told, assigned, dispatch], result=Decided(current, offered, offered_to=courier))


def locate(fleet: Fleet, rules: Rules, current: Delivery | None, located: c.AddressLocated) -> Decision[Delivery]:
    """A dispatcher placed the address: a delivery waiting for it is offered now; one on the road
    keeps its courier, and a later attempt goes to the new place."""
    rx = located.prescription_id
    if current is None or current.details is None:
        return Decision.refused("not_known", f"{rx}: no approved delivery for it here yet; place it once approved")
    if current.state in domain.FINISHED:
        return Decision.refused("delivery_finished", f"{rx}: the delivery is {current.state.value}; nothing to place")
    point = located.coordinates
    after = domain.placed(current, point.latitude, point.longitude)
    if after == current:
        return Decision.unchanged()
    if current.state is DeliveryState.AWAITING_COURIER and domain.ready_to_offer(after):
        # A new wait starts if no courier is free: the one for a location is over.
        return _offer(fleet, rules, current, after.model_copy(update={"awaiting_since": None}), [], located.message_id)
    return Decision(after, result=Decided(current, after))


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


def recall(current: Delivery | None, recalled: inv.PrescriptionRecalled) -> Decision[Delivery]:
    """A lot in the package was recalled and nothing replaces it (`withdrawn`), or the package is on
    the road with it (`on_the_road`): the delivery is withdrawn as a cancelled one is
    (`domain.cancel`), the courier told why (`DispatchWithdrawn`, reason `recalled`) and, if they
    have the goods, to bring them back; once back, inventory puts them in quarantine. A lot already
    delivered is the patient's to hear of (the consultation service tells them): nothing to do here."""
    if recalled.status == "delivered" or current is None:
        return Decision.unchanged()
    after, outcome = domain.cancel(current)
    events = _cancel_events(current, after, outcome, recalled.message_id, reason="recalled")
    if events is None:
        return Decision(result=Decided(current, current, cancel=outcome))
    return Decision(after, events, result=Decided(current, after, cancel=outcome))


def _cancel_events(
    before: Delivery,
    after: Delivery,
    outcome: CancelOutcome,
    causation_id: str,
    *,
    reason: Literal["cancelled", "recalled"] = "cancelled",
) -> list[Envelope] | None:
    rx = before.prescription_id
    attempt = before.current
    # An earlier attempt's goods that travelled and came back (held for the retry) never go back on the shelf.
    travelled = domain.goods_travelled(before)
    match outcome:
        case CancelOutcome.CANCELLED:
            if after.cancel_notice_due:
                return []
            return [messages.delivery_cancelled(rx, causation_id, before.warehouse_id, goods_returned=travelled)]
        case CancelOutcome.WITHDRAWN:
            assert attempt is not None
            return [
                messages.dispatch_withdrawn(attempt, rx, causation_id, reason=reason, return_goods=False),
                messages.delivery_cancelled(rx, causation_id, before.warehouse_id, goods_returned=travelled),
            ]
        case CancelOutcome.RECALLED:
            assert attempt is not None
            return [messages.dispatch_withdrawn(attempt, rx, causation_id, reason=reason, return_goods=True)]
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
    # The courier hears what became of it, in the same write (courier.answers.v1).
    answered = [*decision.events, messages.report_answered(report, outcome)]
    return Decision(decision.state, answered, result=replace(decision.result, report=outcome))


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
    rx, warehouse_id, cause = before.prescription_id, before.warehouse_id, report.message_id
    decided = Decided(before, after)
    match outcome:
        case ReportOutcome.ACCEPTED:
            return Decision(after, [messages.delivery_accepted(rx, attempt, cause)], result=decided)
        case ReportOutcome.PICKED_UP:
            return Decision(after, [messages.delivery_picked_up(rx, attempt, warehouse_id, cause)], result=decided)
        case ReportOutcome.DELIVERED:
            return Decision(after, [messages.delivery_completed(rx, attempt, warehouse_id, cause)], result=decided)
        case ReportOutcome.CODE_REJECTED | ReportOutcome.CODE_LOCKED:
            wrong = after.current.wrong_codes if after.current else 1
            locked = outcome is ReportOutcome.CODE_LOCKED
            rejected = messages.delivery_code_rejected(rx, attempt, cause, wrong_codes=wrong, locked=locked)
            return Decision(after, [rejected], result=decided)
        case ReportOutcome.RETURNED:
            # Confirmed by a courier recalled before pickup, nothing travelled: the stock goes back on the shelf.
            travelled = domain.goods_travelled(after)
            notice = messages.delivery_cancelled(rx, cause, warehouse_id, goods_returned=travelled)
            return Decision(after, [notice], result=decided)
    assert report.failure_reason is not None
    failed = messages.delivery_failed(
        rx,
        attempt,
        warehouse_id,
        cause,
        reason=report.failure_reason,
        goods_returned=before.state is DeliveryState.PICKED_UP,
        will_retry=outcome is ReportOutcome.FAILED_WILL_RETRY,
    )
    if outcome is ReportOutcome.FAILED_GIVEN_UP:
        abandoned = messages.delivery_abandoned(
            rx,
            warehouse_id,
            cause,
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
        expired_events: list[Envelope] = [
            messages.delivery_offer_expired(rx, attempt),
            messages.dispatch_withdrawn(attempt, rx, None, reason="acceptance_timeout", return_goods=False),
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
        events.append(messages.delivery_overdue(rx, stage=stage, since=since, courier_id=courier_id))
        decided = replace(decided, after=after, overdue=stage)
    if after is current:
        return Decision.unchanged()
    return Decision(after, events, result=decided)


def due(delivery: Delivery, rules: Rules) -> bool:
    """Whether a sweep has something to do on this delivery now."""
    return domain.offer_expired(delivery, rules.now) or domain.overdue(delivery, rules.now, rules.policy) is not None


def delivery_key(message: Envelope) -> str:
    """The delivery (one per prescription) a message is about."""
    if isinstance(message, c.CourierReported):
        return message.package_id
    prescription_id = getattr(message, "prescription_id", None)
    return prescription_id if isinstance(prescription_id, str) else message.correlation_id
