"""`pharmacy dlq` against the real broker: the shared runtime dead-letters bytes that break the
contract, the tool lists and shows them, and a replay puts the exact original bytes, key and
headers back on the original topic."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

import pytest
import typer
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import RecordMetadata, TopicPartition
from typer.testing import CliRunner

from pharmacy_contracts import topics
from services.cli import bus, dlq
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch, running

TOPIC = topics.COURIER_UPDATES
DLQ = TOPIC.dead_letter_topic


@dataclass(frozen=True)
class Sent:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    landed: RecordMetadata


@dataclass(frozen=True)
class Scenario:
    marker: str
    group: str
    garbage: Sent  # not even JSON (invalid UTF-8, an escape sequence)
    violating: Sent  # JSON, but not a CourierReported
    dead_letters: dict[bytes, tuple[int, int]]  # key → (partition, offset) on the dead-letter topic

    def mine(self, letters: list[dlq.DeadLetter]) -> dict[bytes, dlq.DeadLetter]:
        return {letter.key: letter for letter in letters if letter.key in self.dead_letters}


async def _dead_letter_two_messages(settings: RuntimeSettings) -> Scenario:
    own = settings.model_copy(update={"kafka_group_prefix": f"t{uuid.uuid4().hex[:8]}"})
    marker = uuid.uuid4().hex[:8]
    handled: list[object] = []

    async def handle(message: object) -> None:
        handled.append(message)

    runtime = ServiceRuntime("test", own)
    runtime.consume(TOPIC, group="dlq-tool", handle=handle, title="test")
    trace = ("trace-id", marker.encode())
    # Garbage goes without a content type: FastStream itself JSON-decodes a body labelled
    # application/json before the runtime's handler sees it, so such garbage is never dead-lettered.
    payloads = {
        f"PKG-{marker}-garbage".encode(): (b"\xff\xfe\x1b[31mnot json at all " + marker.encode(), [trace]),
        f"PKG-{marker}-violating".encode(): (
            json.dumps({"type": "courier.reported", "marker": marker}).encode(),
            [("content-type", b"application/json"), trace],
        ),
    }
    async with running(runtime.app()), TopicWatch(settings.kafka_bootstrap_servers, DLQ) as watch:
        async with bus.producer(settings) as client:
            sent = [
                Sent(key, value, headers, await client.send_and_wait(TOPIC.name, value, key=key, headers=headers))
                for key, (value, headers) in payloads.items()
            ]
        records = await watch.wait_for(
            lambda w: (found := [r for r in w.raw(DLQ) if r.key in payloads]) and len(found) == 2 and found,
            "both messages to be dead-lettered",
        )
    assert handled == []
    return Scenario(
        marker=marker,
        group=own.group("dlq-tool"),
        garbage=sent[0],
        violating=sent[1],
        dead_letters={r.key: (r.partition, r.offset) for r in records},
    )


@pytest.fixture(scope="module")
def scenario(settings: RuntimeSettings) -> Scenario:
    return asyncio.run(_dead_letter_two_messages(settings))


async def _end_offsets(settings: RuntimeSettings, topic: str) -> int:
    """How many records the topic holds (the sum of its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def test_read_dead_letters_finds_what_the_runtime_gave_up_on(
    settings: RuntimeSettings, scenario: Scenario
) -> None:
    everything = scenario.mine(await dlq.read_dead_letters(settings))
    assert set(everything) == set(scenario.dead_letters)
    for sent in (scenario.garbage, scenario.violating):
        letter = everything[sent.key]
        assert (letter.topic, letter.partition, letter.offset) == (DLQ, *scenario.dead_letters[sent.key])
        assert letter.reason == "contract_violation"
        assert letter.detail
        assert letter.attempts == 1
        assert letter.group == scenario.group
        assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
            TOPIC.name,
            sent.landed.partition,
            sent.landed.offset,
        )
        assert letter.value == sent.value
        assert letter.header("trace-id") == scenario.marker

    # by original or dead-letter topic name; another topic's dead letters are not these
    assert scenario.mine(await dlq.read_dead_letters(settings, [TOPIC.name])) == everything
    assert scenario.mine(await dlq.read_dead_letters(settings, [DLQ])) == everything
    assert scenario.mine(await dlq.read_dead_letters(settings, [topics.INVENTORY_EVENTS.name])) == {}

    letter = everything[scenario.garbage.key]
    assert await dlq.read_dead_letter(settings, DLQ, letter.partition, letter.offset) == letter
    assert await dlq.read_dead_letter(settings, DLQ, letter.partition, 10_000) is None
    with pytest.raises(ValueError, match="unknown topic"):
        await dlq.read_dead_letters(settings, ["no.such.topic"])


