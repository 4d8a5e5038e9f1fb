"""Nothing dropped silently, batch by batch: the consumer path of `subscribe(handle_batch=...)` in
`services.runtime.kafka` with the stand-in broker of tests/support/consumer.py.

The records of a batch that pass the checks are handed over together, in arrival order, with their
positions and log context; the unit of work's answer says what became of each: refused → dead
letter with the refusal's code; failed → tried again (the failed ones together, in arrival order),
with backoff, up to `handler_max_attempts`, then dead-lettered `processing_failed`; an exception
from the whole batch fails every record, so each is tried again; an unreachable database retries the
whole batch until it answers, with one warning; the handled ones are counted; only background
consumers linger. (The records refused before any unit of work sees them: test_dead_letters.py.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import structlog
from aiokafka.structs import ConsumerRecord
from pymongo.errors import BulkWriteError, ConnectionFailure, NotPrimaryError, OperationFailure

from pharmacy_contracts.inventory import AdjustmentRequested, RestockRequested
from services.runtime import kafka
from services.runtime.errors import Refused
from services.runtime.observability import current_message_type
from services.runtime.settings import RuntimeSettings
from services.runtime.tracking import Position, current_position
from services.runtime.unit_of_work import Handled, Outcome, Record
from tests.support import consumer
from tests.support.consumer import (
    OTHER,
    TOPIC,
    BatchHandler,
    Broker,
    Log,
    Observer,
    answering,
    body,
    dlq,
    record,
    restock,
    settings,
)

log = consumer.log
sleeps = consumer.sleeps
fresh_context = consumer.fresh_context


def subscribed(
    monkeypatch: pytest.MonkeyPatch,
    handle_batch: BatchHandler,
    settings_: RuntimeSettings | None = None,
    **options: Any,
) -> tuple[Broker, Observer, Callable[..., Awaitable[None]]]:
    broker, observability, consume = consumer.subscribed(monkeypatch, handle_batch, settings_, **options)
    return broker, observability.observer, consume


def markers(batch: Sequence[Record[Any]]) -> list[str]:
    return [r.message.correlation_id for r in batch]


# --- admission ------------------------------------------------------------------------------------


async def test_admitted_records_are_handed_over_together_in_order_with_positions_and_context(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    given: list[list[Record[Any]]] = []
    outside: list[dict[str, Any]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        given.append(list(records))
        outside.append(structlog.contextvars.get_contextvars())
        return [Handled(r, Outcome.APPLIED) for r in records]

    broker, observer, consume = subscribed(monkeypatch, handle_batch)
    await consume(
        record(body("c"), offset=12, partition=0, key=b"k1"),
        record(body("a"), offset=10, partition=0, key=b"k2"),
        record(b"garbage", offset=11, partition=0, key=b"k1"),
        record(body("b"), offset=5, partition=1, key=b"k1"),
    )
    [batch] = given
    assert markers(batch) == ["RX-c", "RX-a", "RX-b"], "arrival order, the unreadable one left out"
    assert [r.message for r in batch] == [restock("c"), restock("a"), restock("b")]
    assert [r.position for r in batch] == [
        Position(TOPIC.name, 0, 12, 9),
        Position(TOPIC.name, 0, 10, 9),
        Position(TOPIC.name, 1, 5, 4),
    ]
    first = batch[0]
    assert first.context is not None
    assert first.context.run(structlog.contextvars.get_contextvars) == {
        "topic": TOPIC.name,
        "partition": 0,
        "offset": 12,
        "correlation_id": "RX-c",
        "message_id": restock("c").message_id,
        "message_type": restock("c").type,
    }
    assert first.context.run(current_position.get) == Position(TOPIC.name, 0, 12, 9)
    assert first.context.run(current_message_type.get) == restock("c").type
    assert batch[2].context is not None
    assert batch[2].context.run(structlog.contextvars.get_contextvars)["correlation_id"] == "RX-b"
    # the unit of work runs outside any one record's message fields
    assert not {"correlation_id", "message_id", "message_type"} & set(outside[0])
    [letter] = broker.published
    assert dlq(letter)[0] == "contract_violation" and letter["value"] == b"garbage"
    assert observer.calls == [
        ("claim_task",),
        ("handling", 12),
        ("handled_record", 12),
        ("handling", 10),
        ("handled_record", 10),
        ("handling", 11),
        ("dead_lettered", TOPIC.name, "contract_violation"),
        ("handled_record", 11),
        ("handling", 5),
        ("handled_record", 5),
        ("handled", TOPIC.name),
        ("handled", TOPIC.name),
        ("handled", TOPIC.name),
    ]
    assert sleeps == []


async def test_a_batch_with_nothing_admitted_reaches_no_unit_of_work(monkeypatch: pytest.MonkeyPatch) -> None:
    handle_batch, calls = answering(Outcome.APPLIED)

    def gate(body_: bytes, headers: dict[str, str]) -> None:
        raise Refused("no", "d")

    broker, _, consume = subscribed(monkeypatch, handle_batch, gate=gate)
    await consume(record(body("a"), offset=1), record(b"x" * 2000, offset=2))
    assert calls == []
    assert [dlq(p) for p in broker.published] == [("no", "d", "1"), ("too_large", "2000 bytes, at most 1024", "1")]


@pytest.mark.parametrize("outcome", [Outcome.APPLIED, Outcome.UNCHANGED, Outcome.DUPLICATE])
async def test_every_record_the_unit_of_work_dealt_with_is_counted_handled(
    monkeypatch: pytest.MonkeyPatch, outcome: Outcome, sleeps: list[float], log: Log
) -> None:
    handle_batch, calls = answering(outcome)
    broker, observer, consume = subscribed(monkeypatch, handle_batch)
    await consume(record(body("a"), offset=1), record(body("b"), offset=2))
    assert len(calls) == 1 and markers(calls[0]) == ["RX-a", "RX-b"]
    assert [c for c in observer.calls if c[0] == "handled"] == [("handled", TOPIC.name)] * 2
    assert broker.published == [] and sleeps == [] and log.lines == []


async def test_records_of_types_the_consumer_does_not_act_on_are_passed_over_by_their_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`acts_on`: a record whose type header names another type is passed over unparsed (even
    unreadable bytes are not dead-lettered) and counted as skipped; one without the header is parsed
    and handed over only if its type is acted on; the records after a skipped one still come."""
    handle_batch, calls = answering(Outcome.APPLIED)
    broker, observer, consume = subscribed(monkeypatch, handle_batch, acts_on=[RestockRequested])
    restock_type = RestockRequested.model_fields["type"].default
    adjustment = AdjustmentRequested(
        correlation_id="RX-adjust",
        producer="test",
        warehouse_id="WH-1",
        drug_code="D",
        lot_id="L1",
        delta=-1,
        reason="broken",
        requested_by="test",
    )
    adjustment_type = adjustment.type
    await consume(
        record(body("1"), offset=1, headers=[("message-type", restock_type.encode())]),
        record(b"not json at all", offset=2, headers=[("message-type", adjustment_type.encode())]),
        record(body("3"), offset=3, headers=[]),
        record(adjustment.model_dump_json().encode(), offset=4, headers=[]),
        record(body("5"), offset=5, headers=[("message-type", restock_type.encode())]),
    )
    assert [markers(batch) for batch in calls] == [["RX-1", "RX-3", "RX-5"]]
    assert broker.published == [], "nothing dead-lettered: a skipped record is not even read"
    assert [c for c in observer.calls if c[0] == "skipped"] == [("skipped", TOPIC.name, 2, adjustment_type)]


