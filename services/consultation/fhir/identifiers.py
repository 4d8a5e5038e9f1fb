"""Who and what the bundle names: a resource's business id and a person's display name, and the
prescription's and consultation's ids read from the MedicationRequests' groupIdentifier,
identifier and encounter (or, for the consultation, the bundle's own identifier).
"""

from __future__ import annotations

from typing import Any

from .bundle import Resources, target
from .notes import Notes
from .refusal import refuse


def business_id(resource: Any, label: str) -> str:
    """The first business identifier (stable across the sender's systems), else the logical id."""
    for identifier in resource.identifier or ():
        if identifier.value:
            return str(identifier.value)
    if resource.id:
        return str(resource.id)
    raise refuse(f"{label} has neither an identifier nor an id")


def person_name(resource: Any, label: str) -> str:
    names = [n for n in resource.name or () if n.use not in ("old", "maiden")]
    names.sort(key=lambda n: n.use not in ("official", "usual"))
    for name in names:
        text = name.text or " ".join([*(name.prefix or ()), *(name.given or ()), name.family or ""]).strip()
        if text:
            return text
    raise refuse(f"{label} has no name")


def prescription_id(requests: list[Any], found: Resources, bundle: Any, notes: Notes) -> str:
    """The requests' shared groupIdentifier; else the first request's identifier; else the bundle's
    identifier (a document bundle such as Germany's eRezept carries the prescription id there)."""
    groups = {r.groupIdentifier.value for r in requests if r.groupIdentifier and r.groupIdentifier.value}
    ungrouped = [r for r in requests if not (r.groupIdentifier and r.groupIdentifier.value)]
    if len(groups) > 1:
        raise refuse(f"several prescriptions in one bundle (groupIdentifier {', '.join(sorted(groups))})")
    if groups and ungrouped:
        raise refuse(f"{found.label(ungrouped[0])} has no groupIdentifier while the others belong to {groups.pop()}")
    if groups:
        return str(groups.pop())
    first = requests[0]
    value = next((i.value for i in first.identifier or () if i.value), None)
    if value is not None:
        return str(value)
    if bundle.identifier is not None and bundle.identifier.value:
        notes.add(f"the prescription id is the Bundle.identifier ({bundle.identifier.system or 'no system'})")
        return str(bundle.identifier.value)
    raise refuse(
        f"{found.label(first)} has neither groupIdentifier nor identifier, and the bundle no identifier: "
        "the prescription has no id"
    )


def consultation_id(requests: list[Any], found: Resources, bundle: Any, notes: Notes) -> str:
    """The encounter the requests came from; else the prescription's group identifier; else the
    bundle's identifier or id (each fallback is noted)."""
    consultations = set()
    for request in requests:
        reference = request.encounter
        if reference is None:
            continue
        encounter = found.resolve(reference)
        if encounter is not None:
            consultations.add(business_id(encounter, found.label(encounter)))
        elif reference.identifier is not None and reference.identifier.value:
            consultations.add(str(reference.identifier.value))
        elif reference.reference and reference.reference.startswith("Encounter/"):
            consultations.add(reference.reference.removeprefix("Encounter/"))
        else:
            raise refuse(f"{found.label(request)}: encounter {target(reference)} is neither in the bundle nor named")
    if len(consultations) > 1:
        raise refuse(f"MedicationRequests from {len(consultations)} consultations: {', '.join(sorted(consultations))}")
    if consultations:
        return consultations.pop()
    group = next((r.groupIdentifier.value for r in requests if r.groupIdentifier and r.groupIdentifier.value), None)
    for source, value in (
        ("groupIdentifier", group),
        ("Bundle.identifier", bundle.identifier.value if bundle.identifier else None),
        ("Bundle.id", bundle.id),
    ):
        if value:
            notes.add(f"no encounter: the consultation id is the {source}, {value}")
            return str(value)
    raise refuse("no encounter, groupIdentifier, Bundle.identifier or Bundle.id names the consultation")
