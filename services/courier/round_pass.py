"""The round planner's pass over the open deliveries: which depots are due a plan, what each plan is
made of, and the looks that carry the plan to each delivery. Pure: the pass in service.py reads the
deliveries and the fleet, calls these, calls the planner (rounds.py) and hands the looks to the
unit of work, where `decisions.offer_in_round` decides each delivery on its current document.

A depot is planned when a delivery there has waited `cadence` (rounds leave on a rhythm), when
`min_waiting` wait there (a van's worth), or at once when a round from there has not left yet: a
delivery that arrives before departure is fitted into it (re-planned) rather than left for the next.

A round's couriers and stops never change once planned but by re-planning before it leaves: its
stops keep their courier, their order and times may change, and waiting deliveries may join it.
A stop whose offer expires or fails leaves the round and waits for the next plan on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from pharmacy_contracts.geo import great_circle_km

from . import domain, messages, rounds
from .decisions import Look
from .domain import CourierProfile, Delivery, DeliveryState
from .roads import Roads
from .rounds import Limits


@dataclass(frozen=True)
class OpenRound:
    """The stops of one round still held by its courier (offered, accepted, on the road)."""

    round_id: str
    courier_id: str
    depot: str
    stops: tuple[Delivery, ...]

    @property
    def left(self) -> bool:
        """The van left the depot: a stop of it was picked up."""
        return any(d.current is not None and d.current.picked_up_at is not None for d in self.stops)


@dataclass(frozen=True)
class Depot:
    """One depot's part of a pass: the deliveries waiting there and the rounds that have not left."""

    depot: str
    location: tuple[float, float] | None
    waiting: tuple[Delivery, ...]
    not_left: tuple[OpenRound, ...]


@dataclass(frozen=True)
class PlannedStop:
    prescription_id: str
    expected_at: datetime


@dataclass(frozen=True)
class PlannedRound:
    """What the planner made of one van: its stops in order, when it is back and how far it drives."""

    courier_id: str
    stops: tuple[PlannedStop, ...]
    departs_at: datetime
    returns_at: datetime
    km: float


@dataclass(frozen=True)
class Van:
    """A courier on shift at a depot, and how many more packages they can take now."""

    courier: CourierProfile
    room: int


@dataclass(frozen=True)
class DepotPlan:
    """A depot's rounds, and the deliveries no round from there can take however many vans were
    free (a door too far for a round, a cold-chain door farther than its time out of the fridge,
    a window missed): those go on a trip of their own, as without rounds."""

    rounds: list[PlannedRound]
    alone: list[str]


class Planner(Protocol):
    """Plans a depot's rounds: `required` deliveries (stops of a round re-planned before it leaves)
    must be in a round; the others are planned as the vans allow."""

    def __call__(
        self,
        depot: Depot,
        vans: Sequence[Van],
        deliveries: Sequence[Delivery],
        *,
        required: Collection[str],
        departs_at: datetime,
    ) -> DepotPlan: ...


def open_rounds(deliveries: Iterable[Delivery]) -> dict[str, OpenRound]:
    members: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        attempt = delivery.current
        if attempt is None or attempt.round_id is None or delivery.active_courier_id is None:
            continue
        if delivery.state in domain.FINISHED or attempt.status is not domain.AttemptStatus.OFFERED:
            continue
        members[attempt.round_id].append(delivery)
    rounds: dict[str, OpenRound] = {}
    for round_id, stops in members.items():
        first = stops[0]
        assert first.current is not None and first.warehouse_id is not None
        ordered = tuple(sorted(stops, key=lambda d: (d.current.stop or 0) if d.current else 0))
        rounds[round_id] = OpenRound(round_id, first.current.courier_id, first.warehouse_id, ordered)
    return rounds


def waiting_for_a_round(delivery: Delivery) -> bool:
    return (
        delivery.state is DeliveryState.AWAITING_COURIER
        and domain.ready_to_offer(delivery)
        and domain.located(delivery)
    )


