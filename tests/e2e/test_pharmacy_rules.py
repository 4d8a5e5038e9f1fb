"""Issue 3's scenarios end to end: four service processes, real broker and database.

The deadlines are seconds here instead of hours (the same settings operators use), so the review
and courier timeouts happen while the test watches; the rules themselves, with their boundaries,
are unit-tested with an injected clock.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as pr
from pharmacy_contracts import signing, topics
from services.cli import bus
from services.cli import main as cli
from services.ops.simulation import wrong_code
from services.prescription.domain import Interaction
from services.runtime.credentials import courier_token
from services.runtime.delivery_codes import delivery_code
from services.runtime.settings import RuntimeSettings
from tests.support.scenario import (
    PATIENT_HOME,
    TEST_LICENCE,
    System,
    courier,
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

EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "examples" / "fhir"

REVIEW_ESCALATE_AFTER_S = 4
REVIEW_EXPIRE_AFTER_S = 10
OFFER_ACCEPT_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def service_env() -> dict[str, str]:
    return {
        "PHARMACY_SWEEP_INTERVAL_S": "0.5",
        "PHARMACY_REVIEW_ESCALATE_AFTER_S": str(REVIEW_ESCALATE_AFTER_S),
        "PHARMACY_REVIEW_EXPIRE_AFTER_S": str(REVIEW_EXPIRE_AFTER_S),
        "PHARMACY_OFFER_ACCEPT_TIMEOUT_S": str(OFFER_ACCEPT_TIMEOUT_S),
    }


def reason_codes(status: object) -> str:
    return " ".join(getattr(status, "why", []))


# --- prescription checks and pharmacist review --------------------------------------------------


async def test_an_allergy_conflict_is_rejected(system: System) -> None:
    amox = drug(unique("AMOX"), "penicillin")
    await stocked_drugs(system, amox)
    prescription_id = unique("RX-ALLERGY")
    await system.publish(prescription_message(prescription_id, [(amox.drug_code, 21)], allergies=["Penicillin"]))
    status = (await system.wait_terminal([prescription_id]))[prescription_id]
    assert status.stage.value == "rejected"
    assert "ALLERGY_CONFLICT" in reason_codes(status)


async def test_a_severe_interaction_is_rejected(system: System) -> None:
    warfarin, ibuprofen = drug(unique("WAR"), unique("anticoagulant")), drug(unique("IBU"), unique("nsaid"))
    pair = Interaction(
        class_a=warfarin.ingredient_classes[0],
        class_b=ibuprofen.ingredient_classes[0],
        severity="severe",
        note="bleeding risk",
    )
    await stocked_drugs(system, warfarin, ibuprofen, interactions=[pair])
    prescription_id = unique("RX-SEVERE")
    await system.publish(prescription_message(prescription_id, [(warfarin.drug_code, 30), (ibuprofen.drug_code, 20)]))
    status = (await system.wait_terminal([prescription_id]))[prescription_id]
    assert status.stage.value == "rejected"
    assert "SEVERE_INTERACTION" in reason_codes(status)


async def test_a_moderate_interaction_is_reviewed_approved_and_delivered(system: System) -> None:
    lisinopril, ibuprofen = drug(unique("LIS"), unique("ace")), drug(unique("IBU"), unique("nsaid"))
    pair = Interaction(
        class_a=lisinopril.ingredient_classes[0],
        class_b=ibuprofen.ingredient_classes[0],
        severity="moderate",
        note="kidney function",
    )
    await stocked_drugs(system, lisinopril, ibuprofen, interactions=[pair])
    prescription_id = unique("RX-MODERATE")
    simulator = scripted_couriers(system.settings, {prescription_id: ["deliver"]})
    simulator.start()
    try:
        await system.publish(
            prescription_message(prescription_id, [(lisinopril.drug_code, 30), (ibuprofen.drug_code, 20)])
        )
        held = await system.wait_stage(prescription_id, "held_for_review")
        assert "MODERATE_INTERACTION" in reason_codes(held)
        await system.review(prescription_id, "approve")
        status = (await system.wait_terminal([prescription_id]))[prescription_id]
    finally:
        await simulator.stop()
    assert status.stage.value == "delivered"
    approvals = [
        e
        for e in await topic_events(system.settings, topics.PRESCRIPTION_DECISIONS.name, prescription_id)
        if e["type"] == "prescription.approved"
    ]
    assert [a["reviewed_by"] for a in approvals] == ["PH-TEST"]


async def test_a_controlled_drug_is_reviewed_and_rejected(system: System) -> None:
    morphine = drug(unique("MOR"), "opioid", controlled=True)
    await stocked_drugs(system, morphine)
    prescription_id = unique("RX-CONTROLLED")
    await system.publish(prescription_message(prescription_id, [(morphine.drug_code, 20)]))
    held = await system.wait_stage(prescription_id, "held_for_review")
    assert "CONTROLLED_SUBSTANCE" in reason_codes(held)
    await system.review(prescription_id, "reject", note="no pain assessment on file")
    status = (await system.wait_terminal([prescription_id]))[prescription_id]
    assert status.stage.value == "rejected"
    assert "PHARMACIST_REJECTED" in reason_codes(status)


async def test_a_refill_too_soon_goes_to_review(system: System) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin)
    patient = unique("PAT-REFILL")
    first, second = unique("RX-FIRST"), unique("RX-REFILL")
    simulator = scripted_couriers(system.settings, {first: ["deliver"]})
    simulator.start()
    try:
        await system.publish(prescription_message(first, [(metformin.drug_code, 60)], patient_id=patient))
        assert (await system.wait_terminal([first]))[first].stage.value == "delivered"
    finally:
        await simulator.stop()
    await system.publish(prescription_message(second, [(metformin.drug_code, 60)], patient_id=patient))
    held = await system.wait_stage(second, "held_for_review")
    assert "REFILL_TOO_SOON" in reason_codes(held)


async def test_an_undecided_review_escalates_then_expires(system: System) -> None:
    morphine = drug(unique("MOR"), "opioid", controlled=True)
    await stocked_drugs(system, morphine)
    prescription_id = unique("RX-TIMEOUT")
    await system.publish(prescription_message(prescription_id, [(morphine.drug_code, 20)]))
    await system.wait_stage(prescription_id, "held_for_review")
    status = (await system.wait_terminal([prescription_id], timeout=REVIEW_EXPIRE_AFTER_S + 60))[prescription_id]
    assert status.stage.value == "rejected"
    assert "REVIEW_EXPIRED" in reason_codes(status)
    types = [
        e["type"] for e in await topic_events(system.settings, topics.PRESCRIPTION_DECISIONS.name, prescription_id)
    ]
    assert types == ["prescription.held_for_review", "prescription.review_escalated", "prescription.rejected"]


# --- stock ---------------------------------------------------------------------------------------


async def test_fefo_skips_a_short_dated_lot_and_an_expired_one_never_gets_on_the_shelf(system: System) -> None:
    insulin = drug(unique("INS"), "insulin")
    warehouse = unique("WH-FEFO")
    today = date.today()
    lots = {
        "short": today + timedelta(days=20),  # ends before 30 days of therapy plus delivery
        "first": today + timedelta(days=120),
        "later": today + timedelta(days=400),
    }
    await system.seed(
        formulary=[insulin],
        couriers=[courier("Bayu")],
        stock=[(warehouse, insulin.drug_code, 10, f"{warehouse}-{name}", expiry) for name, expiry in lots.items()],
    )
    expired = inv.RestockRequested(
        correlation_id=unique("CMD-EXPIRED"),
        producer="test",
        warehouse_id=warehouse,
        drug_code=insulin.drug_code,
        lot_id=f"{warehouse}-expired",
        expiry_date=today - timedelta(days=1),
        quantity=10,
        requested_by="test",
    )
    # A drug the formulary does not list: nothing is stocked that no prescription may ask for.
    unlisted = expired.model_copy(
        update={
            "message_id": unique("MSG-UNLISTED"),
            "correlation_id": unique("CMD-UNLISTED"),
            "drug_code": unique("NOT-LISTED"),
            "lot_id": f"{warehouse}-unlisted",
            "expiry_date": today + timedelta(days=300),
        }
    )
    await system.publish(expired, unlisted)
    reasons: dict[str, str] = {}

    async def refused() -> bool:
        for command in (expired, unlisted):
            events = await topic_events(system.settings, topics.INVENTORY_EVENTS.name, command.correlation_id)
            if [e["type"] for e in events] == ["inventory.stock_command_refused"]:
                reasons[command.correlation_id] = events[0]["reason"]
        return len(reasons) == 2

    await wait_until(refused, "the expired lot's and the unlisted drug's restocks to be refused")
    assert "expired" in reasons[expired.correlation_id]
    assert f"{unlisted.drug_code} is not in the formulary" in reasons[unlisted.correlation_id]
    stocked = {w.warehouse_id: w for w in await system.inventory.all_warehouses()}[warehouse]
    assert f"{warehouse}-expired" not in stocked.lots and f"{warehouse}-unlisted" not in stocked.lots
    prescription_id = unique("RX-FEFO")
    await system.publish(prescription_message(prescription_id, [(insulin.drug_code, 15)], days_supply=30))
    await reserved_at(system, prescription_id)
    reserved = [
        e
        for e in await topic_events(system.settings, topics.INVENTORY_EVENTS.name, prescription_id)
        if e["type"] == "inventory.stock_reserved"
    ]
    assert len(reserved) == 1
    picks = {p["lot_id"]: p["quantity"] for p in reserved[0]["picks"]}
    assert picks == {f"{warehouse}-first": 10, f"{warehouse}-later": 5}
    await system.cancel(prescription_id)  # frees the couriers for the next tests


async def test_the_nearest_warehouse_that_has_everything_fills_the_prescription(system: System) -> None:
    a, b = drug(unique("DA"), "biguanide"), drug(unique("DB"), "statin")
    nearest, middle, far = unique("WH-NEAR"), unique("WH-MID"), unique("WH-FAR")
    home = PATIENT_HOME
    await system.seed(
        formulary=[a, b],
        couriers=[courier("Chen")],
        stock=[
            (nearest, a.drug_code, 100),  # next door, but without b
            (middle, a.drug_code, 100),
            (middle, b.drug_code, 100),
            (far, a.drug_code, 100),
            (far, b.drug_code, 100),
        ],
        locations={
            nearest: home,
            middle: (home[0] + 0.3, home[1] + 0.3),
            far: (home[0] + 1.5, home[1] + 1.5),
        },
    )
    prescription_id = unique("RX-NEAR")
    await system.publish(prescription_message(prescription_id, [(a.drug_code, 10), (b.drug_code, 10)]))
    assert await reserved_at(system, prescription_id) == middle
    await system.cancel(prescription_id)


async def reserved_at(system: System, prescription_id: str) -> str:
    """The warehouse the prescription's stock was reserved at, once it is."""
    found: list[str | None] = [None]

    async def reserved() -> bool:
        status = await system.status(prescription_id)
        found[0] = None if status is None else status.warehouse_id
        return found[0] is not None

    await wait_until(reserved, f"a reservation for {prescription_id}", timeout=60)
    assert found[0] is not None
    return found[0]


