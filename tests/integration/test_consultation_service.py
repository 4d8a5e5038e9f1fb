"""The consultation service alone, in-process, against the real broker and database."""

from __future__ import annotations

from collections import Counter
from datetime import date

from pharmacy_contracts import Envelope, signing, topics
from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    Coordinates,
    PrescriptionAccepted,
    PrescriptionSubmitted,
)
from pharmacy_contracts.courier import CourierAssigned, DeliveryCompleted, DeliveryPickedUp
from pharmacy_contracts.inventory import LotPick, StockLevel, StockLine, StockReserved, StockRestocked
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from services.cli import bus
from services.consultation.app import create_app
from services.consultation.domain import Stage
from services.consultation.settings import ConsultationSettings
from services.consultation.storage import ConsultationStorage
from services.runtime.delivery_codes import delivery_code
from services.runtime.mongo import connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import (
    TopicWatch,
    consultation_barrier,
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
            await consultation_barrier(settings, watch)

            async def received() -> bool:
                status = await storage.status_of("RX-C-ONCE")
                return status is not None and len(status.history) >= 1

            await wait_until(received, "the status to record the intake", timeout=30)
            record = await storage.intake_of("RX-C-ONCE")
            records = len([s for s in await storage.intake.all() if s.state and s.state.prescription_id == "RX-C-ONCE"])
            status = await storage.status_of("RX-C-ONCE")
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
            await consultation_barrier(settings, watch)
            record = await storage.intake_of("RX-C-REUSED")
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
            pickup_location=Coordinates(latitude=51.2, longitude=69.1),
            lines=[StockLine(drug_code="INSGL", quantity=3)],
            picks=[LotPick(drug_code="INSGL", lot_id="LOT-LIFE", expiry_date=date(2099, 1, 31), quantity=3)],
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
        lot_id="LOT-RESTOCK",
        expiry_date=date(2099, 1, 31),
        quantity=40,
        requested_by="test",
        level=StockLevel(drug_code="INSGL", available=40, reserved=0, dispatched=0),
    )
    try:
        async with running(create_app(service_settings(settings))) as app:
            landed = await publish_noting(settings, restock, *events, *events)

            async def terminal() -> bool:
                status = await storage.status_of("RX-C-LIFE")
                return status is not None and status.terminal

            await wait_until(terminal, "RX-C-LIFE to reach a terminal state", timeout=30)
            await wait_consumed(settings, app, landed)
            status = await storage.status_of("RX-C-LIFE")
            tracked = {s.prescription_id for s in await storage.statuses()}
            restock_status = [
                await storage.status_of(doc_id) for doc_id in ("RESTOCK-C-1", "WH-C-RESTOCK", restock.message_id)
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
    assert settings.delivery_code_key is not None
    assert status.delivery_code == delivery_code(settings.delivery_code_key.get_secret_value().encode(), "RX-C-LIFE")

    assert restock_status == [None, None, None], "a restock concerns no prescription"
    assert "RX-C-LIFE" in tracked
    assert tracked <= {"RX-C-ONCE", "RX-C-REUSED", "RX-C-LIFE", "RX-C-CANCEL", "RX-C-NOT-YOURS"}, (
        "only prescriptions get a status"
    )


def cancellation(prescription_id: str, sender_id: str = "hospital-test", reason: str = "therapy changed"):
    return CancellationRequested(
        correlation_id=prescription_id,
        producer=sender_id,
        sender_id=sender_id,
        prescription_id=prescription_id,
        reason=reason,
        requested_by="Dr Test",
    )


def cancellations_accepted(watch: TopicWatch, prescription_id: str) -> list[CancellationAccepted]:
    return of_type(
        watch.messages(topics.CONSULTATION_INTAKE.name), CancellationAccepted, prescription_id=prescription_id
    )


async def test_a_signed_cancellation_is_accepted_once(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = ConsultationStorage(client[settings.mongo_database])
    submitted = prescription_message("RX-C-CANCEL", [("INSGL", 5)])
    cancel = cancellation("RX-C-CANCEL")
    second_thoughts = cancellation("RX-C-CANCEL", reason="the patient asked too")
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, topics.CONSULTATION_INTAKE.name, DLQ) as watch,
        ):
            # The same cancellation delivered twice, then another one: only the first counts.
            landed = await publish_noting(settings, submitted, cancel, cancel, second_thoughts)
            await watch.wait_for(lambda w: cancellations_accepted(w, "RX-C-CANCEL"), "the cancellation to be accepted")
            await wait_consumed(settings, app, landed)
            await consultation_barrier(settings, watch)

            async def noted() -> bool:
                status = await storage.status_of("RX-C-CANCEL")
                return status is not None and any("cancellation requested" in h.detail for h in status.history)

            await wait_until(noted, "the status to note the cancellation request", timeout=30)
            record = await storage.intake_of("RX-C-CANCEL")
            status = await storage.status_of("RX-C-CANCEL")
    finally:
        client.close()

    accepted = cancellations_accepted(watch, "RX-C-CANCEL")
    assert len(accepted) == 1, "the repeated and the second cancellation change nothing"
    assert accepted[0].causation_id == cancel.message_id
    assert accepted[0].correlation_id == "RX-C-CANCEL"
    assert accepted[0].producer == "consultation"
    assert (accepted[0].sender_id, accepted[0].requested_by, accepted[0].reason) == (
        "hospital-test",
        "Dr Test",
        "therapy changed",
    )
    assert dead_letters_for(watch, "RX-C-CANCEL") == [], "a repeated cancellation is no error"

    assert record is not None and record.cancellation is not None
    assert record.message_id == submitted.message_id, "the record still names the prescription's message"
    assert (record.cancellation.message_id, record.cancellation.reason) == (cancel.message_id, "therapy changed")

    assert status is not None
    assert status.stage is Stage.RECEIVED, "cancelled only once the prescription service says so"
    notes = [h.detail for h in status.history if "cancellation requested" in h.detail]
    assert notes == ["cancellation requested by Dr Test (hospital-test): therapy changed"]