def depots_due(deliveries: Sequence[Delivery], *, now: datetime, cadence: timedelta, min_waiting: int) -> list[Depot]:
    """The depots to plan in this pass, by id."""
    rounds = open_rounds(deliveries)
    waiting: dict[str, list[Delivery]] = defaultdict(list)
    located_at: dict[str, tuple[float, float]] = {}
    for delivery in deliveries:
        if delivery.warehouse_id is not None and delivery.pickup_location is not None:
            point = delivery.pickup_location
            located_at.setdefault(delivery.warehouse_id, (point.latitude, point.longitude))
        if waiting_for_a_round(delivery):
            assert delivery.warehouse_id is not None
            waiting[delivery.warehouse_id].append(delivery)
    due: list[Depot] = []
    for depot in sorted(waiting):
        here = sorted(waiting[depot], key=lambda d: (d.awaiting_since or now, d.prescription_id))
        not_left = tuple(r for r in rounds.values() if r.depot == depot and not r.left)
        oldest = here[0].awaiting_since or now
        if not_left or len(here) >= min_waiting or now - oldest >= cadence:
            due.append(Depot(depot, located_at.get(depot), tuple(here), not_left))
    return due


def busy_couriers(deliveries: Iterable[Delivery]) -> set[str]:
    """Couriers who hold a round that has not come back: they get no second round meanwhile."""
    return {r.courier_id for r in open_rounds(deliveries).values()}


def couriers_by_depot(
    roster: Iterable[CourierProfile], loads: Mapping[str, int], depots: Sequence[Depot], busy: set[str]
) -> dict[str, list[CourierProfile]]:
    """The free couriers on shift at each depot due a plan, none twice in one pass. Depots are
    served in the order their oldest delivery has waited: each takes the free couriers whose base
    is nearest it (those with a cold box last, when it waits for nothing cold, as another depot may);
    one with none borrows the nearest free courier, and one whose waiting
    deliveries need a cold box and has none borrows the nearest free cold-chain courier. No depot
    waits for ever because the county has fewer couriers than depots: the one that waited longest
    comes first the next time."""
    free = sorted(
        (p for p in roster if p.active and p.courier_id not in busy and loads.get(p.courier_id, 0) < p.capacity),
        key=lambda p: p.courier_id,
    )
    shifts: dict[str, list[CourierProfile]] = {d.depot: [] for d in depots}
    for depot in sorted(depots, key=_longest_wait):
        home = [p for p in free if _nearest_depot(p, depots) == depot.depot]
        if not any(d.cold_chain for d in depot.waiting) and any(not p.cold_chain for p in home):
            home = [p for p in home if not p.cold_chain]  # a cold box may be wanted elsewhere
        if not home and free:
            home = [_nearest(free, depot)]
        cold = [p for p in free if p.cold_chain and p not in home]
        if any(d.cold_chain for d in depot.waiting) and not any(p.cold_chain for p in home) and cold:
            home.append(_nearest(cold, depot))
        shifts[depot.depot] = home
        free = [p for p in free if p not in home]
    for courier in free:  # wanted nowhere else: at home after all
        shifts[_nearest_depot(courier, depots)].append(courier)
    return shifts


def _longest_wait(depot: Depot) -> tuple[datetime, str]:
    oldest = min((d.awaiting_since for d in depot.waiting if d.awaiting_since is not None), default=datetime.max)
    return (oldest.replace(tzinfo=None), depot.depot)


def _nearest(couriers: Sequence[CourierProfile], depot: Depot) -> CourierProfile:
    def km(courier: CourierProfile) -> float:
        if courier.location is None or depot.location is None:
            return float("inf")
        return great_circle_km((courier.location.latitude, courier.location.longitude), depot.location)

    return min(couriers, key=lambda p: (km(p), p.courier_id))


def _nearest_depot(courier: CourierProfile, depots: Sequence[Depot]) -> str:
    if courier.location is None:
        return depots[0].depot
    base = (courier.location.latitude, courier.location.longitude)
    placed = [d for d in depots if d.location is not None]
    if not placed:
        return depots[0].depot
    return min(placed, key=lambda d: (great_circle_km(base, d.location), d.depot)).depot  # type: ignore[arg-type]


def without_refusers(
    planned: PlannedRound, roster: Mapping[str, CourierProfile], deliveries: Mapping[str, Delivery]
) -> tuple[PlannedRound, list[str]]:
    """The round without the stops its courier may not take (they let the delivery's offer expire,
    or its patient refused them), and those stops. The planner knows vans, not such history."""
    courier = roster.get(planned.courier_id)
    if courier is None:
        return replace(planned, stops=()), [s.prescription_id for s in planned.stops]
    kept = tuple(s for s in planned.stops if domain.may_carry(courier, deliveries[s.prescription_id]))
    passed_on = [s.prescription_id for s in planned.stops if s not in kept]
    return replace(planned, stops=kept), passed_on


