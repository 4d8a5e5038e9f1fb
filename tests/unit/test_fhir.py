"""FHIR R4 in and out: example bundles mapped onto the native prescription, every refusal with its
reason, and a prescription's status told as MedicationRequest / MedicationDispense / SupplyDelivery."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from pharmacy_contracts import prescription as rx
from pharmacy_contracts import signing, topics
from pharmacy_contracts.consultation import CancellationRequested, Prescription, PrescriptionSubmitted
from services.consultation import fhir
from services.consultation.domain import PrescriptionStatus, Stage, track
from services.consultation.service import ConsultationService, upstream_decoder
from services.runtime.errors import Refused
from tests.unit.builders import (
    RX_ID,
    abandoned,
    accepted,
    approved,
    assigned,
    at,
    cancelled,
    completed,
    delivery_accepted,
    delivery_failed,
    envelope_fields,
    make_prescription,
    picked_up,
    rejected,
    reservation_failed,
    reserved,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "examples" / "fhir"
CHRONIC = "chronic-metformin-amlodipine"
INSULIN = "insulin-glargine"
ACUTE = "acute-amoxicillin-message"
FHIR_HEADERS = {"content-type": "application/fhir+json; fhirVersion=4.0", signing.SENDER_HEADER: "hospital-north"}


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def mapped(data: dict[str, Any]) -> fhir.Mapped:
    return fhir.to_prescription(fhir.parse_bundle(encode(data)))


def refusal(data: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> str:
    body = data if isinstance(data, bytes) else encode(data)
    with pytest.raises(Refused) as refused:
        fhir.to_submission(body, {**FHIR_HEADERS, **(headers or {})})
    assert refused.value.code == "fhir_unmappable"
    return refused.value.detail


def resources(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == kind]


def first(data: dict[str, Any], kind: str) -> dict[str, Any]:
    return resources(data, kind)[0]


# --- the example bundles -----------------------------------------------------------------------------


def test_every_example_is_a_valid_r4_bundle():
    names = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert names == sorted([ACUTE, CHRONIC, INSULIN])
    for name in names:
        assert Bundle.model_validate(example(name)).type in fhir.READ_BUNDLE_TYPES


def test_a_chronic_collection_bundle_maps_onto_the_native_prescription():
    result = mapped(example(CHRONIC))

    assert result.prescription == Prescription.model_validate(
        {
            "prescription_id": "RX-2026-000451",
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
                "licence_registry": "licence",
            },
            "diagnosis_codes": ["E11.9", "I10"],
            "items": [
                {
                    "drug_code": "MET500",
                    "quantity": 180,
                    "quantity_unit": "tablet",
                    "dosage_text": "1 tablet twice daily with meals",
                    "days_supply": 90,
                    "days_supply_basis": "prescribed",
                    "chronic": True,
                },
                # 3 mo of 30 days; the formulary coding is found even when it is not the first one.
                {
                    "drug_code": "AML5",
                    "quantity": 90,
                    "quantity_unit": "tablet",
                    "dosage_text": "1 tablet once daily",
                    "days_supply": 90,
                    "days_supply_basis": "prescribed",
                    "chronic": True,
                },
            ],
            # validityPeriod in +05:00, kept as the same instant in UTC
            "issued_at": "2026-11-25T03:00:00Z",
            "valid_until": "2027-05-25T03:00:00Z",
            "mapping_notes": [
                "MedicationRequest/mr-met: numberOfRepeatsAllowed=1; this issue is filled once, as long-term therapy",
                "MedicationRequest/mr-aml: numberOfRepeatsAllowed=1; this issue is filled once, as long-term therapy",
            ],
        }
    )
    assert result.notes == tuple(result.prescription.mapping_notes)


def test_an_insulin_transaction_bundle_with_uuid_references_and_a_medication_resource():
    prescription = mapped(example(INSULIN)).prescription

    assert prescription.prescription_id == "RX-EB-2026-1187", "no groupIdentifier: the request's identifier"
    assert prescription.consultation_id == "CONS-90117", "an encounter named by identifier only"
    assert prescription.patient.patient_id == "PAT-7730"
    assert prescription.patient.phone == "+7 777 555 0142", "the mobile phone, not the first one"
    assert prescription.patient.address.town == "Eastbrook", "the old address is skipped"
    assert prescription.patient.address.line == "Aul Zhanatalap, house 3"
    assert prescription.patient.address.postcode is None
    assert (prescription.patient.address.coordinates.latitude, prescription.patient.address.coordinates.longitude) == (
        50.4177,
        72.0871,
    )
    assert prescription.patient.allergies == []
    assert prescription.prescriber.licence_number == "LIC-KZ-30991", "an identifier in the pharmacy's licence system"
    assert prescription.prescriber.name == "Dr. Aigerim Nurlanova"
    (item,) = prescription.items
    assert (item.drug_code, item.quantity, item.days_supply, item.chronic) == ("INSGL", 3, 28, True)
    assert (
        item.dosage_text
        == "20 units subcutaneously at bedtime; keep unopened pens in the fridge at 2-8 °C; never freeze"
    )
    assert prescription.issued_at == datetime(2026, 11, 25, 10, 40, tzinfo=UTC), (
        "authoredOn without validityPeriod.start"
    )
    assert prescription.valid_until == datetime(2027, 2, 25, 23, 59, 59, tzinfo=UTC), "an end date includes its day"
    assert prescription.diagnosis_codes == ["E10.9"]


def test_a_message_bundle_skips_its_header_and_reads_reasons_from_conditions():
    result = mapped(example(ACUTE))
    prescription = result.prescription

    assert prescription.prescription_id == "RX-2026-000502"
    assert prescription.consultation_id == "enc-90342", "an Encounter with no identifier: its id"
    assert prescription.patient.patient_id == "pat-6048", "a Patient with no identifier: its id"
    assert prescription.prescriber.licence_number == "LIC-KZ-55204", "an identifier typed v2-0203 MD"
    assert prescription.diagnosis_codes == ["J02.0"], "the ICD-10 coding of the referenced Condition"
    (item,) = prescription.items
    assert (item.drug_code, item.quantity, item.days_supply, item.chronic) == ("AMOX500", 21, 7, False)
    assert prescription.valid_until == datetime(2026, 12, 10, 18, 59, tzinfo=UTC)
    assert result.notes == (), "numberOfRepeatsAllowed 0 is nothing to note"


@pytest.mark.parametrize(
    ("value", "code", "unit", "days"),
    [(30, "d", "days", 30), (1, "d", None, 1), (2, "wk", "weeks", 14), (1, "mo", "month", 30), (3, None, "months", 90)],
)
def test_supply_durations_in_days_weeks_and_months(value, code, unit, days):
    data = example(INSULIN)
    duration = {"value": value, "system": "http://unitsofmeasure.org", "code": code, "unit": unit}
    first(data, "MedicationRequest")["dispenseRequest"]["expectedSupplyDuration"] = {
        k: v for k, v in duration.items() if v is not None and (k != "system" or code)
    }
    assert mapped(data).prescription.items[0].days_supply == days


def test_a_drug_without_the_formulary_coding_keeps_its_first_code_and_says_so():
    data = example(ACUTE)
    first(data, "MedicationRequest")["medicationCodeableConcept"] = {
        "coding": [{"system": "http://www.whocc.no/atc", "code": "J01CA04"}]
    }
    result = mapped(data)
    assert result.prescription.items[0].drug_code == "J01CA04", "the formulary check answers for unknown drugs"
    assert "no https://pharmacy.example.org/fhir/CodeSystem/formulary coding" in result.notes[0]


def test_inactive_refuted_and_no_known_allergies_are_not_allergies():
    data = example(CHRONIC)
    patient = {"reference": "Patient/pat-5521"}
    snomed = "http://snomed.info/sct"
    data["entry"] += [
        {"resource": {"resourceType": "AllergyIntolerance", "patient": patient, **extra}}
        for extra in (
            {"code": {"text": "sulfonamide"}, "clinicalStatus": {"coding": [{"code": "resolved"}]}},
            {"code": {"text": "aspirin"}, "verificationStatus": {"coding": [{"code": "refuted"}]}},
            {"code": {"coding": [{"system": snomed, "code": "409137002", "display": "No known drug allergy"}]}},
            {"code": {"coding": [{"system": snomed, "code": "91936005", "display": "Penicillin allergy"}]}},
            {"code": {"text": "nsaid"}, "clinicalStatus": {"coding": [{"code": "active"}]}},
        )
    ]
    assert mapped(data).prescription.patient.allergies == ["penicillin", "Penicillin allergy", "nsaid"]


def test_a_practitioner_role_leads_to_its_practitioner():
    data = example(CHRONIC)
    data["entry"].append(
        {
            "resource": {
                "resourceType": "PractitionerRole",
                "id": "role-1",
                "practitioner": {"reference": "Practitioner/dr-0042"},
            }
        }
    )
    for request in resources(data, "MedicationRequest"):
        request["requester"] = {"reference": "PractitionerRole/role-1"}
    assert mapped(data).prescription.prescriber.licence_number == "LIC-KZ-77120"


# --- refusals: each says where and why ----------------------------------------------------------------


def _edit(name: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = example(name)
    change(data)
    return data


def _requests(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        for request in resources(data, "MedicationRequest"):
            change(request)

    return apply


def _second_patient(data: dict[str, Any]) -> None:
    other = copy.deepcopy(first(data, "Patient")) | {"id": "pat-9999", "identifier": [{"value": "PAT-9999"}]}
    data["entry"].append({"fullUrl": "Patient/pat-9999", "resource": other})
    resources(data, "MedicationRequest")[1]["subject"] = {"reference": "Patient/pat-9999"}


def _second_practitioner(data: dict[str, Any]) -> None:
    other = copy.deepcopy(first(data, "Practitioner")) | {"id": "dr-0099"}
    data["entry"].append({"resource": other})
    resources(data, "MedicationRequest")[1]["requester"] = {"reference": "Practitioner/dr-0099"}


def _r5_medication(request: dict[str, Any]) -> None:
    request["medication"] = {"concept": request.pop("medicationCodeableConcept")}


def _foreign_allergy(data: dict[str, Any]) -> None:
    first(data, "AllergyIntolerance")["patient"] = {"reference": "Patient/someone-else"}


REFUSALS: dict[str, tuple[dict[str, Any] | bytes, str]] = {
    "not JSON": (b"<Bundle xmlns='http://hl7.org/fhir'/>", "not JSON"),
    "not a Bundle": (first(example(CHRONIC), "Patient"), "a Patient resource, not a Bundle"),
    "not a resource": ({"prescription_id": "RX-1"}, "not a FHIR resource (no resourceType), not a Bundle"),
    "R5 structure": (
        _edit(CHRONIC, _requests(_r5_medication)),
        "not a valid FHIR R4 Bundle: entry.4.resource.medication: Extra inputs are not permitted",
    ),
    "unknown resource type": (
        _edit(CHRONIC, lambda d: d["entry"].append({"resource": {"resourceType": "Prescription"}})),
        "entry 7: resourceType 'Prescription' is not a FHIR R4 resource",
    ),
    "searchset": (_edit(CHRONIC, lambda d: d.update(type="searchset")), "Bundle.type is 'searchset'"),
    "no request": (
        _edit(CHRONIC, lambda d: d.update(entry=[e for e in d["entry"] if "groupIdentifier" not in e["resource"]])),
        "the bundle holds no MedicationRequest",
    ),
    "draft": (_edit(CHRONIC, _requests(lambda r: r.update(status="draft"))), "mr-met.status is 'draft'"),
    "cancelled request": (_edit(CHRONIC, _requests(lambda r: r.update(status="cancelled"))), "status is 'cancelled'"),
    "proposal": (_edit(CHRONIC, _requests(lambda r: r.update(intent="proposal"))), "mr-met.intent is 'proposal'"),
    "do not perform": (_edit(CHRONIC, _requests(lambda r: r.update(doNotPerform=True))), "says doNotPerform"),
    "mixed patients": (_edit(CHRONIC, _second_patient), "MedicationRequests for 2 different patients"),
    "subject elsewhere": (
        _edit(CHRONIC, _requests(lambda r: r.update(subject={"reference": "Patient/elsewhere"}))),
        "subject Patient/elsewhere is not a Patient in the bundle",
    ),
    "postal address only": (
        _edit(CHRONIC, lambda d: first(d, "Patient")["address"][0].update(type="postal")),
        "Patient/pat-5521 has no current physical address",
    ),
    "no birth date": (_edit(CHRONIC, lambda d: first(d, "Patient").pop("birthDate")), "has no birthDate"),
    "no patient name": (_edit(CHRONIC, lambda d: first(d, "Patient").pop("name")), "Patient/pat-5521 has no name"),
    "allergy of another patient": (
        _edit(CHRONIC, _foreign_allergy),
        "AllergyIntolerance/alg-1 is about Patient/someone-else, not the prescription's patient",
    ),
    "allergy without code": (
        _edit(CHRONIC, lambda d: first(d, "AllergyIntolerance").pop("code")),
        "AllergyIntolerance/alg-1 has no code the checks can read",
    ),
    "no dispense request": (
        _edit(CHRONIC, _requests(lambda r: r.pop("dispenseRequest"))),
        "mr-met has no dispenseRequest",
    ),
    "no quantity": (
        _edit(CHRONIC, _requests(lambda r: r["dispenseRequest"].pop("quantity"))),
        "MedicationRequest/mr-met: dispenseRequest.quantity is missing",
    ),
    "fractional quantity": (
        _edit(CHRONIC, _requests(lambda r: r["dispenseRequest"]["quantity"].update(value=2.5))),
        "dispenseRequest.quantity 2.5 tablet is not a whole number",
    ),
    "duration in years": (
        _edit(
            CHRONIC, _requests(lambda r: r["dispenseRequest"]["expectedSupplyDuration"].update(code="a", unit="year"))
        ),
        "expectedSupplyDuration unit 'a' is not one of d, wk, mo",
    ),
    "duration in hours": (
        _edit(
            CHRONIC, _requests(lambda r: r["dispenseRequest"].update(expectedSupplyDuration={"value": 72, "unit": "h"}))
        ),
        "expectedSupplyDuration unit 'h' is not one of d, wk, mo",
    ),
    "half a week": (
        _edit(
            CHRONIC,
            _requests(lambda r: r["dispenseRequest"]["expectedSupplyDuration"].update(value=1.5, code="wk", unit="wk")),
        ),
        "expectedSupplyDuration 1.5 wk is not a whole number of days",
    ),
    "no issue date": (
        _edit(INSULIN, _requests(lambda r: r.pop("authoredOn"))),
        "has no issue date: no dispenseRequest.validityPeriod.start, authoredOn, Provenance.recorded or signature time",
    ),
    "two prescriptions": (
        _edit(CHRONIC, lambda d: resources(d, "MedicationRequest")[1]["groupIdentifier"].update(value="RX-OTHER")),
        "several prescriptions in one bundle (groupIdentifier RX-2026-000451, RX-OTHER)",
    ),
    "half grouped": (
        _edit(CHRONIC, lambda d: resources(d, "MedicationRequest")[1].pop("groupIdentifier")),
        "MedicationRequest/mr-aml has no groupIdentifier while the others belong to RX-2026-000451",
    ),
    "no prescription id": (
        _edit(INSULIN, _requests(lambda r: r.pop("identifier"))),
        "has neither groupIdentifier nor identifier",
    ),
    "two encounters": (
        _edit(CHRONIC, lambda d: resources(d, "MedicationRequest")[1].update(encounter={"reference": "Encounter/E2"})),
        "MedicationRequests from 2 consultations: CONS-88412, E2",
    ),
    "no requester": (
        _edit(CHRONIC, _requests(lambda r: r.pop("requester"))),
        "MedicationRequest/mr-met: requester (none) is not a Practitioner in the bundle",
    ),
    "two prescribers": (_edit(CHRONIC, _second_practitioner), "signed by 2 different practitioners"),
    "no licence": (
        _edit(CHRONIC, lambda d: first(d, "Practitioner")["identifier"].pop()),
        "Practitioner/dr-0042 has no licence number",
    ),
    "medication elsewhere": (
        _edit(
            INSULIN, lambda d: d.update(entry=[e for e in d["entry"] if e["resource"]["resourceType"] != "Medication"])
        ),
        "medication urn:uuid:a1e9c3d5-5f6b-4b7a-8c9d-0e1f2a3b4c03 is not in the bundle",
    ),
    "medication as text": (
        _edit(ACUTE, _requests(lambda r: r.update(medicationCodeableConcept={"text": "amoxicillin 500 mg"}))),
        "the medication has no code, only text",
    ),
    "breaks the native contract": (
        _edit(CHRONIC, lambda d: first(d, "Patient")["telecom"][1].update(value="call the farm office")),
        "the bundle maps to a prescription the native contract refuses: patient.phone",
    ),
    "id with a slash": (
        _edit(CHRONIC, _requests(lambda r: r["groupIdentifier"].update(value="RX/2026/451"))),
        "native contract refuses: prescription_id",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_what_cannot_be_mapped_is_refused_with_the_reason(case):
    data, expected = REFUSALS[case]
    assert expected in refusal(data)


@pytest.mark.parametrize("version", ["5.0", "3.0", "1.0.2"])
def test_bundles_of_other_fhir_versions_are_refused_by_their_content_type(version):
    detail = refusal(example(CHRONIC), {"content-type": f"application/fhir+json; fhirVersion={version}"})
    assert detail == f"content type says fhirVersion={version}; only FHIR R4 (4.0) and R4B (4.3) bundles are read"


@pytest.mark.parametrize("version", ["4.0", "4.0.1", "4.3"])
def test_r4_and_r4b_content_types_are_read(version):
    submitted, _ = fhir.to_submission(
        encode(example(CHRONIC)), {**FHIR_HEADERS, "content-type": f"application/fhir+json; fhirVersion={version}"}
    )
    assert submitted.prescription.prescription_id == "RX-2026-000451"


def test_an_unsigned_bundle_is_refused_as_unsigned():
    with pytest.raises(Refused) as refused:
        fhir.to_submission(encode(example(CHRONIC)), {"content-type": fhir.FHIR_JSON})
    assert refused.value.code == "unsigned"


# --- the native message --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "is_fhir"),
    [
        ("application/fhir+json", True),
        ("application/fhir+json; fhirVersion=4.0", True),
        ("Application/FHIR+JSON ; charset=utf-8", True),
        ("application/json", False),
        ("application/fhir+xml", False),
        ("", False),
    ],
)
def test_a_bundle_is_told_by_its_content_type(content_type, is_fhir):
    assert fhir.is_fhir({"content-type": content_type}) is is_fhir
    assert fhir.is_fhir({"Content-Type": content_type}) is is_fhir


def test_the_submission_comes_from_the_signer_under_the_senders_message_id():
    body = encode(example(CHRONIC))
    submitted, notes = fhir.to_submission(body, {**FHIR_HEADERS, "message-id": "MSG-77"})

    assert isinstance(submitted, PrescriptionSubmitted)
    assert (submitted.sender_id, submitted.producer) == ("hospital-north", "hospital-north")
    assert submitted.message_id == "MSG-77"
    assert submitted.correlation_id == submitted.prescription.prescription_id == "RX-2026-000451"
    assert submitted.occurred_at == datetime(2026, 11, 25, 3, 2, 11, tzinfo=UTC), "Bundle.timestamp"
    assert len(notes) == 2


def test_without_a_message_id_header_the_id_comes_from_the_bundle_and_a_redelivery_is_identical():
    chronic, insulin, acute = (encode(example(name)) for name in (CHRONIC, INSULIN, ACUTE))

    assert fhir.to_submission(chronic, FHIR_HEADERS)[0].message_id == "B-20261125-0451", "Bundle.identifier"
    assert fhir.to_submission(acute, FHIR_HEADERS)[0].message_id == "msg-2026-11-26-0007", "Bundle.id"
    derived = fhir.to_submission(insulin, FHIR_HEADERS)[0]
    assert derived.message_id.startswith("sha256-") and len(derived.message_id) == 39, "the bytes' digest"
    again = fhir.to_submission(insulin, FHIR_HEADERS)[0]
    assert again == derived and again.model_dump_json() == derived.model_dump_json()
    other_bytes = fhir.to_submission(insulin + b"\n", FHIR_HEADERS)[0]
    assert other_bytes.message_id != derived.message_id


def test_without_a_bundle_timestamp_the_message_time_is_the_issue_time():
    data = example(INSULIN)
    del data["timestamp"]
    submitted, _ = fhir.to_submission(encode(data), FHIR_HEADERS)
    assert submitted.occurred_at == submitted.prescription.issued_at


def test_the_decoder_reads_native_messages_as_before_and_bundles_as_submissions():
    native = CancellationRequested(
        **envelope_fields(correlation_id=RX_ID),
        sender_id="CLINIC-SYS-1",
        prescription_id=RX_ID,
        reason="therapy changed",
        requested_by="Dr. Karimov",
    )
    body = native.model_dump_json().encode()
    topic = topics.CONSULTATION_PRESCRIPTIONS

    decode_upstream = upstream_decoder(fhir.DEFAULT_RULES)
    assert decode_upstream(body, {"content-type": "application/json"}, topic) == native
    assert decode_upstream(body, {}, topic) == native
    from_fhir = decode_upstream(encode(example(ACUTE)), FHIR_HEADERS, topic)
    assert isinstance(from_fhir, PrescriptionSubmitted) and from_fhir.prescription.items[0].drug_code == "AMOX500"
    with pytest.raises(Refused) as refused:
        decode_upstream(body, FHIR_HEADERS, topic)
    assert refused.value.code == "fhir_unmappable", "a native message labelled FHIR is not guessed at"


# --- the signature gate on bundles ---------------------------------------------------------------------

KEYS = {"hospital-north": {"k1": b"secret-1"}, "hospital-south": {"k2": b"secret-2"}}


def gate() -> ConsultationService:
    return ConsultationService(
        storage=None, unit_of_work=None, clock=lambda: at(0), sender_keys=KEYS, delivery_code_key=b"key"
    )  # type: ignore[arg-type]


def signed(data: dict[str, Any], sender: str = "hospital-south", key_id: str = "k2", secret: bytes = b"secret-2"):
    body = encode(data)
    headers = {
        "content-type": fhir.FHIR_JSON,
        **signing.signature_headers(body, sender_id=sender, key_id=key_id, secret=secret),
    }
    return body, headers


def test_a_signed_bundle_passes_the_gate_whatever_its_own_source_url():
    gate().check_signature(*signed(example(CHRONIC)))  # meta.source is the hospital's own URL: no claim


def test_a_bundle_naming_another_sender_in_meta_source_is_refused_as_forged():
    data = example(CHRONIC)
    data["meta"]["source"] = fhir.SENDER_SOURCE_PREFIX + "hospital-north"
    with pytest.raises(Refused) as refused:
        gate().check_signature(*signed(data))
    assert refused.value.code == "sender_mismatch"
    assert refused.value.detail == "signed by 'hospital-south' but claims to be 'hospital-north'"

    data["meta"]["source"] = fhir.SENDER_SOURCE_PREFIX + "hospital-south"
    gate().check_signature(*signed(data))


def test_an_altered_bundle_fails_its_signature():
    body, headers = signed(example(CHRONIC))
    with pytest.raises(Refused) as refused:
        gate().check_signature(body.replace(b"180", b"900"), headers)
    assert refused.value.code == "bad_signature"


@pytest.mark.parametrize(
    ("body", "claimed"),
    [
        (b'{"resourceType": "Bundle", "meta": {"source": "https://pharmacy.example.org/fhir/sender/h-1"}}', "h-1"),
        (b'{"resourceType": "Bundle", "meta": {"source": "https://ehr.example/fhir"}}', None),
        (b'{"resourceType": "Bundle", "meta": "odd"}', None),
        (b"[1, 2]", None),
        (b"not json", None),
    ],
)
def test_the_sender_a_bundle_claims(body, claimed):
    assert fhir.claimed_sender(body) == claimed


# --- statuses back out ---------------------------------------------------------------------------------


def _event_fields(minute: int) -> dict[str, Any]:
    return envelope_fields(message_id=f"MSG-F-{minute}", occurred_at=at(minute), correlation_id=RX_ID)


def held(minute: int = 1) -> rx.PrescriptionHeld:
    reason = rx.Reason(code="MODERATE_INTERACTION", message="MET500 and AML5 interact", item_index=0)
    return rx.PrescriptionHeld(
        **_event_fields(minute),
        prescription_id=RX_ID,
        patient_id="PAT-5521",
        reasons=[reason],
        escalate_at=at(minute + 60),
        expires_at=at(minute + 240),
    )


def fold(*events: Any) -> PrescriptionStatus:
    status = None
    for event in events:
        status = track(status, event, delivery_code="493017") or status
    assert status is not None
    return status


STATUS_CASES: dict[str, tuple[tuple[Any, ...], str, str | None, str | None]] = {
    # stage: events, MedicationRequest, MedicationDispense, SupplyDelivery
    "received": ((accepted(0),), "active", None, None),
    "held for review": ((accepted(0), held(1)), "on-hold", None, None),
    "approved": ((accepted(0), approved(1)), "active", None, None),
    "rejected": ((accepted(0), rejected(1)), "cancelled", None, None),
    "reserved": ((accepted(0), approved(1), reserved(2)), "active", "preparation", None),
    "out of stock": ((accepted(0), approved(1), reservation_failed(2)), "stopped", "declined", None),
    "courier assigned": ((accepted(0), approved(1), reserved(2), assigned(3)), "active", "preparation", "in-progress"),
    "accepted by courier": (
        (accepted(0), approved(1), reserved(2), assigned(3), delivery_accepted(4)),
        "active",
        "preparation",
        "in-progress",
    ),
    "picked up": (
        (accepted(0), approved(1), reserved(2), assigned(3), picked_up(5)),
        "active",
        "in-progress",
        "in-progress",
    ),
    "delivery failed": (
        (accepted(0), approved(1), reserved(2), assigned(3), picked_up(5), delivery_failed(6)),
        "active",
        "in-progress",
        "in-progress",
    ),
    "delivered": (
        (accepted(0), approved(1), reserved(2), assigned(3), picked_up(5), completed(7)),
        "completed",
        "completed",
        "completed",
    ),
    "undeliverable": (
        (accepted(0), approved(1), reserved(2), assigned(3), picked_up(5), abandoned(8)),
        "stopped",
        "stopped",
        "abandoned",
    ),
    "cancelled before review": ((accepted(0), held(1), cancelled(30, was_approved=False)), "cancelled", None, None),
    "cancelled once reserved": ((accepted(0), approved(1), reserved(2), cancelled(30)), "cancelled", "cancelled", None),
    "cancelled on the road": (
        (accepted(0), approved(1), reserved(2), assigned(3), picked_up(5), cancelled(30)),
        "cancelled",
        "stopped",
        "abandoned",
    ),
}


def of_kind(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


@pytest.mark.parametrize("case", STATUS_CASES, ids=list(STATUS_CASES))
def test_each_stage_is_told_in_fhir_statuses(case):
    events, request_status, dispense_status, delivery_status = STATUS_CASES[case]
    status = fold(*events)

    bundle = fhir.status_to_fhir(status)

    assert Bundle.model_validate(bundle).type == "searchset", "a valid R4 searchset bundle"
    assert [r["status"] for r in of_kind(bundle, "MedicationRequest")] == [request_status]
    assert [r["status"] for r in of_kind(bundle, "MedicationDispense")] == (
        [dispense_status] if dispense_status else []
    )
    assert [r["status"] for r in of_kind(bundle, "SupplyDelivery")] == ([delivery_status] if delivery_status else [])
    assert bundle["total"] == 1
    assert "493017" not in json.dumps(bundle), "the patient's delivery code never leaves in a FHIR status"


def test_the_status_of_a_known_prescription_has_a_request_and_a_dispense_per_line():
    prescription = make_prescription()
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(5), completed(7))

    bundle = fhir.status_to_fhir(status, prescription)

    requests = of_kind(bundle, "MedicationRequest")
    dispenses = of_kind(bundle, "MedicationDispense")
    (delivery,) = of_kind(bundle, "SupplyDelivery")
    assert bundle["total"] == len(requests) == len(dispenses) == len(prescription.items) == 2
    for request, dispense, item in zip(requests, dispenses, prescription.items, strict=True):
        assert request["groupIdentifier"] == {"system": fhir.PRESCRIPTION_SYSTEM, "value": RX_ID}
        assert request["medicationCodeableConcept"]["coding"] == [
            {"system": fhir.FORMULARY_SYSTEM, "code": item.drug_code}
        ]
        assert request["subject"] == {"identifier": {"value": prescription.patient.patient_id}}
        assert request["dispenseRequest"]["quantity"] == {"value": item.quantity}
        assert request["dispenseRequest"]["expectedSupplyDuration"]["value"] == item.days_supply
        assert request["dosageInstruction"] == [{"text": item.dosage_text}]
        assert request["courseOfTherapyType"]["coding"][0]["code"] == "continuous"
        assert request["note"][0]["text"] == "delivered by CUR-1"
        assert dispense["authorizingPrescription"] == [{"reference": f"MedicationRequest/{request['id']}"}]
        assert dispense["quantity"] == {"value": item.quantity}
        assert dispense["location"] == {"display": "warehouse WH-1"}
        assert _instant(dispense["whenPrepared"]) == at(2)
        assert _instant(dispense["whenHandedOver"]) == at(7)
    assert delivery["supplier"] == {"display": "courier CUR-1"}
    assert delivery["identifier"] == [{"system": fhir.DELIVERY_SYSTEM, "value": RX_ID}]
    assert _instant(delivery["occurrenceDateTime"]) == at(7)
    assert [e["search"]["mode"] for e in bundle["entry"]] == ["match", "match", "include", "include", "include"]


def test_why_a_prescription_stopped_is_its_status_reason():
    status = fold(accepted(0), approved(1), reservation_failed(2))

    bundle = fhir.status_to_fhir(status)

    (request,) = of_kind(bundle, "MedicationRequest")
    (dispense,) = of_kind(bundle, "MedicationDispense")
    shortage = "OUT_OF_STOCK: MET500 needs 180, best warehouse has 40"
    assert request["statusReason"] == {"text": shortage}
    assert dispense["statusReasonCodeableConcept"] == {"text": shortage}
    assert "location" not in dispense, "no warehouse took it"


def test_the_same_status_gives_the_same_ids_and_any_prescription_id_makes_valid_fhir_ids():
    status = fold(accepted(0, prescription_id="RX:2026_000123"), approved(1, prescription_id="RX:2026_000123"))
    first_bundle, second_bundle = fhir.status_to_fhir(status), fhir.status_to_fhir(status)

    assert first_bundle == second_bundle
    (request,) = of_kind(first_bundle, "MedicationRequest")
    assert request["groupIdentifier"]["value"] == "RX:2026_000123"
    assert Bundle.model_validate(first_bundle)


def test_a_status_without_history_is_still_valid():
    bundle = fhir.status_to_fhir(PrescriptionStatus(prescription_id=RX_ID, stage=Stage.RECEIVED))
    assert "meta" not in bundle
    assert Bundle.model_validate(bundle).total == 1


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_examples_cover_repeats_validity_and_supply_durations():
    """The brief's realism: every example has dosage, quantity, duration, validity and repeats."""
    for name in (CHRONIC, INSULIN, ACUTE):
        for request in resources(example(name), "MedicationRequest"):
            dispense = request["dispenseRequest"]
            assert request["dosageInstruction"][0]["text"]
            assert {"quantity", "expectedSupplyDuration", "validityPeriod", "numberOfRepeatsAllowed"} <= set(dispense)


