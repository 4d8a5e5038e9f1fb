"""The courier service alone, in-process, against the real broker and database."""

from __future__ import annotations

import json
from collections.abc import Iterable

from aiokafka.structs import ConsumerRecord

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts.courier import (
    CourierAssigned,
    CourierReported,
    DeliveryAbandoned,
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryPickedUp,
    DispatchOffered,
)
from pharmacy_contracts.inventory import ReservationFailed, Shortage, StockLevel, StockLine, StockReserved
from pharmacy_contracts.prescription import ApprovedLine, DeliveryDetails, PrescriptionApproved
from services.cli import bus
from services.courier.app import create_app
from services.courier.domain import CourierProfile, DeliveryState
from services.courier.settings import CourierSettings
from services.courier.storage import CourierStorage
from services.runtime.documents import connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch, headers_of, own_groups, publish_noting, running, wait_consumed
from tests.support.scenario import prescription_message, wait_until

DISPATCH = topics.COURIER_DISPATCH.name
DELIVERIES = topics.COURIER_DELIVERIES.name
UPDATES_DLQ = topics.COURIER_UPDATES.dead_letter_topic
WATCHED = (DISPATCH, DELIVERIES, UPDATES_DLQ)

ROSTER = [
    CourierProfile(courier_id="CR-0", name="Off Duty", active=False),  # first by id, but never offered
    CourierProfile(courier_id="CR-A", name="Amina", zone="north"),
    CourierProfile(courier_id="CR-B", name="Bayu", zone="north"),
    CourierProfile(courier_id="CR-C", name="Chen", zone="south"),
]
ACTIVE = [c.courier_id for c in ROSTER if c.active]

#: Everything a dispatch may carry: the envelope and the trip. No name, diagnosis, drug or patient id.
DISPATCH_KEYS = {
    "message_id",
    "type",
    "schema_version",
    "occurred_at",
    "correlation_id",
    "causation_id",
    "producer",
    "dispatch_id",
    "courier_id",
    "package_id",
    "attempt",
    "pickup_warehouse_id",
    "address",
    "contact_phone",
    "cold_chain",
    "controlled",
}


def service_settings(settings: RuntimeSettings) -> CourierSettings:
    return own_groups(CourierSettings, settings, max_delivery_attempts=2)


# --- messages ------------------------------------------------------------------------------------


def approval(rx: str, *, cold_chain: bool = False, controlled: bool = False) -> PrescriptionApproved:
    patient = prescription_message(rx, [("INSGL", 3)]).prescription.patient
    return PrescriptionApproved(
        correlation_id=rx,
        producer="prescription",
        prescription_id=rx,
        patient_id=patient.patient_id,
        lines=[ApprovedLine(drug_code="INSGL", quantity=3, days_supply=30)],
        delivery=DeliveryDetails(
            address=patient.address, contact_phone=patient.phone, cold_chain=cold_chain, controlled=controlled
        ),
    )


def reserved(rx: str, warehouse_id: str) -> StockReserved:
    return StockReserved(
        correlation_id=rx,
        producer="inventory",
        prescription_id=rx,
        warehouse_id=warehouse_id,
        lines=[StockLine(drug_code="INSGL", quantity=3)],
        levels=[StockLevel(drug_code="INSGL", available=10, reserved=3, dispatched=0)],
    )


def report(
    offer: DispatchOffered, status: str, *, courier_id: str | None = None, reason: str | None = None
) -> CourierReported:
    return CourierReported(
        correlation_id=offer.package_id,
        producer=f"courier-app-{courier_id or offer.courier_id}",
        dispatch_id=offer.dispatch_id,
        courier_id=courier_id or offer.courier_id,
        package_id=offer.package_id,
        status=status,  # type: ignore[arg-type]
        failure_reason=reason,  # type: ignore[arg-type]
    )


# --- reading what the service published ----------------------------------------------------------


def offers(watch: TopicWatch, rx: str) -> list[tuple[ConsumerRecord[bytes, bytes], DispatchOffered]]:
    found = []
    for record in watch.raw(DISPATCH):
        offer = topics.COURIER_DISPATCH.parse(record.value)
        assert isinstance(offer, DispatchOffered)
        if offer.package_id == rx:
            found.append((record, offer))
    return found


def lifecycle(watch: TopicWatch, rx: str) -> list[Envelope]:
    return [e for e in watch.messages(DELIVERIES) if getattr(e, "prescription_id", None) == rx]


