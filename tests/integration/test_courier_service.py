"""The courier service alone, in-process, against the real broker and database."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import date, timedelta
from typing import Any
from uuid import uuid4

from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.courier import (
    CourierAssigned,
    CourierReported,
    DeliveryAbandoned,
    DeliveryAccepted,
    DeliveryCancelled,
    DeliveryCodeRejected,
    DeliveryCompleted,
    DeliveryFailed,
    DeliveryOfferExpired,
    DeliveryOverdue,
    DeliveryPickedUp,
    DeliveryWaiting,
    DispatchOffered,
    DispatchWithdrawn,
)
from pharmacy_contracts.inventory import LotPick, ReservationFailed, Shortage, StockLevel, StockLine, StockReserved
from pharmacy_contracts.prescription import (
    ApprovedLine,
    DeliveryDetails,
    PrescriptionApproved,
    PrescriptionCancelled,
)
from services.cli import bus
from services.cli import main as cli
from services.courier.app import build, create_app
from services.courier.domain import CourierProfile, DeliveryState
from services.courier.settings import CourierSettings
from services.courier.storage import CourierStorage
from services.ops.devstack import free_port
from services.ops.simulation import wrong_code
from services.runtime import delivery_codes
from services.runtime.credentials import courier_token
from services.runtime.mongo import connect
from services.runtime.observability import TRACEPARENT, current_traceparent
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import Clock, TopicWatch, headers_of, own_groups, publish_noting, running, wait_consumed
from tests.support.scenario import prescription_message, wait_until

DISPATCH = topics.COURIER_DISPATCH.name
DELIVERIES = topics.COURIER_DELIVERIES.name
UPDATES_DLQ = topics.COURIER_UPDATES.dead_letter_topic
WATCHED = (DISPATCH, DELIVERIES, UPDATES_DLQ)
WAREHOUSE_AT = Coordinates(latitude=51.80, longitude=69.40)  # next to the test patients (Northford)


def base(latitude: float, longitude: float) -> Coordinates:
    return Coordinates(latitude=latitude, longitude=longitude)


ROSTER = [
    # Nearest of all, but off duty: never offered.
    CourierProfile(courier_id="CR-0", name="Off Duty", location=base(51.80, 69.40), active=False),
    CourierProfile(courier_id="CR-A", name="Amina", zone="north", location=base(51.81, 69.40), capacity=10),
    CourierProfile(courier_id="CR-B", name="Bayu", zone="north", location=base(51.95, 69.70), capacity=10),
    # The only cold-chain courier, and the farthest.
    CourierProfile(
        courier_id="CR-C", name="Chen", zone="south", location=base(50.61, 70.02), capacity=1, cold_chain=True
    ),
]
NEAREST, NEXT_NEAREST, COLD = "CR-A", "CR-B", "CR-C"

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
    "pickup_location",
    "accept_by",
    # A stop of a delivery round: which round, its place and its time at the door.
    "round_id",
    "stop",
    "expected_at",
}


def service_settings(settings: RuntimeSettings, **overrides: Any) -> CourierSettings:
    return own_groups(CourierSettings, settings, max_delivery_attempts=2, **overrides)


def swept_by_hand(settings: RuntimeSettings) -> CourierSettings:
    """The runtime's own sweep never comes round during the test: the test calls it, with its `Clock`.
    The module's tests share one database, so a sweep also acts on what earlier tests left (their
    offers expire): every assertion looks at its own prescriptions only."""
    return service_settings(settings, sweep_interval_s=3600)


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
        pickup_location=WAREHOUSE_AT,
        lines=[StockLine(drug_code="INSGL", quantity=3)],
        picks=[LotPick(drug_code="INSGL", lot_id="LOT-1", expiry_date=date(2099, 1, 1), quantity=3)],
        levels=[StockLevel(drug_code="INSGL", available=10, reserved=3, dispatched=0)],
    )


def cancelled(rx: str, *, was_approved: bool = True) -> PrescriptionCancelled:
    return PrescriptionCancelled(
        correlation_id=rx,
        producer="prescription",
        prescription_id=rx,
        reason="the doctor changed the therapy",
        requested_by="Dr Test",
        was_approved=was_approved,
    )


def right_code(settings: RuntimeSettings, rx: str) -> str:
    assert settings.delivery_code_key is not None, "the test stack sets the delivery code key"
    return delivery_codes.delivery_code(settings.delivery_code_key.get_secret_value().encode(), rx)


def report(
    offer: DispatchOffered,
    status: str,
    *,
    courier_id: str | None = None,
    reason: str | None = None,
    code: str | None = None,
) -> CourierReported:
    return CourierReported(
        correlation_id=offer.package_id,
        producer=f"courier-app-{courier_id or offer.courier_id}",
        dispatch_id=offer.dispatch_id,
        courier_id=courier_id or offer.courier_id,
        package_id=offer.package_id,
        status=status,  # type: ignore[arg-type]
        failure_reason=reason,  # type: ignore[arg-type]
        delivery_code=code,
    )


# --- reading what the service published ----------------------------------------------------------


def offers(watch: TopicWatch, rx: str) -> list[tuple[ConsumerRecord[bytes, bytes], DispatchOffered]]:
    found = []
    for record in watch.raw(DISPATCH):
        offer = topics.COURIER_DISPATCH.parse(record.value)
        if isinstance(offer, DispatchOffered) and offer.package_id == rx:
            found.append((record, offer))
    return found


def withdrawals(watch: TopicWatch, rx: str) -> list[tuple[ConsumerRecord[bytes, bytes], DispatchWithdrawn]]:
    found = []
    for record in watch.raw(DISPATCH):
        withdrawn = topics.COURIER_DISPATCH.parse(record.value)
        if isinstance(withdrawn, DispatchWithdrawn) and withdrawn.package_id == rx:
            found.append((record, withdrawn))
    return found


def lifecycle(watch: TopicWatch, rx: str) -> list[Envelope]:
    return [e for e in watch.messages(DELIVERIES) if getattr(e, "prescription_id", None) == rx]


def of_kind(events: list[Envelope], cls: type[Envelope]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def dead_letters(watch: TopicWatch, rx: str) -> list[ConsumerRecord[bytes, bytes]]:
    return [r for r in watch.raw(UPDATES_DLQ) if r.key == rx.encode()]


async def report_barrier(settings: RuntimeSettings, watch: TopicWatch) -> None:
    """After every delivery write already made (messages `wait_consumed` saw handled, sweeps the
    test awaited): a report on a package no delivery exists for, refused inside the delivery
    store's write, so its dead letter follows whatever those writes caused (see
    `TopicWatch.wait_for_barrier`). It changes no delivery and no courier's load."""
    package = f"RX-K-BARRIER-{uuid4().hex[:8]}"
    barrier = CourierReported(
        correlation_id=package,
        producer="courier-app-barrier",
        dispatch_id=f"{package}-D1",
        courier_id="CR-BARRIER",
        package_id=package,
        status="accepted",
    )
    await bus.publish(settings, barrier)
    await watch.wait_for_barrier(lambda w: dead_letters(w, package), "the barrier report's dead letter")


