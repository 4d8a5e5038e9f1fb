"""MongoDB plumbing: the client, what counts as an outage, error codes, indexes, the applied-ids collection."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection
from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

from .observability import RoundTripListener
from .settings import RuntimeSettings

#: Errors that mean "the database is unreachable right now", not "this message is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionFailure,)
DUPLICATE_KEY = 11000
#: Server answers that mean there is no primary to take the write right now: an election, a
#: stepdown, a restart, a lost connection (the "not primary", "node is recovering" and retryable
#: codes of MongoDB's SDAM and retryable-writes specifications). The same operation succeeds once a
#: primary answers, so they are an outage, never the message's fault.
OUTAGE_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        134,  # ReadConcernMajorityNotAvailableYet
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10058,  # LegacyNotPrimary
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)
#: Labels the server or the driver puts on errors worth trying again.
OUTAGE_LABELS = ("RetryableWriteError", "TransientTransactionError")


class WriteNotDurable(ConnectionFailure):
    """The write was not acknowledged by enough replicas (MongoDB reports it beside the write):
    treated like an unreachable database, so the message is retried and its duplicate recognised."""


class NoPrimary(ConnectionFailure):
    """A document's write was refused because no primary could take it (an election, a stepdown):
    the whole batch waits for one, like for an unreachable database."""


def is_outage(error: BaseException) -> bool:
    """Whether `error` says the database cannot answer right now (wait and try again) rather than
    that this operation is wrong: unreachable, no primary, a write not yet durable."""
    if isinstance(error, ConnectionFailure):
        return True
    if isinstance(error, BulkWriteError):
        failures = error.details.get("writeErrors") or []
        return any(f.get("code") in OUTAGE_CODES for f in failures) or _labelled(error)
    if isinstance(error, OperationFailure):
        return error.code in OUTAGE_CODES or _labelled(error)
    return False


def _labelled(error: OperationFailure) -> bool:
    return any(error.has_error_label(label) for label in OUTAGE_LABELS)


def document_indexes(
    unique_state_fields: Sequence[Sequence[str]], plain: Iterable[str], *, by_writer: bool = False
) -> list[IndexModel]:
    """The relay's index: on the outbox count, or, `by_writer`, on each writer's saves (see
    `outbox_marks`: there nearly every document holds entries, so a count index would only cost
    each save an index update); and the service's own on fields of the state."""
    if by_writer:
        indexes = [IndexModel([("outbox_writer", ASCENDING), ("saved_at", ASCENDING)])]
    else:
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


def connect(
    url: str,
    *,
    write_concern: str | int = "majority",
    journal: bool = True,
    write_timeout_ms: int = 10_000,
    read_concern: str = "majority",
) -> AsyncIOMotorClient:
    """A client whose writes are acknowledged only once a majority of the replica set has them in
    its journal (a write the services already announced on Kafka must survive a failover), within
    `write_timeout_ms` (past it the write is `WriteNotDurable`, retried), and whose reads see only
    majority-committed data (a decision is never made on a write a failover could roll back)."""
    options: dict[str, Any] = {
        "w": int(write_concern) if str(write_concern).isdigit() else write_concern,
        "journal": journal,
        "wTimeoutMS": write_timeout_ms,
        "readConcernLevel": read_concern,
    }
    return AsyncIOMotorClient(
        url, tz_aware=True, serverSelectionTimeoutMS=5000, event_listeners=[RoundTripListener()], **options
    )


def client_for(settings: RuntimeSettings) -> AsyncIOMotorClient:
    """The client of a service or a tool, with the durability its settings ask for."""
    return connect(
        settings.mongo_url.get_secret_value(),
        write_concern=settings.mongo_write_concern,
        journal=settings.mongo_journal,
        write_timeout_ms=settings.mongo_write_timeout_ms,
        read_concern=settings.mongo_read_concern,
    )


async def ping(client: AsyncIOMotorClient) -> None:
    await client.admin.command("ping")
