"""The courier service's outgoing events: every one is assembled here, its envelope filled by
`PRODUCER`. Pure functions: the decisions say what happened, these say how it is told.

`causation_id` is the id of the message that made the event happen; None for what a sweep or the
waiting pass decides on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pharmacy_contracts import courier as c
from pharmacy_contracts.consultation import Address, Coordinates
from pharmacy_contracts.courier import FailureReason
from pharmacy_contracts.envelope import Producer

from .domain import Attempt, CourierProfile, Delivery, OverdueStage, ReportOutcome

PRODUCER = Producer("courier")


# --- offering ----------------------------------------------------------------------------------------


def delivery_waiting(delivery: Delivery, why: str, causation_id: str | None) -> c.DeliveryWaiting:
    rx = delivery.prescription_id
    return c.DeliveryWaiting(
        **PRODUCER.envelope(rx, causation_id), prescription_id=rx, warehouse_id=delivery.warehouse_id, why=why
    )


def courier_assigned(
    delivery: Delivery, attempt: Attempt, courier: CourierProfile, causation_id: str | None
) -> c.CourierAssigned:
    rx = delivery.prescription_id
    return c.CourierAssigned(
        **PRODUCER.envelope(rx, causation_id),
        prescription_id=rx,
        dispatch_id=attempt.dispatch_id,
        courier_id=courier.courier_id,
        attempt=attempt.number,
        warehouse_id=delivery.warehouse_id,
    )


def dispatch_offered(
    delivery: Delivery, attempt: Attempt, courier: CourierProfile, causation_id: str | None
) -> c.DispatchOffered:
    assert delivery.details is not None
    rx = delivery.prescription_id
    return c.DispatchOffered(
        **PRODUCER.envelope(rx, causation_id),
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
        round_id=attempt.round_id,
        stop=attempt.stop,
        expected_at=attempt.expected_at,
    )


def round_offered(
    round_id: str,
    courier_id: str,
    *,
    planned_at: datetime,
    depot: str,
    pickup_location: Coordinates | None,
    departs_at: datetime,
    returns_at: datetime,
    km: float,
    stops: Sequence[tuple[int, str, Delivery, datetime]],
) -> c.RoundOffered:
    """A round as its courier is told it: each stop (number, dispatch id, delivery, time at the
    door) in order, with the door's address and whether it is cold, nothing more."""
    return c.RoundOffered(
        **PRODUCER.envelope(round_id, None),
        round_id=round_id,
        courier_id=courier_id,
        planned_at=planned_at,
        pickup_warehouse_id=depot,
        pickup_location=pickup_location,
        departs_at=departs_at,
        returns_at=returns_at,
        km=round(km, 1),
        stops=[
            c.RoundStop(
                stop=number,
                dispatch_id=dispatch_id,
                package_id=delivery.prescription_id,
                address=_address(delivery),
                cold_chain=delivery.cold_chain,
                expected_at=expected_at,
            )
            for number, dispatch_id, delivery, expected_at in stops
        ],
    )


def _address(delivery: Delivery) -> Address:
    assert delivery.details is not None
    return delivery.details.address


def dispatch_withdrawn(
    attempt: Attempt,
    rx: str,
    causation_id: str | None,
    *,
    reason: Literal["acceptance_timeout", "cancelled", "recalled"],
    return_goods: bool,
) -> c.DispatchWithdrawn:
    return c.DispatchWithdrawn(
        **PRODUCER.envelope(rx, causation_id),
        dispatch_id=attempt.dispatch_id,
        courier_id=attempt.courier_id,
        package_id=rx,
        reason=reason,
        return_goods=return_goods,
    )


def delivery_cancelled(
    rx: str, causation_id: str | None, warehouse_id: str | None, *, goods_returned: bool = False
) -> c.DeliveryCancelled:
    return c.DeliveryCancelled(
        **PRODUCER.envelope(rx, causation_id),
        prescription_id=rx,
        warehouse_id=warehouse_id,
        goods_returned=goods_returned,
    )


# --- what couriers report ----------------------------------------------------------------------------
# Each report answers the attempt it was about; the events carry that attempt as it stood before it.


def delivery_accepted(rx: str, attempt: Attempt, causation_id: str) -> c.DeliveryAccepted:
    return c.DeliveryAccepted(**PRODUCER.envelope(rx, causation_id), **_attempt(rx, attempt))


def delivery_picked_up(rx: str, attempt: Attempt, warehouse_id: str, causation_id: str) -> c.DeliveryPickedUp:
    return c.DeliveryPickedUp(
        **PRODUCER.envelope(rx, causation_id),
        **_attempt(rx, attempt),
        warehouse_id=warehouse_id,
        expected_at=attempt.expected_at,
    )


