"""Delivery rules. Pure: a delivery, a fact and the time in; a new delivery and what happened out."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.courier import FailureReason
from pharmacy_contracts.geo import great_circle_km
from pharmacy_contracts.prescription import DeliveryDetails

DEFAULT_RETRY_LIMITS: dict[str, int] = {
    "patient_absent": 3,
    "address_not_found": 2,
    "refused": 1,
    "damaged": 2,  # the pharmacy packs it again once (inventory: StockRepacked)
    "other": 3,
}


class CourierProfile(BaseModel):
    courier_id: str
    name: str
    zone: str = Field(default="", description="Home zone")
    location: Coordinates | None = Field(default=None, description="The base of the home zone")
    capacity: int = Field(default=3, ge=1, description="Deliveries the courier carries at once")
    cold_chain: bool = Field(default=False, description="Can carry goods that must stay cold")
    active: bool = True


class DeliveryState(StrEnum):
    WAITING = "waiting"  # for the approval's delivery details or for the stock reservation
    AWAITING_COURIER = "awaiting_courier"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    PICKED_UP = "picked_up"
    RETURNING = "returning"  # cancelled after pickup: the courier brings the goods back
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    CANCELLED = "cancelled"


ON_THE_ROAD = frozenset({DeliveryState.OFFERED, DeliveryState.ACCEPTED, DeliveryState.PICKED_UP})
FINISHED = frozenset({DeliveryState.DELIVERED, DeliveryState.UNDELIVERABLE, DeliveryState.CANCELLED})
#: States a sweep looks at: an offer may expire, a deadline pass, a waiting delivery find a courier.
SWEPT = frozenset(
    {
        DeliveryState.WAITING,
        DeliveryState.AWAITING_COURIER,
        DeliveryState.OFFERED,
        DeliveryState.ACCEPTED,
        DeliveryState.PICKED_UP,
        DeliveryState.RETURNING,
    }
)
_CARRYING = frozenset({DeliveryState.ACCEPTED, DeliveryState.PICKED_UP, DeliveryState.RETURNING})


class AttemptStatus(StrEnum):
    OFFERED = "offered"  # open: offered, accepted or picked up
    TIMED_OUT = "timed_out"  # not accepted in time; the next courier was asked
    FAILED = "failed"
    DELIVERED = "delivered"
    WITHDRAWN = "withdrawn"  # the prescription was cancelled


class Attempt(BaseModel):
    number: int
    dispatch_id: str
    courier_id: str
    status: AttemptStatus = AttemptStatus.OFFERED
    offered_at: datetime | None = None
    accept_by: datetime | None = None
    accepted_at: datetime | None = None
    picked_up_at: datetime | None = None
    returned_at: datetime | None = None
    failure_reason: FailureReason | None = None
    wrong_codes: int = Field(default=0, description="'delivered' reports with a wrong or missing code")
    code_locked: bool = Field(
        default=False, description="Too many wrong codes: no 'delivered' report counts on this attempt any more"
    )
    overdue_alerted: bool = Field(default=False, description="The on-the-road deadline alert went out")
    round_id: str | None = Field(default=None, description="The delivery round this attempt is a stop of")
    stop: int | None = Field(default=None, description="Its place in the round as last planned")
    expected_at: datetime | None = Field(default=None, description="When the round is planned to reach the door")

    @property
    def on_the_road_since(self) -> datetime | None:
        return self.accepted_at or self.picked_up_at


class Delivery(BaseModel):
    prescription_id: str
    state: DeliveryState = DeliveryState.WAITING
    details: DeliveryDetails | None = None
    warehouse_id: str | None = None
    pickup_location: Coordinates | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    active_courier_id: str | None = Field(default=None, description="Set while a courier holds this delivery")
    details_at: datetime | None = Field(
        default=None, description="When the approval's delivery details arrived: the wait for the stock starts then"
    )
    stock_overdue_alerted: bool = Field(default=False, description="The waiting-for-stock alert went out")
    awaiting_since: datetime | None = Field(default=None, description="Start of the current wait for a courier")
    waiting_overdue_alerted: bool = Field(default=False, description="The waiting deadline alert of this wait went out")
    cancel_notice_due: bool = Field(
        default=False, description="Cancelled before the warehouse was known: DeliveryCancelled goes out once it is"
    )
    repack_pending: bool = Field(
        default=False, description="Found damaged: waits for the warehouse to pack it again before the next attempt"
    )

    @model_validator(mode="after")
    def _statuses_of_older_documents(self) -> Delivery:
        """Documents written before attempts had a status: infer it, so failures keep counting."""
        for attempt in self.attempts:
            if attempt.status is AttemptStatus.OFFERED and attempt.failure_reason is not None:
                attempt.status = AttemptStatus.FAILED
        current = self.current
        if current is not None and current.status is AttemptStatus.OFFERED and self.state is DeliveryState.DELIVERED:
            current.status = AttemptStatus.DELIVERED
        return self

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def cold_chain(self) -> bool:
        return self.details is not None and self.details.cold_chain


@dataclass(frozen=True)
class Policy:
    """The limits a delivery lives by (settings: services/courier/settings.py)."""

    max_attempts: int = 3
    retry_limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_RETRY_LIMITS))
    accept_timeout: timedelta = timedelta(minutes=15)
    on_the_road_deadline: timedelta = timedelta(hours=24)
    courier_wait_deadline: timedelta = timedelta(hours=4)
    max_wrong_codes: int = 5


class ReportOutcome(StrEnum):
    ACCEPTED = "accepted"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    CODE_REJECTED = "code_rejected"
    CODE_LOCKED = "code_locked"  # a wrong code, the last one allowed: the attempt takes no more codes
    FAILED_WILL_RETRY = "failed_will_retry"
    FAILED_GIVEN_UP = "failed_given_up"
    RETURNED = "returned"
    IGNORED = "ignored"  # a repeat of something already applied


#: Outcomes after which the courier carries one delivery fewer.
FREES_COURIER = frozenset(
    {
        ReportOutcome.DELIVERED,
        ReportOutcome.FAILED_WILL_RETRY,
        ReportOutcome.FAILED_GIVEN_UP,
        ReportOutcome.RETURNED,
    }
)


class ReportRefused(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def dispatch_id_for(prescription_id: str, attempt: int) -> str:
    """Deterministic, so a redelivered message re-creates the same dispatch, not a second one."""
    return f"{prescription_id}-D{attempt}"


# --- choosing a courier ----------------------------------------------------------------------------


def trip_km(courier: CourierProfile, delivery: Delivery) -> float:
    """From the courier's base to the pickup warehouse, plus from the base to the patient (when the
    address has coordinates). A courier whose base is unknown comes after every courier whose base
    is known."""
    if courier.location is None:
        return math.inf
    base = (courier.location.latitude, courier.location.longitude)
    total = 0.0
    if (pickup := delivery.pickup_location) is not None:
        total += great_circle_km(base, (pickup.latitude, pickup.longitude))
    if delivery.details is not None and (patient := delivery.details.address.coordinates) is not None:
        total += great_circle_km(base, (patient.latitude, patient.longitude))
    return total


def not_to_ask_again(delivery: Delivery) -> set[str]:
    """Couriers who let this delivery's offer expire, or whom its patient refused."""
    return {
        a.courier_id
        for a in delivery.attempts
        if a.status is AttemptStatus.TIMED_OUT or (a.status is AttemptStatus.FAILED and a.failure_reason == "refused")
    }


