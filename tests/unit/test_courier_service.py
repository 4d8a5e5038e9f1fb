"""The courier service's use cases on the in-memory store: delivery details, reservations, offers,
cancellations, couriers' reports and the sweep, each a batch at a time, in milliseconds. The real
broker and database are in tests/integration/test_courier_service.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from services.courier.domain import CourierProfile, Delivery, DeliveryState, Policy
from services.courier.service import CourierService, refused_report_answer
from services.courier.storage import CourierStorage
from services.runtime.delivery_codes import delivery_code
from services.runtime.relay import outbox_entry
from services.runtime.store import DocumentMemory, MemoryStore
from services.runtime.unit_of_work import Handled, Outcome, Record, UnitOfWork
from tests.support import stand_ins
from tests.support.stand_ins import Clock
from tests.unit import builders as b

CODE_KEY = b"courier-test-key"
ACCEPT = timedelta(minutes=15)
POLICY = Policy(max_attempts=2, accept_timeout=ACCEPT, courier_wait_deadline=timedelta(hours=4))
NEAR = b.WAREHOUSE_AT
FAR = (50.61, 70.02)  # ~140 km away


def kind(message_type: type[Envelope]) -> str:
    return str(message_type.model_fields["type"].default)


OFFERED, ASSIGNED, WAITING = kind(c.DispatchOffered), kind(c.CourierAssigned), kind(c.DeliveryWaiting)
WITHDRAWN, CANCELLED = kind(c.DispatchWithdrawn), kind(c.DeliveryCancelled)


class Storage(CourierStorage):
    """CourierStorage's repository over in-memory stores (its queries beyond the Store protocol too)."""

    def __init__(self) -> None:
        # With the options production has (storage.py): no applied-id list, every id kept on the delivery.
        self.deliveries = MemoryStore(  # type: ignore[assignment]
            "courier_deliveries",
            Delivery,
            keeps_trace=True,
            keeps_every_message=True,
            remembers_commands=False,
            memory=DocumentMemory(presumes_new=True),
        )
        self.roster = MemoryStore("courier_roster", CourierProfile)  # type: ignore[assignment]
        self.roster_reads = 0

    async def couriers(self) -> list[CourierProfile]:
        self.roster_reads += 1
        return await super().couriers()

    async def loads(self, couriers: Any) -> dict[str, int]:
        held = [s.state.active_courier_id for s in await self.deliveries.all() if s.state is not None]
        return {courier.courier_id: held.count(courier.courier_id) for courier in couriers}

    async def open_deliveries(self) -> list[Delivery]:
        from services.courier.domain import SWEPT

        return [d for d in await self.all_deliveries() if d.state in SWEPT]

    async def waiting_deliveries(self) -> list[Delivery]:
        return [d for d in await self.all_deliveries() if d.state is DeliveryState.AWAITING_COURIER]

    @property
    def store(self) -> MemoryStore[Delivery]:
        return self.deliveries  # type: ignore[return-value]

    def delivery_of(self, rx: str) -> Delivery:
        delivery = self.store.state_of(rx)
        assert delivery is not None, rx
        return delivery


class Published(stand_ins.Published):
    def offers(self, rx: str) -> list[dict[str, Any]]:
        return self.bodies(rx, OFFERED)


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def clock() -> Clock:
    return Clock(b.at(10))


def make_service(storage: Storage, published: Published, clock: Clock, policy: Policy = POLICY) -> CourierService:
    return CourierService(
        storage,
        UnitOfWork(published, outbox_entry),
        policy=policy,
        roster_refresh_s=3600,
        code_key=CODE_KEY,
        clock=clock,
    )


@pytest.fixture
def service(storage: Storage, published: Published, clock: Clock) -> CourierService:
    return make_service(storage, published, clock)


async def roster(storage: Storage, *couriers: CourierProfile) -> None:
    for courier in couriers:
        await storage.save_courier(courier)


def records(*messages: Envelope) -> list[Record[Any]]:
    return [Record(m) for m in messages]


def outcomes(handled: Sequence[Handled[Any]]) -> list[Outcome]:
    return [h.outcome for h in handled]


def approved(rx: str, **details: Any) -> Any:
    message = b.approved(prescription_id=rx)
    if details:
        delivery = message.delivery.model_copy(update=details)
        message = message.model_copy(update={"delivery": delivery})
    return message


