"""Outbox entries known published without writing each document again: a mark per writer.

A document keeps the outbox of its last save; nothing clears it once the broker has confirmed the
entries, because a clear is a second write of every document. Instead each process (a *writer*)
keeps one small document per store, in `<collection>_writers`: `{_id: writer, through, noted_at}`.
Its promise: every document this writer saved before `through` had its outbox published. A save
notes the writer and its moment on the document (`outbox_writer`, `saved_at`), so the entries not
known published are exactly those of documents saved at or after their writer's mark.

* A live writer knows its own unconfirmed saves (in memory, registered before the write starts, so
  a mark noted meanwhile stays below them) and notes its mark now and then (`note`): the oldest
  unconfirmed save, or the present when there is none. Its first mark is noted before its first
  save, so a crash right after that save leaves a mark below it.
* What a writer that died left is published by any other's relay: the documents saved at or after
  its mark and before the relay's staleness bound. Once they are published, the dead writer's mark
  is moved up to that bound; a writer silent for long enough is closed (`through` = infinity).
* A writer that stops cleanly, with nothing unconfirmed, closes its own mark.

Writers' marks are the only documents this adds; a live writer rewrites its own at most every
`NOTE_EVERY_S` while it saves, and every `BEAT_S` when idle.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from motor.motor_asyncio import AsyncIOMotorCollection, AsyncIOMotorDatabase

#: A live writer notes its mark at most this often while it saves...
NOTE_EVERY_S = 2.0
#: ...and at least this often when it does not, so others can tell it is alive.
BEAT_S = 10.0
#: A writer silent for this long is taken for gone: once what it left is published, its mark is
#: closed, and no relay looks at its documents again.
CLOSE_AFTER_S = 120.0
#: A save registered this recently may still be landing (server selection, write concern timeout):
#: entries of it that its document does not hold yet are not taken for saved over.
WRITE_UNDER_WAY_S = 60.0
#: Clocks of one machine may step back a little (NTP): a mark is noted this much below the present.
CLOCK_SLACK_S = 1.0
#: How old other writers' marks may be before documents read with entries they do not cover make
#: the store read them again.
KNOWN_FRESH_S = 1.0
#: The mark of a writer whose every document is published, for good.
CLOSED = math.inf
#: A store's writers' marks live in the collection named after it with this suffix.
WRITERS_SUFFIX = "_writers"


def writers_of(database: AsyncIOMotorDatabase, collection: str) -> AsyncIOMotorCollection:
    return database[f"{collection}{WRITERS_SUFFIX}"]


def new_writer_id() -> str:
    """A name a person reading the database can place: host, process, and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Unconfirmed:
    """One document's saves by this writer whose entries the broker has not confirmed yet."""

    saved_at: float
    message_ids: set[str]
    #: When the latest of them was registered (its write may still be under way).
    latest: float = -math.inf


@dataclass
class _Drained:
    """Documents of another writer this relay handed out to publish, and what its mark was."""

    through: float
    bound: float
    noted_at: float
    silent: bool
    #: Handed out and not yet published, by id: the version handed out.
    handed_out: dict[str, int] = field(default_factory=dict)