def delivery_completed(rx: str, attempt: Attempt, warehouse_id: str, causation_id: str) -> c.DeliveryCompleted:
    return c.DeliveryCompleted(
        **PRODUCER.envelope(rx, causation_id), **_attempt(rx, attempt), warehouse_id=warehouse_id
    )


def delivery_code_rejected(
    rx: str, attempt: Attempt, causation_id: str, *, wrong_codes: int, locked: bool
) -> c.DeliveryCodeRejected:
    return c.DeliveryCodeRejected(
        **PRODUCER.envelope(rx, causation_id), **_attempt(rx, attempt), wrong_codes=wrong_codes, locked=locked
    )


def delivery_failed(
    rx: str,
    attempt: Attempt,
    warehouse_id: str,
    causation_id: str,
    *,
    reason: FailureReason,
    goods_returned: bool,
    will_retry: bool,
) -> c.DeliveryFailed:
    return c.DeliveryFailed(
        **PRODUCER.envelope(rx, causation_id),
        **_attempt(rx, attempt),
        warehouse_id=warehouse_id,
        reason=reason,
        goods_returned=goods_returned,
        will_retry=will_retry,
    )


def delivery_abandoned(
    rx: str,
    warehouse_id: str,
    causation_id: str,
    *,
    attempts: int,
    last_reason: FailureReason,
    goods_travelled: bool,
) -> c.DeliveryAbandoned:
    return c.DeliveryAbandoned(
        **PRODUCER.envelope(rx, causation_id),
        prescription_id=rx,
        warehouse_id=warehouse_id,
        attempts=attempts,
        last_reason=last_reason,
        goods_travelled=goods_travelled,
    )


# --- deadlines (the sweep) -----------------------------------------------------------------------------


def delivery_offer_expired(rx: str, attempt: Attempt) -> c.DeliveryOfferExpired:
    return c.DeliveryOfferExpired(**PRODUCER.envelope(rx), **_attempt(rx, attempt))


def delivery_overdue(rx: str, *, stage: OverdueStage, since: datetime, courier_id: str | None) -> c.DeliveryOverdue:
    return c.DeliveryOverdue(
        **PRODUCER.envelope(rx), prescription_id=rx, stage=stage, since=since, courier_id=courier_id
    )


def _attempt(rx: str, attempt: Attempt) -> dict[str, str | int]:
    return {
        "prescription_id": rx,
        "dispatch_id": attempt.dispatch_id,
        "courier_id": attempt.courier_id,
        "attempt": attempt.number,
    }


#: What a courier is told about each report the service applied: (outcome, code, sentence).
REPORT_ANSWERS: dict[ReportOutcome, tuple[Literal["applied", "refused"], str | None, str]] = {
    ReportOutcome.ACCEPTED: ("applied", None, "accepted: pick the package up at the warehouse"),
    ReportOutcome.PICKED_UP: ("applied", None, "picked up: on your way to the patient"),
    ReportOutcome.DELIVERED: ("applied", None, "delivered: the code is right, thank you"),
    ReportOutcome.CODE_REJECTED: (
        "refused",
        "wrong_code",
        "the delivery code is not the patient's: ask the patient to read it again (it is not delivered yet)",
    ),
    ReportOutcome.CODE_LOCKED: (
        "refused",
        "code_locked",
        "too many wrong codes on this delivery: it takes no more; call the dispatcher",
    ),
    ReportOutcome.FAILED_WILL_RETRY: ("applied", None, "failure noted: the delivery will be tried again"),
    ReportOutcome.FAILED_GIVEN_UP: ("applied", None, "failure noted: the delivery is given up"),
    ReportOutcome.RETURNED: ("applied", None, "returned: the goods are back at the warehouse"),
}


def report_answered(report: c.CourierReported, outcome: ReportOutcome) -> c.ReportAnswered:
    answer, code, detail = REPORT_ANSWERS[outcome]
    return c.ReportAnswered(
        **PRODUCER.envelope(report.correlation_id, report),
        courier_id=report.courier_id,
        dispatch_id=report.dispatch_id,
        answers_message_id=report.message_id,
        outcome=answer,
        code=code,
        detail=detail,
    )


def report_refused(
    courier_id: str, *, dispatch_id: str | None, message_id: str | None, correlation_id: str, code: str, detail: str
) -> c.ReportAnswered:
    """The answer to a report refused before it changed anything (its dead letter keeps it)."""
    return c.ReportAnswered(
        **PRODUCER.envelope(correlation_id, message_id),
        courier_id=courier_id,
        dispatch_id=dispatch_id,
        answers_message_id=message_id,
        outcome="refused",
        code=code[:64],
        detail=detail[:2000] or None,
    )
