"""FHIR R4 at the front door: a Bundle of MedicationRequests becomes the native prescription, and a
prescription's status is told back as MedicationRequest, MedicationDispense and SupplyDelivery.

Pure: bytes and headers in, contract messages or FHIR JSON out; no I/O, no clock. Bundles are read
and built with fhir.resources' R4B models, which read R4 (4.0) bundles too for every element used here.
Optional elements a bundle leaves out take documented fallbacks (`rules`, and the table in the
README); what the native prescription has no place for, and every fallback taken, is listed in its
`mapping_notes`. What cannot be mapped faithfully is refused with `fhir_unmappable` and a sentence
saying where and why: the runtime dead-letters it with the original bytes, so nothing is guessed.

The package, by what each part does:
- `bundle`: recognising and parsing an incoming bundle, and finding its resources by reference;
- `systems`: the code and identifier systems read and written;
- `rules`: the fallbacks a deployment sets; `notes`: what the mapping says it did;
- `identifiers`, `patient`, `prescriber`, `items`, `dosage`: the parts of the native prescription;
- `prescription`: the whole Bundle as a Prescription; `submission`: as a PrescriptionSubmitted message;
- `status`: a prescription's status told back as a FHIR searchset Bundle (and its status codes);
- `refusal`: a refusal as Refused(`fhir_unmappable`), and told back as an OperationOutcome.
"""

from .bundle import FHIR_JSON, claimed_sender, is_fhir, parse_bundle
from .prescription import READ_BUNDLE_TYPES, Mapped, to_prescription
from .refusal import operation_outcome
from .rules import DEFAULT_RULES, LICENCE_REGISTRIES, VALIDITY_DAYS, MappingRules
from .status import delivery_status, dispense_status, request_status, status_to_fhir
from .submission import message_id_of, to_submission
from .systems import DELIVERY_SYSTEM, FORMULARY_SYSTEM, PRESCRIPTION_SYSTEM, SENDER_SOURCE_PREFIX

__all__ = [
    "DEFAULT_RULES",
    "DELIVERY_SYSTEM",
    "FHIR_JSON",
    "FORMULARY_SYSTEM",
    "LICENCE_REGISTRIES",
    "PRESCRIPTION_SYSTEM",
    "READ_BUNDLE_TYPES",
    "SENDER_SOURCE_PREFIX",
    "VALIDITY_DAYS",
    "Mapped",
    "MappingRules",
    "claimed_sender",
    "delivery_status",
    "dispense_status",
    "is_fhir",
    "message_id_of",
    "operation_outcome",
    "parse_bundle",
    "request_status",
    "status_to_fhir",
    "to_prescription",
    "to_submission",
]
