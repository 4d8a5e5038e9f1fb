"""Dispatches to couriers, their reports back, and the delivery lifecycle."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .consultation import EXAMPLE_PRESCRIPTION, Address, Coordinates, Phone
from .envelope import Contract, Envelope, Identifier, UtcDatetime, example_id, wire_example
from .limits import MULTILINE, ONE_LINE, Attempts

# A courier's or a dispatcher's few words for a person to read.
Remark = Annotated[str, Field(max_length=300), MULTILINE]

FailureReason = Literal["patient_absent", "address_not_found", "refused", "damaged", "other"]
DeliveryCode = Annotated[str, Field(pattern=r"^[0-9]{6}$")]

# The published examples follow one prescription's first delivery attempt.
_RX = EXAMPLE_PRESCRIPTION["prescription_id"]
_TRIP = {"prescription_id": _RX, "dispatch_id": f"{_RX}-D1", "courier_id": "CUR-07", "attempt": 1}
_PACKAGE = {"dispatch_id": f"{_RX}-D1", "courier_id": "CUR-07", "package_id": _RX}
_WH = "WH-NORTHFORD"


def _after(message_type: str) -> dict[str, str]:
    return {"correlation_id": _RX, "causation_id": example_id(message_type), "producer": "courier"}


class DispatchOffered(Envelope):
    """→ `courier.dispatch.v1`, keyed by courier id. Only what the trip needs: no name, no drugs."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("inventory.stock_reserved"),
            **_PACKAGE,
            attempt=1,
            pickup_warehouse_id=_WH,
            address=EXAMPLE_PRESCRIPTION["patient"]["address"],
            contact_phone="+7 701 555 0134",
            cold_chain=False,
            controlled=False,
            pickup_location={"latitude": 51.806, "longitude": 69.391},
            accept_by="2026-11-25T08:15:10Z",
        )
    )

    type: Literal["courier.dispatch_offered"] = "courier.dispatch_offered"
    dispatch_id: Identifier
    courier_id: Identifier
    package_id: Identifier
    attempt: Attempts
    pickup_warehouse_id: Identifier
    address: Address
    contact_phone: Phone | None = Field(default=None, description="Absent: the patient gave no phone")
    cold_chain: bool
    controlled: bool
    pickup_location: Coordinates | None = None
    accept_by: UtcDatetime | None = Field(default=None, description="Not accepted by then, it goes to the next courier")
    round_id: Identifier | None = Field(
        default=None, description="The delivery round this stop belongs to; absent, a trip of its own"
    )
    stop: Annotated[int, Field(ge=1, le=200)] | None = Field(
        default=None, description="Its place in the round: 1 is driven to first. A re-planned round sends it again"
    )
    expected_at: UtcDatetime | None = Field(default=None, description="When the round is planned to reach the door")


class RoundStop(Contract):
    """One door of a round, in the order it is driven to: no name, diagnosis or drug."""

    stop: Annotated[int, Field(ge=1, le=200)]
    dispatch_id: Identifier
    package_id: Identifier
    address: Address
    cold_chain: bool
    expected_at: UtcDatetime


class RoundOffered(Envelope):
    """→ `courier.dispatch.v1`, keyed by courier id: a delivery round from one depot, its stops in
    the order planned (each stop is also its own `courier.dispatch_offered`, which the courier
    accepts, picks up, delivers or fails one by one). Sent again when the round is re-planned before
    it leaves: the latest `planned_at` is the plan."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("inventory.stock_reserved"),
            round_id="R-WH-NORTHFORD-CUR-07-20261125T0800",
            courier_id="CUR-07",
            planned_at="2026-11-25T07:55:00Z",
            pickup_warehouse_id=_WH,
            pickup_location={"latitude": 51.806, "longitude": 69.391},
            departs_at="2026-11-25T08:00:00Z",
            returns_at="2026-11-25T11:40:00Z",
            km=118.4,
            stops=[
                {
                    "stop": 1,
                    "dispatch_id": f"{_RX}-D1",
                    "package_id": _RX,
                    "address": EXAMPLE_PRESCRIPTION["patient"]["address"],
                    "cold_chain": False,
                    "expected_at": "2026-11-25T08:47:00Z",
                }
            ],
        )
    )

    type: Literal["courier.round_offered"] = "courier.round_offered"
    round_id: Identifier
    courier_id: Identifier
    planned_at: UtcDatetime
    pickup_warehouse_id: Identifier
    pickup_location: Coordinates | None = None
    departs_at: UtcDatetime
    returns_at: UtcDatetime
    km: Annotated[float, Field(ge=0, le=100_000)]
    stops: list[RoundStop] = Field(min_length=1, max_length=200)


class DispatchWithdrawn(Envelope):
    """→ `courier.dispatch.v1`: stop. If the goods are with the courier, bring them back to the warehouse."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("prescription.cancelled"),
            **_PACKAGE,
            reason="cancelled",
            return_goods=True,
        )
    )

    type: Literal["courier.dispatch_withdrawn"] = "courier.dispatch_withdrawn"
    dispatch_id: Identifier
    courier_id: Identifier
    package_id: Identifier
    reason: Literal["acceptance_timeout", "cancelled", "recalled"] = Field(
        description="`recalled`: a lot in the package was recalled (if on the road, it comes back to quarantine)"
    )
    return_goods: bool


