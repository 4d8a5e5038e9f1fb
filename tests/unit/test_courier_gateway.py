"""The courier gateway: a courier's app sees that courier's open trips and nothing else, and only
with the token issued for that courier id."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette

from services.courier.domain import Delivery, DeliveryState, offer
from services.courier.gateway import is_courier, open_trips, routes
from services.runtime.credentials import courier_token
from tests.support import asgi
from tests.unit.builders import make_courier, make_delivery

KEY = b"gateway-key-for-tests"
T0 = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)


def offered(prescription_id: str, courier_id: str, state: DeliveryState = DeliveryState.OFFERED) -> Delivery:
    delivery = offer(
        make_delivery(prescription_id=prescription_id),
        make_courier(courier_id),
        now=T0,
        accept_timeout=timedelta(minutes=15),
    )
    return delivery.model_copy(update={"state": state})


async def get(app: Starlette, path: str, authorization: str | None = None) -> tuple[int, dict[str, Any]]:
    return await asgi.get(app, path, {"Authorization": authorization} if authorization is not None else None)


def test_a_token_opens_one_courier_id_only() -> None:
    token = courier_token(KEY, "C-AYA")
    assert is_courier(KEY, "C-AYA", f"Bearer {token}")
    assert is_courier(KEY, "C-AYA", f"bearer {token}")
    assert not is_courier(KEY, "C-BEK", f"Bearer {token}")
    assert not is_courier(b"another key", "C-AYA", f"Bearer {token}")
    assert not is_courier(KEY, "C-AYA", token), "the scheme is required"
    assert not is_courier(KEY, "C-AYA", None)
    assert not is_courier(KEY, "C-AYA", "Bearer ")


def test_a_revoked_token_opens_nothing_and_the_next_issue_does() -> None:
    first, second = courier_token(KEY, "C-AYA", 1), courier_token(KEY, "C-AYA", 2)
    floors = {"C-AYA": 2}
    assert not is_courier(KEY, "C-AYA", f"Bearer {first}", floors)
    assert is_courier(KEY, "C-AYA", f"Bearer {second}", floors)
    assert is_courier(KEY, "C-AYA", f"Bearer {first}"), "without a floor every issue counts"
    assert not is_courier(KEY, "C-AYA", "Bearer 0." + first.partition(".")[2])


def test_only_the_couriers_open_trips_are_shown() -> None:
    mine = offered("RX-1", "C-AYA")
    carried = offered("RX-2", "C-AYA", DeliveryState.PICKED_UP)
    returning = offered("RX-3", "C-AYA", DeliveryState.RETURNING)
    theirs = offered("RX-4", "C-BEK")
    delivered = offered("RX-5", "C-AYA", DeliveryState.DELIVERED)
    trips = open_trips("C-AYA", [returning, theirs, mine, delivered, carried])
    assert [(t["package_id"], t["state"]) for t in trips] == [
        ("RX-1", "offered"),
        ("RX-2", "picked_up"),
        ("RX-3", "returning"),
    ]
    assert set(trips[0]) >= {"dispatch_id", "address", "contact_phone", "pickup_warehouse_id", "accept_by"}
    assert "patient" not in json.dumps(trips) and "drug" not in json.dumps(trips)


async def test_the_route_answers_the_token_holder_and_refuses_everyone_else() -> None:
    asked: list[str] = []

    async def held_by(courier_id: str) -> list[Delivery]:
        asked.append(courier_id)
        return [offered("RX-1", "C-AYA"), offered("RX-4", "C-BEK")]

    app = Starlette(routes=routes(KEY, held_by))
    status, body = await get(app, "/couriers/C-AYA/trips", f"Bearer {courier_token(KEY, 'C-AYA')}")
    assert status == 200
    assert [t["package_id"] for t in body["trips"]] == ["RX-1"]

    for authorization in (None, f"Bearer {courier_token(KEY, 'C-BEK')}", "Bearer forged"):
        status, body = await get(app, "/couriers/C-AYA/trips", authorization)
        assert status == 401 and body["error"] == "unauthorized"
    assert asked == ["C-AYA"], "refused requests read nothing"
