"""A package found damaged on the way: its units go to quarantine, the prescription is packed
again from the shelf and delivered on the next attempt; the books balance. When the shelf cannot
pack it again, the delivery is given up and the hospital is asked to call the patient."""

from __future__ import annotations

import pytest

from pharmacy_contracts import topics
from tests.support.scenario import (
    System,
    drug,
    prescription_message,
    scripted_couriers,
    stocked_drugs,
    topic_events,
    unique,
    wait_until,
)

pytestmark = pytest.mark.e2e


async def patient_known(system: System, rx: str) -> None:
    """The status has read the acceptance (the patient's phone): couriers set out after, as on a
    real day, so the patient hears each step (an acceptance read late tells only where it stands)."""

    async def known() -> bool:
        status = await system.status(rx)
        return status is not None and status.patient is not None

    await wait_until(known, f"the acceptance of {rx} to reach its status", timeout=60)


async def test_a_damaged_package_is_packed_again_and_delivered(system: System) -> None:
    code = unique("DMG")
    warehouse = await stocked_drugs(system, drug(code), units=100)
    rx = unique("RX-DAMAGED")
    await system.publish(prescription_message(rx, [(code, 30)]))
    await patient_known(system, rx)
    couriers = scripted_couriers(system.settings, {rx: ["fail-after-pickup:damaged", "deliver"]})
    couriers.start()
    try:
        final = await system.wait_stage(rx, "delivered", timeout=120)
    finally:
        await couriers.stop()

    assert any("packed again" in step.detail for step in final.history)
    stock = [e["type"] for e in await topic_events(system.settings, topics.INVENTORY_EVENTS.name, rx)]
    assert stock == [
        "inventory.stock_reserved",
        "inventory.stock_dispatched",
        "inventory.stock_quarantined",
        "inventory.stock_repacked",
        "inventory.stock_dispatched",
        "inventory.stock_delivered",
    ]
    lots = (await system.warehouses())[warehouse].lots
    assert sum(lot.quarantined for lot in lots.values()) == 30, "the damaged units wait for a pharmacist"
    assert sum(lot.delivered for lot in lots.values()) == 30
    assert all(lot.balanced for lot in lots.values())
    told = await topic_events(system.settings, topics.PATIENT_NOTIFICATIONS.name, rx)
    assert [n["kind"] for n in told if n["kind"] != "accepted"] == [
        "out_for_delivery",
        "failed_attempt",
        "out_for_delivery",
        "delivered",
    ]
    assert next(n for n in told if n["kind"] == "failed_attempt")["reason"] == "damaged"


async def test_a_damaged_package_the_shelf_cannot_pack_again_ends_undeliverable_with_a_follow_up(
    system: System,
) -> None:
    code = unique("DMG")
    await stocked_drugs(system, drug(code), units=30)  # all of it goes in the first package
    rx = unique("RX-LAST-BOX")
    couriers = scripted_couriers(system.settings, {rx: ["fail-after-pickup:damaged"]})
    couriers.start()
    try:
        await system.publish(prescription_message(rx, [(code, 30)]))
        final = await system.wait_stage(rx, "undeliverable", timeout=120)
    finally:
        await couriers.stop()

    assert any("UNDELIVERABLE" in why and "damaged" in why for why in final.why)
    receipts = await topic_events(system.settings, topics.CONSULTATION_RECEIPTS.name, rx)
    (follow_up,) = [r for r in receipts if r["type"] == "consultation.follow_up_requested"]
    assert follow_up["prescription_id"] == rx and "damaged" in follow_up["reason"]