class CourierReported(Envelope):
    """A courier's report on `courier.updates.v1`, keyed by package id."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="courier-app-CUR-07",
            **_PACKAGE,
            status="delivered",
            delivery_code="407193",
            note="Handed to the patient at the gate",
        )
    )

    type: Literal["courier.reported"] = "courier.reported"
    dispatch_id: Identifier
    courier_id: Identifier
    package_id: Identifier
    status: Literal["accepted", "picked_up", "delivered", "failed", "returned"]
    failure_reason: FailureReason | None = None
    delivery_code: DeliveryCode | None = Field(
        default=None, description="The code the patient reads out at the door; required for 'delivered'"
    )
    note: Remark | None = None

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
    attempt: Attempts


class CourierAssigned(_DeliveryEvent):
    """The delivery was offered to a courier (one dispatch id per attempt)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("inventory.stock_reserved"),
            **_TRIP,
            warehouse_id=_WH,
        )
    )

    type: Literal["courier.assigned"] = "courier.assigned"
    warehouse_id: Identifier


class DeliveryAccepted(_DeliveryEvent):
    """The courier accepted the offer."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.reported"),
            **_TRIP,
        )
    )

    type: Literal["courier.delivery_accepted"] = "courier.delivery_accepted"


class DeliveryPickedUp(_DeliveryEvent):
    """The courier collected the goods at the warehouse."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.reported"),
            **_TRIP,
            warehouse_id=_WH,
        )
    )

    type: Literal["courier.picked_up"] = "courier.picked_up"
    warehouse_id: Identifier
    expected_at: UtcDatetime | None = Field(
        default=None, description="When the delivery round is planned to reach the door (absent: a trip of its own)"
    )


class DeliveryCompleted(_DeliveryEvent):
    """Delivered: the courier reported the code only the patient knows."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.reported"),
            **_TRIP,
            warehouse_id=_WH,
        )
    )

    type: Literal["courier.delivered"] = "courier.delivered"
    warehouse_id: Identifier


class DeliveryFailed(_DeliveryEvent):
    """An attempt failed, with its reason; says whether goods came back and whether it is retried."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.reported"),
            **_TRIP,
            warehouse_id=_WH,
            reason="patient_absent",
            goods_returned=True,
            will_retry=True,
        )
    )

    type: Literal["courier.delivery_failed"] = "courier.delivery_failed"
    warehouse_id: Identifier
    reason: FailureReason
    goods_returned: bool = Field(description="The goods had been picked up and came back to the warehouse")
    will_retry: bool


class DeliveryAbandoned(Envelope):
    """Undeliverable: the policy for the last failure allows no more attempts. Goods that travelled
    go to quarantine; goods that never left are released."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.reported"),
            prescription_id=_RX,
            warehouse_id=_WH,
            attempts=3,
            last_reason="address_not_found",
            goods_travelled=True,
        )
    )

    type: Literal["courier.delivery_abandoned"] = "courier.delivery_abandoned"
    prescription_id: Identifier
    warehouse_id: Identifier
    attempts: Attempts
    last_reason: FailureReason
    goods_travelled: bool = False


class DeliveryOfferExpired(_DeliveryEvent):
    """The courier did not accept in time; the delivery goes to the next courier."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="courier",
            **_TRIP,
        )
    )

    type: Literal["courier.offer_expired"] = "courier.offer_expired"


