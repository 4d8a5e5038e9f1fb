"""A signed FHIR bundle as the PrescriptionSubmitted message it stands for, under a message id that
is the same every time the same bundle is delivered.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from pharmacy_contracts import signing
from pharmacy_contracts.consultation import PrescriptionSubmitted
from services.runtime.errors import Refused

from .bundle import parse_bundle
from .prescription import to_prescription
from .refusal import brief, refuse
from .rules import DEFAULT_RULES, MappingRules

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def message_id_of(bundle: Bundle, body: bytes, headers: Mapping[str, str]) -> str:
    """The message id a bundle travels under: the `message-id` header if the sender set one, else
    one derived from the bundle itself, so the same bundle delivered twice is recognised."""
    if headers.get("message-id"):
        return headers["message-id"]
    for candidate in (bundle.identifier.value if bundle.identifier else None, bundle.id):
        if candidate and _IDENTIFIER.match(str(candidate)):
            return str(candidate)
    return "sha256-" + hashlib.sha256(body).hexdigest()[:32]


def to_submission(
    body: bytes, headers: Mapping[str, str], rules: MappingRules = DEFAULT_RULES
) -> tuple[PrescriptionSubmitted, tuple[str, ...]]:
    """The PrescriptionSubmitted a signed FHIR bundle stands for, and the mapping's notes.

    Deterministic: the same bytes and headers give the same message (id, time and all), so a
    redelivery is a duplicate and never a replay with other content."""
    bundle = parse_bundle(body, headers)
    mapped = to_prescription(bundle, rules)
    sender = headers.get(signing.SENDER_HEADER)
    if not sender:
        raise Refused("unsigned", f"a FHIR bundle is signed like any prescription; no {signing.SENDER_HEADER} header")
    prescription = mapped.prescription
    try:
        submitted = PrescriptionSubmitted(
            message_id=message_id_of(bundle, body, headers),
            occurred_at=bundle.timestamp or prescription.issued_at,
            correlation_id=prescription.prescription_id,
            producer=sender,
            sender_id=sender,
            prescription=prescription,
        )
    except ValidationError as error:
        raise refuse(f"the bundle maps to a message the native contract refuses: {brief(error)}") from None
    return submitted, mapped.notes