def may_carry(courier: CourierProfile, delivery: Delivery) -> bool:
    """Whether this courier may take this delivery at all (load aside): on duty, a cold box for
    cold-chain goods, and not a courier who let its offer expire or whom its patient refused."""
    return (
        courier.active
        and (courier.cold_chain or not delivery.cold_chain)
        and courier.courier_id not in not_to_ask_again(delivery)
    )


def _eligible(roster: Iterable[CourierProfile], loads: Mapping[str, int], delivery: Delivery) -> list[CourierProfile]:
    excluded = not_to_ask_again(delivery)
    return [
        c
        for c in roster
        if c.active
        and loads.get(c.courier_id, 0) < c.capacity
        and (c.cold_chain or not delivery.cold_chain)
        and c.courier_id not in excluded
    ]


def choose_courier(
    roster: Iterable[CourierProfile], loads: Mapping[str, int], delivery: Delivery
) -> CourierProfile | None:
    """The nearest eligible courier (active, below capacity, cold-chain capable if needed, has not
    let this delivery's offer expire); ties by fewest deliveries on hand, then by id.

    After a failed attempt, a courier who has not tried this delivery yet comes first when there
    is one: a fresh pair of eyes on an address nobody found, another time of day for an absent
    patient. Only when every eligible courier has tried does the nearest try again."""
    eligible = list(_eligible(roster, loads, delivery))
    tried = {attempt.courier_id for attempt in delivery.attempts if attempt.failure_reason is not None}
    fresh = [c for c in eligible if c.courier_id not in tried] or eligible
    return min(fresh, key=lambda c: (trip_km(c, delivery), loads.get(c.courier_id, 0), c.courier_id), default=None)


