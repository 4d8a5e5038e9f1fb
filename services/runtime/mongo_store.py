"""The `Store` on MongoDB (and on the dev server, whose gaps it avoids).

A document is `{_id, version, state, outbox, outbox_pending, outbox_at, handled, positions,
write_id}` (and `traceparent` where kept):

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
from .store import DocumentMemory, RemembersCommands, S, Save, Saved, Stored, Tracking, remembered

#: Times a save of published-entry removals is tried again when someone wrote the document first.
CLEAR_ATTEMPTS = 5


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
        without loading them again (see `DocumentMemory`)."""
        self.name = name
        self.keeps_every_message = keeps_every_message
        self.memory = memory
        self.keeps_trace = keeps_trace
        self._remembers = remembers_commands
        self.model = model
        self._collection: AsyncIOMotorCollection = database[name]
        self._applied: AsyncIOMotorCollection | None = database[f"{name}_applied"] if remembers_commands else None

    async def ensure_indexes(self, *unique_state_fields: Sequence[str], plain: Sequence[str] = ()) -> None:
        await self._collection.create_indexes(document_indexes(unique_state_fields, plain))

    async def load(self, ids: Collection[str], *, from_memory: bool = False) -> dict[str, Stored[S]]:
        wanted = list(dict.fromkeys(ids))
        served, missing = self.memory.recall(wanted) if from_memory and self.memory else ({}, wanted)
        found: dict[str, Stored[S]] = {}
        if missing:
            cursor = self._collection.find({"_id": {"$in": missing}})
            found = {d["_id"]: self._stored_or_broken(d) async for d in cursor}
            if self.memory is not None:
                self.memory.loaded(found.values())
        return {doc_id: served.get(doc_id) or found.get(doc_id) or Stored(doc_id) for doc_id in wanted}

    async def save(self, saves: Sequence[Save[S]]) -> Saved:
        if not saves:
            return Saved()
        write_id = uuid.uuid4().hex
        documents = {}
        saved = Saved()
        for save in saves:
            try:
                documents[save.id] = self._document(save, write_id)
            except (ValueError, TypeError) as error:  # a state that will not serialise
                saved.failed[save.id] = repr(error)
        ready = [save for save in saves if save.id in documents]
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
        if self.memory is not None:
            self.memory.saved(saves, saved)
        applied = [message_id for save in saves if save.id in saved.written for message_id in save.applied]
        if applied and self._applied is not None:
            await record_applied(self._applied, applied)
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
        query: dict[str, Any] = {"outbox_pending": {"$gt": 0}}
        if written_before is not None:
            query["outbox_at"] = {"$lt": written_before}
        # Ids and entries only: a document whose state no longer validates must not stop the relay.
        cursor = self._collection.find(query, {"outbox": 1, "version": 1}).limit(limit)
        return [Stored(d["_id"], None, d["version"], tuple(d["outbox"])) async for d in cursor]

    async def drop_published(self, published: Mapping[str, Collection[str]]) -> None:
        """A top-level `$set` of each outbox, guarded by the version, so the state is neither read
        nor validated; raises if some could not be cleared (the relay then waits before its next pass)."""
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
            tuple(document.get("outbox", ())),
            Tracking(tuple(document.get("handled", ())), dict(document.get("positions", {}))),
            document.get("traceparent"),
        )

    def _document(self, save: Save[S], write_id: str) -> dict[str, Any]:
        now = time.time()
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