async def seed(storage: CourierStorage, roster: list[CourierProfile] = ROSTER) -> dict[str, int]:
    for profile in roster:
        await storage.save_courier(profile)
    return await storage.loads(roster)


def assert_private(record: ConsumerRecord[bytes, bytes], offer: DispatchOffered, courier_id: str) -> None:
    assert record.key == courier_id.encode(), "a courier reads the dispatches keyed by its id"
    body = json.loads(record.value)
    assert set(body) == DISPATCH_KEYS
    assert set(body["address"]) == {"line", "town", "postcode", "coordinates"}
    for secret in (b"Test Patient", b"E11.9", b"INSGL", b"PAT-", b"1960-01-01", b"Dr Test"):
        assert secret not in record.value, secret
    assert offer.courier_id == courier_id


# --- tests ---------------------------------------------------------------------------------------


async def test_an_approved_and_reserved_prescription_is_offered_once_to_the_nearest_able_courier(
    settings: RuntimeSettings,
) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    one, two = "RX-K-ONE", "RX-K-TWO"
    one_approved, one_reserved = approval(one, cold_chain=True), reserved(one, "WH-K-1")
    two_approved, two_reserved = approval(two, controlled=True), reserved(two, "WH-K-2")
    try:
        await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            # RX-K-ONE: the approval first, then the reservation (each delivered twice).
            landed = await publish_noting(settings, one_approved, one_approved)

            async def one_has_details() -> bool:
                delivery = await storage.delivery(one)
                return delivery is not None and delivery.details is not None

            await wait_until(one_has_details, "the approval's delivery details", timeout=30)
            waiting = await storage.delivery(one)
            landed += await publish_noting(settings, one_reserved, one_reserved)
            await watch.wait_for(lambda w: offers(w, one), "the dispatch of RX-K-ONE")

            # RX-K-TWO: the reservation first, then the approval.
            landed += await publish_noting(settings, two_reserved)

            async def two_has_warehouse() -> bool:
                delivery = await storage.delivery(two)
                return delivery is not None and delivery.warehouse_id == "WH-K-2"

            await wait_until(two_has_warehouse, "the reservation's warehouse", timeout=30)
            landed += await publish_noting(settings, two_approved, two_reserved)
            await watch.wait_for(lambda w: offers(w, two), "the dispatch of RX-K-TWO")
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            deliveries = {rx: await storage.delivery(rx) for rx in (one, two)}
    finally:
        client.close()

    assert waiting is not None and waiting.state is DeliveryState.WAITING and waiting.attempts == []
    for rx, courier_id, warehouse_id, cause in (
        # Cold-chain goods go to the only cold-chain courier, though the farthest.
        (one, COLD, "WH-K-1", one_reserved),
        # The rest to the nearest courier on duty (the off-duty one is nearer still).
        (two, NEAREST, "WH-K-2", two_approved),
    ):
        (record, offer), *more = offers(watch, rx)
        assert more == [], f"{rx} is offered once"
        assert_private(record, offer, courier_id)
        assert offer.dispatch_id == f"{rx}-D1"
        assert offer.attempt == 1
        assert offer.pickup_warehouse_id == warehouse_id
        assert offer.pickup_location == WAREHOUSE_AT
        assert offer.correlation_id == rx
        assert offer.causation_id == cause.message_id
        assert offer.address == one_approved.delivery.address
        assert offer.contact_phone == one_approved.delivery.contact_phone

        events = lifecycle(watch, rx)
        assert [type(e) for e in events] == [CourierAssigned], f"{rx}: {events}"
        assigned = events[0]
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
        assert delivery.pickup_location == WAREHOUSE_AT
        assert [(a.number, a.dispatch_id, a.courier_id) for a in delivery.attempts] == [(1, f"{rx}-D1", courier_id)]
        attempt = delivery.attempts[0]
        assert attempt.offered_at is not None
        assert offer.accept_by == attempt.accept_by == attempt.offered_at + timedelta(minutes=15)
    assert offers(watch, one)[0][1].cold_chain is True and offers(watch, one)[0][1].controlled is False
    assert offers(watch, two)[0][1].cold_chain is False and offers(watch, two)[0][1].controlled is True


