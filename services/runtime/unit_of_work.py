"""A batch of messages as one round of state: load, decide, save, publish.

How stream processors turn a batch into one round of state access, for any `Store`:

1. Every document the batch touches is loaded with one `load` (none at all for those the store's
   `DocumentMemory` holds), and the batch's message ids are checked against the store's applied
   ids with one `applied`: a command seen before, however long ago, is a duplicate.
2. Each record is decided in arrival order on the state the previous one left (records of one key
   see each other's result); a record the document already absorbed is a duplicate.
3. The store is saved once. A document whose save lost a race is loaded and decided again ALONE,
   with only its own records; one that failed is reported failed, with only its own records. Its
   neighbours' saves stand either way. A document decided on a copy from memory that saves
   nothing is loaded and decided again too: no version guard vouched for the copy.
4. The outboxes of the documents written are published together and the broker's confirmations
   awaited; the entries are then dropped from the outboxes off the path, a whole store at a time.
   If publishing fails, the relay publishes them later.

A projection whose events are derived from the state and the message alone (ids included: the same
decision always makes the same events) may publish them *before* its save instead (`publish_first`):
no outbox to write and clear, and a save that fails is decided again on redelivery and publishes the
same events again, which readers drop by message id. Nothing is lost; nothing extra is written. A
document not known to exist yet takes the outbox as usual: a state presumed empty tells nothing.

Decisions are plain functions `(state, message) -> Decision`; the unit of work never runs one
outside `run`, so results come back as values (`Handled`), not through captured lists.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

import structlog
from opentelemetry.trace import Tracer

from pharmacy_contracts import Envelope

from . import hooks
from .errors import Refused
from .observability import continuing_trace, current_traceparent, outside_message_traces
from .store import OutboxEntry, S, Save, Store, Stored
from .tracking import Position

log = structlog.get_logger()

M = TypeVar("M", bound=Envelope)
T = TypeVar("T")
#: Publishes outbox entries and returns once the broker confirmed every one (raises otherwise).
Publish = Callable[[Sequence[OutboxEntry]], Awaitable[None]]
#: Turns an event into its outbox entry (topic, key, body…): the runtime's `outbox_entry`.
ToEntry = Callable[[Envelope], OutboxEntry]

#: Times a document that keeps losing races is decided again before its records are failed.
MAX_ROUNDS = 20
#: Message ids this process saw confirmed by the broker, so a later save drops them from an outbox.
CONFIRMED_MEMORY = 50_000
#: How long published entries wait before a clear, so clears of many batches share a round trip.
CLEAR_DELAY_S = 1.0


@dataclass(frozen=True)
class Record(Generic[M]):
    """A parsed message and where it came from."""

    message: M
    position: Position | None = None
    #: The context it was admitted in (its log fields, its trace): its decision and the outbox
    #: entries of its events are made in it, so the events carry the message's trace on.
    context: contextvars.Context | None = None

    @property
    def message_id(self) -> str:
        return self.message.message_id

    def in_context(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call `function` as if handling this record: its log fields, trace and metrics."""
        if self.context is None:
            return function(*args, **kwargs)
        return self.context.run(function, *args, **kwargs)


@dataclass(frozen=True)
class Decision(Generic[S]):
    """What one message does to one document: its next state and the events it causes, or a
    refusal (the message is dead-lettered with the reason, and nothing is written)."""

    state: S | None = None
    events: Sequence[Envelope] = ()
    refusal: Refused | None = None
    #: Anything the use case wants back about this decision (handed back in `Handled.result`).
    result: Any = None

    def __post_init__(self) -> None:
        if self.events and self.state is None:
            raise ValueError("a decision with events must give the state they come with")

    @classmethod
    def unchanged(cls) -> Decision[Any]:
        return cls()

    @classmethod
    def refused(cls, code: str, detail: str) -> Decision[Any]:
        return cls(refusal=Refused(code, detail))