# --- refusals and failures ------------------------------------------------------------------------------


async def test_a_refused_record_is_dead_lettered_at_once_with_the_refusals_code(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        return [
            Handled(r, Outcome.REFUSED, refusal=Refused("too_many", f"no {r.message.correlation_id}"))
            if r.message.correlation_id == "RX-b"
            else Handled(r, Outcome.APPLIED)
            for r in records
        ]

    broker, observer, consume = subscribed(monkeypatch, handle_batch)
    await consume(record(body("a"), offset=1), record(body("b"), offset=2, partition=1))
    assert calls == [["RX-a", "RX-b"]] and sleeps == []
    [letter] = broker.published
    assert letter["topic"] == TOPIC.dead_letter_topic and letter["value"] == body("b")
    assert dlq(letter) == ("too_many", "no RX-b", "1")
    assert letter["headers"]["dlq.partition"] == "1" and letter["headers"]["dlq.offset"] == "2"
    assert observer.calls.count(("handled", TOPIC.name)) == 1


async def test_a_failed_record_is_tried_again_without_its_neighbours_then_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        return [
            Handled(r, Outcome.FAILED, error=f"broken {len(calls)}")
            if r.message.correlation_id == "RX-b"
            else Handled(r, Outcome.APPLIED)
            for r in records
        ]

    broker, observer, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=4))
    await consume(record(body("a"), offset=1), record(body("b"), offset=2), record(body("c"), offset=3))
    assert calls == [["RX-a", "RX-b", "RX-c"], ["RX-b"], ["RX-b"], ["RX-b"]]
    assert sleeps == [0.5, 1.0, 2.0], "doubling from the backoff, none after the last attempt"
    [letter] = broker.published
    assert letter["value"] == body("b") and dlq(letter) == ("processing_failed", "broken 4", "4")
    assert [c for c in observer.calls if c[0] in ("failed", "dead_lettered", "handled")] == [
        ("failed", TOPIC.name, "RuntimeError", "broken 1"),
        ("failed", TOPIC.name, "RuntimeError", "broken 2"),
        ("failed", TOPIC.name, "RuntimeError", "broken 3"),
        ("handled", TOPIC.name),
        ("dead_lettered", TOPIC.name, "processing_failed"),
        ("handled", TOPIC.name),
    ]
    assert log.lines[:3] == [
        ("warning", "messages failed, retrying them", {"failed": 1, "error": "broken 1", "attempt": 1}),
        ("warning", "messages failed, retrying them", {"failed": 1, "error": "broken 2", "attempt": 2}),
        ("warning", "messages failed, retrying them", {"failed": 1, "error": "broken 3", "attempt": 3}),
    ]


