"""Where the message being handled came from, for the write that records it.

The subscriber sets it once per message; `DocumentStore.apply` reads it. Every document keeps,
per topic partition, the highest offset whose message it absorbed. Kafka delivers one partition
in order, so a message at or below that offset has been applied to this document already: a
replay from the beginning changes nothing, however long ago the message was handled. (Message ids
cover the other kind of duplicate: the same message published twice, at two offsets.)
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int

    @property
    def key(self) -> str:
        # MongoDB field names may not contain dots.
        return f"{self.topic.replace('.', '_')}:{self.partition}"


current_position: ContextVar[Position | None] = ContextVar("current_position", default=None)