def dead_letters(watch: TopicWatch, rx: str) -> list[ConsumerRecord[bytes, bytes]]:
    return [r for r in watch.raw(UPDATES_DLQ) if r.key == rx.encode()]


def least_loaded(loads: dict[str, int], tried: Iterable[str] = ()) -> str:
    """Who the service should offer to: an active courier not yet tried, fewest deliveries, then by id."""
    fresh = [c for c in ACTIVE if c not in set(tried)] or ACTIVE
    return min(fresh, key=lambda c: (loads.get(c, 0), c))


async def seed(storage: CourierStorage) -> dict[str, int]:
    for profile in ROSTER:
        await storage.save_courier(profile)
    return await storage.loads(ROSTER)


def assert_private(record: ConsumerRecord[bytes, bytes], offer: DispatchOffered, courier_id: str) -> None:
    assert record.key == courier_id.encode(), "a courier reads the dispatches keyed by its id"
    body = json.loads(record.value)
    assert set(body) == DISPATCH_KEYS
    assert set(body["address"]) == {"line", "town", "postcode", "coordinates"}
    for secret in (b"Test Patient", b"E11.9", b"INSGL", b"PAT-", b"1960-01-01", b"Dr Test"):
        assert secret not in record.value, secret
    assert offer.courier_id == courier_id


# --- tests ---------------------------------------------------------------------------------------


