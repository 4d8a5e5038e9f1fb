"""Recognising and reading an incoming FHIR bundle: its content type, parsing the body into an R4
Bundle (refusing what is not one), the sender it claims in meta.source, and finding its resources
by reference. Also the small readers of FHIR elements the other modules share (a CodeableConcept's
first code, a Reference described for a refusal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from .refusal import brief, refuse
from .systems import SENDER_SOURCE_PREFIX

#: The content type that marks a FHIR bundle on consultation.prescriptions.v1 (native messages are
#: application/json). An optional `fhirVersion` parameter must name R4 or R4B when present.
FHIR_JSON = "application/fhir+json"
READABLE_FHIR_VERSIONS = ("4.0", "4.3")


def _content_type(headers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    raw = next((value for name, value in headers.items() if name.lower() == "content-type"), "")
    media_type, *parameters = raw.split(";")
    params = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), params


def is_fhir(headers: Mapping[str, str]) -> bool:
    return _content_type(headers)[0] == FHIR_JSON


def parse_bundle(body: bytes, headers: Mapping[str, str] | None = None) -> Bundle:
    """The R4 Bundle in `body`, or Refused(fhir_unmappable) saying why it is not one."""
    version = _content_type(headers or {})[1].get("fhirversion")
    if version is not None and not version.startswith(READABLE_FHIR_VERSIONS):
        raise refuse(f"content type says fhirVersion={version}; only FHIR R4 (4.0) and R4B (4.3) bundles are read")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise refuse("the body is not JSON; a FHIR bundle is sent as application/fhir+json") from None
    kind = data.get("resourceType") if isinstance(data, dict) else None
    if kind != "Bundle":
        what = f"a {kind} resource" if isinstance(kind, str) else "not a FHIR resource (no resourceType)"
        raise refuse(f"{what}, not a Bundle: MedicationRequests travel in a Bundle")
    entries = data.get("entry")
    for number, entry in enumerate(entries if isinstance(entries, list) else (), 1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        name = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(name, str) and not _is_r4_resource(name):
            raise refuse(f"entry {number}: resourceType {name!r} is not a FHIR R4 resource")
    try:
        return Bundle.model_validate(data)
    except ValidationError as error:
        raise refuse(f"not a valid FHIR R4 Bundle: {brief(error)}") from None
    except Exception as error:  # fhir.resources raises more than ValidationError on odd input
        raise refuse(f"not a valid FHIR R4 Bundle: {error!r}") from None


def _is_r4_resource(name: str) -> bool:
    try:
        get_fhir_model_class(name)
    except (ValueError, KeyError):
        return False
    return True


def claimed_sender(body: bytes) -> str | None:
    """The sending system the bundle names in meta.source (our sender namespace only), if any.

    The sender of a FHIR bundle is the signature's sender; nothing else in FHIR names our sender
    ids. A bundle that does name one (meta.source = SENDER_SOURCE_PREFIX + id) must name the signer.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    meta = data.get("meta") if isinstance(data, dict) else None
    source = meta.get("source") if isinstance(meta, dict) else None
    if isinstance(source, str) and source.startswith(SENDER_SOURCE_PREFIX):
        return source.removeprefix(SENDER_SOURCE_PREFIX)
    return None


class Resources:
    def __init__(self, bundle: Bundle) -> None:
        self._entries: list[Any] = []
        self._by_reference: dict[str, Any] = {}
        self._labels: dict[int, str] = {}
        for number, entry in enumerate(bundle.entry or (), 1):
            resource = entry.resource
            if resource is None:
                continue
            kind = resource.get_resource_type()
            self._entries.append(resource)
            if entry.fullUrl:
                self._by_reference[entry.fullUrl] = resource
            if resource.id:
                self._by_reference[f"{kind}/{resource.id}"] = resource
            self._labels[id(resource)] = f"{kind}/{resource.id}" if resource.id else f"{kind} (entry {number})"

    def of_type(self, kind: str) -> list[Any]:
        return [r for r in self._entries if r.get_resource_type() == kind]

    def label(self, resource: Any) -> str:
        return self._labels.get(id(resource), resource.get_resource_type())

    def resolve(self, reference: Any, within: Any = None) -> Any | None:
        """The resource a Reference points at inside the bundle (or `within`'s contained resources)."""
        target = getattr(reference, "reference", None)
        if not target:
            return None
        if target.startswith("#"):
            return next((c for c in getattr(within, "contained", None) or () if c.id == target[1:]), None)
        if target in self._by_reference:
            return self._by_reference[target]
        # An absolute URL to a resource whose entry gave only its Type/id, or the other way round.
        return self._by_reference.get("/".join(target.split("/")[-2:])) if "/" in target else None


def code_in(concept: Any) -> str | None:
    codings = getattr(concept, "coding", None) or ()
    return next((c.code for c in codings if c.code), None)


def target(reference: Any) -> str:
    if reference is None:
        return "(none)"
    if reference.reference:
        return reference.reference
    if reference.identifier is not None and reference.identifier.value:
        return f"identifier {reference.identifier.value}"
    return reference.display or "(empty reference)"