def why_no_courier(roster: Iterable[CourierProfile], loads: Mapping[str, int], delivery: Delivery) -> str:
    """A sentence for people: which condition left no courier."""
    active = [c for c in roster if c.active]
    if not active:
        return "no courier is on duty"
    suitable = [c for c in active if c.cold_chain or not delivery.cold_chain]
    if not suitable:
        return "no cold-chain courier is on duty"
    excluded = not_to_ask_again(delivery)
    willing = [c for c in suitable if c.courier_id not in excluded]
    if not willing:
        return "every suitable courier has already let this offer expire or been refused"
    kind = "cold-chain courier" if delivery.cold_chain else "courier"
    return f"every {kind} on duty is carrying as many deliveries as they can"


# --- offering ----------------------------------------------------------------------------------------


def located(delivery: Delivery) -> bool:
    """The door is on the map: the address came with coordinates, or a dispatcher placed it."""
    return delivery.details is not None and delivery.details.address.coordinates is not None


#: Why a delivery whose address has no coordinates waits: for the people and tools that read it.
UNLOCATED = (
    "the address has no map location and the county gazetteer does not know it: a dispatcher places it "
    "(pharmacy dispatch locate {rx} --lat … --lon …, or --place <gazetteer id>)"
)


def placed(delivery: Delivery, latitude: float, longitude: float) -> Delivery:
    """The delivery with its address placed on the map (the courier of every later attempt goes there)."""
    assert delivery.details is not None
    address = delivery.details.address.model_copy(
        update={"coordinates": Coordinates(latitude=latitude, longitude=longitude)}
    )
    return delivery.model_copy(update={"details": delivery.details.model_copy(update={"address": address})})


def ready_to_offer(delivery: Delivery) -> bool:
    return (
        delivery.state in (DeliveryState.WAITING, DeliveryState.AWAITING_COURIER)
        and delivery.details is not None
        and delivery.warehouse_id is not None
        and not delivery.repack_pending
    )


def await_courier(delivery: Delivery, now: datetime) -> Delivery:
    """No courier now: wait. A wait already under way keeps its start (and its alerts)."""
    if delivery.state is DeliveryState.AWAITING_COURIER and delivery.awaiting_since is not None:
        return delivery
    return delivery.model_copy(
        update={
            "state": DeliveryState.AWAITING_COURIER,
            "active_courier_id": None,
            "awaiting_since": now,
            "waiting_overdue_alerted": False,
        }
    )


@dataclass(frozen=True)
class RoundSlot:
    """A delivery's place in a planned round."""

    round_id: str
    stop: int
    expected_at: datetime


