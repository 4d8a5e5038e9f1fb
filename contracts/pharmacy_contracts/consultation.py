"""What an upstream consultation system publishes, and what the consultation service hands on."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .envelope import Contract, Envelope, Identifier, UtcDatetime, example_id, wire_example
from .limits import MAX_DAYS_SUPPLY, MAX_ITEMS, MAX_UNITS, MAX_VALIDITY, MULTILINE, ONE_LINE, Name
from .stages import Stage

# Instructions and address lines may come in several lines (FHIR's `address.text`, a taper's steps).
Text = Annotated[str, Field(min_length=1, max_length=500), MULTILINE]
#: A taper or titration spells out each step: seven steps took 622 characters in a real bundle.
DosageText = Annotated[str, Field(min_length=1, max_length=2000), MULTILINE]
Note = Annotated[str, Field(min_length=1, max_length=1000), MULTILINE]
Remark = Annotated[str, Field(min_length=1, max_length=300), ONE_LINE]
Phone = Annotated[str, Field(min_length=5, max_length=32, pattern=r"^\+?[0-9 ()\-]+$")]
#: The languages patients are told things in (patient.notifications.v1): Uyghur (in its Arabic
#: script), Chinese (simplified) and English, as ISO 639-1 codes.
PatientLanguage = Literal["ug", "zh", "en"]


class Coordinates(Contract):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Address(Contract):
    line: Text
    town: Annotated[str, Field(min_length=1, max_length=120), ONE_LINE]
    postcode: Annotated[str, Field(max_length=16), ONE_LINE] | None = None
    coordinates: Coordinates | None = Field(
        default=None,
        description="Where the door is; absent, the address is found by its text and the pickup warehouse "
        "decides which courier goes",
    )


class Patient(Contract):
    patient_id: Identifier
    name: Name
    phone: Phone | None = Field(default=None, description="Absent, the courier is told the patient has no phone")
    date_of_birth: date
    allergies: list[Annotated[str, Field(min_length=1, max_length=80), ONE_LINE]] = Field(
        default_factory=list, max_length=50
    )
    address: Address
    preferred_language: PatientLanguage | None = Field(
        default=None,
        description="The language the patient reads and hears best (FHIR Patient.communication); absent, the "
        "pharmacy's default for the county applies",
    )


class Prescriber(Contract):
    prescriber_id: Identifier
    name: Name
    licence_number: Annotated[str, Field(min_length=1, max_length=64), ONE_LINE]
    licence_registry: Annotated[str, Field(min_length=1, max_length=64), ONE_LINE] | None = Field(
        default=None, description="The body that issued the licence number (GMC, NMC, GLN...), when the sender says"
    )
    remote_expert: bool = False


class PrescriptionItem(Contract):
    """One line of a prescription.

    Quantity and days of supply may be zero or negative on purpose: whether they are sensible is a
    formulary rule, answered with a reason code by the prescription service, not a parse error.
    Only sizes no formulary would ever allow are refused here (see `limits`).
    """

    drug_code: Identifier
    quantity: int = Field(ge=-MAX_UNITS, le=MAX_UNITS, description="Quantity in dispensing units (tablets, vials, ...)")
    quantity_unit: Remark | None = Field(
        default=None,
        description="The unit the prescriber wrote (tablet, ml, dose...); checked against the formulary's form",
    )
    dosage_text: DosageText
    days_supply: int | None = Field(
        default=None,
        ge=-MAX_DAYS_SUPPLY,
        le=MAX_DAYS_SUPPLY,
        description="Absent: not stated, and the formulary's default for the drug applies (see days_supply_basis)",
    )
    days_supply_basis: Literal["prescribed", "dosage", "formulary"] | None = Field(
        default=None,
        description="prescribed: stated by the prescriber; dosage: worked out from the dose, its frequency and "
        "the quantity; formulary: the formulary's default for the drug, filled in by the prescription service",
    )
    chronic: bool = Field(
        default=False,
        description="Long-term therapy (continuous or repeat courses): the formulary's longer chronic "
        "days-of-supply limit applies",
    )
    substitution_allowed: bool = Field(default=True, description="False: dispense exactly this product")
    note_to_pharmacist: Note | None = None
    controlled_drug: Remark | None = Field(
        default=None, description="The controlled-drug schedule and quantity in words, as the prescriber gave them"
    )
    endorsements: list[Remark] = Field(default_factory=list, max_length=10)


class Prescription(Contract):
    """The prescription as the doctor issued it.

    A validity window that ends before it starts is the prescription service's to answer
    (`VALIDITY_WINDOW_INVALID`); one longer than any prescription is valid for is refused here.
    """

    prescription_id: Identifier
    consultation_id: Identifier
    patient: Patient
    prescriber: Prescriber
    diagnosis_codes: list[Annotated[str, Field(min_length=1, max_length=16), ONE_LINE]] = Field(max_length=20)
    items: list[PrescriptionItem] = Field(min_length=1, max_length=MAX_ITEMS)
    issued_at: UtcDatetime
    valid_until: UtcDatetime = Field(description="At most a year (367 days) after `issued_at`")
    mapping_notes: list[Remark] = Field(
        default_factory=list,
        max_length=50,
        description="What a FHIR bundle held that has no place here, and the defaults its mapping took",
    )

    @model_validator(mode="after")
    def _valid_for_at_most_a_year(self) -> Prescription:
        # A difference, never a sum: issued_at + MAX_VALIDITY overflows near the year 9999.
        if self.valid_until - self.issued_at > MAX_VALIDITY:
            raise ValueError(
                f"valid_until {self.valid_until:%Y-%m-%d} is more than {MAX_VALIDITY.days} days after issued_at "
                f"{self.issued_at:%Y-%m-%d}: no prescription is valid that long"
            )
        return self


#: The prescription the published examples use (the same as contracts/examples/prescription.json).
EXAMPLE_PRESCRIPTION: dict[str, Any] = {
    "prescription_id": "RX-2026-000123",
    "consultation_id": "CONS-88412",
    "patient": {
        "patient_id": "PAT-5521",
        "name": "Gulnara Sadykova",
        "phone": "+7 701 555 0134",
        "date_of_birth": "1958-03-14",
        "allergies": ["penicillin"],
        "address": {
            "line": "Farmstead 7, Steppe Road",
            "town": "Northford",
            "postcode": "N-0412",
            "coordinates": {"latitude": 51.812, "longitude": 69.403},
        },
    },
    "prescriber": {
        "prescriber_id": "DR-0042",
        "name": "Dr. Ilyas Karimov",
        "licence_number": "LIC-KZ-77120",
        "remote_expert": True,
    },
    "diagnosis_codes": ["E11.9", "I10"],
    "items": [
        {
            "drug_code": "MET500",
            "quantity": 180,
            "dosage_text": "1 tablet twice daily with meals",
            "days_supply": 90,
            "chronic": True,
        },
        {"drug_code": "AML5", "quantity": 90, "dosage_text": "1 tablet once daily", "days_supply": 90, "chronic": True},
    ],
    "issued_at": "2026-11-25T08:00:00Z",
    "valid_until": "2027-05-25T08:00:00Z",
}
_RX = EXAMPLE_PRESCRIPTION["prescription_id"]


class PrescriptionSubmitted(Envelope):
    """Upstream → `consultation.prescriptions.v1`, keyed by prescription id."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="district-clinic-emr",
            sender_id="district-clinic",
            prescription=EXAMPLE_PRESCRIPTION,
        )
    )

    type: Literal["consultation.prescription_submitted"] = "consultation.prescription_submitted"
    sender_id: Identifier = Field(description="The registered upstream system that sent this")
    prescription: Prescription

    @model_validator(mode="after")
    def _correlation_is_the_prescription(self) -> PrescriptionSubmitted:
        if self.correlation_id != self.prescription.prescription_id:
            raise ValueError("correlation_id must equal prescription.prescription_id")
        return self