# --- couriers -------------------------------------------------------------------------------------


async def test_a_cold_chain_drug_goes_to_a_cold_chain_courier(system: System) -> None:
    insulin = drug(unique("INS"), "insulin", cold_chain=True)
    ordinary = courier("Dana", at=PATIENT_HOME)  # nearest, but no cooler
    cooled = courier("Erlan", at=(PATIENT_HOME[0] + 0.5, PATIENT_HOME[1]), cold_chain=True)
    warehouse = unique("WH-COLD")
    await system.seed(formulary=[insulin], couriers=[ordinary, cooled], stock=[(warehouse, insulin.drug_code, 20)])
    prescription_id = unique("RX-COLD")
    simulator = scripted_couriers(system.settings, {prescription_id: ["deliver"]})
    simulator.start()
    try:
        await system.publish(prescription_message(prescription_id, [(insulin.drug_code, 5)]))
        assert (await system.wait_terminal([prescription_id]))[prescription_id].stage.value == "delivered"
    finally:
        await simulator.stop()
    offers = [o for o in simulator.offers if o.package_id == prescription_id]
    roster = {p.courier_id: p for p in await system.courier.couriers()}
    assert offers and all(o.cold_chain and roster[o.courier_id].cold_chain for o in offers)


async def test_a_wrong_delivery_code_is_refused_then_the_right_one_accepted(system: System) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin)
    prescription_id = unique("RX-CODE")
    simulator = scripted_couriers(system.settings, {prescription_id: ["wrong-code"]})
    simulator.start()
    try:
        await system.publish(prescription_message(prescription_id, [(metformin.drug_code, 30)]))
        status = (await system.wait_terminal([prescription_id]))[prescription_id]
    finally:
        await simulator.stop()
    assert status.stage.value == "delivered"
    types = [e["type"] for e in await topic_events(system.settings, topics.COURIER_DELIVERIES.name, prescription_id)]
    assert types.index("courier.delivery_code_rejected") < types.index("courier.delivered")
    assert types.count("courier.delivered") == 1