class OutboxMarks:
    """This writer's unconfirmed saves and mark in one store, and the marks of the store's other writers."""

    def __init__(self, collection: AsyncIOMotorCollection, writer: str | None = None) -> None:
        self.writer = writer or new_writer_id()
        self._writers = collection
        self._unconfirmed: dict[str, _Unconfirmed] = {}
        self._announced = False
        self._noted_through = -math.inf
        self._noted_at = -math.inf
        self._last_saved_at = -math.inf
        #: Other writers' marks as last read (the relay reads them on its passes).
        self.known: dict[str, float] = {}
        self.known_read_at = -math.inf
        self._draining: dict[str, _Drained] = {}
        #: Per other writer, the (document, version) pairs this relay published for it while its mark
        #: (which only it moves while it lives) still lags: the next pass does not hand them out again.
        #: A document of that writer that lands later, even one saved earlier, is still handed out.
        self.relayed: dict[str, set[tuple[str, int]]] = {}

    # --- this writer's saves ------------------------------------------------------------------------

    async def announce(self) -> None:
        """Before the first save: a mark below every save to come."""
        if not self._announced:
            await self._note(time.time() - CLOCK_SLACK_S)
            self._announced = True

    def saving(self, doc_id: str, saved_at: float, message_ids: Iterable[str]) -> _Unconfirmed | None:
        """Register a save's entries before it is written; returns what to restore if it is not written."""
        before = self._unconfirmed.get(doc_id)
        ids = set(message_ids)
        if before is None:
            self._unconfirmed[doc_id] = _Unconfirmed(saved_at, ids, saved_at)
        else:
            merged = before.message_ids | ids
            self._unconfirmed[doc_id] = _Unconfirmed(min(before.saved_at, saved_at), merged, saved_at)
        self._last_saved_at = max(self._last_saved_at, saved_at)
        return before

    def not_written(self, doc_id: str, before: _Unconfirmed | None) -> None:
        if before is None:
            self._unconfirmed.pop(doc_id, None)
        else:
            self._unconfirmed[doc_id] = before

    def unconfirmed(self, written_before: float | None) -> dict[str, set[str]]:
        """This writer's documents with entries not confirmed, saved before that time if given."""
        return {
            doc_id: set(u.message_ids)
            for doc_id, u in self._unconfirmed.items()
            if written_before is None or u.saved_at < written_before
        }

    def no_write_under_way(self, doc_id: str) -> bool:
        """Whether this writer's last save of the document is long enough ago that no write of it
        can still land (the driver gives up on a write well within this)."""
        unconfirmed = self._unconfirmed.get(doc_id)
        return unconfirmed is None or unconfirmed.latest < time.time() - WRITE_UNDER_WAY_S

    def unconfirmed_of(self, doc_id: str) -> set[str]:
        unconfirmed = self._unconfirmed.get(doc_id)
        return set() if unconfirmed is None else unconfirmed.message_ids

    def confirmed(self, doc_id: str, message_ids: Collection[str]) -> None:
        unconfirmed = self._unconfirmed.get(doc_id)
        if unconfirmed is not None:
            unconfirmed.message_ids -= set(message_ids)
            if not unconfirmed.message_ids:
                del self._unconfirmed[doc_id]
        for writer, drained in self._draining.items():
            version = drained.handed_out.pop(doc_id, None)
            if version is not None:
                self.relayed.setdefault(writer, set()).add((doc_id, version))

    def mark(self) -> float:
        oldest = min((u.saved_at for u in self._unconfirmed.values()), default=time.time())
        return oldest - CLOCK_SLACK_S

    async def note(self) -> None:
        """The mark, if it moved past a save since last noted (at most every NOTE_EVERY_S), or a beat."""
        if not self._announced:
            return
        now = time.time()
        through = self.mark()
        moved = through > self._noted_through and self._noted_through <= self._last_saved_at
        if (moved and now - self._noted_at >= NOTE_EVERY_S) or now - self._noted_at >= BEAT_S:
            await self._note(through)

    async def retire(self) -> None:
        """At a clean stop: nothing is unconfirmed, so every document this writer saved is published."""
        if self._announced and not self._unconfirmed:
            await self._writers.update_one({"_id": self.writer}, {"$set": {"through": CLOSED}})

    async def _note(self, through: float) -> None:
        now = time.time()
        await self._writers.update_one(
            {"_id": self.writer}, {"$set": {"through": through, "noted_at": now}}, upsert=True
        )
        self._noted_through, self._noted_at = through, now

    # --- other writers ------------------------------------------------------------------------------

    async def read_others(self) -> dict[str, tuple[float, float]]:
        """Every other writer's mark and when it last noted one; closed ones are left out."""
        found: dict[str, tuple[float, float]] = {}
        self.known, self.known_read_at = {}, time.monotonic()
        async for doc in self._writers.find({}):
            through = float(doc.get("through", -math.inf))
            if doc["_id"] != self.writer:
                self.known[doc["_id"]] = through
                if through != CLOSED:
                    found[doc["_id"]] = (through, float(doc.get("noted_at", -math.inf)))
        return found

    def already_relayed(self, writer: str, doc_id: str, version: int) -> bool:
        return (doc_id, version) in self.relayed.get(writer, ())

    def handing_out(
        self, writer: str, through: float, noted_at: float, bound: float, documents: Mapping[str, int]
    ) -> None:
        """Documents another writer left (id: version), handed to the relay to publish (see `settle_drained`)."""
        silent = is_silent(noted_at, time.time())
        self._draining[writer] = _Drained(through, bound, noted_at, silent, dict(documents))

    async def settle_drained(self) -> None:
        """Move up the mark of each silent writer whose left-over documents were all published (guarded
        by the mark read: a writer that noted meanwhile keeps its own), closing one silent for long."""
        now = time.time()
        for writer, drained in list(self._draining.items()):
            if drained.handed_out:
                continue
            del self._draining[writer]
            if not drained.silent:
                continue  # a live writer moves its own mark
            self.relayed.pop(writer, None)
            bound = CLOSED if drained.noted_at < now - CLOSE_AFTER_S else drained.bound
            await self._writers.update_one({"_id": writer, "through": drained.through}, {"$set": {"through": bound}})

    def worth_reading_others(self, documents: Iterable[Mapping[str, Any]]) -> bool:
        """Whether documents just read carry entries of another writer that marks as last read do
        not cover, and those marks are old enough to read again (then a save of such a copy would
        publish them again: harmless, but a patient's message twice)."""
        if time.monotonic() - self.known_read_at < KNOWN_FRESH_S:
            return False
        return any(
            d.get("outbox")
            and d.get("outbox_writer") not in (None, self.writer)
            and not self.published_by_mark(d.get("outbox_writer"), d.get("saved_at"))
            for d in documents
        )

    def published_by_mark(self, writer: str | None, saved_at: float | None) -> bool:
        """Whether a document's stored outbox is known published, by its writer's mark (as last read)."""
        if writer is None or saved_at is None:
            return False
        if writer == self.writer:
            return False  # this writer's own: its unconfirmed saves say (see `confirmed`)
        through = self.known.get(writer)
        return through is not None and saved_at < through


def is_silent(noted_at: float, now: float) -> bool:
    """A writer that missed two beats: taken for dead (if it is not, it notes its own mark again)."""
    return noted_at < now - 2 * BEAT_S


async def unpublished(database: AsyncIOMotorDatabase, collection: str) -> list[str]:
    """Documents of a collection whose outbox holds entries not known published (for checks and
    tools; never on a message's path): those without a writer (a store that clears its outbox)
    with entries, and those saved at or after their writer's mark."""
    writers = writers_of(database, collection).find({})
    marks = {doc["_id"]: float(doc.get("through", -math.inf)) async for doc in writers}
    pending = []
    query: dict[str, Any] = {"outbox_pending": {"$gt": 0}}
    async for doc in database[collection].find(query, {"outbox_writer": 1, "saved_at": 1}):
        writer = doc.get("outbox_writer")
        if writer is None or (writer in marks and doc.get("saved_at", -math.inf) >= marks[writer]):
            pending.append(doc["_id"])
    return pending
