"""What every service stores, said without MongoDB: versioned documents that carry their own outbox
and remember the messages they absorbed.

A use case loads every document a batch touches with one `load` per store, decides in memory and
saves each store once (see `unit_of_work`). Two implementations keep the same promises:

* `MongoStore` (mongo_store.py) on MongoDB, the production one;
* `MemoryStore` below, a dict, so use cases are tested in milliseconds. It can be told to fail one
  document's write or to let another writer win a race, which the tests of isolation need.

The promises:

* A save replaces the version it was decided on, or inserts a document that did not exist; if
  someone wrote first, that document is reported `lost` and nothing of it is written.
* One document that cannot be written (too large, a value the database refuses) is reported
  `failed` alone; its neighbours in the same save are written.
* The ids of the messages a saved document absorbed are kept for good (`applied`), not only the
  last few on the document, so a command sent again weeks later is still recognised.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from .tracking import Position

S = TypeVar("S", bound=BaseModel)
#: An event waiting to be published: message id, topic, key, type, correlation id, JSON body and,
#: when tracing, the trace it was caused in. Plain data, so any store can keep it as it is.
OutboxEntry = dict[str, Any]

#: Message ids a document remembers itself. It covers the moment between saving a document and
#: recording its messages as applied, and duplicates inside one batch; `applied` covers the rest.
RECENT_MESSAGES = 500


#: Which topics' message ids a store keeps for good: all (True), none (False), or these topics'.
RemembersCommands = bool | Collection[str]


def remembered(remembers: RemembersCommands, topic: str | None) -> bool:
    if isinstance(remembers, bool):
        return remembers
    return topic is not None and topic in remembers


@dataclass(frozen=True)
class Tracking:
    """What a document remembers of the messages it absorbed."""

    #: The last message ids applied to it, oldest first.
    recent: tuple[str, ...] = ()
    #: Per topic partition, an offset up to which every message meant for it was absorbed.
    positions: Mapping[str, int] = field(default_factory=dict)

    def absorbed(self, message_id: str | None, position: Position | None) -> bool:
        if message_id is not None and message_id in self.recent:
            return True
        return position is not None and self.positions.get(position.key, -1) >= position.offset

    def after(self, message_id: str | None, position: Position | None, *, keep_all: bool = False) -> Tracking:
        """`keep_all`: every id stays (a document that absorbs a bounded number of messages)."""
        recent = self.recent if message_id is None else (*self.recent, message_id)
        recent = recent if keep_all else recent[-RECENT_MESSAGES:]
        positions = dict(self.positions)
        if position is not None:
            positions[position.key] = max(position.floor, positions.get(position.key, -1))
        return Tracking(recent, positions)


@dataclass(frozen=True)
class Stored(Generic[S]):
    """One document as loaded. `version` 0 and `state` None: it does not exist yet."""

    id: str
    state: S | None = None
    version: int = 0
    outbox: tuple[OutboxEntry, ...] = ()
    tracking: Tracking = field(default_factory=Tracking)
    #: The trace context of the work that last changed it (stores whose documents are one flow's).
    traceparent: str | None = None
    #: Why its stored state could not be read (it no longer validates): its records fail alone.
    broken: str | None = None
    #: False for a copy from this process's memory (see `DocumentMemory`): the database may hold a
    #: newer version, which only a version-guarded save, or a load, would reveal.
    confirmed: bool = True

    @property
    def exists(self) -> bool:
        return self.version > 0


@dataclass(frozen=True)
class Save(Generic[S]):
    """The next version of one document, decided on version `expected` (0: it is inserted)."""

    id: str
    expected: int
    state: S
    outbox: tuple[OutboxEntry, ...]
    tracking: Tracking
    #: Message ids to record as applied for good once this save stands.
    applied: tuple[str, ...] = ()
    traceparent: str | None = None

    @property
    def version(self) -> int:
        return self.expected + 1


@dataclass
class Saved:
    """What became of each document of one `save`."""

    written: list[str] = field(default_factory=list)
    #: Someone else wrote first: decide again on a fresh load.
    lost: list[str] = field(default_factory=list)
    #: This document alone could not be written, and why; its neighbours were.
    failed: dict[str, str] = field(default_factory=dict)


class Store(Protocol[S]):
    """A collection of versioned documents whose state is the pydantic model `model`."""

    name: str
    model: type[S]
    #: Each document is one flow's and remembers the trace that last changed it.
    keeps_trace: bool
    #: Each document is one flow's, which absorbs a bounded number of messages (a prescription's
    #: verdict, its delivery): it remembers the id of every message it absorbed, so any of them
    #: sent again, however late, is a duplicate without a lookup among applied ids.
    keeps_every_message: bool

    async def load(self, ids: Collection[str], *, from_memory: bool = False) -> dict[str, Stored[S]]:
        """Every id asked for, absent ones as `Stored(id)`: one round trip. `from_memory`: what the
        store's `DocumentMemory` holds comes from there, unconfirmed (only the rest is asked for)."""
        ...

    async def save(self, saves: Sequence[Save[S]]) -> Saved:
        """Each document version-guarded, all in one round trip (plus one for the applied ids)."""
        ...

    def remembers(self, topic: str | None) -> bool:
        """Whether the ids of messages from this topic are kept for good (commands someone may send again)."""
        ...

    async def applied(self, message_ids: Collection[str]) -> set[str]:
        """Which of these messages a saved document of this store has absorbed, ever."""
        ...

    async def pending_outbox(self, limit: int = 200, *, written_before: float | None = None) -> list[Stored[S]]:
        """Documents whose outbox holds entries (written before that time, if given)."""
        ...

    async def drop_published(self, published: Mapping[str, Collection[str]]) -> None:
        """These published entries (by message id) are no longer pending."""
        ...

    async def note_mark(self) -> None:
        """Called on every pass of the relay: a store that knows published entries by a mark notes it."""
        ...

    async def retire(self) -> None:
        """At a clean stop, after the relay's last pass."""
        ...