async def test_an_offer_not_accepted_in_time_goes_to_the_next_courier(system: System) -> None:
    metformin = drug(unique("MET"), "biguanide")
    warehouse = unique("WH-SLOW")
    await system.seed(
        formulary=[metformin],
        couriers=[courier("Farida"), courier("Gani", at=(PATIENT_HOME[0] + 0.2, PATIENT_HOME[1]))],
        stock=[(warehouse, metformin.drug_code, 50)],
    )
    prescription_id = unique("RX-SLOW")
    simulator = scripted_couriers(system.settings, {prescription_id: ["ignore", "deliver"]})
    simulator.start()
    try:
        await system.publish(prescription_message(prescription_id, [(metformin.drug_code, 30)]))
        status = (await system.wait_terminal([prescription_id], timeout=OFFER_ACCEPT_TIMEOUT_S + 90))[prescription_id]
    finally:
        await simulator.stop()
    assert status.stage.value == "delivered"
    offers = [o for o in simulator.offers if o.package_id == prescription_id]
    assert len(offers) == 2 and offers[0].courier_id != offers[1].courier_id
    types = [e["type"] for e in await topic_events(system.settings, topics.COURIER_DELIVERIES.name, prescription_id)]
    assert "courier.offer_expired" in types


# --- cancellation ---------------------------------------------------------------------------------