class DeliveryWaiting(Envelope):
    """No courier can take the delivery now (capacity, cold chain); it is offered when one frees up."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("inventory.stock_reserved"),
            prescription_id=_RX,
            warehouse_id=_WH,
            why="No courier with a cold box is free in the Northford zone",
        )
    )

    type: Literal["courier.delivery_waiting"] = "courier.delivery_waiting"
    prescription_id: Identifier
    warehouse_id: Identifier
    why: Annotated[str, Field(min_length=1, max_length=300), MULTILINE]


class AddressLocated(Envelope):
    """A dispatcher → `courier.dispatchers.v1`, keyed by prescription id: where the door of an
    address that came without coordinates is (a point on the map, or an entry of the county
    gazetteer). The delivery waiting for it is offered to the courier nearest it."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="dispatcher-cli",
            prescription_id=_RX,
            coordinates={"latitude": 51.812, "longitude": 69.403},
            located_by="DSP-ALIYA",
            place="Steppe Wells (farmstead cluster)",
        )
    )

    type: Literal["courier.address_located"] = "courier.address_located"
    prescription_id: Identifier
    coordinates: Coordinates
    located_by: Identifier = Field(description="The dispatcher who placed it")
    place: Annotated[str, Field(min_length=1, max_length=120), ONE_LINE] | None = Field(
        default=None, description="The gazetteer entry it was placed at, if one"
    )


class DeliveryCodeRejected(_DeliveryEvent):
    """A 'delivered' report with a wrong or missing code: the delivery does not count. After too many
    on one attempt (`locked`), no code counts on it any more: the dispatcher on duty is alerted."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.reported"),
            **_TRIP,
            wrong_codes=1,
        )
    )

    type: Literal["courier.delivery_code_rejected"] = "courier.delivery_code_rejected"
    wrong_codes: Attempts = Field(description="Wrong codes reported on this attempt so far")
    locked: bool = Field(
        default=False,
        description="That was the last wrong code allowed: the attempt takes no more codes; the dispatcher decides",
    )


class DeliveryOverdue(Envelope):
    """A deadline passed: the dispatcher on duty is alerted (sent once per stage and attempt).
    `awaiting_stock`: approved, but the stock reservation has not come."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="courier",
            prescription_id=_RX,
            stage="on_the_road",
            since="2026-11-25T09:02:00Z",
            courier_id="CUR-07",
        )
    )

    type: Literal["courier.delivery_overdue"] = "courier.delivery_overdue"
    prescription_id: Identifier
    stage: Literal["awaiting_stock", "awaiting_courier", "on_the_road"]
    since: UtcDatetime
    courier_id: Identifier | None = None


class DeliveryCancelled(Envelope):
    """The prescription was withdrawn; the delivery is closed once nothing is on the road."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("prescription.cancelled"),
            prescription_id=_RX,
            warehouse_id=_WH,
            goods_returned=False,
        )
    )

    type: Literal["courier.delivery_cancelled"] = "courier.delivery_cancelled"
    prescription_id: Identifier
    warehouse_id: Identifier | None = None
    goods_returned: bool = Field(description="The goods had left and a courier brought them back")


AnswerCode = Annotated[str, Field(min_length=1, max_length=64), ONE_LINE]
AnswerDetail = Annotated[str, Field(min_length=1, max_length=2000), MULTILINE]


class ReportAnswered(Envelope):
    """courier → `courier.answers.v1`, keyed by courier id: what became of a courier's signed report,
    so their app (and `pharmacy courier report`) can say it at the door: `applied`, or `refused`
    with the reason (a wrong delivery code, not their dispatch, out of order...)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.reported"),
            courier_id="CUR-07",
            dispatch_id=f"{_RX}-D1",
            answers_message_id=example_id("courier.reported"),
            outcome="refused",
            code="wrong_code",
            detail="the delivery code is not the patient's: ask the patient to read it again",
        )
    )

    type: Literal["courier.report_answered"] = "courier.report_answered"
    courier_id: Identifier
    dispatch_id: Identifier | None = None
    answers_message_id: Identifier | None = None
    outcome: Literal["applied", "refused"]
    code: AnswerCode | None = None
    detail: AnswerDetail | None = None
