"""The county picture on the board: depots, the villages the rounds drive to, each van's round in
order, and the stock on its way from the centre to a township. An SVG drawn from the public
events alone (no map tiles: the county has no internet to spare, and the board needs none).

A fold like projection.py's (`fold_map(county, event) -> county`), kept apart because it keeps
different things: where depots are (`inventory.warehouse_registered`), each round's latest plan
(`courier.round_offered`, the latest `planned_at` wins) until its stops are done, and transfers
in transit. A door is drawn at its village, rounded to about a kilometre: a patient's house is
never on the board.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from html import escape

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.envelope import Envelope

Point = tuple[float, float]
#: Two decimals of a degree, about a kilometre: the village, not the house.
VILLAGE_DECIMALS = 2
WIDTH, HEIGHT, MARGIN = 640, 420, 28
#: One colour per van, in the order rounds first appear (cycled).
VAN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass(frozen=True)
class RoundLine:
    round_id: str
    courier_id: str
    depot: str
    planned_at: datetime
    stops: tuple[tuple[str, Point], ...]  # (dispatch id, village), in the order driven
    done: frozenset[str] = frozenset()

    @property
    def finished(self) -> bool:
        return {dispatch for dispatch, _ in self.stops} <= self.done


@dataclass(frozen=True)
class CountyMap:
    depots: Mapping[str, Point] = field(default_factory=dict)
    central: frozenset[str] = frozenset()
    rounds: Mapping[str, RoundLine] = field(default_factory=dict)
    #: dispatch id → round id, so a stop's outcome finds its round.
    stop_of: Mapping[str, str] = field(default_factory=dict)
    #: transfer id → (from, to, units) on the road between two depots.
    in_transit: Mapping[str, tuple[str, str, int]] = field(default_factory=dict)
    #: Transfers already received (a shipment read after its receipt is not on the road).
    received: frozenset[str] = frozenset()


EMPTY_MAP = CountyMap()


def village(point: Point) -> Point:
    return (round(point[0], VILLAGE_DECIMALS), round(point[1], VILLAGE_DECIMALS))


def fold_map(county: CountyMap, event: Envelope) -> CountyMap:
    match event:
        case inv.WarehouseRegistered():
            where = (event.location.latitude, event.location.longitude)
            central = county.central | {event.warehouse_id} if event.kind == "central" else county.central
            return replace(county, depots={**county.depots, event.warehouse_id: where}, central=central)
        case c.RoundOffered():
            known = county.rounds.get(event.round_id)
            if known is not None and known.planned_at >= event.planned_at:
                return county
            stops = tuple(
                (s.dispatch_id, village((s.address.coordinates.latitude, s.address.coordinates.longitude)))
                for s in event.stops
                if s.address.coordinates is not None
            )
            line = RoundLine(
                event.round_id,
                event.courier_id,
                event.pickup_warehouse_id,
                event.planned_at,
                stops,
                known.done if known else frozenset(),
            )
            stop_of = {**county.stop_of, **{dispatch: event.round_id for dispatch, _ in stops}}
            return replace(county, rounds={**county.rounds, event.round_id: line}, stop_of=stop_of)
        case c.DeliveryCompleted() | c.DeliveryFailed() | c.DeliveryOfferExpired():
            round_id = county.stop_of.get(event.dispatch_id)
            if round_id is None or round_id not in county.rounds:
                return county
            line = county.rounds[round_id]
            done = replace(line, done=line.done | {event.dispatch_id})
            rounds = {k: v for k, v in county.rounds.items() if k != round_id}
            if not done.finished:
                rounds[round_id] = done
            return replace(county, rounds=rounds)
        case inv.TransferShipped() if event.transfer_id not in county.received:
            leg = (event.warehouse_id, event.to_warehouse_id, event.quantity)
            return replace(county, in_transit={**county.in_transit, event.transfer_id: leg})
        case inv.TransferReceived():
            in_transit = {k: v for k, v in county.in_transit.items() if k != event.transfer_id}
            return replace(county, in_transit=in_transit, received=county.received | {event.transfer_id})
    return county


def fold_map_all(county: CountyMap, events: Iterable[Envelope]) -> CountyMap:
    for event in events:
        county = fold_map(county, event)
    return county


# --- drawing -------------------------------------------------------------------------------------------


def svg(county: CountyMap) -> str:
    """The county as an SVG: north up, longitude across, scaled to fit."""
    points = list(county.depots.values()) + [p for r in county.rounds.values() for _, p in r.stops]
    if not points:
        return _frame('<text x="20" y="40" class="empty">No depots registered yet.</text>')
    project = _projection(points)
    parts: list[str] = []
    for transfer, (source, target, units) in sorted(county.in_transit.items()):
        if source in county.depots and target in county.depots:
            (x1, y1), (x2, y2) = project(county.depots[source]), project(county.depots[target])
            parts.append(
                f'<line class="transfer" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                f'stroke="#888" stroke-dasharray="6 4" stroke-width="2"><title>{escape(source)} → '
                f"{escape(target)}: {units} units in transit ({escape(transfer)})</title></line>"
            )
    for index, line in enumerate(sorted(county.rounds.values(), key=lambda r: (r.planned_at, r.round_id))):
        colour = VAN_COLOURS[index % len(VAN_COLOURS)]
        depot = county.depots.get(line.depot)
        path = [depot] if depot else []
        path += [p for _, p in line.stops]
        if depot:
            path.append(depot)
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(project, path))
        parts.append(
            f'<polyline class="round" points="{coords}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(line.courier_id)}: {len(line.stops)} stops from {escape(line.depot)}</title></polyline>"
        )
        for number, (dispatch, point) in enumerate(line.stops, start=1):
            x, y = project(point)
            fill = "#fff" if dispatch in line.done else colour
            parts.append(
                f'<circle class="stop" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="{colour}">'
                f"<title>{escape(line.courier_id)} stop {number}</title></circle>"
                f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" class="stop-number">{number}</text>'
            )
    for depot, point in sorted(county.depots.items()):
        x, y = project(point)
        size = 9 if depot in county.central else 7
        parts.append(
            f'<rect class="depot" x="{x - size:.1f}" y="{y - size:.1f}" width="{2 * size}" height="{2 * size}" '
            f'fill="#333"><title>{escape(depot)}</title></rect>'
            f'<text x="{x + size + 3:.1f}" y="{y + 4:.1f}" class="depot-name">{escape(depot)}</text>'
        )
    return _frame("".join(parts))


def _projection(points: list[Point]) -> Callable[[Point], tuple[float, float]]:
    lats, lons = [p[0] for p in points], [p[1] for p in points]
    south, north, west, east = min(lats), max(lats), min(lons), max(lons)
    span = max(north - south, (east - west) * 0.62, 0.01)  # a degree east is ~0.62 of one north here

    def project(point: Point) -> tuple[float, float]:
        scale = min(WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN) / span
        x = MARGIN + (point[1] - west) * 0.62 * scale
        y = HEIGHT - MARGIN - (point[0] - south) * scale
        return x, y

    return project


def _frame(body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="The county: depots, rounds and transfers" font-family="sans-serif" font-size="11">'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#f7f5ef"/>{body}</svg>'
    )
