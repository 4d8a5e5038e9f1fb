"""`make bench-rounds`: delivery rounds (services/courier/rounds.py) against one trip per delivery,
and how long a plan of 200 deliveries takes.

(a) The demo county: the doors of `--prescriptions` prescriptions from the demo's own generator
    (services/ops/simulation.county_prescriptions, the demo's seed and share of pharmacist
    reviews), each at the demo warehouse nearest the patient that stocks all of its drugs (the
    demo's opening stock; a prescription no warehouse stocks whole is not delivered and not
    counted). The vans are the demo's couriers: a courier based at a depot works from it, the
    others from the central warehouse; a van holds `--parcels-per-slot` parcels for each delivery
    the courier carries at once today, and has a cold box when the courier has one. Insulin travels
    cold; an acute course (14 days' supply or less: an antibiotic, pain relief) is urgent; one
    patient in five is home only in the morning or only in the afternoon. Side by side on the
    deliveries the rounds planned: total kilometres and van-hours of the rounds, and of one trip
    per delivery, depot → door → depot (how the courier service dispatches today).
(b) 200 deliveries of the same county, 10 vans (3 with a cold box) at the central warehouse,
    planned `--runs` times: the median planning time against the target, and the counts that do
    not depend on the machine (rounds, stops per round, deliveries left out).

The planner's settings come from `PHARMACY_ROUNDS_*` (services/courier/round_settings.py).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta

import typer
from rich.console import Console
from rich.table import Table

from pharmacy_contracts.consultation import PrescriptionSubmitted
from pharmacy_contracts.geo import LatLon, great_circle_km
from services.courier.roads import Roads
from services.courier.round_settings import RoundSettings
from services.courier.rounds import (
    DepotSite,
    Limits,
    ReadyDelivery,
    RoundPlan,
    RoundRequest,
    Van,
    Window,
    one_trip_each,
    plan_rounds,
)

from .demo import STOCK
from .reference import data
from .simulation import county_prescriptions

console = Console()

#: The demo's seed and share of prescriptions held for a pharmacist (services/ops/demo.py).
DEMO_SEED = 2026
DEMO_REVIEW_SHARE = 0.12
#: The first morning's departure (a fixed date: the plan does not depend on the day it is run).
DEPARTURE = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
PLANNING_TARGET_S = 3.0
DISTRICT_KM = 60.0
URGENT_DAYS = 14
WINDOW_SHARE = 0.2


@dataclass(frozen=True)
class CountyDelivery:
    depot_id: str
    delivery: ReadyDelivery


def depots() -> dict[str, DepotSite]:
    return {
        w["warehouse_id"]: DepotSite(w["warehouse_id"], (w["location"]["latitude"], w["location"]["longitude"]))
        for w in data("warehouses.json")
    }


def county_deliveries(count: int, *, seed: int) -> list[CountyDelivery]:
    """The deliveries of the demo's first `count` prescriptions (see the module docstring)."""
    cold_drugs = {entry["drug_code"] for entry in data("formulary.json") if entry.get("cold_chain")}
    sites = depots()
    windows = random.Random(seed)  # a stream of its own: the prescriptions are the demo's, draw for draw
    found = []
    for message in county_prescriptions(count, seed=seed, review_share=DEMO_REVIEW_SHARE):
        depot_id = _warehouse_for(message, sites)
        window_draw, half = windows.random(), windows.random()
        if depot_id is None:
            continue
        prescription = message.prescription
        where = prescription.patient.address.coordinates
        assert where is not None  # the generator places every door
        window = None
        if window_draw < WINDOW_SHARE:
            morning = half < 0.5
            opens = DEPARTURE if morning else DEPARTURE.replace(hour=13)
            window = Window(opens, DEPARTURE.replace(hour=12) if morning else DEPARTURE.replace(hour=18))
        found.append(
            CountyDelivery(
                depot_id,
                ReadyDelivery(
                    prescription_id=prescription.prescription_id,
                    location=(where.latitude, where.longitude),
                    parcels=len(prescription.items),
                    cold_chain=any(item.drug_code in cold_drugs for item in prescription.items),
                    urgent=any((item.days_supply or 99) <= URGENT_DAYS for item in prescription.items),
                    window=window,
                ),
            )
        )
    return found


