"""Delivery rules. Pure: a delivery and a fact in, a new delivery and what happened out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from pydantic import BaseModel, Field

from pharmacy_contracts.prescription import DeliveryDetails


class CourierProfile(BaseModel):
    courier_id: str
    name: str
    zone: str = ""
    active: bool = True


class DeliveryState(StrEnum):
    WAITING = "waiting"  # for the approval's delivery details or for the stock reservation
    AWAITING_COURIER = "awaiting_courier"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    CANCELLED = "cancelled"


ON_THE_ROAD = frozenset({DeliveryState.OFFERED, DeliveryState.ACCEPTED, DeliveryState.PICKED_UP})
FINISHED = frozenset({DeliveryState.DELIVERED, DeliveryState.UNDELIVERABLE, DeliveryState.CANCELLED})


class Attempt(BaseModel):
    number: int
    dispatch_id: str
    courier_id: str
    failure_reason: str | None = None


class Delivery(BaseModel):
    prescription_id: str
    state: DeliveryState = DeliveryState.WAITING
    details: DeliveryDetails | None = None
    warehouse_id: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    active_courier_id: str | None = Field(default=None, description="Set while a courier is on this delivery")

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


class ReportOutcome(StrEnum):
    ACCEPTED = "accepted"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    FAILED_WILL_RETRY = "failed_will_retry"
    FAILED_GIVEN_UP = "failed_given_up"
    IGNORED = "ignored"  # a repeat of something already applied


class ReportRefused(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def dispatch_id_for(prescription_id: str, attempt: int) -> str:
    """Deterministic, so a redelivered message re-creates the same dispatch, not a second one."""
    return f"{prescription_id}-D{attempt}"


def choose_courier(
    roster: Iterable[CourierProfile], loads: Mapping[str, int], tried: Iterable[str]
) -> CourierProfile | None:
    """Simple rule for now: an active courier who has not tried this delivery yet (any active
    courier if all have), with the fewest deliveries on the road; ties by id."""
    active = [c for c in roster if c.active]
    tried = set(tried)
    fresh = [c for c in active if c.courier_id not in tried] or active
    return min(fresh, key=lambda c: (loads.get(c.courier_id, 0), c.courier_id), default=None)


def ready_to_offer(delivery: Delivery) -> bool:
    return (
        delivery.state in (DeliveryState.WAITING, DeliveryState.AWAITING_COURIER)
        and delivery.details is not None
        and delivery.warehouse_id is not None
    )


def offer(delivery: Delivery, courier: CourierProfile | None) -> Delivery:
    if courier is None:
        return delivery.model_copy(update={"state": DeliveryState.AWAITING_COURIER, "active_courier_id": None})
    number = len(delivery.attempts) + 1
    attempt = Attempt(
        number=number, dispatch_id=dispatch_id_for(delivery.prescription_id, number), courier_id=courier.courier_id
    )
    return delivery.model_copy(
        update={
            "state": DeliveryState.OFFERED,
            "attempts": [*delivery.attempts, attempt],
            "active_courier_id": courier.courier_id,
        }
    )


def _already_applied(delivery: Delivery, current: Attempt, status: str) -> bool:
    """A courier's app may send the same report twice (new message id, same meaning)."""
    if status == "failed":
        return current.failure_reason is not None
    return status in _NEXT and delivery.state is _NEXT[status][1]


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
    failure_reason: str | None,
    max_attempts: int,
) -> tuple[Delivery, ReportOutcome]:
    """A courier's report on its current dispatch. Reports on someone else's dispatch, on an old
    attempt, or out of order are refused: they are kept for a person, never acted on."""
    current = delivery.current
    if current is None or dispatch_id not in {a.dispatch_id for a in delivery.attempts}:
        raise ReportRefused("unknown_dispatch", f"no dispatch {dispatch_id} for this package")
    owner = next(a for a in delivery.attempts if a.dispatch_id == dispatch_id)
    if owner.courier_id != courier_id:
        raise ReportRefused("not_your_dispatch", f"dispatch {dispatch_id} is assigned to another courier")
    if dispatch_id == current.dispatch_id and _already_applied(delivery, current, status):
        return delivery, ReportOutcome.IGNORED
    if dispatch_id != current.dispatch_id or delivery.state in FINISHED:
        raise ReportRefused("dispatch_closed", f"dispatch {dispatch_id} is no longer active ({delivery.state})")

    if status in _NEXT:
        allowed, target, outcome = _NEXT[status]
        if delivery.state not in allowed:
            raise ReportRefused("out_of_order", f"'{status}' reported while the delivery is {delivery.state}")
        active = None if target is DeliveryState.DELIVERED else courier_id
        return delivery.model_copy(update={"state": target, "active_courier_id": active}), outcome

    # failed
    attempts = [*delivery.attempts[:-1], current.model_copy(update={"failure_reason": failure_reason})]
    if len(attempts) >= max_attempts:
        given_up = delivery.model_copy(
            update={"state": DeliveryState.UNDELIVERABLE, "attempts": attempts, "active_courier_id": None}
        )
        return given_up, ReportOutcome.FAILED_GIVEN_UP
    retry = delivery.model_copy(
        update={"state": DeliveryState.AWAITING_COURIER, "attempts": attempts, "active_courier_id": None}
    )
    return retry, ReportOutcome.FAILED_WILL_RETRY