#: Documents a store's memory holds, the ones used last: a few thousand prescriptions in flight
#: (their intake and status documents are the largest, a few KB each), within a service's 150 MB.
MEMORY_CAPACITY = 4096


class DocumentMemory(Generic[S]):
    """The documents this process last wrote or read, so that a batch about a document it handled a
    moment ago decides without loading it again.

    A copy may be stale (another process wrote since), so it is served `confirmed=False` and the
    unit of work leans on what the database will say anyway: a save is guarded by the version the
    copy carries, so a stale copy makes the save lose its race, and the document is loaded and
    decided again. A decision that saves nothing (a refusal, "nothing to do") is confirmed by a
    load before it stands.

    `presumes_new`: an id it does not hold is taken to be a document not written yet (stores whose
    documents are created by their first message: a prescription's intake, its verdict, a message
    claim). The insert then proves it, or fails as a lost race when the document did exist.
    """

    def __init__(self, capacity: int = MEMORY_CAPACITY, *, presumes_new: bool = False) -> None:
        self.capacity = capacity
        self.presumes_new = presumes_new
        #: None: the document exists but this copy was dropped (stale): it is loaded, not presumed new.
        self._documents: OrderedDict[str, Stored[S] | None] = OrderedDict()

    def recall(self, ids: Iterable[str]) -> tuple[dict[str, Stored[S]], list[str]]:
        """Copies of the documents held (and presumed-new ones), and the ids to load."""
        served: dict[str, Stored[S]] = {}
        missing: list[str] = []
        for doc_id in ids:
            held = self._documents.get(doc_id)
            if held is not None:
                self._documents.move_to_end(doc_id)
                state = None if held.state is None else held.state.model_copy(deep=True)
                served[doc_id] = replace(held, state=state, confirmed=False)
            elif self.presumes_new and doc_id not in self._documents:
                served[doc_id] = Stored(doc_id, confirmed=False)
            else:
                missing.append(doc_id)
        return served, missing

    def loaded(self, documents: Iterable[Stored[S]]) -> None:
        for stored in documents:
            if stored.broken is None and stored.exists:
                self._hold(stored)

    def saved(self, saves: Sequence[Save[S]], outcome: Saved) -> None:
        written = set(outcome.written)
        for save in saves:
            if save.id in written:
                self._hold(
                    Stored(save.id, save.state, save.version, tuple(save.outbox), save.tracking, save.traceparent)
                )
        self.forget([*outcome.lost, *outcome.failed])

    def held(self, doc_id: str) -> Stored[S] | None:
        """The document as held (not a copy: for reading its version and outbox only)."""
        return self._documents.get(doc_id)

    def cleared(self, doc_id: str, outbox: Sequence[OutboxEntry], version: int) -> None:
        """Published entries left the document's outbox in the database, which moved its version."""
        held = self._documents.get(doc_id)
        if held is not None and held.version == version - 1:
            self._documents[doc_id] = replace(held, outbox=tuple(outbox), version=version)
        else:
            self.forget([doc_id])

    def published(self, doc_id: str, message_ids: Collection[str]) -> None:
        """These entries went out and the document is not written for it (see `outbox_marks`): the
        copy held drops them too, so it does not keep whole event bodies for nothing."""
        held = self._documents.get(doc_id)
        if held is not None and held.outbox:
            left = tuple(e for e in held.outbox if e["message_id"] not in message_ids)
            if len(left) != len(held.outbox):
                self._documents[doc_id] = replace(held, outbox=left)

    def forget(self, ids: Iterable[str]) -> None:
        """Drop these copies (they are stale, or may be): the next batch loads the documents."""
        for doc_id in ids:
            self._hold_at(doc_id, None)

    def _hold(self, stored: Stored[S]) -> None:
        self._hold_at(stored.id, stored)

    def _hold_at(self, doc_id: str, stored: Stored[S] | None) -> None:
        self._documents[doc_id] = stored
        self._documents.move_to_end(doc_id)
        while len(self._documents) > self.capacity:
            self._documents.popitem(last=False)