async def test_a_failure_without_a_reason_is_dead_lettered_as_failed(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    handle_batch, calls = answering(Outcome.FAILED)
    broker, observer, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=2))
    await consume(record(body("a"), offset=1))
    assert len(calls) == 2 and sleeps == [0.5]
    assert dlq(broker.published[0]) == ("processing_failed", "failed", "2")
    assert ("failed", TOPIC.name, "RuntimeError", "failed") in observer.calls


async def test_one_attempt_allowed_means_a_failed_record_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    handle_batch, calls = answering(Outcome.FAILED, error="broken")
    broker, observer, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=1))
    await consume(record(body("a"), offset=1))
    assert len(calls) == 1 and sleeps == []
    assert dlq(broker.published[0]) == ("processing_failed", "broken", "1")
    assert not [c for c in observer.calls if c[0] == "failed"]


async def test_the_failed_records_are_tried_again_together_in_order_each_with_its_own_attempts(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        answers = []
        for r in records:
            marker = r.message.correlation_id
            if marker == "RX-a" or (marker == "RX-b" and len(calls) < 3) or (marker == "RX-c" and len(calls) < 2):
                answers.append(Handled(r, Outcome.FAILED, error=f"{marker} broken {len(calls)}"))
            elif marker == "RX-c":
                answers.append(Handled(r, Outcome.REFUSED, refusal=Refused("not_yours", "no")))
            else:
                answers.append(Handled(r, Outcome.APPLIED))
        return answers

    broker, observer, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=3))
    await consume(
        record(body("a"), offset=1),
        record(body("z"), offset=2),
        record(body("b"), offset=3),
        record(body("c"), offset=4),
    )
    assert calls == [["RX-a", "RX-z", "RX-b", "RX-c"], ["RX-a", "RX-b", "RX-c"], ["RX-a", "RX-b"]]
    assert sleeps == [0.5, 1.0]
    assert [(p["value"], *dlq(p)) for p in broker.published] == [
        (body("a"), "processing_failed", "RX-a broken 3", "3"),
        (body("c"), "not_yours", "no", "2"),
    ]
    assert [c for c in observer.calls if c[0] in ("failed", "handled")] == [
        ("failed", TOPIC.name, "RuntimeError", "RX-a broken 1"),
        ("failed", TOPIC.name, "RuntimeError", "RX-b broken 1"),
        ("failed", TOPIC.name, "RuntimeError", "RX-c broken 1"),
        ("failed", TOPIC.name, "RuntimeError", "RX-a broken 2"),
        ("failed", TOPIC.name, "RuntimeError", "RX-b broken 2"),
        ("handled", TOPIC.name),
        ("handled", TOPIC.name),
    ]
    assert log.lines[:2] == [
        ("warning", "messages failed, retrying them", {"failed": 3, "error": "RX-a broken 1", "attempt": 1}),
        ("warning", "messages failed, retrying them", {"failed": 2, "error": "RX-a broken 2", "attempt": 2}),
    ]


