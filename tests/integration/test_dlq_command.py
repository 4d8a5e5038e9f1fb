"""`pharmacy dlq` against the real broker and database: the shared runtime dead-letters bytes that
break the contract, the tool lists and shows them, a replay puts the exact original bytes, key and
headers back on the original topic, and records it so the next replay skips it unless asked."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import typer
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import RecordMetadata, TopicPartition
from motor.motor_asyncio import AsyncIOMotorClient
from typer.testing import CliRunner

from pharmacy_contracts import topics
from services.cli import bus, dlq
from services.runtime.mongo import connect
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch, one_at_a_time, running

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
    runtime.consume(TOPIC, group="dlq-tool", handle_batch=one_at_a_time(handle), title="test")
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


Invoke = Callable[..., str]


def _cli(settings: RuntimeSettings, **extra_env: str) -> Invoke:
    """`pharmacy dlq ...` in-process, against the test stack."""
    root = typer.Typer()
    root.add_typer(dlq.app, name="dlq")  # as services/cli/main.py registers it
    runner = CliRunner()
    env = {
        "PHARMACY_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PHARMACY_MONGO_URL": settings.mongo_url.get_secret_value(),
        "PHARMACY_MONGO_DATABASE": settings.mongo_database,
        "COLUMNS": "80",
        **extra_env,
    }

    def invoke(*args: str, code: int = 0, columns: int = 80) -> str:
        result = runner.invoke(root, ["dlq", *args], env={**env, "COLUMNS": str(columns)})
        assert result.exit_code == code, f"{args}: {result.output}\n{result.exception!r}"
        return result.output

    return invoke


async def _replay_documents(settings: RuntimeSettings, *, forget: bool = False) -> dict[str, dict[str, Any]]:
    """The replay records (`dlq_replays`); with `forget`, deleted first. (The dev database keeps every
    database name in one file, so tests cannot keep their records apart by database name.)"""
    client = connect(settings.mongo_url.get_secret_value())
    try:
        collection = client[settings.mongo_database][dlq.REPLAYS_COLLECTION]
        if forget:
            await collection.delete_many({})
        return {doc["_id"]: doc async for doc in collection.find({})}
    finally:
        client.close()


@pytest.fixture
def no_replay_records(settings: RuntimeSettings) -> None:
    """Every test that replays through the command starts with no letter recorded as replayed."""
    assert asyncio.run(_replay_documents(settings, forget=True)) == {}


@pytest.mark.usefixtures("no_replay_records")
def test_the_commands(settings: RuntimeSettings, scenario: Scenario) -> None:
    """Sync on purpose: the commands run their own event loop, as they do from a shell."""
    invoke = _cli(settings)

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


@pytest.mark.usefixtures("no_replay_records")
def test_replay_records_what_it_replayed_and_skips_it_next_time(settings: RuntimeSettings, scenario: Scenario) -> None:
    cli = _cli(settings)

    def invoke(*args: str, columns: int = 119) -> str:  # narrow (< 120), but whole lines unwrapped
        return cli(*args, columns=columns)

    letters = asyncio.run(dlq.read_dead_letters(settings, [DLQ]))
    n = len(letters)
    assert n >= 2
    plural = "s" if n != 1 else ""
    assert f"{n} dead letter{plural}, 0 replayed" in invoke("list", "--topic", DLQ)
    assert "│ no " in invoke("list", "--topic", DLQ, columns=200)

    before = asyncio.run(_end_offsets(settings, TOPIC.name))
    first = invoke("replay", DLQ, "--all", "--by", "tester")
    assert f"{n} dead letter{plural} replayed" in first and "skipped" not in first
    assert asyncio.run(_end_offsets(settings, TOPIC.name)) == before + n

    # the record: one document per letter, keyed by the letter's own position
    documents = asyncio.run(_replay_documents(settings))
    assert set(documents) == {letter.position for letter in letters}
    for letter in letters:
        doc = documents[letter.position]
        assert (doc["dlq_topic"], doc["dlq_partition"], doc["dlq_offset"]) == (DLQ, letter.partition, letter.offset)
        assert (doc["original_topic"], doc["original_offset"]) == (TOPIC.name, letter.original_offset)
        assert doc["times"] == 1 and doc["last_replayed_by"] == "tester"
        [replayed] = doc["replays"]
        assert replayed["topic"] == TOPIC.name and replayed["by"] == "tester" and replayed["at"]
        assert doc["last_replayed_to"] == f"{TOPIC.name}:{replayed['partition']}:{replayed['offset']}"

    # the same again: nothing sent, every letter skipped, and the reason said
    second = invoke("replay", DLQ, "--all")
    assert f"0 dead letters replayed, {n} skipped: already replayed (--again replays them anyway)" in second
    for letter in letters:
        assert f"skipped {letter.position}: replayed " in second
    assert "by tester → courier.updates.v1:" in second
    assert f"dry run: 0 dead letters would be replayed, {n} skipped" in invoke("replay", DLQ, "--all", "--dry-run")
    assert asyncio.run(_end_offsets(settings, TOPIC.name)) == before + n

    # one letter: skipped too, unless --again (and that replay is recorded as well)
    partition, offset = scenario.dead_letters[scenario.violating.key]
    position = f"{DLQ}:{partition}:{offset}"
    assert "0 dead letters replayed, 1 skipped" in invoke("replay", DLQ, str(partition), str(offset))
    assert f"would replay {position} → {TOPIC.name}" in invoke(
        "replay", DLQ, str(partition), str(offset), "--again", "--dry-run"
    )
    assert asyncio.run(_end_offsets(settings, TOPIC.name)) == before + n
    again = invoke("replay", DLQ, str(partition), str(offset), "--again", "--by", "second")
    assert f"replayed {position} → {TOPIC.name}:" in again and "1 dead letter replayed" in again
    assert "skipped" not in again
    assert asyncio.run(_end_offsets(settings, TOPIC.name)) == before + n + 1
    doc = asyncio.run(_replay_documents(settings))[position]
    assert doc["times"] == 2 and [r["by"] for r in doc["replays"]] == ["tester", "second"]
    assert doc["last_replayed_by"] == "second"

    # list and show say which were replayed, and when
    narrow, wide = invoke("list"), invoke("list", columns=200)
    assert f"{n} dead letter{plural}, {n} replayed" in narrow
    assert f"replayed {doc['last_replayed_at']:%Y-%m-%d %H:%M:%S} UTC by second → {TOPIC.name}:" in narrow
    assert "(2 times)" in narrow
    assert narrow.count(" UTC by tester → ") == n - 1
    assert "replayed (UTC)" in wide and f"{doc['last_replayed_at']:%Y-%m-%d %H:%M:%S} ×2" in wide
    shown = invoke("show", DLQ, str(partition), str(offset))
    assert shown.count("replayed 20") == 2 and "by tester" in shown and "by second" in shown


def test_a_replay_that_cannot_read_its_records_sends_nothing(
    settings: RuntimeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        dlq.replay_log,
        "client_for",
        lambda settings_: AsyncIOMotorClient(settings_.mongo_url.get_secret_value(), serverSelectionTimeoutMS=300),
    )
    before = asyncio.run(_end_offsets(settings, TOPIC.name))
    invoke = _cli(settings, PHARMACY_MONGO_URL="mongodb://127.0.0.1:9")  # nothing listens there
    refused = invoke("replay", DLQ, "--all", "--again", code=1)
    assert "refusing to replay: the replay records (dlq_replays) cannot be read" in refused
    assert asyncio.run(_end_offsets(settings, TOPIC.name)) == before
    # looking still works, without the records
    listed = invoke("list", "--topic", DLQ)
    assert "replay records (dlq_replays) unavailable" in listed and "contract_violation" in listed


async def test_a_record_counts_only_for_the_letter_it_was_made_for(settings: RuntimeSettings) -> None:
    """A dead-letter topic deleted and created again starts its offsets over: a record of the letter
    that sat at a position once must not make the tool skip the different letter there now."""
    client = connect(settings.mongo_url.get_secret_value())
    try:
        log = dlq.ReplayLog(client[settings.mongo_database])
        then = dlq.DeadLetter(DLQ, 0, 70_000, 1_000, b"k", b"then", (("dlq.topic", TOPIC.name.encode()),))
        now = dlq.DeadLetter(DLQ, 0, 70_000, 2_000, b"k", b"now", (("dlq.topic", TOPIC.name.encode()),))
        replayed = dlq.Replayed(dlq.datetime.now(dlq.UTC), None, TOPIC.name, 0, 1)
        await log.add(then, replayed)
        assert set(await log.records_of([then])) == {then.position}
        assert await log.records_of([now]) == {}
        record = await log.add(now, replayed)  # its record starts over
        assert len(record.replays) == 1 and record.is_of(now) and not record.is_of(then)
        assert await log.records_of([then]) == {}
    finally:
        client.close()
