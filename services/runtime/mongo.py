"""MongoDB plumbing: the client, what counts as an outage, error codes, indexes, the applied-ids collection."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection
from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError, ConnectionFailure

from .observability import RoundTripListener

#: Errors that mean "the database is unreachable right now", not "this message is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionFailure,)
DUPLICATE_KEY = 11000


class WriteNotDurable(ConnectionFailure):
    """The write was not acknowledged by enough replicas (MongoDB reports it beside the write):
    treated like an unreachable database, so the message is retried and its duplicate recognised."""


def document_indexes(unique_state_fields: Sequence[Sequence[str]], plain: Iterable[str]) -> list[IndexModel]:
    """The relay's index on the outbox count, and the service's own on fields of the state."""
    indexes = [IndexModel([("outbox_pending", ASCENDING)])]
    indexes += [IndexModel([(f"state.{f}", ASCENDING) for f in fields], unique=True) for fields in unique_state_fields]
    indexes += [IndexModel([(f"state.{f}", ASCENDING)]) for f in plain]
    return indexes


async def record_applied(applied: AsyncIOMotorCollection, message_ids: Iterable[str]) -> None:
    """Keep these message ids for good (`_id` = message id); ids recorded before are fine."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return
    try:
        await applied.insert_many([{"_id": m} for m in ids], ordered=False)
    except BulkWriteError as error:
        if error.details.get("writeConcernErrors"):
            raise WriteNotDurable(f"{applied.name}: {error.details['writeConcernErrors'][:3]}") from error
        if any(f["code"] != DUPLICATE_KEY for f in error.details["writeErrors"]):
            raise  # recorded before (a redelivery) is fine; anything else is not


def connect(url: str) -> AsyncIOMotorClient:
    return AsyncIOMotorClient(url, tz_aware=True, serverSelectionTimeoutMS=5000, event_listeners=[RoundTripListener()])


async def ping(client: AsyncIOMotorClient) -> None:
    await client.admin.command("ping")