class Outcome(Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Handled(Generic[M]):
    record: Record[M]
    outcome: Outcome
    events: tuple[Envelope, ...] = ()
    refusal: Refused | None = None
    #: Why a FAILED record failed (its document could not be written, or its decision raised).
    error: str | None = None
    #: The decision's `result`, for an APPLIED or UNCHANGED record.
    result: Any = None


@dataclass
class _Round(Generic[S, M]):
    """One document's records and what deciding them produced."""

    stored: Stored[S]
    records: list[Record[M]]
    handled: list[Handled[M]] = field(default_factory=list)
    save: Save[S] | None = None
    #: Events this round's decisions caused (the save's outbox may also hold older ones).
    new_entries: int = 0
    #: The same events, when they are published before the save instead of kept in its outbox.
    first: tuple[OutboxEntry, ...] = ()

    @property
    def unconfirmed(self) -> bool:
        """Decided on a copy from memory and saving nothing: a refusal or a "nothing to do" that
        no version guard will check, so it stands only once decided on the database's version."""
        return (
            not self.stored.confirmed
            and self.save is None
            and any(h.outcome is not Outcome.DUPLICATE for h in self.handled)
        )


class UnitOfWork:
    """One per service process: the publisher, the confirmations and the clears it owes."""

    def __init__(self, publish: Publish | None, to_entry: ToEntry, tracer: Tracer | None = None) -> None:
        """`publish`: without one, the relay publishes every outbox (and clears it). `tracer`: the
        spans continuing a document's trace (see `run`'s `keeps_trace`); without one its context is
        carried on all the same."""
        self._publish = publish
        self._tracer = tracer
        self._to_entry = to_entry
        self._confirmed: OrderedDict[str, None] = OrderedDict()
        self._clears: dict[str, tuple[Store[Any], dict[str, set[str]]]] = {}
        self._clearing: asyncio.Task[None] | None = None

    async def run(
        self,
        store: Store[S],
        records: Sequence[Record[M]],
        *,
        key: Callable[[M], str],
        decide: Callable[[S | None, M], Decision[S]],
        tracked: bool = True,
        publish_first: bool = False,
    ) -> list[Handled[M]]:
        """Every record's outcome, in the order given.

        `publish_first`: the decisions' events are published before the save, not kept in an
        outbox; only for decisions whose events (and their ids) follow from state and message
        alone (see the module's note). Without a publisher they go to the outbox all the same.

        `tracked=False`: the store's documents are keyed by the message itself (a claim on a
        message id), so recognising a duplicate is the decision's own business: every record
        reaches `decide`, and no message id is recorded.

        A store that `keeps_trace` has each document remember the trace that last changed it (one
        flow's, a prescription's); a record that brought no trace of its own (a courier's app reporting,
        a sweep) is decided in a span child of that trace, so the events it causes stay in the
        prescription's trace."""
        if not records:
            return []
        by_doc: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            by_doc.setdefault(key(record.message), []).append(index)
        commands = [r.message_id for r in records if tracked and store.remembers(_topic_of(r))]
        seen_before = await store.applied(commands) if commands else set()
        outcomes: dict[int, Handled[M]] = {}  # by the record's index
        waiting = by_doc
        for attempt in range(MAX_ROUNDS):
            if not waiting:
                break
            # First from the store's memory; a document decided again is read from the database.
            loaded = await store.load(waiting, from_memory=attempt == 0)
            first = publish_first and self._publish is not None
            rounds = {
                doc_id: self._decide(
                    store, loaded[doc_id], [records[i] for i in indexes], seen_before, decide, tracked, first
                )
                for doc_id, indexes in waiting.items()
            }
            if first and not await self._published_first(store, rounds):
                # Nothing is saved: every record of the round is handled again when redelivered.
                for indexes in waiting.values():
                    for index in indexes:
                        outcomes[index] = Handled(records[index], Outcome.FAILED, error="publishing its events failed")
                waiting = {}
                break
            saves = [r.save for r in rounds.values() if r.save is not None]
            saved = await store.save(saves) if saves else None
            lost = set(saved.lost) if saved else set()
            lost |= {doc_id for doc_id, decided in rounds.items() if decided.unconfirmed}
            failed = saved.failed if saved else {}
            for doc_id, decided in rounds.items():
                if doc_id in lost:
                    continue
                for index, handled in zip(waiting[doc_id], decided.handled, strict=True):
                    if doc_id in failed and handled.outcome is not Outcome.DUPLICATE:
                        # Refusals and "unchanged" too: they were decided on changes never written.
                        handled = Handled(handled.record, Outcome.FAILED, error=failed[doc_id])
                    outcomes[index] = handled
            written = [rounds[doc_id].save for doc_id in (saved.written if saved else [])]
            if any(rounds[doc_id].new_entries for doc_id in (saved.written if saved else [])):
                # The worst moment to die: state and events stored, nothing published (a test arms it).
                hooks.installed.after_write(store.name)
            await self._publish_outboxes(store, [s for s in written if s is not None and s.outbox])
            waiting = {doc_id: by_doc[doc_id] for doc_id in lost}
        for doc_id, indexes in waiting.items():  # still losing after every round
            for index in indexes:
                outcomes[index] = Handled(
                    records[index], Outcome.FAILED, error=f"{store.name}/{doc_id}: too many writers"
                )
        return [outcomes[index] for index in range(len(records))]

    def _decide(
        self,
        store: Store[S],
        stored: Stored[S],
        records: list[Record[M]],
        seen_before: set[str],
        decide: Callable[[S | None, M], Decision[S]],
        tracked: bool,
        publish_first: bool,
    ) -> _Round[S, M]:
        keeps_trace, store_name = store.keeps_trace, store.name
        decided: _Round[S, M] = _Round(stored, records)
        state, tracking, traceparent = stored.state, stored.tracking, stored.traceparent
        new_entries: list[OutboxEntry] = []
        applied: list[str] = []
        changed = False
        failed_first: str | None = stored.broken
        for record in records:
            if tracked and (record.message_id in seen_before or tracking.absorbed(record.message_id, record.position)):
                decided.handled.append(Handled(record, Outcome.DUPLICATE))
                continue
            if failed_first is not None:
                # Records of one document keep their order: none is decided behind one that failed.
                decided.handled.append(Handled(record, Outcome.FAILED, error=failed_first))
                continue
            try:
                decision, entries, caused_in = record.in_context(
                    self._decide_one, record, state, decide, keeps_trace, traceparent, store_name, stored.id
                )
            except Refused as refusal:
                decision = Decision(refusal=refusal)
            except Exception as error:  # the decision's own bug: this record fails, the rest go on
                log.exception("decision failed", document=stored.id)
                decided.handled.append(Handled(record, Outcome.FAILED, error=repr(error)))
                failed_first = f"behind a failed record of {store_name}/{stored.id}: {error!r}"
                continue
            if decision.refusal is not None:
                decided.handled.append(Handled(record, Outcome.REFUSED, refusal=decision.refusal))
            elif decision.state is None:
                decided.handled.append(Handled(record, Outcome.UNCHANGED, result=decision.result))
            else:
                state = decision.state
                if tracked:
                    tracking = tracking.after(record.message_id, record.position, keep_all=store.keeps_every_message)
                    if store.remembers(_topic_of(record)):
                        applied.append(record.message_id)
                changed = True
                new_entries += entries
                traceparent = caused_in or traceparent
                decided.handled.append(Handled(record, Outcome.APPLIED, tuple(decision.events), result=decision.result))
        decided.new_entries = len(new_entries)
        if publish_first and stored.exists:
            # Only on a document known to exist: one presumed new (or absent) may turn out to
            # exist, and events decided on an empty state are not the document's to tell. Its
            # events take the outbox, published after the insert proves it new.
            decided.first, new_entries = tuple(new_entries), []
        if changed and state is not None:
            kept = tuple(e for e in stored.outbox if e["message_id"] not in self._confirmed)
            decided.save = Save(
                stored.id,
                stored.version,
                state,
                kept + tuple(new_entries),
                tracking,
                tuple(applied),
                traceparent if keeps_trace else stored.traceparent,
            )
        return decided

    def _decide_one(
        self,
        record: Record[M],
        state: S | None,
        decide: Callable[[S | None, M], Decision[S]],
        keeps_trace: bool,
        traceparent: str | None,
        store_name: str,
        doc_id: str,
    ) -> tuple[Decision[S], list[OutboxEntry], str | None]:
        """One decision, its outbox entries, and the trace they were caused in (for a store that
        keeps traces). Runs in the record's context."""
        if keeps_trace and traceparent is not None and outside_message_traces():
            attributes = {"db.collection.name": store_name, "pharmacy.document.id": doc_id}
            with continuing_trace(traceparent, self._tracer, f"{store_name} decide", attributes):
                return self._decided(record, state, decide, keeps_trace=True)
        return self._decided(record, state, decide, keeps_trace=keeps_trace)

    def _decided(
        self, record: Record[M], state: S | None, decide: Callable[[S | None, M], Decision[S]], *, keeps_trace: bool
    ) -> tuple[Decision[S], list[OutboxEntry], str | None]:
        decision = decide(state, record.message)
        entries = [self._entry(event) for event in decision.events]
        # Any change remembers the trace it was made in, events or not: a record that comes later
        # without a trace of its own (a courier's report, a sweep) then continues the flow's trace.
        changed = decision.state is not None
        return decision, entries, current_traceparent() if keeps_trace and changed else None

    def _entry(self, event: Envelope) -> OutboxEntry:
        return {**self._to_entry(event), "queued_at": time.time()}

    async def _published_first(self, store: Store[Any], rounds: dict[str, _Round[Any, Any]]) -> bool:
        """Publish the events of the rounds that will save, before their save; False if that failed."""
        entries = [entry for decided in rounds.values() if decided.save is not None for entry in decided.first]
        if not entries or self._publish is None:
            return True
        try:
            await self._publish(entries)
        except Exception:
            log.exception("publishing before a save failed; the records are handled again", store=store.name)
            return False
        return True

    async def _publish_outboxes(self, store: Store[Any], written: list[Save[Any]]) -> None:
        if self._publish is None or not written:
            return
        # Whole outboxes, oldest first: entries an earlier failed publish left go out before the
        # new ones, so one document's events keep their order.
        entries = [entry for save in written for entry in save.outbox]
        try:
            await self._publish(entries)
        except Exception:
            log.exception("publishing after a save failed; the relay will publish", store=store.name)
            return
        for entry in entries:
            self._confirmed[entry["message_id"]] = None
        while len(self._confirmed) > CONFIRMED_MEMORY:
            self._confirmed.popitem(last=False)
        _, owed = self._clears.setdefault(store.name, (store, {}))
        for save in written:
            owed.setdefault(save.id, set()).update(e["message_id"] for e in save.outbox)
        if self._clearing is None or self._clearing.done():
            self._clearing = asyncio.create_task(self._clear_later(), name="outbox-clears")

    async def _clear_later(self) -> None:
        while self._clears:  # entries published while a clear runs get the next one
            await asyncio.sleep(CLEAR_DELAY_S)
            await self.clear_published()

    async def clear_published(self) -> None:
        """Drop every confirmed entry from its document's outbox: one load and one save per store."""
        owed, self._clears = self._clears, {}
        for store, published in owed.values():
            try:
                await store.drop_published(published)
            except Exception as error:  # the relay publishes them again later: harmless duplicates
                log.warning("clearing published outbox entries failed", store=store.name, error=repr(error))

    async def settled(self) -> None:
        """At shutdown: the clears owed are done now instead of after their delay (a clear in
        progress is let finish: cancelled, its entries would be published again by the relay)."""
        await self.clear_published()
        if self._clearing is not None and not self._clearing.done():
            await self._clearing


def _topic_of(record: Record[Any]) -> str | None:
    return record.position.topic if record.position is not None else None