def _warehouse_for(message: PrescriptionSubmitted, sites: dict[str, DepotSite]) -> str | None:
    """The warehouse nearest the patient that stocks every drug of the prescription (the demo's
    opening stock; quantities aside), as inventory chooses."""
    drugs = {item.drug_code for item in message.prescription.items}
    where = message.prescription.patient.address.coordinates
    assert where is not None
    stocking = [w for w in sorted(STOCK) if drugs <= set(STOCK[w])]
    return min(
        stocking,
        key=lambda w: (great_circle_km(sites[w].location, (where.latitude, where.longitude)), w),
        default=None,
    )


def demo_vans(parcels_per_slot: int) -> dict[str, list[Van]]:
    """The demo's couriers as vans, by depot: at their base when it is a depot, else at the
    central warehouse."""
    sites = depots()
    central = next(w["warehouse_id"] for w in data("warehouses.json") if w["kind"] == "central")
    by_depot: dict[str, list[Van]] = {depot_id: [] for depot_id in sites}
    for courier in data("couriers.json"):
        base: LatLon = (courier["location"]["latitude"], courier["location"]["longitude"])
        at = next((d for d, site in sites.items() if great_circle_km(site.location, base) < 1.0), central)
        by_depot[at].append(
            Van(courier["courier_id"], courier["capacity"] * parcels_per_slot, cold_box=courier["cold_chain"])
        )
    return by_depot


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f}"


def _saving(rounds: float, trips: float) -> str:
    return f"{(1 - rounds / trips) * 100:.0f} %" if trips else "-"


