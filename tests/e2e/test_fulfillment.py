"""The whole path, four service processes, real broker and database."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from pharmacy_contracts import signing, topics
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from services.courier.domain import CourierProfile
from services.inventory.domain import AllocationState
from services.ops.devstack import DevStack
from services.ops.lag import consumer_lag
from services.prescription.domain import FormularyEntry
from services.runtime.settings import RuntimeSettings
from tests.support.scenario import System, prescription_message, read_topic, scripted_couriers, wait_until

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

    intake = await system.consultation.intake.find(prescription_id=prescription_id)
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
        # consultation checks signatures before parsing: sign the garbage so the parser sees it
        if topic is not topics.CONSULTATION_PRESCRIPTIONS:
            return label
        secret = system.settings.signing_secret.get_secret_value().encode()
        headers = signing.signature_headers(value, sender_id="hospital-test", key_id="dev", secret=secret)
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


async def test_two_inventory_instances_never_oversell(system: System, services: DevStack) -> None:
    services.start_services("inventory-2")
    try:
        drug, warehouse = unique("DL"), unique("WH-L")
        units, demand = 25, 60
        await system.seed(formulary=[], couriers=[], stock=[(warehouse, drug, units)])
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
        logs = {n: (services.logs / f"{n}.log").read_text() for n in ("inventory-1", "inventory-2")}
        assert all('"stock reserved"' in text or '"out of stock"' in text for text in logs.values()), (
            "both instances took part"
        )
    finally:
        services.stop("inventory-2")


async def test_two_instances_of_every_service_keep_every_guarantee(system: System, services: DevStack) -> None:
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
                log = (services.logs / f"{service}-{instance}.log").read_text()
                assert line in log, f"{service}-{instance} took no part"
    finally:
        for name in seconds:
            services.stop(name)


async def test_replaying_every_topic_from_the_beginning_changes_nothing(system: System, services: DevStack) -> None:
    """Runs last in this module, after all the traffic above: a second set of the four services,
    in consumer groups of their own, reads every topic from offset 0 while the first set runs.
    No document may change (not even its version) and no topic may grow, dead-letter topics
    excepted: an unreadable message belongs to no document that could remember it, so a replay
    dead-letters it again."""
    settings = system.settings
    replay = settings.model_copy(update={"kafka_group_prefix": "replay"})

    behind: list[object] = []

    async def caught_up(which: RuntimeSettings) -> bool:
        behind[:] = [lag for lag in await consumer_lag(which) if lag.lag]
        return not behind

    await wait_until(lambda: caught_up(settings), lambda: f"the services to catch up: {behind}", timeout=120)
    documents_before, ends_before = await snapshot(system), await topic_ends(settings)

    names = ("consultation-9", "prescription-9", "inventory-9", "courier-9")
    services.start_services(*names, env={"PHARMACY_KAFKA_GROUP_PREFIX": "replay"})
    try:
        await wait_until(lambda: caught_up(replay), lambda: f"the replay to reach the end: {behind}", timeout=300)
    finally:
        for name in names:
            services.stop(name)

    documents_after, ends_after = await snapshot(system), await topic_ends(settings)
    assert sum(len(docs) for docs in documents_before.values()) > 50, "the module's traffic is replayed"
    assert documents_after == documents_before
    assert {t: e for t, e in ends_after.items() if not t.endswith(".dlq")} == {
        t: e for t, e in ends_before.items() if not t.endswith(".dlq")
    }


async def snapshot(system: System) -> dict[str, dict[str, tuple[int, dict]]]:
    stores = [
        system.consultation.intake,
        system.consultation.status,
        system.consultation.messages,
        system.prescription.verdicts,
        system.inventory.warehouses,
        system.inventory.allocations,
        system.courier.deliveries,
    ]
    return {store.name: await store.versions() for store in stores}


async def topic_ends(settings: RuntimeSettings) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        names = [t.name for t in topics.ALL_TOPICS] + [t.dead_letter_topic for t in topics.ALL_TOPICS]
        partitions = [TopicPartition(n, p) for n in names for p in range(settings.kafka_topic_partitions)]
        ends = await consumer.end_offsets(partitions)
        totals: dict[str, int] = {}
        for partition, end in ends.items():
            totals[partition.topic] = totals.get(partition.topic, 0) + end
        return totals
    finally:
        await consumer.stop()
