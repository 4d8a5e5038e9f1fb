"""`pharmacy dlq`: look at dead letters and put them back where they came from.

Every consumed topic T has a dead-letter topic T.dlq. A dead letter keeps the original key, bytes
and headers and adds `dlq.*` headers (reason, detail, original topic/partition/offset, group,
attempts). Reading never joins a consumer group and never commits, so looking changes nothing.
A replay publishes the original bytes, key and headers (without `dlq.*`, plus
`dlq.replayed-from`) to the original topic; the services' handlers are idempotent, so replaying
a message that was in fact handled changes nothing.

Each replay is recorded in the MongoDB collection `dlq_replays` (the database the other commands
use), one document per dead letter, `_id` = "<dlq topic>:<partition>:<offset>", with when, by
whom and where each replay of it landed. The record is written right after the broker confirmed
the re-publish, one letter at a time, so a crash in between can replay at worst that one letter a
second time; recording first could instead mark a letter replayed that never was, and every later
replay would skip it. A later replay skips recorded letters unless asked (`--again`); `list` and
`show` say which were replayed.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import uuid4

import typer
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, RecordMetadata, TopicPartition
from pymongo.errors import DuplicateKeyError, PyMongoError
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pharmacy_contracts.topics import ALL_TOPICS, BY_NAME, DEAD_LETTER_SUFFIX
from services.runtime.mongo import connect
from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings

from . import bus
from .running import console, run, settings_from_env

app = typer.Typer(
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="For operators: list, show and replay dead letters (the <topic>.dlq topics).",
)

REPLAYED_FROM = "dlq.replayed-from"
DLQ_HEADER_PREFIX = "dlq."
IDLE_S = 1.0
#: How long `show` looks for a letter past the end offset the broker reported.
BEYOND_END_PATIENCE_S = 1.5
VALUE_PREVIEW_BYTES = 4096
#: The collection that records every replay (in `PHARMACY_MONGO_DATABASE`).
REPLAYS_COLLECTION = "dlq_replays"
RECORD_ATTEMPTS = 10

T = TypeVar("T")


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, as stored."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        """The last value of a header, decoded leniently (None if absent)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = (value or b"").decode("utf-8", "replace")
        return found

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def reason(self) -> str | None:
        return self.header("dlq.reason")

    @property
    def detail(self) -> str | None:
        return self.header("dlq.detail")

    @property
    def group(self) -> str | None:
        return self.header("dlq.group")

    @property
    def attempts(self) -> int | None:
        return _int_or_none(self.header("dlq.attempts"))

    @property
    def original_topic(self) -> str | None:
        return self.header("dlq.topic")

    @property
    def original_partition(self) -> int | None:
        return _int_or_none(self.header("dlq.partition"))

    @property
    def original_offset(self) -> int | None:
        return _int_or_none(self.header("dlq.offset"))

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def fingerprint(self) -> str:
        """What tells this letter from another that later sits at the same position (a dead-letter
        topic deleted and created again starts its offsets over): its time, key and value."""
        digest = hashlib.sha256()
        for part in (str(self.timestamp_ms).encode(), self.key or b"", self.value):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The original headers: every `dlq.*` header dropped, `dlq.replayed-from` added."""
        kept = [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX)]
        return [*kept, (REPLAYED_FROM, self.position.encode())]

    def replay_target(self) -> str:
        """The topic a replay goes to; refuses letters whose headers do not say, or disagree with
        the dead-letter topic they sit on (a replay must never land on a topic it did not come from)."""
        original = self.original_topic
        expected = self.topic.removesuffix(DEAD_LETTER_SUFFIX)
        if not original:
            raise ValueError(f"{self.position} has no dlq.topic header; it cannot be replayed")
        if original != expected:
            raise ValueError(
                f"{self.position} says it came from {original!r}, but sits on the dead letters of {expected}"
            )
        return original


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def dead_letter_topic(name: str) -> str:
    """`courier.updates.v1` or `courier.updates.v1.dlq` → `courier.updates.v1.dlq`."""
    if name in BY_NAME:
        return BY_NAME[name].dead_letter_topic
    if name.endswith(DEAD_LETTER_SUFFIX) and name.removesuffix(DEAD_LETTER_SUFFIX) in BY_NAME:
        return name
    known = ", ".join(t.name for t in ALL_TOPICS)
    raise ValueError(f"unknown topic {name!r}; known topics: {known} (each with {DEAD_LETTER_SUFFIX})")


def all_dead_letter_topics() -> list[str]:
    return [topic.dead_letter_topic for topic in ALL_TOPICS]


def _reader(settings: RuntimeSettings) -> AIOKafkaConsumer:
    """No group, no commits: a tool that looks never disturbs the services' consumer groups."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        client_id=f"pharmacy-dlq-{uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **aiokafka_kwargs(settings),
    )


