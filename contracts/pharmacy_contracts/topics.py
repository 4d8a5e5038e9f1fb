"""The one registry of topic names and the messages each topic carries.

Public topics keep their names forever (other teams depend on them); a breaking change to a
message is a new topic with a new version suffix, never an edit in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from .consultation import (
    CancellationAccepted,
    CancellationRequested,
    FollowUpRequested,
    PrescriptionAccepted,
    PrescriptionSubmitted,
    SenderReceipt,
    StatusReceipt,
)
from .courier import (
    AddressLocated,
    CourierAssigned,
    CourierReported,
    DeliveryAbandoned,
    DeliveryAccepted,
    DeliveryCancelled,
    DeliveryCodeRejected,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryOfferExpired,
    DeliveryOverdue,
    DeliveryPickedUp,
    DeliveryWaiting,
    DispatchOffered,
    DispatchWithdrawn,
    ReportAnswered,
    RoundOffered,
)
from .envelope import Envelope
from .inventory import (
    AdjustmentRequested,
    LotExpired,
    LotNearingExpiry,
    LotRecalled,
    LotRecallRequested,
    LowStock,
    PrescriptionRecalled,
    QuarantineCleared,
    QuarantineDecided,
    ReservationFailed,
    RestockRequested,
    StockAdjusted,
    StockCommandRefused,
    StockDelivered,
    StockDispatched,
    StockQuarantined,
    StockReleased,
    StockRepacked,
    StockReserved,
    StockRestocked,
    StockReturned,
    TransferClosed,
    TransferReceiptRequested,
    TransferReceived,
    TransferShipped,
    TransferShipRequested,
    TransferSuggested,
    WarehouseRegistered,
    WarehouseRegistrationRequested,
)
from .patient import PatientNotified
from .prescription import (
    CancellationOrdered,
    DecisionAnswered,
    DrugListed,
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionHeld,
    PrescriptionRejected,
    ReviewDecided,
    ReviewEscalated,
)

DEAD_LETTER_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    key_fields: tuple[str, ...]
    messages: tuple[type[Envelope], ...]
    public: bool
    description: str

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        """Parses raw bytes into the right message class, refusing anything else."""
        if len(self.messages) == 1:
            return TypeAdapter(self.messages[0])
        union = Annotated[Union[self.messages], Field(discriminator="type")]  # noqa: UP007
        return TypeAdapter(union)

    @property
    def dead_letter_topic(self) -> str:
        return self.name + DEAD_LETTER_SUFFIX

    def parse(self, raw: bytes | str) -> Envelope:
        return self.adapter.validate_json(raw)

    def key_of(self, message: Envelope) -> str:
        """The partition key: the first of `key_fields` the message has a value for."""
        for field_name in self.key_fields:
            value = getattr(message, field_name, None)
            if value:
                return str(value)
        raise ValueError(f"{type(message).__name__} has none of {self.key_fields}")


CONSULTATION_PRESCRIPTIONS = Topic(
    "consultation.prescriptions.v1",
    key="prescription id",
    key_fields=("correlation_id",),
    messages=(PrescriptionSubmitted, CancellationRequested),
    public=True,
    description=(
        "Upstream consultation systems publish issued prescriptions, and their cancellations, here; "
        "FHIR R4 Bundles are accepted too, marked `content-type: application/fhir+json`."
    ),
)
CONSULTATION_INTAKE = Topic(
    "consultation.intake.v1",
    key="prescription id",
    key_fields=("correlation_id",),
    messages=(PrescriptionAccepted, CancellationAccepted),
    public=False,
    description="Validated, de-duplicated prescriptions (and verified cancellations) handed on for checking.",
)
CONSULTATION_RECEIPTS = Topic(
    "consultation.receipts.v1",
    key="sender id",
    key_fields=("sender_id",),
    messages=(SenderReceipt, StatusReceipt, FollowUpRequested),
    public=True,
    description=(
        "The answer to every verified message an upstream system sent: accepted, or refused with the reason; "
        "then each change of stage of a prescription it had accepted, until the last, and a follow-up call to "
        "make when one ends out of stock or undeliverable; "
        "each system reads the records keyed by its sender id."
    ),
)
PATIENT_NOTIFICATIONS = Topic(
    "patient.notifications.v1",
    key="prescription id",
    key_fields=("prescription_id",),
    messages=(PatientNotified,),
    public=True,
    description=(
        "What each patient with a phone is told, in their language, for an SMS or voice gateway: received, "
        "held for a pharmacist, on the way (with the delivery code), a failed attempt, delivered, or how it ended."
    ),
)
PRESCRIPTION_DECISIONS = Topic(
    "prescription.decisions.v1",
    key="prescription id",
    key_fields=("prescription_id",),
    messages=(PrescriptionApproved, PrescriptionRejected, PrescriptionHeld, ReviewEscalated, PrescriptionCancelled),
    public=False,
    description="The checks' verdict on each prescription, holds for pharmacist review, and cancellations.",
)
PRESCRIPTION_ANSWERS = Topic(
    "prescription.answers.v1",
    key="pharmacist id",
    key_fields=("pharmacist_id",),
    messages=(DecisionAnswered,),
    public=True,
    description="What became of each pharmacist's signed decision or cancellation: applied, or refused and why.",
)
PRESCRIPTION_FORMULARY = Topic(
    "prescription.formulary.v1",
    key="drug code",
    key_fields=("drug_code",),
    messages=(DrugListed,),
    public=False,
    description="Each drug the formulary lists, as its entry was loaded or changed; inventory stocks only these.",
)
PRESCRIPTION_REVIEWS = Topic(
    "prescription.reviews.v1",
    key="prescription id",
    key_fields=("prescription_id",),
    messages=(ReviewDecided, CancellationOrdered),
    public=False,
    description="Pharmacists' decisions on held prescriptions, and their cancellations.",
)
INVENTORY_COMMANDS = Topic(
    "inventory.commands.v1",
    key="warehouse id",
    key_fields=("warehouse_id",),
    messages=(
        WarehouseRegistrationRequested,
        RestockRequested,
        AdjustmentRequested,
        QuarantineDecided,
        TransferShipRequested,
        TransferReceiptRequested,
        LotRecallRequested,
    ),
    public=False,
    description=(
        "Warehouse registrations, restocks (by lot), adjustments and quarantine decisions from staff; "
        "transfers shipped from the centre and received at townships; lot recalls (one per warehouse)."
    ),
)
INVENTORY_EVENTS = Topic(
    "inventory.events.v1",
    key="prescription id for reservations, warehouse id for stock-only events",
    key_fields=("prescription_id", "warehouse_id"),
    messages=(
        StockReserved,
        ReservationFailed,
        StockReleased,
        StockDispatched,
        StockReturned,
        StockQuarantined,
        StockRepacked,
        StockDelivered,
        StockRestocked,
        StockAdjusted,
        QuarantineCleared,
        StockCommandRefused,
        WarehouseRegistered,
        LowStock,
        LotNearingExpiry,
        LotExpired,
        TransferSuggested,
        TransferShipped,
        TransferReceived,
        TransferClosed,
        LotRecalled,
        PrescriptionRecalled,
    ),
    public=True,
    description="Every stock change and alert, for warehouse staff and downstream services.",
)
COURIER_DISPATCH = Topic(
    "courier.dispatch.v1",
    key="courier id",
    key_fields=("courier_id",),
    messages=(DispatchOffered, RoundOffered, DispatchWithdrawn),
    public=True,
    description="Dispatch offers (and withdrawals) to couriers; each courier reads the messages keyed by its id.",
)
COURIER_UPDATES = Topic(
    "courier.updates.v1",
    key="package id",
    key_fields=("package_id",),
    messages=(CourierReported,),
    public=True,
    description="Couriers report accepted, picked up, delivered (with the patient's code), failed or returned.",
)
COURIER_DELIVERIES = Topic(
    "courier.deliveries.v1",
    key="prescription id",
    key_fields=("prescription_id",),
    messages=(
        CourierAssigned,
        DeliveryAccepted,
        DeliveryPickedUp,
        DeliveryCompleted,
        DeliveryFailed,
        DeliveryAbandoned,
        DeliveryOfferExpired,
        DeliveryWaiting,
        DeliveryCodeRejected,
        DeliveryOverdue,
        DeliveryCancelled,
    ),
    public=False,
    description="The delivery lifecycle as the courier service decides it.",
)
COURIER_DISPATCHERS = Topic(
    "courier.dispatchers.v1",
    key="prescription id",
    key_fields=("prescription_id",),
    messages=(AddressLocated,),
    public=False,
    description="Dispatchers place on the map the addresses that came without coordinates.",
)
COURIER_ANSWERS = Topic(
    "courier.answers.v1",
    key="courier id",
    key_fields=("courier_id",),
    messages=(ReportAnswered,),
    public=True,
    description="What became of each courier's signed report: applied, or refused and why (a wrong code...).",
)

ALL_TOPICS: tuple[Topic, ...] = (
    CONSULTATION_PRESCRIPTIONS,
    CONSULTATION_INTAKE,
    CONSULTATION_RECEIPTS,
    PATIENT_NOTIFICATIONS,
    PRESCRIPTION_DECISIONS,
    PRESCRIPTION_REVIEWS,
    PRESCRIPTION_ANSWERS,
    PRESCRIPTION_FORMULARY,
    INVENTORY_COMMANDS,
    INVENTORY_EVENTS,
    COURIER_DISPATCH,
    COURIER_UPDATES,
    COURIER_DELIVERIES,
    COURIER_DISPATCHERS,
    COURIER_ANSWERS,
)
BY_NAME = {topic.name: topic for topic in ALL_TOPICS}
TOPIC_OF_MESSAGE: dict[type[Envelope], Topic] = {message: topic for topic in ALL_TOPICS for message in topic.messages}


def topic_for(message: Envelope) -> Topic:
    return TOPIC_OF_MESSAGE[type(message)]
