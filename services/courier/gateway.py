"""The courier gateway: each courier's app reads its own trips here, not from Kafka.

The threat it answers: `courier.dispatch.v1` carries every patient's address and phone number in
the county, and Kafka's ACLs grant a topic whole, not by key. A courier app that may read the
topic, or a phone stolen with its credentials, could read every trip of every courier. Through
the gateway a courier sees only the deliveries offered to or held by them, and only while they
are open; courier apps get no Kafka access to the dispatch topic at all (deploy/PRODUCTION.md,
ACLs).

A courier proves who they are with a bearer token the dispatcher issues (`pharmacy couriers
token`): an HMAC of the courier id under `PHARMACY_COURIER_GATEWAY_KEY` (`runtime.credentials`),
so the service keeps no token list and any instance can check one; the same token signs the
courier's reports. Changing the key revokes every token at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.runtime.credentials import COURIER, NO_FLOORS, Floors, is_token_of

from .domain import Delivery, DeliveryState

log = structlog.get_logger()

#: States in which a trip is the courier's business: offered to them, accepted, carried, or
#: being brought back after a cancellation.
OPEN_TRIP = frozenset({DeliveryState.OFFERED, DeliveryState.ACCEPTED, DeliveryState.PICKED_UP, DeliveryState.RETURNING})

#: Loads the deliveries a courier holds (the storage's query).
HeldBy = Callable[[str], Awaitable[list[Delivery]]]


def is_courier(key: bytes, courier_id: str, authorization: str | None, floors: Floors = NO_FLOORS) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return is_token_of(key, COURIER, courier_id, token, floors)


def open_trips(courier_id: str, deliveries: Iterable[Delivery]) -> list[dict[str, Any]]:
    """The courier's open trips, as the dispatch told them (no name, no drugs), with where each
    stands. Deliveries another courier holds now are left out, whatever the query returned."""
    trips = []
    for delivery in deliveries:
        attempt = delivery.current
        if delivery.state not in OPEN_TRIP or attempt is None or attempt.courier_id != courier_id:
            continue
        if delivery.details is None or delivery.warehouse_id is None:
            continue
        trips.append(
            {
                "dispatch_id": attempt.dispatch_id,
                "package_id": delivery.prescription_id,
                "attempt": attempt.number,
                "state": delivery.state.value,
                "pickup_warehouse_id": delivery.warehouse_id,
                "pickup_location": delivery.pickup_location.model_dump(mode="json")
                if delivery.pickup_location
                else None,
                "address": delivery.details.address.model_dump(mode="json"),
                "contact_phone": delivery.details.contact_phone,
                "cold_chain": delivery.details.cold_chain,
                "controlled": delivery.details.controlled,
                "accept_by": attempt.accept_by.isoformat() if attempt.accept_by else None,
            }
        )
    return sorted(trips, key=lambda trip: trip["dispatch_id"])


def routes(key: bytes, held_by: HeldBy, floors: Floors = NO_FLOORS) -> list[Route]:
    async def trips_of(request: Request) -> JSONResponse:
        courier_id = request.path_params["courier_id"]
        if not is_courier(key, courier_id, request.headers.get("authorization"), floors):
            # Which part was wrong is not the caller's business; the log keeps it for a person.
            log.warning("courier gateway refused a request", courier_id=courier_id, client=_client(request))
            return JSONResponse(
                {"error": "unauthorized", "detail": "a courier token for this courier id is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="courier"'},
            )
        trips = open_trips(courier_id, await held_by(courier_id))
        return JSONResponse({"courier_id": courier_id, "trips": trips}, headers={"Cache-Control": "no-store"})

    return [Route("/couriers/{courier_id}/trips", trips_of, methods=["GET"])]


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None
