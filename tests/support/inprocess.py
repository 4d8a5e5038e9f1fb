"""Run one service's FastStream app inside the test's event loop, against the real broker and
database, and read what it publishes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import uuid4

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, RecordMetadata, TopicPartition
from faststream import FastStream

from pharmacy_contracts import Envelope
from pharmacy_contracts.consultation import CancellationRequested
from pharmacy_contracts.inventory import RestockRequested
from pharmacy_contracts.topics import BY_NAME, CONSULTATION_PRESCRIPTIONS
from services.cli import bus
from services.inventory.domain import ListedDrug
from services.inventory.storage import InventoryStorage
from services.runtime.errors import Refused
from services.runtime.mongo import connect
from services.runtime.settings import RuntimeSettings
from services.runtime.unit_of_work import Handled, Outcome, Record
from tests.support.scenario import wait_until

S = TypeVar("S", bound=RuntimeSettings)


@asynccontextmanager
async def running(app: FastStream) -> AsyncIterator[FastStream]:
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


class TopicWatch:
    """Collects every record of some topics from the beginning; `wait_for` polls until a match."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    async def __aenter__(self) -> TopicWatch:
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def _pull(self, timeout_ms: int) -> None:
        for batch in (await self._consumer.getmany(timeout_ms=timeout_ms)).values():
            self.records.extend(batch)

    def messages(self, topic: str | None = None) -> list[Envelope]:
        """Records that parse under their topic's contract (dead-letter topics are skipped)."""
        parsed = []
        for record in self.records:
            if record.topic in BY_NAME and (topic is None or record.topic == topic):
                parsed.append(BY_NAME[record.topic].parse(record.value))
        return parsed

    def raw(self, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for r in self.records if r.topic == topic]

    async def wait_for(self, predicate: Callable[[TopicWatch], Any], what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = predicate(self)
            if found:
                return found
            if time.monotonic() > deadline:
                seen = [
                    json.loads(r.value).get("type", "?") if r.value[:1] == b"{" else r.value[:40]
                    for r in self.records[-20:]
                ]
                raise TimeoutError(f"timed out waiting for {what}; last records: {seen}")
            await self._pull(200)

    async def settle(self, quiet_s: float = 1.0) -> None:
        """Read until nothing new arrives for `quiet_s` (to show that something did NOT happen).

        Only where no barrier can be ordered after what must not happen (see `wait_for_barrier`):
        quiet for a while is evidence, not proof."""
        while True:
            before = len(self.records)
            await self._pull(int(quiet_s * 1000))
            if len(self.records) == before:
                return

    async def wait_for_barrier(self, predicate: Callable[[TopicWatch], Any], what: str, timeout: float = 30.0) -> Any:
        """Wait for a barrier's effect, then read everything published before it: the proof that
        something did NOT happen.

        A barrier is a message the service handles after the messages under test, whose visible
        effect is decided in a write to the document store their effects would come from: an event
        it writes, or a refusal its decision raises (then dead-lettered). A store writes one group
        at a time and publishes a group's events (confirmed by the broker) before it takes the next
        group, so once the barrier's effect is seen, every event of an earlier write is on the
        broker, in whatever partition. "After" must be certain: the barrier goes to the topic of
        the messages under test with their key (one partition, whose records of one key one
        consumer handles in order), or it is sent only once their handling has finished
        (`wait_consumed`, or a call the test awaited)."""
        found = await self.wait_for(predicate, what, timeout)
        await self.read_to_end(timeout)
        return found

    async def read_to_end(self, timeout: float = 30.0) -> None:
        """Read every record the watched topics held when this was called, in every partition."""
        deadline = time.monotonic() + timeout
        ends = await self._consumer.end_offsets(list(self._consumer.assignment()))
        for partition, end in ends.items():
            while await self._consumer.position(partition) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out reading {partition} up to offset {end}")
                await self._pull(100)


def of_type(messages: list[Envelope], cls: type[Any], **fields: Any) -> list[Any]:
    return [m for m in messages if isinstance(m, cls) and all(getattr(m, k) == v for k, v in fields.items())]


class Clock:
    """A service's clock, moved by the test: deadlines pass without sleeping."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


def own_groups(settings_class: type[S], settings: RuntimeSettings, **overrides: Any) -> S:
    """Settings with this test's own consumer groups: a group an earlier test's app left is slow to
    rejoin on the dev broker, and a new group replays the module's earlier messages, which must
    change nothing."""
    return settings_class(**{**settings.model_dump(), "kafka_group_prefix": f"pharmacy-{uuid4().hex[:8]}", **overrides})


async def publish_noting(settings: RuntimeSettings, *messages: Envelope) -> list[RecordMetadata]:
    """Publish in order and return where each message landed (topic, partition, offset).

    The drugs restocks name are listed for inventory first, as the formulary would have announced
    them: these tests run inventory without the prescription service (inventory refuses a restock
    of a drug the formulary does not list; the unit and end-to-end tests prove that)."""
    restocked = {m.drug_code: m for m in messages if isinstance(m, RestockRequested)}
    if restocked:
        await list_drugs(settings, restocked)
    async with bus.producer(settings) as client:
        landed = []
        for message in messages:
            name, key, value, headers = bus.encode(message, settings)
            landed.append(await client.send_and_wait(name, value, key=key, headers=headers))
        return landed


async def list_drugs(settings: RuntimeSettings, drug_codes: Iterable[str]) -> None:
    """The formulary's announcement of these drugs, written straight into inventory's list."""
    client = connect(settings.mongo_url.get_secret_value())
    try:
        drugs = [ListedDrug(drug_code=code, name=f"drug {code}", form="tablet") for code in drug_codes]
        await InventoryStorage(client[settings.mongo_database]).list_drugs(drugs)
    finally:
        client.close()


async def wait_consumed(settings: RuntimeSettings, app: FastStream, landed: list[RecordMetadata]) -> None:
    """Until every consumer group of `app` reading a record's topic has committed past that record."""
    waits = [
        (group, TopicPartition(record.topic, record.partition), record.offset)
        for record in landed
        for group in {sub.group_id for sub in app.broker.subscribers if record.topic in sub.topic_names}
    ]
    assert {t.topic for _, t, _ in waits} == {r.topic for r in landed}, "every record has a consumer"
    readers = {
        group: AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group)
        for group in {group for group, _, _ in waits}
    }
    for reader in readers.values():
        await reader.start()
    try:

        async def committed_past() -> bool:
            for group, partition, offset in waits:
                committed = await readers[group].committed(partition)
                if committed is None or committed <= offset:
                    return False
            return True

        await wait_until(committed_past, f"the service to commit past {waits}", timeout=30)
    finally:
        for reader in readers.values():
            await reader.stop()