async def test_retries_stop_as_soon_as_nothing_fails(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        outcome = Outcome.FAILED if len(calls) == 1 else Outcome.APPLIED
        return [Handled(r, outcome, error="flaky") for r in records]

    broker, observer, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=5))
    await consume(record(body("a"), offset=1), record(body("b"), offset=2))
    assert calls == [["RX-a", "RX-b"]] * 2 and sleeps == [0.5] and broker.published == []
    assert observer.calls.count(("handled", TOPIC.name)) == 2


async def test_a_refused_outcome_without_a_refusal_is_not_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    handle_batch, _ = answering(Outcome.REFUSED)
    broker, observer, consume = subscribed(monkeypatch, handle_batch)
    await consume(record(body("a"), offset=1))
    assert broker.published == [] and ("handled", TOPIC.name) in observer.calls


async def test_an_answer_that_skips_a_record_fails_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        return [Handled(records[0], Outcome.APPLIED)]

    _, _, consume = subscribed(monkeypatch, handle_batch)
    with pytest.raises(ValueError, match="zip"):
        await consume(record(body("a"), offset=1), record(body("b"), offset=2))


async def test_a_retry_answer_that_skips_a_record_fails_the_batch(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        if len(calls) == 1:
            return [Handled(r, Outcome.FAILED, error="flaky") for r in records]
        return [Handled(records[0], Outcome.APPLIED)]

    broker, _, consume = subscribed(monkeypatch, handle_batch)
    with pytest.raises(ValueError, match="zip"):
        await consume(record(body("a"), offset=1), record(body("b"), offset=2))
    assert calls == [["RX-a", "RX-b"]] * 2 and broker.published == []


async def test_an_exception_from_the_whole_batch_fails_every_record_so_each_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        if len(calls) == 1:
            raise KeyError("a bug in the batch")
        return [Handled(r, Outcome.APPLIED) for r in records]

    broker, observer, consume = subscribed(monkeypatch, handle_batch)
    await consume(record(body("a"), offset=1), record(body("b"), offset=2))
    assert calls == [["RX-a", "RX-b"], ["RX-a", "RX-b"]]
    assert broker.published == [] and sleeps == [0.5]
    assert log.lines[0] == ("exception", "unit of work failed", {"records": 2})
    assert [c for c in observer.calls if c[0] == "failed"] == [
        ("failed", TOPIC.name, "RuntimeError", "KeyError('a bug in the batch')")
    ] * 2
    assert observer.calls.count(("handled", TOPIC.name)) == 2


async def test_a_batch_that_keeps_raising_dead_letters_every_record_with_the_error(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        raise KeyError("always")

    broker, _, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=2))
    await consume(record(body("a"), offset=1), record(body("b"), offset=2))
    assert [(p["value"], *dlq(p)) for p in broker.published] == [
        (body("a"), "processing_failed", "KeyError('always')", "2"),
        (body("b"), "processing_failed", "KeyError('always')", "2"),
    ]


