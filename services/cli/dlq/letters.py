"""What a dead letter is: one record of a `<topic>.dlq` topic with its `dlq.*` headers, what a
replay of it sends (the original headers, plus `dlq.replayed-from`) and where to (its original
topic, never another); and the naming of dead-letter topics."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from pharmacy_contracts.topics import ALL_TOPICS, BY_NAME, DEAD_LETTER_SUFFIX

REPLAYED_FROM = "dlq.replayed-from"
DLQ_HEADER_PREFIX = "dlq."


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
        if self.header("dlq.truncated") == "true":
            raise ValueError(
                f"{self.position} keeps only part of the original ({self.header('dlq.original-bytes')} bytes, "
                f"sha256 {self.header('dlq.original-sha256')}); it cannot be replayed: ask its sender to send it again"
            )
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