async def test_a_cancellation_before_pickup_releases_the_stock(system: System) -> None:
    metformin = drug(unique("MET"), "biguanide")
    warehouse = await stocked_drugs(system, metformin, units=100)
    prescription_id = unique("RX-CANCEL-EARLY")
    simulator = scripted_couriers(system.settings, {prescription_id: ["ignore"]})
    simulator.start()
    try:
        await system.publish(prescription_message(prescription_id, [(metformin.drug_code, 40)]))
        await system.wait_stage(prescription_id, "courier_assigned")
        await system.cancel(prescription_id)
        status = await system.wait_stage(prescription_id, "cancelled")
    finally:
        await simulator.stop()
    assert status.terminal

    async def released() -> bool:
        level = (await system.warehouses())[warehouse].level(metformin.drug_code)
        return (level.available, level.reserved, level.dispatched) == (100, 0, 0)

    await wait_until(released, "the reserved units back on the shelf", timeout=60)
    withdrawn = [
        e
        for e in await topic_events(system.settings, topics.COURIER_DISPATCH.name, prescription_id)
        if e["type"] == "courier.dispatch_withdrawn"
    ]
    assert withdrawn and not withdrawn[-1]["return_goods"]


async def test_a_cancellation_after_pickup_brings_the_goods_back_to_quarantine(system: System) -> None:
    metformin = drug(unique("MET"), "biguanide")
    warehouse = await stocked_drugs(system, metformin, units=100)
    prescription_id = unique("RX-CANCEL-LATE")
    simulator = scripted_couriers(system.settings, {prescription_id: ["hold-after-pickup"]})
    simulator.start()
    try:
        await system.publish(prescription_message(prescription_id, [(metformin.drug_code, 40)]))
        await system.wait_stage(prescription_id, "picked_up")
        await system.cancel(prescription_id)

        async def quarantined() -> bool:
            level = (await system.warehouses())[warehouse].level(metformin.drug_code)
            return (level.available, level.reserved, level.dispatched, level.quarantined) == (60, 0, 0, 40)

        await wait_until(quarantined, "the returned goods in quarantine", timeout=60)
    finally:
        await simulator.stop()
    await system.wait_stage(prescription_id, "cancelled")  # the status is a projection: it follows
    types = [e["type"] for e in await topic_events(system.settings, topics.INVENTORY_EVENTS.name, prescription_id)]
    assert "inventory.stock_quarantined" in types and "inventory.stock_released" not in types