def _letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value if record.value is not None else b"",
        headers=tuple((k, v if v is not None else b"") for k, v in record.headers or ()),
    )


async def _partitions(consumer: AIOKafkaConsumer, names: Iterable[str]) -> list[TopicPartition]:
    """The partitions of those topics that exist (a missing dead-letter topic simply has no letters)."""
    existing = await consumer.topics()  # also refreshes the cluster metadata
    return [
        TopicPartition(name, p)
        for name in names
        if name in existing
        for p in sorted(consumer.partitions_for_topic(name) or ())
    ]


async def read_dead_letters(
    settings: RuntimeSettings, topics: Iterable[str] | None = None, *, idle_s: float = IDLE_S
) -> list[DeadLetter]:
    """Every dead letter on `topics` (dead-letter or original topic names; all if None), oldest first
    per partition: from the beginning up to the end offsets seen at the start. If nothing arrives
    for `idle_s` before those are reached, raises TimeoutError rather than return a partial list
    (which `replay --all` would act on)."""
    names = (
        list(dict.fromkeys(dead_letter_topic(t) for t in topics)) if topics is not None else all_dead_letter_topics()
    )
    consumer = _reader(settings)
    try:
        await consumer.start()
        partitions = await _partitions(consumer, names)
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends.get(tp, 0) > 0}
        letters: list[DeadLetter] = []
        quiet_since = time.monotonic()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=200)
            for batch in batches.values():
                letters.extend(_letter(record) for record in batch)
            if any(batches.values()):
                quiet_since = time.monotonic()
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
                    quiet_since = time.monotonic()
            if remaining and time.monotonic() - quiet_since > idle_s:
                behind = ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(remaining))
                raise TimeoutError(f"nothing arrived for {idle_s:g} s before the end of {behind}; try again")
        return sorted(letters, key=lambda letter: (names.index(letter.topic), letter.partition, letter.offset))
    finally:
        await consumer.stop()


async def read_dead_letter(
    settings: RuntimeSettings, topic: str, partition: int, offset: int, *, timeout_s: float = 10.0
) -> DeadLetter | None:
    """The dead letter at one position, or None if there is none there (never was, or deleted)."""
    tp = TopicPartition(dead_letter_topic(topic), partition)
    consumer = _reader(settings)
    try:
        await consumer.start()
        if tp not in await _partitions(consumer, [tp.topic]):
            return None
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if offset < first:
            return None
        consumer.seek(tp, offset)
        # Past the reported end, look briefly anyway: the dev broker under-reports the end offset
        # after a multi-record batch, so "beyond the end" may still be there.
        beyond_end = offset >= end
        deadline = time.monotonic() + (BEYOND_END_PATIENCE_S if beyond_end else timeout_s)
        while time.monotonic() < deadline:
            for record in (await consumer.getmany(tp, timeout_ms=200)).get(tp, []):
                if record.offset == offset:
                    return _letter(record)
                if record.offset > offset:  # a gap: the record is gone (compaction, transaction marker)
                    return None
        if beyond_end:
            return None
        raise TimeoutError(f"{tp.topic}:{partition}:{offset} did not arrive within {timeout_s:g} s; try again")
    finally:
        await consumer.stop()


# --- the record of replays ----------------------------------------------------------------------