# --- an unreachable database ------------------------------------------------------------------------


async def test_an_unreachable_database_retries_the_whole_batch_until_it_answers_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        if len(calls) <= 8:
            raise ConnectionFailure("database gone")
        return [Handled(r, Outcome.APPLIED) for r in records]

    broker, observer, consume = subscribed(
        monkeypatch, handle_batch, settings(handler_max_attempts=2, handler_retry_backoff_s=0.25)
    )
    await consume(record(body("a"), offset=1), record(body("b"), offset=2))
    assert calls == [["RX-a", "RX-b"]] * 9, "the whole batch each time, beyond handler_max_attempts"
    # backoff x 2^attempt, the exponent capped at 6, the delay at 10 s
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert log.lines == [
        ("warning", "database unreachable; retrying until it answers", {"error": "database gone"}),
        ("info", "database reachable again", {"attempts": 9}),
    ]
    assert broker.published == [] and observer.calls.count(("handled", TOPIC.name)) == 2
    assert not [c for c in observer.calls if c[0] == "failed"], "our outage is not the messages' fault"


@pytest.mark.parametrize(
    "election",
    [
        NotPrimaryError("not primary"),
        OperationFailure("Interrupted due to repl state change", code=11602),
        OperationFailure("primary stepped down", code=189),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 10107, "errmsg": "not writable primary"}]}),
        OperationFailure("try again", code=0, details={"errorLabels": ["RetryableWriteError"]}),
    ],
    ids=["not-primary", "repl-state-change", "stepped-down", "bulk-not-writable-primary", "retryable-label"],
)
async def test_an_election_is_waited_out_like_an_unreachable_database_not_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log, election: Exception
) -> None:
    """A normal failover takes 10-12 s: far more than the retries a failing message gets. Every
    answer that means "no primary right now" makes the whole batch wait, however long."""
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        if len(calls) <= 12:
            raise election
        return [Handled(r, Outcome.APPLIED) for r in records]

    broker, observer, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=2))
    await consume(record(body("a"), offset=1))
    assert calls == [["RX-a"]] * 13 and len(sleeps) == 12
    assert broker.published == [], "nothing dead-lettered"
    assert not [c for c in observer.calls if c[0] == "failed"]
    assert [line[1] for line in log.lines] == [
        "database unreachable; retrying until it answers",
        "database reachable again",
    ]


