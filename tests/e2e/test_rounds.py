"""Delivery rounds on the real stack: the courier service plans each depot's waiting deliveries
into rounds (PyVRP), offers every stop with its place and time, tells the round on
courier.dispatch.v1, re-plans a round that has not left, and keeps reports, failures and
re-dispatch per stop. Each test has a depot and couriers of its own, far from the other tests'."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest

from pharmacy_contracts import courier as c
from pharmacy_contracts import topics
from pharmacy_contracts.geo import great_circle_km
from services.cli import bus
from services.runtime import delivery_codes
from services.runtime.settings import RuntimeSettings
from tests.support.scenario import (
    System,
    courier,
    drug,
    prescription_message,
    read_topic,
    unique,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service_env() -> dict[str, str]:
    # Rounds on; a depot is planned two seconds after its first delivery waits (or at once
    # when a round from there has not left yet); a short search.
    return {
        "PHARMACY_ROUNDS": "true",
        "PHARMACY_ROUNDS_CADENCE_S": "2",
        "PHARMACY_ROUNDS_MIN_DELIVERIES": "100",
        "PHARMACY_ROUNDS_PLAN_ITERATIONS": "300",
        "PHARMACY_ROUNDS_PLAN_TIME_LIMIT_S": "1",
    }


class Depot:
    """A depot of its own, somewhere no other test's couriers or warehouses are."""

    def __init__(self, latitude: float, longitude: float) -> None:
        self.at = (latitude, longitude)
        self.warehouse = unique("WH-R")

    def door(self, km_east: float) -> tuple[float, float]:
        return (self.at[0], self.at[1] + km_east / 78.0)  # ~78 km per degree of longitude here


def km_of(depot: tuple[float, float], doors: list[tuple[float, float]]) -> float:
    """A round's great-circle kilometres: depot, the doors in order, depot."""
    path = [depot, *doors, depot]
    return sum(great_circle_km(a, b) for a, b in itertools.pairwise(path))


async def dispatch_messages(settings: RuntimeSettings, package_ids: Iterable[str]) -> list[dict[str, Any]]:
    wanted = set(package_ids)
    found: dict[str, dict[str, Any]] = {}
    for record in await read_topic(settings, topics.COURIER_DISPATCH.name, idle_s=0.5):
        body = json.loads(record.value)
        packages = {body.get("package_id")} | {s["package_id"] for s in body.get("stops", [])}
        if packages & wanted:
            found.setdefault(body["message_id"], body)
    return list(found.values())


