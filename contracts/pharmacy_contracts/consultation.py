"""What an upstream consultation system publishes, and what the consultation service hands on."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .envelope import Contract, Envelope, Identifier, UtcDatetime, example_id, wire_example

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


CancellationReason = Annotated[str, Field(min_length=1, max_length=300)]
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
    requested_by: Annotated[str, Field(min_length=1, max_length=120)]


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