async def test_an_approved_and_reserved_prescription_is_offered_once(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    one, two = "RX-K-ONE", "RX-K-TWO"
    one_approved, one_reserved = approval(one, cold_chain=True), reserved(one, "WH-K-1")
    two_approved, two_reserved = approval(two, controlled=True), reserved(two, "WH-K-2")
    try:
        loads = await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            # RX-K-ONE: the approval first, then the reservation (each delivered twice).
            landed = await publish_noting(settings, one_approved, one_approved)

            async def one_has_details() -> bool:
                delivery = await storage.deliveries.get(one)
                return delivery is not None and delivery.details is not None

            await wait_until(one_has_details, "the approval's delivery details", timeout=30)
            waiting = await storage.deliveries.get(one)
            landed += await publish_noting(settings, one_reserved, one_reserved)
            await watch.wait_for(lambda w: offers(w, one), "the dispatch of RX-K-ONE")
            first_choice = least_loaded(loads)
            loads[first_choice] += 1

            # RX-K-TWO: the reservation first, then the approval.
            landed += await publish_noting(settings, two_reserved)

            async def two_has_warehouse() -> bool:
                delivery = await storage.deliveries.get(two)
                return delivery is not None and delivery.warehouse_id == "WH-K-2"

            await wait_until(two_has_warehouse, "the reservation's warehouse", timeout=30)
            landed += await publish_noting(settings, two_approved, two_reserved)
            await watch.wait_for(lambda w: offers(w, two), "the dispatch of RX-K-TWO")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            deliveries = {rx: await storage.deliveries.get(rx) for rx in (one, two)}
    finally:
        client.close()
    second_choice = least_loaded(loads)
    assert first_choice != second_choice, "the busy courier is not offered a second package"

    assert waiting is not None and waiting.state is DeliveryState.WAITING and waiting.attempts == []
    for rx, courier_id, warehouse_id, cause in (
        (one, first_choice, "WH-K-1", one_reserved),
        (two, second_choice, "WH-K-2", two_approved),
    ):
        assert courier_id != "CR-0", "an inactive courier is never offered a delivery"
        (record, offer), *more = offers(watch, rx)
        assert more == [], f"{rx} is offered once"
        assert_private(record, offer, courier_id)
        assert offer.dispatch_id == f"{rx}-D1"
        assert offer.attempt == 1
        assert offer.pickup_warehouse_id == warehouse_id
        assert offer.correlation_id == rx
        assert offer.causation_id == cause.message_id
        assert offer.address == one_approved.delivery.address
        assert offer.contact_phone == one_approved.delivery.contact_phone

        events = lifecycle(watch, rx)
        assert [type(e) for e in events] == [CourierAssigned], f"{rx}: {events}"
        assigned = events[0]
        assert isinstance(assigned, CourierAssigned)
        assert (assigned.courier_id, assigned.dispatch_id, assigned.attempt, assigned.warehouse_id) == (
            courier_id,
            f"{rx}-D1",
            1,
            warehouse_id,
        )

        delivery = deliveries[rx]
        assert delivery is not None
        assert delivery.state is DeliveryState.OFFERED
        assert delivery.active_courier_id == courier_id
        assert [(a.number, a.dispatch_id, a.courier_id) for a in delivery.attempts] == [(1, f"{rx}-D1", courier_id)]
    assert offers(watch, one)[0][1].cold_chain is True and offers(watch, one)[0][1].controlled is False
    assert offers(watch, two)[0][1].cold_chain is False and offers(watch, two)[0][1].controlled is True


async def test_reports_move_the_delivery_and_a_failure_is_retried_then_abandoned(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = "RX-K-RETRY"
    try:
        loads = await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            await publish_noting(settings, approval(rx), reserved(rx, "WH-K-R"))
            await watch.wait_for(lambda w: offers(w, rx), "the first dispatch")
            (_, first), *_ = offers(watch, rx)
            assert first.courier_id == least_loaded(loads)
            other = next(c for c in ACTIVE if c != first.courier_id)

            # Another courier claims the dispatch: refused, nothing changes.
            before = await storage.deliveries.get(rx)
            intruder = report(first, "accepted", courier_id=other)
            (intruder_landed,) = await publish_noting(settings, intruder)
            await watch.wait_for(lambda w: dead_letters(w, rx), "the intruder's report to be dead-lettered")
            await wait_consumed(settings, app, [intruder_landed])
            after_intruder = await storage.deliveries.get(rx)
            events_after_intruder = lifecycle(watch, rx)

            # The courier accepts, picks up and fails: the goods come back and someone else is offered.
            accepted, picked_up = report(first, "accepted"), report(first, "picked_up")
            failed = report(first, "failed", reason="patient_absent")
            loads = await storage.loads(ROSTER)
            await publish_noting(settings, accepted, picked_up, failed)
            await watch.wait_for(lambda w: len(offers(w, rx)) >= 2, "the second dispatch")
            (_, second_offer) = offers(watch, rx)[1]
            retried = await storage.deliveries.get(rx)

            # The second courier fails too (before pick-up): that was the last attempt.
            given_up = report(second_offer, "failed", reason="address_not_found")
            late = report(first, "delivered")  # about the closed first dispatch
            landed = await publish_noting(settings, given_up, late)
            await watch.wait_for(lambda w: of_kind(lifecycle(w, rx), DeliveryAbandoned), "the delivery to be abandoned")
            await watch.wait_for(lambda w: len(dead_letters(w, rx)) >= 2, "the late report to be dead-lettered")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            final = await storage.deliveries.get(rx)
    finally:
        client.close()

    # the intruder
    (refused, closed) = dead_letters(watch, rx)
    headers = headers_of(refused)
    assert headers["dlq.reason"] == "not_your_dispatch"
    assert headers["dlq.topic"] == topics.COURIER_UPDATES.name
    assert headers["dlq.offset"] == str(intruder_landed.offset)
    assert headers["dlq.partition"] == str(intruder_landed.partition)
    assert headers["message-id"] == intruder.message_id
    assert refused.value == bus.encode(intruder)[2]
    assert after_intruder == before, "a refused report changes nothing"
    assert [type(e) for e in events_after_intruder] == [CourierAssigned]

    # the first attempt
    assert retried is not None
    assert [(a.courier_id, a.failure_reason) for a in retried.attempts] == [
        (first.courier_id, "patient_absent"),
        (second_offer.courier_id, None),
    ]
    assert second_offer.courier_id != first.courier_id, "the retry goes to a different courier"
    assert second_offer.courier_id == least_loaded(loads, tried=[first.courier_id])
    assert second_offer.attempt == 2
    assert second_offer.dispatch_id == f"{rx}-D2"
    assert second_offer.pickup_warehouse_id == "WH-K-R"
    assert second_offer.causation_id == failed.message_id
    second_record = offers(watch, rx)[1][0]
    assert_private(second_record, second_offer, second_offer.courier_id)

    events = lifecycle(watch, rx)
    assert [type(e) for e in events] == [
        CourierAssigned,
        DeliveryAccepted,
        DeliveryPickedUp,
        DeliveryFailed,
        CourierAssigned,
        DeliveryFailed,
        DeliveryAbandoned,
    ]
    _, accepted_event, picked_event, first_failure, reassigned, last_failure, abandoned = events
    assert isinstance(accepted_event, DeliveryAccepted) and accepted_event.causation_id == accepted.message_id
    assert isinstance(picked_event, DeliveryPickedUp) and picked_event.warehouse_id == "WH-K-R"
    assert (picked_event.courier_id, picked_event.attempt) == (first.courier_id, 1)
    assert isinstance(first_failure, DeliveryFailed)
    assert (first_failure.will_retry, first_failure.goods_returned) == (True, True)
    assert (first_failure.attempt, first_failure.courier_id, first_failure.reason) == (
        1,
        first.courier_id,
        "patient_absent",
    )
    assert isinstance(reassigned, CourierAssigned)
    assert (reassigned.courier_id, reassigned.attempt, reassigned.dispatch_id) == (
        second_offer.courier_id,
        2,
        f"{rx}-D2",
    )
    assert isinstance(last_failure, DeliveryFailed)
    assert (last_failure.will_retry, last_failure.goods_returned) == (False, False)
    assert (last_failure.attempt, last_failure.courier_id, last_failure.reason) == (
        2,
        second_offer.courier_id,
        "address_not_found",
    )
    assert isinstance(abandoned, DeliveryAbandoned)
    assert (abandoned.attempts, abandoned.last_reason, abandoned.warehouse_id) == (2, "address_not_found", "WH-K-R")
    assert len(offers(watch, rx)) == 2, "no third attempt"

    # the late report on the closed first dispatch
    assert headers_of(closed)["dlq.reason"] == "dispatch_closed"
    assert closed.value == bus.encode(late)[2]

    assert final is not None
    assert final.state is DeliveryState.UNDELIVERABLE
    assert final.active_courier_id is None
    assert [a.failure_reason for a in final.attempts] == ["patient_absent", "address_not_found"]


def of_kind(events: list[Envelope], cls: type[Envelope]) -> list[Envelope]:
    return [e for e in events if isinstance(e, cls)]


async def test_a_delivered_package_frees_the_courier(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = "RX-K-DONE"
    try:
        await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            await publish_noting(settings, reserved(rx, "WH-K-D"), approval(rx))
            await watch.wait_for(lambda w: offers(w, rx), "the dispatch")
            (_, offer), *_ = offers(watch, rx)
            busy = (await storage.loads(ROSTER))[offer.courier_id]
            delivered = report(offer, "delivered")
            again = report(offer, "delivered")  # the app sends it twice: a new message id, the same meaning
            landed = await publish_noting(settings, report(offer, "picked_up"), delivered, again)
            await watch.wait_for(lambda w: of_kind(lifecycle(w, rx), DeliveryCompleted), "the delivery")
            await wait_consumed(settings, app, landed)
            await watch.settle()
            final = await storage.deliveries.get(rx)
            free = (await storage.loads(ROSTER))[offer.courier_id]
    finally:
        client.close()

    events = lifecycle(watch, rx)
    assert [type(e) for e in events] == [CourierAssigned, DeliveryPickedUp, DeliveryCompleted]
    completed = events[-1]
    assert isinstance(completed, DeliveryCompleted)
    assert (completed.courier_id, completed.warehouse_id, completed.attempt) == (offer.courier_id, "WH-K-D", 1)
    assert completed.causation_id == delivered.message_id
    assert dead_letters(watch, rx) == [], "a repeated report is no error"
    assert final is not None
    assert final.state is DeliveryState.DELIVERED
    assert final.active_courier_id is None
    assert free == busy - 1, "the delivered package no longer counts against the courier"


async def test_a_failed_reservation_cancels_the_delivery(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    after_approval, before_approval = "RX-K-CANCEL", "RX-K-CANCEL-EARLY"

    def failed(rx: str) -> ReservationFailed:
        return ReservationFailed(
            correlation_id=rx,
            producer="inventory",
            prescription_id=rx,
            shortages=[Shortage(drug_code="INSGL", requested=3, best_available=1)],
        )

    try:
        await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            landed = await publish_noting(settings, approval(after_approval), failed(before_approval))

            async def both_known() -> bool:
                first = await storage.deliveries.get(after_approval)
                second = await storage.deliveries.get(before_approval)
                return first is not None and first.details is not None and second is not None

            await wait_until(both_known, "the approval and the early failure", timeout=30)
            landed += await publish_noting(settings, failed(after_approval), approval(before_approval))
            await wait_consumed(settings, app, landed)
            await watch.settle()
            deliveries = {rx: await storage.deliveries.get(rx) for rx in (after_approval, before_approval)}
    finally:
        client.close()

    for rx, delivery in deliveries.items():
        assert delivery is not None
        assert delivery.state is DeliveryState.CANCELLED, rx
        assert delivery.details is not None, rx
        assert delivery.attempts == [] and delivery.active_courier_id is None, rx
        assert offers(watch, rx) == [], f"{rx} is never dispatched"
        assert lifecycle(watch, rx) == [], f"{rx} has no delivery events"