# --- a FHIR bundle with neither map pin nor phone -------------------------------------------------


def unlocated_bundle(prescription_id: str, drug_code: str) -> bytes:
    """The published acute example as a hospital without a map would send it: no coordinates, a
    village the county gazetteer does not know, no phone; dated now, signed by the test prescriber."""
    bundle = json.loads((EXAMPLES / "acute-amoxicillin-message.json").read_text())
    now = datetime.now(UTC)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource.pop("telecom")
            resource["address"] = [{"line": ["Farmstead 9", "Upper Meadow"], "postalCode": "N-0499"}]
        elif resource["resourceType"] == "Practitioner":
            resource["identifier"][0]["value"] = TEST_LICENCE
        elif resource["resourceType"] == "MedicationRequest":
            resource["groupIdentifier"]["value"] = prescription_id
            resource["identifier"][0]["value"] = f"{prescription_id}-1"
            resource["medicationCodeableConcept"]["coding"][0]["code"] = drug_code
            resource["authoredOn"] = (now - timedelta(hours=1)).isoformat()
            resource["dispenseRequest"]["validityPeriod"] = {"start": (now - timedelta(hours=1)).isoformat()}
    bundle.pop("identifier", None)
    bundle["id"] = prescription_id
    return json.dumps(bundle).encode()


async def test_a_bundle_without_coordinates_or_phone_waits_for_a_dispatcher_then_is_delivered(
    system: System,
) -> None:
    amoxicillin = drug(unique("AMX"), "penicillin-class", form="capsule")
    await stocked_drugs(system, amoxicillin)
    prescription_id = unique("RX-NOPIN")
    simulator = scripted_couriers(system.settings, {prescription_id: ["deliver"]})
    simulator.start()
    try:
        record = bus.encode_fhir(
            unlocated_bundle(prescription_id, amoxicillin.drug_code),
            prescription_id=prescription_id,
            message_id=unique("MSG-NOPIN"),
            sender_id="hospital-test",
            settings=system.settings,
        )
        await bus.publish_records(system.settings, record)

        async def waits_for_a_dispatcher() -> bool:
            status = await system.status(prescription_id)
            return status is not None and any("no map location" in h.detail for h in status.history)

        await wait_until(waits_for_a_dispatcher, "the delivery to wait for a dispatcher to place it", timeout=60)
        assert [o for o in simulator.offers if o.package_id == prescription_id] == [], "no courier sent looking"

        env = {"PHARMACY_KAFKA_BOOTSTRAP_SERVERS": system.settings.kafka_bootstrap_servers}
        placed = await asyncio.to_thread(
            CliRunner().invoke,
            cli.app,
            [
                "dispatch",
                "locate",
                prescription_id,
                "--by",
                "DSP-T",
                "--lat",
                str(PATIENT_HOME[0]),
                "--lon",
                str(PATIENT_HOME[1]),
            ],
            env=env,
        )
        assert placed.exit_code == 0, placed.output
        status = (await system.wait_terminal([prescription_id]))[prescription_id]
    finally:
        await simulator.stop()
    assert status.stage.value == "delivered"
    (offer,) = [o for o in simulator.offers if o.package_id == prescription_id]
    assert offer.contact_phone is None and offer.address.coordinates is not None
    intake = await system.consultation.intake_of(prescription_id)
    assert intake is not None and any("no phone" in note for note in intake.prescription.mapping_notes)


# --- couriers and pharmacists prove who they are ---------------------------------------------------


async def dead_letters(system: System, topic: topics.Topic, prescription_id: str, count: int) -> dict[str, str]:
    """The dead letters of `topic` about this prescription, once `count` are there: message id → reason."""
    found: dict[str, str] = {}

    async def arrived() -> bool:
        records = await read_topic(system.settings, topic.dead_letter_topic, idle_s=0.5)
        for record in records:
            if record.key == prescription_id.encode():
                headers = {name: value.decode() for name, value in record.headers}
                found[headers["message-id"]] = headers["dlq.reason"]
        return len(found) >= count

    await wait_until(arrived, f"{count} dead letters for {prescription_id} on {topic.dead_letter_topic}")
    return found


