"""The whole path, four service processes, real broker and database."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from pharmacy_contracts import courier as c
from pharmacy_contracts import signing, topics
from pharmacy_contracts.consultation import Coordinates, PrescriptionSubmitted
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from services.cli import bus
from services.courier.domain import CourierProfile
from services.inventory.domain import AllocationState
from services.ops.devstack import DevStack, LogWindow
from services.ops.lag import consumer_lag
from services.prescription.domain import FormularyEntry
from services.runtime import credentials
from services.runtime.mongo import connect
from services.runtime.outbox_marks import WRITERS_SUFFIX, unpublished
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch
from tests.support.scenario import System, prescription_message, read_topic, scripted_couriers, wait_until
from tests.support.scenario import drug as listed

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6].upper()}"


async def test_every_terminal_state_and_stock_is_conserved(system: System) -> None:
    drug_a, drug_b = unique("DA"), unique("DB")
    north, south = unique("WH-N"), unique("WH-S")
    couriers = [CourierProfile(courier_id=unique("C"), name=n) for n in ("Amina", "Bayu", "Chen")]
    await system.seed(
        formulary=[
            FormularyEntry(drug_code=drug_a, name="Metformin", max_quantity=200, max_days_supply=90),
            FormularyEntry(drug_code=drug_b, name="Amlodipine", max_quantity=100, max_days_supply=90),
        ],
        couriers=couriers,
        stock=[(north, drug_a, 100), (north, drug_b, 40), (south, drug_a, 500), (south, drug_b, 50)],
    )
    rx = {name: unique(f"RX-{name}") for name in ("delivered", "rejected", "oos", "retry", "undeliverable")}
    simulator = scripted_couriers(
        system.settings,
        {
            rx["delivered"]: ["deliver"],
            rx["retry"]: ["fail-after-pickup:patient_absent", "deliver"],
            # patient absent allows three attempts; the goods never left, so they are released
            rx["undeliverable"]: ["fail:patient_absent"] * 3,
        },
    )
    simulator.start()
    try:
        await system.publish(
            prescription_message(rx["delivered"], [(drug_a, 60), (drug_b, 30)]),
            prescription_message(rx["rejected"], [(drug_a, 201)]),
            prescription_message(rx["oos"], [(drug_a, 20), (drug_b, 60)]),  # no warehouse has 60 B
            prescription_message(rx["retry"], [(drug_a, 30)]),
            prescription_message(rx["undeliverable"], [(drug_b, 20)]),
        )
        final = await system.wait_terminal(rx.values(), timeout=120)
    finally:
        await simulator.stop()

    assert {name: final[rx[name]].stage.value for name in rx} == {
        "delivered": "delivered",
        "rejected": "rejected",
        "oos": "out_of_stock",
        "retry": "delivered",
        "undeliverable": "undeliverable",
    }
    assert any("QUANTITY_ABOVE_MAXIMUM" in why for why in final[rx["rejected"]].why)

    offers = Counter(o.package_id for o in simulator.offers)
    assert offers[rx["oos"]] == 0 and offers[rx["rejected"]] == 0
    assert offers[rx["delivered"]] == 1
    assert offers[rx["retry"]] == 2
    assert offers[rx["undeliverable"]] == 3
    retry_couriers = [o.courier_id for o in simulator.offers if o.package_id == rx["retry"]]
    assert len(set(retry_couriers)) == 2, "a failed delivery goes to another courier when there is one"
    assert len({o.dispatch_id for o in simulator.offers}) == len(simulator.offers)
    assert not [h for h in final[rx["oos"]].history if h.stage.value == "reserved"]

    async def settled() -> bool:
        warehouses = await system.warehouses()
        return all(not warehouses[w].holds for w in (north, south))

    await wait_until(settled, "holds of delivered and undeliverable prescriptions to close", timeout=30)
    warehouses = await system.warehouses()
    for warehouse in (north, south):
        for drug, level in warehouses[warehouse].stock.items():
            assert level.balanced, (warehouse, drug, level)
    # delivered took 60 A + 30 B, retry 30 A; undeliverable's 20 B were released again
    totals = Counter()
    for warehouse in (north, south):
        for drug, level in warehouses[warehouse].stock.items():
            totals[drug, "delivered"] += level.delivered
            totals[drug, "reserved"] += level.reserved
            totals[drug, "available"] += level.available
    assert (totals[drug_a, "delivered"], totals[drug_b, "delivered"]) == (90, 30)
    assert (totals[drug_a, "reserved"], totals[drug_b, "reserved"]) == (0, 0)
    assert (totals[drug_a, "available"], totals[drug_b, "available"]) == (600 - 90, 90 - 30)


def test_service_logs_carry_no_patient_data(services: DevStack) -> None:
    """Runs after the traffic above: the patients' names, phones, addresses and diagnoses never
    reach a log line (the builders give every test patient the same recognisable details)."""
    logs = {path.name: path.read_text() for path in services.logs.glob("*-*.log")}
    assert logs and sum(len(text) for text in logs.values()) > 10_000
    for name, text in logs.items():
        for personal in ("Test Patient", "+7 700 000 0000", "Farm 1", "E11.9", "1960-01-01"):
            assert personal not in text, f"{personal!r} in {name}"


async def test_the_same_prescription_twice_is_fulfilled_once(system: System) -> None:
    drug = unique("DD")
    warehouse = unique("WH-D")
    await system.seed(
        formulary=[FormularyEntry(drug_code=drug, name="Levothyroxine", max_quantity=100, max_days_supply=90)],
        couriers=[CourierProfile(courier_id=unique("C"), name="Dilnoza")],
        stock=[(warehouse, drug, 50)],
    )
    prescription_id = unique("RX-DUP")
    message = prescription_message(prescription_id, [(drug, 10)])
    simulator = scripted_couriers(system.settings, {prescription_id: ["deliver"]})
    simulator.start()
    try:
        await system.publish(message)
        await system.publish(message)
        await system.wait_terminal([prescription_id])
    finally:
        await simulator.stop()

    intake = [
        s for s in await system.consultation.intake.all() if s.state and s.state.prescription_id == prescription_id
    ]
    assert len(intake) == 1
    reservations = [
        r
        for r in await read_topic(system.settings, topics.INVENTORY_EVENTS.name)
        if r.key == prescription_id.encode() and json.loads(r.value)["type"] == "inventory.stock_reserved"
    ]
    assert len(reservations) == 1
    dispatches = [
        r
        for r in await read_topic(system.settings, topics.COURIER_DISPATCH.name)
        if json.loads(r.value)["package_id"] == prescription_id
    ]
    assert len(dispatches) == 1
    level = (await system.warehouses())[warehouse].stock[drug]
    assert (level.available, level.delivered) == (40, 10)


async def test_every_service_absorbs_a_second_copy_of_every_message_it_consumed(system: System) -> None:
    """Every hop, not only the first: once a prescription is delivered, every record of its flow,
    on every topic, is published again byte for byte (value, key, headers, partition): the signed
    submission into consultation, the acceptance into prescription, the approval into inventory and
    courier, the reservation into courier (and the ledger and the status), each courier report into
    courier, each delivery event into inventory, and the warehouse's registration and restock. That
    is a redelivery at a new offset under the same message id, as a re-published outbox entry or a
    sender's retry makes one. Each is absorbed: no event is published again, no document about the
    prescription, its patient, warehouse or drug changes (not even its version), nothing is
    dead-lettered, and there is still one reservation, one dispatch and one delivery."""
    settings = system.settings
    drug, warehouse, courier = unique("DH"), unique("WH-H"), unique("C")
    await system.seed(
        formulary=[FormularyEntry(drug_code=drug, name="Lisinopril", max_quantity=100, max_days_supply=90)],
        couriers=[CourierProfile(courier_id=courier, name="Hana")],
        stock=[(warehouse, drug, 50)],
    )
    prescription_id = unique("RX-HOP")
    simulator = scripted_couriers(settings, {prescription_id: ["deliver"]})
    simulator.start()
    try:
        # Its address has no map pin and names no place the gazetteer knows: a dispatcher places it,
        # so the flow crosses the dispatchers' topic too.
        await system.publish(unlocated(prescription_message(prescription_id, [(drug, 10)])))

        async def waits_for_a_dispatcher() -> bool:
            status = await system.status(prescription_id)
            return status is not None and any("no map location" in h.detail for h in status.history)

        await wait_until(waits_for_a_dispatcher, "the delivery to wait for a dispatcher", timeout=60)
        await system.publish(
            c.AddressLocated(
                correlation_id=prescription_id,
                producer="dispatcher-cli",
                prescription_id=prescription_id,
                coordinates=Coordinates(latitude=51.8, longitude=69.4),
                located_by="DSP-HOP",
            )
        )
        assert (await system.wait_terminal([prescription_id]))[prescription_id].stage.value == "delivered"
    finally:
        await simulator.stop()
    await wait_quiet(settings)

    # Every record and document of the flow names one of these (the patient is `PAT-<prescription id>`).
    ours = [value.encode() for value in (prescription_id, warehouse, drug)]

    def of_this_flow(records: list[ConsumerRecord[bytes, bytes]]) -> Counter[tuple[str, bytes]]:
        return Counter((r.topic, bytes(r.value)) for r in records if any(mine in r.value for mine in ours))

    def about_this_flow(documents: Documents) -> Documents:
        return {
            collection: {i: doc for i, doc in docs.items() if any(m.decode() in str(doc) for m in ours)}
            for collection, docs in documents.items()
        }

    async with TopicWatch(settings.kafka_bootstrap_servers, *EVERY_TOPIC) as watch:
        await read_up_to(watch, await partition_ends(settings))
        originals = [r for r in watch.records if any(mine in r.value for mine in ours)]
        assert not [r.topic for r in originals if r.topic.endswith(topics.DEAD_LETTER_SUFFIX)]
        # Every topic but the pharmacists' (no review in this flow, so no answer to one either).
        pharmacists = {topics.PRESCRIPTION_REVIEWS.name, topics.PRESCRIPTION_ANSWERS.name}
        crossed = {t.name for t in topics.ALL_TOPICS} - pharmacists
        assert {r.topic for r in originals} == crossed
        documents_before = about_this_flow(await every_document(settings))

        async with bus.producer(settings) as producer:
            for record in originals:
                await producer.send_and_wait(
                    record.topic, record.value, key=record.key, partition=record.partition, headers=list(record.headers)
                )
        # Every copy is handled and every event a handling caused is on the broker (it left its
        # outbox only once the broker had it): whatever the copies caused is below these ends.
        await wait_quiet(settings)
        await read_up_to(watch, await partition_ends(settings))
        records_after = watch.records

    copies = of_this_flow(originals)
    new = of_this_flow(records_after) - copies - copies
    assert not new, "published again: " + ", ".join(f"{topic} {_type_of(value)}" for topic, value in new)
    changed = document_changes(documents_before, about_this_flow(await every_document(settings)))
    assert not changed, "a copy changed documents:\n" + "\n".join(changed)

    published = [json.loads(value) for topic, value in of_this_flow(records_after) if topic in crossed]
    events = {body["message_id"]: body["type"] for body in published}
    kinds = Counter(events.values())
    assert [kinds[kind] for kind in ONCE_PER_DELIVERY] == [1] * len(ONCE_PER_DELIVERY), kinds
    level = (await system.warehouses())[warehouse].stock[drug]
    assert level.balanced and (level.available, level.reserved, level.delivered) == (40, 0, 10), level


ONCE_PER_DELIVERY = (
    "inventory.stock_reserved",
    "courier.dispatch_offered",
    "courier.delivered",
    "inventory.stock_delivered",
)


def unlocated(submitted: PrescriptionSubmitted) -> PrescriptionSubmitted:
    """The same prescription as a hospital without a map sends it: no coordinates, an unknown farmstead."""
    prescription = submitted.prescription
    address = prescription.patient.address.model_copy(update={"coordinates": None, "town": "Upper Meadow"})
    patient = prescription.patient.model_copy(update={"address": address})
    return submitted.model_copy(update={"prescription": prescription.model_copy(update={"patient": patient})})


def _type_of(value: bytes) -> str:
    return json.loads(value).get("type", "?")


GARBAGE = [b"\x00\xff not json at all", b'{"type": "nonsense"}', b"[]"]


@pytest.mark.parametrize(
    "topic",
    [
        topics.CONSULTATION_PRESCRIPTIONS,
        topics.PRESCRIPTION_DECISIONS,
        topics.INVENTORY_COMMANDS,
        topics.COURIER_UPDATES,
        topics.COURIER_DELIVERIES,
        topics.INVENTORY_EVENTS,
        topics.CONSULTATION_INTAKE,
    ],
    ids=lambda t: t.name,
)
async def test_bad_bytes_are_dead_lettered_and_the_service_carries_on(system: System, topic: topics.Topic) -> None:
    marker = unique("BAD").encode()
    from aiokafka import AIOKafkaProducer

    def signed(value: bytes) -> list[tuple[str, bytes]]:
        # labelled JSON like every real message, so no framework decoding may trip over it first
        label = [("content-type", b"application/json")]
        # consultation and courier check signatures before parsing: sign the garbage so the parser sees it
        if topic is topics.CONSULTATION_PRESCRIPTIONS:
            secret = system.settings.signing_secret.get_secret_value().encode()
            headers = signing.signature_headers(value, sender_id="hospital-test", key_id="dev", secret=secret)
        elif topic is topics.COURIER_UPDATES:
            key = system.settings.courier_gateway_key.get_secret_value().encode()
            headers = credentials.signed_by(value, "C-GARBAGE", credentials.courier_token(key, "C-GARBAGE"))
        else:
            return label
        return label + [(k, v.encode()) for k, v in headers.items()]

    producer = AIOKafkaProducer(bootstrap_servers=system.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for payload in GARBAGE:
            await producer.send_and_wait(topic.name, payload + marker, key=marker, headers=signed(payload + marker))
        # a message that parses but breaks the contract: an unknown field
        violating = json.loads(prescription_message(unique("RX-BAD"), [("X", 1)]).model_dump_json())
        violating["unexpected"] = True
        body = json.dumps(violating).encode()
        await producer.send_and_wait(topic.name, body, key=marker, headers=signed(body))
    finally:
        await producer.stop()

    async def dead_lettered() -> bool:
        records = [r for r in await read_topic(system.settings, topic.dead_letter_topic, idle_s=0.5) if r.key == marker]
        return len(records) >= len(GARBAGE) + 1

    await wait_until(dead_lettered, f"dead letters on {topic.dead_letter_topic}", timeout=60)
    records = [r for r in await read_topic(system.settings, topic.dead_letter_topic, idle_s=0.5) if r.key == marker]
    for record in records:
        headers = dict(record.headers)
        assert headers["dlq.reason"] == b"contract_violation"
        assert headers["dlq.topic"] == topic.name.encode()
        assert b"dlq.offset" in headers or "dlq.offset" in headers
    assert {bytes(r.value) for r in records} >= {g + marker for g in GARBAGE}

    # every consumer of the topic is still alive and serving: a fresh prescription goes through
    drug, warehouse = unique("DG"), unique("WH-G")
    await system.seed(
        formulary=[FormularyEntry(drug_code=drug, name="Atorvastatin", max_quantity=100, max_days_supply=90)],
        couriers=[],
        stock=[(warehouse, drug, 5)],
    )
    prescription_id = unique("RX-AFTER")
    simulator = scripted_couriers(system.settings, {prescription_id: ["deliver"]})
    simulator.start()
    try:
        await system.publish(prescription_message(prescription_id, [(drug, 1)]))
        assert (await system.wait_terminal([prescription_id]))[prescription_id].stage.value == "delivered"
    finally:
        await simulator.stop()


async def test_two_inventory_instances_never_oversell(
    system: System, services: DevStack, logs_of_this_test: LogWindow
) -> None:
    services.start_services("inventory-2")
    try:
        drug, warehouse = unique("DL"), unique("WH-L")
        units, demand = 25, 60
        await system.seed(formulary=[listed(drug)], couriers=[], stock=[(warehouse, drug, units)])
        example = prescription_message("RX-TEMPLATE", [(drug, 1)]).prescription
        approvals = [
            PrescriptionApproved(
                correlation_id=rx,
                producer="test",
                prescription_id=rx,
                patient_id="PAT-L",
                lines=[ApprovedLine(drug_code=drug, quantity=1, days_supply=30)],
                delivery=DeliveryDetails(address=example.patient.address, contact_phone=example.patient.phone),
            )
            for rx in (unique(f"RX-L{i}") for i in range(demand))
        ]
        await system.publish(*approvals)

        async def all_settled() -> bool:
            states = [await system.inventory.allocations.get(a.prescription_id) for a in approvals]
            return all(s is not None and s.state is not AllocationState.RESERVING for s in states)

        await wait_until(all_settled, "every approval to be reserved or refused", timeout=120)
        settled_states = [await system.inventory.allocations.get(a.prescription_id) for a in approvals]
        states = Counter(s.state for s in settled_states if s is not None)
        level = (await system.warehouses())[warehouse].stock[drug]
        assert states[AllocationState.RESERVED] == units
        assert states[AllocationState.OUT_OF_STOCK] == demand - units
        assert (level.available, level.reserved) == (0, units)
        for name in ("inventory-1", "inventory-2"):
            log = logs_of_this_test.text(name)
            assert '"stock reserved"' in log or '"out of stock"' in log, f"{name} took no part"
    finally:
        services.stop("inventory-2")


async def test_two_instances_of_every_service_keep_every_guarantee(
    system: System, services: DevStack, logs_of_this_test: LogWindow
) -> None:
    """Two processes of each service share every consumer group's partitions and every collection:
    each prescription is still reserved once, dispatched once per attempt and delivered once, stock
    is neither oversold nor lost, and both processes of each service did part of the work."""
    seconds = ("consultation-2", "prescription-2", "inventory-2", "courier-2")
    services.start_services(*seconds)
    try:
        drug, north, south = unique("DT"), unique("WH-TN"), unique("WH-TS")
        # Room for everything: the unanswered offers of earlier tests in this module wait for a
        # courier too, and longest-waiting deliveries are offered first.
        couriers = [CourierProfile(courier_id=unique("C"), name=n, capacity=200) for n in ("Dana", "Erlan", "Farida")]
        await system.seed(
            formulary=[FormularyEntry(drug_code=drug, name="Metformin", max_quantity=200, max_days_supply=90)],
            couriers=couriers,
            stock=[(north, drug, 300), (south, drug, 300)],
        )
        ids = [unique(f"RX-T{i}") for i in range(80)]  # 80 x 10 units against 600: 20 out of stock
        retried = set(ids[:8])
        simulator = scripted_couriers(
            system.settings,
            {rx: ["fail-after-pickup:patient_absent", "deliver"] if rx in retried else ["deliver"] for rx in ids},
        )
        simulator.start()
        try:
            await system.publish(*(prescription_message(rx, [(drug, 10)]) for rx in ids))
            final = await system.wait_terminal(ids, timeout=240)
        finally:
            await simulator.stop()

        stages = Counter(status.stage.value for status in final.values())
        assert stages == {"delivered": 60, "out_of_stock": 20}, stages

        def per_prescription(records: list, type_name: str) -> Counter:
            found = {}
            for record in records:
                try:  # the bad-bytes test left garbage on these topics
                    body = json.loads(record.value)
                except ValueError:
                    continue
                if isinstance(body, dict) and body.get("type") == type_name and body.get("correlation_id") in final:
                    found[body["message_id"]] = body["correlation_id"]  # a re-published event counts once
            return Counter(found.values())

        inventory_events = await read_topic(system.settings, topics.INVENTORY_EVENTS.name)
        deliveries = await read_topic(system.settings, topics.COURIER_DELIVERIES.name)
        reserved = per_prescription(inventory_events, "inventory.stock_reserved")
        failed = per_prescription(inventory_events, "inventory.reservation_failed")
        completed = per_prescription(deliveries, "courier.delivered")
        delivered = {rx for rx, status in final.items() if status.stage.value == "delivered"}
        assert set(reserved) == delivered and set(reserved.values()) == {1}
        assert set(failed) == set(final) - delivered and set(failed.values()) == {1}
        assert set(completed) == delivered and set(completed.values()) == {1}
        offers = Counter(o.dispatch_id for o in simulator.offers)
        attempts = {rx: 2 if rx in retried else 1 for rx in delivered}
        assert {d.rsplit("-D", 1)[0] for d in offers} == delivered
        assert Counter(d.rsplit("-D", 1)[0] for d in offers) == attempts, "one dispatch id per attempt"

        async def holds_closed() -> bool:
            warehouses = await system.warehouses()
            return all(not warehouses[w].holds for w in (north, south))

        await wait_until(holds_closed, "every hold to close", timeout=60)
        levels = [(await system.warehouses())[w].stock[drug] for w in (north, south)]
        assert all(lv.balanced for lv in levels), levels
        assert sum(lv.delivered for lv in levels) == 600 and sum(lv.reserved for lv in levels) == 0

        work = {
            "consultation": '"prescription received"',
            "prescription": '"prescription approved"',
            "inventory": '"stock reserved"',
            "courier": '"courier report applied"',
        }
        for service, line in work.items():
            for instance in (1, 2):
                assert line in logs_of_this_test.text(f"{service}-{instance}"), f"{service}-{instance} took no part"
    finally:
        for name in seconds:
            services.stop(name)


async def test_replaying_every_topic_from_the_beginning_changes_nothing(system: System, services: DevStack) -> None:
    """Runs last in this module, after all the traffic above: a second set of the four services,
    in consumer groups of their own, reads every topic from offset 0 while the first set runs.
    No document of any collection may change (not even its version; the ledger's lines and the
    supply histories included) and no topic may grow, dead-letter topics excepted: an unreadable
    message belongs to no document that could remember it, so a replay dead-letters it again (and
    answers its sender again; no message that counted is answered twice)."""
    settings = system.settings
    replay = settings.model_copy(update={"kafka_group_prefix": "replay"})

    await wait_quiet(settings)
    documents_before, ends_before = await every_document(settings), await topic_ends(settings)
    told_before = await stage_receipts(settings)
    assert told_before, "the module's prescriptions were told to their senders"

    names = ("consultation-9", "prescription-9", "inventory-9", "courier-9")
    services.start_services(*names, env={"PHARMACY_KAFKA_GROUP_PREFIX": "replay"})
    try:
        await wait_quiet(replay, timeout=300)
    finally:
        for name in names:
            services.stop(name)
    await wait_quiet(settings)

    documents_after, ends_after = await every_document(settings), await topic_ends(settings)
    assert sum(len(docs) for docs in documents_before.values()) > 50, "the module's traffic is replayed"
    stored = {collection.partition(".")[2] for collection, docs in documents_before.items() if docs}
    assert stored >= REPLAYED_COLLECTIONS, f"collections the replay must leave alone are empty: {stored}"
    changed = document_changes(documents_before, documents_after)
    assert not changed, "the replay changed documents:\n" + "\n".join(changed[:30])
    # A refusal is dead-lettered again, and its sender answered again: those topics may grow
    # (the receipts topic by refusals only: see the counts below).
    refusals_answered = {
        topics.CONSULTATION_RECEIPTS.name,
        topics.COURIER_ANSWERS.name,
        topics.PRESCRIPTION_ANSWERS.name,
    }
    assert {t: e for t, e in ends_after.items() if not t.endswith(".dlq") and t not in refusals_answered} == {
        t: e for t, e in ends_before.items() if not t.endswith(".dlq") and t not in refusals_answered
    }
    # Each message that counted was answered once, replay or not (a second "accepted" or "applied"
    # answer to one message would mean it counted twice); a refused one may be answered again.
    # (Distinct answers: an answer the second-copy test published again byte for byte is one answer.)
    answers = [json.loads(r.value) for name in refusals_answered for r in await read_topic(settings, name, idle_s=1.0)]
    distinct = {a["message_id"]: a for a in answers}.values()
    counted = Counter(a["answers_message_id"] for a in distinct if a.get("outcome", "refused") != "refused")
    assert counted and max(counted.values()) == 1, [m for m, n in counted.items() if n > 1][:5]
    # No change of stage is told again: the replay re-folded every status and told no one.
    assert await stage_receipts(settings) == told_before


async def stage_receipts(settings: RuntimeSettings) -> int:
    """How many receipts of a change of stage the senders have been sent (records, repeats included)."""
    records = await read_topic(settings, topics.CONSULTATION_RECEIPTS.name, idle_s=1.0)
    return sum(json.loads(r.value)["type"] == "consultation.status_receipt" for r in records)


#: Not a list of what is compared (every collection is), but what this module's traffic must have
#: filled for the replay test to mean something: the append-only and reference collections too.
REPLAYED_COLLECTIONS = frozenset(
    {
        "consultation_prescriptions",
        "consultation_messages",
        "consultation_status",
        "prescription_verdicts",
        "prescription_patient_history",
        "prescription_formulary",
        "prescription_prescribers",
        "inventory_warehouses",
        "inventory_allocations",
        "inventory_ledger",
        "courier_deliveries",
        "courier_roster",
    }
)
#: MongoDB's own databases (users, sessions, the oplog): server bookkeeping that changes by itself,
#: no service's state. The dev server lists `admin` as a mirror of the one namespace it keeps.
SERVER_DATABASES = frozenset({"admin", "config", "local"})
#: MongoDB's own collections inside a database (`system.profile`, `system.views`), likewise.
SERVER_COLLECTIONS_PREFIX = "system."

Documents = dict[str, dict[Any, dict[str, Any]]]


async def every_document(settings: RuntimeSettings) -> Documents:
    """Every document of every collection of every database on the server, whole (version, state,
    outbox, handled message ids, positions; a ledger line as it is), by `database.collection` and
    `_id`. Collections are listed by the server, so one a service adds is compared without being
    named here. Left out, like the server's own: the running processes' outbox marks
    (`<collection>_writers`, see runtime/outbox_marks.py), which each process notes every few
    seconds whatever it handles; the documents they vouch for are compared."""
    client = connect(settings.mongo_url.get_secret_value())
    try:
        found: Documents = {}
        for database in sorted(set(await client.list_database_names()) - SERVER_DATABASES):
            for collection in sorted(await client[database].list_collection_names()):
                if not collection.startswith(SERVER_COLLECTIONS_PREFIX) and not collection.endswith(WRITERS_SUFFIX):
                    documents = client[database][collection].find({})
                    found[f"{database}.{collection}"] = {doc["_id"]: doc async for doc in documents}
        return found
    finally:
        client.close()


def document_changes(before: Documents, after: Documents) -> list[str]:
    """One line per document added, removed or changed, naming the fields that changed."""
    changes = []
    for collection in sorted(before.keys() | after.keys()):
        old, new = before.get(collection, {}), after.get(collection, {})
        for doc_id in sorted(old.keys() | new.keys(), key=str):
            if doc_id not in old:
                changes.append(f"{collection}/{doc_id}: added {str(new[doc_id])[:300]}")
            elif doc_id not in new:
                changes.append(f"{collection}/{doc_id}: removed")
            elif old[doc_id] != new[doc_id]:
                was, now = old[doc_id], new[doc_id]
                fields = sorted(f for f in was.keys() | now.keys() if was.get(f) != now.get(f))
                versions = f"version {was.get('version')} -> {now.get('version')}"
                changes.append(f"{collection}/{doc_id}: {', '.join(fields)} changed ({versions})")
    return changes


async def pending_outboxes(settings: RuntimeSettings) -> list[str]:
    client = connect(settings.mongo_url.get_secret_value())
    try:
        pending = []
        for database in sorted(set(await client.list_database_names()) - SERVER_DATABASES):
            for collection in sorted(await client[database].list_collection_names()):
                if not collection.endswith(WRITERS_SUFFIX):
                    found = await unpublished(client[database], collection)
                    pending += [f"{database}.{collection}/{doc_id}: outbox" for doc_id in found]
        return pending
    finally:
        client.close()


async def wait_quiet(settings: RuntimeSettings, timeout: float = 120) -> None:
    """Until every consumer group of the services (under `settings`' group prefix) has handled
    everything on its topics and no outbox holds an entry its writer's mark does not cover yet (a
    live writer notes its mark every few seconds; see runtime/outbox_marks.py)."""
    behind: list[object] = []

    async def quiet() -> bool:
        behind[:] = [lag for lag in await consumer_lag(settings) if lag.lag]
        if not behind:
            behind[:] = await pending_outboxes(settings)
        return not behind

    await wait_until(
        quiet, lambda: f"the services under {settings.kafka_group_prefix!r} to go quiet: {behind}", timeout
    )


EVERY_TOPIC = [t.name for t in topics.ALL_TOPICS] + [t.dead_letter_topic for t in topics.ALL_TOPICS]


async def topic_ends(settings: RuntimeSettings) -> dict[str, int]:
    totals: dict[str, int] = {}
    for partition, end in (await partition_ends(settings)).items():
        totals[partition.topic] = totals.get(partition.topic, 0) + end
    return totals


async def partition_ends(settings: RuntimeSettings) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        partitions = [TopicPartition(n, p) for n in EVERY_TOPIC for p in range(settings.kafka_topic_partitions)]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def read_up_to(watch: TopicWatch, ends: dict[TopicPartition, int]) -> None:
    """Until `watch` holds every record below `ends`: what was published by then, all of it."""

    def read_all(watch: TopicWatch) -> bool:
        last: dict[TopicPartition, int] = {}
        for record in watch.records:
            partition = TopicPartition(record.topic, record.partition)
            last[partition] = max(last.get(partition, -1), record.offset)
        return all(last.get(partition, -1) + 1 >= end for partition, end in ends.items())

    await watch.wait_for(read_all, f"every record up to {ends}")