def offer(
    delivery: Delivery,
    courier: CourierProfile | None,
    *,
    now: datetime,
    accept_timeout: timedelta,
    slot: RoundSlot | None = None,
) -> Delivery:
    if courier is None:
        return await_courier(delivery, now)
    number = len(delivery.attempts) + 1
    attempt = Attempt(
        number=number,
        dispatch_id=dispatch_id_for(delivery.prescription_id, number),
        courier_id=courier.courier_id,
        offered_at=now,
        accept_by=now + accept_timeout,
        round_id=slot.round_id if slot else None,
        stop=slot.stop if slot else None,
        expected_at=slot.expected_at if slot else None,
    )
    return delivery.model_copy(
        update={
            "state": DeliveryState.OFFERED,
            "attempts": [*delivery.attempts, attempt],
            "active_courier_id": courier.courier_id,
            "awaiting_since": None,
            "waiting_overdue_alerted": False,
        }
    )


def began_waiting(before: Delivery | None, after: Delivery) -> bool:
    """A new wait for a courier started (announced once per wait)."""
    return (
        after.state is DeliveryState.AWAITING_COURIER
        and after.awaiting_since is not None
        and (before is None or before.awaiting_since != after.awaiting_since)
    )


# --- rounds ------------------------------------------------------------------------------------------


def in_round_not_left(delivery: Delivery) -> bool:
    """A stop of a round whose goods are still at the depot: it may be re-planned (its place
    and time), never given to another van."""
    attempt = delivery.current
    return (
        delivery.state in (DeliveryState.OFFERED, DeliveryState.ACCEPTED)
        and attempt is not None
        and attempt.round_id is not None
        and attempt.picked_up_at is None
    )


def resequenced(delivery: Delivery, slot: RoundSlot) -> Delivery:
    """The stop at its new place in its re-planned round."""
    attempt = delivery.current
    assert attempt is not None and attempt.round_id == slot.round_id
    moved = attempt.model_copy(update={"stop": slot.stop, "expected_at": slot.expected_at})
    return delivery.model_copy(update={"attempts": [*delivery.attempts[:-1], moved]})


# --- couriers' reports ---------------------------------------------------------------------------------


def will_retry(failures: int, latest_reason: str, policy: Policy) -> bool:
    """After `failures` failed attempts, the latest for `latest_reason`: try again? The limit of the
    latest reason applies, capped by the overall `max_attempts`. Offers that expired are no failures."""
    limit = min(policy.retry_limits.get(latest_reason, policy.max_attempts), policy.max_attempts)
    return failures < limit


def failures(delivery: Delivery) -> int:
    return sum(a.status is AttemptStatus.FAILED for a in delivery.attempts)


def packed_again(delivery: Delivery) -> Delivery:
    """The warehouse packed the damaged delivery again: it may be offered."""
    return delivery.model_copy(update={"repack_pending": False})


def not_packed_again(delivery: Delivery) -> Delivery:
    """The warehouse cannot pack the damaged delivery again: it is undeliverable."""
    return delivery.model_copy(
        update={"repack_pending": False, "state": DeliveryState.UNDELIVERABLE, "active_courier_id": None}
    )


def goods_travelled(delivery: Delivery) -> bool:
    return any(a.picked_up_at is not None for a in delivery.attempts)


def _replace_current(delivery: Delivery, attempt: Attempt, **update: object) -> Delivery:
    return delivery.model_copy(update={"attempts": [*delivery.attempts[:-1], attempt], **update})


def _already_applied(delivery: Delivery, attempt: Attempt, status: str) -> bool:
    """A courier's app may send the same report twice (new message id, same meaning)."""
    match status:
        case "failed":
            return attempt.status is AttemptStatus.FAILED
        case "returned":
            return attempt.returned_at is not None
        case "delivered":
            return attempt.status is AttemptStatus.DELIVERED
        case "picked_up":
            return attempt.picked_up_at is not None and delivery.state in _CARRYING_GOODS
    return status in _NEXT and delivery.state is _NEXT[status][1]


