"""What the services ask of MongoDB: writes a failover cannot lose, reads a failover cannot take
back, and which of its answers mean "no primary right now" (wait) rather than "this is wrong"."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from services.runtime.mongo import NoPrimary, WriteNotDurable, client_for, connect, is_outage
from services.runtime.settings import RuntimeSettings

NOWHERE = "mongodb://127.0.0.1:1"  # never dialled: a client connects on its first operation


def test_a_client_writes_to_a_majority_s_journal_with_a_timeout_and_reads_majority_committed_data() -> None:
    client = connect(NOWHERE)
    try:
        assert client.write_concern.document == {"w": "majority", "j": True, "wtimeout": 10_000}
        assert client.read_concern.level == "majority"
    finally:
        client.close()


def test_the_services_and_tools_take_their_durability_from_the_settings() -> None:
    settings = RuntimeSettings(
        mongo_url=NOWHERE, mongo_write_concern="2", mongo_write_timeout_ms=2_500, mongo_read_concern="local"
    )
    client = client_for(settings)
    try:
        assert client.write_concern.document == {"w": 2, "j": True, "wtimeout": 2_500}
        assert client.read_concern.level == "local"
    finally:
        client.close()
    assert client_for(RuntimeSettings(mongo_url=NOWHERE)).write_concern.document["w"] == "majority"


@pytest.mark.parametrize("write_concern", ["0", "many", "-1", ""])
def test_a_write_concern_that_would_not_wait_for_any_acknowledgement_or_is_not_one_is_refused(
    write_concern: str,
) -> None:
    with pytest.raises(ValidationError):
        RuntimeSettings(mongo_write_concern=write_concern)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionFailure("refused"),
        AutoReconnect("lost"),
        NetworkTimeout("slow"),
        ServerSelectionTimeoutError("no server"),
        NotPrimaryError("not primary"),
        WriteNotDurable("w: majority timed out"),
        NoPrimary("stepdown"),
        OperationFailure("interrupted", code=11602),
        OperationFailure("stepped down", code=189),
        OperationFailure("not writable primary", code=10107),
        OperationFailure("shutting down", code=91),
        OperationFailure("majority not available yet", code=134),
        OperationFailure("labelled", code=0, details={"errorLabels": ["RetryableWriteError"]}),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}, {"index": 1, "code": 11600}]}),
        BulkWriteError({"writeErrors": [], "errorLabels": ["RetryableWriteError"]}),
    ],
    ids=repr,
)
def test_answers_that_mean_no_primary_right_now_are_an_outage(error: Exception) -> None:
    assert is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        OperationFailure("Document failed validation", code=121),
        OperationFailure("bad value", code=2),
        DuplicateKeyError("E11000", code=11000),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}, {"index": 1, "code": 17419}]}),
        ValueError("a bug"),
    ],
    ids=repr,
)
def test_answers_about_the_operation_itself_are_not_an_outage(error: Exception) -> None:
    assert not is_outage(error)