# --- the patient's language (Patient.communication) ---------------------------------------------------


def _speaks(*languages: tuple[str, bool | None]) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        first(data, "Patient")["communication"] = [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": code}]}}
            | ({} if preferred is None else {"preferred": preferred})
            for code, preferred in languages
        ]

    return apply


@pytest.mark.parametrize(
    ("languages", "told_in"),
    [
        ((("ug-CN", None),), "ug"),
        ((("ug-Arab-CN", True),), "ug"),
        ((("zh-CN", None), ("ug", True)), "ug"),
        ((("en-GB", None), ("zh-Hans-CN", None)), "en"),
        ((("kk", True), ("zh_CN", None)), "zh"),
        ((("ZH", None),), "zh"),
    ],
    ids=["ug-CN", "ug-Arab-CN", "preferred-first", "first-listed", "kazakh-then-chinese", "upper-case"],
)
def test_the_patients_language_is_their_preferred_one_we_write_in(languages, told_in):
    assert mapped(_edit(CHRONIC, _speaks(*languages))).prescription.patient.preferred_language == told_in


def test_a_patient_who_states_no_language_takes_the_default_and_one_we_do_not_write_in_is_noted():
    assert mapped(example(CHRONIC)).prescription.patient.preferred_language is None
    result = mapped(_edit(CHRONIC, _speaks(("kk-KZ", True), ("ru", False))))
    assert result.prescription.patient.preferred_language is None
    assert any("speaks kk-KZ, ru: notifications are not written in it" in note for note in result.notes)
