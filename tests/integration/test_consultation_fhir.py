"""FHIR R4 bundles on consultation.prescriptions.v1, through the real broker and database: a signed
bundle becomes the native PrescriptionAccepted; what cannot be mapped is dead-lettered, bytes and all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiokafka.structs import RecordMetadata

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import PrescriptionAccepted
from services.cli import bus
from services.consultation import fhir
from services.consultation.app import create_app
from services.consultation.domain import Stage
from services.consultation.settings import ConsultationSettings
from services.consultation.storage import ConsultationStorage
from services.runtime.mongo import connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import (
    TopicWatch,
    consultation_barrier,
    headers_of,
    of_type,
    own_groups,
    running,
    sender_keys,
    wait_consumed,
)
from tests.support.scenario import wait_until

DLQ = topics.CONSULTATION_PRESCRIPTIONS.dead_letter_topic
EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "examples" / "fhir"
SENDER = "hospital-test"


def service_settings(settings: RuntimeSettings) -> ConsultationSettings:
    return own_groups(ConsultationSettings, settings, sender_keys=sender_keys(settings, SENDER, "hospital-other"))


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


async def publish_bundles(settings: RuntimeSettings, *bundles: tuple[bytes, str, str]) -> list[RecordMetadata]:
    """Publish (bytes, prescription id, message id) as FHIR records signed by SENDER, as `pharmacy submit` does."""
    async with bus.producer(settings) as client:
        landed = []
        for body, prescription_id, message_id in bundles:
            name, key, value, headers = bus.encode_fhir(
                body, prescription_id=prescription_id, message_id=message_id, sender_id=SENDER, settings=settings
            )
            landed.append(await client.send_and_wait(name, value, key=key, headers=headers))
        return landed


def accepted_for(watch: TopicWatch, prescription_id: str) -> list[PrescriptionAccepted]:
    return [
        m
        for m in of_type(watch.messages(topics.CONSULTATION_INTAKE.name), PrescriptionAccepted)
        if m.prescription.prescription_id == prescription_id
    ]


def dead_letters_for(watch: TopicWatch, prescription_id: str) -> list[Any]:
    return [r for r in watch.raw(DLQ) if r.key == prescription_id.encode()]


async def test_a_signed_fhir_bundle_is_accepted_as_the_prescription_it_maps_to(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = ConsultationStorage(client[settings.mongo_database])
    body = (EXAMPLES / "chronic-metformin-amlodipine.json").read_bytes()
    bundle = fhir.parse_bundle(body)
    expected = fhir.to_prescription(bundle).prescription
    message_id = fhir.message_id_of(bundle, body, {})
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, topics.CONSULTATION_INTAKE.name, DLQ) as watch,
        ):
            # Sent twice, as a hospital retrying after a timeout does: accepted once.
            landed = await publish_bundles(settings, *[(body, expected.prescription_id, message_id)] * 2)
            await watch.wait_for(lambda w: accepted_for(w, expected.prescription_id), "the bundle to be accepted")
            await wait_consumed(settings, app, landed)
            await consultation_barrier(settings, watch)

            async def received() -> bool:
                status = await storage.status_of(expected.prescription_id)
                return status is not None and status.stage is Stage.RECEIVED

            await wait_until(received, "the status to record the intake", timeout=30)
            record = await storage.intake_of(expected.prescription_id)
            status = await storage.status_of(expected.prescription_id)
    finally:
        client.close()

    accepted = accepted_for(watch, "RX-2026-000451")
    assert len(accepted) == 1, "the repeated bundle is accepted once"
    assert accepted[0].prescription == expected
    assert accepted[0].sender_id == SENDER, "the sender is the signature's"
    assert accepted[0].causation_id == message_id == "B-20261125-0451"
    assert accepted[0].correlation_id == "RX-2026-000451"
    assert [(i.drug_code, i.quantity, i.days_supply, i.chronic) for i in accepted[0].prescription.items] == [
        ("MET500", 180, 90, True),
        ("AML5", 90, 90, True),
    ]
    assert dead_letters_for(watch, "RX-2026-000451") == [], "a repeated bundle is no error"

    assert record is not None and record.prescription == expected and record.message_id == message_id

    assert status is not None
    told = fhir.status_to_fhir(status, record.prescription)
    requests = [e["resource"] for e in told["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert [(r["status"], r["groupIdentifier"]["value"]) for r in requests] == [("active", "RX-2026-000451")] * 2


async def test_an_unmappable_or_forged_bundle_is_dead_lettered_with_its_original_bytes(
    settings: RuntimeSettings,
) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = ConsultationStorage(client[settings.mongo_database])
    post_box_only = example("insulin-glargine")
    patient = next(e["resource"] for e in post_box_only["entry"] if e["resource"]["resourceType"] == "Patient")
    for address in patient["address"]:
        address["type"] = "postal"
    unmappable = json.dumps(post_box_only, indent=2).encode()
    forged = example("acute-amoxicillin-message")
    forged["meta"] = {"source": fhir.SENDER_SOURCE_PREFIX + "hospital-other"}  # signed by hospital-test
    forged_body = json.dumps(forged).encode()
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, topics.CONSULTATION_INTAKE.name, DLQ) as watch,
        ):
            landed = await publish_bundles(
                settings,
                (unmappable, "RX-EB-2026-1187", "MSG-FHIR-POST-BOX-ONLY"),
                (forged_body, "RX-2026-000502", "MSG-FHIR-FORGED"),
            )
            await watch.wait_for(
                lambda w: dead_letters_for(w, "RX-EB-2026-1187"), "the unmappable bundle's dead letter"
            )
            await watch.wait_for(lambda w: dead_letters_for(w, "RX-2026-000502"), "the forged bundle's dead letter")
            await wait_consumed(settings, app, landed)
            await consultation_barrier(settings, watch)
            records = [await storage.intake_of(rx) for rx in ("RX-EB-2026-1187", "RX-2026-000502")]
    finally:
        client.close()

    (letter,) = dead_letters_for(watch, "RX-EB-2026-1187")
    headers = headers_of(letter)
    assert letter.value == unmappable, "the original bytes are kept"
    assert headers["dlq.reason"] == "fhir_unmappable"
    assert "has no current physical address to deliver to" in headers["dlq.detail"]
    assert headers["dlq.topic"] == topics.CONSULTATION_PRESCRIPTIONS.name
    assert headers["dlq.offset"] == str(landed[0].offset)
    assert headers["content-type"].startswith(fhir.FHIR_JSON), "replayable as it came"
    assert headers["message-id"] == "MSG-FHIR-POST-BOX-ONLY"

    (forgery,) = dead_letters_for(watch, "RX-2026-000502")
    assert forgery.value == forged_body
    assert headers_of(forgery)["dlq.reason"] == "sender_mismatch"

    assert accepted_for(watch, "RX-EB-2026-1187") == [] and accepted_for(watch, "RX-2026-000502") == []
    assert records == [None, None], "nothing was recorded for either"
