"""The consultation service alone, in-process, against the real broker and database."""

from __future__ import annotations

from collections import Counter

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts.consultation import PrescriptionAccepted, PrescriptionSubmitted
from pharmacy_contracts.courier import CourierAssigned, DeliveryCompleted, DeliveryPickedUp
from pharmacy_contracts.inventory import StockLevel, StockLine, StockReserved, StockRestocked
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from services.cli import bus
from services.consultation.app import create_app
from services.consultation.domain import Stage
from services.consultation.settings import ConsultationSettings
from services.consultation.storage import ConsultationStorage
from services.runtime.documents import connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import (
    TopicWatch,
    headers_of,
    of_type,
    own_groups,
    publish_noting,
    running,
    sender_keys,
    wait_consumed,
)
from tests.support.scenario import prescription_message, wait_until

DLQ = topics.CONSULTATION_PRESCRIPTIONS.dead_letter_topic


def service_settings(settings: RuntimeSettings) -> ConsultationSettings:
    return own_groups(
        ConsultationSettings, settings, sender_keys=sender_keys(settings, "hospital-test", "hospital-other")
    )


def accepted_for(watch: TopicWatch, prescription_id: str) -> list[PrescriptionAccepted]:
    return [
        m
        for m in of_type(watch.messages(topics.CONSULTATION_INTAKE.name), PrescriptionAccepted)
        if m.prescription.prescription_id == prescription_id
    ]


def dead_letters_for(watch: TopicWatch, prescription_id: str) -> list[object]:
    return [r for r in watch.raw(DLQ) if r.key == prescription_id.encode()]


async def test_a_prescription_is_accepted_once(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = ConsultationStorage(client[settings.mongo_database])
    submitted = prescription_message("RX-C-ONCE", [("INSGL", 5), ("MET500", 60)])
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, topics.CONSULTATION_INTAKE.name, DLQ) as watch,
        ):
            landed = await publish_noting(settings, submitted, submitted)
            await watch.wait_for(lambda w: accepted_for(w, "RX-C-ONCE"), "the prescription to be accepted")
            await wait_consumed(settings, app, landed)
            await watch.settle()

            async def received() -> bool:
                status = await storage.status.get("RX-C-ONCE")
                return status is not None and len(status.history) >= 1

            await wait_until(received, "the status to record the intake", timeout=30)
            record = await storage.intake.get("RX-C-ONCE")
            records = len(await storage.intake.find(prescription_id="RX-C-ONCE"))
            status = await storage.status.get("RX-C-ONCE")
    finally:
        client.close()

    accepted = accepted_for(watch, "RX-C-ONCE")
    assert len(accepted) == 1, "the repeated message is accepted once"
    assert accepted[0].causation_id == submitted.message_id
    assert accepted[0].correlation_id == "RX-C-ONCE"
    assert accepted[0].producer == "consultation"
    assert accepted[0].sender_id == submitted.sender_id
    assert accepted[0].prescription == submitted.prescription
    intake_records = [r for r in watch.raw(topics.CONSULTATION_INTAKE.name) if r.key == b"RX-C-ONCE"]
    assert len(intake_records) == 1 and intake_records[0].key == b"RX-C-ONCE"
    assert dead_letters_for(watch, "RX-C-ONCE") == [], "a plain duplicate is no error"

    assert records == 1
    assert record is not None
    assert record.message_id == submitted.message_id
    assert record.sender_id == submitted.sender_id
    assert record.prescription == submitted.prescription

    assert status is not None
    assert status.stage is Stage.RECEIVED and status.terminal is False
    assert [h.stage for h in status.history] == [Stage.RECEIVED]


async def test_a_reused_prescription_id_is_dead_lettered(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = ConsultationStorage(client[settings.mongo_database])
    first = prescription_message("RX-C-REUSED", [("INSGL", 5)])
    second = prescription_message("RX-C-REUSED", [("INSGL", 9)], sender_id="hospital-other")
    same_sender = prescription_message("RX-C-REUSED", [("INSGL", 5)])
    assert len({first.message_id, second.message_id, same_sender.message_id}) == 3
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, topics.CONSULTATION_INTAKE.name, DLQ) as watch,
        ):
            landed = await publish_noting(settings, first, second, same_sender)
            await watch.wait_for(lambda w: len(dead_letters_for(w, "RX-C-REUSED")) >= 2, "two dead letters")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            record = await storage.intake.get("RX-C-REUSED")
            (intake_group,) = [
                sub.group_id
                for sub in app.broker.subscribers
                if topics.CONSULTATION_PRESCRIPTIONS.name in sub.topic_names
            ]
    finally:
        client.close()

    accepted = accepted_for(watch, "RX-C-REUSED")
    assert [a.causation_id for a in accepted] == [first.message_id], "only the first message is accepted"
    assert accepted[0].prescription.items[0].quantity == 5

    dead = dead_letters_for(watch, "RX-C-REUSED")
    assert len(dead) == 2
    for record_, message, landed_at in zip(dead, (second, same_sender), landed[1:], strict=True):
        assert record_.value == bus.encode(message)[2], "the original bytes are kept"  # type: ignore[attr-defined]
        headers = headers_of(record_)
        assert headers["dlq.reason"] == "prescription_id_reused"
        assert "RX-C-REUSED" in headers["dlq.detail"]
        assert headers["dlq.topic"] == topics.CONSULTATION_PRESCRIPTIONS.name
        assert headers["dlq.partition"] == str(landed_at.partition)
        assert headers["dlq.offset"] == str(landed_at.offset)
        assert headers["dlq.group"] == intake_group
        assert headers["dlq.attempts"] == "1"
        assert headers["message-id"] == message.message_id

    assert record is not None
    assert record.message_id == first.message_id, "the first message stays the record"
    assert record.sender_id == first.sender_id
    assert record.prescription.items[0].quantity == 5


