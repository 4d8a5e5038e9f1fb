"""Only registered upstream systems, signing the exact bytes, get prescriptions in."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from pharmacy_contracts import signing, topics
from pharmacy_contracts.consultation import CancellationRequested, PrescriptionAccepted, PrescriptionSubmitted
from services.consultation.app import create_app
from services.consultation.settings import ConsultationSettings
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch, headers_of, of_type, own_groups, running, wait_consumed
from tests.support.scenario import prescription_message

OLD_KEY, NEW_KEY, OTHER = b"old-key-being-rotated-out", b"new-key-rotated-in", b"hospital-b-key"
KEYS = {"hospital-a": {"2025": OLD_KEY.decode(), "2026": NEW_KEY.decode()}, "hospital-b": {"b1": OTHER.decode()}}


def message(rx: str, sender: str = "hospital-a") -> PrescriptionSubmitted:
    return prescription_message(rx, [("MET500", 30)], sender_id=sender)


def signed(body: bytes, sender: str, key_id: str, secret: bytes) -> list[tuple[str, bytes]]:
    headers = signing.signature_headers(body, sender_id=sender, key_id=key_id, secret=secret)
    return [(k, v.encode()) for k, v in headers.items()]


async def test_unsigned_tampered_unknown_forged_and_replayed_messages_are_quarantined(
    settings: RuntimeSettings,
) -> None:
    name = topics.CONSULTATION_PRESCRIPTIONS.name
    good_old, good_new = message("RX-S-OLDKEY"), message("RX-S-NEWKEY")
    unsigned, tampered, unknown = message("RX-S-UNSIGNED"), message("RX-S-TAMPERED"), message("RX-S-UNKNOWN")
    forged = message("RX-S-FORGED", sender="hospital-a")  # body says hospital-a, signed by hospital-b
    original = message("RX-S-ORIGINAL")
    replay = message("RX-S-REPLAY").model_copy(update={"message_id": original.message_id})

    def body(m: PrescriptionSubmitted) -> bytes:
        return m.model_dump_json().encode()

    records = [
        (good_old, body(good_old), signed(body(good_old), "hospital-a", "2025", OLD_KEY)),
        (good_new, body(good_new), signed(body(good_new), "hospital-a", "2026", NEW_KEY)),
        (unsigned, body(unsigned), []),
        (tampered, body(tampered).replace(b"Farm 1", b"Farm 9"), signed(body(tampered), "hospital-a", "2026", NEW_KEY)),
        (unknown, body(unknown), signed(body(unknown), "hospital-a", "2024", b"whatever")),
        (forged, body(forged), signed(body(forged), "hospital-b", "b1", OTHER)),
        (original, body(original), signed(body(original), "hospital-a", "2026", NEW_KEY)),
        (replay, body(replay), signed(body(replay), "hospital-a", "2026", NEW_KEY)),
    ]
    # Sent once all eight are handled: a cancellation of a prescription nobody sent, refused inside
    # the intake store's write, so its dead letter follows any acceptance those writes published.
    barrier = CancellationRequested(
        correlation_id="RX-S-BARRIER",
        producer="hospital-a",
        sender_id="hospital-a",
        prescription_id="RX-S-BARRIER",
        reason="barrier",
        requested_by="test",
    )
    app = create_app(own_groups(ConsultationSettings, settings, sender_keys=KEYS))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    async with (
        running(app),
        TopicWatch(
            settings.kafka_bootstrap_servers,
            topics.CONSULTATION_INTAKE.name,
            topics.CONSULTATION_PRESCRIPTIONS.dead_letter_topic,
        ) as watch,
    ):
        await producer.start()
        try:
            landed = [
                await producer.send_and_wait(name, value, key=submitted.correlation_id.encode(), headers=headers)
                for submitted, value, headers in records
            ]
            dlq = topics.CONSULTATION_PRESCRIPTIONS.dead_letter_topic
            await watch.wait_for(lambda w: len(w.raw(dlq)) >= 5 and len(w.messages()) >= 3, "verdicts on all eight")
            await wait_consumed(settings, app, landed)
            barrier_body = barrier.model_dump_json().encode()
            barrier_headers = signed(barrier_body, "hospital-a", "2026", NEW_KEY)
            await producer.send_and_wait(name, barrier_body, key=b"RX-S-BARRIER", headers=barrier_headers)
            await watch.wait_for_barrier(lambda w: any(r.key == b"RX-S-BARRIER" for r in w.raw(dlq)), "the barrier")
        finally:
            await producer.stop()

    accepted = {m.prescription.prescription_id for m in of_type(watch.messages(), PrescriptionAccepted)}
    assert accepted == {"RX-S-OLDKEY", "RX-S-NEWKEY", "RX-S-ORIGINAL"}, "both keys of a rotating sender work"
    reasons = {r.key.decode(): headers_of(r)["dlq.reason"] for r in watch.raw(dlq) if r.key != b"RX-S-BARRIER"}
    assert reasons == {
        "RX-S-UNSIGNED": "unsigned",
        "RX-S-TAMPERED": "bad_signature",
        "RX-S-UNKNOWN": "unknown_key",
        "RX-S-FORGED": "sender_mismatch",
        "RX-S-REPLAY": "message_id_replayed",
    }
    tampered_letter = next(r for r in watch.raw(dlq) if r.key == b"RX-S-TAMPERED")
    assert b"Farm 9" in tampered_letter.value, "the quarantine keeps the exact bytes received"