async def test_a_delivery_requested_again_after_its_offer_gets_no_second_dispatch(settings: RuntimeSettings) -> None:
    """The approval and the reservation together request a delivery: the second of them to arrive
    makes the offer. Once it is out, either arriving again changes nothing, whether redelivered
    (the same message id) or sent again as a new message (a new id, the same content): the
    service goes by what the delivery already knows, not by the message."""
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = "RX-K-AGAIN"
    requested = (approval(rx), reserved(rx, "WH-K-A"))
    sent_again = [m.model_copy(update={"message_id": str(uuid4())}) for m in requested]
    try:
        await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            await publish_noting(settings, *requested)
            await watch.wait_for(lambda w: offers(w, rx), "the dispatch")
            offered = await storage.delivery(rx)
            landed = await publish_noting(settings, *requested)
            landed += await publish_noting(settings, *sent_again)
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            after = await storage.delivery(rx)
    finally:
        client.close()

    assert [m.message_id for m in sent_again] != [m.message_id for m in requested]
    ((record, offer),) = offers(watch, rx)
    assert_private(record, offer, NEAREST)
    assert (offer.dispatch_id, offer.attempt) == (f"{rx}-D1", 1)
    assert [type(e) for e in lifecycle(watch, rx)] == [CourierAssigned]
    assert dead_letters(watch, rx) == [], "a repeated request is no error"
    assert offered is not None and offered.state is DeliveryState.OFFERED
    assert after == offered, "the delivery is as the first offer left it"


