"""A lot recall, on the four service processes, a real broker and database: one lot of a drug is on
the shelf, held for a prescription not yet picked up, on the road with a courier and already
delivered to a patient. `pharmacy recall` (at 80 columns) quarantines the shelf, re-picks the
reservation from the other lot, calls the delivery back (it comes back to quarantine and the
prescription ends out of stock), lists the patient served, who is told on patient.notifications.v1;
the books balance at the warehouse, across the county and in the ledger."""

from __future__ import annotations

import asyncio
import json
from datetime import date, timedelta

import pytest
from typer.testing import CliRunner, Result

from pharmacy_contracts import topics
from services.cli import main as cli
from services.inventory.domain import current_lots, recompute_lots
from services.inventory.transfers import county_books
from tests.support.scenario import (
    System,
    courier,
    drug,
    prescription_message,
    read_topic,
    scripted_couriers,
    unique,
    wait_until,
)

pytestmark = pytest.mark.e2e


def environment(system: System) -> dict[str, str]:
    settings = system.settings
    return {
        "PHARMACY_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PHARMACY_MONGO_URL": settings.mongo_url.get_secret_value(),
        "PHARMACY_ANSWER_WAIT_S": "30",
        "COLUMNS": "80",
    }


async def pharmacy(env: dict[str, str], *arguments: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli.app, list(arguments), env=env)


async def test_a_recall_catches_the_shelf_a_reservation_and_the_road_and_lists_the_patients_served(
    system: System,
) -> None:
    metformin = drug(unique("MET"))
    code = metformin.drug_code
    warehouse = unique("WH-RECALL")
    bad, good = unique("LOT-BAD"), unique("LOT-GOOD")
    soon, later = date.today() + timedelta(days=365), date.today() + timedelta(days=730)
    await system.seed(
        formulary=[metformin],
        couriers=[courier("Amina")],
        stock=[(warehouse, code, 100, bad, soon), (warehouse, code, 100, good, later)],
    )
    served, on_the_road, held = unique("RX-SERVED"), unique("RX-ROAD"), unique("RX-HELD")
    couriers = scripted_couriers(system.settings, {served: ["deliver"], on_the_road: ["hold-after-pickup"]})
    couriers.start()
    try:
        # First expiry first: each takes 10 units of the lot about to be recalled.
        await system.publish(prescription_message(served, [(code, 10)]))
        await system.wait_stage(served, "delivered")
        await system.publish(prescription_message(on_the_road, [(code, 10)]))
        await system.wait_stage(on_the_road, "picked_up")
        await system.publish(prescription_message(held, [(code, 10)]))

        async def reserved() -> bool:
            return held in (await system.warehouses())[warehouse].holds

        await wait_until(reserved, "the third prescription reserved")

        env = environment(system)
        result = await pharmacy(env, "recall", bad, "--reason", "Supplier recall notice 118", "--by", "Aigerim")
        said = " ".join(result.output.split())
        assert result.exit_code == 0, result.output
        assert f"{warehouse}: 70 units off the shelf, 1 reservations re-picked, 0 withdrawn" in said
        assert f"delivered to (patients told, hospital asked to call): {served}" in said
        assert f"on the road (called back to quarantine): {on_the_road}" in said

        # The package comes back (the courier answers the call-back): quarantined, the prescription ends.
        ended = await system.wait_stage(on_the_road, "out_of_stock")
        assert any("RECALLED" in why for why in ended.why)
    finally:
        await couriers.stop()

    async def back_in_quarantine() -> bool:
        lot = (await system.warehouses())[warehouse].lots[bad]
        return (lot.dispatched, lot.quarantined) == (0, 90)

    await wait_until(back_in_quarantine, "the package called back to reach quarantine")
    after = (await system.warehouses())[warehouse]
    lot = after.lots[bad]
    assert (lot.available, lot.reserved, lot.delivered) == (0, 0, 10)
    assert [p.lot_id for p in after.holds[held].picks] == [good], "re-picked from the lot that is not recalled"
    assert on_the_road not in after.holds
    assert all(one.balanced for one in after.lots.values())
    assert county_books([after])[code].balanced

    # The patient served is told, in their language; the hospital is asked to call.
    async def told() -> bool:
        for record in await read_topic(system.settings, topics.PATIENT_NOTIFICATIONS.name, idle_s=0.5):
            body = json.loads(record.value)
            if body["prescription_id"] == served and body["kind"] == "recalled":
                return True
        return False

    await wait_until(told, "the patient served told of the recall")
    follow_ups = [
        json.loads(r.value)
        for r in await read_topic(system.settings, topics.CONSULTATION_RECEIPTS.name, idle_s=0.5)
        if json.loads(r.value).get("type") == "consultation.follow_up_requested"
    ]
    assert {(f["prescription_id"], f["stage"]) for f in follow_ups} >= {
        (served, "recalled"),
        (on_the_road, "out_of_stock"),
    }

    # The ledger, kept from the events alone, recomputes the warehouse's lots.
    documents = current_lots([after])

    async def ledger_agrees() -> bool:
        return recompute_lots(await system.inventory.movements(warehouse)) == documents

    await wait_until(ledger_agrees, "the ledger to recompute the warehouse's lots")

    # Sent again (a new recall id): nothing left to take off the shelf, nobody told twice.
    again = await pharmacy(environment(system), "recall", bad, "--reason", "Supplier recall notice 118", "--by", "A")
    assert again.exit_code == 0, again.output
    assert f"{warehouse}: 0 units off the shelf" in " ".join(again.output.split())
