"""Dispatches to couriers, their reports back, and the delivery lifecycle."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .consultation import Address, Coordinates, Phone
from .envelope import Envelope, Identifier, UtcDatetime

FailureReason = Literal["patient_absent", "address_not_found", "refused", "damaged", "other"]
DeliveryCode = Annotated[str, Field(pattern=r"^[0-9]{6}$")]


class DispatchOffered(Envelope):
    """→ `courier.dispatch.v1`, keyed by courier id. Only what the trip needs: no name, no drugs."""

    type: Literal["courier.dispatch_offered"] = "courier.dispatch_offered"
    dispatch_id: Identifier
    courier_id: Identifier
    package_id: Identifier
    attempt: int = Field(ge=1)
    pickup_warehouse_id: Identifier
    address: Address
    contact_phone: Phone
    cold_chain: bool
    controlled: bool
    pickup_location: Coordinates | None = None
    accept_by: UtcDatetime | None = Field(default=None, description="Not accepted by then, it goes to the next courier")


class DispatchWithdrawn(Envelope):
    """→ `courier.dispatch.v1`: stop. If the goods are with the courier, bring them back to the warehouse."""

    type: Literal["courier.dispatch_withdrawn"] = "courier.dispatch_withdrawn"
    dispatch_id: Identifier
    courier_id: Identifier
    package_id: Identifier
    reason: Literal["acceptance_timeout", "cancelled"]
    return_goods: bool


class CourierReported(Envelope):
    """A courier's report on `courier.updates.v1`, keyed by package id."""

    type: Literal["courier.reported"] = "courier.reported"
    dispatch_id: Identifier
    courier_id: Identifier
    package_id: Identifier
    status: Literal["accepted", "picked_up", "delivered", "failed", "returned"]
    failure_reason: FailureReason | None = None
    delivery_code: DeliveryCode | None = Field(
        default=None, description="The code the patient reads out at the door; required for 'delivered'"
    )
    note: Annotated[str, Field(max_length=300)] | None = None

    @model_validator(mode="after")
    def _failure_needs_a_reason(self) -> CourierReported:
        if (self.status == "failed") != (self.failure_reason is not None):
            raise ValueError("failure_reason is required for status 'failed' and only then")
        if self.delivery_code is not None and self.status != "delivered":
            raise ValueError("delivery_code belongs to a 'delivered' report only")
        return self


class _DeliveryEvent(Envelope):
    prescription_id: Identifier
    dispatch_id: Identifier
    courier_id: Identifier
    attempt: int = Field(ge=1)


class CourierAssigned(_DeliveryEvent):
    type: Literal["courier.assigned"] = "courier.assigned"
    warehouse_id: Identifier


class DeliveryAccepted(_DeliveryEvent):
    type: Literal["courier.delivery_accepted"] = "courier.delivery_accepted"


class DeliveryPickedUp(_DeliveryEvent):
    type: Literal["courier.picked_up"] = "courier.picked_up"
    warehouse_id: Identifier


class DeliveryCompleted(_DeliveryEvent):
    type: Literal["courier.delivered"] = "courier.delivered"
    warehouse_id: Identifier


class DeliveryFailed(_DeliveryEvent):
    type: Literal["courier.delivery_failed"] = "courier.delivery_failed"
    warehouse_id: Identifier
    reason: FailureReason
    goods_returned: bool = Field(description="The goods had been picked up and came back to the warehouse")
    will_retry: bool


class DeliveryAbandoned(Envelope):
    """Undeliverable: the policy for the last failure allows no more attempts. Goods that travelled
    go to quarantine; goods that never left are released."""

    type: Literal["courier.delivery_abandoned"] = "courier.delivery_abandoned"
    prescription_id: Identifier
    warehouse_id: Identifier
    attempts: int = Field(ge=1)
    last_reason: FailureReason
    goods_travelled: bool = False


class DeliveryOfferExpired(_DeliveryEvent):
    """The courier did not accept in time; the delivery goes to the next courier."""

    type: Literal["courier.offer_expired"] = "courier.offer_expired"


class DeliveryWaiting(Envelope):
    """No courier can take the delivery now (capacity, cold chain); it is offered when one frees up."""

    type: Literal["courier.delivery_waiting"] = "courier.delivery_waiting"
    prescription_id: Identifier
    warehouse_id: Identifier
    why: Annotated[str, Field(min_length=1, max_length=300)]


class DeliveryCodeRejected(_DeliveryEvent):
    """A 'delivered' report with a wrong or missing code: the delivery does not count."""

    type: Literal["courier.delivery_code_rejected"] = "courier.delivery_code_rejected"
    wrong_codes: int = Field(ge=1, description="Wrong codes reported on this attempt so far")


class DeliveryOverdue(Envelope):
    """A deadline passed: the dispatcher on duty is alerted (sent once per stage and attempt)."""

    type: Literal["courier.delivery_overdue"] = "courier.delivery_overdue"
    prescription_id: Identifier
    stage: Literal["awaiting_courier", "on_the_road"]
    since: UtcDatetime
    courier_id: Identifier | None = None


class DeliveryCancelled(Envelope):
    """The prescription was withdrawn; the delivery is closed once nothing is on the road."""

    type: Literal["courier.delivery_cancelled"] = "courier.delivery_cancelled"
    prescription_id: Identifier
    warehouse_id: Identifier | None = None
    goods_returned: bool = Field(description="The goods had left and a courier brought them back")