_CARRYING_GOODS = frozenset({DeliveryState.PICKED_UP, DeliveryState.RETURNING})
_NEXT = {
    "accepted": ({DeliveryState.OFFERED}, DeliveryState.ACCEPTED, ReportOutcome.ACCEPTED),
    "picked_up": ({DeliveryState.OFFERED, DeliveryState.ACCEPTED}, DeliveryState.PICKED_UP, ReportOutcome.PICKED_UP),
    "delivered": ({DeliveryState.PICKED_UP}, DeliveryState.DELIVERED, ReportOutcome.DELIVERED),
}


def apply_report(
    delivery: Delivery,
    *,
    dispatch_id: str,
    courier_id: str,
    status: str,
    failure_reason: FailureReason | None,
    code_is_right: bool,
    policy: Policy,
    now: datetime,
) -> tuple[Delivery, ReportOutcome]:
    """A courier's report on its current dispatch. Reports on someone else's dispatch, on an old or
    withdrawn attempt, or out of order are refused: they are kept for a person, never acted on.
    'delivered' counts only with the right code (`code_is_right`); a wrong one only counts itself,
    and after `policy.max_wrong_codes` of them the attempt takes no more codes (see `_code_reported`)."""
    attempt = next((a for a in delivery.attempts if a.dispatch_id == dispatch_id), None)
    if attempt is None:
        raise ReportRefused("unknown_dispatch", f"no dispatch {dispatch_id} for this package")
    if attempt.courier_id != courier_id:
        raise ReportRefused("not_your_dispatch", f"dispatch {dispatch_id} is assigned to another courier")
    is_current = attempt is delivery.current
    if is_current and _already_applied(delivery, attempt, status):
        return delivery, ReportOutcome.IGNORED
    if attempt.status is AttemptStatus.TIMED_OUT:
        raise ReportRefused("offer_expired", f"dispatch {dispatch_id} was not accepted in time and went to another")
    if is_current and delivery.state is DeliveryState.RETURNING:
        return _while_returning(delivery, attempt, status, code_is_right=code_is_right, policy=policy, now=now)
    if not is_current or delivery.state in FINISHED or attempt.status is not AttemptStatus.OFFERED:
        raise ReportRefused("dispatch_closed", f"dispatch {dispatch_id} is no longer active ({delivery.state})")
    if status == "returned":
        raise ReportRefused("out_of_order", f"'returned' reported while the delivery is {delivery.state}")

    if status in _NEXT:
        allowed, target, outcome = _NEXT[status]
        if delivery.state not in allowed:
            raise ReportRefused("out_of_order", f"'{status}' reported while the delivery is {delivery.state}")
        match status:
            case "accepted":
                moved = attempt.model_copy(update={"accepted_at": now})
            case "picked_up":
                moved = attempt.model_copy(update={"picked_up_at": now, "accepted_at": attempt.accepted_at or now})
            case _:
                return _code_reported(delivery, attempt, code_is_right=code_is_right, policy=policy)
        return _replace_current(delivery, moved, state=target, active_courier_id=courier_id), outcome

    # failed
    assert failure_reason is not None
    failed = attempt.model_copy(update={"status": AttemptStatus.FAILED, "failure_reason": failure_reason})
    after = _replace_current(delivery, failed)
    if will_retry(failures(after), failure_reason, policy):
        if failure_reason == "damaged":
            # Not offered again until the warehouse has packed it again (or says it cannot).
            repack = {"state": DeliveryState.WAITING, "active_courier_id": None, "repack_pending": True}
            return after.model_copy(update=repack), ReportOutcome.FAILED_WILL_RETRY
        return await_courier(after, now), ReportOutcome.FAILED_WILL_RETRY
    given_up = after.model_copy(update={"state": DeliveryState.UNDELIVERABLE, "active_courier_id": None})
    return given_up, ReportOutcome.FAILED_GIVEN_UP