def round_id_for(depot: str, courier_id: str, departs_at: datetime) -> str:
    return f"R-{depot}-{courier_id}-{departs_at:%Y%m%dT%H%M%S}"


def looks_for(
    planned: PlannedRound,
    *,
    round_id: str,
    planned_at: datetime,
    depot: Depot,
    deliveries: Mapping[str, Delivery],
) -> list[Look]:
    """Each stop's look for `decisions.offer_in_round`; the first carries the round as it is told."""
    stops = []
    for number, stop in enumerate(planned.stops, start=1):
        delivery = deliveries[stop.prescription_id]
        attempt = delivery.current
        in_this_round = attempt is not None and attempt.round_id == round_id
        dispatch_id = (
            attempt.dispatch_id
            if attempt is not None and in_this_round
            else domain.dispatch_id_for(delivery.prescription_id, len(delivery.attempts) + 1)
        )
        stops.append((number, dispatch_id, delivery, stop.expected_at))
    first = deliveries[planned.stops[0].prescription_id]
    told = messages.round_offered(
        round_id,
        planned.courier_id,
        planned_at=planned_at,
        depot=depot.depot,
        pickup_location=first.pickup_location,
        departs_at=planned.departs_at,
        returns_at=planned.returns_at,
        km=planned.km,
        stops=stops,
    )
    return [
        Look(
            correlation_id=delivery.prescription_id,
            producer=messages.PRODUCER.name,
            prescription_id=delivery.prescription_id,
            purpose="offer_in_round",
            courier_id=planned.courier_id,
            round_id=round_id,
            stop=number,
            expected_at=expected_at,
            round_offered=told if number == 1 else None,
        )
        for number, _, delivery, expected_at in stops
    ]


#: Why a delivery is left out of every plan, whatever vans are free: it goes on a trip of its own.
NO_ROUND_CAN_TAKE = frozenset(
    {
        rounds.LeftOutReason.TOO_BIG,
        rounds.LeftOutReason.WINDOW_MISSED,
        rounds.LeftOutReason.OUT_OF_FRIDGE,
        rounds.LeftOutReason.ROUND_TOO_LONG,
    }
)


@dataclass(frozen=True)
class PyVrpPlanner:
    """The planner the service runs: rounds.py (PyVRP) on the depot's deliveries and vans. A stop
    of a re-planned round the solver leaves out (it no longer fits) keeps its van, at the end."""

    roads: Roads
    limits: Limits

    def __call__(
        self,
        depot: Depot,
        vans: Sequence[Van],
        deliveries: Sequence[Delivery],
        *,
        required: Collection[str],
        departs_at: datetime,
    ) -> DepotPlan:
        if depot.location is None or not vans:
            return DepotPlan([], [])
        request = rounds.RoundRequest(
            depot=rounds.DepotSite(depot.depot, depot.location),
            departure=departs_at,
            deliveries=tuple(_ready(d) for d in deliveries if domain.located(d)),
            vans=tuple(rounds.Van(v.courier.courier_id, v.room, v.courier.cold_chain) for v in vans if v.room > 0),
        )
        if not request.vans:
            return DepotPlan([], [])
        plan = rounds.plan_rounds(request, self.roads, self.limits)
        alone = sorted(o.prescription_id for o in plan.left_out if o.reason in NO_ROUND_CAN_TAKE)
        planned = []
        for made in plan.rounds:
            stops = [PlannedStop(s.prescription_id, s.arrives) for s in made.stops]
            placed = {s.prescription_id for s in stops}
            stops += [PlannedStop(rx, made.returns) for rx in sorted(required) if rx not in placed]
            planned.append(PlannedRound(made.courier_id, tuple(stops), made.departs, made.returns, made.km))
        return DepotPlan(planned, [rx for rx in alone if rx not in required])


def _ready(delivery: Delivery) -> rounds.ReadyDelivery:
    assert delivery.details is not None and delivery.details.address.coordinates is not None
    door = delivery.details.address.coordinates
    return rounds.ReadyDelivery(
        prescription_id=delivery.prescription_id,
        location=(door.latitude, door.longitude),
        cold_chain=delivery.cold_chain,
        urgent=delivery.details.urgent,
    )
