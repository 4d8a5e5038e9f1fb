"""Delivery rounds: which van of a depot takes which deliveries, in what order, arriving when.

A pure planner: the depot, the deliveries ready there, the vans on shift and the departure time
in; the rounds and the deliveries left out (each with its reason) out. No I/O besides calling the
solver (PyVRP); the road network is given (services/courier/roads.py), the limits too (settings:
services/courier/round_settings.py). A re-plan (a delivery added or cancelled, a van off sick)
before the vans leave is the same call on the new request: `plan.request.adding(delivery)`.

The model (PyVRP: a prize-collecting vehicle routing problem with time windows):

* One vehicle per van, leaving the depot at the departure time and back within the max round
  duration (driving, waiting and the minutes at each door included).
* Two load dimensions: parcels, and parcels that must stay cold. A van holds `capacity` parcels;
  a van with a cold box holds as many cold ones, a van without holds none, so a cold-chain
  package never travels without a cold box.
* Each delivery is a client with a time window counted from the departure: it opens when the
  patient's window opens (if known) and closes at the earliest of the patient's window closing,
  the time a cold-chain package may be out of the fridge, and, for an urgent one, its due time.
* Urgent first: an urgent delivery is due `urgent_due` after the departure (after its patient's
  window opens, when that is later), or, when its door is farther than that, as soon as the van
  can drive straight there (so it is the round's first stop). A due time rather than "before
  every other stop": a door next to the depot on the way costs the urgent one a few minutes, not
  the county a detour. And its prize outweighs every ordinary delivery together, so when vans
  are short (of room or of time) ordinary deliveries are the ones left for the next round, never
  an urgent one for an ordinary one.
* Every delivery is optional with a prize larger than any detour it could cost: the solver plans
  every delivery it can fit and leaves out what it cannot, instead of finding no plan at all.
  Deliveries that could not be planned even alone in an empty van (no cold van on shift, a window
  that closes before the van can get there, a door too far for the round) are told apart before
  the solver runs and never reach it.
* Cost: one per metre driven plus one per second of round (a van-second costs about what a metre
  does: the solver saves kilometres first, then waiting).

Deterministic: the same request and limits give the same plan as long as the iteration limit,
not the time limit, stops the search (the time limit only bounds a slow machine).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

import numpy as np
from pyvrp import Client, Depot, Location, ProblemData, SolveParams, VehicleType, solve
from pyvrp.PenaltyManager import PenaltyParams
from pyvrp.stop import MaxIterations, MaxRuntime, MultipleCriteria

from pharmacy_contracts.geo import LatLon

from .roads import Place, Roads, road_matrices

# --- what goes in ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepotSite:
    """The warehouse or pharmacy the vans leave from and come back to."""

    depot_id: str
    location: LatLon


@dataclass(frozen=True)
class Window:
    """When the patient is at home to take the package."""

    opens: datetime
    closes: datetime

    def __post_init__(self) -> None:
        if self.closes < self.opens:
            raise ValueError(f"a window closes ({self.closes}) before it opens ({self.opens})")


@dataclass(frozen=True)
class ReadyDelivery:
    """A package waiting at the depot for a round."""

    prescription_id: str
    location: LatLon
    parcels: int = 1
    cold_chain: bool = False
    urgent: bool = False
    window: Window | None = None
    service: timedelta | None = None
    """At the door (hand-over, the patient's code); None: the limits' `service_per_stop`."""
    place_id: str | None = None
    """The listed place of a road matrix the door is (a gazetteer id), when it is one."""

    def __post_init__(self) -> None:
        if self.parcels < 1:
            raise ValueError(f"{self.prescription_id}: a delivery is at least one parcel, not {self.parcels}")

    def place(self) -> Place:
        return Place(self.place_id or f"door:{self.prescription_id}", *self.location)


@dataclass(frozen=True)
class Van:
    """A van on shift at the depot and its courier."""

    courier_id: str
    capacity: int
    cold_box: bool = False

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"{self.courier_id}: a van carries at least one parcel, not {self.capacity}")

    def carries(self, delivery: ReadyDelivery) -> bool:
        return (self.cold_box or not delivery.cold_chain) and delivery.parcels <= self.capacity


@dataclass(frozen=True)
class Limits:
    """What every round lives by (settings: services/courier/round_settings.py)."""

    max_round: timedelta = timedelta(hours=8)
    out_of_fridge: timedelta = timedelta(hours=4)
    """How long after the departure a cold-chain package may still be handed over."""
    service_per_stop: timedelta = timedelta(minutes=5)
    urgent_due: timedelta = timedelta(hours=2)
    iterations: int = 1000
    time_limit_s: float = 2.5
    seed: int = 1

    def __post_init__(self) -> None:
        if self.max_round <= timedelta(0) or self.out_of_fridge <= timedelta(0) or self.urgent_due <= timedelta(0):
            raise ValueError("the max round, the time out of the fridge and the urgent due time must be positive")
        if self.iterations < 1 or self.time_limit_s <= 0:
            raise ValueError("the planner needs at least one iteration and some time")


@dataclass(frozen=True)
class RoundRequest:
    """Everything a plan depends on besides the roads and the limits. Re-planning a round that has
    not left yet is planning the changed request."""

    depot: DepotSite
    departure: datetime
    deliveries: tuple[ReadyDelivery, ...] = ()
    vans: tuple[Van, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "deliveries", tuple(self.deliveries))
        object.__setattr__(self, "vans", tuple(self.vans))
        _unique("prescription", [d.prescription_id for d in self.deliveries])
        _unique("courier", [v.courier_id for v in self.vans])

    def adding(self, *deliveries: ReadyDelivery) -> RoundRequest:
        """With `deliveries` too (one with the id of a delivery already here replaces it)."""
        new = {d.prescription_id for d in deliveries}
        kept = tuple(d for d in self.deliveries if d.prescription_id not in new)
        return replace(self, deliveries=kept + tuple(deliveries))

    def without(self, *prescription_ids: str) -> RoundRequest:
        """Without these deliveries (cancelled, taken by hand)."""
        gone = set(prescription_ids)
        return replace(self, deliveries=tuple(d for d in self.deliveries if d.prescription_id not in gone))

    def with_vans(self, *vans: Van) -> RoundRequest:
        return replace(self, vans=tuple(vans))


def _unique(kind: str, ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"a {kind} id appears twice in one request: {', '.join(twice)}")


# --- what comes out ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    prescription_id: str
    arrives: datetime
    waits: timedelta
    """At the door before the patient's window opens."""
    leaves: datetime
    km_from_previous: float
    parcels: int
    cold_chain: bool
    urgent: bool


@dataclass(frozen=True)
class Round:
    courier_id: str
    departs: datetime
    returns: datetime
    stops: tuple[Stop, ...]
    km: float
    km_back: float
    """From the last stop back to the depot."""

    @property
    def duration(self) -> timedelta:
        return self.returns - self.departs

    @property
    def parcels(self) -> int:
        return sum(s.parcels for s in self.stops)

    @property
    def waiting(self) -> timedelta:
        """At doors before the patients' windows open (part of the duration)."""
        return sum((s.waits for s in self.stops), timedelta(0))


class LeftOutReason(StrEnum):
    NO_VAN = "no_van"  # no van on shift at the depot
    NO_COLD_VAN = "no_cold_van"  # cold-chain, and no van with a cold box on shift
    TOO_BIG = "too_big"  # more parcels than any van that may carry it holds
    WINDOW_MISSED = "window_missed"  # the patient's window closes before a van can get there
    OUT_OF_FRIDGE = "out_of_fridge"  # cold-chain, and the door is farther than its time out of the fridge
    ROUND_TOO_LONG = "round_too_long"  # there and back alone is longer than the max round
    NO_ROOM = "no_room"  # possible alone, but the vans are full (room or time) with deliveries that go first


@dataclass(frozen=True)
class LeftOut:
    prescription_id: str
    reason: LeftOutReason
    detail: str


@dataclass(frozen=True)
class SolverRun:
    """How the search went (not part of the plan: two equal plans may have taken different times)."""

    iterations: int = 0
    seconds: float = 0.0
    stopped_by: Literal["iterations", "time limit", "nothing to plan"] = "nothing to plan"
    feasible: bool = True
    """False: the best plan found broke a rule in some van's round; those rounds were dropped."""


@dataclass(frozen=True)
class RoundPlan:
    request: RoundRequest
    rounds: tuple[Round, ...]
    left_out: tuple[LeftOut, ...]
    solver: SolverRun = field(default=SolverRun(), compare=False)

    @property
    def planned(self) -> list[str]:
        return [s.prescription_id for r in self.rounds for s in r.stops]

    @property
    def km(self) -> float:
        return sum(r.km for r in self.rounds)

    @property
    def van_time(self) -> timedelta:
        """The rounds' durations together: driving, doors and waiting."""
        return sum((r.duration for r in self.rounds), timedelta(0))

    @property
    def waiting(self) -> timedelta:
        return sum((r.waiting for r in self.rounds), timedelta(0))

    def round_of(self, courier_id: str) -> Round | None:
        return next((r for r in self.rounds if r.courier_id == courier_id), None)

    def reason_for(self, prescription_id: str) -> LeftOut | None:
        return next((x for x in self.left_out if x.prescription_id == prescription_id), None)


# --- planning ------------------------------------------------------------------------------------------


def plan_rounds(request: RoundRequest, roads: Roads, limits: Limits = Limits()) -> RoundPlan:
    """The rounds of `request`'s vans over its deliveries, and the deliveries left out with why."""
    started = time.perf_counter()
    places = [Place(request.depot.depot_id, *request.depot.location), *(d.place() for d in request.deliveries)]
    metres, seconds = road_matrices(roads, places)
    timing = [_Timing.of(d, i + 1, seconds, request.departure, limits) for i, d in enumerate(request.deliveries)]

    left_out: dict[str, LeftOut] = {}
    candidates: list[_Timing] = []
    for t in timing:
        why = _alone(t, request.vans, limits)
        if why is None:
            candidates.append(t)
        else:
            left_out[t.delivery.prescription_id] = why

    rounds: list[Round] = []
    run = SolverRun(seconds=time.perf_counter() - started)
    if candidates and request.vans:
        rounds, unplanned, run = _solve(request, candidates, metres, seconds, limits)
        for t in unplanned:
            left_out[t.delivery.prescription_id] = _no_room(t, request.vans, rounds, limits, run)
        run = replace(run, seconds=time.perf_counter() - started)
    ordered = tuple(left_out[d.prescription_id] for d in request.deliveries if d.prescription_id in left_out)
    return RoundPlan(request=request, rounds=tuple(rounds), left_out=ordered, solver=run)


@dataclass(frozen=True)
class _Timing:
    """A delivery in the solver's units: seconds after the departure, its index in the matrices."""

    delivery: ReadyDelivery
    index: int
    service_s: int
    opens_s: int  # arriving earlier means waiting
    closes_s: int  # the patient's window; a large number when unknown
    fridge_s: int | None  # cold-chain: handed over by then
    due_s: int | None  # urgent: at the door by then
    out_s: int  # driving straight from the depot
    back_s: int  # driving straight back

    @classmethod
    def of(
        cls, delivery: ReadyDelivery, index: int, seconds: np.ndarray, departure: datetime, limits: Limits
    ) -> _Timing:
        service = delivery.service if delivery.service is not None else limits.service_per_stop
        out_s, back_s = int(seconds[0, index]), int(seconds[index, 0])
        never = 10 * _s(limits.max_round)
        opens_s, closes_s = 0, never
        if (window := delivery.window) is not None:
            opens_s = max(0, _s(window.opens - departure))
            closes_s = min(never, _s(window.closes - departure))
        due_s = None
        if delivery.urgent:
            # Due soon after the patient can take it, or straight there first when the door is farther.
            due_s = max(opens_s + _s(limits.urgent_due), out_s)
        return cls(
            delivery=delivery,
            index=index,
            service_s=_s(service),
            opens_s=opens_s,
            closes_s=closes_s,
            fridge_s=_s(limits.out_of_fridge) if delivery.cold_chain else None,
            due_s=due_s,
            out_s=out_s,
            back_s=back_s,
        )

    @property
    def latest_s(self) -> int:
        return min(x for x in (self.closes_s, self.fridge_s, self.due_s) if x is not None)


def _s(delta: timedelta) -> int:
    return round(delta.total_seconds())


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def _alone(t: _Timing, vans: Sequence[Van], limits: Limits) -> LeftOut | None:
    """Why a delivery cannot be planned even alone in an empty van, or None when it can."""
    d = t.delivery

    def out(reason: LeftOutReason, detail: str) -> LeftOut:
        return LeftOut(d.prescription_id, reason, detail)

    if not vans:
        return out(LeftOutReason.NO_VAN, "no van is on shift at the depot")
    if d.cold_chain and not any(v.cold_box for v in vans):
        return out(LeftOutReason.NO_COLD_VAN, "cold-chain: no van with a cold box is on shift at the depot")
    suitable = [v for v in vans if v.cold_box or not d.cold_chain]
    if not any(v.carries(d) for v in suitable):
        largest = max(v.capacity for v in suitable)
        return out(LeftOutReason.TOO_BIG, f"{d.parcels} parcels: the largest van that may carry it holds {largest}")
    arrival = max(t.out_s, t.opens_s)
    if arrival > t.closes_s:
        if t.closes_s < 0:
            return out(LeftOutReason.WINDOW_MISSED, "the patient's window closes before the round leaves")
        return out(
            LeftOutReason.WINDOW_MISSED,
            f"the door is {_minutes(t.out_s)} away; the patient's window closes {_minutes(t.closes_s)} after departure",
        )
    if t.fridge_s is not None and arrival > t.fridge_s:
        if t.opens_s > t.out_s:
            detail = f"cold-chain: the patient's window opens {_minutes(t.opens_s)} after departure"
        else:
            detail = f"cold-chain: the door is {_minutes(t.out_s)} away"
        return out(LeftOutReason.OUT_OF_FRIDGE, f"{detail}, it may be out of the fridge {_minutes(t.fridge_s)}")
    max_round = _s(limits.max_round)
    if arrival + t.service_s + t.back_s > max_round:
        waiting = " (waiting for the patient's window included)" if t.opens_s > t.out_s else ""
        return out(
            LeftOutReason.ROUND_TOO_LONG,
            f"there and back takes {_minutes(arrival + t.service_s + t.back_s)}{waiting}, "
            f"a round at most {_minutes(max_round)}",
        )
    return None


def _no_room(t: _Timing, vans: Sequence[Van], rounds: Sequence[Round], limits: Limits, run: SolverRun) -> LeftOut:
    d = t.delivery
    if not run.feasible:
        detail = f"the search stopped ({run.stopped_by}) before finding a round for it; plan again with more"
        return LeftOut(d.prescription_id, LeftOutReason.NO_ROOM, detail)
    suitable = [v for v in vans if v.carries(d)]
    loads = {r.courier_id: r.parcels for r in rounds}
    full = all(loads.get(v.courier_id, 0) + d.parcels > v.capacity for v in suitable)
    kind = "cold-box van" if d.cold_chain else "van"
    if full:
        detail = f"every {kind} on shift is full"
    else:
        detail = f"no {kind} has the time left (rounds of at most {_minutes(_s(limits.max_round))})"
    detail += "; it waits for the next round"
    return LeftOut(d.prescription_id, LeftOutReason.NO_ROOM, detail)


def _prizes(candidates: Sequence[_Timing], distance: np.ndarray, max_round: int) -> tuple[int, int]:
    """The prizes of an ordinary and of an urgent delivery. An ordinary one's is above any detour it
    can cost (in and out of the farthest pair, a whole round of time, its door): planning it always
    beats leaving it out. An urgent one's outweighs all the ordinary ones together."""
    ordinary = 2 * int(distance.max()) + 2 * max_round + max(t.service_s for t in candidates) + 1
    return ordinary, ordinary * (sum(not t.delivery.urgent for t in candidates) + 1)


def _solve(
    request: RoundRequest,
    candidates: Sequence[_Timing],
    metres: np.ndarray,
    seconds: np.ndarray,
    limits: Limits,
) -> tuple[list[Round], list[_Timing], SolverRun]:
    keep = [0, *(t.index for t in candidates)]
    distance, duration = metres[np.ix_(keep, keep)], seconds[np.ix_(keep, keep)]
    max_round = _s(limits.max_round)

    ordinary, urgent = _prizes(candidates, distance, max_round)

    locations = [Location(x=request.depot.location[1], y=request.depot.location[0], name=request.depot.depot_id)]
    clients = []
    for position, t in enumerate(candidates, start=1):
        d = t.delivery
        locations.append(Location(x=d.location[1], y=d.location[0], name=d.prescription_id))
        clients.append(
            Client(
                location=position,
                delivery=[d.parcels, d.parcels if d.cold_chain else 0],
                service_duration=t.service_s,
                tw_early=t.opens_s,
                tw_late=t.latest_s,
                prize=urgent if d.urgent else ordinary,
                required=False,
                name=d.prescription_id,
            )
        )
    vehicle_types = [
        VehicleType(
            num_available=1,
            capacity=[van.capacity, van.capacity if van.cold_box else 0],
            start_depot=0,
            end_depot=0,
            tw_early=0,
            start_late=0,  # leaves at the departure: cold-chain and due times count from it
            tw_late=max_round,
            shift_duration=max_round,
            unit_distance_cost=1,
            unit_duration_cost=1,
            name=van.courier_id,
        )
        for van in request.vans
    ]
    data = ProblemData(
        locations, clients, [Depot(location=0, name=request.depot.depot_id)], vehicle_types, [distance], [duration]
    )
    # A unit of excess load or time warp must never pay for itself with a prize: the penalty may
    # rise above the largest prize (PyVRP's default ceiling suits prizes of a few kilometres).
    params = SolveParams(penalty=PenaltyParams(max_penalty=float(2 * max(urgent, ordinary))))
    stop = MultipleCriteria([MaxIterations(limits.iterations), MaxRuntime(limits.time_limit_s)])
    result = solve(data, stop, seed=limits.seed, collect_stats=False, display=False, params=params)
    run = SolverRun(
        iterations=result.num_iterations,
        stopped_by="iterations" if result.num_iterations >= limits.iterations else "time limit",
        feasible=result.best.is_feasible(),
    )

    rounds: list[Round] = []
    planned: set[int] = set()
    for route in result.best.routes():
        if not route.is_feasible():  # the search stopped before this van's round kept every rule
            continue
        van = request.vans[route.vehicle_type()]
        stops = []
        previous = 0
        for activity in route.schedule():
            if not activity.is_client():
                continue
            t = candidates[activity.idx]
            position = activity.idx + 1
            stops.append(
                Stop(
                    prescription_id=t.delivery.prescription_id,
                    arrives=request.departure + timedelta(seconds=activity.start_time - activity.wait_duration),
                    waits=timedelta(seconds=activity.wait_duration),
                    leaves=request.departure + timedelta(seconds=activity.end_time),
                    km_from_previous=int(distance[previous, position]) / 1000,
                    parcels=t.delivery.parcels,
                    cold_chain=t.delivery.cold_chain,
                    urgent=t.delivery.urgent,
                )
            )
            planned.add(activity.idx)
            previous = position
        rounds.append(
            Round(
                courier_id=van.courier_id,
                departs=request.departure + timedelta(seconds=route.start_time()),
                returns=request.departure + timedelta(seconds=route.end_time()),
                stops=tuple(stops),
                km=route.distance() / 1000,
                km_back=int(distance[previous, 0]) / 1000,
            )
        )
    order = {van.courier_id: i for i, van in enumerate(request.vans)}
    rounds.sort(key=lambda r: order[r.courier_id])
    unplanned = [t for i, t in enumerate(candidates) if i not in planned]
    return rounds, unplanned, run


def one_trip_each(
    depot: DepotSite, deliveries: Iterable[ReadyDelivery], roads: Roads, limits: Limits = Limits()
) -> tuple[float, timedelta]:
    """Kilometres and van time if every delivery were its own trip, depot → door → depot (how the
    courier service dispatches today): the yardstick rounds are measured against."""
    start = Place(depot.depot_id, *depot.location)
    km, minutes = 0.0, 0.0
    for d in deliveries:
        door = d.place()
        there, back = roads.leg(start, door), roads.leg(door, start)
        service = d.service if d.service is not None else limits.service_per_stop
        km += there.km + back.km
        minutes += there.minutes + back.minutes + service.total_seconds() / 60
    return km, timedelta(minutes=minutes)
