"""The database round trips and records delivered that a service counts on /metrics (the bench reads
them): a handler's commands are counted under its group, and every record under its group and type."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from pharmacy_contracts import topics
from services.cli import bus
from services.consultation.app import create_app
from services.consultation.settings import ConsultationSettings
from services.runtime.observability import OUTSIDE_HANDLERS
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import own_groups, running, sender_keys
from tests.support.scenario import wait_until
from tests.support.stack import free_port
from tests.unit.builders import rejected


async def metrics(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    body = response.partition(b"\r\n\r\n")[2]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls)


async def test_a_handler_that_writes_moves_its_groups_round_trips(settings: RuntimeSettings) -> None:
    port = free_port()
    service_settings = own_groups(
        ConsultationSettings, settings, sender_keys=sender_keys(settings, "hospital-test"), http_port=port
    )
    status_group = service_settings.group("consultation.status")
    base = f"http://127.0.0.1:{port}"
    async with running(create_app(service_settings)):
        before = await metrics(base)
        # The status projection stores the prescription's status: a read and a write at least.
        await bus.publish(settings, rejected(prescription_id=f"RX-RT-{uuid.uuid4().hex[:6]}"))

        async def delivered() -> bool:
            found = await metrics(base)
            return total(found, "pharmacy_messages_handled_total", group=status_group) >= 1

        await wait_until(delivered, "the rejection to be handled by the status group", timeout=30)
        after = await metrics(base)

    trips = "pharmacy_database_round_trips_total"
    assert total(after, trips, group=status_group) > total(before, trips, group=status_group)
    assert (
        total(after, trips, group=status_group, command="update")
        + total(after, trips, group=status_group, command="insert")
        >= 1
    ), "the status write is counted under the group that handled the event"
    assert total(before, trips, group=OUTSIDE_HANDLERS) >= 1, "start-up (indexes) runs outside any handler"
    assert (
        total(
            after,
            "pharmacy_records_delivered_total",
            group=status_group,
            topic=topics.PRESCRIPTION_DECISIONS.name,
            type="prescription.rejected",
        )
        == 1
    )
