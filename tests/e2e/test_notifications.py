"""Patients are told, in their language, on patient.notifications.v1; the hospital is asked to call
the patient when a prescription ends undeliverable. Four service processes, real broker and database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import PrescriptionSubmitted
from services.ops.devstack import DevStack, LogWindow
from services.runtime.delivery_codes import delivery_code
from tests.support.scenario import (
    System,
    drug,
    prescription_message,
    read_topic,
    scripted_couriers,
    stocked_drugs,
    topic_events,
    unique,
    wait_until,
)

pytestmark = pytest.mark.e2e

NOTIFICATIONS = topics.PATIENT_NOTIFICATIONS.name
#: Every patient of this module has this phone: it may appear on the notifications topic, nowhere else.
PHONE = "+86 138 0991 0042"
#: A word each language's texts always have ("prescription").
PRESCRIPTION_IN = {"ug": "رېتسېپ", "zh": "处方", "en": "prescription"}


def of_patient(
    message: PrescriptionSubmitted, language: str | None, phone: str | None = PHONE
) -> PrescriptionSubmitted:
    """The message, its patient speaking `language` (None: as the county does) at `phone`."""
    prescription = message.prescription
    patient = prescription.patient.model_copy(update={"preferred_language": language, "phone": phone})
    return message.model_copy(update={"prescription": prescription.model_copy(update={"patient": patient})})


#: The kinds that end a prescription's story.
ENDINGS = frozenset({"delivered", "cancelled", "refused", "out_of_stock", "undeliverable"})


async def told(system: System, prescription_id: str, kinds: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    """The patient's notifications, once `kinds` have all been told (in the order things happened).

    The status reads four topics with no order between them: an ending may be read before the
    acceptance, and the patient then hears only the ending ("accepted" would be old news)."""
    found: list[dict[str, Any]] = []
    expected = [kinds]
    if kinds[0] == "accepted" and kinds[-1] in ENDINGS:
        expected.append([kinds[-1]])

    async def arrived() -> bool:
        found[:] = sorted(
            await topic_events(system.settings, NOTIFICATIONS, prescription_id), key=lambda n: n["occurred_at"]
        )
        return [n["kind"] for n in found] in expected

    await wait_until(arrived, lambda: f"{prescription_id} told {kinds} (so far {[n['kind'] for n in found]})", timeout)
    return found


def code_key(system: System) -> bytes:
    return system.settings.delivery_code_key.get_secret_value().encode()  # type: ignore[union-attr]


async def test_each_language_is_told_of_its_prescription_to_the_door(system: System) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin)
    by_language = {language: unique(f"RX-{language.upper()}") for language in ("ug", "zh", "en")}
    await system.publish(
        *(
            of_patient(prescription_message(rx, [(metformin.drug_code, 30)]), language)
            for language, rx in by_language.items()
        )
    )
    # The couriers set out once the patients know the prescriptions were received, as on a real
    # day: the status reads the acceptance and the courier's reports from different topics, and an
    # acceptance read after the delivery tells the patient only that it was delivered.
    for rx in by_language.values():
        await told(system, rx, ["accepted"])
    simulator = scripted_couriers(system.settings, {rx: ["deliver"] for rx in by_language.values()})
    simulator.start()
    try:
        final = await system.wait_terminal(by_language.values(), timeout=120)
    finally:
        await simulator.stop()
    assert {final[rx].stage.value for rx in by_language.values()} == {"delivered"}

    for language, rx in by_language.items():
        notifications = await told(system, rx, ["accepted", "out_for_delivery", "delivered"])
        assert {(n["language"], n["phone"], n["prescription_id"]) for n in notifications} == {(language, PHONE, rx)}
        for notification in notifications:
            assert rx in notification["text"] and PRESCRIPTION_IN[language] in notification["text"]
            assert metformin.drug_code not in notification["text"]
        code = delivery_code(code_key(system), rx)
        assert [n["delivery_code"] for n in notifications] == [None, code, None], "the code only on its way"
        assert code in notifications[1]["text"]
        assert final[rx].delivery_code == code
    # Keyed by the prescription, for the gateway to keep one patient's messages in order.
    records = await read_topic(system.settings, NOTIFICATIONS, idle_s=0.5)
    keys = {json.loads(r.value)["prescription_id"]: r.key for r in records}
    assert all(keys[rx] == rx.encode() for rx in by_language.values())


async def test_a_held_a_cancelled_and_a_refused_prescription_are_told_how_they_stand(system: System) -> None:
    morphine = drug(unique("MOR"), "opioid", controlled=True)  # held for a pharmacist
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, morphine, metformin)
    held, cancelled, refused = unique("RX-HELD"), unique("RX-CANCELLED"), unique("RX-REFUSED")
    short = unique("RX-SHORT")
    await system.publish(
        of_patient(prescription_message(held, [(morphine.drug_code, 20)]), "zh"),
        of_patient(prescription_message(cancelled, [(morphine.drug_code, 20)]), "en"),
        # The formulary's maximum is 500: refused by the checks.
        of_patient(prescription_message(refused, [(metformin.drug_code, 501)]), None),
        # 100 in stock: out of stock.
        of_patient(prescription_message(short, [(metformin.drug_code, 300)]), "zh"),
    )
    await system.wait_stage(cancelled, "held_for_review")
    await system.cancel(cancelled)
    await system.wait_terminal([cancelled, refused, short])

    [_, on_hold] = await told(system, held, ["accepted", "held_for_pharmacist"])
    assert on_hold["language"] == "zh" and "药师" in on_hold["text"]
    assert morphine.drug_code not in on_hold["text"] and "CONTROLLED" not in on_hold["text"]

    *_, withdrawn = await told(system, cancelled, ["accepted", "held_for_pharmacist", "cancelled"])
    assert withdrawn["text"].startswith(f"Your prescription {cancelled} was cancelled.")

    *_, none_left = await told(system, short, ["accepted", "out_of_stock"])
    assert none_left["language"] == "zh" and short in none_left["text"] and metformin.drug_code not in none_left["text"]

    # No language stated: the county's default, Uyghur; the reason a patient understands, not the code.
    *_, refusal = await told(system, refused, ["accepted", "refused"])
    assert (refusal["language"], refusal["reason"]) == ("ug", "needs_correction")
    assert "رېتسېپ تولۇق ئەمەس ياكى خاتا." in refusal["text"] and "QUANTITY" not in refusal["text"]


async def test_an_undeliverable_prescription_is_told_and_the_hospital_asked_to_call(system: System) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin, units=30)
    rx = unique("RX-UNDELIVERABLE")
    # A damaged package is packed again from the shelf, but the first package took all there was.
    await system.publish(of_patient(prescription_message(rx, [(metformin.drug_code, 30)]), "ug"))
    await told(system, rx, ["accepted"])
    simulator = scripted_couriers(system.settings, {rx: ["fail-after-pickup:damaged"]})
    simulator.start()
    try:
        status = (await system.wait_terminal([rx], timeout=120))[rx]
    finally:
        await simulator.stop()
    assert status.stage.value == "undeliverable"
    *_, given_up = await told(system, rx, ["accepted", "out_for_delivery", "failed_attempt", "undeliverable"])
    assert (given_up["reason"], given_up["will_retry"], given_up["delivery_code"]) == ("damaged", False, None)
    assert "دوختۇرخانا سىزگە تېلېفون قىلىدۇ." in given_up["text"], "your hospital will call you"

    follow_ups: list[dict[str, Any]] = []

    async def asked() -> bool:
        receipts = await topic_events(system.settings, topics.CONSULTATION_RECEIPTS.name, rx)
        follow_ups[:] = [r for r in receipts if r["type"] == "consultation.follow_up_requested"]
        return bool(follow_ups)

    await wait_until(asked, f"a follow-up for {rx}", timeout=30)
    [follow_up] = follow_ups
    assert (follow_up["sender_id"], follow_up["patient_id"], follow_up["stage"], follow_up["chronic"]) == (
        "hospital-test",
        f"PAT-{rx}",
        "undeliverable",
        False,
    )
    assert follow_up["reason"].startswith("Not delivered: 1 attempt, last failure damaged. Call the patient")
    assert "a new supply is needed" in follow_up["reason"]
    assert PHONE not in json.dumps(follow_up)


async def test_a_patient_without_a_phone_is_not_told_and_the_log_says_so(
    system: System, logs_of_this_test: LogWindow
) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin)
    rx = unique("RX-NOPHONE")
    await system.publish(of_patient(prescription_message(rx, [(metformin.drug_code, 501)]), "en", phone=None))
    await system.wait_terminal([rx])
    assert await topic_events(system.settings, NOTIFICATIONS, rx) == []

    async def said() -> bool:
        lines = [json.loads(line) for line in logs_of_this_test.text("consultation-1").splitlines() if rx in line]
        return any(line["event"] == "the patient gave no phone: no notifications will be sent" for line in lines)

    await wait_until(said, f"the consultation log to say {rx}'s patient gave no phone", timeout=10)


async def test_the_phone_is_in_no_receipt_and_no_log(system: System, services: DevStack) -> None:
    """Runs after the traffic above. (The prescription carries the phone in, and the courier's
    dispatch carries it to the door: those are not the patient's news.)"""
    receipts = await read_topic(system.settings, topics.CONSULTATION_RECEIPTS.name, idle_s=0.5)
    assert receipts and not [r for r in receipts if PHONE.encode() in (r.value or b"")]
    notifications = await read_topic(system.settings, NOTIFICATIONS, idle_s=0.5)
    assert notifications and all(PHONE.encode() in r.value for r in notifications)
    logs = {path.name: path.read_text() for path in services.logs.glob("*-*.log")}
    assert logs
    for name, text in logs.items():
        assert PHONE not in text, name