class PrescriptionAccepted(Envelope):
    """consultation → `consultation.intake.v1`: a validated, de-duplicated prescription."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("consultation.prescription_submitted"),
            producer="consultation",
            sender_id="district-clinic",
            prescription=EXAMPLE_PRESCRIPTION,
        )
    )

    type: Literal["consultation.prescription_accepted"] = "consultation.prescription_accepted"
    sender_id: Identifier
    prescription: Prescription


CancellationReason = Annotated[str, Field(min_length=1, max_length=300), MULTILINE]
RequestedBy = Annotated[str, Field(min_length=1, max_length=120), ONE_LINE]
_CANCELLATION = {
    "sender_id": "district-clinic",
    "prescription_id": _RX,
    "reason": "Therapy changed after the follow-up call",
    "requested_by": "Dr. Ilyas Karimov",
}


class _Cancellation(Envelope):
    """A withdrawal of a prescription: as the upstream system asked for it, or as consultation accepted it."""

    sender_id: Identifier
    prescription_id: Identifier
    reason: CancellationReason
    requested_by: RequestedBy


class CancellationRequested(_Cancellation):
    """Upstream → `consultation.prescriptions.v1`: the doctor or the patient withdrew the prescription.

    Signed like a submission. Honoured at any stage: before pickup the stock is released, after
    pickup the courier brings the goods back to quarantine.
    """

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            producer="district-clinic-emr",
            **_CANCELLATION,
        )
    )

    type: Literal["consultation.cancellation_requested"] = "consultation.cancellation_requested"

    @model_validator(mode="after")
    def _correlation_is_the_prescription(self) -> CancellationRequested:
        if self.correlation_id != self.prescription_id:
            raise ValueError("correlation_id must equal prescription_id")
        return self


class CancellationAccepted(_Cancellation):
    """consultation → `consultation.intake.v1`: a verified cancellation from an upstream system."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("consultation.cancellation_requested"),
            producer="consultation",
            **_CANCELLATION,
        )
    )

    type: Literal["consultation.cancellation_accepted"] = "consultation.cancellation_accepted"