async def test_replay_puts_the_exact_original_back_on_the_original_topic(
    settings: RuntimeSettings, scenario: Scenario
) -> None:
    letter = scenario.mine(await dlq.read_dead_letters(settings, [DLQ]))[scenario.garbage.key]
    async with TopicWatch(settings.kafka_bootstrap_servers, TOPIC.name) as watch:
        assert await dlq.replay(settings, [letter]) == 1
        [record] = await watch.wait_for(
            lambda w: [r for r in w.raw(TOPIC.name) if (dlq.REPLAYED_FROM, letter.position.encode()) in r.headers],
            "the replayed message",
        )
    assert letter.position == f"{DLQ}:{letter.partition}:{letter.offset}"
    assert record.value == scenario.garbage.value
    assert record.key == scenario.garbage.key
    names = [name for name, _ in record.headers]
    assert "dlq.reason" not in names
    assert [n for n in names if n.startswith("dlq.")] == [dlq.REPLAYED_FROM]
    for header in scenario.garbage.headers:
        assert header in record.headers

    # a letter whose headers point elsewhere than the topic it sits on is refused before anything is sent
    forged = dlq.DeadLetter(
        topic=DLQ,
        partition=0,
        offset=0,
        timestamp_ms=0,
        key=b"k",
        value=b"v",
        headers=(("dlq.topic", topics.INVENTORY_COMMANDS.name.encode()),),
    )
    before = await _end_offsets(settings, topics.INVENTORY_COMMANDS.name)
    with pytest.raises(ValueError, match="sits on the dead letters"):
        await dlq.replay(settings, [letter, forged])
    assert await _end_offsets(settings, topics.INVENTORY_COMMANDS.name) == before


def test_the_commands(settings: RuntimeSettings, scenario: Scenario) -> None:
    """Sync on purpose: the commands run their own event loop, as they do from a shell."""
    root = typer.Typer()
    root.add_typer(dlq.app, name="dlq")  # as services/cli/main.py registers it
    runner = CliRunner()
    env = {"PHARMACY_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "COLUMNS": "80"}

    def invoke(*args: str, code: int = 0, columns: int = 80) -> str:
        result = runner.invoke(root, ["dlq", *args], env={**env, "COLUMNS": str(columns)})
        assert result.exit_code == code, f"{args}: {result.output}\n{result.exception!r}"
        return result.output

    narrow, wide = invoke("list"), invoke("list", columns=200)  # three lines per letter, or a table
    for partition, offset in scenario.dead_letters.values():
        assert f"{DLQ} {partition}:{offset}" in narrow and "contract_violation ×1" in narrow
        assert f"│ {DLQ} " in wide and f"│ {partition}:{offset} " in wide and "│ contract_violation │" in wide
    assert "contract_violation" in invoke("list", "--topic", TOPIC.name)
    assert "no dead letters" in invoke("list", "--topic", topics.INVENTORY_EVENTS.name)
    assert "unknown topic" in invoke("list", "--topic", "no.such.topic", code=2)

    partition, offset = scenario.dead_letters[scenario.violating.key]
    shown = invoke("show", DLQ, str(partition), str(offset))
    assert "contract_violation" in shown and "dlq.reason" in shown and scenario.group in shown
    assert f'"marker": "{scenario.marker}"' in shown  # pretty JSON
    assert f"value ({len(scenario.violating.value)} bytes)" in shown

    partition, offset = scenario.dead_letters[scenario.garbage.key]
    shown = invoke("show", TOPIC.name, str(partition), str(offset))  # the original topic's name works too
    assert "contract_violation" in shown
    assert "\\xff\\xfe\\x1b[31mnot json" in shown  # a safe repr of the bytes
    assert "\x1b[31mnot json" not in shown  # never the raw escape sequence
    assert "no dead letter at" in invoke("show", DLQ, str(partition), "10000", code=1)

    before = asyncio.run(_end_offsets(settings, TOPIC.name))
    dry = invoke("replay", DLQ, "--all", "--reason", "contract_violation", "--dry-run")
    for partition, offset in scenario.dead_letters.values():
        assert f"would replay {DLQ}:{partition}:{offset} → {TOPIC.name}" in dry
    assert "no dead letters to replay" in invoke("replay", DLQ, "--all", "--reason", "no_such_reason")
    invoke("replay", DLQ, "--all", str(partition), str(offset), code=2)
    invoke("replay", DLQ, str(partition), code=2)
    assert asyncio.run(_end_offsets(settings, TOPIC.name)) == before

    replayed = invoke("replay", DLQ, str(partition), str(offset))
    assert f"replayed {DLQ}:{partition}:{offset} → {TOPIC.name}:" in replayed
    assert "1 dead letter replayed" in replayed
    assert asyncio.run(_end_offsets(settings, TOPIC.name)) == before + 1
