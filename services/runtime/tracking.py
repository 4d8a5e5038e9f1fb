"""Where the message being handled came from, for the write that records it.

The subscriber sets it once per message and hands it over with the record (`unit_of_work.Record`),
whose save records it. Every document keeps, per topic partition, an offset below which it has
absorbed every message meant for it, so a replay from the beginning changes nothing, however long
ago the message was handled.

That offset is the batch's *floor* (the offset before the partition's first record in the batch),
not the record's own offset: records of one partition are not absorbed in offset order (a record
that failed is tried again after its neighbours were saved), so a document may absorb offset 11
before offset 10. The previous batch was fully handled before this one was fetched, so everything
up to the floor is done. Records inside the batch are recognised by their message ids (`handled`),
which also cover the other kind of duplicate: the same message published twice, at two offsets.

The offsets are kept per incarnation of the topic (its topic id, see `topic_ids`): a topic
deleted and created again, or mirrored to another cluster, starts its offsets anew, and a floor
of the old one must not pass over its messages.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int
    #: Every record of this partition up to here was handled before this record's batch.
    floor: int
    #: Which incarnation of the topic (see `topic_ids`): offsets of another one mean nothing here.
    incarnation: str | None = None

    @property
    def key(self) -> str:
        # MongoDB field names may not contain dots.
        topic = self.topic.replace(".", "_")
        return (
            f"{topic}:{self.partition}" if self.incarnation is None else f"{topic}~{self.incarnation}:{self.partition}"
        )


current_position: ContextVar[Position | None] = ContextVar("current_position", default=None)
