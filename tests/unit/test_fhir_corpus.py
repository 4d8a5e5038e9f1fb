"""Published bundles of two national e-prescription services (tests/data/fhir, copied unmodified:
SOURCES.md), through the mapping: each maps, with notes saying what it did, or is refused for a
reason a pharmacist would accept; none is refused for an optional element it leaves out, and what a
pharmacist must see (units, repeat courses, substitution, notes, controlled drugs, endorsements)
survives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.consultation import fhir
from services.runtime.errors import Refused

CORPUS = Path(__file__).resolve().parents[1] / "data" / "fhir"
BUNDLES = sorted(CORPUS.glob("*/*.json"))

#: Refusals a pharmacist would give too: a medicine the formulary cannot be matched to, nowhere to
#: deliver, no date to dispense from. Each is the bundle's content, not an element it may omit.
ACCEPTED_REFUSALS = {
    "e2e-2021-freitext-v1-verordnung": "the medication has no code, only text",
    "e2e-2021-wirkstoff-v1-verordnung": "the medication has no code, only text",
    "e2e-2021-pzn-nr5-verordnung": "has no current physical address to deliver to",
    # Unsigned "prepare" requests without authoredOn or validity: the signed order carries the date.
    "sc-acute-health-professional-1-prepare": "has no issue date",
    "sc-acute-health-professional-controlled-drugs-prepare": "has no issue date",
    "sc-acute-nurse-controlled-drugs-prepare": "has no issue date",
}


def _map(path: Path) -> fhir.Mapped:
    return fhir.to_prescription(fhir.parse_bundle(path.read_bytes()))


def _mapped(name: str) -> fhir.Mapped:
    return _map(next(p for p in BUNDLES if p.stem == name))


def test_the_corpus_is_at_least_forty_bundles_from_two_national_services():
    profiles = {path.parent.name for path in BUNDLES}
    assert len(BUNDLES) >= 40
    assert profiles == {"nhs-eps", "de-erezept"}
    assert all(len([p for p in BUNDLES if p.parent.name == profile]) >= 15 for profile in profiles)


@pytest.mark.parametrize("path", BUNDLES, ids=[f"{p.parent.name}/{p.stem}" for p in BUNDLES])
def test_each_bundle_maps_with_its_notes_or_is_refused_for_a_pharmacists_reason(path: Path):
    try:
        result = _map(path)
    except Refused as refused:
        assert path.stem in ACCEPTED_REFUSALS, f"refused: {refused.detail}"
        assert ACCEPTED_REFUSALS[path.stem] in refused.detail
        return
    assert path.stem not in ACCEPTED_REFUSALS, "maps now: take it off the accepted refusals"
    prescription = result.prescription
    assert prescription.mapping_notes == list(result.notes) and result.notes, "every real bundle leaves something out"
    data = json.loads(path.read_bytes())
    requests = [e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert len(prescription.items) == len(requests)
    known = ("ControlledDrug", "PrescriptionEndorsement")
    for request in requests:
        for extension in request.get("extension", []):
            name = extension["url"].rsplit("/", 1)[-1]
            assert any(k in name for k in known) or any(name in note for note in result.notes), (
                f"extension {name} is neither used nor named in the notes"
            )


def test_few_bundles_are_refused():
    assert len(ACCEPTED_REFUSALS) <= len(BUNDLES) // 6


def test_quantity_units_survive_and_packs_are_multiplied_out():
    homecare = _mapped("pc-repeat-prescribing-prepare").prescription
    assert [(i.quantity, i.quantity_unit) for i in homecare.items] == [(100, "tablet"), (200, "dose")]
    packed = _mapped("e2e-2021-pzn-nr1-verordnung")
    assert (packed.prescription.items[0].quantity, packed.prescription.items[0].quantity_unit) == (12, "TAB")
    assert any("{Package} of 12 TAB dispensed as 12" in note for note in packed.notes)


def test_repeat_courses_are_long_term():
    repeat = _mapped("pc-repeat-prescribing-prepare").prescription
    dispensing = _mapped("sc-repeat-dispensing-single-mr-prepare").prescription
    assert all(item.chronic for item in repeat.items + dispensing.items)


def test_substitution_notes_controlled_drugs_and_endorsements_survive():
    controlled = _mapped("sc-acute-clinical-practitioner-controlled-drugs-1-prepare").prescription
    assert any(item.controlled_drug and "Schedule 2" in item.controlled_drug for item in controlled.items)
    endorsed = _mapped("sc-acute-health-professional-6-endorsements-prepare").prescription
    assert endorsed.items[0].endorsements == ["CC", "FS"]
    assert any(not item.substitution_allowed for b in BUNDLES[:5] for item in _safe(b))
    noted = [item.note_to_pharmacist for b in BUNDLES for item in _safe(b) if item.note_to_pharmacist]
    assert noted, "notes to the dispenser reach the prescription"


def test_prescribers_are_known_by_their_registration_body():
    registries = {_safe_prescriber(b) for b in BUNDLES} - {None}
    assert {"GMC", "NMC", "GPhC", "LANR"} <= registries


def _safe(path: Path) -> list:
    try:
        return list(_map(path).prescription.items)
    except Refused:
        return []


def _safe_prescriber(path: Path) -> str | None:
    try:
        return _map(path).prescription.prescriber.licence_registry
    except Refused:
        return None
