"""The board's county picture: depots where they were registered, each round's latest plan in
order until its stops are done, transfers on the road, villages and never houses."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import Address, Coordinates
from services.board.county_map import EMPTY_MAP, fold_map_all, svg

AT = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def registered(warehouse_id: str, where: tuple[float, float], kind: str = "township") -> inv.WarehouseRegistered:
    level = {"latitude": where[0], "longitude": where[1]}
    return inv.WarehouseRegistered(
        correlation_id=warehouse_id,
        producer="inventory",
        warehouse_id=warehouse_id,
        name=warehouse_id,
        kind=kind,
        location=level,
    )


def stop(number: int, door: tuple[float, float]) -> c.RoundStop:
    address = Address(
        line="House 4, Orchard lane", town="Kara-Bulak", coordinates=Coordinates(latitude=door[0], longitude=door[1])
    )
    return c.RoundStop(
        stop=number,
        dispatch_id=f"RX-{number}-D1",
        package_id=f"RX-{number}",
        address=address,
        cold_chain=False,
        expected_at=AT + timedelta(minutes=30 * number),
    )


def planned(*stops: c.RoundStop, minute: int = 0) -> c.RoundOffered:
    return c.RoundOffered(
        correlation_id="R-1",
        producer="courier",
        round_id="R-1",
        courier_id="CUR-7",
        planned_at=AT + timedelta(minutes=minute),
        pickup_warehouse_id="WH-C",
        departs_at=AT,
        returns_at=AT + timedelta(hours=4),
        km=80.0,
        stops=list(stops),
    )


def delivered(number: int) -> c.DeliveryCompleted:
    return c.DeliveryCompleted(
        correlation_id=f"RX-{number}",
        producer="courier",
        prescription_id=f"RX-{number}",
        dispatch_id=f"RX-{number}-D1",
        courier_id="CUR-7",
        attempt=1,
        warehouse_id="WH-C",
    )


def test_a_rounds_latest_plan_is_drawn_in_order_at_villages_until_its_stops_are_done() -> None:
    first = planned(stop(1, (51.81234, 69.40321)), stop(2, (51.9, 69.6)))
    later = planned(stop(2, (51.9, 69.6)), stop(1, (51.81234, 69.40321)), stop(3, (51.7, 69.2)), minute=5)
    county = fold_map_all(EMPTY_MAP, [registered("WH-C", (51.8, 69.4), "central"), later, first])

    line = county.rounds["R-1"]
    assert [d for d, _ in line.stops] == ["RX-2-D1", "RX-1-D1", "RX-3-D1"], "the later plan wins, read in any order"
    assert line.stops[1][1] == (51.81, 69.4), "a village, about a kilometre, not the house"
    picture = svg(county)
    assert picture.count("<circle") == 3 and "<polyline" in picture and "WH-C" in picture
    assert "51.81234" not in picture and "Orchard" not in picture

    county = fold_map_all(county, [delivered(1), delivered(2)])
    assert county.rounds["R-1"].done == {"RX-1-D1", "RX-2-D1"}
    assert 'fill="#fff"' in svg(county), "done stops are drawn hollow"
    county = fold_map_all(county, [delivered(3), delivered(3)])
    assert county.rounds == {}, "a round whose stops are all done leaves the picture"


def test_a_transfer_is_on_the_road_from_shipped_to_received_in_any_order() -> None:
    common: dict[str, Any] = {
        "producer": "inventory",
        "transfer_id": "TR-1",
        "drug_code": "LEV50",
        "quantity": 120,
        "picks": [{"lot_id": "L1", "drug_code": "LEV50", "quantity": 120, "expiry_date": date(2028, 1, 1)}],
        "requested_by": "Aliya",
        "level": {
            "drug_code": "LEV50",
            "available": 10,
            "reserved": 0,
            "dispatched": 0,
            "quarantined": 0,
        },
    }
    shipped = inv.TransferShipped.model_validate(
        {**common, "correlation_id": "TR-1", "warehouse_id": "WH-C", "to_warehouse_id": "PH-K", "in_transit": 120}
    )
    received = inv.TransferReceived.model_validate(
        {**common, "correlation_id": "TR-1", "warehouse_id": "PH-K", "from_warehouse_id": "WH-C"}
    )
    depots = [registered("WH-C", (51.8, 69.4), "central"), registered("PH-K", (51.1, 70.9))]

    on_the_road = fold_map_all(EMPTY_MAP, [*depots, shipped])
    assert on_the_road.in_transit == {"TR-1": ("WH-C", "PH-K", 120)}
    assert 'class="transfer"' in svg(on_the_road) and "120 units in transit" in svg(on_the_road)
    assert fold_map_all(on_the_road, [received]).in_transit == {}
    assert fold_map_all(EMPTY_MAP, [*depots, received, shipped]).in_transit == {}, "read late, it is not on the road"


def test_an_empty_county_says_so() -> None:
    assert "No depots registered yet" in svg(EMPTY_MAP)


async def test_the_board_serves_the_county_picture_from_the_events_it_follows() -> None:
    from services.board.app import LiveBoard, create_app
    from services.board.settings import BoardSettings
    from tests.unit.test_board_projection import call

    live = LiveBoard(latest=5)
    app = create_app(BoardSettings(), live, follow_topics=False)
    version = live.version
    live.apply([registered("WH-C", (51.8, 69.4), "central"), planned(stop(1, (51.9, 69.6)))])

    status, body = await call(app, "/county.svg")
    assert status == 200 and body.startswith(b"<svg") and b"<polyline" in body and b"CUR-7" in body
    assert live.version > version, "a new plan is news for the pages"


def test_a_recall_is_an_alert_on_the_board_where_the_lot_was() -> None:
    from pharmacy_contracts import inventory as inv
    from services.board.projection import EMPTY, fold_all

    example = inv.LotRecalled.model_json_schema()["examples"][0]
    recalled = inv.LotRecalled.model_validate(example)
    never_held = inv.LotRecalled.model_validate({**example, "message_id": "M-ELSEWHERE", "drug_code": None})

    board = fold_all(EMPTY, [recalled, never_held])

    (alert,) = board.alerts
    assert alert.kind == "recalled" and recalled.lot_id in alert.text and recalled.warehouse_id in alert.text