async def test_a_cancellation_by_anyone_but_the_sender_is_dead_lettered(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = ConsultationStorage(client[settings.mongo_database])
    submitted = prescription_message("RX-C-NOT-YOURS", [("INSGL", 5)])
    other_system = cancellation("RX-C-NOT-YOURS", sender_id="hospital-other")
    unknown = cancellation("RX-C-NEVER-SENT")
    # Signed with hospital-other's own key, but claiming to come from the prescription's sender.
    impostor = cancellation("RX-C-NOT-YOURS")
    assert settings.signing_key_id and settings.signing_secret
    _, key, value, plain_headers = bus.encode(impostor)
    forged_headers = plain_headers + [
        (name, text.encode())
        for name, text in signing.signature_headers(
            value,
            sender_id="hospital-other",
            key_id=settings.signing_key_id,
            secret=settings.signing_secret.get_secret_value().encode(),
        ).items()
    ]
    try:
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, topics.CONSULTATION_INTAKE.name, DLQ) as watch,
        ):
            landed = await publish_noting(settings, submitted, other_system, unknown)
            async with bus.producer(settings) as producer:
                landed.append(
                    await producer.send_and_wait(
                        topics.CONSULTATION_PRESCRIPTIONS.name,
                        value,
                        key=key,
                        headers=forged_headers,
                    )
                )
            await watch.wait_for(lambda w: len(dead_letters_for(w, "RX-C-NOT-YOURS")) >= 2, "two dead letters")
            await watch.wait_for(lambda w: dead_letters_for(w, "RX-C-NEVER-SENT"), "a dead letter")
            await wait_consumed(settings, app, landed)
            await consultation_barrier(settings, watch)
            record = await storage.intake_of("RX-C-NOT-YOURS")
    finally:
        client.close()

    assert accepted_for(watch, "RX-C-NOT-YOURS"), "the prescription itself was accepted"
    assert cancellations_accepted(watch, "RX-C-NOT-YOURS") == []
    assert cancellations_accepted(watch, "RX-C-NEVER-SENT") == []

    reasons = {
        headers_of(r)["message-id"]: headers_of(r)["dlq.reason"] for r in dead_letters_for(watch, "RX-C-NOT-YOURS")
    }
    assert reasons == {other_system.message_id: "not_your_prescription", impostor.message_id: "sender_mismatch"}
    (never_sent,) = dead_letters_for(watch, "RX-C-NEVER-SENT")
    assert headers_of(never_sent)["dlq.reason"] == "unknown_prescription"
    (refused,) = [
        r for r in dead_letters_for(watch, "RX-C-NOT-YOURS") if headers_of(r)["message-id"] == other_system.message_id
    ]
    assert refused.value == bus.encode(other_system)[2], "the original bytes are kept"  # type: ignore[attr-defined]
    assert "hospital-test" not in headers_of(refused)["dlq.detail"], "the real sender is not revealed"

    assert record is not None and record.cancellation is None
