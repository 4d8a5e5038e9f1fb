"""What the patient is told: one message per thing a patient should know, for an SMS or voice gateway."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .consultation import EXAMPLE_PRESCRIPTION, PatientLanguage, Phone
from .courier import DeliveryCode
from .envelope import Envelope, Identifier, UtcDatetime, example_id, wire_example
from .limits import ONE_LINE

NotificationKind = Literal[
    "accepted",
    "held_for_pharmacist",
    "out_for_delivery",
    "failed_attempt",
    "delivered",
    "cancelled",
    "refused",
    "out_of_stock",
    "undeliverable",
    "recalled",
]
"""What happened, from the patient's side: the prescription was received; a pharmacist must look at
it first; the medicine is on the way (with the code to read to the courier); an attempt failed and
another is coming; it was delivered; cancelled; refused; the medicine is out of stock; it could not
be delivered and no more attempts are coming; a lot of medicine delivered to them was recalled (do
not take it; the hospital will call)."""

NotificationReason = Literal[
    # why a prescription was refused
    "expired",
    "needs_correction",
    "not_safe",
    "too_soon",
    "pharmacist_declined",
    "review_expired",
    # why a delivery attempt failed
    "patient_absent",
    "address_not_found",
    "refused_at_door",
    "damaged",
    "other",
]
"""The patient-facing reason behind `refused`, `failed_attempt` and `undeliverable`: categories a
patient understands (never a drug, a diagnosis or a checker's code), for a voice gateway that plays
recorded prompts rather than reading `text`."""

#: The kinds that announce a delivery to come, so may say when it is expected.
EXPECTING_DELIVERY: frozenset[str] = frozenset({"accepted", "out_for_delivery", "failed_attempt"})
#: The kinds that have a reason.
WITH_REASON: frozenset[str] = frozenset({"refused", "failed_attempt", "undeliverable"})

_RX = EXAMPLE_PRESCRIPTION["prescription_id"]


class PatientNotified(Envelope):
    """consultation → `patient.notifications.v1`, keyed by prescription id: one thing the patient
    should know about their prescription, to send by SMS or voice call to `phone`, in `language`.

    `text` is the whole message, ready to send: short plain sentences, no drug names, no diagnosis,
    no internal codes. The structured fields say the same for a gateway that composes its own (a
    voice gateway playing recorded prompts): `kind`, `reason`, `delivery_code` (only when the
    medicine is on the way: the patient reads it to the courier at the door), `will_retry` (after a
    failed attempt: whether another is coming) and the expected delivery window, when one is known.
    Sent at least once: a repeat has the same `message_id`. Patients without a phone get none."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("courier.picked_up"),
            producer="consultation",
            prescription_id=_RX,
            phone=EXAMPLE_PRESCRIPTION["patient"]["phone"],
            language="ug",
            kind="out_for_delivery",
            text=f"سىزنىڭ {_RX} نومۇرلۇق رېتسېپىڭىزنىڭ دورىسى يولغا چىقتى. "
            "يەتكۈزگۈچى كەلگەندە، ئۇنىڭغا بۇ نومۇرنى ئېيتىڭ: 493017. بۇ نومۇرنى باشقا ھېچكىمگە بەرمەڭ.",
            delivery_code="493017",
        )
    )

    type: Literal["patient.notified"] = "patient.notified"
    prescription_id: Identifier
    phone: Phone = Field(description="The patient's phone, as the prescription gave it")
    language: PatientLanguage = Field(description="The language of `text`: ug (Arabic script), zh (simplified), en")
    kind: NotificationKind
    text: Annotated[str, Field(min_length=1, max_length=1000), ONE_LINE] = Field(
        description="The message as the patient reads or hears it"
    )
    reason: NotificationReason | None = Field(
        default=None, description="Why, for `refused`, `failed_attempt` and `undeliverable`"
    )
    delivery_code: DeliveryCode | None = Field(
        default=None,
        description="Only on `out_for_delivery`: the code the patient reads to the courier at the door",
    )
    will_retry: bool | None = Field(
        default=None,
        description="On `failed_attempt` (true) and `undeliverable` (false): whether another attempt is coming",
    )
    expected_from: UtcDatetime | None = Field(
        default=None,
        description="With `expected_by`: when the delivery (after a failed attempt, the next one) should arrive; "
        "absent when not planned yet",
    )
    expected_by: UtcDatetime | None = None

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> PatientNotified:
        if (self.delivery_code is not None) != (self.kind == "out_for_delivery"):
            raise ValueError("delivery_code is given on out_for_delivery, and only there")
        if (self.reason is not None) != (self.kind in WITH_REASON):
            raise ValueError(f"reason is given on {', '.join(sorted(WITH_REASON))}, and only there")
        retrying = {"failed_attempt": True, "undeliverable": False}.get(self.kind)
        if self.will_retry is not retrying:
            raise ValueError("will_retry is true on failed_attempt, false on undeliverable, absent otherwise")
        if (self.expected_from is None) != (self.expected_by is None):
            raise ValueError("an expected window has both ends, expected_from and expected_by")
        if self.expected_from is not None and self.expected_by is not None:
            if self.kind not in EXPECTING_DELIVERY:
                raise ValueError(f"only {', '.join(sorted(EXPECTING_DELIVERY))} expect a delivery")
            if self.expected_by < self.expected_from:
                raise ValueError("expected_by is before expected_from")
        return self
