"""Road distances for planning delivery rounds, as a setting.

Two road networks, both answering "how far and how long from here to there":

* `GreatCircleRoads`: the great-circle distance times a detour factor (rural roads wind: 1.3 is
  a common figure for a sparse network), driven at an average speed. No data needed.
* `MatrixRoads`: real road distances between listed places (villages, depots, crossings), loaded
  from a JSON file (`load_road_matrix`, format below). A door that is not a listed place is
  reached from its nearest listed place over local tracks, measured like `GreatCircleRoads`; two
  doors whose nearest place is the same are measured directly that way. So a county needs a
  matrix of its villages and depots, not of every farmstead, and a new patient is never "off
  the map".

The matrix file (JSON; a routing engine's table, e.g. OSRM's `/table` answer, reshaped)::

    {
      "places": [{"id": "WH-CENTRAL", "latitude": 51.55, "longitude": 70.40},
                 {"id": "Riverton",   "latitude": 51.32, "longitude": 70.95}],
      "km":      [[0, 58.1], [58.4, 0]],
      "minutes": [[0, 61], [62, 0]]
    }

`km[i][j]` is the road distance from place i to place j (it may differ from j to i); `minutes`
is optional (without it, km at the average speed). A place given to the planner with the id of
a listed place is that place, whatever its coordinates; any other is placed by its coordinates.

`road_matrices` turns a network and a list of places into the integer matrices PyVRP works on:
metres and seconds, rounded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from pharmacy_contracts.geo import LatLon, great_circle_km

#: The largest distance or duration PyVRP takes without warning about overflow (pyvrp.constants).
_PYVRP_MAX_VALUE = 1 << 44


@dataclass(frozen=True)
class Place:
    """A point the planner drives to or from: a depot or a patient's door."""

    id: str
    latitude: float
    longitude: float

    @property
    def point(self) -> LatLon:
        return (self.latitude, self.longitude)


@dataclass(frozen=True)
class Leg:
    km: float
    minutes: float

    def __add__(self, other: Leg) -> Leg:
        return Leg(self.km + other.km, self.minutes + other.minutes)


class Roads(Protocol):
    """A road network: the leg from one place to another (not necessarily symmetric)."""

    def leg(self, a: Place, b: Place) -> Leg: ...


@dataclass(frozen=True)
class GreatCircleRoads:
    """Great-circle distance x `detour_factor`, at `speed_kmh`."""

    detour_factor: float = 1.3
    speed_kmh: float = 50.0
    #: The same both ways: `road_matrices` measures each pair once.
    symmetric: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.detour_factor < 1:
            raise ValueError(f"a road is never shorter than the straight line: detour factor {self.detour_factor} < 1")
        if self.speed_kmh <= 0:
            raise ValueError(f"average speed must be positive, not {self.speed_kmh}")

    def leg(self, a: Place, b: Place) -> Leg:
        km = great_circle_km(a.point, b.point) * self.detour_factor
        return Leg(km, km / self.speed_kmh * 60)


@dataclass(frozen=True)
class MatrixRoads:
    """Road distances between listed places; the last mile to and from them by `local`."""

    places: tuple[Place, ...]
    km: tuple[tuple[float, ...], ...]
    minutes: tuple[tuple[float, ...], ...] | None = None
    local: GreatCircleRoads = GreatCircleRoads()
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _nearest: dict[Place, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.places)
        if n == 0:
            raise ValueError("a road matrix needs at least one place")
        ids = [p.id for p in self.places]
        if len(set(ids)) != n:
            raise ValueError("a road matrix lists a place id twice")
        for name, table in (("km", self.km), ("minutes", self.minutes)):
            if table is None:
                continue
            if len(table) != n or any(len(row) != n for row in table):
                raise ValueError(f"'{name}' must be {n} rows of {n} numbers, one per listed place")
            for i, row in enumerate(table):
                for j, value in enumerate(row):
                    if not value >= 0:  # also refuses NaN
                        raise ValueError(f"'{name}' from {ids[i]} to {ids[j]} is {value}: not a distance")
                    if i == j and value != 0:
                        raise ValueError(f"'{name}' from {ids[i]} to itself must be 0, not {value}")
        self._index.update({place_id: i for i, place_id in enumerate(ids)})

    def nearest(self, place: Place) -> Place:
        """The listed place a door is reached from."""
        return self.places[self._snap(place)]

    def _snap(self, place: Place) -> int:
        if (listed := self._index.get(place.id)) is not None:
            return listed
        if (known := self._nearest.get(place)) is None:
            known = min(range(len(self.places)), key=lambda i: great_circle_km(place.point, self.places[i].point))
            self._nearest[place] = known
        return known

    def _road(self, i: int, j: int) -> Leg:
        km = self.km[i][j]
        minutes = self.minutes[i][j] if self.minutes is not None else km / self.local.speed_kmh * 60
        return Leg(km, minutes)

    def _to_listed(self, a: Place, i: int) -> Leg:
        listed = self.places[i]
        return Leg(0.0, 0.0) if a.id == listed.id else self.local.leg(a, listed)

    def _from_listed(self, i: int, b: Place) -> Leg:
        listed = self.places[i]
        return Leg(0.0, 0.0) if b.id == listed.id else self.local.leg(listed, b)

    def leg(self, a: Place, b: Place) -> Leg:
        i, j = self._snap(a), self._snap(b)
        if i != j:
            return self._to_listed(a, i) + self._road(i, j) + self._from_listed(j, b)
        return Leg(0.0, 0.0) if a.id == b.id else self.local.leg(a, b)


def load_road_matrix(path: str | Path, *, local: GreatCircleRoads = GreatCircleRoads()) -> MatrixRoads:
    """The road network of a matrix file (format: this module's docstring)."""
    try:
        document = json.loads(Path(path).read_text())
        places = tuple(Place(str(p["id"]), float(p["latitude"]), float(p["longitude"])) for p in document["places"])
        km = tuple(tuple(float(v) for v in row) for row in document["km"])
        minutes = document.get("minutes")
        if minutes is not None:
            minutes = tuple(tuple(float(v) for v in row) for row in minutes)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"road matrix {path}: {error!r}") from error
    try:
        return MatrixRoads(places, km, minutes, local)
    except ValueError as error:
        raise ValueError(f"road matrix {path}: {error}") from error


def road_matrices(roads: Roads, places: Sequence[Place]) -> tuple[np.ndarray, np.ndarray]:
    """The distance (metres) and duration (seconds) matrices between `places`, in their order, as
    the int64 arrays PyVRP takes. A place to itself is 0. A network with `symmetric = True` is
    asked for each pair once."""
    n = len(places)
    symmetric = bool(getattr(roads, "symmetric", False))
    metres = np.zeros((n, n), dtype=np.int64)
    seconds = np.zeros((n, n), dtype=np.int64)
    for i, a in enumerate(places):
        for j in range(i + 1 if symmetric else 0, n):
            if i == j:
                continue
            leg = roads.leg(a, places[j])
            metres[i, j] = round(leg.km * 1000)
            seconds[i, j] = round(leg.minutes * 60)
    if symmetric:
        metres += metres.T
        seconds += seconds.T
    if n and max(int(metres.max()), int(seconds.max())) > _PYVRP_MAX_VALUE:
        raise ValueError("a leg is too long for the planner (over 2^44 metres or seconds)")
    return metres, seconds
