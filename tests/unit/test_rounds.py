"""Delivery rounds (services/courier/rounds.py): every rule a plan must keep, the reasons for what it
leaves out, re-planning, the road networks (services/courier/roads.py) and the settings.

Small instances and short searches: the planning time is the bench's business (make bench-rounds),
not a test's."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pyvrp import ProblemData, Result, Solution, Statistics

from pharmacy_contracts.geo import EARTH_RADIUS_KM, LatLon
from services.courier import rounds
from services.courier.roads import GreatCircleRoads, MatrixRoads, Place, load_road_matrix, road_matrices
from services.courier.round_settings import RoundSettings
from services.courier.rounds import (
    DepotSite,
    LeftOutReason,
    Limits,
    ReadyDelivery,
    RoundPlan,
    RoundRequest,
    Van,
    Window,
    one_trip_each,
    plan_rounds,
)

DEPARTURE = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
ORIGIN = (51.0, 70.0)
DEPOT = DepotSite("WH-TEST", ORIGIN)
#: A kilometre a minute, as the crow flies: every leg's minutes are its kilometres.
ROADS = GreatCircleRoads(detour_factor=1.0, speed_kmh=60.0)
FAST = Limits(iterations=200, time_limit_s=30.0)
KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180


def at(north_km: float = 0.0, east_km: float = 0.0) -> LatLon:
    lat = ORIGIN[0] + north_km / KM_PER_DEGREE
    return (lat, ORIGIN[1] + east_km / (KM_PER_DEGREE * math.cos(math.radians(ORIGIN[0]))))


def delivery(rx: str, north_km: float = 0.0, east_km: float = 0.0, **kwargs: object) -> ReadyDelivery:
    return ReadyDelivery(rx, at(north_km, east_km), **kwargs)  # type: ignore[arg-type]


def hours(h: float, m: float = 0) -> datetime:
    return DEPARTURE.replace(hour=0) + timedelta(hours=h, minutes=m)


def plan(deliveries: list[ReadyDelivery], vans: list[Van], limits: Limits = FAST, roads: object = ROADS) -> RoundPlan:
    result = plan_rounds(RoundRequest(DEPOT, DEPARTURE, tuple(deliveries), tuple(vans)), roads, limits)  # type: ignore[arg-type]
    assert_keeps_every_rule(result, limits)
    return result


def assert_keeps_every_rule(plan: RoundPlan, limits: Limits) -> None:
    """What every plan must hold, whatever its instance."""
    request = plan.request
    vans = {v.courier_id: v for v in request.vans}
    by_id = {d.prescription_id: d for d in request.deliveries}
    planned = plan.planned
    left = [x.prescription_id for x in plan.left_out]
    assert sorted(planned + left) == sorted(by_id), "every delivery is planned once or left out once"
    assert len(set(planned)) == len(planned)
    for r in plan.rounds:
        van = vans[r.courier_id]
        assert r.stops, "a round has stops"
        assert r.parcels <= van.capacity
        assert r.departs == request.departure
        assert r.duration <= limits.max_round
        assert r.km == pytest.approx(sum(s.km_from_previous for s in r.stops) + r.km_back, abs=0.01)
        previous = r.departs
        for stop in r.stops:
            d = by_id[stop.prescription_id]
            handed_over = stop.arrives + stop.waits
            assert stop.arrives >= previous
            previous = stop.leaves
            if d.cold_chain:
                assert van.cold_box, f"{d.prescription_id} is cold-chain in {van.courier_id}, a van without a cold box"
                assert handed_over <= request.departure + limits.out_of_fridge + timedelta(seconds=1)
            if d.window is not None:
                assert d.window.opens <= handed_over <= d.window.closes
        assert previous <= r.returns


def reasons(plan: RoundPlan) -> dict[str, LeftOutReason]:
    return {x.prescription_id: x.reason for x in plan.left_out}


def van_of(plan: RoundPlan, rx: str) -> str:
    return next(r.courier_id for r in plan.rounds for s in r.stops if s.prescription_id == rx)


# --- capacity ------------------------------------------------------------------------------------------


def test_a_van_never_carries_more_parcels_than_it_holds() -> None:
    deliveries = [delivery(f"RX-{n}", north_km=5 + n) for n in range(5)]
    result = plan(deliveries, [Van("V1", capacity=3)])
    assert len(result.planned) == 3
    assert result.rounds[0].parcels == 3
    assert set(reasons(result).values()) == {LeftOutReason.NO_ROOM}
    assert all("full" in x.detail for x in result.left_out)


def test_parcels_count_not_deliveries() -> None:
    deliveries = [delivery("RX-BIG", 5, parcels=3), delivery("RX-SMALL", 6), delivery("RX-SMALL-2", 7)]
    result = plan(deliveries, [Van("V1", capacity=4)])
    assert result.rounds[0].parcels <= 4 and len(result.left_out) == 1


def test_a_delivery_larger_than_every_van_is_left_out_at_once() -> None:
    result = plan([delivery("RX-HUGE", 5, parcels=5)], [Van("V1", 4), Van("V2", 3)])
    assert reasons(result) == {"RX-HUGE": LeftOutReason.TOO_BIG}
    assert "holds 4" in result.left_out[0].detail
    assert result.solver.stopped_by == "nothing to plan"


# --- cold chain ----------------------------------------------------------------------------------------


def test_cold_chain_packages_travel_only_in_vans_with_a_cold_box() -> None:
    deliveries = [delivery(f"RX-COLD-{n}", 5 * n, 3, cold_chain=True) for n in range(1, 4)]
    deliveries += [delivery(f"RX-PLAIN-{n}", -5 * n, 3) for n in range(1, 4)]
    result = plan(deliveries, [Van("V-PLAIN", 10), Van("V-COLD", 10, cold_box=True)])
    assert not result.left_out
    assert {van_of(result, f"RX-COLD-{n}") for n in range(1, 4)} == {"V-COLD"}


def test_a_full_cold_box_leaves_the_cold_package_out_even_when_a_plain_van_has_room() -> None:
    deliveries = [delivery(f"RX-COLD-{n}", 5 * n, cold_chain=True) for n in range(1, 4)]
    result = plan(deliveries, [Van("V-PLAIN", 10), Van("V-COLD", 2, cold_box=True)])
    assert len(result.planned) == 2
    assert list(reasons(result).values()) == [LeftOutReason.NO_ROOM]
    assert "cold-box van" in result.left_out[0].detail


def test_without_a_cold_van_on_shift_cold_chain_packages_are_left_out_with_the_reason() -> None:
    result = plan([delivery("RX-COLD", 5, cold_chain=True), delivery("RX-PLAIN", 6)], [Van("V1", 10), Van("V2", 10)])
    assert result.planned == ["RX-PLAIN"]
    assert reasons(result) == {"RX-COLD": LeftOutReason.NO_COLD_VAN}
    assert "cold box" in result.left_out[0].detail


def test_cold_chain_packages_are_handed_over_within_their_time_out_of_the_fridge() -> None:
    limits = Limits(out_of_fridge=timedelta(minutes=45), iterations=200)
    # 20 km north and 20 km south: the second door of one round is reached after 20 + 5 + 40 = 65 min.
    pair = [delivery("RX-NORTH", 20, cold_chain=True), delivery("RX-SOUTH", -20, cold_chain=True)]
    one_cold_van = plan(pair, [Van("V-COLD", 10, cold_box=True), Van("V-PLAIN", 10)], limits)
    assert len(one_cold_van.planned) == 1
    assert list(reasons(one_cold_van).values()) == [LeftOutReason.NO_ROOM]
    two_cold_vans = plan(pair, [Van("V-COLD", 10, cold_box=True), Van("V-COLD-2", 10, cold_box=True)], limits)
    assert sorted(two_cold_vans.planned) == ["RX-NORTH", "RX-SOUTH"]
    assert len(two_cold_vans.rounds) == 2

    far = plan([delivery("RX-FAR", 60, cold_chain=True)], [Van("V-COLD", 10, cold_box=True)], limits)
    assert reasons(far) == {"RX-FAR": LeftOutReason.OUT_OF_FRIDGE}
    assert "60 min away" in far.left_out[0].detail and "45 min" in far.left_out[0].detail
    late = Window(hours(9), hours(12))  # the patient is in from 09:00: an hour after the van left
    waits = plan([delivery("RX-LATE", 5, cold_chain=True, window=late)], [Van("V-COLD", 10, cold_box=True)], limits)
    assert reasons(waits) == {"RX-LATE": LeftOutReason.OUT_OF_FRIDGE}


# --- the round's length and the patients' windows --------------------------------------------------------


def test_no_round_is_longer_than_the_max_round() -> None:
    limits = Limits(max_round=timedelta(hours=2), iterations=200)
    # Each alone: 50 + 5 + 50 = 105 min; both in one round: 50 + 5 + 100 + 5 + 50 = 210 min.
    pair = [delivery("RX-NORTH", 50), delivery("RX-SOUTH", -50)]
    one_van = plan(pair, [Van("V1", 10)], limits)
    assert len(one_van.planned) == 1
    assert "time" in one_van.left_out[0].detail
    two_vans = plan(pair, [Van("V1", 10), Van("V2", 10)], limits)
    assert not two_vans.left_out
    assert all(r.duration <= timedelta(hours=2) for r in two_vans.rounds)

    too_far = plan([delivery("RX-FAR", 70)], [Van("V1", 10)], limits)
    assert reasons(too_far) == {"RX-FAR": LeftOutReason.ROUND_TOO_LONG}
    assert "145 min" in too_far.left_out[0].detail


def test_a_van_arrives_within_the_patients_window_and_waits_for_it_to_open() -> None:
    window = Window(hours(8, 30), hours(9))
    result = plan([delivery("RX-WINDOW", 10, window=window)], [Van("V1", 10)])
    stop = result.rounds[0].stops[0]
    assert stop.arrives == hours(8, 10)
    assert stop.waits == timedelta(minutes=20)
    assert stop.leaves == hours(8, 35)
    assert result.waiting == timedelta(minutes=20)


def test_windows_order_the_stops_against_the_map() -> None:
    # Nearest first would be 10 km then 20 km; the patient at 20 km is in only until 08:40.
    deliveries = [
        delivery("RX-NEAR-LATE", 10, window=Window(hours(9), hours(9, 30))),
        delivery("RX-FAR-EARLY", 20, window=Window(hours(8), hours(8, 40))),
    ]
    result = plan(deliveries, [Van("V1", 10)])
    assert [s.prescription_id for s in result.rounds[0].stops] == ["RX-FAR-EARLY", "RX-NEAR-LATE"]


def test_a_window_that_closes_before_a_van_can_get_there_is_a_reason() -> None:
    deliveries = [
        delivery("RX-TOO-SOON", 10, window=Window(hours(8), hours(8, 5))),
        delivery("RX-CLOSED", 10, window=Window(hours(6), hours(7))),
    ]
    result = plan(deliveries, [Van("V1", 10)])
    assert reasons(result) == {"RX-TOO-SOON": LeftOutReason.WINDOW_MISSED, "RX-CLOSED": LeftOutReason.WINDOW_MISSED}
    assert "before the round leaves" in result.reason_for("RX-CLOSED").detail  # type: ignore[union-attr]


# --- urgent first ----------------------------------------------------------------------------------------


def test_an_urgent_delivery_is_planned_before_ordinary_ones_when_they_compete_for_a_van() -> None:
    near = [delivery("RX-NEAR-1", 3), delivery("RX-NEAR-2", -3)]
    control = plan([*near, delivery("RX-FAR", 0, 30)], [Van("V1", capacity=2)])
    assert sorted(control.planned) == ["RX-NEAR-1", "RX-NEAR-2"], "the cheap pair wins when nothing is urgent"
    urgent = plan([*near, delivery("RX-FAR", 0, 30, urgent=True)], [Van("V1", capacity=2)])
    assert "RX-FAR" in urgent.planned
    assert len(urgent.left_out) == 1 and urgent.left_out[0].prescription_id.startswith("RX-NEAR")


def test_urgent_deliveries_are_at_the_door_within_their_due_time() -> None:
    limits = Limits(urgent_due=timedelta(minutes=30), iterations=200)
    cluster = [delivery(f"RX-EAST-{n}", 0, 10 + n) for n in range(4)]
    result = plan([*cluster, delivery("RX-URGENT", 0, -25, urgent=True)], [Van("V1", 10)], limits)
    assert not result.left_out
    stop = next(s for s in result.rounds[0].stops if s.prescription_id == "RX-URGENT")
    assert stop.arrives <= DEPARTURE + timedelta(minutes=30)


def test_an_urgent_door_farther_than_the_due_time_is_the_first_stop() -> None:
    limits = Limits(urgent_due=timedelta(minutes=30), iterations=200)
    deliveries = [delivery("RX-ON-THE-WAY", 20), delivery("RX-URGENT", 50, urgent=True)]
    result = plan(deliveries, [Van("V1", 10)], limits)
    assert not result.left_out
    assert [s.prescription_id for s in result.rounds[0].stops] == ["RX-URGENT", "RX-ON-THE-WAY"]
    assert result.rounds[0].stops[0].arrives == DEPARTURE + timedelta(minutes=50)


# --- re-planning, determinism ------------------------------------------------------------------------------


def test_a_replan_with_one_more_delivery_includes_it() -> None:
    first = plan([delivery("RX-1", 5), delivery("RX-2", 10), delivery("RX-3", -5)], [Van("V1", 10), Van("V2", 10)])
    again = plan_rounds(first.request.adding(delivery("RX-LATE", 7, 4, urgent=True)), ROADS, FAST)
    assert_keeps_every_rule(again, FAST)
    assert sorted(again.planned) == ["RX-1", "RX-2", "RX-3", "RX-LATE"]
    cancelled = plan_rounds(again.request.without("RX-2"), ROADS, FAST)
    assert sorted(cancelled.planned) == ["RX-1", "RX-3", "RX-LATE"]
    van_off = plan_rounds(cancelled.request.with_vans(Van("V2", 10)), ROADS, FAST)
    assert [r.courier_id for r in van_off.rounds] == ["V2"]


def test_adding_a_delivery_again_replaces_it() -> None:
    request = RoundRequest(DEPOT, DEPARTURE, (delivery("RX-1", 5),), (Van("V1", 10),))
    changed = request.adding(delivery("RX-1", 5, parcels=2))
    assert [d.parcels for d in changed.deliveries] == [2]


def random_instance(deliveries: int, vans: int, seed: int) -> RoundRequest:
    rng = random.Random(seed)
    found = []
    for n in range(deliveries):
        window = None
        if rng.random() < 0.2:
            start = rng.choice((8, 10, 13))
            window = Window(hours(start), hours(start + 3))
        found.append(
            delivery(
                f"RX-{n:03d}",
                rng.uniform(-50, 50),
                rng.uniform(-50, 50),
                parcels=rng.choice((1, 1, 2)),
                cold_chain=rng.random() < 0.1,
                urgent=rng.random() < 0.15,
                window=window,
            )
        )
    fleet = tuple(Van(f"V{n:02d}", 30, cold_box=n < 3) for n in range(vans))
    return RoundRequest(DEPOT, DEPARTURE, tuple(found), fleet)


def test_the_same_request_gives_the_same_plan() -> None:
    request = random_instance(30, 3, seed=7)
    first, second = plan_rounds(request, ROADS, FAST), plan_rounds(request, ROADS, FAST)
    assert first.solver.stopped_by == "iterations"
    assert first == second
    assert [(r.courier_id, [s.prescription_id for s in r.stops]) for r in first.rounds] == [
        (r.courier_id, [s.prescription_id for s in r.stops]) for r in second.rounds
    ]


def test_two_hundred_deliveries_and_ten_vans_keep_every_rule() -> None:
    limits = Limits(iterations=30, time_limit_s=60.0)
    result = plan_rounds(random_instance(200, 10, seed=3), ROADS, limits)
    assert_keeps_every_rule(result, limits)
    assert len(result.rounds) <= 10
    assert len(result.planned) > 150


def test_no_van_and_no_delivery() -> None:
    nobody = plan([delivery("RX-1", 5)], [])
    assert reasons(nobody) == {"RX-1": LeftOutReason.NO_VAN}
    nothing = plan([], [Van("V1", 10)])
    assert nothing.rounds == () and nothing.left_out == ()


def test_a_request_names_each_delivery_and_each_van_once() -> None:
    with pytest.raises(ValueError, match="RX-1"):
        RoundRequest(DEPOT, DEPARTURE, (delivery("RX-1"), delivery("RX-1", 3)), ())
    with pytest.raises(ValueError, match="V1"):
        RoundRequest(DEPOT, DEPARTURE, (), (Van("V1", 3), Van("V1", 4)))
    with pytest.raises(ValueError):
        Window(hours(10), hours(9))


def test_one_trip_each_is_there_and_back_for_every_delivery() -> None:
    km, time_taken = one_trip_each(DEPOT, [delivery("RX-1", 10), delivery("RX-2", -20)], ROADS, FAST)
    assert km == pytest.approx(60, abs=0.01)
    assert time_taken == pytest.approx(timedelta(minutes=70), abs=timedelta(seconds=1))


# --- roads -------------------------------------------------------------------------------------------------


def test_great_circle_matrices_are_metres_and_seconds() -> None:
    places = [Place("A", *at()), Place("B", *at(10)), Place("C", *at(0, 30))]
    metres, seconds = road_matrices(GreatCircleRoads(detour_factor=1.5, speed_kmh=45), places)
    assert metres.dtype == np.int64 and seconds.dtype == np.int64
    assert (np.diag(metres) == 0).all() and (metres == metres.T).all()
    assert metres[0, 1] == pytest.approx(15_000, abs=2)
    assert seconds[0, 1] == pytest.approx(15 / 45 * 3600, abs=1)


def write_matrix(path: Path, **overrides: object) -> Path:
    document = {
        "places": [
            {"id": "WH-TEST", "latitude": ORIGIN[0], "longitude": ORIGIN[1]},
            {"id": "OVER-THE-RIVER", "latitude": at(5)[0], "longitude": at(5)[1]},
        ],
        # 5 km as the crow flies, but the bridge is far: 40 km there, 42 back.
        "km": [[0, 40], [42, 0]],
        "minutes": [[0, 50], [52, 0]],
    }
    document.update(overrides)
    path.write_text(json.dumps(document))
    return path


def test_a_road_matrix_file_gives_the_real_road_distances(tmp_path: Path) -> None:
    roads = load_road_matrix(write_matrix(tmp_path / "roads.json"), local=ROADS)
    assert isinstance(roads, MatrixRoads)
    door = delivery("RX-RIVER", 5, place_id="OVER-THE-RIVER")
    result = plan([door], [Van("V1", 10)], roads=roads)
    assert result.rounds[0].km == pytest.approx(82)
    assert result.rounds[0].stops[0].arrives == DEPARTURE + timedelta(minutes=50)
    assert result.rounds[0].returns == DEPARTURE + timedelta(minutes=50 + 5 + 52)

    # A farmstead 1 km past the listed place: the road, then a kilometre of track each way.
    farm = delivery("RX-FARM", 6)
    assert roads.nearest(farm.place()).id == "OVER-THE-RIVER"
    result = plan([farm], [Van("V1", 10)], roads=roads)
    assert result.rounds[0].km == pytest.approx(84, abs=0.01)
    # Two doors near the same listed place: measured between themselves.
    assert roads.leg(farm.place(), door.place()).km == pytest.approx(1, abs=0.01)


def test_a_road_matrix_without_minutes_drives_at_the_average_speed(tmp_path: Path) -> None:
    path = tmp_path / "roads.json"
    write_matrix(path)
    document = json.loads(path.read_text())
    del document["minutes"]
    path.write_text(json.dumps(document))
    roads = load_road_matrix(path, local=GreatCircleRoads(speed_kmh=30))
    leg = roads.leg(Place("WH-TEST", *ORIGIN), Place("OVER-THE-RIVER", *at(5)))
    assert (leg.km, leg.minutes) == (40, 80)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"km": [[0, 40]]}, "2 rows of 2"),
        ({"km": [[0, -1], [42, 0]]}, "not a distance"),
        ({"km": [[3, 40], [42, 0]]}, "to itself"),
        ({"places": []}, "at least one place"),
    ],
)
def test_a_bad_road_matrix_file_is_refused_with_its_name(tmp_path: Path, override: dict, message: str) -> None:
    path = write_matrix(tmp_path / "bad.json", **override)
    with pytest.raises(ValueError, match=message) as refused:
        load_road_matrix(path)
    assert "bad.json" in str(refused.value)


# --- settings ----------------------------------------------------------------------------------------------


def test_the_settings_make_the_limits_and_the_roads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHARMACY_ROUNDS_MAX_ROUND_MINUTES", "300")
    monkeypatch.setenv("PHARMACY_ROUNDS_COLD_CHAIN_MINUTES", "90")
    monkeypatch.setenv("PHARMACY_ROUNDS_URGENT_DUE_MINUTES", "45")
    monkeypatch.setenv("PHARMACY_ROUNDS_SERVICE_MINUTES", "7")
    monkeypatch.setenv("PHARMACY_ROUNDS_PLAN_ITERATIONS", "123")
    monkeypatch.setenv("PHARMACY_ROUNDS_DETOUR_FACTOR", "1.4")
    monkeypatch.setenv("PHARMACY_ROUNDS_SPEED_KMH", "40")
    settings = RoundSettings()
    limits = settings.limits()
    assert limits.max_round == timedelta(hours=5)
    assert limits.out_of_fridge == timedelta(minutes=90)
    assert limits.urgent_due == timedelta(minutes=45)
    assert limits.service_per_stop == timedelta(minutes=7)
    assert limits.iterations == 123
    assert settings.roads() == GreatCircleRoads(detour_factor=1.4, speed_kmh=40)

    monkeypatch.setenv("PHARMACY_ROUNDS_ROAD_MATRIX_FILE", str(write_matrix(tmp_path / "roads.json")))
    roads = RoundSettings().roads()
    assert isinstance(roads, MatrixRoads) and roads.local == GreatCircleRoads(detour_factor=1.4, speed_kmh=40)


def test_an_urgent_delivery_whose_patient_is_in_later_is_due_after_the_window_opens() -> None:
    limits = Limits(urgent_due=timedelta(minutes=30), iterations=200)
    later = Window(hours(10), hours(14))
    deliveries = [delivery("RX-URGENT", 10, urgent=True, window=later), delivery("RX-OTHER", -10, window=later)]
    result = plan(deliveries, [Van("V1", 10)], limits)
    assert not result.left_out
    stop = next(s for s in result.rounds[0].stops if s.prescription_id == "RX-URGENT")
    assert hours(10) <= stop.arrives + stop.waits <= hours(10, 30)


def test_a_round_the_search_left_breaking_a_rule_is_not_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only when the search is stopped before it found a plan that keeps every rule (PyVRP's first
    local search nearly always finds one): the rounds breaking a rule are dropped, not sent."""

    def stopped_early(data: ProblemData, stop: object, **kwargs: object) -> Result:
        return Result(Solution(data, [[0, 1, 2]]), Statistics(collect_stats=False), 1, 0.0)

    monkeypatch.setattr(rounds, "solve", stopped_early)
    result = plan([delivery("RX-1", 5), delivery("RX-2", 6), delivery("RX-3", 7)], [Van("V1", capacity=2)])
    assert not result.solver.feasible
    assert result.rounds == ()
    assert set(reasons(result).values()) == {LeftOutReason.NO_ROOM}
    assert all("search stopped" in x.detail for x in result.left_out)