def lifecycle(prescription_id: str) -> list[Envelope]:
    submitted: PrescriptionSubmitted = prescription_message(prescription_id, [("INSGL", 3)])
    patient = submitted.prescription.patient
    common = {"correlation_id": prescription_id, "prescription_id": prescription_id}
    delivery = {**common, "dispatch_id": f"{prescription_id}-D1", "courier_id": "CR-LIFE", "attempt": 1}
    return [
        PrescriptionApproved(
            **common,
            producer="prescription",
            patient_id=patient.patient_id,
            lines=[ApprovedLine(drug_code="INSGL", quantity=3, days_supply=30)],
            delivery=DeliveryDetails(address=patient.address, contact_phone=patient.phone, cold_chain=True),
        ),
        StockReserved(
            **common,
            producer="inventory",
            warehouse_id="WH-LIFE",
            lines=[StockLine(drug_code="INSGL", quantity=3)],
            levels=[StockLevel(drug_code="INSGL", available=7, reserved=3, dispatched=0)],
        ),
        CourierAssigned(**delivery, producer="courier", warehouse_id="WH-LIFE"),
        DeliveryPickedUp(**delivery, producer="courier", warehouse_id="WH-LIFE"),
        DeliveryCompleted(**delivery, producer="courier", warehouse_id="WH-LIFE"),
    ]


async def test_status_follows_the_lifecycle_to_delivered(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = ConsultationStorage(client[settings.mongo_database])
    events = lifecycle("RX-C-LIFE")
    restock = StockRestocked(
        correlation_id="RESTOCK-C-1",
        producer="inventory",
        warehouse_id="WH-C-RESTOCK",
        drug_code="INSGL",
        quantity=40,
        requested_by="test",
        level=StockLevel(drug_code="INSGL", available=40, reserved=0, dispatched=0),
    )
    try:
        async with running(create_app(service_settings(settings))) as app:
            landed = await publish_noting(settings, restock, *events, *events)

            async def terminal() -> bool:
                status = await storage.status.get("RX-C-LIFE")
                return status is not None and status.terminal

            await wait_until(terminal, "RX-C-LIFE to reach a terminal state", timeout=30)
            await wait_consumed(settings, app, landed)
            status = await storage.status.get("RX-C-LIFE")
            tracked = {s.prescription_id for s in await storage.status.find()}
            restock_status = [
                await storage.status.get(doc_id) for doc_id in ("RESTOCK-C-1", "WH-C-RESTOCK", restock.message_id)
            ]
    finally:
        client.close()

    assert status is not None
    assert status.stage is Stage.DELIVERED
    assert status.terminal is True
    assert status.warehouse_id == "WH-LIFE"
    assert status.courier_id == "CR-LIFE"
    assert status.delivery_attempts == 1
    assert status.why == []
    assert Counter(h.stage for h in status.history) == Counter(
        [Stage.APPROVED, Stage.RESERVED, Stage.COURIER_ASSIGNED, Stage.PICKED_UP, Stage.DELIVERED]
    ), "each event is recorded once, the repeats are dropped"
    courier_stages = [h.stage for h in status.history if h.stage not in (Stage.APPROVED, Stage.RESERVED)]
    assert courier_stages == [Stage.COURIER_ASSIGNED, Stage.PICKED_UP, Stage.DELIVERED]
    by_stage = {h.stage: h for h in status.history}
    assert by_stage[Stage.RESERVED].detail == "stock reserved at WH-LIFE"
    assert by_stage[Stage.DELIVERED].detail == "delivered by CR-LIFE"
    assert by_stage[Stage.DELIVERED].at == events[-1].occurred_at

    assert restock_status == [None, None, None], "a restock concerns no prescription"
    assert "RX-C-LIFE" in tracked
    assert tracked <= {"RX-C-ONCE", "RX-C-REUSED", "RX-C-LIFE"}, "only prescriptions get a status"