async def test_a_forged_approval_and_a_forged_courier_report_change_nothing_and_are_quarantined(
    system: System,
) -> None:
    morphine = drug(unique("MOR"), "opioid", controlled=True)
    await stocked_drugs(system, morphine)
    prescription_id = unique("RX-FORGED")
    await system.publish(prescription_message(prescription_id, [(morphine.drug_code, 20)]))
    await system.wait_stage(prescription_id, "held_for_review")

    def approval(**settings: object) -> tuple[pr.ReviewDecided, RuntimeSettings]:
        message = pr.ReviewDecided(
            correlation_id=prescription_id,
            producer="pharmacist-cli",
            prescription_id=prescription_id,
            decision="approve",
            pharmacist_id="PH-TEST",
            note="forged",
        )
        base = system.settings.model_dump(exclude={"pharmacist_key", "pharmacist_token"})
        return message, RuntimeSettings(**{**base, **settings})

    unsigned, without_key = approval()
    wrong, wrong_key = approval(pharmacist_key="not the pharmacy's key")
    await bus.publish(without_key, unsigned)
    await bus.publish(wrong_key, wrong)
    reasons = await dead_letters(system, topics.PRESCRIPTION_REVIEWS, prescription_id, 2)
    assert reasons == {unsigned.message_id: "unsigned", wrong.message_id: "bad_signature"}
    assert (await system.status(prescription_id)).stage.value == "held_for_review", "still held"  # type: ignore[union-attr]

    simulator = scripted_couriers(system.settings, {prescription_id: ["hold-after-pickup"]})
    simulator.start()
    try:
        await system.review(prescription_id, "approve")  # signed by PH-TEST: counts
        await system.wait_stage(prescription_id, "picked_up")
        (offer,) = [o for o in simulator.offers if o.package_id == prescription_id]
        forged = c.CourierReported(
            correlation_id=prescription_id,
            producer="someone",
            dispatch_id=offer.dispatch_id,
            courier_id=offer.courier_id,
            package_id=prescription_id,
            status="failed",
            failure_reason="refused",
        )
        base = system.settings.model_dump(exclude={"courier_gateway_key", "courier_token"})
        await bus.publish(RuntimeSettings(**base, courier_gateway_key="not the pharmacy's key"), forged)
        reasons = await dead_letters(system, topics.COURIER_UPDATES, prescription_id, 1)
        assert reasons == {forged.message_id: "bad_signature"}
        delivery = await system.courier.delivery(prescription_id)
        assert delivery is not None and delivery.state.value == "picked_up", "the forged failure changed nothing"
    finally:
        await simulator.stop()


# --- every sender hears back -----------------------------------------------------------------------


