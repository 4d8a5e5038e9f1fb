"""kill -9 between the database write and the publish: the event is published after restart, once."""

from __future__ import annotations

import os

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import PrescriptionAccepted
from pharmacy_contracts.prescription import PrescriptionApproved
from services.cli import bus
from services.ops.devstack import DevStack
from services.prescription.domain import FormularyEntry
from services.prescription.storage import PrescriptionStorage
from services.runtime.mongo import connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch, of_type
from tests.support.scenario import prescription_message, registered_prescriber, wait_until


def reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


async def test_an_event_written_before_a_crash_is_published_after_restart(
    stack: DevStack, settings: RuntimeSettings
) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = PrescriptionStorage(client[settings.mongo_database])
    await storage.save_formulary_entry(
        FormularyEntry(drug_code="LEV50", name="Levothyroxine", max_quantity=90, max_days_supply=90)
    )
    await storage.save_prescriber(registered_prescriber())
    submitted = prescription_message("RX-CRASH-1", [("LEV50", 30)])
    accepted = PrescriptionAccepted(
        correlation_id="RX-CRASH-1",
        producer="consultation",
        sender_id=submitted.sender_id,
        prescription=submitted.prescription,
    )
    try:
        stack.start_services("prescription", env={"PHARMACY_FAULT_CRASH_AT": "after-write:prescription_verdicts"})
        pid = stack.pid_of("prescription-1")
        assert pid is not None
        await bus.publish(settings, accepted)
        await wait_until(lambda: _now(reaped(pid)), "the service to crash at the fault", timeout=60)

        # the verdict and its event are in the database; nothing reached Kafka
        pending = {stored.id: stored.outbox for stored in await storage.verdicts.pending_outbox()}
        assert [e["type"] for e in pending["RX-CRASH-1"]] == ["prescription.approved"]
        async with TopicWatch(settings.kafka_bootstrap_servers, topics.PRESCRIPTION_DECISIONS.name) as watch:
            await watch.settle()
            assert watch.messages() == []

            stack.start_services("prescription")  # a normal restart: no fault armed
            await watch.wait_for(lambda w: w.messages(), "the approval after the restart", timeout=60)
            await watch.settle(2.0)
        approvals = of_type(watch.messages(), PrescriptionApproved, prescription_id="RX-CRASH-1")
        assert len(approvals) == 1
        assert approvals[0].message_id == pending["RX-CRASH-1"][0]["message_id"], "the stored event, not a new one"

        async def cleared() -> bool:
            return not await storage.verdicts.pending_outbox()

        await wait_until(cleared, "the outbox to be cleared", timeout=30)
    finally:
        stack.stop("prescription-1")
        client.close()


async def _now(value: bool) -> bool:
    return value
