"""What a bundle may leave out and still be dispensed: each optional element a real national bundle
omits takes its documented fallback, and the fallback is written in the prescription's mapping notes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services.consultation import fhir
from tests.unit.test_fhir import ACUTE, CHRONIC, INSULIN, example, first, mapped, resources


def _notes(result: fhir.Mapped) -> str:
    return "\n".join(result.prescription.mapping_notes)


def test_without_coordinates_or_phone_the_address_is_kept_by_its_text_and_the_courier_told():
    data = example(CHRONIC)
    patient = first(data, "Patient")
    patient["address"][0].pop("extension")
    patient["telecom"] = [{"system": "email", "value": "a@b.example"}]
    result = mapped(data)
    assert result.prescription.patient.address.coordinates is None
    assert result.prescription.patient.phone is None
    assert "has no coordinates" in _notes(result) and "has no phone: the courier is told so" in _notes(result)


def test_the_town_comes_from_the_last_address_line_when_there_is_no_city():
    data = example(CHRONIC)
    address = first(data, "Patient")["address"][0]
    address.pop("city")
    address["line"] = ["10 Heathfield", "Cobham", "Surrey"]
    result = mapped(data)
    assert result.prescription.patient.address.town == "Surrey"
    assert result.prescription.patient.address.line == "10 Heathfield, Cobham, Surrey"
    assert "the town is taken from its last line" in _notes(result)


def test_a_birth_year_only_is_read_from_its_first_day_and_said_so():
    data = example(CHRONIC)
    first(data, "Patient")["birthDate"] = "1958"
    result = mapped(data)
    assert str(result.prescription.patient.date_of_birth) == "1958-01-01"
    assert "birthDate is given as 1958" in _notes(result)


def test_without_an_encounter_the_consultation_is_the_group_then_the_bundle():
    data = example(CHRONIC)
    for request in resources(data, "MedicationRequest"):
        request.pop("encounter")
    result = mapped(data)
    assert result.prescription.consultation_id == result.prescription.prescription_id == "RX-2026-000451"
    assert "no encounter: the consultation id is the groupIdentifier" in _notes(result)


def test_without_an_issue_date_the_provenance_or_signature_time_is_taken():
    data = example(INSULIN)
    for request in resources(data, "MedicationRequest"):
        request.pop("authoredOn")
        request["dispenseRequest"].get("validityPeriod", {}).pop("start", None)
    data["signature"] = {
        "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
        "when": "2026-11-24T09:30:00+00:00",
        "who": {"display": "Dr. A"},
    }
    result = mapped(data)
    assert result.prescription.issued_at.isoformat() == "2026-11-24T09:30:00+00:00"
    assert "issued at the Bundle.signature time" in _notes(result)


@pytest.mark.parametrize(("controlled", "days"), [(False, 180), (True, 28)])
def test_without_a_validity_end_the_default_of_the_drugs_class_applies(controlled, days):
    data = example(CHRONIC)
    for request in resources(data, "MedicationRequest"):
        request["dispenseRequest"]["validityPeriod"].pop("end")
        if controlled:
            request["extension"] = [
                {
                    "url": "https://fhir.nhs.uk/StructureDefinition/Extension-DM-ControlledDrug",
                    "extension": [
                        {"url": "quantityWords", "valueString": "ninety"},
                        {"url": "schedule", "valueCoding": {"code": "CD2", "display": "Schedule 2"}},
                    ],
                }
            ]
    result = mapped(data)
    prescription = result.prescription
    assert prescription.valid_until - prescription.issued_at == timedelta(days=days)
    if controlled:
        assert prescription.items[0].controlled_drug == "schedule Schedule 2, quantity in words: ninety"


def test_validity_defaults_are_the_deployments_setting():
    data = example(CHRONIC)
    for request in resources(data, "MedicationRequest"):
        request["dispenseRequest"]["validityPeriod"].pop("end")
    rules = fhir.MappingRules(validity_days={"other": 30, "controlled": 7})
    prescription = fhir.to_prescription(fhir.parse_bundle(json.dumps(data).encode()), rules).prescription
    assert prescription.valid_until - prescription.issued_at == timedelta(days=30)


def test_days_of_supply_are_worked_out_from_structured_dosage_and_text_written_from_it():
    data = example(INSULIN)
    request = first(data, "MedicationRequest")
    request["dispenseRequest"].pop("expectedSupplyDuration")
    request["dispenseRequest"]["quantity"] = {"value": 60, "unit": "tablet"}
    request["dosageInstruction"] = [
        {
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
            "route": {"text": "Oral"},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
        }
    ]
    result = mapped(data)
    item = result.prescription.items[0]
    assert (item.days_supply, item.days_supply_basis) == (30, "dosage")
    assert item.dosage_text == "1 tablet 2 times a day oral"


def test_without_duration_or_computable_dosage_the_formulary_default_is_left_to_apply():
    data = example(CHRONIC)
    for request in resources(data, "MedicationRequest"):
        request["dispenseRequest"].pop("expectedSupplyDuration")
        request["dosageInstruction"] = [{"text": "as the clinic explained"}]
    result = mapped(data)
    assert [(i.days_supply, i.days_supply_basis) for i in result.prescription.items] == [(None, None), (None, None)]
    assert "the formulary's default applies" in _notes(result)


def test_without_any_dosage_it_is_dispensed_as_directed_and_said_so():
    data = example(CHRONIC)
    for request in resources(data, "MedicationRequest"):
        request.pop("dosageInstruction")
    result = mapped(data)
    assert result.prescription.items[0].dosage_text.startswith("as directed by the prescriber")
    assert "no dosage" in _notes(result)


def test_a_licence_from_any_listed_registration_body_and_a_requester_named_by_identifier():
    data = example(ACUTE)
    for request in resources(data, "MedicationRequest"):
        request["requester"] = {
            "identifier": {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "G1234567"},
            "display": "Dr. Jones",
        }
    prescriber = mapped(data).prescription.prescriber
    assert (prescriber.licence_registry, prescriber.licence_number, prescriber.name) == ("GMC", "G1234567", "Dr. Jones")


def test_units_substitution_notes_and_endorsements_are_kept_for_the_pharmacist():
    data = example(ACUTE)
    request = first(data, "MedicationRequest")
    request["substitution"] = {"allowedBoolean": False}
    request["note"] = [{"text": "Patient prefers the sugar-free suspension"}]
    request["extension"] = [
        {
            "url": "https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionEndorsement",
            "valueCodeableConcept": {"coding": [{"code": "SLS"}]},
        },
        {"url": "https://example.org/unknown-extension", "valueString": "x"},
    ]
    request["dispenseRequest"]["quantity"] = {"value": 0.1, "unit": "L"}
    result = mapped(data)
    item = result.prescription.items[0]
    assert (item.quantity, item.quantity_unit) == (100, "ml")
    assert item.substitution_allowed is False
    assert item.note_to_pharmacist == "Patient prefers the sugar-free suspension"
    assert item.endorsements == ["SLS"]
    assert "extension unknown-extension" in _notes(result), "an extension the mapping does not know is named"


def test_a_prescription_id_with_a_check_character_and_a_long_taper_are_accepted():
    data = example(CHRONIC)
    step = "step {n}: take {left} tablets each morning with food for 7 days, then reduce by one tablet"
    steps = "; ".join(step.format(n=n, left=8 - n) for n in range(7))
    for request in resources(data, "MedicationRequest"):
        request["groupIdentifier"]["value"] = "507FE8-A83008-4A859+"
        request["dosageInstruction"] = [{"text": steps}]
    prescription = mapped(data).prescription
    assert prescription.prescription_id == "507FE8-A83008-4A859+"
    assert len(prescription.items[0].dosage_text) > 500