async def consultation_barrier(settings: RuntimeSettings, watch: TopicWatch, sender_id: str = "hospital-test") -> None:
    """For the consultation service, after every intake write already made (messages
    `wait_consumed` saw handled): `sender_id`'s signed cancellation of a prescription nobody sent,
    refused inside the intake store's write, so its dead letter follows whatever those writes
    caused (see `TopicWatch.wait_for_barrier`; the watch must follow the dead-letter topic). It
    records no prescription and gives none a status."""
    prescription_id = f"RX-BARRIER-{uuid4().hex[:8]}"
    barrier = CancellationRequested(
        correlation_id=prescription_id,
        producer=sender_id,
        sender_id=sender_id,
        prescription_id=prescription_id,
        reason="barrier",
        requested_by="test",
    )
    await bus.publish(settings, barrier)
    dead_letters = CONSULTATION_PRESCRIPTIONS.dead_letter_topic
    await watch.wait_for_barrier(
        lambda w: any(r.key == prescription_id.encode() for r in w.raw(dead_letters)), "the barrier's dead letter"
    )


def sender_keys(settings: RuntimeSettings, *senders: str) -> dict[str, dict[str, str]]:
    """Register `senders` with the consultation service under the key the tools sign with."""
    assert settings.signing_key_id and settings.signing_secret
    return {sender: {settings.signing_key_id: settings.signing_secret.get_secret_value()} for sender in senders}


def one_at_a_time(
    handle: Callable[[Any], Awaitable[None]],
) -> Callable[[Sequence[Record[Any]]], Awaitable[list[Handled[Any]]]]:
    """A batch handler that gives `handle` the messages of its batch one after another and answers
    what became of each as a unit of work would: a `Refused` refused, any other exception failed.
    For tests of the consumer itself (commits, redelivery, retries), which need no store."""

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        answers = []
        for record in records:
            try:
                await handle(record.message)
            except Refused as refusal:
                answers.append(Handled(record, Outcome.REFUSED, refusal=refusal))
            except Exception as error:
                answers.append(Handled(record, Outcome.FAILED, error=repr(error)))
            else:
                answers.append(Handled(record, Outcome.APPLIED))
        return answers

    return handle_batch
