"""Distance on the Earth, as every side measures it (nearest warehouse, nearest courier)."""

from __future__ import annotations

import math

#: The mean Earth radius (IUGG), in kilometres.
EARTH_RADIUS_KM = 6371.0088

LatLon = tuple[float, float]
"""A point as (latitude, longitude) in degrees."""


def great_circle_km(a: LatLon, b: LatLon) -> float:
    """Great-circle (haversine) distance between two points. Good enough to rank warehouses and
    couriers by: roads are not straight anyway."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    # min(): rounding can push h a hair above 1 for antipodal points, outside asin's domain.
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
