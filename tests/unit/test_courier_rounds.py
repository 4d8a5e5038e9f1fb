"""Delivery rounds in the courier service, on the in-memory store: deliveries wait for the round
planner; a plan offers each stop to its van's courier with its place and time, and tells the round
once; a delivery ready before the round leaves joins it; a round that left takes nobody; the
courier's reports work per stop. The planner here is a stand-in (stops in id order, the first van
with room); the real one (PyVRP) is tested in test_rounds.py and wired in test_rounds_wiring.py."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from pharmacy_contracts import courier as c
from services.courier import round_pass
from services.courier.domain import Delivery, DeliveryState
from services.courier.service import CourierService, RoundsConfig
from services.runtime.relay import outbox_entry
from services.runtime.unit_of_work import UnitOfWork
from tests.support.stand_ins import Clock
from tests.unit import builders as b
from tests.unit.test_courier_service import (
    ASSIGNED,
    OFFERED,
    POLICY,
    WAITING,
    Published,
    Storage,
    approved,
    kind,
    records,
    report,
    reserved,
    roster,
)

ROUND = kind(c.RoundOffered)


class InIdOrder:
    """A stand-in planner: every delivery the vans can carry, in id order, ten minutes apart,
    filling the first van before the next; what no van can carry is left out."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], list[str]]] = []
        #: Deliveries no round can take (too far for a round, say).
        self.alone: set[str] = set()

    def __call__(
        self,
        depot: round_pass.Depot,
        vans: Sequence[round_pass.Van],
        deliveries: Sequence[Delivery],
        *,
        required: Collection[str],
        departs_at: datetime,
    ) -> round_pass.DepotPlan:
        self.calls.append(
            ([v.courier.courier_id for v in vans], [d.prescription_id for d in deliveries], sorted(required))
        )
        left = sorted((d for d in deliveries if d.prescription_id not in self.alone), key=lambda d: d.prescription_id)
        rounds = []
        for van in vans:
            fits = [d for d in left if van.courier.cold_chain or not d.cold_chain][: van.room]
            left = [d for d in left if d not in fits]
            if not fits:
                continue
            stops = tuple(
                round_pass.PlannedStop(d.prescription_id, departs_at + timedelta(minutes=10 * (i + 1)))
                for i, d in enumerate(fits)
            )
            rounds.append(
                round_pass.PlannedRound(
                    van.courier.courier_id, stops, departs_at, stops[-1].expected_at + timedelta(minutes=10), 42.0
                )
            )
        return round_pass.DepotPlan(rounds, sorted(self.alone & {d.prescription_id for d in deliveries}))


@pytest.fixture
def planner() -> InIdOrder:
    return InIdOrder()


@pytest.fixture
def service(storage: Storage, published: Published, clock: Clock, planner: InIdOrder) -> CourierService:
    return CourierService(
        storage,
        UnitOfWork(published, outbox_entry),
        policy=POLICY,
        roster_refresh_s=3600,
        code_key=b"courier-test-key",
        clock=clock,
        rounds=RoundsConfig(planner, cadence=timedelta(minutes=30), min_waiting=3),
    )


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def clock() -> Clock:
    return Clock(b.at(10))


async def ready(service: CourierService, *rxs: str, **details: Any) -> None:
    await service.on_decision(records(*(approved(rx, **details) for rx in rxs)))
    await service.on_inventory_event(records(*(reserved(rx) for rx in rxs)))


def rounds_told(published: Published) -> list[dict[str, Any]]:
    return [json.loads(e["body"]) for e in published.entries if e["type"] == ROUND]


async def test_with_rounds_a_ready_delivery_waits_for_the_planner_not_the_nearest_courier(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10))
    await ready(service, "RX-1")

    assert published.of("RX-1") == [WAITING]
    (waiting,) = published.bodies("RX-1", WAITING)
    assert waiting["why"] == "waiting for the next delivery round from WH-1"
    assert storage.delivery_of("RX-1").state is DeliveryState.AWAITING_COURIER


