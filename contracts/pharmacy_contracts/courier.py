"""Dispatches to couriers, their reports back, and the delivery lifecycle."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .consultation import Address, Phone
from .envelope import Envelope, Identifier

FailureReason = Literal["patient_absent", "address_not_found", "refused", "damaged", "other"]


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


class CourierReported(Envelope):
    """A courier's report on `courier.updates.v1`, keyed by package id."""

    type: Literal["courier.reported"] = "courier.reported"
    dispatch_id: Identifier
    courier_id: Identifier
    package_id: Identifier
    status: Literal["accepted", "picked_up", "delivered", "failed"]
    failure_reason: FailureReason | None = None
    note: Annotated[str, Field(max_length=300)] | None = None

    @model_validator(mode="after")
    def _failure_needs_a_reason(self) -> CourierReported:
        if (self.status == "failed") != (self.failure_reason is not None):
            raise ValueError("failure_reason is required for status 'failed' and only then")
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
    """Undeliverable: the retry limit is reached; inventory releases the held stock."""

    type: Literal["courier.delivery_abandoned"] = "courier.delivery_abandoned"
    prescription_id: Identifier
    warehouse_id: Identifier
    attempts: int = Field(ge=1)
    last_reason: FailureReason