async def latest_round(
    settings: RuntimeSettings, package_ids: Iterable[str], stops: int, *, after: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The latest plan of the round that carries these packages, once it has `stops` stops (and
    is another round than `after`)."""
    wanted = set(package_ids)
    latest: dict[str, Any] = {}

    async def planned() -> bool:
        nonlocal latest
        rounds = [
            m
            for m in await dispatch_messages(settings, wanted)
            if m["type"] == "courier.round_offered"
            and {s["package_id"] for s in m["stops"]} & wanted
            and (after is None or m["round_id"] != after["round_id"])
        ]
        if rounds:
            latest = max(rounds, key=lambda m: m["planned_at"])
        return bool(rounds) and len(latest["stops"]) >= stops

    await wait_until(planned, lambda: f"a round of {stops} stops for {sorted(wanted)} (latest: {latest})", 90)
    return latest


async def report(system: System, stop: dict[str, Any], courier_id: str, status: str, **fields: Any) -> None:
    await bus.publish(
        system.settings,
        c.CourierReported(
            correlation_id=stop["package_id"],
            producer=f"courier-app-{courier_id}",
            dispatch_id=stop["dispatch_id"],
            courier_id=courier_id,
            package_id=stop["package_id"],
            status=status,
            **fields,
        ),
    )


def code_of(system: System, rx: str) -> str:
    key = system.settings.delivery_code_key
    assert key is not None
    return delivery_codes.delivery_code(key.get_secret_value().encode(), rx)


async def seeded(system: System, depot: Depot, *couriers: Any, cold: bool = False) -> tuple[str, str]:
    warm, chilled = unique("DR"), unique("DC")
    await system.seed(
        formulary=[drug(warm), drug(chilled, cold_chain=True)],
        couriers=couriers,
        stock=[(depot.warehouse, warm, 500), (depot.warehouse, chilled, 500)],
        locations={depot.warehouse: depot.at},
    )
    return warm, chilled


async def test_a_round_of_several_stops_is_offered_in_order_and_delivered_stop_by_stop(system: System) -> None:
    depot = Depot(44.0, 84.0)
    van = courier("Rustam", at=depot.at, capacity=6)
    warm, _ = await seeded(system, depot, van)
    rxs = [unique("RX-RND") for _ in range(3)]
    await system.publish(
        *(prescription_message(rx, [(warm, 30)], home=depot.door(km)) for rx, km in zip(rxs, (30, 10, 20), strict=True))
    )

    planned = await latest_round(system.settings, rxs, stops=3)

    assert planned["courier_id"] == van.courier_id and planned["pickup_warehouse_id"] == depot.warehouse
    order = [s["package_id"] for s in planned["stops"]]
    # Three doors on one road east: whichever order the van drives them in, no other is shorter.
    doors = dict(zip(rxs, (depot.door(30), depot.door(10), depot.door(20)), strict=True))
    shortest = min(itertools.permutations(rxs), key=lambda o: km_of(depot.at, [doors[rx] for rx in o]))
    assert km_of(depot.at, [doors[rx] for rx in order]) <= km_of(depot.at, [doors[rx] for rx in shortest]) + 0.5
    assert sorted(order) == sorted(rxs) and [s["stop"] for s in planned["stops"]] == [1, 2, 3]
    times = [s["expected_at"] for s in planned["stops"]]
    assert times == sorted(times)
    offers = {
        m["package_id"]: m
        for m in await dispatch_messages(system.settings, rxs)
        if m["type"] == "courier.dispatch_offered"
    }
    assert [(offers[rx]["round_id"], offers[rx]["stop"]) for rx in order] == [
        (planned["round_id"], n) for n in (1, 2, 3)
    ]
    for stop in planned["stops"]:
        await report(system, stop, van.courier_id, "accepted")
        await report(system, stop, van.courier_id, "picked_up")
    for stop in planned["stops"]:
        await report(system, stop, van.courier_id, "delivered", delivery_code=code_of(system, stop["package_id"]))
        await system.wait_stage(stop["package_id"], "delivered")


async def test_a_cold_chain_package_never_goes_in_a_van_without_a_cold_box(system: System) -> None:
    depot = Depot(44.0, 86.0)
    warm_van = courier("Warm", at=depot.at, capacity=6)
    cold_van = courier("Cold", at=depot.at, capacity=6, cold_chain=True)
    warm, chilled = await seeded(system, depot, warm_van, cold_van)
    cold_rx, warm_rxs = unique("RX-COLD"), [unique("RX-WARM") for _ in range(2)]
    await system.publish(
        prescription_message(cold_rx, [(chilled, 5)], home=depot.door(15)),
        *(prescription_message(rx, [(warm, 30)], home=depot.door(25)) for rx in warm_rxs),
    )

    await latest_round(system.settings, [cold_rx], stops=1)

    offers = [m for m in await dispatch_messages(system.settings, [cold_rx]) if m["type"] == "courier.dispatch_offered"]
    assert offers and {o["courier_id"] for o in offers} == {cold_van.courier_id}
    assert all(o["cold_chain"] for o in offers)
    rounds = [m for m in await dispatch_messages(system.settings, [cold_rx]) if m["type"] == "courier.round_offered"]
    assert all(r["courier_id"] == cold_van.courier_id for r in rounds)


async def test_a_failed_stop_is_re_dispatched_while_the_rest_of_the_round_goes_on(system: System) -> None:
    depot = Depot(44.0, 88.0)
    van = courier("Gulnar", at=depot.at, capacity=6)
    warm, _ = await seeded(system, depot, van)
    rxs = [unique("RX-RF") for _ in range(3)]
    await system.publish(
        *(prescription_message(rx, [(warm, 30)], home=depot.door(km)) for rx, km in zip(rxs, (10, 20, 30), strict=True))
    )
    planned = await latest_round(system.settings, rxs, stops=3)
    driver = planned["courier_id"]
    first, *rest = planned["stops"]
    for stop in planned["stops"]:
        await report(system, stop, driver, "accepted")
        await report(system, stop, driver, "picked_up")

    await report(system, first, driver, "failed", failure_reason="patient_absent")
    for stop in rest:
        await report(system, stop, driver, "delivered", delivery_code=code_of(system, stop["package_id"]))

    for stop in rest:
        await system.wait_stage(stop["package_id"], "delivered")
    again = await latest_round(system.settings, [first["package_id"]], stops=1, after=planned)
    (retry,) = [s for s in again["stops"] if s["package_id"] == first["package_id"]]
    assert retry["dispatch_id"] != first["dispatch_id"], "a new attempt, in a new round"
    await report(system, retry, again["courier_id"], "accepted")
    await report(system, retry, again["courier_id"], "picked_up")
    await report(system, retry, again["courier_id"], "delivered", delivery_code=code_of(system, retry["package_id"]))
    await system.wait_stage(first["package_id"], "delivered")


async def test_a_round_is_re_planned_when_a_delivery_arrives_before_it_leaves(system: System) -> None:
    depot = Depot(44.0, 90.0)
    van = courier("Yusup", at=depot.at, capacity=6)
    warm, _ = await seeded(system, depot, van)
    early, late = [unique("RX-EARLY") for _ in range(2)], unique("RX-LATE")
    await system.publish(*(prescription_message(rx, [(warm, 30)], home=depot.door(40)) for rx in early))
    first_plan = await latest_round(system.settings, early, stops=2)
    driver = first_plan["courier_id"]
    await report(system, first_plan["stops"][0], driver, "accepted")

    await system.publish(prescription_message(late, [(warm, 30)], home=depot.door(20)))

    replanned = await latest_round(system.settings, [*early, late], stops=3)
    assert replanned["round_id"] == first_plan["round_id"] and replanned["courier_id"] == driver
    assert replanned["planned_at"] > first_plan["planned_at"]
    assert sorted(s["stop"] for s in replanned["stops"]) == [1, 2, 3]
    kept = {s["package_id"]: s["dispatch_id"] for s in replanned["stops"]}
    assert all(kept[s["package_id"]] == s["dispatch_id"] for s in first_plan["stops"]), "the same dispatches"
    for stop in replanned["stops"]:
        await report(system, stop, driver, "accepted")
        await report(system, stop, driver, "picked_up")
        await report(system, stop, driver, "delivered", delivery_code=code_of(system, stop["package_id"]))
    for rx in [*early, late]:
        await system.wait_stage(rx, "delivered")