async def test_a_plan_offers_every_stop_with_its_place_and_time_and_tells_the_round_once_in_order(
    service: CourierService, storage: Storage, published: Published, clock: Clock
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10))
    await ready(service, "RX-3", "RX-1", "RX-2")  # three wait: a van's worth, planned at once

    await service.sweep()

    offers = {rx: published.offers(rx)[-1] for rx in ("RX-1", "RX-2", "RX-3")}
    assert [offers[rx]["stop"] for rx in ("RX-1", "RX-2", "RX-3")] == [1, 2, 3]
    assert {o["round_id"] for o in offers.values()} == {f"R-WH-1-CUR-1-{clock():%Y%m%dT%H%M%S}"}
    assert all(o["courier_id"] == "CUR-1" and o["expected_at"] for o in offers.values())
    (told,) = rounds_told(published)
    assert [s["package_id"] for s in told["stops"]] == ["RX-1", "RX-2", "RX-3"]
    assert [s["dispatch_id"] for s in told["stops"]] == [offers[rx]["dispatch_id"] for rx in ("RX-1", "RX-2", "RX-3")]
    assert told["courier_id"] == "CUR-1" and told["pickup_warehouse_id"] == "WH-1"
    assert all("name" not in s and "contact_phone" not in s for s in told["stops"])
    assert published.of("RX-2")[-2:] == [ASSIGNED, OFFERED]


async def test_a_single_waiting_delivery_is_planned_when_the_cadence_comes_round(
    service: CourierService, storage: Storage, published: Published, clock: Clock
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10))
    await ready(service, "RX-1")

    await service.sweep()
    assert published.offers("RX-1") == []

    clock.now += timedelta(minutes=30)
    await service.sweep()
    assert published.offers("RX-1")[-1]["stop"] == 1


async def test_a_delivery_ready_before_the_round_leaves_joins_it_and_the_stops_are_sent_again(
    service: CourierService, storage: Storage, published: Published, planner: InIdOrder
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10), b.make_courier("CUR-2", capacity=10))
    await ready(service, "RX-2", "RX-3", "RX-4")
    await service.sweep()
    round_id = published.offers("RX-2")[-1]["round_id"]
    await service.on_report(records(report("RX-2", "accepted", published)))

    await ready(service, "RX-1")  # before anything was picked up
    await service.sweep()

    assert planner.calls[-1] == (["CUR-1"], ["RX-2", "RX-3", "RX-4", "RX-1"], ["RX-2", "RX-3", "RX-4"])
    assert [published.offers(rx)[-1]["stop"] for rx in ("RX-1", "RX-2", "RX-3", "RX-4")] == [1, 2, 3, 4]
    assert {published.offers(rx)[-1]["round_id"] for rx in ("RX-1", "RX-2", "RX-3", "RX-4")} == {round_id}
    assert [o["dispatch_id"] for o in published.offers("RX-2")] == ["RX-2-D1", "RX-2-D1"], "the same dispatch"
    latest = rounds_told(published)[-1]
    assert [s["package_id"] for s in latest["stops"]] == ["RX-1", "RX-2", "RX-3", "RX-4"]
    assert storage.delivery_of("RX-2").state is DeliveryState.ACCEPTED, "the acceptance stands"


async def test_a_round_that_left_takes_nobody_more_the_next_round_does(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10), b.make_courier("CUR-2", capacity=10))
    await ready(service, "RX-2", "RX-3", "RX-4")
    await service.sweep()
    assert published.offers("RX-2")[-1]["courier_id"] == "CUR-1"
    await service.on_report(records(report("RX-2", "picked_up", published)))

    await ready(service, "RX-5", "RX-6", "RX-7")
    await service.sweep()

    assert {published.offers(rx)[-1]["courier_id"] for rx in ("RX-5", "RX-6", "RX-7")} == {"CUR-2"}
    assert len(published.offers("RX-3")) == 1, "the round on the road is not re-planned"


async def test_cold_goods_are_never_offered_to_a_van_without_a_cold_box(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-WARM", capacity=10))
    await ready(service, "RX-COLD", cold_chain=True)
    await ready(service, "RX-1", "RX-2")

    await service.sweep()

    assert published.offers("RX-COLD") == []
    assert storage.delivery_of("RX-COLD").state is DeliveryState.AWAITING_COURIER
    assert all(s["package_id"] != "RX-COLD" for r in rounds_told(published) for s in r["stops"])


async def test_a_failed_stop_waits_for_the_next_round_while_the_rest_of_the_round_goes_on(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10))
    await ready(service, "RX-1", "RX-2", "RX-3")
    await service.sweep()
    for rx in ("RX-1", "RX-2", "RX-3"):
        await service.on_report(records(report(rx, "picked_up", published)))

    await service.on_report(records(report("RX-1", "failed", published, failure_reason="patient_absent")))
    await service.on_report(records(report("RX-2", "delivered", published, delivery_code=_code("RX-2"))))

    assert storage.delivery_of("RX-1").state is DeliveryState.AWAITING_COURIER
    assert storage.delivery_of("RX-2").state is DeliveryState.DELIVERED
    assert storage.delivery_of("RX-3").state is DeliveryState.PICKED_UP