def reserved(rx: str, warehouse_id: str = "WH-1") -> Any:
    return b.reserved(prescription_id=rx, warehouse_id=warehouse_id)


def report(rx: str, status: str, published: Published, *, courier_id: str | None = None, **fields: Any) -> Any:
    """A report on the latest dispatch offered for `rx`, by its courier unless told otherwise."""
    offer = published.offers(rx)[-1]
    return b.make_report(
        dispatch_id=offer["dispatch_id"],
        courier_id=courier_id or offer["courier_id"],
        status=status,
        package_id=rx,
        correlation_id=rx,
        **{"message_id": str(uuid4()), **fields},
    )


def right_code(rx: str) -> str:
    return delivery_code(CODE_KEY, rx)


async def offered(service: CourierService, *rxs: str) -> None:
    """Each prescription approved and its stock reserved: a batch each from the two consumers."""
    await service.on_decision(records(*(approved(rx) for rx in rxs)))
    await service.on_inventory_event(records(*(reserved(rx) for rx in rxs)))


# --- what the delivery waits for, and the offer ------------------------------------------------------


async def test_details_then_reservation_offer_the_delivery_to_the_nearest_courier(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-FAR", base=FAR), b.make_courier("CUR-NEAR", base=NEAR))
    details = await service.on_decision(records(approved("RX-1")))
    assert outcomes(details) == [Outcome.APPLIED]
    waiting = storage.delivery_of("RX-1")
    assert waiting.state is DeliveryState.WAITING and waiting.details is not None and published.of("RX-1") == []

    stock = reserved("RX-1")
    assert outcomes(await service.on_inventory_event(records(stock))) == [Outcome.APPLIED]

    assert published.of("RX-1") == [ASSIGNED, OFFERED]
    (offer,) = published.offers("RX-1")
    assert (offer["courier_id"], offer["dispatch_id"], offer["causation_id"]) == (
        "CUR-NEAR",
        "RX-1-D1",
        stock.message_id,
    )
    delivery = storage.delivery_of("RX-1")
    assert delivery.state is DeliveryState.OFFERED and delivery.active_courier_id == "CUR-NEAR"


async def test_the_reservation_first_then_the_details_offer_it_once_in_one_batch(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await service.on_inventory_event(records(reserved("RX-1")))
    assert storage.delivery_of("RX-1").warehouse_id == "WH-1" and published.of("RX-1") == []

    approval = approved("RX-1")
    again = approval.model_copy(update={"message_id": "MSG-SENT-AGAIN"})
    handled = await service.on_decision(records(approval, approval, again))

    assert outcomes(handled) == [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.UNCHANGED]
    assert published.of("RX-1") == [ASSIGNED, OFFERED]


async def test_among_couriers_equally_near_the_least_loaded_is_offered(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-A"), b.make_courier("CUR-B"))
    storage.store.put("RX-HELD", b.make_delivery(prescription_id="RX-HELD", state="offered", active_courier_id="CUR-A"))

    await offered(service, "RX-1")

    assert published.offers("RX-1")[0]["courier_id"] == "CUR-B"


async def test_cold_goods_go_to_a_cold_chain_courier_however_far(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-NEAR", base=NEAR), b.make_courier("CUR-COLD", base=FAR, cold_chain=True))
    await service.on_decision(records(approved("RX-1", cold_chain=True)))
    await service.on_inventory_event(records(reserved("RX-1")))

    assert published.offers("RX-1")[0]["courier_id"] == "CUR-COLD"


async def test_offers_of_one_batch_respect_a_couriers_capacity_and_the_rest_wait(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=2))
    await service.on_decision(records(*(approved(f"RX-{i}") for i in range(3))))

    handled = await service.on_inventory_event(records(*(reserved(f"RX-{i}") for i in range(3))))

    assert outcomes(handled) == [Outcome.APPLIED] * 3
    assert [published.of(f"RX-{i}") for i in range(3)] == [[ASSIGNED, OFFERED], [ASSIGNED, OFFERED], [WAITING]]
    assert storage.delivery_of("RX-2").state is DeliveryState.AWAITING_COURIER
    (waiting,) = published.bodies("RX-2", WAITING)
    assert "carrying as many deliveries as they can" in waiting["why"]


async def test_a_batch_of_offers_takes_a_few_round_trips(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=50))
    await service.on_decision(records(approved("RX-WARM")))
    await service.on_decision(records(*(approved(f"RX-{i}") for i in range(20))))
    before, reads = storage.store.round_trips, storage.roster_reads

    await service.on_inventory_event(records(*(reserved(f"RX-{i}") for i in range(20))))

    assert all(published.offers(f"RX-{i}") for i in range(20))
    # the deliveries are in memory (written a moment ago) and keep their own message ids: one save, not 20
    assert storage.store.round_trips - before == 1
    assert storage.roster_reads == reads, "the roster and loads come from the cache"


async def test_a_failed_reservation_closes_a_delivery_still_waiting_for_it(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await service.on_decision(records(approved("RX-1")))
    handled = await service.on_inventory_event(records(b.reservation_failed(prescription_id="RX-1")))

    assert outcomes(handled) == [Outcome.APPLIED]
    assert storage.delivery_of("RX-1").state is DeliveryState.CANCELLED
    assert published.of("RX-1") == []


async def test_events_of_other_kinds_on_the_topics_are_let_through_untouched(
    service: CourierService, storage: Storage
) -> None:
    handled = await service.on_decision(records(b.rejected(prescription_id="RX-1"), b.cancelled(was_approved=False)))
    handled += await service.on_inventory_event(records(b.restocked()))

    assert outcomes(handled) == [Outcome.UNCHANGED] * 3
    assert await storage.all_deliveries() == []


# --- cancellation -----------------------------------------------------------------------------------


async def test_a_cancellation_before_the_reservation_tells_the_warehouse_once_it_is_known(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await service.on_decision(records(approved("RX-1"), b.cancelled(prescription_id="RX-1")))
    assert storage.delivery_of("RX-1").state is DeliveryState.CANCELLED and published.of("RX-1") == []

    await service.on_inventory_event(records(reserved("RX-1", "WH-9")))

    assert published.of("RX-1") == [CANCELLED], "never offered"
    (notice,) = published.bodies("RX-1", CANCELLED)
    assert (notice["warehouse_id"], notice["goods_returned"]) == ("WH-9", False)


async def test_a_cancellation_while_waiting_for_a_courier_closes_it_at_once(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await offered(service, "RX-1")  # no courier on the roster: it waits

    await service.on_decision(records(b.cancelled(prescription_id="RX-1")))

    assert published.of("RX-1") == [WAITING, CANCELLED]
    assert storage.delivery_of("RX-1").state is DeliveryState.CANCELLED


async def test_a_cancellation_of_an_offer_withdraws_it_and_frees_the_courier(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=1))
    await offered(service, "RX-1", "RX-2")
    assert published.of("RX-2") == [WAITING]

    await service.on_decision(records(b.cancelled(prescription_id="RX-1")))
    await service.sweep()  # the waiting pass a freed courier asks for

    assert published.of("RX-1") == [ASSIGNED, OFFERED, WITHDRAWN, CANCELLED]
    (withdrawn,) = published.bodies("RX-1", WITHDRAWN)
    assert (withdrawn["reason"], withdrawn["return_goods"]) == ("cancelled", False)
    assert published.offers("RX-2")[0]["courier_id"] == "CUR-1", "the freed courier takes the waiting delivery"


async def test_a_cancellation_after_acceptance_recalls_the_courier_until_they_return(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1")
    await service.on_report(records(report("RX-1", "accepted", published)))

    await service.on_decision(records(b.cancelled(prescription_id="RX-1")))
    recalled = storage.delivery_of("RX-1")
    await service.on_report(records(report("RX-1", "returned", published)))

    assert recalled.state is DeliveryState.RETURNING and recalled.active_courier_id == "CUR-1"
    assert published.of("RX-1")[-2:] == [WITHDRAWN, CANCELLED]
    assert published.bodies("RX-1", WITHDRAWN)[0]["return_goods"] is True
    assert storage.delivery_of("RX-1").state is DeliveryState.CANCELLED


async def test_a_cancellation_after_delivery_is_too_late(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1")
    await service.on_report(
        records(
            report("RX-1", "picked_up", published),
            report("RX-1", "delivered", published, delivery_code=right_code("RX-1")),
        )
    )
    handled = await service.on_decision(records(b.cancelled(prescription_id="RX-1")))

    assert outcomes(handled) == [Outcome.UNCHANGED]
    assert storage.delivery_of("RX-1").state is DeliveryState.DELIVERED


# --- couriers' reports -------------------------------------------------------------------------------


async def test_reports_take_a_delivery_to_the_patient_with_the_right_code_only(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1")
    steps = [
        report("RX-1", "accepted", published),
        report("RX-1", "picked_up", published),
        report("RX-1", "delivered", published, delivery_code="000000"),
        report("RX-1", "delivered", published, delivery_code=right_code("RX-1")),
    ]
    assert right_code("RX-1") != "000000"
    before = storage.store.round_trips

    handled = await service.on_report(records(*steps))

    assert outcomes(handled) == [Outcome.APPLIED] * 4
    # the delivery in memory, its own ids kept on it: saved once for the four
    assert storage.store.round_trips - before == 1
    assert published.of("RX-1")[2:] == [
        kind(c.DeliveryAccepted),
        kind(c.DeliveryPickedUp),
        kind(c.DeliveryCodeRejected),
        kind(c.DeliveryCompleted),
    ]
    delivery = storage.delivery_of("RX-1")
    assert delivery.state is DeliveryState.DELIVERED and delivery.active_courier_id is None
    # The courier hears each outcome: the wrong code at the door, then the delivery.
    answers = [(a["answers_message_id"], a["outcome"], a["code"]) for a in published.answers("RX-1")]
    assert answers == [
        (steps[0].message_id, "applied", None),
        (steps[1].message_id, "applied", None),
        (steps[2].message_id, "refused", "wrong_code"),
        (steps[3].message_id, "applied", None),
    ]
    assert all(a["courier_id"] == "CUR-1" for a in published.answers("RX-1"))


async def test_a_failure_is_retried_with_another_courier_then_given_up(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"), b.make_courier("CUR-2", base=FAR))
    await offered(service, "RX-1")
    first = report("RX-1", "failed", published, failure_reason="patient_absent")

    assert outcomes(await service.on_report(records(first))) == [Outcome.APPLIED]
    retry = published.offers("RX-1")[-1]
    assert (retry["courier_id"], retry["attempt"], retry["causation_id"]) == ("CUR-2", 2, first.message_id)

    given_up = report("RX-1", "failed", published, failure_reason="patient_absent")
    await service.on_report(records(given_up))

    assert published.of("RX-1")[-2:] == [kind(c.DeliveryFailed), kind(c.DeliveryAbandoned)]
    assert storage.delivery_of("RX-1").state is DeliveryState.UNDELIVERABLE
    assert len(published.offers("RX-1")) == 2


async def test_reports_by_another_courier_or_on_no_delivery_are_refused(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1")
    before = storage.delivery_of("RX-1")
    forged = report("RX-1", "accepted", published, courier_id="CUR-INTRUDER")
    unknown = b.make_report(
        dispatch_id="RX-NONE-D1", courier_id="CUR-1", package_id="RX-NONE", correlation_id="RX-NONE"
    )

    handled = await service.on_report(records(forged, unknown))

    assert outcomes(handled) == [Outcome.REFUSED, Outcome.REFUSED]
    assert [h.refusal.code for h in handled if h.refusal] == ["not_your_dispatch", "unknown_package"]
    assert storage.delivery_of("RX-1") == before
    assert storage.store.state_of("RX-NONE") is None


async def test_a_report_sent_again_after_hundreds_of_others_is_not_applied_twice(
    storage: Storage, published: Published, clock: Clock
) -> None:
    """Wrong codes count each report: one counted twice would show. The delivery remembers the id
    of every message it absorbed, not only the last few hundred (`keeps_every_message`)."""
    service = make_service(storage, published, clock, Policy(max_wrong_codes=10_000))
    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1")
    await service.on_report(records(report("RX-1", "picked_up", published)))
    wrong = report("RX-1", "delivered", published, delivery_code="000000")
    await service.on_report(records(wrong))
    others = [report("RX-1", "delivered", published, delivery_code="000000") for _ in range(520)]
    for start in range(0, len(others), 100):
        await service.on_report(records(*others[start : start + 100]))
    counted = storage.delivery_of("RX-1").attempts[-1].wrong_codes

    handled = await service.on_report(records(wrong))

    assert counted == 521
    assert outcomes(handled) == [Outcome.DUPLICATE]
    assert storage.delivery_of("RX-1").attempts[-1].wrong_codes == 521


# --- isolation: a write that fails, a race that is lost ----------------------------------------------


async def test_a_failing_write_fails_only_its_own_delivery_and_its_offer_is_not_counted(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=2))
    await service.on_decision(records(*(approved(rx) for rx in ("RX-A", "RX-B", "RX-C"))))
    storage.store.fail_writes_of("RX-A")

    handled = await service.on_inventory_event(records(reserved("RX-A"), reserved("RX-B")))

    assert outcomes(handled) == [Outcome.FAILED, Outcome.APPLIED]
    assert storage.delivery_of("RX-A").warehouse_id is None and published.of("RX-A") == []
    assert storage.delivery_of("RX-B").state is DeliveryState.OFFERED
    # RX-A's offer was never written: the courier still has room for one more.
    await service.on_inventory_event(records(reserved("RX-C")))
    assert published.offers("RX-C")[0]["courier_id"] == "CUR-1"


async def test_a_delivery_decided_again_after_a_lost_race_counts_its_offer_once(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=2))
    await service.on_decision(records(*(approved(rx) for rx in ("RX-A", "RX-B", "RX-C"))))
    storage.store.let_another_writer_win("RX-A")

    handled = await service.on_inventory_event(records(reserved("RX-A"), reserved("RX-B")))
    await service.on_inventory_event(records(reserved("RX-C")))

    assert outcomes(handled) == [Outcome.APPLIED, Outcome.APPLIED]
    assert [published.of(rx) for rx in ("RX-A", "RX-B")] == [[ASSIGNED, OFFERED]] * 2
    assert published.of("RX-C") == [WAITING], "two offers counted, not three"


class HeldSaves(MemoryStore[Delivery]):
    """Deliveries whose next save waits until the test lets it go: a batch in flight."""

    def __init__(self) -> None:
        super().__init__("courier_deliveries", Delivery, keeps_trace=True)
        self.holding: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def save(self, saves: Any) -> Any:
        if self.holding is not None:
            holding, self.holding = self.holding, None
            self.waiting.set()
            await holding.wait()
        return await super().save(saves)


async def test_batches_in_flight_together_see_each_others_offers(
    storage: Storage, published: Published, clock: Clock
) -> None:
    deliveries = storage.deliveries = HeldSaves()
    service = make_service(storage, published, clock)
    await roster(storage, b.make_courier("CUR-1", capacity=1))
    await service.on_decision(records(approved("RX-A"), approved("RX-B")))
    deliveries.holding = release = asyncio.Event()

    first = asyncio.create_task(service.on_inventory_event(records(reserved("RX-A"))))
    await deliveries.waiting.wait()  # the first batch's offer is decided, its save waits
    await service.on_inventory_event(records(reserved("RX-B")))
    release.set()
    await first

    assert published.of("RX-A") == [ASSIGNED, OFFERED]
    assert published.of("RX-B") == [WAITING], "the only place was taken by the batch in flight"


# --- the sweep -----------------------------------------------------------------------------------------


async def test_an_offer_not_accepted_in_time_goes_to_the_next_courier(
    service: CourierService, storage: Storage, published: Published, clock: Clock
) -> None:
    await roster(storage, b.make_courier("CUR-1"), b.make_courier("CUR-2", base=FAR))
    await offered(service, "RX-1")
    clock.now += ACCEPT - timedelta(microseconds=1)
    await service.sweep()
    assert len(published.offers("RX-1")) == 1

    clock.now += timedelta(microseconds=1)
    await service.sweep()
    await service.sweep()  # again: nothing more to do

    assert published.of("RX-1")[2:] == [kind(c.DeliveryOfferExpired), WITHDRAWN, ASSIGNED, OFFERED]
    assert [o["courier_id"] for o in published.offers("RX-1")] == ["CUR-1", "CUR-2"]
    delivery = storage.delivery_of("RX-1")
    assert delivery.active_courier_id == "CUR-2" and delivery.attempts[0].status == "timed_out"


async def test_a_passed_deadline_is_alerted_once(
    service: CourierService, storage: Storage, published: Published, clock: Clock
) -> None:
    await service.on_decision(records(approved("RX-1")))  # the reservation never comes
    clock.now += timedelta(hours=4)

    await service.sweep()
    await service.sweep()

    (overdue,) = published.bodies("RX-1", kind(c.DeliveryOverdue))
    assert overdue["stage"] == "awaiting_stock"
    assert storage.delivery_of("RX-1").stock_overdue_alerted


async def test_a_delivered_package_frees_its_courier_for_a_waiting_delivery(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=1))
    await offered(service, "RX-1", "RX-2")
    assert published.of("RX-2") == [WAITING]
    await service.on_report(
        records(
            report("RX-1", "picked_up", published),
            report("RX-1", "delivered", published, delivery_code=right_code("RX-1")),
        )
    )
    await service.stop()  # the background look a freed courier asks for is the sweep's here

    await service.sweep()

    assert published.offers("RX-2")[0]["courier_id"] == "CUR-1"


# --- an address without coordinates waits for a dispatcher -------------------------------------------


def unlocated(rx: str) -> Any:
    message = approved(rx)
    address = message.delivery.address.model_copy(update={"coordinates": None})
    return approved(rx, address=address, contact_phone=None)


def placed(rx: str, latitude: float, longitude: float, message_id: str | None = None) -> c.AddressLocated:
    return c.AddressLocated(
        message_id=message_id or str(uuid4()),
        correlation_id=rx,
        producer="dispatcher-cli",
        prescription_id=rx,
        coordinates={"latitude": latitude, "longitude": longitude},
        located_by="DSP-1",
    )


async def test_an_address_without_coordinates_waits_for_a_dispatcher_then_is_offered_with_its_place(
    service: CourierService, storage: Storage, published: Published, clock: Clock
) -> None:
    await roster(storage, b.make_courier("CUR-FAR", base=FAR), b.make_courier("CUR-NEAR", base=NEAR))
    await service.on_decision(records(unlocated("RX-1")))
    await service.on_inventory_event(records(reserved("RX-1")))

    assert published.of("RX-1") == [kind(c.DeliveryWaiting)], "no courier is sent looking"
    (waiting,) = published.bodies("RX-1", kind(c.DeliveryWaiting))
    assert "no map location" in waiting["why"] and "pharmacy dispatch locate RX-1" in waiting["why"]
    await service.sweep()
    assert published.offers("RX-1") == [], "the waiting pass does not offer it either"

    clock.now += timedelta(hours=4)
    await service.sweep()
    (overdue,) = published.bodies("RX-1", kind(c.DeliveryOverdue))
    assert overdue["stage"] == "awaiting_courier", "a dispatcher who has not placed it is alerted"

    handled = await service.on_dispatcher(records(placed("RX-1", *FAR)))
    assert outcomes(handled) == [Outcome.APPLIED]
    (offer,) = published.offers("RX-1")
    assert offer["address"]["coordinates"] == {"latitude": FAR[0], "longitude": FAR[1]}
    assert offer["contact_phone"] is None


async def test_placing_an_unknown_or_finished_delivery_is_refused_and_placing_twice_changes_nothing(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", base=NEAR))
    (unknown,) = await service.on_dispatcher(records(placed("RX-NONE", 51.0, 69.0)))
    assert (unknown.outcome, unknown.refusal.code if unknown.refusal else None) == (Outcome.REFUSED, "not_known")

    await service.on_decision(records(unlocated("RX-2")))
    await service.on_inventory_event(records(reserved("RX-2")))
    point = placed("RX-2", *NEAR)
    assert outcomes(await service.on_dispatcher(records(point))) == [Outcome.APPLIED]
    again = placed("RX-2", *NEAR)
    assert outcomes(await service.on_dispatcher(records(again))) == [Outcome.UNCHANGED]
    assert len(published.offers("RX-2")) == 1


def test_a_courier_hears_why_a_signed_report_was_refused_and_a_forger_hears_nothing():
    body = b'{"dispatch_id": "RX-1-D9", "courier_id": "CUR-2"}'
    headers = {"x-sender-id": "CUR-2", "message-id": "MSG-R1"}
    answer = refused_report_answer(headers, body, b"RX-1", "not_your_dispatch", "dispatch RX-1-D9 is another's")
    assert answer is not None
    assert (answer.courier_id, answer.dispatch_id, answer.answers_message_id, answer.code) == (
        "CUR-2",
        "RX-1-D9",
        "MSG-R1",
        "not_your_dispatch",
    )
    assert refused_report_answer(headers, body, b"RX-1", "bad_signature", "forged") is None


# --- a lot recall ---------------------------------------------------------------------------------------


def lot_recalled(rx: str, status: str) -> Any:
    example = inv.PrescriptionRecalled.model_json_schema()["examples"][0]
    return inv.PrescriptionRecalled.model_validate(
        {**example, "message_id": str(uuid4()), "correlation_id": rx, "prescription_id": rx, "status": status}
    )


async def test_a_package_on_the_road_with_a_recalled_lot_is_called_back_and_comes_back_cancelled(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1")
    await service.on_report(records(report("RX-1", "accepted", published)))
    await service.on_report(records(report("RX-1", "picked_up", published)))

    await service.on_inventory_event(records(lot_recalled("RX-1", "on_the_road")))
    assert storage.delivery_of("RX-1").state is DeliveryState.RETURNING
    [withdrawn] = published.bodies("RX-1", WITHDRAWN)
    assert (withdrawn["reason"], withdrawn["return_goods"]) == ("recalled", True)

    await service.on_report(records(report("RX-1", "returned", published)))
    assert storage.delivery_of("RX-1").state is DeliveryState.CANCELLED
    assert published.bodies("RX-1", CANCELLED)[-1]["goods_returned"] is True, "inventory quarantines them"


async def test_an_offer_whose_reservation_the_recall_withdrew_is_withdrawn_and_a_delivered_lot_changes_nothing(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1", "RX-2")

    handled = await service.on_inventory_event(
        records(lot_recalled("RX-1", "withdrawn"), lot_recalled("RX-2", "delivered"))
    )

    assert outcomes(handled) == [Outcome.APPLIED, Outcome.UNCHANGED]
    assert storage.delivery_of("RX-1").state is DeliveryState.CANCELLED
    assert published.bodies("RX-1", WITHDRAWN)[0]["reason"] == "recalled"
    assert storage.delivery_of("RX-2").state is DeliveryState.OFFERED


def _inventory_says(cls: Any, rx: str, **fields: Any) -> Any:
    example = cls.model_json_schema()["examples"][0]
    return cls.model_validate(
        {
            **example,
            "message_id": str(uuid4()),
            "correlation_id": rx,
            "prescription_id": rx,
            "warehouse_id": "WH-1",
            **fields,
        }
    )


async def test_a_damaged_package_waits_to_be_packed_again_then_goes_out_again(
    service: CourierService, storage: Storage, published: Published
) -> None:
    from pharmacy_contracts import inventory as inv

    await roster(storage, b.make_courier("CUR-1"), b.make_courier("CUR-2"))
    await offered(service, "RX-1")
    await service.on_report(records(report("RX-1", "picked_up", published)))

    await service.on_report(records(report("RX-1", "failed", published, failure_reason="damaged")))
    waiting = storage.delivery_of("RX-1")
    assert waiting.state is DeliveryState.WAITING and waiting.repack_pending
    (failed,) = published.bodies("RX-1", kind(c.DeliveryFailed))
    assert (failed["reason"], failed["will_retry"]) == ("damaged", True)
    assert len(published.offers("RX-1")) == 1, "not offered before it is packed again"

    handled = await service.on_inventory_event(records(_inventory_says(inv.StockRepacked, "RX-1")))

    assert outcomes(handled) == [Outcome.APPLIED]
    assert [o["attempt"] for o in published.offers("RX-1")] == [1, 2]
    assert not storage.delivery_of("RX-1").repack_pending


async def test_a_damaged_package_the_warehouse_cannot_pack_again_is_given_up(
    service: CourierService, storage: Storage, published: Published
) -> None:
    from pharmacy_contracts import inventory as inv

    await roster(storage, b.make_courier("CUR-1"))
    await offered(service, "RX-1")
    await service.on_report(records(report("RX-1", "failed", published, failure_reason="damaged")))
    not_again = _inventory_says(inv.StockQuarantined, "RX-1", why="damaged", packed_again=False)
    undeliverable = _inventory_says(inv.StockQuarantined, "RX-2", why="undeliverable")

    assert outcomes(await service.on_inventory_event(records(not_again, undeliverable))) == [
        Outcome.APPLIED,
        Outcome.UNCHANGED,
    ]

    assert storage.delivery_of("RX-1").state is DeliveryState.UNDELIVERABLE
    (given_up,) = published.bodies("RX-1", kind(c.DeliveryAbandoned))
    assert (given_up["last_reason"], given_up["goods_travelled"]) == ("damaged", False)
    assert len(published.offers("RX-1")) == 1