def _code_reported(
    delivery: Delivery, attempt: Attempt, *, code_is_right: bool, policy: Policy
) -> tuple[Delivery, ReportOutcome]:
    """'delivered' with the goods in hand: the right code delivers, a wrong one is counted. The
    `max_wrong_codes`-th wrong code locks the attempt, so the six digits cannot be guessed by trying:
    every later 'delivered' on it is refused, and the dispatcher decides (a failure report still counts)."""
    if attempt.code_locked:
        raise ReportRefused(
            "code_locked",
            f"{attempt.wrong_codes} wrong codes were reported on dispatch {attempt.dispatch_id}: "
            "it takes no more codes; the dispatcher decides",
        )
    if not code_is_right:
        wrong = attempt.wrong_codes + 1
        locked = wrong >= policy.max_wrong_codes
        rejected = attempt.model_copy(update={"wrong_codes": wrong, "code_locked": locked})
        return _replace_current(
            delivery, rejected
        ), ReportOutcome.CODE_LOCKED if locked else ReportOutcome.CODE_REJECTED
    done = attempt.model_copy(update={"status": AttemptStatus.DELIVERED})
    return _replace_current(delivery, done, state=DeliveryState.DELIVERED, active_courier_id=None), (
        ReportOutcome.DELIVERED
    )


def _while_returning(
    delivery: Delivery, attempt: Attempt, status: str, *, code_is_right: bool, policy: Policy, now: datetime
) -> tuple[Delivery, ReportOutcome]:
    """Reports on a dispatch recalled by a cancellation (see `cancel`). The courier confirms with
    'returned'. Reports sent before the recall reached the courier still count: a pickup (the goods
    are on the road and will come back), or a delivery with the right code (the patient has the
    goods: the cancellation came too late)."""
    match status:
        case "returned":
            back = attempt.model_copy(update={"returned_at": now})
            closed = _replace_current(delivery, back, state=DeliveryState.CANCELLED, active_courier_id=None)
            return closed, ReportOutcome.RETURNED
        case "picked_up":
            taken = attempt.model_copy(update={"picked_up_at": now, "accepted_at": attempt.accepted_at or now})
            return _replace_current(delivery, taken), ReportOutcome.PICKED_UP
        case "delivered":
            if attempt.picked_up_at is None:
                raise ReportRefused(
                    "out_of_order", f"'delivered' reported on dispatch {attempt.dispatch_id}, never picked up"
                )
            return _code_reported(delivery, attempt, code_is_right=code_is_right, policy=policy)
    raise ReportRefused(
        "dispatch_withdrawn",
        f"dispatch {attempt.dispatch_id} was cancelled: bring the goods back (if taken) and report 'returned'",
    )


# --- deadlines (the sweep) -----------------------------------------------------------------------------------

OverdueStage = Literal["awaiting_stock", "awaiting_courier", "on_the_road"]


def offer_expired(delivery: Delivery, now: datetime) -> bool:
    """An offer not accepted by its `accept_by` (exactly at it counts as expired)."""
    attempt = delivery.current
    return (
        delivery.state is DeliveryState.OFFERED
        and attempt is not None
        and attempt.accept_by is not None
        and now >= attempt.accept_by
    )


def expire_offer(delivery: Delivery, now: datetime) -> Delivery:
    """The courier did not accept in time: the attempt times out and the delivery waits for the next one."""
    attempt = delivery.current
    assert attempt is not None and offer_expired(delivery, now)
    timed_out = attempt.model_copy(update={"status": AttemptStatus.TIMED_OUT})
    return await_courier(_replace_current(delivery, timed_out), now)


