"""FHIR R4 at the front door: a Bundle of MedicationRequests becomes the native prescription, and a
prescription's status is told back as MedicationRequest, MedicationDispense and SupplyDelivery.

Pure: bytes and headers in, contract messages or FHIR JSON out; no I/O, no clock. Bundles are read
and built with fhir.resources' R4B models, which read R4 (4.0) bundles too for every element used here.
Whatever cannot be mapped faithfully is refused with `fhir_unmappable` and a sentence saying where
and why: the runtime dead-letters it with the original bytes, so nothing is dropped or guessed.

The package, by what each part does:
- `bundle`: recognising and parsing an incoming bundle, and finding its resources by reference;
- `systems`: the code and identifier systems read and written; `refusal`: how a refusal is worded;
- `identifiers`, `patient`, `prescriber`, `items`: the parts of the native prescription;
- `prescription`: the whole Bundle as a Prescription; `submission`: as a PrescriptionSubmitted message;
- `status`: a prescription's status told back as a FHIR searchset Bundle.
"""

from .bundle import FHIR_JSON, claimed_sender, is_fhir, parse_bundle
from .prescription import READ_BUNDLE_TYPES, Mapped, to_prescription
from .status import status_to_fhir
from .submission import message_id_of, to_submission
from .systems import DELIVERY_SYSTEM, FORMULARY_SYSTEM, PRESCRIPTION_SYSTEM, SENDER_SOURCE_PREFIX

__all__ = [
    "DELIVERY_SYSTEM",
    "FHIR_JSON",
    "FORMULARY_SYSTEM",
    "PRESCRIPTION_SYSTEM",
    "READ_BUNDLE_TYPES",
    "SENDER_SOURCE_PREFIX",
    "Mapped",
    "claimed_sender",
    "is_fhir",
    "message_id_of",
    "parse_bundle",
    "status_to_fhir",
    "to_prescription",
    "to_submission",
]
