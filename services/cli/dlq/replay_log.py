"""The record of replays: the MongoDB collection `dlq_replays` (in the database the other commands
use), one document per replayed dead letter, `_id` = "<dlq topic>:<partition>:<offset>", with when,
by whom and where each replay of it landed. A record counts only for the letter it was made for
(same position and fingerprint)."""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo.errors import DuplicateKeyError

from services.runtime.mongo import client_for
from services.runtime.settings import RuntimeSettings

from .letters import DeadLetter

#: The collection that records every replay (in `PHARMACY_MONGO_DATABASE`).
REPLAYS_COLLECTION = "dlq_replays"
RECORD_ATTEMPTS = 10

T = TypeVar("T")


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
    client = client_for(settings)
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