@dataclass(frozen=True)
class Comparison:
    """Rounds against one trip per delivery, on the deliveries the rounds planned."""

    deliveries: int
    planned: int
    rounds: int
    km: float
    working: timedelta  # driving and doors
    waiting: timedelta  # at doors before a window opens
    trip_km: float
    trip_time: timedelta

    @classmethod
    def of(cls, plan: RoundPlan, roads: Roads, limits: Limits) -> Comparison:
        planned = set(plan.planned)
        done = [d for d in plan.request.deliveries if d.prescription_id in planned]
        trip_km, trip_time = one_trip_each(plan.request.depot, done, roads, limits)
        return cls(
            deliveries=len(plan.request.deliveries),
            planned=len(planned),
            rounds=len(plan.rounds),
            km=plan.km,
            working=plan.van_time - plan.waiting,
            waiting=plan.waiting,
            trip_km=trip_km,
            trip_time=trip_time,
        )

    def __add__(self, other: Comparison) -> Comparison:
        return Comparison(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


ZERO = Comparison(0, 0, 0, 0.0, timedelta(0), timedelta(0), 0.0, timedelta(0))


def comparison_table(title: str, comparison: Comparison) -> Table:
    c = comparison
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("rounds", justify="right", no_wrap=True)
    table.add_column("one trip each", justify="right", no_wrap=True)
    table.add_column("saved", justify="right", no_wrap=True)
    table.add_row("trips", str(c.rounds), str(c.planned), "")
    table.add_row("kilometres", f"{c.km:.0f}", f"{c.trip_km:.0f}", _saving(c.km, c.trip_km))
    table.add_row(
        "van-hours driving and at doors",
        _hours(c.working),
        _hours(c.trip_time),
        _saving(c.working.total_seconds(), c.trip_time.total_seconds()),
    )
    table.add_row("van-hours waiting for a window", _hours(c.waiting), "-", "")
    return table


def county_report(prescriptions: int, seed: int, parcels_per_slot: int, settings: RoundSettings) -> None:
    roads, limits = settings.roads(), settings.limits()
    deliveries = county_deliveries(prescriptions, seed=seed)
    vans = demo_vans(parcels_per_slot)
    sites = depots()
    console.rule(f"[bold]Demo county: {prescriptions} prescriptions (seed {seed})")
    console.print(
        f"{len(deliveries)} deliveries (the rest no warehouse stocks whole), {len(sites)} depots, "
        f"{sum(map(len, vans.values()))} vans, one round each from {DEPARTURE:%H:%M}; {_describe(settings, limits)}"
    )
    by_depot = Table(
        title="By depot", title_justify="left", caption="van-h: driving and at doors", caption_justify="left"
    )
    for column in ("depot", "vans", "ready", "planned", "km\nrounds", "km\n1 trip", "van-h\nrounds", "van-h\n1 trip"):
        by_depot.add_column(column, justify="left" if column == "depot" else "right", no_wrap=True)
    plans: list[tuple[str, RoundPlan]] = []
    total = ZERO
    for depot_id, site in sites.items():
        here = tuple(c.delivery for c in deliveries if c.depot_id == depot_id)
        plan = plan_rounds(RoundRequest(site, DEPARTURE, here, tuple(vans[depot_id])), roads, limits)
        plans.append((depot_id, plan))
        c = Comparison.of(plan, roads, limits)
        total = total + c
        by_depot.add_row(
            depot_id,
            str(len(plan.request.vans)),
            str(c.deliveries),
            str(c.planned),
            f"{c.km:.0f}",
            f"{c.trip_km:.0f}",
            _hours(c.working),
            _hours(c.trip_time),
        )
    console.print(by_depot)
    console.print(comparison_table(f"The same {total.planned} deliveries, two ways", total))

    rounds = Table(
        title="The rounds",
        title_justify="left",
        caption="*: a van with a cold box; h: the round, waiting for windows included",
        caption_justify="left",
    )
    for column in ("courier", "stops", "parcels", "urgent", "cold", "km", "h", "wait", "back"):
        rounds.add_column(column, justify="left" if column == "courier" else "right", no_wrap=True)
    for depot_id, plan in plans:
        if not plan.rounds:
            continue
        rounds.add_row(f"[bold]{depot_id}[/]")
        cold_vans = {v.courier_id for v in plan.request.vans if v.cold_box}
        for r in plan.rounds:
            rounds.add_row(
                f"  {r.courier_id}{'*' if r.courier_id in cold_vans else ''}",
                str(len(r.stops)),
                str(r.parcels),
                str(sum(s.urgent for s in r.stops)),
                str(sum(s.cold_chain for s in r.stops)),
                f"{r.km:.0f}",
                _hours(r.duration),
                _hours(r.waiting),
                f"{r.returns:%H:%M}",
            )
    console.print(rounds)
    console.print(left_out_table(plans))


def left_out_table(plans: Sequence[tuple[str, RoundPlan]]) -> Table:
    """Deliveries left out, counted by depot and reason, with one reason in full."""
    counted: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], str] = {}
    for depot_id, plan in plans:
        for x in plan.left_out:
            counted[depot_id, x.reason.value] += 1
            example.setdefault((depot_id, x.reason.value), f"{x.prescription_id}: {x.detail}")
    table = Table(title="Left out, and why", title_justify="left")
    table.add_column("depot", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("for example")
    for (depot_id, reason), n in counted.items():
        table.add_row(depot_id, reason, str(n), example[depot_id, reason])
    return table


def _describe(settings: RoundSettings, limits: Limits) -> str:
    if settings.rounds_road_matrix_file is not None:
        roads = f"road matrix {settings.rounds_road_matrix_file}"
    else:
        roads = f"great circle x {settings.rounds_detour_factor:g}"
    return (
        f"roads: {roads} at {settings.rounds_speed_kmh:g} km/h; rounds <= {_min(limits.max_round)} min, "
        f"cold-chain <= {_min(limits.out_of_fridge)} min, urgent <= {_min(limits.urgent_due)} min, "
        f"{_min(limits.service_per_stop)} min a door"
    )


def _min(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:g}"


def district_request(deliveries: int, vans: int, seed: int) -> RoundRequest:
    """`deliveries` doors within `DISTRICT_KM` of the central warehouse (a day's district for its
    vans), as the county's: one in ten cold-chain, one in six urgent, one in five with a window,
    one or two parcels; `vans` vans of 30 parcels, the first three with a cold box."""
    rng = random.Random(seed)
    site = depots()["WH-CENTRAL"]
    lat0, lon0 = site.location
    found = []
    for number in range(1, deliveries + 1):
        while True:  # uniform over the disc
            north, east = rng.uniform(-1, 1), rng.uniform(-1, 1)
            if north * north + east * east <= 1:
                break
        lat = lat0 + north * DISTRICT_KM / 111.2
        lon = lon0 + east * DISTRICT_KM / (111.2 * math.cos(math.radians(lat0)))
        window = None
        if rng.random() < WINDOW_SHARE:
            window = (
                Window(DEPARTURE, DEPARTURE.replace(hour=12))
                if rng.random() < 0.5
                else Window(DEPARTURE.replace(hour=13), DEPARTURE.replace(hour=18))
            )
        found.append(
            ReadyDelivery(
                prescription_id=f"RX-D{seed:04d}-{number:05d}",
                location=(round(lat, 4), round(lon, 4)),
                parcels=rng.choice((1, 1, 1, 2)),
                cold_chain=rng.random() < 0.1,
                urgent=rng.random() < 1 / 6,
                window=window,
            )
        )
    fleet = tuple(Van(f"VAN-{n:02d}", 30, cold_box=n <= 3) for n in range(1, vans + 1))
    return RoundRequest(site, DEPARTURE, tuple(found), fleet)


def speed_report(deliveries: int, vans: int, runs: int, seed: int, settings: RoundSettings) -> None:
    roads, limits = settings.roads(), settings.limits()
    request = district_request(deliveries, vans, seed)
    console.rule(f"[bold]Planning time: {deliveries} deliveries, {vans} vans")
    console.print(
        f"doors within {DISTRICT_KM:g} km of WH-CENTRAL (seed {seed}): "
        f"{sum(d.cold_chain for d in request.deliveries)} cold-chain, {sum(d.urgent for d in request.deliveries)} "
        f"urgent, {sum(d.window is not None for d in request.deliveries)} with a window; vans of 30 parcels, "
        f"{sum(v.cold_box for v in request.vans)} with a cold box; search: {limits.iterations} iterations "
        f"or {limits.time_limit_s:g} s, seed {limits.seed}; {_describe(settings, limits)}"
    )
    runs_table = Table(title="Runs", title_justify="left")
    for column in ("run", "seconds", "iterations", "stopped by"):
        runs_table.add_column(column, justify="right", no_wrap=True)
    times, plans = [], []
    for run in range(1, runs + 1):
        started = time.perf_counter()
        plan = plan_rounds(request, roads, limits)
        times.append(time.perf_counter() - started)
        plans.append(plan)
        runs_table.add_row(str(run), f"{times[-1]:.2f}", str(plan.solver.iterations), plan.solver.stopped_by)
    console.print(runs_table)
    median = statistics.median(times)
    plan = plans[0]
    stops = sorted(len(r.stops) for r in plan.rounds)
    reasons = Counter(x.reason.value for x in plan.left_out)
    result = Table(title="Result", title_justify="left", show_header=False)
    result.add_column("what", no_wrap=True)
    result.add_column("value", no_wrap=True)
    result.add_row("median planning time", f"{median:.2f} s")
    result.add_row("target", f"<= {PLANNING_TARGET_S:g} s: {'met' if median <= PLANNING_TARGET_S else 'NOT met'}")
    result.add_row("same plan every run", "yes" if all(p == plan for p in plans) else "no")
    result.add_row("rounds", str(len(plan.rounds)))
    if stops:
        result.add_row("stops per round", f"{stops[0]} to {stops[-1]}, median {statistics.median(stops):g}")
    result.add_row("deliveries planned", str(len(plan.planned)))
    result.add_row("left out", str(len(plan.left_out)))
    for reason, n in sorted(reasons.items()):
        result.add_row(f"  {reason}", str(n))
    console.print(result)
    same = Comparison.of(plan, roads, limits)
    console.print(comparison_table(f"The same {same.planned} deliveries, two ways", same))


def main(
    prescriptions: int = typer.Option(80, help="Prescriptions of the demo county (the demo's default)"),
    seed: int = typer.Option(DEMO_SEED, help="Seed of the simulated county (the demo's)"),
    parcels_per_slot: int = typer.Option(8, help="Van parcels per delivery a demo courier carries at once"),
    deliveries: int = typer.Option(200, help="Deliveries of the timed plan"),
    vans: int = typer.Option(10, help="Vans of the timed plan"),
    runs: int = typer.Option(3, min=1, help="Timed plans (the median counts)"),
) -> None:
    """Delivery rounds against one trip per delivery, and the planning time."""
    settings = RoundSettings()
    county_report(prescriptions, seed, parcels_per_slot, settings)
    speed_report(deliveries, vans, runs, seed, settings)


if __name__ == "__main__":
    typer.run(main)