def _code(rx: str) -> str:
    from tests.unit.test_courier_service import right_code

    return right_code(rx)


async def test_a_delivery_no_round_can_take_goes_on_a_trip_of_its_own(
    service: CourierService, storage: Storage, published: Published, planner: InIdOrder
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10))
    planner.alone = {"RX-FAR"}
    await ready(service, "RX-FAR", "RX-1", "RX-2")

    await service.sweep()

    (alone,) = published.offers("RX-FAR")
    assert alone["round_id"] is None and alone["stop"] is None and alone["courier_id"] == "CUR-1"
    assert [published.offers(rx)[-1]["stop"] for rx in ("RX-1", "RX-2")] == [1, 2]


def _depot(depot_id: str, at: tuple[float, float], *waiting: Delivery, minute: int = 0) -> round_pass.Depot:
    since = b.at(minute)
    waits = tuple(d.model_copy(update={"awaiting_since": since}) for d in waiting)
    return round_pass.Depot(depot_id, at, waits, ())


def test_every_depot_due_gets_a_van_though_the_county_has_fewer_couriers_than_depots() -> None:
    north, south = (51.8, 69.4), (50.6, 70.0)
    home = b.make_courier("CUR-NORTH", base=north)
    cold = b.make_courier("CUR-COLD", base=north, cold_chain=True)
    warm = b.make_delivery(prescription_id="RX-W")
    chilled = b.make_delivery(prescription_id="RX-C", details=b.delivery_details(cold_chain=True))

    # South waited longest and has no courier of its own: it borrows the nearest; north keeps the other.
    depots = [_depot("WH-NORTH", north, warm, minute=5), _depot("WH-SOUTH", south, warm, minute=1)]
    shifts = round_pass.couriers_by_depot([home, cold], {}, depots, busy=set())
    assert {d: [p.courier_id for p in ps] for d, ps in shifts.items()} == {
        "WH-SOUTH": ["CUR-COLD"],
        "WH-NORTH": ["CUR-NORTH"],
    }

    # A cold-chain package waiting where no cold box is on shift borrows the cold-chain courier.
    depots = [_depot("WH-NORTH", north, warm, minute=1), _depot("WH-SOUTH", south, chilled, minute=5)]
    shifts = round_pass.couriers_by_depot([home, cold], {}, depots, busy=set())
    assert [p.courier_id for p in shifts["WH-SOUTH"]] == ["CUR-COLD"]

    # Nothing cold waits anywhere: the cold-chain courier, wanted nowhere else, works from home.
    depots = [_depot("WH-NORTH", north, warm, minute=1)]
    shifts = round_pass.couriers_by_depot([home, cold], {}, depots, busy=set())
    assert [p.courier_id for p in shifts["WH-NORTH"]] == ["CUR-NORTH", "CUR-COLD"]

    # Busy or full couriers are on no shift.
    shifts = round_pass.couriers_by_depot([home, cold], {"CUR-NORTH": 3}, depots, busy={"CUR-COLD"})
    assert shifts == {"WH-NORTH": []}


async def test_a_re_plan_that_fits_nobody_new_sends_nothing_again(
    service: CourierService, storage: Storage, published: Published
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=3))
    await ready(service, "RX-1", "RX-2", "RX-3")
    await service.sweep()
    told = len(rounds_told(published))

    await ready(service, "RX-9")  # the van is full: the planner leaves it out
    await service.sweep()

    assert [len(published.offers(rx)) for rx in ("RX-1", "RX-2", "RX-3")] == [1, 1, 1]
    assert len(rounds_told(published)) == told
    assert published.offers("RX-9") == []


async def test_a_round_nobody_accepted_goes_to_the_next_courier(
    service: CourierService, storage: Storage, published: Published, clock: Clock
) -> None:
    await roster(storage, b.make_courier("CUR-1", capacity=10), b.make_courier("CUR-2", capacity=10))
    await ready(service, "RX-1", "RX-2", "RX-3")
    await service.sweep()
    assert {published.offers(rx)[-1]["courier_id"] for rx in ("RX-1", "RX-2", "RX-3")} == {"CUR-1"}

    clock.now += POLICY.accept_timeout + timedelta(minutes=1)
    await service.sweep()  # the offers expire: the stops wait for the next plan
    await service.sweep()  # the planner would give them to CUR-1 again: they go to the next courier

    latest = [published.offers(rx)[-1] for rx in ("RX-1", "RX-2", "RX-3")]
    assert {o["courier_id"] for o in latest} == {"CUR-2"}
    assert all(o["attempt"] == 2 for o in latest)
