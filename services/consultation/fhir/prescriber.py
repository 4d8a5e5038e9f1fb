"""The prescriber: the one Practitioner (directly, through a PractitionerRole, or named only by an
identifier) who requested every MedicationRequest, mapped to the native prescriber with id, name,
licence number and the body that issued it (`MappingRules.licence_registries`).
"""

from __future__ import annotations

from typing import Any

from .bundle import Resources, target
from .identifiers import business_id, person_name
from .notes import Notes
from .refusal import refuse
from .rules import MappingRules
from .systems import V2_IDENTIFIER_TYPES

LICENCE_TYPE_CODES = frozenset({"MD", "LN"})  # Medical License number, License number


def native_prescriber(requests: list[Any], found: Resources, rules: MappingRules, notes: Notes) -> dict[str, Any]:
    prescribers: list[Any] = []
    for request in requests:
        requester = _requester(request, found)
        if all(not _same(requester, p) for p in prescribers):
            prescribers.append(requester)
    if len(prescribers) > 1:
        raise refuse(f"MedicationRequests signed by {len(prescribers)} different practitioners: one prescriber each")
    prescriber = prescribers[0]
    if _named_only(prescriber):
        return _named_by_identifier(prescriber, rules, notes)
    label = found.label(prescriber)
    number, registry = _licence(prescriber.identifier or (), rules, label)
    return {
        "prescriber_id": business_id(prescriber, label),
        "name": person_name(prescriber, label),
        "licence_number": number,
        "licence_registry": registry,
    }


def _requester(request: Any, found: Resources) -> Any:
    """The Practitioner resource, or the Reference itself when it names the practitioner by identifier."""
    reference = request.requester
    requester = found.resolve(reference)
    if requester is not None and requester.get_resource_type() == "PractitionerRole":
        reference = requester.practitioner
        requester = found.resolve(reference)
    if requester is not None and requester.get_resource_type() == "Practitioner":
        return requester
    if reference is not None and reference.identifier is not None and reference.identifier.value:
        return reference
    raise refuse(f"{found.label(request)}: requester {target(request.requester)} is not a Practitioner in the bundle")


def _named_only(requester: Any) -> bool:
    return requester.__class__.__name__ == "Reference"


def _same(a: Any, b: Any) -> bool:
    if _named_only(a) and _named_only(b):
        return (a.identifier.system, a.identifier.value) == (b.identifier.system, b.identifier.value)
    return a is b


def _named_by_identifier(reference: Any, rules: MappingRules, notes: Notes) -> dict[str, Any]:
    identifier = reference.identifier
    number, registry = _licence([identifier], rules, f"requester identifier {identifier.value}")
    notes.add(f"the prescriber is named by identifier only ({registry} {number}); no Practitioner in the bundle")
    return {
        "prescriber_id": str(identifier.value),
        "name": reference.display or f"{registry} {number}",
        "licence_number": number,
        "licence_registry": registry,
    }


def _licence(identifiers: Any, rules: MappingRules, label: str) -> tuple[str, str]:
    """The first identifier issued by a registration body of `rules` (in their order), or typed a licence."""
    registries = list(rules.licence_registries)
    found = [i for i in identifiers if i.value and i.system in rules.licence_registries]
    found.sort(key=lambda i: registries.index(i.system))
    if found:
        return str(found[0].value), rules.licence_registries[found[0].system]
    for identifier in identifiers:
        typed = identifier.type and any(
            c.system == V2_IDENTIFIER_TYPES and c.code in LICENCE_TYPE_CODES for c in identifier.type.coding or ()
        )
        if identifier.value and typed:
            return str(identifier.value), "licence"
    known = ", ".join(dict.fromkeys(rules.licence_registries.values()))
    raise refuse(
        f"{label} has no licence number: no identifier from a registration body the pharmacy knows ({known}; "
        f"PHARMACY_FHIR_LICENCE_REGISTRIES), nor one typed {V2_IDENTIFIER_TYPES} MD or LN"
    )