async def test_the_sender_hears_it_accepted_or_refused_and_status_shows_a_refusal_at_the_door(
    system: System,
) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin)
    accepted_id, reused_id = unique("RX-ACK"), unique("RX-BROKEN")
    first = prescription_message(accepted_id, [(metformin.drug_code, 30)], sender_id="hospital-test")
    again = prescription_message(accepted_id, [(metformin.drug_code, 60)], sender_id="hospital-test")
    couriers = scripted_couriers(system.settings, {accepted_id: ["deliver"]})
    couriers.start()
    try:
        await system.publish(first, again)  # the second reuses the prescription id: refused
        delivered = await system.wait_stage(accepted_id, "delivered")
    finally:
        await couriers.stop()
    # A signed message that breaks the contract (a field no prescription has): refused at the door.
    broken = json.loads(prescription_message(reused_id, [(metformin.drug_code, 30)]).model_dump_json())
    broken["prescription"]["surprise"] = True
    body = json.dumps(broken).encode()
    signature = signing.signature_headers(
        body,
        sender_id="hospital-test",
        key_id=system.settings.signing_key_id or "",
        secret=system.settings.signing_secret.get_secret_value().encode(),  # type: ignore[union-attr]
    )
    headers = [("content-type", b"application/json"), ("message-id", b"MSG-BROKEN-" + reused_id.encode())]
    headers += [(name, value.encode()) for name, value in signature.items()]
    await bus.publish_records(
        system.settings, (topics.CONSULTATION_PRESCRIPTIONS.name, reused_id.encode(), body, headers)
    )

    answers: set[tuple[object, object, object]] = set()

    async def all_answered() -> bool:
        records = await read_topic(system.settings, topics.CONSULTATION_RECEIPTS.name, idle_s=0.5)
        bodies = [json.loads(r.value) for r in records if r.key == b"hospital-test"]
        answers.clear()
        answers.update(
            (a["answers_message_id"], a["outcome"], a["code"])
            for a in bodies
            if a["type"] == "consultation.receipt" and a["prescription_id"] in (accepted_id, reused_id)
        )
        return len(answers) >= 3

    await wait_until(all_answered, "three answers for hospital-test")
    assert answers == {
        (first.message_id, "accepted", None),
        (again.message_id, "refused", "prescription_id_reused"),
        ("MSG-BROKEN-" + reused_id, "refused", "contract_violation"),
    }
    # Then each change of the accepted one's stage, to the last, answering the message it came in.
    records = await read_topic(system.settings, topics.CONSULTATION_RECEIPTS.name, idle_s=0.5)
    told = [
        json.loads(r.value)
        for r in records
        if r.key == b"hospital-test" and json.loads(r.value)["type"] == "consultation.status_receipt"
    ]
    told = list({t["message_id"]: t for t in told if t["prescription_id"] == accepted_id}.values())
    told.sort(key=lambda t: t["occurred_at"])
    stages = [t["stage"] for t in told]
    moved_to = {h.stage.value for h in delivered.history} - {"received"}
    assert set(stages) == moved_to and len(stages) == len(set(stages)), "each stage it reached, told once"
    assert stages[:2] == ["approved", "reserved"] and stages[-2:] == ["picked_up", "delivered"], stages
    assert [t["terminal"] for t in told] == [False] * (len(told) - 1) + [True]
    assert {t["answers_message_id"] for t in told} == {first.message_id}
    env = {"PHARMACY_KAFKA_BOOTSTRAP_SERVERS": system.settings.kafka_bootstrap_servers}
    env["PHARMACY_MONGO_URL"] = system.settings.mongo_url.get_secret_value()
    shown = await asyncio.to_thread(CliRunner().invoke, cli.app, ["status", reused_id], env={**env, "COLUMNS": "200"})
    assert shown.exit_code == 1
    assert f"{reused_id}: refused at the door" in shown.output and "contract_violation" in shown.output


async def test_a_couriers_wrong_code_and_an_approval_of_what_is_not_held_are_answered_at_once(
    system: System,
) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin)
    prescription_id = unique("RX-ANSWER")
    simulator = scripted_couriers(system.settings, {prescription_id: ["hold-after-pickup"]})
    simulator.start()
    try:
        await system.publish(prescription_message(prescription_id, [(metformin.drug_code, 30)]))
        await system.wait_stage(prescription_id, "picked_up")
    finally:
        await simulator.stop()
    (offer,) = [o for o in simulator.offers if o.package_id == prescription_id]
    code_key = system.settings.delivery_code_key.get_secret_value().encode()  # type: ignore[union-attr]
    wrong = wrong_code(delivery_code(code_key, prescription_id))
    base = {"PHARMACY_KAFKA_BOOTSTRAP_SERVERS": system.settings.kafka_bootstrap_servers, "COLUMNS": "200"}
    courier_env = {
        **base,
        "PHARMACY_COURIER_TOKEN": courier_token(_key(system.settings.courier_gateway_key), offer.courier_id),
    }
    at_the_door = await asyncio.to_thread(
        CliRunner().invoke,
        cli.app,
        [
            "courier",
            "report",
            offer.dispatch_id,
            "delivered",
            "--courier",
            offer.courier_id,
            "--package",
            prescription_id,
            "--code",
            wrong,
        ],
        env=courier_env,
    )
    assert at_the_door.exit_code == 1, at_the_door.output
    assert "REFUSED (wrong_code)" in at_the_door.output and "ask the patient" in at_the_door.output

    pharmacist_env = {**base, "PHARMACY_PHARMACIST_KEY": system.settings.pharmacist_key.get_secret_value()}  # type: ignore[union-attr]
    approval = await asyncio.to_thread(
        CliRunner().invoke,
        cli.app,
        ["review", "approve", prescription_id, "--pharmacist", "PH-TEST", "--note", "looks fine"],
        env=pharmacist_env,
    )
    assert approval.exit_code == 1, approval.output
    assert "REFUSED (not_under_review)" in approval.output


def _key(secret: object) -> bytes:
    value = secret.get_secret_value() if secret is not None else ""  # type: ignore[attr-defined]
    return value.encode()
