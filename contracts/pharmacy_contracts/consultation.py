"""What an upstream consultation system publishes, and what the consultation service hands on."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field, model_validator

from .envelope import Contract, Envelope, Identifier, UtcDatetime

Text = Annotated[str, Field(min_length=1, max_length=500)]
Phone = Annotated[str, Field(min_length=5, max_length=32, pattern=r"^\+?[0-9 ()\-]+$")]


class Coordinates(Contract):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Address(Contract):
    line: Text
    town: Annotated[str, Field(min_length=1, max_length=120)]
    postcode: Annotated[str, Field(max_length=16)] | None = None
    coordinates: Coordinates


class Patient(Contract):
    patient_id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: Phone
    date_of_birth: date
    allergies: list[Annotated[str, Field(min_length=1, max_length=80)]] = Field(default_factory=list, max_length=50)
    address: Address


class Prescriber(Contract):
    prescriber_id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=200)]
    licence_number: Annotated[str, Field(min_length=1, max_length=64)]
    remote_expert: bool = False


class PrescriptionItem(Contract):
    """One line of a prescription.

    Quantity and days of supply are plain integers here on purpose: whether they are sensible is a
    formulary rule, answered with a reason code by the prescription service, not a parse error.
    """

    drug_code: Identifier
    quantity: int = Field(description="Quantity in dispensing units (tablets, vials, ...)")
    dosage_text: Text
    days_supply: int
    chronic: bool = Field(
        default=False, description="Long-term therapy: the formulary's longer chronic days-of-supply limit applies"
    )


class Prescription(Contract):
    """The prescription as the doctor issued it."""

    prescription_id: Identifier
    consultation_id: Identifier
    patient: Patient
    prescriber: Prescriber
    diagnosis_codes: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(max_length=20)
    items: list[PrescriptionItem] = Field(min_length=1, max_length=20)
    issued_at: UtcDatetime
    valid_until: UtcDatetime


class PrescriptionSubmitted(Envelope):
    """Upstream → `consultation.prescriptions.v1`, keyed by prescription id."""

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

    type: Literal["consultation.prescription_accepted"] = "consultation.prescription_accepted"
    sender_id: Identifier
    prescription: Prescription


CancellationReason = Annotated[str, Field(min_length=1, max_length=300)]


class CancellationRequested(Envelope):
    """Upstream → `consultation.prescriptions.v1`: the doctor or the patient withdrew the prescription.

    Signed like a submission. Honoured at any stage: before pickup the stock is released, after
    pickup the courier brings the goods back to quarantine.
    """

    type: Literal["consultation.cancellation_requested"] = "consultation.cancellation_requested"
    sender_id: Identifier
    prescription_id: Identifier
    reason: CancellationReason
    requested_by: Annotated[str, Field(min_length=1, max_length=120)]

    @model_validator(mode="after")
    def _correlation_is_the_prescription(self) -> CancellationRequested:
        if self.correlation_id != self.prescription_id:
            raise ValueError("correlation_id must equal prescription_id")
        return self


class CancellationAccepted(Envelope):
    """consultation → `consultation.intake.v1`: a verified cancellation from an upstream system."""

    type: Literal["consultation.cancellation_accepted"] = "consultation.cancellation_accepted"
    sender_id: Identifier
    prescription_id: Identifier
    reason: CancellationReason
    requested_by: Annotated[str, Field(min_length=1, max_length=120)]