class SenderReceipt(Envelope):
    """consultation → `consultation.receipts.v1`, keyed by sender id: the answer to each message an
    upstream system sent, once its signature was verified: `accepted`, or `refused` with the reason
    code and a sentence (a FHIR bundle's `fhir_unmappable` says where and why). Unsigned and forged
    messages get none: their sender is unknown; they stay in quarantine."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("consultation.prescription_submitted"),
            producer="consultation",
            sender_id="district-clinic",
            answers_message_id=example_id("consultation.prescription_submitted"),
            prescription_id=_RX,
            outcome="refused",
            code="prescription_id_reused",
            detail=f"prescription {_RX} was already received in another message",
        )
    )

    type: Literal["consultation.receipt"] = "consultation.receipt"
    sender_id: Identifier
    answers_message_id: Identifier | None = Field(
        default=None, description="The message id the sender sent (absent when its bytes did not say)"
    )
    prescription_id: Identifier | None = None
    outcome: Literal["accepted", "refused"]
    code: Annotated[str, Field(min_length=1, max_length=64), ONE_LINE] | None = Field(
        default=None, description="Why it was refused: the dead-letter reason (README: Reason codes)"
    )
    detail: Annotated[str, Field(min_length=1, max_length=2000), MULTILINE] | None = None
    operation_outcome: dict[str, Any] | None = Field(
        default=None,
        description="For a refused FHIR message: the refusal as a FHIR R4 OperationOutcome resource (JSON)",
    )


FhirRequestStatus = Literal["active", "on-hold", "completed", "cancelled", "stopped"]
FhirDispenseStatus = Literal["preparation", "in-progress", "completed", "declined", "stopped", "cancelled"]
FhirDeliveryStatus = Literal["in-progress", "completed", "abandoned"]


class StatusReceipt(Envelope):
    """consultation → `consultation.receipts.v1`, keyed by sender id: each later change of stage of
    a prescription the sender had accepted (held for review, approved, reserved, out for delivery,
    delivered, refused by the checks, out of stock, undeliverable, cancelled), with the sentence its
    status shows and, for FHIR senders, the MedicationRequest / MedicationDispense / SupplyDelivery
    status codes it amounts to. Sent at least once: a repeat has the same `message_id`. Stages are
    learnt from four services' topics, so one may be told after a later one (an approval read after
    the courier's offer): `occurred_at` is when it happened; order by it."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("prescription.held_for_review"),
            producer="consultation",
            sender_id="district-clinic",
            answers_message_id=example_id("consultation.prescription_submitted"),
            prescription_id=_RX,
            stage="held_for_review",
            terminal=False,
            detail="held for pharmacist review (INTERACTION)",
            reasons=["INTERACTION: warfarin with aspirin raises the risk of bleeding"],
            medication_request_status="on-hold",
        )
    )

    type: Literal["consultation.status_receipt"] = "consultation.status_receipt"
    sender_id: Identifier
    answers_message_id: Identifier | None = Field(
        default=None, description="The message id of the prescription the sender sent"
    )
    prescription_id: Identifier
    stage: Stage
    terminal: bool = Field(
        description="The stage ends the prescription's story (only news of earlier stages, told late, may follow)"
    )
    detail: Annotated[str, Field(min_length=1, max_length=2000), MULTILINE]
    reasons: list[Annotated[str, Field(min_length=1, max_length=2000), MULTILINE]] = Field(
        default_factory=list, max_length=50, description="What explains the stage (holds, refusals): CODE: sentence"
    )
    medication_request_status: FhirRequestStatus
    medication_dispense_status: FhirDispenseStatus | None = None
    supply_delivery_status: FhirDeliveryStatus | None = None


class FollowUpRequested(Envelope):
    """consultation → `consultation.receipts.v1`, keyed by sender id: a prescription the sender had
    accepted ended without the patient's medicine (out of stock, or undeliverable), so someone on the
    hospital's side should call the patient. Once per prescription and ending; sent at least once: a
    repeat has the same `message_id`. The patient's phone is in the hospital's own records, not here."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RX,
            causation_id=example_id("courier.delivery_abandoned"),
            producer="consultation",
            sender_id="district-clinic",
            answers_message_id=example_id("consultation.prescription_submitted"),
            prescription_id=_RX,
            patient_id=EXAMPLE_PRESCRIPTION["patient"]["patient_id"],
            stage="undeliverable",
            reason="Not delivered: 3 attempts, last failure address_not_found. "
            "Call the patient to check the address, then send the prescription again.",
            chronic=True,
        )
    )

    type: Literal["consultation.follow_up_requested"] = "consultation.follow_up_requested"
    sender_id: Identifier
    answers_message_id: Identifier | None = Field(
        default=None, description="The message id of the prescription the sender sent"
    )
    prescription_id: Identifier
    patient_id: Identifier
    stage: Literal["out_of_stock", "undeliverable", "recalled"] = Field(
        description="How the prescription ended; `recalled`: delivered, and a lot in it was recalled since"
    )
    reason: Annotated[str, Field(min_length=1, max_length=2000), MULTILINE] = Field(
        description="What happened and what the call is for, in a sentence"
    )
    chronic: bool | None = Field(
        default=None,
        description="The prescription is for long-term therapy (an item marked chronic): the patient must not "
        "run out; absent when not known",
    )