@dataclass(frozen=True)
class Replayed:
    """One replay of one dead letter: when, by whom (if known), and where it landed."""

    at: datetime
    by: str | None
    topic: str
    partition: int
    offset: int

    @property
    def landed(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    def describe(self) -> str:
        by = f" by {self.by}" if self.by else ""
        return f"{self.at:%Y-%m-%d %H:%M:%S} UTC{by} → {self.landed}"

    def document(self) -> dict[str, Any]:
        return {"at": self.at, "by": self.by, "topic": self.topic, "partition": self.partition, "offset": self.offset}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Replayed:
        at = doc["at"]
        if isinstance(at, str):
            at = datetime.fromisoformat(at)
        return cls(
            at=at if at.tzinfo else at.replace(tzinfo=UTC),
            by=doc.get("by"),
            topic=doc["topic"],
            partition=int(doc["partition"]),
            offset=int(doc["offset"]),
        )


@dataclass(frozen=True)
class ReplayRecord:
    """Every replay of the dead letter at one position, oldest first."""

    position: str
    fingerprint: str
    replays: tuple[Replayed, ...]

    @property
    def last(self) -> Replayed:
        return self.replays[-1]

    def describe(self) -> str:
        times = f" ({len(self.replays)} times)" if len(self.replays) > 1 else ""
        return f"replayed {self.last.describe()}{times}"

    def is_of(self, letter: DeadLetter) -> bool:
        return self.position == letter.position and self.fingerprint == letter.fingerprint


class ReplayLog:
    """The `dlq_replays` collection: one document per replayed dead letter, `_id` its position."""

    def __init__(self, database: Any) -> None:
        self._collection = database[REPLAYS_COLLECTION]

    async def records_of(self, letters: Sequence[DeadLetter]) -> dict[str, ReplayRecord]:
        """The records of those letters, by position. A record of another letter that once sat at
        the same position (its fingerprint differs) does not count."""
        if not letters:
            return {}
        by_position = {letter.position: letter for letter in letters}
        found: dict[str, ReplayRecord] = {}
        async for doc in self._collection.find({"_id": {"$in": list(by_position)}}):
            record = _record(doc)
            if record.is_of(by_position[record.position]):
                found[record.position] = record
        return found

    async def add(self, letter: DeadLetter, replayed: Replayed) -> ReplayRecord:
        """Append one replay to the letter's record (version-guarded: two operators replaying at
        once both get their replay recorded)."""
        for _ in range(RECORD_ATTEMPTS):
            doc = await self._collection.find_one({"_id": letter.position})
            before = _record(doc) if doc is not None else None
            earlier = before.replays if before is not None and before.is_of(letter) else ()
            record = ReplayRecord(letter.position, letter.fingerprint, (*earlier, replayed))
            new = _document(letter, record, version=(doc or {}).get("version", 0) + 1)
            if doc is None:
                try:
                    await self._collection.insert_one(new)
                    return record
                except DuplicateKeyError:
                    continue
            result = await self._collection.replace_one({"_id": letter.position, "version": doc.get("version")}, new)
            if result.matched_count == 1:
                return record
        raise RuntimeError(f"could not record the replay of {letter.position}: the record kept changing")


def _record(doc: dict[str, Any]) -> ReplayRecord:
    return ReplayRecord(
        position=doc["_id"],
        fingerprint=doc.get("fingerprint", ""),
        replays=tuple(Replayed.from_document(r) for r in doc.get("replays") or ()),
    )


def _document(letter: DeadLetter, record: ReplayRecord, *, version: int) -> dict[str, Any]:
    """What a person finds in `dlq_replays`: the letter, where it came from, and every replay."""
    return {
        "_id": record.position,
        "version": version,
        "dlq_topic": letter.topic,
        "dlq_partition": letter.partition,
        "dlq_offset": letter.offset,
        "fingerprint": record.fingerprint,
        "reason": letter.reason,
        "original_topic": letter.original_topic,
        "original_partition": letter.original_partition,
        "original_offset": letter.original_offset,
        "times": len(record.replays),
        "last_replayed_at": record.last.at,
        "last_replayed_by": record.last.by,
        "last_replayed_to": record.last.landed,
        "replays": [r.document() for r in record.replays],
    }


async def with_replay_log(settings: RuntimeSettings, use: Callable[[ReplayLog], Awaitable[T]]) -> T:
    """Run `use` with the replay log of the database the other commands use."""
    client = connect(settings.mongo_url.get_secret_value())
    try:
        return await use(ReplayLog(client[settings.mongo_database]))
    finally:
        client.close()


async def replay_records(settings: RuntimeSettings, letters: Sequence[DeadLetter]) -> dict[str, ReplayRecord]:
    return await with_replay_log(settings, lambda log: log.records_of(letters))


def operator() -> str | None:
    """Who is running the tool, if the system knows."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return None


# --- replaying ----------------------------------------------------------------------------------


async def replay(
    settings: RuntimeSettings,
    letters: Sequence[DeadLetter],
    *,
    on_replayed: Callable[[DeadLetter, RecordMetadata], None] | None = None,
    log: ReplayLog | None = None,
    by: str | None = None,
) -> int:
    """Republish each letter's original bytes, key and headers to its original topic, in order, one
    at a time: each is confirmed by the broker (and, with a `log`, recorded there) before the next
    is sent, so a crash leaves at most one letter replayed but not recorded. Checks every letter
    before sending any."""
    targets = [letter.replay_target() for letter in letters]
    if not letters:
        return 0
    async with bus.producer(settings) as client:
        for letter, target in zip(letters, targets, strict=True):
            metadata = await client.send_and_wait(target, letter.value, key=letter.key, headers=letter.replay_headers())
            if on_replayed is not None:
                on_replayed(letter, metadata)
            if log is not None:
                landed = Replayed(datetime.now(UTC), by, metadata.topic, metadata.partition, metadata.offset)
                try:
                    await log.add(letter, landed)
                except (PyMongoError, RuntimeError) as error:
                    raise NotRecordedError(letter, landed, error) from error
    return len(letters)


class NotRecordedError(Exception):
    """A letter was replayed (the broker confirmed it) but its record could not be written; the
    replay stopped there."""

    def __init__(self, letter: DeadLetter, replayed: Replayed, cause: BaseException) -> None:
        super().__init__(
            f"{letter.position} was replayed to {replayed.landed} but could not be recorded ({cause}); "
            "stopped there; a later replay sends that one letter again (harmless: the handlers are idempotent)"
        )
        self.letter = letter
        self.replayed = replayed


# --- showing -------------------------------------------------------------------------------------


def printable(text: str | bytes | None, limit: int | None = None) -> str:
    """Untrusted text made safe for a terminal: control characters escaped, optionally shortened."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = repr(text)
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is not None and len(safe) > limit:
        return safe[: max(limit - 1, 0)] + "…"
    return safe


def _original(letter: DeadLetter) -> str:
    if not letter.original_topic:
        return "?"
    return printable(f"{letter.original_topic} {letter.original_partition}:{letter.original_offset}")


def _replayed_count(letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None) -> str:
    if records is None:
        return ""
    done = sum(1 for letter in letters if letter.position in records)
    return f", {done} replayed"


def _replayed_cell(record: ReplayRecord | None) -> str:
    if record is None:
        return "no"
    times = f" ×{len(record.replays)}" if len(record.replays) > 1 else ""
    return f"{record.last.at:%Y-%m-%d %H:%M:%S}{times}"


def letters_table(letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None = None) -> Table:
    """One row per letter, for terminals of 120 columns or more. With `records`, whether and when
    each was replayed."""
    table = Table(title=f"{_count(letters, 'dead letter')}{_replayed_count(letters, records)}", show_lines=True)
    table.add_column("dead letter", overflow="fold", ratio=3)
    table.add_column("time (UTC)", min_width=10, ratio=2)
    table.add_column("original", overflow="fold", ratio=3)
    table.add_column("reason", style="bold red", overflow="fold", min_width=8, ratio=2)
    table.add_column("tries", justify="right", min_width=2)
    table.add_column("detail", ratio=4)
    table.add_column("key", overflow="fold", ratio=2)
    if records is not None:
        table.add_column("replayed (UTC)", overflow="fold", min_width=10, ratio=2)
    for letter in letters:
        replayed = [] if records is None else [Text(_replayed_cell(records.get(letter.position)))]
        table.add_row(
            Text(f"{letter.topic}\n{letter.partition}:{letter.offset}"),
            Text(f"{letter.time:%Y-%m-%d %H:%M:%S}"),
            Text(_original(letter).replace(" ", "\n", 1)),
            Text(printable(letter.reason) or "?"),
            Text(str(letter.attempts) if letter.attempts is not None else "?"),
            Text(printable(letter.detail, 120)),
            Text(printable(letter.key, 60)),
            *replayed,
        )
    return table


def letters_lines(letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None = None) -> list[Text]:
    """The same as `letters_table`, three lines per letter (four if it was replayed), for narrow terminals."""
    records_ = records or {}
    lines = [Text(_count(letters, "dead letter") + _replayed_count(letters, records), style="bold")]
    for letter in letters:
        lines.append(
            Text.assemble(
                (f"{letter.topic} {letter.partition}:{letter.offset}", "bold"),
                f"  {letter.time:%Y-%m-%d %H:%M:%S}  ",
                (printable(letter.reason) or "?", "bold red"),
                f" ×{letter.attempts if letter.attempts is not None else '?'}",
            )
        )
        lines.append(Text(f"  from {_original(letter)}  key {printable(letter.key, 60) or '(none)'}"))
        lines.append(Text(f"  {printable(letter.detail, 200)}", style="dim"))
        if letter.position in records_:
            lines.append(Text(f"  {printable(records_[letter.position].describe())}", style="green"))
    return lines


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def describe_value(value: bytes) -> str:
    """Pretty JSON if it parses, else a safe repr of (the start of) the bytes."""
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        shown = repr(value[:VALUE_PREVIEW_BYTES])
        return shown + (
            f" … ({len(value) - VALUE_PREVIEW_BYTES} more bytes)" if len(value) > VALUE_PREVIEW_BYTES else ""
        )


def _print_letter(letter: DeadLetter) -> None:
    console.print(f"[bold]{escape(letter.position)}[/]  {letter.time:%Y-%m-%d %H:%M:%S} UTC")
    console.print(Text(f"key: {printable(letter.key) if letter.key is not None else '(none)'}"))
    headers = Table(title="headers", show_header=True)
    headers.add_column("name", no_wrap=True)
    headers.add_column("value")
    for name, raw in letter.headers:
        headers.add_row(Text(printable(name)), Text(printable(raw)))
    console.print(headers)
    console.print(Text(f"value ({len(letter.value)} bytes):", style="bold"))
    # JSON is escaped by json.dumps; anything else is a repr: neither carries control characters
    console.print(Text(printable_block(describe_value(letter.value))))


def printable_block(text: str) -> str:
    return "\n".join(printable(line) for line in text.splitlines())


# --- commands -----------------------------------------------------------------------------------


def _dead_letter_topic_param(name: str) -> str:
    try:
        return dead_letter_topic(name)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _records_or_warning(settings: RuntimeSettings, letters: Sequence[DeadLetter]) -> dict[str, ReplayRecord] | None:
    """For the commands that only look: the replay records, or a warning and None if the database
    cannot be reached (the letters themselves are still worth seeing)."""
    try:
        return run(replay_records(settings, letters))
    except PyMongoError as error:
        console.print(
            Text(
                f"replay records ({REPLAYS_COLLECTION}) unavailable, not shown: {printable(str(error), 200)}",
                style="yellow",
            )
        )
        return None


@app.command("list")
def list_command(
    topic: str | None = typer.Option(None, "--topic", help="Only this topic's dead letters (original or .dlq name)"),
) -> None:
    """Every dead letter, or one topic's, oldest first, and whether (and when) each was replayed."""
    names = [_dead_letter_topic_param(topic)] if topic else None
    settings = settings_from_env()
    letters = run(read_dead_letters(settings, names))
    if not letters:
        console.print(f"no dead letters on {names[0] if names else 'any dead-letter topic'}")
        return
    records = _records_or_warning(settings, letters)
    if console.width >= 120:
        console.print(letters_table(letters, records))
    else:
        for line in letters_lines(letters, records):
            console.print(line)


@app.command()
def show(
    dlq_topic: str = typer.Argument(..., metavar="DLQ_TOPIC", help="The dead-letter topic (or its original topic)"),
    partition: int = typer.Argument(..., min=0, metavar="PARTITION"),
    offset: int = typer.Argument(..., min=0, metavar="OFFSET"),
) -> None:
    """One dead letter: every header, the value, and every replay of it."""
    name = _dead_letter_topic_param(dlq_topic)
    settings = settings_from_env()
    letter = run(read_dead_letter(settings, name, partition, offset))
    if letter is None:
        console.print(f"no dead letter at {escape(name)}:{partition}:{offset}")
        raise typer.Exit(1)
    _print_letter(letter)
    records = _records_or_warning(settings, [letter])
    if records is not None:
        record = records.get(letter.position)
        if record is None:
            console.print("not replayed")
        for replayed in record.replays if record else ():
            console.print(Text(f"replayed {printable(replayed.describe())}", style="green"))


@app.command("replay")
def replay_command(
    dlq_topic: str = typer.Argument(..., metavar="DLQ_TOPIC", help="The dead-letter topic (or its original topic)"),
    partition: int | None = typer.Argument(None, min=0, metavar="PARTITION"),
    offset: int | None = typer.Argument(None, min=0, metavar="OFFSET"),
    every: bool = typer.Option(False, "--all", help="Every dead letter of the topic not replayed before"),
    reason: str | None = typer.Option(None, help="With --all: only dead letters with this dlq.reason"),
    again: bool = typer.Option(
        False, "--again", help="Also replay letters already replayed (each new replay is recorded too)"
    ),
    by: str | None = typer.Option(None, "--by", help="Who is replaying, for the record (default: your login name)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed and skipped, send nothing"),
) -> None:
    """Publish dead letters again to their original topic: same bytes, key and headers.

    Either one letter (DLQ_TOPIC PARTITION OFFSET) or `DLQ_TOPIC --all [--reason R]`.

    Every replay is recorded in the MongoDB collection `dlq_replays` (`_id` =
    "<dlq topic>:<partition>:<offset>": when, by whom, where it landed), and letters recorded
    there are skipped next time unless you give --again. Letters go one at a time, each recorded
    right after the broker confirmed it, so a crash in between can replay at worst that one
    letter twice (the services' handlers are idempotent: a second copy changes nothing).
    """
    name = _dead_letter_topic_param(dlq_topic)
    settings = settings_from_env()
    if every:
        if partition is not None or offset is not None:
            raise typer.BadParameter("give either PARTITION OFFSET or --all, not both")
        letters = [
            letter for letter in run(read_dead_letters(settings, [name])) if reason is None or letter.reason == reason
        ]
    else:
        if partition is None or offset is None:
            raise typer.BadParameter("give PARTITION and OFFSET, or --all")
        if reason is not None:
            raise typer.BadParameter("--reason only goes with --all")
        found = run(read_dead_letter(settings, name, partition, offset))
        if found is None:
            console.print(f"no dead letter at {escape(name)}:{partition}:{offset}")
            raise typer.Exit(1)
        letters = [found]
    if not letters:
        console.print(
            f"no dead letters to replay on {escape(name)}"
            + (f" with reason {escape(printable(reason))}" if reason else "")
        )
        return
    try:
        targets = [letter.replay_target() for letter in letters]
    except ValueError as error:
        console.print(Text(f"refusing to replay: {printable(str(error))}", style="red"))
        raise typer.Exit(1) from None

    try:
        records = run(replay_records(settings, letters))
    except PyMongoError as error:
        console.print(
            Text(
                f"refusing to replay: the replay records ({REPLAYS_COLLECTION}) cannot be read, so neither "
                f"skipping nor recording would work: {printable(str(error), 200)}",
                style="red",
            )
        )
        raise typer.Exit(1) from None
    skipped = [] if again else [letter for letter in letters if letter.position in records]
    skipping = {letter.position for letter in skipped}
    chosen = [
        (letter, target) for letter, target in zip(letters, targets, strict=True) if letter.position not in skipping
    ]
    verb = "would skip" if dry_run else "skipped"
    for letter in skipped:
        console.print(Text(f"{verb} {letter.position}: {printable(records[letter.position].describe())}"))
    skipped_note = f", {len(skipped)} skipped: already replayed (--again replays them anyway)" if skipped else ""

    if dry_run:
        for letter, target in chosen:
            again_note = f", {printable(records[letter.position].describe())}" if letter.position in records else ""
            console.print(
                Text(f"would replay {letter.position} → {target}  ({printable(letter.reason) or '?'}{again_note})")
            )
        console.print(f"dry run: {_count(chosen, 'dead letter')} would be replayed{skipped_note}, nothing sent")
        return

    def report(letter: DeadLetter, landed: RecordMetadata) -> None:
        console.print(
            Text(
                f"replayed {letter.position} → {landed.topic}:{landed.partition}:{landed.offset}"
                f"  ({printable(letter.reason) or '?'}, key {printable(letter.key, 40) or '(none)'})"
            )
        )

    who = by or operator()
    try:
        sending = [letter for letter, _ in chosen]
        count = run(
            with_replay_log(settings, lambda log: replay(settings, sending, on_replayed=report, log=log, by=who))
        )
    except NotRecordedError as error:
        console.print(Text(f"not recorded: {printable(str(error))}", style="red"))
        raise typer.Exit(1) from None
    console.print(f"{count} dead letter{'s' if count != 1 else ''} replayed{skipped_note}")