async def test_an_outage_longer_than_half_the_poll_interval_gives_the_batch_back_to_be_fetched_again(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    """Waiting out an outage inside one batch must not outlast `max_poll_interval_ms`, or the group
    evicts the member and every partition moves (a rebalance storm when all wait at once): past half
    of it the batch is rewound (an exception NACK_ON_ERROR acts on) and the next fetch waits on."""

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        raise ConnectionFailure("database gone")

    broker, observer, consume = subscribed(monkeypatch, handle_batch, settings(kafka_max_poll_interval_ms=20_000))
    with pytest.raises(kafka.OutageOutlastsPoll, match="unreachable for 7 s"):
        await consume(record(body("a"), offset=1))
    assert sleeps == [1.0, 2.0, 4.0], "7 s waited; the next 8 s would pass half of 20 s"
    assert broker.published == [] and not [c for c in observer.calls if c[0] == "failed"]
    assert [line[1] for line in log.lines] == [
        "database unreachable; retrying until it answers",
        "database still unreachable; the batch is fetched again",
    ]


async def test_an_error_that_is_not_an_outage_fails_the_records_at_once(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        raise OperationFailure("Document failed validation", code=121)

    broker, _, consume = subscribed(monkeypatch, handle_batch, settings(handler_max_attempts=2))
    await consume(record(body("a"), offset=1))
    assert [dlq(p)[0] for p in broker.published] == ["processing_failed"]


async def test_the_exponent_of_the_batch_backoff_stops_at_six(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    calls: list[int] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(len(records))
        if len(calls) <= 8:
            raise ConnectionFailure("database gone")
        return [Handled(r, Outcome.APPLIED) for r in records]

    _, _, consume = subscribed(monkeypatch, handle_batch, settings(handler_retry_backoff_s=0.01))
    await consume(record(body("a"), offset=1))
    assert sleeps == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 0.64, 0.64])


async def test_a_failed_record_retried_alone_also_waits_out_an_outage(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    calls: list[list[str]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(markers(records))
        if len(calls) == 1:
            return [Handled(r, Outcome.FAILED, error="flaky") for r in records]
        if len(calls) == 2:
            raise ConnectionFailure("gone")
        return [Handled(r, Outcome.APPLIED) for r in records]

    broker, _, consume = subscribed(monkeypatch, handle_batch)
    await consume(record(body("a"), offset=1))
    assert calls == [["RX-a"]] * 3 and broker.published == []
    assert sleeps == [0.5, 1.0]
    assert [line[1] for line in log.lines] == [
        "messages failed, retrying them",
        "database unreachable; retrying until it answers",
        "database reachable again",
    ]


async def test_a_batch_answered_at_once_logs_nothing(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], log: Log
) -> None:
    handle_batch, _ = answering(Outcome.APPLIED)
    _, _, consume = subscribed(monkeypatch, handle_batch)
    await consume(record(body("a"), offset=1))
    assert log.lines == [] and sleeps == []


# --- floors and lingering -----------------------------------------------------------------------------


def test_the_floor_is_the_offset_before_each_partitions_first_record() -> None:
    floors = kafka._floors(
        [
            record(b"", offset=12, partition=0),
            record(b"", offset=10, partition=0),
            record(b"", offset=11, partition=0),
            record(b"", offset=5, partition=1),
            record(b"", offset=0, partition=1, topic=OTHER.name),
        ]
    )
    assert floors == {(TOPIC.name, 0): 9, (TOPIC.name, 1): 4, (OTHER.name, 1): -1}
    assert kafka._floors([]) == {}


async def test_a_background_batch_consumer_never_sleeps_before_its_commit(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    """It gathers before handling (see the fetching tests below), so nothing holds its commit back."""
    handle_batch, _ = answering(Outcome.APPLIED)
    s = settings(background_wait_ms=750, background_max_batch_records=1500)
    broker, _, consume = subscribed(monkeypatch, handle_batch, s, background=True)
    assert broker.subscribed is not None
    options = broker.subscribed[1]
    assert (options["batch_timeout_ms"], options["fetch_max_wait_ms"], options["max_records"]) == (750, 750, 1500)
    await consume(record(body("a"), offset=1))
    await consume(record(b"garbage", offset=4))
    assert sleeps == []


# --- fetching -------------------------------------------------------------------------------------


class IdleConsumer:
    """An aiokafka consumer with nothing to fetch: each fetch waited its time and found nothing."""

    def __init__(self) -> None:
        self.fetches: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.fetches.append((timeout_ms, max_records))
        return {}


@pytest.mark.parametrize("background", [False, True], ids=["on the path", "background"])
async def test_no_consumer_sleeps_after_a_fetch_that_found_nothing(
    monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    """FastStream's batch subscriber sleeps `batch_timeout_ms` after an empty fetch: a record
    arriving then waits for it at every hop. Ours fetch again at once (the fetch itself waits, and
    ends when a record arrives); a background one waits longer in the fetch instead."""
    from faststream.kafka import KafkaBroker
    from faststream.kafka.subscriber import usecase

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(usecase.anyio, "sleep", sleep)
    broker = KafkaBroker("127.0.0.1:1")  # never connected: only its subscriber is used
    handle_batch, _ = answering(Outcome.APPLIED)
    s = settings(
        kafka_batch_wait_ms=300, background_wait_ms=900, kafka_max_batch_records=77, background_max_batch_records=990
    )
    kafka.subscribe(broker, s, topics=[TOPIC], group="g", title="t", handle_batch=handle_batch, background=background)
    (subscriber,) = broker.subscribers
    consumer = IdleConsumer()
    assert await subscriber.get_msg(consumer) == ()
    assert consumer.fetches == [(900, 990) if background else (300, 77)]
    assert slept == []


class ScriptedConsumer:
    """An aiokafka consumer whose fetches bring what the script says, each taking `fetch_s` of a
    clock the test owns."""

    def __init__(self, clock: list[float], fetch_s: float, *script: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.clock = clock
        self.fetch_s = fetch_s
        self.script = list(script)
        self.fetches: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.fetches.append((timeout_ms, max_records))
        self.clock[0] += self.fetch_s
        found = self.script.pop(0) if self.script else []
        by_partition: dict[Any, list[Any]] = {}
        for rec in found[:max_records]:
            by_partition.setdefault((rec.topic, rec.partition), []).append(rec)
        return by_partition


def background_subscriber(monkeypatch: pytest.MonkeyPatch, clock: list[float], **options: Any) -> Any:
    from faststream.kafka import KafkaBroker

    monkeypatch.setattr(kafka.time, "monotonic", lambda: clock[0])
    broker = KafkaBroker("127.0.0.1:1")  # never connected: only its subscriber is used
    handle_batch, _ = answering(Outcome.APPLIED)
    s = settings(**options)
    kafka.subscribe(broker, s, topics=[TOPIC], group="g", title="t", handle_batch=handle_batch, background=True)
    (subscriber,) = broker.subscribers
    return subscriber


async def test_a_background_consumer_gathers_one_batch_from_the_fetches_of_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The events of one prescription that come within the window are handled in one batch, so its
    document is written once; each partition's records keep their order."""
    clock = [100.0]
    subscriber = background_subscriber(monkeypatch, clock, background_wait_ms=1000, background_max_batch_records=50)
    first = [record(b"1", offset=10, partition=0), record(b"2", offset=20, partition=1)]
    second = [record(b"3", offset=11, partition=0)]
    late = [record(b"4", offset=12, partition=0)]
    # Fetches of 0.3 s: the first brings records at 100.3, so the window runs to 101.3.
    consumer = ScriptedConsumer(clock, 0.3, first, [], second, late)
    batch = await subscriber.get_msg(consumer)
    assert [(r.partition, r.offset) for r in batch] == [(0, 10), (1, 20), (0, 11), (0, 12)]
    assert [timeout for timeout, _ in consumer.fetches] == [1000, 1000, 700, 400, 100]
    # The next batch starts its own window: nothing more comes, so it ends after one fetch.
    assert await subscriber.get_msg(consumer) == ()


async def test_a_background_batch_ends_at_its_cap_without_waiting_out_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    subscriber = background_subscriber(monkeypatch, clock, background_wait_ms=5000, background_max_batch_records=3)
    records = [record(b"x", offset=n, partition=0) for n in range(5)]
    consumer = ScriptedConsumer(clock, 0.01, records[:2], records[2:])
    batch = await subscriber.get_msg(consumer)
    assert [r.offset for r in batch] == [0, 1, 2]
    assert [cap for _, cap in consumer.fetches] == [3, 1]
