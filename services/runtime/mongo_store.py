"""The `Store` on MongoDB (and on the dev server, whose gaps it avoids).

A document is `{_id, version, state, outbox, outbox_pending, outbox_at, handled, positions,
write_id}` (and `traceparent` where kept; `outbox_writer` and `saved_at` in a store whose published
entries are known by writers' marks instead of cleared, see `outbox_marks`):

* a save is a whole-document replace guarded by `version` (or a plain insert), all of one save in
  one unordered bulk write: no `$push`/`$pull` of sub-documents, no positional updates;
* `outbox_pending` counts the outbox at the top level, so the relay's query needs no array index;
* the ids of applied messages go to `<collection>_applied` (`_id` = message id, so a second insert
  of one is refused by the primary key) once the document that absorbed them is written.

This module, `mongo` and the services' storage modules are the only code that knows MongoDB.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Generic

from bson.errors import BSONError
from motor.motor_asyncio import AsyncIOMotorCollection, AsyncIOMotorDatabase
from pydantic import ValidationError
from pymongo import InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from .mongo import DUPLICATE_KEY, NoPrimary, WriteNotDurable, document_indexes, is_outage, record_applied
from .outbox_marks import OutboxMarks, writers_of
from .store import DocumentMemory, RemembersCommands, S, Save, Saved, Stored, Tracking, remembered

#: Times a save of published-entry removals is tried again when someone wrote the document first.
CLEAR_ATTEMPTS = 5
#: How often the relay's passes look at what other writers left (a writer that died).
OTHERS_EVERY_S = 5.0


class MongoStore(Generic[S]):
    def __init__(
        self,
        database: AsyncIOMotorDatabase,
        name: str,
        model: type[S],
        *,
        remembers_commands: RemembersCommands = False,
        keeps_trace: bool = False,
        keeps_every_message: bool = False,
        memory: DocumentMemory[S] | None = None,
        marks_published: bool = False,
    ) -> None:
        """`remembers_commands`: the documents take commands people or their systems may send again
        at any time (an upstream prescription, a pharmacist's decision); the ids of the messages
        applied from these topics (or all, with True) are kept for good in `<name>_applied`, not
        only the last few hundred on each document. It costs a lookup and an insert per batch that
        holds one, so events, which only a crash repeats, go without.

        `keeps_trace`: each document is one flow's (a prescription's) and remembers the trace that
        last changed it (see `UnitOfWork.run`).

        `keeps_every_message`: each document is one flow's and remembers every message id it
        absorbed (see `Store.keeps_every_message`), so commands sent again need no applied-id list.

        `memory`: the documents this process last wrote or read, which a unit of work decides on
        without loading them again (see `DocumentMemory`).

        `marks_published`: published entries are not cleared from their document (a second write of
        it) but known by this process's mark in `<name>_writers` (see `outbox_marks`); for stores
        whose saves this process publishes itself. Without it, the relay clears them."""
        self.name = name
        self.keeps_every_message = keeps_every_message
        self.memory = memory
        self.keeps_trace = keeps_trace
        self._remembers = remembers_commands
        self.model = model
        self._collection: AsyncIOMotorCollection = database[name]
        self._applied: AsyncIOMotorCollection | None = database[f"{name}_applied"] if remembers_commands else None
        self.marks: OutboxMarks | None = OutboxMarks(writers_of(database, name)) if marks_published else None
        #: When this relay last read the other writers' marks (see `pending_outbox`).
        self._others_read_at = float("-inf")

    async def ensure_indexes(self, *unique_state_fields: Sequence[str], plain: Sequence[str] = ()) -> None:
        await self._collection.create_indexes(
            document_indexes(unique_state_fields, plain, by_writer=self.marks is not None)
        )

    async def load(self, ids: Collection[str], *, from_memory: bool = False) -> dict[str, Stored[S]]:
        wanted = list(dict.fromkeys(ids))
        served, missing = self.memory.recall(wanted) if from_memory and self.memory else ({}, wanted)
        found: dict[str, Stored[S]] = {}
        if missing:
            documents = await self._collection.find({"_id": {"$in": missing}}).to_list(None)
            if self.marks is not None and self.marks.worth_reading_others(documents):
                await self.marks.read_others()
            found = {d["_id"]: self._stored_or_broken(d) for d in documents}
            if self.memory is not None:
                self.memory.loaded(found.values())
        return {doc_id: served.get(doc_id) or found.get(doc_id) or Stored(doc_id) for doc_id in wanted}

    async def save(self, saves: Sequence[Save[S]]) -> Saved:
        if not saves:
            return Saved()
        write_id = uuid.uuid4().hex
        documents = {}
        saved = Saved()
        if self.marks is not None and any(save.outbox for save in saves):
            await self.marks.announce()
        # Registered before the write starts, in the same step as its time is taken: a mark noted
        # while the write is under way stays below it.
        saved_at = time.time()
        for save in saves:
            try:
                documents[save.id] = self._document(save, write_id, saved_at)
            except (ValueError, TypeError) as error:  # a state that will not serialise
                saved.failed[save.id] = repr(error)
        ready = [save for save in saves if save.id in documents]
        registered = {
            save.id: self.marks.saving(save.id, saved_at, (e["message_id"] for e in save.outbox))
            for save in ready
            if self.marks is not None and save.outbox
        }
        # A write that raised may still have landed: its registrations stay, and the relay's pass
        # finds out (entries the document does not hold are dropped from them).
        saved = await self._save_ready(ready, documents, write_id, saved)
        self._not_written(registered, [*saved.lost, *saved.failed])
        if self.memory is not None:
            self.memory.saved(saves, saved)
        applied = [message_id for save in saves if save.id in saved.written for message_id in save.applied]
        if applied and self._applied is not None:
            await record_applied(self._applied, applied)
        return saved

    def _not_written(self, registered: Mapping[str, Any], doc_ids: Sequence[str]) -> None:
        if self.marks is not None:
            for doc_id in doc_ids:
                if doc_id in registered:
                    self.marks.not_written(doc_id, registered[doc_id])

    async def _save_ready(
        self, ready: Sequence[Save[S]], documents: Mapping[str, dict[str, Any]], write_id: str, saved: Saved
    ) -> Saved:
        try:
            outcome = await self._write(ready, documents, write_id) if ready else Saved()
        except (BSONError, OverflowError):
            # The driver refused to encode one document (an integer over 64 bits, too large) and
            # with it the whole bulk write: find which one by writing each alone.
            outcome = Saved()
            for save in ready:
                try:
                    alone = await self._write([save], documents, write_id)
                except (BSONError, OverflowError) as error:
                    outcome.failed[save.id] = repr(error)
                else:
                    _merge(outcome, alone)
        _merge(saved, outcome)
        return saved

    def remembers(self, topic: str | None) -> bool:
        return remembered(self._remembers, topic)

    async def applied(self, message_ids: Collection[str]) -> set[str]:
        if not message_ids or self._applied is None:
            return set()
        return {d["_id"] async for d in self._applied.find({"_id": {"$in": list(message_ids)}}, {"_id": 1})}

    async def all(self) -> list[Stored[S]]:
        """Every document (tools and checks, never a message's path)."""
        return [self._stored(d) async for d in self._collection.find({})]

    async def pending_outbox(self, limit: int = 200, *, written_before: float | None = None) -> list[Stored[S]]:
        if self.marks is not None:
            return await self._not_known_published(limit, written_before)
        query: dict[str, Any] = {"outbox_pending": {"$gt": 0}}
        if written_before is not None:
            query["outbox_at"] = {"$lt": written_before}
        # Ids and entries only: a document whose state no longer validates must not stop the relay.
        cursor = self._collection.find(query, {"outbox": 1, "version": 1}).limit(limit)
        return [Stored(d["_id"], None, d["version"], tuple(d["outbox"])) async for d in cursor]

    async def _not_known_published(self, limit: int, written_before: float | None) -> list[Stored[S]]:
        """This writer's saves the broker has not confirmed (up to `limit`), then what other writers
        saved at or after their marks: all of it for a writer gone silent (it died), the stale part
        for a live one (its own publish is failing). `written_before` None: everything, now."""
        assert self.marks is not None
        found: list[Stored[S]] = []
        mine = dict(list(self.marks.unconfirmed(written_before).items())[:limit])
        if mine:
            held: dict[str, set[str]] = {doc_id: set() for doc_id in mine}
            async for doc in self._collection.find({"_id": {"$in": list(mine)}}, {"outbox": 1, "version": 1}):
                entries = tuple(e for e in doc["outbox"] if e["message_id"] in mine[doc["_id"]])
                held[doc["_id"]] = {e["message_id"] for e in entries}
                if entries:
                    found.append(Stored(doc["_id"], None, doc["version"], entries))
            for doc_id, ids in mine.items():
                # Entries the document does not hold were saved over (published by whoever did) or
                # never written; unless a write of it may still be landing.
                if self.marks.no_write_under_way(doc_id):
                    self.marks.confirmed(doc_id, ids - held[doc_id])
        now = time.time()
        if written_before is not None and now - self._others_read_at < OTHERS_EVERY_S:
            return found
        self._others_read_at = now
        bound = now if written_before is None else written_before
        for writer, (through, noted_at) in (await self.marks.read_others()).items():
            query = {"outbox_writer": writer, "outbox_pending": {"$gt": 0}, "saved_at": {"$gte": through, "$lt": bound}}
            left = [
                Stored(d["_id"], None, d["version"], tuple(d["outbox"]))
                async for d in self._collection.find(query, {"outbox": 1, "version": 1})
                if not self.marks.already_relayed(writer, d["_id"], d["version"])
            ]
            self.marks.handing_out(writer, through, noted_at, bound, {s.id: s.version for s in left})
            found += left
        await self.marks.settle_drained()
        return found

    async def note_mark(self) -> None:
        """The relay's pass: this writer's mark, when it moved (see `outbox_marks`)."""
        if self.marks is not None:
            await self.marks.note()

    async def retire(self) -> None:
        """At a clean stop, after the relay's last pass."""
        if self.marks is not None:
            await self.marks.retire()

    async def drop_published(self, published: Mapping[str, Collection[str]]) -> None:
        """Published entries leave the outbox. With marks, only this process's memory changes (the
        document keeps them until its next save); otherwise a top-level `$set` of each outbox,
        guarded by the version, so the state is neither read nor validated; raises if some could
        not be cleared (the relay then waits before its next pass)."""
        if self.marks is not None:
            for doc_id, message_ids in published.items():
                self.marks.confirmed(doc_id, message_ids)
                if self.memory is not None:
                    self.memory.published(doc_id, message_ids)
            await self.marks.settle_drained()
            return
        waiting = {doc_id: set(ids) for doc_id, ids in published.items() if ids}
        for _ in range(CLEAR_ATTEMPTS):
            if not waiting:
                return
            cleared = {}  # by id: the outbox left, and the version it is cleared from
            async for doc in self._outboxes(waiting):
                left = _without(doc["outbox"], waiting[doc["_id"]])
                if len(left) != len(doc["outbox"]):
                    cleared[doc["_id"]] = (left, doc["version"])
            if not cleared:
                return
            updates = [
                UpdateOne(
                    {"_id": doc_id, "version": version},
                    {"$set": {"outbox": list(left), "outbox_pending": len(left)}, "$inc": {"version": 1}},
                )
                for doc_id, (left, version) in cleared.items()
            ]
            result = await self._collection.bulk_write(updates, ordered=False)
            if self.memory is not None:
                if result.modified_count == len(updates):
                    for doc_id, (left, version) in cleared.items():
                        self.memory.cleared(doc_id, left, version + 1)
                else:
                    self.memory.forget(cleared)  # which ones lost is not said: the next load tells
            if result.modified_count == len(updates):
                return
            waiting = {doc_id: waiting[doc_id] for doc_id in cleared}  # some lost a race: look again
        raise RuntimeError(f"{self.name}: could not clear published entries of {sorted(waiting)[:5]}")

    async def _outboxes(self, ids: Collection[str]) -> Any:
        """Each document's outbox and version: from memory where it is held (a stale copy only
        makes its clear miss, and the next attempt asks the database), the rest in one query."""
        held = {doc_id: self.memory.held(doc_id) for doc_id in ids} if self.memory else {}
        for doc_id, stored in held.items():
            if stored is not None:
                yield {"_id": doc_id, "outbox": stored.outbox, "version": stored.version}
        unknown = [doc_id for doc_id in ids if held.get(doc_id) is None]
        if unknown:
            async for doc in self._collection.find({"_id": {"$in": unknown}}, {"outbox": 1, "version": 1}):
                yield doc

    # --- documents ----------------------------------------------------------------------------

    def _outbox_of(self, document: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        """The entries of a document's outbox not known published: all of them, unless its writer's
        mark (or, for this writer's own, what the broker confirmed) says they went out."""
        outbox = tuple(document.get("outbox", ()))
        if self.marks is None or not outbox:
            return outbox
        writer = document.get("outbox_writer")
        if writer == self.marks.writer:
            waiting = self.marks.unconfirmed_of(document["_id"])
            return tuple(e for e in outbox if e["message_id"] in waiting)
        if self.marks.published_by_mark(writer, document.get("saved_at")):
            return ()
        return outbox

    def _stored_or_broken(self, document: dict[str, Any]) -> Stored[S]:
        """A document whose state no longer validates (a model changed under it) is returned
        broken, so only its own records fail, not the batch."""
        try:
            return self._stored(document)
        except ValidationError as error:
            reason = f"{self.name}/{document['_id']}: stored state does not validate: {error.errors()[:3]}"
            return Stored(document["_id"], None, document.get("version", 0), broken=reason)

    def _stored(self, document: dict[str, Any]) -> Stored[S]:
        return Stored(
            document["_id"],
            self.model.model_validate(document["state"]),
            document["version"],
            self._outbox_of(document),
            Tracking(tuple(document.get("handled", ())), dict(document.get("positions", {}))),
            document.get("traceparent"),
        )

    def _document(self, save: Save[S], write_id: str, now: float) -> dict[str, Any]:
        document = {
            "_id": save.id,
            "version": save.version,
            "state": save.state.model_dump(mode="json"),
            "outbox": list(save.outbox),
            "outbox_pending": len(save.outbox),
            # The age of the oldest entry, which the relay goes by.
            "outbox_at": min((entry.get("queued_at", now) for entry in save.outbox), default=0.0),
            "handled": list(save.tracking.recent),
            "positions": dict(save.tracking.positions),
            "write_id": write_id,
        }
        if save.traceparent is not None:
            document["traceparent"] = save.traceparent
        if self.marks is not None:
            document["outbox_writer"] = self.marks.writer
            document["saved_at"] = now
        return document

    async def _write(self, saves: Sequence[Save[S]], documents: Mapping[str, dict[str, Any]], write_id: str) -> Saved:
        operations = [
            InsertOne(documents[s.id])
            if s.expected == 0
            else ReplaceOne({"_id": s.id, "version": s.expected}, documents[s.id])
            for s in saves
        ]
        saved = Saved()
        try:
            result = await self._collection.bulk_write(operations, ordered=False)
            matched = result.matched_count
        except BulkWriteError as error:
            if error.details.get("writeConcernErrors"):
                raise WriteNotDurable(f"{self.name}: {error.details['writeConcernErrors'][:3]}") from error
            if is_outage(error):  # no primary took these writes: the whole batch waits for one
                raise NoPrimary(f"{self.name}: {error.details['writeErrors'][:3]}") from error
            for failure in error.details["writeErrors"]:
                doc_id = saves[failure["index"]].id
                if failure["code"] == DUPLICATE_KEY and set(failure.get("keyPattern") or {"_id": 1}) == {"_id"}:
                    saved.lost.append(doc_id)  # inserted by someone else meanwhile
                else:
                    saved.failed[doc_id] = str(failure.get("errmsg", failure))
            matched = error.details.get("nMatched", 0)
        refused = set(saved.lost) | set(saved.failed)
        replaced = [s.id for s in saves if s.expected > 0 and s.id not in refused]
        inserted = [s.id for s in saves if s.expected == 0 and s.id not in refused]
        ours = set(replaced)
        if matched < len(replaced):
            # A version guard did not match, but the count does not say which: ask for our write id.
            ours = {d["_id"] async for d in self._collection.find({"_id": {"$in": replaced}, "write_id": write_id})}
            saved.lost += [doc_id for doc_id in replaced if doc_id not in ours]
        saved.written += inserted + [doc_id for doc_id in replaced if doc_id in ours]
        return saved


def _without(outbox: Sequence[dict[str, Any]], message_ids: Collection[str]) -> tuple[dict[str, Any], ...]:
    return tuple(entry for entry in outbox if entry["message_id"] not in message_ids)


def _merge(into: Saved, other: Saved) -> None:
    into.written += other.written
    into.lost += other.lost
    into.failed.update(other.failed)
