"""The prescriber: the one Practitioner (directly or through a PractitionerRole) who requested every
MedicationRequest, mapped to the native prescriber with id, name and licence number.
"""

from __future__ import annotations

from typing import Any

from .bundle import Resources, target
from .identifiers import business_id, person_name
from .refusal import refuse
from .systems import LICENCE_SYSTEM, V2_IDENTIFIER_TYPES

LICENCE_TYPE_CODES = frozenset({"MD", "LN"})  # Medical License number, License number


def native_prescriber(requests: list[Any], found: Resources) -> dict[str, Any]:
    prescribers = []
    for request in requests:
        requester = found.resolve(request.requester)
        if requester is not None and requester.get_resource_type() == "PractitionerRole":
            requester = found.resolve(requester.practitioner)
        if requester is None or requester.get_resource_type() != "Practitioner":
            raise refuse(
                f"{found.label(request)}: requester {target(request.requester)} is not a Practitioner in the bundle"
            )
        if all(requester is not p for p in prescribers):
            prescribers.append(requester)
    if len(prescribers) > 1:
        raise refuse(f"MedicationRequests signed by {len(prescribers)} different practitioners: one prescriber each")
    practitioner = prescribers[0]
    label = found.label(practitioner)
    return {
        "prescriber_id": business_id(practitioner, label),
        "name": person_name(practitioner, label),
        "licence_number": _licence(practitioner, label),
    }


def _licence(practitioner: Any, label: str) -> str:
    for identifier in practitioner.identifier or ():
        typed = identifier.type and any(
            c.system == V2_IDENTIFIER_TYPES and c.code in LICENCE_TYPE_CODES for c in identifier.type.coding or ()
        )
        if identifier.value and (typed or identifier.system == LICENCE_SYSTEM):
            return str(identifier.value)
    raise refuse(
        f"{label} has no licence number: an identifier typed {V2_IDENTIFIER_TYPES} MD or LN, "
        f"or with system {LICENCE_SYSTEM}"
    )