async def test_reports_move_the_delivery_and_a_failure_is_retried_then_abandoned(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = "RX-K-RETRY"
    try:
        await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            await publish_noting(settings, approval(rx), reserved(rx, "WH-K-R"))
            await watch.wait_for(lambda w: offers(w, rx), "the first dispatch")
            (_, first), *_ = offers(watch, rx)

            # Another courier claims the dispatch: refused, nothing changes.
            before = await storage.delivery(rx)
            intruder = report(first, "accepted", courier_id=NEXT_NEAREST)
            (intruder_landed,) = await publish_noting(settings, intruder)
            await watch.wait_for(lambda w: dead_letters(w, rx), "the intruder's report to be dead-lettered")
            await wait_consumed(settings, app, [intruder_landed])
            after_intruder = await storage.delivery(rx)
            events_after_intruder = lifecycle(watch, rx)

            # The courier accepts, picks up and fails: the goods come back and the delivery is offered again.
            accepted, picked_up = report(first, "accepted"), report(first, "picked_up")
            failed = report(first, "failed", reason="patient_absent")
            await publish_noting(settings, accepted, picked_up, failed)
            await watch.wait_for(lambda w: len(offers(w, rx)) >= 2, "the second dispatch")
            (_, second_offer) = offers(watch, rx)[1]
            retried = await storage.delivery(rx)

            # The address is not found on the second attempt (before pick-up): its limit (2) is reached.
            given_up = report(second_offer, "failed", reason="address_not_found")
            late = report(first, "delivered", code=right_code(settings, rx))  # about the closed first dispatch
            landed = await publish_noting(settings, given_up, late)
            await watch.wait_for(lambda w: of_kind(lifecycle(w, rx), DeliveryAbandoned), "the delivery to be abandoned")
            await watch.wait_for(lambda w: len(dead_letters(w, rx)) >= 2, "the late report to be dead-lettered")
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            final = await storage.delivery(rx)
    finally:
        client.close()

    assert first.courier_id == NEAREST

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
    assert second_offer.courier_id == NEXT_NEAREST, "after a failure, a courier who has not tried comes first"
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
    assert abandoned.goods_travelled is True, "the first attempt had picked the goods up"
    assert len(offers(watch, rx)) == 2, "no third attempt"

    # the late report on the closed first dispatch
    assert headers_of(closed)["dlq.reason"] == "dispatch_closed"
    assert closed.value == bus.encode(late)[2]

    assert final is not None
    assert final.state is DeliveryState.UNDELIVERABLE
    assert final.active_courier_id is None
    assert [a.failure_reason for a in final.attempts] == ["patient_absent", "address_not_found"]


async def test_only_the_right_code_delivers_and_a_delivered_package_frees_the_courier(
    settings: RuntimeSettings,
) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = "RX-K-DONE"
    code = right_code(settings, rx)
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
            misread = report(offer, "delivered", code=wrong_code(code))
            no_code = report(offer, "delivered")
            landed = await publish_noting(settings, report(offer, "picked_up"), misread, no_code)
            await watch.wait_for(
                lambda w: len(of_kind(lifecycle(w, rx), DeliveryCodeRejected)) == 2, "both codes refused"
            )
            await wait_consumed(settings, app, landed)
            refused_twice = await storage.delivery(rx)

            delivered = report(offer, "delivered", code=code)
            again = report(offer, "delivered", code=code)  # the app sends it twice: a new message id, the same meaning
            landed = await publish_noting(settings, delivered, again)
            await watch.wait_for(lambda w: of_kind(lifecycle(w, rx), DeliveryCompleted), "the delivery")
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            final = await storage.delivery(rx)
            free = (await storage.loads(ROSTER))[offer.courier_id]
    finally:
        client.close()

    assert refused_twice is not None
    assert refused_twice.state is DeliveryState.PICKED_UP, "a wrong or missing code changes nothing"
    assert refused_twice.attempts[0].wrong_codes == 2
    events = lifecycle(watch, rx)
    assert [type(e) for e in events] == [
        CourierAssigned,
        DeliveryPickedUp,
        DeliveryCodeRejected,
        DeliveryCodeRejected,
        DeliveryCompleted,
    ]
    first_refusal, second_refusal = of_kind(events, DeliveryCodeRejected)
    assert (first_refusal.wrong_codes, first_refusal.causation_id) == (1, misread.message_id)
    assert (second_refusal.wrong_codes, second_refusal.causation_id) == (2, no_code.message_id)
    assert (first_refusal.courier_id, first_refusal.dispatch_id) == (offer.courier_id, offer.dispatch_id)
    assert code.encode() not in b"".join(r.value for r in watch.raw(DELIVERIES)), "the code never travels"
    completed = events[-1]
    assert (completed.courier_id, completed.warehouse_id, completed.attempt) == (offer.courier_id, "WH-K-D", 1)
    assert completed.causation_id == delivered.message_id
    assert dead_letters(watch, rx) == [], "neither a wrong code nor a repeated report is an error"
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
                first = await storage.delivery(after_approval)
                second = await storage.delivery(before_approval)
                return first is not None and first.details is not None and second is not None

            await wait_until(both_known, "the approval and the early failure", timeout=30)
            landed += await publish_noting(settings, failed(after_approval), approval(before_approval))
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            deliveries = {rx: await storage.delivery(rx) for rx in (after_approval, before_approval)}
    finally:
        client.close()

    for rx, delivery in deliveries.items():
        assert delivery is not None
        assert delivery.state is DeliveryState.CANCELLED, rx
        assert delivery.details is not None, rx
        assert delivery.attempts == [] and delivery.active_courier_id is None, rx
        assert offers(watch, rx) == [], f"{rx} is never dispatched"
        assert lifecycle(watch, rx) == [], f"{rx} has no delivery events"


async def test_a_delivery_waits_for_a_free_courier_and_is_offered_when_one_frees_up(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    first, second = "RX-K-COLD-1", "RX-K-COLD-2"
    # The usual cold-chain courier is off today; a stand-in carries one package at a time.
    stand_in = CourierProfile(
        courier_id="CR-D", name="Dilnoza", location=base(51.05, 72.10), capacity=1, cold_chain=True
    )
    roster = [*(p.model_copy(update={"active": False}) if p.courier_id == COLD else p for p in ROSTER), stand_in]
    clock = Clock()
    app, service = build(swept_by_hand(settings), clock=clock)
    try:
        await seed(storage, roster)
        async with running(app), TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch:
            await publish_noting(settings, approval(first, cold_chain=True), reserved(first, "WH-K-W"))
            await watch.wait_for(lambda w: offers(w, first), "the first cold-chain dispatch")
            (_, first_offer), *_ = offers(watch, first)
            (landed,) = await publish_noting(settings, report(first_offer, "accepted"))
            await wait_consumed(settings, app, [landed])

            waiting_from = clock.now
            await publish_noting(settings, approval(second, cold_chain=True), reserved(second, "WH-K-W"))
            await watch.wait_for(lambda w: of_kind(lifecycle(w, second), DeliveryWaiting), "the second to wait")

            # Four hours on, it still waits (the sweep finds no free courier): the dispatcher is told, once.
            clock.now = waiting_from + timedelta(hours=4)
            await service.sweep()
            await watch.wait_for(lambda w: of_kind(lifecycle(w, second), DeliveryOverdue), "the waiting alert")
            await service.sweep()
            await report_barrier(settings, watch)
            still_waiting = await storage.delivery(second)

            # The stand-in delivers the first package: free again, they are offered the second.
            code = right_code(settings, first)
            await publish_noting(
                settings, report(first_offer, "picked_up"), report(first_offer, "delivered", code=code)
            )
            await watch.wait_for(lambda w: offers(w, second), "the second offered once the courier is free")
            # No barrier: the offer comes from the pass over waiting deliveries that the freed courier
            # started in the background, and nothing the test sends is ordered after that pass.
            await watch.settle()
            final = await storage.delivery(second)
    finally:
        await seed(storage, [*ROSTER, stand_in.model_copy(update={"active": False})])
        client.close()

    assert first_offer.courier_id == "CR-D"
    events = lifecycle(watch, second)
    assert [type(e) for e in events] == [DeliveryWaiting, DeliveryOverdue, CourierAssigned]
    waiting, overdue, _ = events
    assert waiting.warehouse_id == "WH-K-W"
    assert waiting.why == "every cold-chain courier on duty is carrying as many deliveries as they can"
    assert (overdue.stage, overdue.since, overdue.courier_id) == ("awaiting_courier", waiting_from, None)
    assert still_waiting is not None and still_waiting.state is DeliveryState.AWAITING_COURIER
    assert still_waiting.awaiting_since == waiting_from
    ((_, offer),) = offers(watch, second)
    assert (offer.courier_id, offer.dispatch_id, offer.cold_chain) == ("CR-D", f"{second}-D1", True)
    assert final is not None and final.state is DeliveryState.OFFERED and final.awaiting_since is None


async def test_an_offer_not_accepted_in_time_goes_to_the_next_courier(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = "RX-K-SLOW"
    clock = Clock()
    app, service = build(swept_by_hand(settings), clock=clock)
    try:
        await seed(storage)
        async with running(app), TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch:
            await publish_noting(settings, approval(rx), reserved(rx, "WH-K-S"))
            await watch.wait_for(lambda w: offers(w, rx), "the first dispatch")
            (_, first), *_ = offers(watch, rx)
            assert first.accept_by == clock.now + timedelta(minutes=15)

            clock.now = first.accept_by - timedelta(microseconds=1)
            await service.sweep()
            await report_barrier(settings, watch)
            before_the_deadline = (len(offers(watch, rx)), len(lifecycle(watch, rx)))

            clock.now = first.accept_by
            await service.sweep()
            await watch.wait_for(lambda w: len(offers(w, rx)) >= 2, "the offer to the next courier")
            await service.sweep()  # again: nothing more happens

            # The first courier wakes up too late.
            too_late = report(first, "accepted")
            (landed,) = await publish_noting(settings, too_late)
            await watch.wait_for(lambda w: dead_letters(w, rx), "the late acceptance to be dead-lettered")
            await wait_consumed(settings, app, [landed])

            # The next courier accepts, and is still on the road a day later: the dispatcher is told, once.
            (_, second) = offers(watch, rx)[1]
            (landed,) = await publish_noting(settings, report(second, "accepted"))
            await watch.wait_for(lambda w: of_kind(lifecycle(w, rx), DeliveryAccepted), "the acceptance")
            await wait_consumed(settings, app, [landed])
            accepted_at = clock.now
            clock.now = accepted_at + timedelta(hours=24)
            await service.sweep()
            await watch.wait_for(lambda w: of_kind(lifecycle(w, rx), DeliveryOverdue), "the overdue alert")
            clock.now += timedelta(hours=1)
            await service.sweep()
            await report_barrier(settings, watch)
            final = await storage.delivery(rx)
    finally:
        client.close()

    assert before_the_deadline == (1, 1), "a microsecond before accept_by the offer stands"
    assert first.courier_id == NEAREST
    assert second.courier_id == NEXT_NEAREST, "the courier who let it expire is not asked again"
    assert (second.dispatch_id, second.attempt) == (f"{rx}-D2", 2)
    assert second.accept_by == first.accept_by + timedelta(minutes=15)
    assert len(offers(watch, rx)) == 2

    ((record, withdrawn),) = withdrawals(watch, rx)
    assert record.key == NEAREST.encode(), "the withdrawal reaches the courier it was offered to"
    assert (withdrawn.dispatch_id, withdrawn.courier_id) == (f"{rx}-D1", NEAREST)
    assert (withdrawn.reason, withdrawn.return_goods) == ("acceptance_timeout", False)

    events = lifecycle(watch, rx)
    assert [type(e) for e in events] == [
        CourierAssigned,
        DeliveryOfferExpired,
        CourierAssigned,
        DeliveryAccepted,
        DeliveryOverdue,
    ]
    expired = events[1]
    assert (expired.dispatch_id, expired.courier_id, expired.attempt) == (f"{rx}-D1", NEAREST, 1)
    overdue = events[-1]
    assert (overdue.stage, overdue.since, overdue.courier_id) == ("on_the_road", accepted_at, NEXT_NEAREST)

    (late,) = dead_letters(watch, rx)
    assert headers_of(late)["dlq.reason"] == "offer_expired"

    assert final is not None
    assert final.state is DeliveryState.ACCEPTED
    assert final.active_courier_id == NEXT_NEAREST
    assert [(a.courier_id, a.status) for a in final.attempts] == [(NEAREST, "timed_out"), (NEXT_NEAREST, "offered")]


async def test_cancellation_withdraws_the_delivery_and_goods_picked_up_come_back(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    recalled, withdrawn, unreserved, unapproved = "RX-K-RECALL", "RX-K-WITHDRAW", "RX-K-UNRESERVED", "RX-K-HELD"
    try:
        await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            await publish_noting(
                settings,
                approval(recalled),
                reserved(recalled, "WH-K-C"),
                approval(withdrawn),
                reserved(withdrawn, "WH-K-C"),
                approval(unreserved),
            )
            await watch.wait_for(lambda w: offers(w, recalled) and offers(w, withdrawn), "both dispatches")
            (_, recalled_offer), *_ = offers(watch, recalled)
            (_, withdrawn_offer), *_ = offers(watch, withdrawn)
            await publish_noting(settings, report(recalled_offer, "accepted"), report(recalled_offer, "picked_up"))
            await watch.wait_for(lambda w: of_kind(lifecycle(w, recalled), DeliveryPickedUp), "the pickup")

            landed = await publish_noting(
                settings,
                cancelled(recalled),
                cancelled(withdrawn),
                cancelled(unreserved),
                cancelled(unapproved, was_approved=False),
            )
            await watch.wait_for(
                lambda w: withdrawals(w, recalled) and of_kind(lifecycle(w, withdrawn), DeliveryCancelled),
                "the withdrawals",
            )
            await wait_consumed(settings, app, landed)
            returning = await storage.delivery(recalled)
            unreserved_cancelled = await storage.delivery(unreserved)
            unreserved_events_before_stock = lifecycle(watch, unreserved)

            # The reservation of the cancelled prescription arrives late: inventory learns which warehouse releases it.
            (landed,) = await publish_noting(settings, reserved(unreserved, "WH-K-L"))
            await watch.wait_for(lambda w: of_kind(lifecycle(w, unreserved), DeliveryCancelled), "the late notice")
            await wait_consumed(settings, app, [landed])

            # The courier carrying the goods reports a failure (refused: bring them back), then brings them back.
            fail_anyway = report(recalled_offer, "failed", reason="patient_absent")
            returned = report(recalled_offer, "returned")
            landed = await publish_noting(settings, fail_anyway, returned)
            await watch.wait_for(lambda w: of_kind(lifecycle(w, recalled), DeliveryCancelled), "the goods back")
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            final = {rx: await storage.delivery(rx) for rx in (recalled, withdrawn, unreserved, unapproved)}
    finally:
        client.close()

    # after pickup: recalled, closed when the goods are back
    ((record, recall),) = withdrawals(watch, recalled)
    assert record.key == recalled_offer.courier_id.encode()
    assert (recall.dispatch_id, recall.reason, recall.return_goods) == (recalled_offer.dispatch_id, "cancelled", True)
    assert returning is not None and returning.state is DeliveryState.RETURNING
    assert returning.active_courier_id == recalled_offer.courier_id, "the goods are still with the courier"
    (refused,) = dead_letters(watch, recalled)
    assert headers_of(refused)["dlq.reason"] == "dispatch_withdrawn"
    events = lifecycle(watch, recalled)
    assert [type(e) for e in events] == [CourierAssigned, DeliveryAccepted, DeliveryPickedUp, DeliveryCancelled]
    back = events[-1]
    assert (back.goods_returned, back.warehouse_id, back.causation_id) == (True, "WH-K-C", returned.message_id)
    assert final[recalled] is not None and final[recalled].state is DeliveryState.CANCELLED
    assert final[recalled].active_courier_id is None, "the courier is free again"

    # before pickup: withdrawn at once
    ((record, stop),) = withdrawals(watch, withdrawn)
    assert record.key == withdrawn_offer.courier_id.encode()
    assert (stop.dispatch_id, stop.reason, stop.return_goods) == (withdrawn_offer.dispatch_id, "cancelled", False)
    events = lifecycle(watch, withdrawn)
    assert [type(e) for e in events] == [CourierAssigned, DeliveryCancelled]
    assert (events[-1].goods_returned, events[-1].warehouse_id) == (False, "WH-K-C")
    assert final[withdrawn] is not None and final[withdrawn].state is DeliveryState.CANCELLED
    assert final[withdrawn].active_courier_id is None

    # before the reservation: the notice waits for the warehouse, and nothing is ever dispatched
    assert unreserved_cancelled is not None and unreserved_cancelled.state is DeliveryState.CANCELLED
    assert unreserved_events_before_stock == []
    ((notice),) = lifecycle(watch, unreserved)
    assert isinstance(notice, DeliveryCancelled)
    assert (notice.warehouse_id, notice.goods_returned) == ("WH-K-L", False)
    assert offers(watch, unreserved) == []
    assert final[unreserved] is not None and final[unreserved].warehouse_id == "WH-K-L"
    assert final[unreserved].cancel_notice_due is False

    # never approved: nothing to undo
    assert final[unapproved] is None
    assert lifecycle(watch, unapproved) == []


async def test_a_cancellation_racing_the_courier_keeps_the_goods_accounted_for(settings: RuntimeSettings) -> None:
    """A recalled courier confirms with 'returned'; what they reported before the recall reached them
    still counts: a pickup (the goods come back), or a delivery (the cancellation came too late)."""
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    late_pickup, never_taken, too_late, failed_first = (
        "RX-K-RACE-PICKUP",
        "RX-K-RACE-UNTAKEN",
        "RX-K-RACE-DELIVERED",
        "RX-K-RACE-FAILED",
    )
    everyone = (late_pickup, never_taken, too_late, failed_first)
    try:
        await seed(storage)
        async with (
            running(create_app(service_settings(settings))) as app,
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            await publish_noting(settings, *(m for rx in everyone for m in (approval(rx), reserved(rx, "WH-K-R"))))
            await watch.wait_for(lambda w: all(offers(w, rx) for rx in everyone), "the dispatches")
            first = {rx: offers(watch, rx)[0][1] for rx in everyone}
            landed = await publish_noting(
                settings,
                report(first[late_pickup], "accepted"),
                report(first[never_taken], "accepted"),
                report(first[too_late], "accepted"),
                report(first[too_late], "picked_up"),
                # The first attempt travels and fails; the package comes back, held for the retry.
                report(first[failed_first], "picked_up"),
                report(first[failed_first], "failed", reason="patient_absent"),
            )
            await watch.wait_for(lambda w: len(offers(w, failed_first)) >= 2, "the retry of the failed delivery")
            await wait_consumed(settings, app, landed)

            landed = await publish_noting(settings, *(cancelled(rx) for rx in everyone))
            await watch.wait_for(lambda w: all(withdrawals(w, rx) for rx in everyone), "the withdrawals")
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            recalled = {rx: await storage.delivery(rx) for rx in everyone}
            before_confirmation = {rx: lifecycle(watch, rx) for rx in everyone}

            # What the couriers sent before the recall reached them, then their confirmations.
            late = report(first[late_pickup], "picked_up")
            delivered = report(first[too_late], "delivered", code=right_code(settings, too_late))
            landed = await publish_noting(
                settings,
                late,
                report(first[late_pickup], "returned"),
                report(first[never_taken], "returned"),
                delivered,
            )
            await watch.wait_for(
                lambda w: (
                    of_kind(lifecycle(w, late_pickup), DeliveryCancelled)
                    and of_kind(lifecycle(w, never_taken), DeliveryCancelled)
                    and of_kind(lifecycle(w, too_late), DeliveryCompleted)
                ),
                "the confirmations",
            )
            await wait_consumed(settings, app, landed)
            await report_barrier(settings, watch)
            final = {rx: await storage.delivery(rx) for rx in everyone}
    finally:
        client.close()

    for rx in (late_pickup, never_taken, too_late):
        delivery = recalled[rx]
        assert delivery is not None and delivery.state is DeliveryState.RETURNING, rx
        assert delivery.active_courier_id == first[rx].courier_id, f"{rx}: the courier may hold the goods"
        ((_, withdrawn),) = withdrawals(watch, rx)
        assert (withdrawn.reason, withdrawn.return_goods) == ("cancelled", True), rx
        assert not of_kind(before_confirmation[rx], DeliveryCancelled), f"{rx}: the stock stays held until confirmed"
        assert dead_letters(watch, rx) == [], rx

    # cancelled, then the pickup arrives: the goods came back from the road
    events = lifecycle(watch, late_pickup)
    assert [type(e) for e in events] == [CourierAssigned, DeliveryAccepted, DeliveryPickedUp, DeliveryCancelled]
    assert events[2].causation_id == late.message_id
    assert events[-1].goods_returned is True
    assert final[late_pickup] is not None and final[late_pickup].state is DeliveryState.CANCELLED

    # cancelled, and the courier never took the goods: back on the shelf
    events = lifecycle(watch, never_taken)
    assert [type(e) for e in events] == [CourierAssigned, DeliveryAccepted, DeliveryCancelled]
    assert events[-1].goods_returned is False
    assert final[never_taken] is not None and final[never_taken].active_courier_id is None

    # delivered before the recall arrived: delivered
    events = lifecycle(watch, too_late)
    assert [type(e) for e in events] == [CourierAssigned, DeliveryAccepted, DeliveryPickedUp, DeliveryCompleted]
    assert (events[-1].causation_id, events[-1].warehouse_id) == (delivered.message_id, "WH-K-R")
    assert final[too_late] is not None and final[too_late].state is DeliveryState.DELIVERED
    assert final[too_late].active_courier_id is None

    # the retry's offer withdrawn; the package that travelled on the first attempt goes to quarantine
    events = lifecycle(watch, failed_first)
    assert [type(e) for e in events] == [
        CourierAssigned,
        DeliveryPickedUp,
        DeliveryFailed,
        CourierAssigned,
        DeliveryCancelled,
    ]
    failed, notice = events[2], events[-1]
    assert (failed.goods_returned, failed.will_retry) == (True, True)
    assert (notice.goods_returned, notice.warehouse_id) == (True, "WH-K-R")
    ((_, stop),) = withdrawals(watch, failed_first)
    assert (stop.dispatch_id, stop.return_goods) == (f"{failed_first}-D2", False)
    assert recalled[failed_first] is not None and recalled[failed_first].state is DeliveryState.CANCELLED


async def test_wrong_codes_lock_the_attempt_and_a_missing_reservation_is_alerted(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx, unreserved = "RX-K-GUESS", "RX-K-NO-STOCK"
    code = right_code(settings, rx)
    guesses = [code]
    for _ in range(6):
        guesses.append(wrong_code(guesses[-1]))
    clock = Clock()
    app, service = build(swept_by_hand(settings), clock=clock)
    try:
        await seed(storage)
        async with running(app), TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch:
            await publish_noting(settings, approval(rx), reserved(rx, "WH-K-G"))
            await watch.wait_for(lambda w: offers(w, rx), "the dispatch")
            (_, offer), *_ = offers(watch, rx)
            landed = await publish_noting(
                settings, report(offer, "picked_up"), *(report(offer, "delivered", code=g) for g in guesses[1:6])
            )
            await watch.wait_for(lambda w: len(of_kind(lifecycle(w, rx), DeliveryCodeRejected)) == 5, "5 refusals")
            await wait_consumed(settings, app, landed)
            landed = await publish_noting(
                settings, report(offer, "delivered", code=guesses[6]), report(offer, "delivered", code=code)
            )
            await watch.wait_for(lambda w: len(dead_letters(w, rx)) == 2, "both later codes dead-lettered")
            await wait_consumed(settings, app, landed)
            locked = await storage.delivery(rx)

            # Approved, but the reservation never comes: the dispatcher is told once the wait is too long.
            approved_at = clock.now
            (landed,) = await publish_noting(settings, approval(unreserved))
            await wait_consumed(settings, app, [landed])
            clock.now = approved_at + timedelta(hours=4) - timedelta(microseconds=1)
            await service.sweep()
            await report_barrier(settings, watch)
            before_the_deadline = lifecycle(watch, unreserved)
            clock.now = approved_at + timedelta(hours=4)
            await service.sweep()
            await watch.wait_for(lambda w: of_kind(lifecycle(w, unreserved), DeliveryOverdue), "the stock alert")
            await service.sweep()  # again: alerted once
            await report_barrier(settings, watch)
            waiting = await storage.delivery(unreserved)
    finally:
        client.close()

    refusals = of_kind(lifecycle(watch, rx), DeliveryCodeRejected)
    assert [(r.wrong_codes, r.locked) for r in refusals] == [(1, False), (2, False), (3, False), (4, False), (5, True)]
    assert of_kind(lifecycle(watch, rx), DeliveryCompleted) == [], "not even the right code counts once locked"
    assert [headers_of(d)["dlq.reason"] for d in dead_letters(watch, rx)] == ["code_locked", "code_locked"]
    assert locked is not None and locked.state is DeliveryState.PICKED_UP
    assert (locked.attempts[0].wrong_codes, locked.attempts[0].code_locked) == (5, True)

    assert before_the_deadline == []
    (overdue,) = lifecycle(watch, unreserved)
    assert isinstance(overdue, DeliveryOverdue)
    assert (overdue.stage, overdue.since, overdue.courier_id) == ("awaiting_stock", approved_at, None)
    assert waiting is not None and waiting.state is DeliveryState.WAITING and waiting.stock_overdue_alerted


def trace_of(record: ConsumerRecord[bytes, bytes]) -> int | None:
    traceparent = headers_of(record).get(TRACEPARENT)
    return None if traceparent is None else int(traceparent.split("-")[1], 16)


async def test_reports_and_sweeps_without_a_trace_continue_the_prescription_trace(settings: RuntimeSettings) -> None:
    """Couriers' apps send no traceparent and sweeps run outside any message; the delivery document
    remembers the trace of the approval that created it, so everything that follows stays in it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = "RX-K-TRACE"
    clock = Clock()
    app, service = build(swept_by_hand(settings), clock=clock, tracer_provider=provider)
    with provider.get_tracer("test").start_as_current_span("the prescription service approves") as approving:
        traceparent = current_traceparent()
        assert traceparent is not None
        name, key, value, headers = bus.encode(approval(rx))
        traced_approval = (name, key, value, [*headers, (TRACEPARENT, traceparent.encode())])
    prescription_trace = approving.get_span_context().trace_id
    try:
        await seed(storage)
        async with running(app), TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch:
            await bus.publish_records(settings, traced_approval)

            async def has_details() -> bool:
                delivery = await storage.delivery(rx)
                return delivery is not None and delivery.details is not None

            await wait_until(has_details, "the approval's delivery details", timeout=30)
            await publish_noting(settings, reserved(rx, "WH-K-T"))  # without a traceparent, too
            await watch.wait_for(lambda w: offers(w, rx), "the first dispatch")
            (_, first), *_ = offers(watch, rx)
            clock.now = first.accept_by
            await service.sweep()  # outside any span
            await watch.wait_for(lambda w: len(offers(w, rx)) >= 2, "the offer to the next courier")
            (_, second) = offers(watch, rx)[1]
            reports = [
                report(second, "accepted"),
                report(second, "picked_up"),
                report(second, "delivered", code=right_code(settings, rx)),
            ]
            landed = await publish_noting(settings, *reports)
            await watch.wait_for(lambda w: of_kind(lifecycle(w, rx), DeliveryCompleted), "the delivery")
            await wait_consumed(settings, app, landed)
            stored = await client[settings.mongo_database]["courier_deliveries"].find_one({"_id": rx})
    finally:
        client.close()

    mine = [
        (topics.BY_NAME[r.topic].parse(r.value), r)
        for r in watch.raw(DELIVERIES) + watch.raw(DISPATCH)
        if headers_of(r).get("correlation-id") == rx
    ]
    assert {type(event) for event, _ in mine} >= {
        CourierAssigned,
        DeliveryOfferExpired,
        DispatchWithdrawn,
        DispatchOffered,
        DeliveryAccepted,
        DeliveryPickedUp,
        DeliveryCompleted,
    }
    traces = [(type(event).__name__, trace_of(record)) for event, record in mine]
    assert traces == [(name, prescription_trace) for name, _ in traces], "every event is in the prescription's trace"
    assert stored is not None and int(stored[TRACEPARENT].split("-")[1], 16) == prescription_trace

    spans = exporter.get_finished_spans()
    handled_reports = [
        s
        for s in spans
        if s.name == f"{topics.COURIER_UPDATES.name} process"
        and s.attributes.get("messaging.message.conversation_id") == rx
    ]
    assert len(handled_reports) == len(reports)
    assert all(s.parent is None and s.context.trace_id != prescription_trace for s in handled_reports)
    continued = [
        s for s in spans if s.name == "courier_deliveries decide" and s.attributes.get("pharmacy.document.id") == rx
    ]
    assert all(s.context.trace_id == prescription_trace for s in continued)
    linked = {link.context.span_id for s in continued for link in s.links}
    assert {s.context.span_id for s in handled_reports} <= linked, "each report's own span is linked to its work"


async def test_a_courier_reads_their_own_trips_from_the_gateway_and_nobody_elses(settings: RuntimeSettings) -> None:
    key = f"gateway-{uuid4().hex}"
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    client = connect(settings.mongo_url.get_secret_value())
    storage = CourierStorage(client[settings.mongo_database])
    rx = f"RX-K-GATE-{uuid4().hex[:6]}"
    try:
        await seed(storage)
        service = service_settings(
            settings, courier_gateway_key=key, http_enabled=True, http_host="127.0.0.1", http_port=port
        )
        async with (
            running(create_app(service)),
            TopicWatch(settings.kafka_bootstrap_servers, *WATCHED) as watch,
        ):
            await bus.publish(settings, approval(rx), reserved(rx, "WH-K-1"))
            await watch.wait_for(lambda w: offers(w, rx), f"the dispatch of {rx}")
            (_, offer), *_ = offers(watch, rx)
            holder = offer.courier_id
            other = next(c.courier_id for c in ROSTER if c.courier_id != holder)

            def trips(courier_id: str, token: str) -> tuple[int, dict[str, Any]]:
                request = urllib.request.Request(
                    f"{gateway}/couriers/{courier_id}/trips", headers={"Authorization": f"Bearer {token}"}
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        return response.status, json.load(response)
                except urllib.error.HTTPError as error:
                    return error.code, json.load(error)

            mine = await asyncio.to_thread(trips, holder, courier_token(key.encode(), holder))
            theirs = await asyncio.to_thread(trips, other, courier_token(key.encode(), other))
            forged = await asyncio.to_thread(trips, holder, courier_token(key.encode(), other))
            # The same through the command line: the dispatcher issues the token, the courier reads.
            as_dispatcher = {"PHARMACY_COURIER_GATEWAY_KEY": key}
            issued = CliRunner().invoke(cli.app, ["couriers", "token", holder], env=as_dispatcher)
            on_screen = await asyncio.to_thread(
                CliRunner().invoke,
                cli.app,
                ["courier", "trips", holder, "--gateway", gateway, "--token", issued.output.strip()],
                env={"COLUMNS": "200"},
            )
    finally:
        client.close()

    status, body = mine
    assert status == 200
    (trip,) = [t for t in body["trips"] if t["package_id"] == rx]
    assert (trip["dispatch_id"], trip["state"]) == (offer.dispatch_id, "offered")
    assert trip["contact_phone"] == offer.contact_phone
    assert rx not in json.dumps(theirs[1]), "another courier never sees the trip"
    assert forged[0] == 401 and rx not in json.dumps(forged[1])
    assert issued.exit_code == 0 and issued.output.strip() == courier_token(key.encode(), holder)
    assert on_screen.exit_code == 0, on_screen.output
    assert f"{offer.dispatch_id} offered" in on_screen.output
