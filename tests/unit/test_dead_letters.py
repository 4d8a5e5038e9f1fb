"""Nothing is dropped silently: the dead letters of the consumer path (`services.runtime.kafka`) with
a stand-in broker. Oversized, unreadable, contract-violating and refused records go to
`<topic>.dlq` with the reason and the original bytes and headers, before any unit of work sees
them; a dead letter that cannot be written fails the batch, so it is redelivered rather than lost.
What the unit of work's answer leads to (retries with backoff, then a dead letter; an unreachable
database waited out): test_batch_consumer.py.

The same path against the real broker: tests/integration/test_runtime.py, test_dlq_command.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pytest
from faststream import AckPolicy
from pydantic import BaseModel, ValidationError

from pharmacy_contracts.inventory import RestockRequested
from services.runtime import kafka
from services.runtime.errors import Refused
from services.runtime.unit_of_work import Handled, Outcome, Record
from tests.support import consumer
from tests.support.consumer import (
    OTHER,
    TOPIC,
    Broker,
    Log,
    Observability,
    Observer,
    answering,
    body,
    dlq,
    record,
    restock,
    settings,
    subscribed,
)

log = consumer.log
sleeps = consumer.sleeps
fresh_context = consumer.fresh_context


# --- the dead letter itself ----------------------------------------------------------------------------


async def test_a_dead_letter_carries_the_original_bytes_key_headers_and_the_reason(log: Log) -> None:
    broker, observer = Broker(), Observer()
    letters = kafka.DeadLetters(broker, "pharmacy.inventory", observer)  # type: ignore[arg-type]
    original = record(b"\xff not json", offset=41, partition=3, headers=[("trace", b"t-1"), ("bad", b"\xff")])
    await letters.send(original, TOPIC, reason="contract_violation", detail="x" * 2500, attempts=4)
    assert broker.published == [
        {
            "value": b"\xff not json",
            "topic": "inventory.commands.v1.dlq",
            "key": b"WH-1",
            "headers": {
                "trace": "t-1",
                "bad": "\ufffd",
                "dlq.reason": "contract_violation",
                "dlq.detail": "x" * 2000,
                "dlq.topic": "inventory.commands.v1",
                "dlq.partition": "3",
                "dlq.offset": "41",
                "dlq.group": "pharmacy.inventory",
                "dlq.attempts": "4",
            },
        }
    ]
    assert observer.calls == [("dead_lettered", "inventory.commands.v1", "contract_violation")]
    assert log.lines == [
        ("warning", "message dead-lettered", {"reason": "contract_violation", "detail": "x" * 300, "attempts": 4})
    ]


async def test_a_dead_letter_the_broker_refuses_fails_loudly_after_a_pause(sleeps: list[float], log: Log) -> None:
    broker, observer = Broker(), Observer()
    broker.failing = ConnectionError("broker down")
    letters = kafka.DeadLetters(broker, "g", observer)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await letters.send(record(b"{}"), TOPIC, reason="too_large", detail="d", attempts=1)
    assert sleeps == [1.0], "the broker is struggling: do not spin on it"
    assert observer.calls == [], "not counted as dead-lettered"
    assert log.lines == [
        (
            "warning",
            "dead letter refused whole; sending its headers alone",
            {"reason": "too_large", "error": "ConnectionError('broker down')"},
        ),
        ("exception", "could not dead-letter; the message will be redelivered", {"reason": "too_large"}),
    ]


def test_a_dead_letter_without_an_observer_records_into_a_disabled_one() -> None:
    letters = kafka.DeadLetters(Broker(), "g")  # type: ignore[arg-type]
    letters.observed.dead_lettered("t", "r")  # a real observer nobody reads


def test_headers_are_read_leniently() -> None:
    assert kafka._headers(record(b"", headers=[("a", b"1"), ("b", b"\xffx")])) == {"a": "1", "b": "\ufffdx"}
    assert kafka._headers(record(b"", headers=[])) == {}

    class NoHeaders:
        headers = None

    assert kafka._headers(NoHeaders()) == {}


def test_a_contract_violation_is_summed_up_field_by_field() -> None:
    class Shape(BaseModel):
        a: int
        b: dict[str, int]

    with pytest.raises(ValidationError) as caught:
        Shape.model_validate({"a": "x", "b": {"k": "y"}})
    assert kafka._brief(caught.value) == (
        "a: Input should be a valid integer, unable to parse string as an integer; "
        "b.k: Input should be a valid integer, unable to parse string as an integer"
    )
    with pytest.raises(ValidationError) as whole:
        Shape.model_validate_json(b"not json")
    assert kafka._brief(whole.value).startswith("<body>: Invalid JSON")

    class Many(BaseModel):
        values: list[int]

    with pytest.raises(ValidationError) as many:
        Many.model_validate({"values": ["x"] * 12})
    assert kafka._brief(many.value).count(";") == 9, "at most ten errors"


# --- registration --------------------------------------------------------------------------------------


def test_the_consumer_is_registered_at_least_once_with_the_runtime_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    handle_batch, _ = answering(Outcome.APPLIED)
    s = settings(
        kafka_max_batch_records=77,
        kafka_batch_wait_ms=11,
        kafka_fetch_max_wait_ms=33,
        background_wait_ms=900,
        kafka_max_partition_fetch_bytes=300_000,
        kafka_fetch_max_bytes=2_000_000,
        kafka_session_timeout_ms=45_000,
        kafka_heartbeat_interval_ms=5_000,
        kafka_max_poll_interval_ms=600_000,
    )
    broker, observability, _ = subscribed(monkeypatch, handle_batch, s, topics=[TOPIC, OTHER])
    assert broker.subscribed is not None
    names, options = broker.subscribed
    assert names == (TOPIC.name, OTHER.name)
    assert options == {
        "batch": True,
        "max_records": 77,
        "batch_timeout_ms": 11,
        "decoder": kafka._raw_body,
        "parser": kafka._tolerant_parser,
        "group_id": "pharmacy.inventory",
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 33,
        "max_partition_fetch_bytes": 300_000,
        "fetch_max_bytes": 2_000_000,
        "session_timeout_ms": 45_000,
        "heartbeat_interval_ms": 5_000,
        "max_poll_interval_ms": 600_000,
        "title": "Inventory commands",
        "description": f"{TOPIC.description} {OTHER.description}",
    }
    assert broker.specification == ("declared", [TOPIC, OTHER], "pharmacy.inventory")
    assert observability.groups == ["pharmacy.inventory"]
    assert broker.consume is not None and broker.consume.__name__ == "consume_whole_batch"


def test_without_observability_a_disabled_observer_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "ContractSpecification", lambda declared, topics_, group: None)
    broker = Broker()
    handle_batch, _ = answering(Outcome.APPLIED)
    kafka.subscribe(broker, settings(), topics=[TOPIC], group="g", handle_batch=handle_batch, title="t")  # type: ignore[arg-type]
    assert broker.consume is not None


# --- refused before any unit of work -------------------------------------------------------------------


async def _dead_letter_of(
    monkeypatch: pytest.MonkeyPatch, value: bytes | None, **options: Any
) -> tuple[list[Any], list[dict[str, Any]], Observability]:
    """Hands one record at offset 41 of partition 3 to a batch consumer; what its unit of work was
    given, what was published, and what was observed."""
    handled: list[Any] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        handled.extend(r.message for r in records)
        return [Handled(r, Outcome.APPLIED) for r in records]

    broker, observability, consume = subscribed(monkeypatch, handle_batch, options.pop("settings", None), **options)
    await consume(record(value, offset=41, partition=3, headers=[("trace", b"t-1")]))
    return handled, broker.published, observability


async def test_an_oversized_message_is_dead_lettered_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    gated: list[Any] = []
    handled, published, observability = await _dead_letter_of(
        monkeypatch, b"x" * 1025, gate=lambda body, headers: gated.append(body)
    )
    assert handled == [] and gated == []
    [letter] = published
    assert letter["value"] == b"x" * 1025 and letter["topic"] == TOPIC.dead_letter_topic
    assert dlq(letter) == ("too_large", "1025 bytes, at most 1024", "1")
    headers = letter["headers"]
    assert headers["dlq.group"] == "pharmacy.inventory" and headers["trace"] == "t-1"
    assert observability.observer.calls == [
        ("claim_task",),
        ("handling", 41),
        ("dead_lettered", TOPIC.name, "too_large"),
        ("handled_record", 41),
    ]


async def test_a_message_of_exactly_the_limit_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    message = restock("limit")
    raw = message.model_dump_json().encode()
    raw += b" " * (1024 - len(raw))  # JSON may end in blanks
    handled, published, _ = await _dead_letter_of(monkeypatch, raw)
    assert published == [] and handled == [message]


async def test_the_gate_sees_the_raw_bytes_and_headers_and_can_quarantine(monkeypatch: pytest.MonkeyPatch) -> None:
    gated: list[tuple[bytes, dict[str, str]]] = []

    def gate(body: bytes, headers: dict[str, str]) -> None:
        gated.append((body, headers))
        raise Refused("bad_signature", "the signature does not match")

    raw = restock().model_dump_json().encode()
    handled, published, _ = await _dead_letter_of(monkeypatch, raw, gate=gate)
    assert gated == [(raw, {"trace": "t-1"})] and handled == []
    assert dlq(published[0]) == ("bad_signature", "the signature does not match", "1")


async def test_a_gate_that_trips_over_hostile_bytes_refuses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    def gate(body: bytes, headers: dict[str, str]) -> None:
        raise IndexError("hostile")

    handled, published, _ = await _dead_letter_of(monkeypatch, b"{}", gate=gate)
    assert handled == [] and dlq(published[0]) == ("unreadable", "IndexError('hostile')", "1")


async def test_a_gate_that_passes_lets_the_message_through(monkeypatch: pytest.MonkeyPatch) -> None:
    handled, published, _ = await _dead_letter_of(
        monkeypatch, restock().model_dump_json().encode(), gate=lambda body, headers: None
    )
    assert published == [] and handled == [restock()]


@pytest.mark.parametrize(
    ("value", "detail_start"),
    [
        (b"\xff\xfe not json", "<body>: Invalid JSON"),
        (None, "<body>: Invalid JSON"),
        (json.dumps({"type": "inventory.restock_requested"}).encode(), ""),
    ],
    ids=["garbage", "no value", "fields missing"],
)
async def test_bytes_that_break_the_contract_are_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, value: bytes | None, detail_start: str
) -> None:
    handled, published, _ = await _dead_letter_of(monkeypatch, value)
    assert handled == []
    [letter] = published
    assert letter["value"] == value
    reason, detail, attempts = dlq(letter)
    assert reason == "contract_violation" and attempts == "1"
    assert detail.startswith(detail_start) and ": " in detail


async def test_a_decoder_replaces_the_contract_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[bytes, dict[str, str], Any]] = []

    def decode(body: bytes, headers: dict[str, str], topic: Any) -> Any:
        decoded.append((body, headers, topic))
        return restock("decoded")

    handled, published, _ = await _dead_letter_of(monkeypatch, b"<xml/>", decode=decode)
    assert decoded == [(b"<xml/>", {"trace": "t-1"}, TOPIC)]
    assert handled == [restock("decoded")] and published == []


@pytest.mark.parametrize(
    ("raised", "reason", "detail"),
    [
        (Refused("fhir_unmappable", "no medication"), "fhir_unmappable", "no medication"),
        (ValueError("odd"), "contract_violation", "ValueError('odd')"),
    ],
)
async def test_a_decoder_refusal_or_failure_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, raised: Exception, reason: str, detail: str
) -> None:
    def decode(body: bytes, headers: dict[str, str], topic: Any) -> Any:
        raise raised

    handled, published, _ = await _dead_letter_of(monkeypatch, b"{}", decode=decode)
    assert handled == [] and dlq(published[0]) == (reason, detail, "1")


async def test_a_decoder_validation_error_is_summed_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def decode(body: bytes, headers: dict[str, str], topic: Any) -> Any:
        return RestockRequested.model_validate({"type": "inventory.restock_requested"})

    _, published, _ = await _dead_letter_of(monkeypatch, b"{}", decode=decode)
    reason, detail, _ = dlq(published[0])
    assert reason == "contract_violation" and "Field required" in detail
    assert "ValidationError" not in detail


async def test_a_record_without_a_value_reaches_the_gate_as_empty_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    gated: list[bytes] = []
    _, published, _ = await _dead_letter_of(monkeypatch, None, gate=lambda body, headers: gated.append(body))
    assert gated == [b""] and published[0]["value"] is None


# --- a dead letter that cannot be written ---------------------------------------------------------------


async def test_a_dead_letter_that_cannot_be_written_fails_the_batch_before_its_unit_of_work(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    """NACK_ON_ERROR rewinds to the batch's first records: nothing of it is committed, and the
    unit of work, which would have saved the records behind the lost dead letter, never ran."""
    handle_batch, calls = answering(Outcome.APPLIED)
    broker, observability, consume = subscribed(monkeypatch, handle_batch)
    broker.failing = ConnectionError("broker down")
    with pytest.raises(ConnectionError):
        await consume(record(b"garbage", offset=1, key=b"k1"), record(body("ok"), offset=2, key=b"k2"))
    assert calls == [] and broker.published == []
    assert ("handled", TOPIC.name) not in observability.observer.calls
    assert sleeps == [1.0], "the broker is struggling: do not spin on it"


async def test_a_refusal_whose_dead_letter_cannot_be_written_fails_the_batch(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        return [Handled(r, Outcome.REFUSED, refusal=Refused("not_yours", "no")) for r in records]

    broker, observability, consume = subscribed(monkeypatch, handle_batch)
    broker.failing = ConnectionError("broker down")
    with pytest.raises(ConnectionError):
        await consume(record(body("a"), offset=1))
    assert ("dead_lettered", TOPIC.name, "not_yours") not in observability.observer.calls


# --- the tolerant parser --------------------------------------------------------------------------------


async def test_a_readable_batch_is_parsed_as_it_is() -> None:
    records = (record(b"{}"),)
    parsed: list[Any] = []

    async def parser(given: Any) -> Any:
        parsed.append(given)
        return "message"

    assert await kafka._tolerant_parser(records, parser) == "message"
    assert parsed == [records]


@pytest.mark.parametrize("failure", [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), AttributeError("None")])
async def test_a_batch_with_an_unreadable_header_is_parsed_from_readable_copies(failure: Exception) -> None:
    hostile = record(b"{}", headers=[("bad", b"\xffok"), ("none", None)])  # type: ignore[list-item]
    records = (hostile, record(b"[]", offset=8))
    given: list[Any] = []

    class Message:
        raw_message: Any = None

    async def parser(batch: Any) -> Any:
        given.append(batch)
        if len(given) == 1:
            raise failure
        return Message()

    message = await kafka._tolerant_parser(records, parser)
    copies = given[1]
    assert copies[0].headers == [("bad", "\ufffdok".encode()), ("none", b"")]
    assert copies[0].value == b"{}" and copies[1].offset == 8 and copies[1].headers == [("trace", b"t-1")]
    assert message.raw_message is records, "the handlers keep the original records"


async def test_other_parser_failures_are_not_hidden() -> None:
    async def parser(batch: Any) -> Any:
        raise KeyError("other")

    with pytest.raises(KeyError):
        await kafka._tolerant_parser((record(b"{}"),), parser)


async def test_the_raw_body_is_handed_over_undecoded() -> None:
    class Message:
        body = b"\xff raw"

    assert await kafka._raw_body(Message()) == b"\xff raw"


# --- dead letters that always fit ----------------------------------------------------------------------


async def test_a_letter_too_large_to_send_whole_keeps_a_preview_its_size_and_hash_and_its_headers() -> None:
    broker, observer = Broker(), Observer()
    letters = kafka.DeadLetters(broker, "g", observer, max_request_bytes=200_000)  # type: ignore[arg-type]
    body = b"x" * 190_000  # fits the topic's own limit of a larger broker, not a letter with its headers
    await letters.send(record(body, headers=[("trace", b"t-1")]), TOPIC, reason="too_large", detail="d", attempts=1)
    (sent,) = broker.published
    assert sent["value"] == body[: kafka.DEAD_LETTER_PREVIEW_BYTES]
    headers = sent["headers"]
    assert headers["trace"] == "t-1", "the original headers, when they fit"
    assert (headers["dlq.original-bytes"], headers["dlq.original-sha256"]) == (
        "190000",
        hashlib.sha256(body).hexdigest(),
    )
    assert headers["dlq.truncated"] == "true" and headers["dlq.reason"] == "too_large"
    assert observer.calls == [("dead_lettered", TOPIC.name, "too_large")]


async def test_a_letter_whose_original_headers_do_not_fit_drops_them_and_says_so() -> None:
    broker = Broker()
    letters = kafka.DeadLetters(broker, "g", max_request_bytes=200_000)  # type: ignore[arg-type]
    hostile = [(f"h{i}", b"y" * 10_000) for i in range(20)]
    await letters.send(record(b"{}", headers=hostile), TOPIC, reason="contract_violation", detail="d", attempts=1)
    (sent,) = broker.published
    assert not any(name.startswith("h") for name in sent["headers"])
    assert sent["headers"]["dlq.headers"] == "20 original headers dropped: too large"
    assert sent["headers"]["dlq.topic"] == TOPIC.name and sent["value"] == b"{}"


async def test_a_letter_the_broker_refuses_whole_is_sent_again_as_its_headers_alone(log: Log) -> None:
    class RefusesBodies(Broker):
        async def publish(self, value: bytes | None, **fields: Any) -> None:
            if value:
                raise ValueError("MessageSizeTooLargeError")
            await super().publish(value, **fields)

    broker, observer = RefusesBodies(), Observer()
    letters = kafka.DeadLetters(broker, "g", observer)  # type: ignore[arg-type]
    await letters.send(record(b"{}", offset=41), TOPIC, reason="contract_violation", detail="d", attempts=2)
    (sent,) = broker.published
    assert sent["value"] == b""
    headers = sent["headers"]
    assert (headers["dlq.offset"], headers["dlq.attempts"], headers["dlq.original-bytes"]) == ("41", "2", "2")
    assert headers["dlq.headers"] == "dropped: the letter was refused whole" and "trace" not in headers
    assert observer.calls == [("dead_lettered", TOPIC.name, "contract_violation")], "the partition moves on"
