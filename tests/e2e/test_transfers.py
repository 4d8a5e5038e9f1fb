"""Townships restocked from the centre, on the four service processes, a real broker and database:
prescriptions draw a township pharmacy down to its reorder point, inventory suggests a transfer from
the central warehouse on inventory.events.v1, staff ship it and receive it with the `pharmacy` tool at
80 columns (each command answered, and refused when sent again), and the books balance at both
warehouses, across the county and in the ledger."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest
from typer.testing import CliRunner, Result

from pharmacy_contracts import inventory as inv
from pharmacy_contracts import topics
from pharmacy_contracts.consultation import Coordinates
from services.cli import main as cli
from services.inventory.domain import current_lots, recompute_lots
from services.inventory.transfers import county_books
from tests.support.scenario import (
    PATIENT_HOME,
    System,
    drug,
    prescription_message,
    read_topic,
    unique,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: The central warehouse, about 75 km from the patients; the township pharmacy is at their door.
CENTRE_AT = (51.55, 70.40)
ANSWER_WAIT_S = "30"


@pytest.fixture(scope="module")
def service_env() -> dict[str, str]:
    """The reorder settings this test counts with (the defaults, said out loud)."""
    return {
        "PHARMACY_DEMAND_WINDOW_DAYS": "14",
        "PHARMACY_TRANSFER_LEAD_TIME_DAYS": "3",
        "PHARMACY_TRANSFER_SAFETY_STOCK": "20",
        "PHARMACY_TRANSFER_COVER": "50",
        "PHARMACY_TRANSFER_MIN_SHELF_DAYS": "30",
    }


def environment(system: System) -> dict[str, str]:
    settings = system.settings
    return {
        "PHARMACY_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PHARMACY_MONGO_URL": settings.mongo_url.get_secret_value(),
        "PHARMACY_ANSWER_WAIT_S": ANSWER_WAIT_S,
        "COLUMNS": "80",
    }


async def pharmacy(env: dict[str, str], *arguments: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli.app, list(arguments), env=env)


def said(result: Result) -> str:
    """What the tool printed, its lines joined (80 columns wrap a sentence anywhere)."""
    return " ".join(result.output.split())


async def suggestions(system: System, township: str) -> list[inv.TransferSuggested]:
    found = {}
    for record in await read_topic(system.settings, topics.INVENTORY_EVENTS.name, idle_s=0.5):
        event = topics.INVENTORY_EVENTS.parse(record.value)
        if isinstance(event, inv.TransferSuggested) and event.warehouse_id == township:
            found[event.message_id] = event
    return list(found.values())


async def test_a_transfer_suggested_shipped_and_received_with_the_books_balanced(system: System) -> None:
    levothyroxine = drug(unique("LEV"))
    code = levothyroxine.drug_code
    township, centre = unique("PH-TOWN"), unique("WH-CENTRE")
    town_lot, centre_lot = unique("LOT-T"), unique("LOT-C")
    expiry = date.today() + timedelta(days=730)
    await system.seed(
        formulary=[levothyroxine],
        couriers=[],  # the prescriptions wait for a courier: their stock stays reserved at the township
        stock=[(township, code, 100, town_lot, expiry), (centre, code, 1000, centre_lot, expiry)],
        locations={township: PATIENT_HOME, centre: CENTRE_AT},
    )
    await system.publish(
        inv.WarehouseRegistrationRequested(
            correlation_id=f"register-{centre}",
            producer="test",
            warehouse_id=centre,
            name="Test central warehouse",
            kind="central",
            location=Coordinates(latitude=CENTRE_AT[0], longitude=CENTRE_AT[1]),
            requested_by="test",
        )
    )

    async def central() -> bool:
        return (await system.warehouses())[centre].kind == "central"

    await wait_until(central, "the centre registered as central")

    # 40 of the township's 100 prescribed today: a reorder point of 40 a day for 3 days + 20 = 140,
    # 60 usable left, so 140 + 50 - 60 = 130 suggested from the centre (it keeps 20 of its 1000).
    first, second = unique("RX-TRANSFER"), unique("RX-TRANSFER")
    await system.publish(prescription_message(first, [(code, 40)]))
    found: list[inv.TransferSuggested] = []

    async def suggested() -> bool:
        found[:] = await suggestions(system, township)
        return bool(found)

    await wait_until(suggested, "a transfer suggested on inventory.events.v1", timeout=60)
    (suggestion,) = found
    assert (suggestion.from_warehouse_id, suggestion.drug_code) == (centre, code)
    assert (suggestion.usable, suggestion.reorder_point, suggestion.quantity) == (60, 140, 130)
    assert [(p.lot_id, p.quantity) for p in suggestion.picks] == [(centre_lot, 130)]
    transfer_id = suggestion.transfer_id

    # A second prescription draws the township further down: the open suggestion is not repeated.
    await system.publish(prescription_message(second, [(code, 20)]))

    async def both_reserved() -> bool:
        return (await system.warehouses())[township].level(code).reserved == 60

    await wait_until(both_reserved, "the second prescription reserved at the township")
    assert [s.transfer_id for s in await suggestions(system, township)] == [transfer_id]

    env = environment(system)
    listed = await pharmacy(env, "warehouse", "transfers")
    assert listed.exit_code == 0, listed.output
    assert transfer_id in listed.stdout and "suggested" in listed.stdout

    shipped = await pharmacy(env, "warehouse", "transfers", "ship", transfer_id, "--by", "Aigerim Bekova")
    assert shipped.exit_code == 0, shipped.output
    assert "transfer shipped" in said(shipped) and f"shipment of 130 × {code}" in said(shipped)
    again = await pharmacy(env, "warehouse", "transfers", "ship", transfer_id, "--by", "Aigerim Bekova")
    assert again.exit_code == 1, again.output
    assert "REFUSED (stock rule)" in said(again) and "was shipped already" in said(again)

    async def heard_at_the_township() -> bool:
        return (await system.warehouses())[township].incoming[transfer_id].state == "in_transit"

    await wait_until(heard_at_the_township, "the township told the transfer is in transit")
    at_centre = (await system.warehouses())[centre]
    assert (at_centre.level(code).available, at_centre.level(code).in_transit) == (870, 130)
    in_transit = await pharmacy(env, "warehouse", "transfers", "--json")
    assert in_transit.exit_code == 0, in_transit.output
    assert '"state": "in_transit"' in in_transit.stdout

    received = await pharmacy(env, "warehouse", "transfers", "receive", transfer_id, "--by", "Gulnara Sadykova")
    assert received.exit_code == 0, received.output
    assert "transfer received" in said(received) and f"+130 × {code}" in said(received)
    twice = await pharmacy(env, "warehouse", "transfers", "receive", transfer_id, "--by", "Gulnara Sadykova")
    assert twice.exit_code == 1 and "was received already" in said(twice), twice.output

    async def closed_at_the_centre() -> bool:
        return (await system.warehouses())[centre].outgoing[transfer_id].state == "closed"

    await wait_until(closed_at_the_centre, "the centre to close its in-transit units")
    warehouses = await system.warehouses()
    at_centre, at_township = warehouses[centre], warehouses[township]
    assert (at_centre.level(code).available, at_centre.level(code).in_transit) == (870, 0)
    assert at_centre.level(code).transferred_out == 130
    township_level = at_township.level(code)
    assert (township_level.available, township_level.reserved, township_level.transferred_in) == (170, 60, 130)
    assert at_township.lots[centre_lot].expiry_date == expiry, "the lot arrives with its id and expiry"
    for warehouse in (at_centre, at_township):
        assert warehouse.level(code).balanced, warehouse.warehouse_id
        assert all(lot.balanced for lot in warehouse.lots.values()), warehouse.warehouse_id
    books = county_books([at_centre, at_township])[code]
    assert books.balanced and books.settled and books.on_the_way == 0
    assert books.figures.received == 1100, "received from suppliers: nothing the transfer added"

    # The ledger, kept from the events alone, recomputes every lot of both warehouses.
    documents = current_lots([at_centre, at_township])

    async def ledger_agrees() -> bool:
        entries = [*await system.inventory.movements(centre), *await system.inventory.movements(township)]
        return recompute_lots(entries) == documents

    await wait_until(ledger_agrees, "the ledger to recompute both warehouses' lots")
    kinds = {e.kind for e in await system.inventory.movements(township, centre_lot)}
    kinds |= {e.kind for e in await system.inventory.movements(centre, centre_lot)}
    assert {"transfer_out", "transfer_in", "transfer_closed"} <= kinds
    ledger = await pharmacy({**env, "COLUMNS": "200"}, "warehouse", "ledger", township, centre_lot)
    assert ledger.exit_code == 0, ledger.output
    assert "transfer_in" in ledger.output and f"transfer {transfer_id} from {centre}" in ledger.output
    assert "do not balance" not in ledger.output

    done = await pharmacy(env, "warehouse", "transfers", "--json")
    assert '"state": "received"' in done.stdout and '"closed_at_source": true' in done.stdout
