"""Versioned documents with an embedded outbox: the one write pattern every service uses.

A document is `{_id, version, state, outbox, outbox_pending, outbox_at, handled, positions, write_id}`
(and `traceparent` in a store that keeps traces):

* `state` is the service's own model, replaced whole and guarded by `version`, so concurrent
  writers (two instances of a service) never overwrite each other: the loser re-reads and decides
  again. This is correct on MongoDB and on the dev server, which mishandles `$push`/`$pull` of
  sub-documents and positional updates.
* `outbox` holds the events the change caused, written in the same atomic write. The process that
  wrote them publishes them right after the write and then clears them; if it dies first, the
  relay of any instance publishes them once they are `outbox_at` + a grace period old.
* `handled` remembers the last message ids applied to this document and `positions` the highest
  offset absorbed per topic partition (see `tracking`), so a redelivered or replayed message is
  recognised and changes nothing.
* `traceparent` (stores built with `keeps_trace`, whose documents are each one prescription's) is
  the trace context of the work that last changed the document. Work on it that no message's trace
  covers (a courier's report without a `traceparent`, a sweep) runs its decision in a span child of
  that context, so the events it causes stay in the prescription's trace.

Writes are group-committed: every `apply` made while the previous write is in flight joins the
next one, which reads all their documents in one query, runs each decision in arrival order
(several decisions on one document see each other's result), and writes them back in one bulk
write. Under load a batch of 500 messages costs a handful of round trips instead of thousands.

This module and the services' `storage` modules are the only code that knows MongoDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection, AsyncIOMotorDatabase
from pydantic import BaseModel
from pymongo import InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError, ConnectionFailure

from pharmacy_contracts import Envelope
from pharmacy_contracts.topics import topic_for

from .coalescing import Coalescer
from .errors import Refused
from .faults import crash_point
from .mongo import DUPLICATE_KEY, RemembersCommands, WriteNotDurable, document_indexes, record_applied, remembered
from .observability import TRACEPARENT, RoundTripListener, continuing_trace, current_traceparent, outside_message_traces
from .tracking import Position, current_position

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = structlog.get_logger()

#: Errors that mean "the database is unreachable right now", not "this message is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionFailure,)

#: Message ids a document remembers. Records of the batch in hand are recognised by id alone (see
#: `tracking`), so this must exceed what one document can absorb from one batch (settings cap it).
HANDLED_MEMORY = 500
MAX_WRITE_ATTEMPTS = 50
#: Message ids this process saw confirmed by the broker, so a later write can drop them from the outbox.
CONFIRMED_MEMORY = 50_000
#: Documents per store kept as last written, so writing one again needs no read first.
CACHE_DOCUMENTS = 1_000
#: How long published entries stay in their document's outbox before a write of their own clears
#: them. A document written again meanwhile (a delivery: offered, accepted, picked up, delivered)
#: drops them in that write, which saves the clear; the relay waits longer (outbox_stale_after_s).
CLEAR_DELAY_S = 1.0

S = TypeVar("S", bound=BaseModel)
#: Publishes outbox entries and returns once the broker confirmed every one (raises otherwise).
Publish = Callable[[Sequence[dict[str, Any]]], Awaitable[None]]


class ConcurrencyConflict(RuntimeError):
    """Gave up after too many concurrent writers changed the same document first."""


@dataclass(frozen=True)
class Change(Generic[S]):
    """What a decision produced: the new state and the events it causes."""

    state: S
    events: Sequence[Envelope] = field(default_factory=tuple)


def outbox_entry(event: Envelope) -> dict[str, Any]:
    topic = topic_for(event)
    entry = {
        "message_id": event.message_id,
        "topic": topic.name,
        "key": topic.key_of(event),
        "type": event.type,
        "correlation_id": event.correlation_id,
        "body": event.model_dump_json(),
    }
    # The trace of the handling that caused the event, for whoever publishes it (now or the relay).
    traceparent = current_traceparent()
    if traceparent is not None:
        entry[TRACEPARENT] = traceparent
    return entry


def connect(url: str) -> AsyncIOMotorClient:
    return AsyncIOMotorClient(url, tz_aware=True, serverSelectionTimeoutMS=5000, event_listeners=[RoundTripListener()])


@dataclass
class _Write:
    """One `apply` call waiting for the next group write."""

    doc_id: str
    decide: Callable[[Any], Change[Any] | None]
    message_id: str | None
    position: Position | None
    result: asyncio.Future[Change[Any] | None]
    #: The caller's context (its log fields): a decision that logs runs in it, not in the writer's.
    context: contextvars.Context
    attempts: int = 0


@dataclass
class _Plan:
    """What one group write does to one document."""

    doc_id: str
    writes: list[_Write]
    before: dict[str, Any] | None
    #: `before` is this process's copy of its own last write, not a fresh read.
    cached: bool = False
    #: Some decision chose to change nothing, or refused: on a cached copy that must be checked.
    decided: bool = False
    after: dict[str, Any] | None = None
    new_entries: list[dict[str, Any]] = field(default_factory=list)
    #: Message ids whose change this plan writes.
    applied: list[str] = field(default_factory=list)
    outcomes: list[tuple[_Write, Change[Any] | BaseException | None]] = field(default_factory=list)


class DocumentStore(Generic[S]):
    """One collection of versioned documents whose state is the pydantic model `model`."""

    def __init__(
        self,
        database: AsyncIOMotorDatabase,
        name: str,
        model: type[S],
        *,
        keeps_trace: bool = False,
        remembers_commands: RemembersCommands = False,
    ) -> None:
        """`keeps_trace`: each document is one flow's (a prescription's); it remembers the trace that
        last changed it, and work on it outside any message's trace continues that trace.

        `remembers_commands`: the documents take commands people or other systems may send again
        at any time (a restock, a courier's report); the ids of the messages applied from these
        topics (or all, with True) are kept for good in `<name>_applied`, not only the last few
        hundred on the document, so a command sent again weeks and thousands of messages later is
        still recognised. It costs a lookup and an insert per group write that holds one."""
        self.name = name
        self._remembers = remembers_commands
        self._applied = database[f"{name}_applied"] if remembers_commands else None
        self.model = model
        self.keeps_trace = keeps_trace
        self._tracer: Tracer | None = None
        self._collection: AsyncIOMotorCollection = database[name]
        self._publish: Publish | None = None
        self._queue: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: Documents written by this process whose published entries are still in their outbox.
        self._clears: dict[str, tuple[dict[str, Any], float]] = {}
        self._confirmed: OrderedDict[str, None] = OrderedDict()
        self._by_id: Coalescer[str, dict[str, Any]] = Coalescer(self._fetch_by_id)
        self._queries: Coalescer[str, list[Any]] = Coalescer(self._run_queries)

    def publish_with(self, publish: Publish) -> None:
        """Publish each write's events right after it (without this, only a relay publishes them)."""
        self._publish = publish

    def trace_with(self, tracer: Tracer | None) -> None:
        """The tracer of the spans continuing a document's trace (without one, its context is carried on)."""
        self._tracer = tracer

    @property
    def publishes_its_writes(self) -> bool:
        return self._publish is not None

    async def ensure_indexes(self, *unique_state_fields: Sequence[str], plain: Iterable[str] = ()) -> None:
        await self._collection.create_indexes(document_indexes(unique_state_fields, plain))

    # --- reads (concurrent ones share a round trip) ------------------------------------------------

    async def get(self, doc_id: str) -> S | None:
        doc = await self._by_id(doc_id)
        return None if doc is None else self.model.model_validate(doc["state"])

    async def get_many(self, doc_ids: Iterable[str]) -> dict[str, S]:
        ids = list(dict.fromkeys(doc_ids))
        docs = await asyncio.gather(*(self._by_id(doc_id) for doc_id in ids))
        return {i: self.model.model_validate(d["state"]) for i, d in zip(ids, docs, strict=True) if d is not None}

    async def find(self, **state_equals: Any) -> list[S]:
        query = {f"state.{k}": v for k, v in state_equals.items()}
        # The models are shared by every caller of the same query: treat them as read-only.
        return list(await self._queries(json.dumps([query, None], sort_keys=True, default=str)) or [])

    async def values_of(self, field_name: str, **state_filter: Any) -> list[Any]:
        """The value of one state field in every matching document (filters may use operators).

        One indexed find with a projection; `count_documents` is avoided because the dev server
        answers it with a full scan (~300 ms at 2,000 documents against ~12 ms for this)."""
        query = {f"state.{k}": v for k, v in state_filter.items()}
        path = f"state.{field_name}"
        docs = await self._queries(json.dumps([query, path], sort_keys=True, default=str)) or []
        # MongoDB returns a projected sub-field nested; the dev server returns it under its dotted path.
        return [d["state"].get(field_name) if "state" in d else d.get(path) for d in docs]

    async def versions(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Every document's version and state, for comparing before and after (tests, tools)."""
        return {
            d["_id"]: (d["version"], d["state"]) async for d in self._collection.find({}, {"version": 1, "state": 1})
        }

    async def _fetch_by_id(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {d["_id"]: d async for d in self._collection.find({"_id": {"$in": doc_ids}}, {"state": 1})}

    async def _run_queries(self, specs: list[str]) -> dict[str, list[Any]]:
        async def run(spec: str) -> list[Any]:
            query, path = json.loads(spec)
            if path is None:  # whole states, validated once for all callers
                return [self.model.model_validate(d["state"]) async for d in self._collection.find(query, {"state": 1})]
            return [d async for d in self._collection.find(query, {path: 1})]

        return dict(zip(specs, await asyncio.gather(*(run(spec) for spec in specs)), strict=True))

    # --- the write ------------------------------------------------------------------------------

    async def apply(
        self,
        doc_id: str,
        decide: Callable[[S | None], Change[S] | None],
        *,
        message_id: str | None = None,
    ) -> Change[S] | None:
        """Read, decide, write state + events + handled id atomically; decide again if someone wrote first.

        Returns None when nothing changed: the message was handled before, or `decide` said so.
        `decide` must be pure apart from noting its outcome: it may run more than once.
        """
        result: asyncio.Future[Change[Any] | None] = asyncio.get_running_loop().create_future()
        position = current_position.get() if message_id is not None else None
        self._queue.append(_Write(doc_id, decide, message_id, position, result, contextvars.copy_context()))
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_while_queued(), name=f"writes-{self.name}")
        return await result

    async def settled(self) -> None:
        """Wait until every queued write is written, its events published and cleared (at shutdown)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _write_while_queued(self) -> None:
        await asyncio.sleep(0)  # let the other handlers of this batch queue their writes too
        while self._queue or self._clears:
            if not self._queue:
                # Only clears are left: wait until the oldest is due, or for new writes.
                oldest = min(since for _, since in self._clears.values())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, oldest + CLEAR_DELAY_S - time.monotonic()))
            group, self._queue = self._queue, []
            try:
                await self._write_group(group)
            except Exception as error:  # e.g. the database is unreachable: each caller retries its own
                log.warning("group write failed", store=self.name, error=repr(error))
                self._cache.clear()
                for write in group:
                    if not write.result.done():
                        write.result.set_exception(error)
                if not self._queue:
                    self._clears.clear()  # the relay publishes them again if they are still there
                    return

    async def _write_group(self, group: list[_Write]) -> None:
        by_doc: dict[str, list[_Write]] = {}
        for write in group:
            by_doc.setdefault(write.doc_id, []).append(write)
        docs = await self._current(list(by_doc))
        applied_before = await self._applied_among(group)
        write_id = uuid.uuid4().hex
        plans = [
            self._plan_safely(
                doc_id,
                writes,
                docs.get(doc_id),
                write_id,
                cached=docs.get(doc_id) is self._cache.get(doc_id),
                applied_before=applied_before,
            )
            for doc_id, writes in by_doc.items()
        ]
        due = time.monotonic() - CLEAR_DELAY_S
        plans += [
            self._clear_plan(doc, write_id)
            for doc_id, (doc, since) in self._clears.items()
            if doc_id not in by_doc and since <= due
        ]
        # Documents written in this group drop their published entries themselves.
        self._clears = {
            doc_id: pending for doc_id, pending in self._clears.items() if doc_id not in by_doc and pending[1] > due
        }
        to_write = [p for p in plans if p.after is not None]
        lost = await self._write_plans(to_write, write_id)
        lost |= await self._changed_since_cached(p for p in plans if p.after is None and p.cached)
        await self._record_applied(p for p in to_write if p.doc_id not in lost and p.after is not None)

        retry: list[_Write] = []
        for plan in plans:
            if plan.doc_id in lost:
                self._cache.pop(plan.doc_id, None)
                retry += self._again(plan)
                continue
            if plan.after is not None:
                self._remember(plan.after)
            for write, outcome in plan.outcomes:
                if write.result.done():
                    continue
                if isinstance(outcome, BaseException):
                    write.result.set_exception(outcome)
                else:
                    write.result.set_result(outcome)
        self._queue = retry + self._queue

        if any(p.new_entries for p in to_write if p.doc_id not in lost):
            crash_point(f"after-write:{self.name}")
        written = [p for p in to_write if p.doc_id not in lost and p.after is not None and p.after["outbox"]]
        if written:
            await self._publish_written(written)

    async def _current(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each document as this process last wrote it, or as the database has it if not cached.

        A cached copy saves a read per write (a prescription's document is written several times
        as it moves along); if someone else wrote meanwhile, the version guard notices."""
        docs = {doc_id: self._cache[doc_id] for doc_id in doc_ids if doc_id in self._cache}
        missing = [doc_id for doc_id in doc_ids if doc_id not in docs]
        if missing:
            async for doc in self._collection.find({"_id": {"$in": missing}}):
                docs[doc["_id"]] = doc
        return docs

    def _remember(self, doc: dict[str, Any]) -> None:
        self._cache[doc["_id"]] = doc
        self._cache.move_to_end(doc["_id"])
        while len(self._cache) > CACHE_DOCUMENTS:
            self._cache.popitem(last=False)

    def _again(self, plan: _Plan) -> list[_Write]:
        """Someone else wrote the document first: its decisions are taken again on a fresh read."""
        retry = []
        for write in plan.writes:
            write.attempts += 1
            if write.result.done():  # its caller was cancelled
                continue
            if write.attempts >= MAX_WRITE_ATTEMPTS:
                write.result.set_exception(
                    ConcurrencyConflict(f"{self.name}/{plan.doc_id}: too many concurrent writers")
                )
            else:
                retry.append(write)
        return retry

    async def _changed_since_cached(self, plans: Iterable[_Plan]) -> set[str]:
        """A decision that wrote nothing was taken on a cached copy, unchecked by any guard: it
        stands only if the document is still at that version."""
        expected = {p.doc_id: p.before["version"] for p in plans if p.before is not None and p.decided}
        if not expected:
            return set()
        current = {
            d["_id"]: d["version"]
            async for d in self._collection.find({"_id": {"$in": list(expected)}}, {"version": 1})
        }
        return {doc_id for doc_id, version in expected.items() if current.get(doc_id) != version}

    def _remembers_write(self, write: _Write) -> bool:
        return remembered(self._remembers, write.position.topic if write.position is not None else None)

    async def _applied_among(self, group: list[_Write]) -> frozenset[str]:
        """Which of the group's messages this store applied before, ever (stores that remember commands)."""
        ids = [w.message_id for w in group if w.message_id is not None and self._remembers_write(w)]
        if self._applied is None or not ids:
            return frozenset()
        return frozenset([d["_id"] async for d in self._applied.find({"_id": {"$in": ids}}, {"_id": 1})])

    async def _record_applied(self, written: Iterable[_Plan]) -> None:
        """After the write stood: until then the document's own `handled` ids cover a crash."""
        if self._applied is not None:
            await record_applied(self._applied, (m for plan in written for m in plan.applied))

    def _plan_safely(
        self,
        doc_id: str,
        writes: list[_Write],
        doc: dict[str, Any] | None,
        write_id: str,
        *,
        cached: bool,
        applied_before: frozenset[str] = frozenset(),
    ) -> _Plan:
        """One document's plan; if building it fails (a state that no longer validates, say), only
        that document's writes fail, not the whole group."""
        try:
            return self._plan(doc_id, writes, doc, write_id, cached=cached, applied_before=applied_before)
        except Exception as error:
            return _Plan(doc_id, writes, doc, outcomes=[(write, error) for write in writes])

    def _plan(
        self,
        doc_id: str,
        writes: list[_Write],
        doc: dict[str, Any] | None,
        write_id: str,
        *,
        cached: bool,
        applied_before: frozenset[str] = frozenset(),
    ) -> _Plan:
        """Run every decision queued for one document, in order, on the state the previous one left."""
        plan = _Plan(doc_id, writes, doc, cached=cached and doc is not None)
        state = None if doc is None else self.model.model_validate(doc["state"])
        handled: list[str] = list(doc["handled"]) if doc else []
        positions: dict[str, int] = dict(doc.get("positions", {})) if doc else {}
        outbox = [e for e in (doc["outbox"] if doc else []) if e["message_id"] not in self._confirmed]
        dirty = doc is not None and len(outbox) != len(doc["outbox"])
        traceparent: str | None = doc.get(TRACEPARENT) if doc else None
        for write in writes:
            if write.message_id in applied_before or _already_absorbed(
                handled, positions, write.message_id, write.position
            ):
                plan.outcomes.append((write, None))
                continue
            try:
                # In the caller's context: its log fields, and its trace, which goes into the entries.
                change, entries, caused_in = write.context.run(self._decide, doc_id, write, state, traceparent)
            except Refused as refusal:
                # Not remembered: the dead letter does not exist yet, and a crash before it does
                # must leave the message to be refused again, not absorbed. A replay refuses it again.
                plan.decided = True  # writes nothing, so a refusal on a cached copy must be re-checked
                plan.outcomes.append((write, refusal))
                continue
            except Exception as error:  # the decision's own bug: its message is retried, the rest go on
                plan.outcomes.append((write, error))
                continue
            if change is None:
                plan.decided = True
            else:
                state = change.state
                traceparent = caused_in or traceparent
                plan.new_entries += entries
                _track(handled, positions, write.message_id, write.position)
                if write.message_id is not None and self._remembers_write(write):
                    plan.applied.append(write.message_id)
                dirty = True
            plan.outcomes.append((write, change))
        if dirty and state is not None:
            kept = bool(outbox)
            outbox += plan.new_entries
            plan.after = {
                "_id": doc_id,
                "version": (doc["version"] + 1) if doc else 1,
                "state": state.model_dump(mode="json"),
                "outbox": outbox,
                "outbox_pending": len(outbox),
                # The age of the oldest entry, which the relay goes by.
                "outbox_at": (doc or {}).get("outbox_at", 0.0) if kept else time.time(),
                "handled": handled[-HANDLED_MEMORY:],
                "positions": positions,
                "write_id": write_id,
            }
            if traceparent is not None:
                plan.after[TRACEPARENT] = traceparent
        return plan

    def _decide(
        self, doc_id: str, write: _Write, state: S | None, traceparent: str | None
    ) -> tuple[Change[Any] | None, list[dict[str, Any]], str | None]:
        """One decision, its outbox entries, and the trace they were caused in (kept if the store keeps traces)."""
        if self.keeps_trace and traceparent is not None and outside_message_traces():
            attributes = {"db.collection.name": self.name, "pharmacy.document.id": doc_id}
            with continuing_trace(traceparent, self._tracer, f"{self.name} apply", attributes):
                return self._decide_here(write, state)
        return self._decide_here(write, state)

    def _decide_here(
        self, write: _Write, state: S | None
    ) -> tuple[Change[Any] | None, list[dict[str, Any]], str | None]:
        change = write.decide(state)
        if change is None:
            return None, [], None
        return change, _entries(change.events), current_traceparent() if self.keeps_trace else None

    async def _write_plans(self, plans: list[_Plan], write_id: str) -> set[str]:
        """One bulk write; returns the documents someone else wrote first (to decide again)."""
        if not plans:
            return set()
        operations = [
            InsertOne(p.after)
            if p.before is None
            else ReplaceOne({"_id": p.doc_id, "version": p.before["version"]}, p.after)
            for p in plans
        ]
        lost: set[str] = set()
        refused: set[str] = set()
        try:
            result = await self._collection.bulk_write(operations, ordered=False)
            matched = result.matched_count
        except BulkWriteError as error:
            if error.details.get("writeConcernErrors"):
                raise WriteNotDurable(f"{self.name}: {error.details['writeConcernErrors'][:3]}") from error
            for failure in error.details["writeErrors"]:
                plan = plans[failure["index"]]
                if failure["code"] == DUPLICATE_KEY:
                    lost.add(plan.doc_id)  # created by someone else meanwhile
                else:  # this document alone fails (too large, say); the others were written
                    refused.add(plan.doc_id)
                    failed = RuntimeError(f"{self.name}/{plan.doc_id}: {failure.get('errmsg', failure)}")
                    plan.outcomes = [(write, failed) for write in plan.writes]
                    plan.after, plan.new_entries = None, []
            matched = error.details.get("nMatched", 0)
        replaced = [p.doc_id for p in plans if p.before is not None and p.doc_id not in refused]
        if matched < len(replaced):
            # A version guard did not match, but the count does not say which: ask for our write id.
            ours = {d["_id"] async for d in self._collection.find({"_id": {"$in": replaced}, "write_id": write_id})}
            lost.update(doc_id for doc_id in replaced if doc_id not in ours)
        return lost

    async def _publish_written(self, plans: list[_Plan]) -> None:
        if self._publish is None:
            return  # the relay publishes them
        # The whole outbox, oldest first: entries a failed publish or another writer left behind
        # go out before the new ones, so one document's events keep their order.
        entries = [entry for plan in plans if plan.after is not None for entry in plan.after["outbox"]]
        try:
            await self._publish(entries)
        except Exception:
            log.exception("publishing after a write failed; the relay will publish", store=self.name)
            return
        for entry in entries:
            self._confirmed[entry["message_id"]] = None
        while len(self._confirmed) > CONFIRMED_MEMORY:
            self._confirmed.popitem(last=False)
        for plan in plans:
            assert plan.after is not None
            self._clears[plan.doc_id] = (plan.after, time.monotonic())

    def _clear_plan(self, doc: dict[str, Any], write_id: str) -> _Plan:
        """Drop published entries from a document's outbox, in the next group's bulk write."""
        plan = _Plan(doc["_id"], [], doc, cached=True)
        left = [e for e in doc["outbox"] if e["message_id"] not in self._confirmed]
        if len(left) != len(doc["outbox"]):
            plan.after = {
                **doc,
                "version": doc["version"] + 1,
                "outbox": left,
                "outbox_pending": len(left),
                "write_id": write_id,
            }
        return plan

    # --- outbox leftovers (the relay) -------------------------------------------------------------

    async def pending_outbox(
        self, limit: int = 200, *, written_before: float | None = None
    ) -> list[tuple[str, list[dict[str, Any]]]]:
        query: dict[str, Any] = {"outbox_pending": {"$gt": 0}}
        if written_before is not None:
            query["outbox_at"] = {"$lt": written_before}
        cursor = self._collection.find(query, {"outbox": 1}).limit(limit)
        return [(d["_id"], d["outbox"]) async for d in cursor]

    async def remove_published(self, doc_id: str, message_ids: set[str]) -> None:
        for _ in range(MAX_WRITE_ATTEMPTS):
            doc = await self._collection.find_one({"_id": doc_id}, {"outbox": 1, "version": 1})
            if doc is None:
                return
            remaining = [e for e in doc["outbox"] if e["message_id"] not in message_ids]
            if len(remaining) == len(doc["outbox"]):
                return
            result = await self._collection.update_one(
                {"_id": doc_id, "version": doc["version"]},
                {"$set": {"outbox": remaining, "outbox_pending": len(remaining)}, "$inc": {"version": 1}},
            )
            if result.matched_count == 1:
                return
        raise ConcurrencyConflict(f"{self.name}/{doc_id}: could not clear the outbox")


def _entries(events: Sequence[Envelope]) -> list[dict[str, Any]]:
    return [outbox_entry(e) for e in events]


def _already_absorbed(
    handled: list[str], positions: dict[str, int], message_id: str | None, position: Position | None
) -> bool:
    if message_id is not None and message_id in handled:
        return True
    return position is not None and positions.get(position.key, -1) >= position.offset


def _track(handled: list[str], positions: dict[str, int], message_id: str | None, position: Position | None) -> None:
    if message_id is not None:
        handled.append(message_id)
    if position is not None:
        positions[position.key] = max(position.floor, positions.get(position.key, -1))


async def ping(client: AsyncIOMotorClient) -> None:
    await client.admin.command("ping")


__all__ = [
    "TRANSIENT_ERRORS",
    "Change",
    "ConcurrencyConflict",
    "DocumentStore",
    "connect",
    "ping",
]
