"""The ceiling for any four-hop pipeline on a broker: four processes that only relay raw bytes.

Topic 0 → hop 1 → topic 1 → … → hop 4 → topic 4. Each hop is its own OS process (like the four
services) doing the least a correct at-least-once relay can do: fetch a batch, send every record
to the next topic without waiting for each one, wait for the broker to confirm the batch, commit
the batch. No parsing, no validation, no database. A driver publishes M messages into topic 0 and
counts them arriving on topic 4; messages per second end to end is the best any four-hop Python
pipeline could hope for on this broker and machine, so `make bench` divides by it.

With a database (`--mongo-url`) each hop also stores every message it relays as a document of
its own collection, in one unordered bulk insert per batch, before passing the batch on: the least
a pipeline whose four services each persist every prescription once can do. That is the ceiling
the broker *and the database* allow together, and the database's CPU per document written says
what each of our writes costs.

`python -m services.ops.relay_ceiling run --bootstrap 127.0.0.1:19092` measures a running broker;
`hop` is what the driver starts four times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO
from uuid import uuid4

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection
from pymongo import InsertOne
from pymongo.errors import BulkWriteError

HOPS = 4
READY = "ready"
#: The dev broker (Tansu) answers a fetch with nothing new after a part of fetch_max_wait_ms
#: (measured: ~115 ms of 500 ms); a small wait keeps the hops from idling between batches.
FETCH_MAX_WAIT_MS = 10
SEQUENCE_BYTES = 8  # each message starts with its sequence number, so the driver counts each once
#: aiokafka's default batch (16 KiB) holds ~15 messages of a prescription's size; measured here, a
#: producer with 256 KiB batches publishes ~2-3x faster. A ceiling should not be held back by it.
MAX_BATCH_BYTES = 256 * 1024
DUPLICATE_KEY = 11000
#: The database the stored relay writes to (its collections are `bench_relay_<run>_<hop>`).
RELAY_DATABASE = "bench_relay"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RelayResult:
    messages: int  # published into topic 0
    delivered: int  # distinct messages that came out of topic 4
    seconds: float  # from the first publish to the last message counted
    message_bytes: int
    hops: int
    complete: bool
    error: str | None = None
    #: Documents each hop stored per message (0: the bare relay, 1: the stored relay).
    writes_per_hop: int = 0

    @property
    def rate_per_s(self) -> float | None:
        return self.delivered / self.seconds if self.delivered and self.seconds > 0 else None

    @property
    def documents_written(self) -> int:
        return self.delivered * self.hops * self.writes_per_hop

    @property
    def hop_messages_per_s(self) -> float | None:
        """Messages handled per second by the four hops together (each message is handled four times)."""
        return self.rate_per_s * self.hops if self.rate_per_s else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate_per_s": self.rate_per_s, "hop_messages_per_s": self.hop_messages_per_s}


# --- one hop (a process of its own) ----------------------------------------------------------------


async def relay_hop(
    bootstrap: str, source: str, target: str, group: str, linger_ms: int, mongo_url: str | None = None
) -> None:
    """Relay `source` to `target` until killed (or until the driver that started it is gone); with
    `mongo_url`, store every message before passing it on."""
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms, max_batch_size=MAX_BATCH_BYTES
    )
    database = AsyncIOMotorClient(mongo_url) if mongo_url else None
    store = database[RELAY_DATABASE][_collection_of(source)] if database else None
    await asyncio.gather(consumer.start(), producer.start())
    try:
        await _wait_for_assignment(consumer)
        if database is not None:
            await database.admin.command("ping")  # connected before the driver's clock starts
        print(READY, flush=True)
        await _relay_batches(consumer, producer, target, store)
    finally:
        await asyncio.gather(consumer.stop(), producer.stop(), return_exceptions=True)
        if database is not None:
            database.close()


def _collection_of(source: str) -> str:
    return source.replace(".", "_")


async def _wait_for_assignment(consumer: AIOKafkaConsumer) -> None:
    # Joining a group takes seconds on the dev broker; the driver must not start its clock before
    # every hop owns its partitions. Nothing is published yet, so these polls consume nothing.
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)


async def _relay_batches(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, target: str, store: AsyncIOMotorCollection | None
) -> None:
    driver = os.getppid()
    while os.getppid() == driver:  # a driver killed with -9 must not leave hops running forever
        batches = await consumer.getmany(timeout_ms=500)
        if not batches:
            continue
        if store is not None:
            await _store(store, [record for records in batches.values() for record in records])
        confirmations = [
            await producer.send(target, record.value, key=record.key)  # queues only; confirmed below
            for records in batches.values()
            for record in records
        ]
        await asyncio.gather(*confirmations)
        await consumer.commit()


async def _store(store: AsyncIOMotorCollection, records: list[Any]) -> None:
    """One document per record, keyed by its position, so a redelivered batch writes nothing twice."""
    documents = [
        InsertOne({"_id": f"{r.partition}:{r.offset}", "version": 1, "key": r.key, "body": r.value}) for r in records
    ]
    try:
        await store.bulk_write(documents, ordered=False)
    except BulkWriteError as error:
        if any(failure["code"] != DUPLICATE_KEY for failure in error.details["writeErrors"]):
            raise


# --- the driver ------------------------------------------------------------------------------------


async def measure_relay_ceiling(
    bootstrap: str,
    *,
    messages: int = 30_000,
    message_bytes: int = 1024,
    partitions: int = 4,
    timeout_s: float = 60.0,
    linger_ms: int = 0,
    mongo_url: str | None = None,
    log_dir: Path | None = None,
    progress: Progress = lambda _: None,
    while_driving: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> RelayResult:
    """Start four hops on fresh topics of the broker at `bootstrap`, push `messages` through them;
    with `mongo_url`, each hop stores every message in the database there (the stored relay), and
    its collections are dropped afterwards. `while_driving` is entered from the first message
    published to the last one counted (hops started and ready, not yet stopped)."""
    writes_per_hop = 1 if mongo_url else 0
    run_id = uuid4().hex[:8]
    topics = [f"bench.relay.{run_id}.{hop}" for hop in range(HOPS + 1)]
    await _create_topics(bootstrap, topics, partitions)
    log_dir = log_dir or Path(tempfile.gettempdir())
    hops: list[asyncio.subprocess.Process] = []
    try:
        for hop in range(HOPS):
            hops.append(
                await _start_hop(
                    bootstrap, topics[hop], topics[hop + 1], f"bench.relay.{run_id}", linger_ms, mongo_url, log_dir
                )
            )
        await _wait_ready(hops, timeout_s)
        with while_driving():
            result = await _drive(bootstrap, topics[0], topics[-1], messages, message_bytes, timeout_s, progress)
        return replace(result, writes_per_hop=writes_per_hop)
    except TimeoutError as error:
        return RelayResult(
            messages, 0, 0.0, message_bytes, HOPS, complete=False, error=str(error), writes_per_hop=writes_per_hop
        )
    finally:
        await _stop_hops(hops)
        if mongo_url:
            await _drop_stored(mongo_url, topics[:-1])


async def _drop_stored(mongo_url: str, sources: list[str]) -> None:
    client = AsyncIOMotorClient(mongo_url)
    try:
        for source in sources:
            await client[RELAY_DATABASE].drop_collection(_collection_of(source))
    finally:
        client.close()


async def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def _start_hop(
    bootstrap: str,
    source: str,
    target: str,
    group_prefix: str,
    linger_ms: int,
    mongo_url: str | None,
    log_dir: Path,
) -> asyncio.subprocess.Process:
    log = await asyncio.to_thread(_open_log, log_dir / f"relay-hop-{source.rsplit('.', 1)[-1]}.log")
    database = ["--mongo-url", mongo_url] if mongo_url else []
    with log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.ops.relay_ceiling",
            "hop",
            "--bootstrap",
            bootstrap,
            "--source",
            source,
            "--target",
            target,
            "--group",
            f"{group_prefix}.{source}",
            "--linger-ms",
            str(linger_ms),
            *database,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
        )


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # handed to the child process; the caller closes its own copy


async def _wait_ready(hops: list[asyncio.subprocess.Process], timeout_s: float) -> None:
    async def ready(hop: asyncio.subprocess.Process) -> None:
        assert hop.stdout is not None
        line = await hop.stdout.readline()
        if line.decode().strip() != READY:
            raise TimeoutError(f"relay hop {hop.pid} exited before it was ready (see relay-hop-*.log)")

    try:
        await asyncio.wait_for(asyncio.gather(*(ready(hop) for hop in hops)), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"the relay hops did not join their groups within {timeout_s:.0f}s") from None


async def _stop_hops(hops: list[asyncio.subprocess.Process]) -> None:
    for hop in hops:
        if hop.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                hop.terminate()
    for hop in hops:
        try:
            await asyncio.wait_for(hop.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                hop.kill()
            await hop.wait()


def payload(sequence: int, size: int) -> bytes:
    """`size` bytes that start with the sequence number (what the driver counts by)."""
    head = sequence.to_bytes(SEQUENCE_BYTES, "big")
    return head + b"x" * max(0, size - SEQUENCE_BYTES)


async def _drive(
    bootstrap: str, first: str, last: str, messages: int, message_bytes: int, timeout_s: float, progress: Progress
) -> RelayResult:
    sink = AIOKafkaConsumer(
        last,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=MAX_BATCH_BYTES)
    await asyncio.gather(sink.start(), producer.start())
    try:
        bodies = [payload(sequence, message_bytes) for sequence in range(messages)]  # made before the clock
        started = time.monotonic()
        publishing = asyncio.create_task(_publish(producer, first, bodies))
        seen, last_seen = await _count_arrivals(sink, messages, started + timeout_s, progress)
        await _finish(publishing)
        elapsed = (last_seen or time.monotonic()) - started
        return RelayResult(messages, len(seen), round(elapsed, 3), message_bytes, HOPS, complete=len(seen) == messages)
    finally:
        await asyncio.gather(sink.stop(), producer.stop(), return_exceptions=True)


async def _publish(producer: AIOKafkaProducer, topic: str, bodies: list[bytes]) -> None:
    confirmations = [await producer.send(topic, body, key=body[:SEQUENCE_BYTES]) for body in bodies]
    await asyncio.gather(*confirmations)


async def _finish(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _count_arrivals(
    sink: AIOKafkaConsumer, expected: int, deadline: float, progress: Progress
) -> tuple[set[int], float | None]:
    seen: set[int] = set()
    last_seen: float | None = None
    while len(seen) < expected and time.monotonic() < deadline:
        batches = await sink.getmany(timeout_ms=100)
        before = len(seen)
        for records in batches.values():
            seen.update(int.from_bytes(record.value[:SEQUENCE_BYTES], "big") for record in records)
        if len(seen) > before:
            last_seen = time.monotonic()
            progress(len(seen))
    return seen, last_seen


# --- command line ------------------------------------------------------------------------------------

app = typer.Typer(pretty_exceptions_enable=False, add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def run(
    bootstrap: str = typer.Option("127.0.0.1:19092", help="A running Kafka-protocol broker"),
    messages: int = typer.Option(30_000, min=1, help="Messages pushed through the four hops"),
    message_bytes: int = typer.Option(1024, min=SEQUENCE_BYTES, help="Size of each message"),
    partitions: int = typer.Option(4, min=1, help="Partitions of each relay topic"),
    timeout: float = typer.Option(60.0, help="Give up after this many seconds"),
    linger_ms: int = typer.Option(0, min=0, help="linger_ms of each hop's producer"),
    mongo_url: str | None = typer.Option(None, help="Also store every message at each hop in this database"),
) -> None:
    """Measure the four-hop relay on a running broker (and database) and print messages per second."""
    result = asyncio.run(
        measure_relay_ceiling(
            bootstrap,
            messages=messages,
            message_bytes=message_bytes,
            partitions=partitions,
            timeout_s=timeout,
            linger_ms=linger_ms,
            mongo_url=mongo_url,
        )
    )
    rate = f"{result.rate_per_s:,.0f} messages/s" if result.rate_per_s else "no rate"
    state = "complete" if result.complete else f"INCOMPLETE ({result.error or 'timed out'})"
    typer.echo(f"{result.delivered}/{result.messages} through {HOPS} hops in {result.seconds:.2f}s: {rate}, {state}")


@app.command()
def hop(
    bootstrap: str = typer.Option(...),
    source: str = typer.Option(...),
    target: str = typer.Option(...),
    group: str = typer.Option(...),
    linger_ms: int = typer.Option(0),
    mongo_url: str | None = typer.Option(None),
) -> None:
    """One relay hop (started by `run`; prints "ready" once it owns its partitions)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay_hop(bootstrap, source, target, group, linger_ms, mongo_url))


if __name__ == "__main__":
    app()