def overdue(delivery: Delivery, now: datetime, policy: Policy) -> tuple[OverdueStage, datetime] | None:
    """A deadline that passed and was not alerted yet: the stage and since when. Exactly at the
    deadline counts as passed. Waiting for the stock reservation after the approval has the same
    limit as waiting for a courier."""
    if waiting_for_stock(delivery):
        since = delivery.details_at
        assert since is not None
        if not delivery.stock_overdue_alerted and now >= since + policy.courier_wait_deadline:
            return "awaiting_stock", since
        return None
    if delivery.state is DeliveryState.AWAITING_COURIER and delivery.awaiting_since is not None:
        since = delivery.awaiting_since
        if not delivery.waiting_overdue_alerted and now >= since + policy.courier_wait_deadline:
            return "awaiting_courier", since
        return None
    attempt = delivery.current
    if delivery.state in _CARRYING and attempt is not None and attempt.on_the_road_since is not None:
        since = attempt.on_the_road_since
        if not attempt.overdue_alerted and now >= since + policy.on_the_road_deadline:
            return "on_the_road", since
    return None


def waiting_for_stock(delivery: Delivery) -> bool:
    """Approved (the delivery details are here) but no reservation yet."""
    return (
        delivery.state is DeliveryState.WAITING
        and delivery.details is not None
        and delivery.details_at is not None
        and delivery.warehouse_id is None
    )


def mark_overdue(delivery: Delivery, stage: OverdueStage) -> Delivery:
    if stage == "awaiting_stock":
        return delivery.model_copy(update={"stock_overdue_alerted": True})
    if stage == "awaiting_courier":
        return delivery.model_copy(update={"waiting_overdue_alerted": True})
    attempt = delivery.current
    assert attempt is not None
    return _replace_current(delivery, attempt.model_copy(update={"overdue_alerted": True}))


# --- cancellation ---------------------------------------------------------------------------------------------


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # nothing had left: closed at once
    WITHDRAWN = "withdrawn"  # offered, not accepted: the courier is told to stop
    RECALLED = "recalled"  # accepted or picked up: the courier brings the goods back, or confirms they never took them
    TOO_LATE = "too_late"  # delivered or undeliverable already
    ALREADY = "already"  # cancelled or coming back already


def cancel(delivery: Delivery) -> tuple[Delivery, CancelOutcome]:
    """The prescription was withdrawn. Before any courier accepted, the delivery closes at once.

    Once a courier accepted, it closes only when the courier reports 'returned' (RETURNING until
    then): a courier on the way may already hold the goods, their 'picked_up' still in flight. The
    held stock stays reserved meanwhile, so the warehouse books never guess: a late pickup moves
    it onto the road (and it comes back to quarantine), a 'returned' without any pickup releases
    it to the shelf. Releasing at once and taking units back off the shelf later could not be exact:
    they may have been reserved for someone else by then. The courier's silence is bounded by the
    on-the-road deadline (the dispatcher is alerted)."""
    attempt = delivery.current
    match delivery.state:
        case DeliveryState.WAITING | DeliveryState.AWAITING_COURIER:
            closed = delivery.model_copy(
                update={
                    "state": DeliveryState.CANCELLED,
                    "active_courier_id": None,
                    "awaiting_since": None,
                    "cancel_notice_due": delivery.warehouse_id is None,
                }
            )
            return closed, CancelOutcome.CANCELLED
        case DeliveryState.OFFERED:
            assert attempt is not None
            withdrawn = attempt.model_copy(update={"status": AttemptStatus.WITHDRAWN})
            closed = _replace_current(delivery, withdrawn, state=DeliveryState.CANCELLED, active_courier_id=None)
            return closed, CancelOutcome.WITHDRAWN
        case DeliveryState.ACCEPTED | DeliveryState.PICKED_UP:
            assert attempt is not None
            withdrawn = attempt.model_copy(update={"status": AttemptStatus.WITHDRAWN})
            return _replace_current(delivery, withdrawn, state=DeliveryState.RETURNING), CancelOutcome.RECALLED
        case DeliveryState.DELIVERED | DeliveryState.UNDELIVERABLE:
            return delivery, CancelOutcome.TOO_LATE
    return delivery, CancelOutcome.ALREADY