class MemoryStore(Generic[S]):
    """A `Store` in a dict, with the same semantics as MongoDB's; states are copied through JSON
    on the way in and out, so a use case that keeps a reference sees what a database would give."""

    def __init__(
        self,
        name: str,
        model: type[S],
        *,
        keeps_trace: bool = False,
        keeps_every_message: bool = False,
        remembers_commands: RemembersCommands = True,
        memory: DocumentMemory[S] | None = None,
    ) -> None:
        """`remembers_commands` as `MongoStore`'s; True (every topic) unless a test models a
        production store."""
        self.name = name
        self.model = model
        self.keeps_trace = keeps_trace
        self.keeps_every_message = keeps_every_message
        self._remembers = remembers_commands
        self.memory = memory
        self._documents: dict[str, Stored[S]] = {}
        self._applied: set[str] = set()
        self._failing: dict[str, str] = {}
        self._racing: set[str] = set()
        #: Round trips made, as a database would count them (tests count them too).
        self.round_trips = 0

    # --- what a test arranges -----------------------------------------------------------------

    def fail_writes_of(self, doc_id: str, reason: str = "injected write failure") -> None:
        """Every save of this document fails, as one the database refuses would."""
        self._failing[doc_id] = reason

    def break_document(self, doc_id: str, reason: str) -> None:
        """The document is there but its state no longer reads (a model changed under it)."""
        current = self._documents.get(doc_id)
        self._documents[doc_id] = Stored(doc_id, None, (current.version if current else 0) + 1, broken=reason)

    def heal(self, doc_id: str) -> None:
        self._failing.pop(doc_id, None)

    def let_another_writer_win(self, doc_id: str) -> None:
        """The next save of this document finds that someone wrote it first (its version moves)."""
        self._racing.add(doc_id)

    def put(self, doc_id: str, state: S) -> None:
        """A document as if written earlier, with nothing in its outbox."""
        current = self._documents.get(doc_id)
        self._documents[doc_id] = Stored(doc_id, self._copy(state), (current.version if current else 0) + 1)

    def state_of(self, doc_id: str) -> S | None:
        stored = self._documents.get(doc_id)
        return None if stored is None else self._copy(stored.state)

    def stored(self, doc_id: str) -> Stored[S] | None:
        return self._documents.get(doc_id)

    # --- the Store protocol ---------------------------------------------------------------------

    async def load(self, ids: Collection[str], *, from_memory: bool = False) -> dict[str, Stored[S]]:
        served, missing = self.memory.recall(ids) if from_memory and self.memory else ({}, list(ids))
        if missing:
            self.round_trips += 1
        loaded = {doc_id: self._loaded(doc_id) for doc_id in missing}
        if self.memory is not None:
            self.memory.loaded(loaded.values())
        return {doc_id: served.get(doc_id) or loaded[doc_id] for doc_id in ids}

    async def save(self, saves: Sequence[Save[S]]) -> Saved:
        self.round_trips += 1
        saved = Saved()
        for save in saves:
            if save.id in self._racing:
                self._racing.discard(save.id)
                current = self._documents.get(save.id)
                if current is not None:
                    self._documents[save.id] = replace(current, version=current.version + 1)
                else:
                    self._documents[save.id] = Stored(save.id, save.state, 1)
            current_version = self._documents[save.id].version if save.id in self._documents else 0
            if save.id in self._failing:
                saved.failed[save.id] = self._failing[save.id]
            elif current_version != save.expected:
                saved.lost.append(save.id)
            else:
                self._documents[save.id] = Stored(
                    save.id, self._copy(save.state), save.version, tuple(save.outbox), save.tracking, save.traceparent
                )
                saved.written.append(save.id)
        applied = [m for save in saves if save.id in saved.written for m in save.applied]
        if applied:
            self.round_trips += 1
            self._applied.update(applied)
        if self.memory is not None:
            self.memory.saved(saves, saved)
        return saved

    def remembers(self, topic: str | None) -> bool:
        return remembered(self._remembers, topic)

    async def applied(self, message_ids: Collection[str]) -> set[str]:
        self.round_trips += 1
        return {m for m in message_ids if m in self._applied}

    async def all(self) -> list[Stored[S]]:
        self.round_trips += 1
        return [self._loaded(doc_id) for doc_id in self._documents]

    async def pending_outbox(self, limit: int = 200, *, written_before: float | None = None) -> list[Stored[S]]:
        self.round_trips += 1
        return [self._loaded(d.id) for d in self._documents.values() if d.outbox][:limit]

    async def drop_published(self, published: Mapping[str, Collection[str]]) -> None:
        self.round_trips += 1
        for doc_id, message_ids in published.items():
            current = self._documents.get(doc_id)
            if current is None:
                continue
            left = tuple(e for e in current.outbox if e["message_id"] not in message_ids)
            if len(left) != len(current.outbox):
                self._documents[doc_id] = replace(current, outbox=left, version=current.version + 1)
                if self.memory is not None:
                    self.memory.cleared(doc_id, left, current.version + 1)

    async def note_mark(self) -> None:
        """Nothing to note: published entries are dropped from the outbox here."""

    async def retire(self) -> None:
        """Nothing to close."""

    def _loaded(self, doc_id: str) -> Stored[S]:
        stored = self._documents.get(doc_id)
        if stored is None:
            return Stored(doc_id)
        return replace(stored, state=self._copy(stored.state), outbox=copy.deepcopy(stored.outbox))

    def _copy(self, state: S | None) -> S | None:
        return None if state is None else self.model.model_validate_json(state.model_dump_json())


#: Times `overwrite` tries again when someone wrote the document first.
OVERWRITE_ATTEMPTS = 5


async def overwrite(store: Store[S], doc_id: str, state: S, announce: Sequence[OutboxEntry] = ()) -> None:
    """A document entered by a person (reference data, a roster entry) becomes `state`, whatever it
    was, keeping its outbox and the messages it absorbed; tried again while someone writes first.
    `announce`: entries added to its outbox in the same write (the store's relay publishes them)."""
    for _ in range(OVERWRITE_ATTEMPTS):
        current = (await store.load([doc_id]))[doc_id]
        outbox = (*current.outbox, *announce)
        saved = await store.save(
            [Save(doc_id, current.version, state, outbox, current.tracking, traceparent=current.traceparent)]
        )
        if saved.failed:
            raise ValueError(f"{store.name}/{doc_id}: {saved.failed[doc_id]}")
        if not saved.lost:
            return
    raise RuntimeError(f"{store.name}/{doc_id}: too many concurrent writers")


def outbox_message_ids(entries: Iterable[OutboxEntry]) -> set[str]:
    return {entry["message_id"] for entry in entries}
