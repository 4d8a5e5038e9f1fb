"""Nothing is dropped silently: the consumer path of the runtime (`services.runtime.kafka`) with a
stand-in broker, record by record. Oversized, unreadable, contract-violating and refused messages
go to `<topic>.dlq` with the reason and the original bytes and headers; failing handlers are
retried with backoff, then dead-lettered; an unreachable database is retried without limit; a
dead letter that cannot be written fails the batch, so it is redelivered rather than lost.

The same path against the real broker: tests/integration/test_runtime.py, test_dlq_command.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import date
from typing import Any

import pytest
import structlog
import structlog.testing
from aiokafka.structs import ConsumerRecord
from faststream import AckPolicy
from pydantic import BaseModel, ValidationError
from pymongo.errors import AutoReconnect

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import RestockRequested
from services.runtime import kafka
from services.runtime.errors import Refused
from services.runtime.settings import RuntimeSettings
from services.runtime.tracking import Position, current_position

TOPIC = topics.INVENTORY_COMMANDS
OTHER = topics.INVENTORY_EVENTS
REAL_SLEEP = asyncio.sleep  # the `sleeps` fixture replaces asyncio.sleep for the runtime's backoff


@functools.cache
def restock(marker: str = "1") -> RestockRequested:
    """One message per marker (its message id included), so a parsed copy equals it."""
    return RestockRequested(
        correlation_id=f"RX-{marker}",
        producer="test",
        warehouse_id=f"WH-{marker}",
        drug_code="D",
        lot_id="L1",
        expiry_date=date(2030, 1, 1),
        quantity=1,
        requested_by="test",
    )


def record(
    value: bytes | None,
    *,
    offset: int = 7,
    partition: int = 2,
    key: bytes | None = b"WH-1",
    headers: list[tuple[str, bytes]] | None = None,
    topic: str = TOPIC.name,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers if headers is not None else [("trace", b"t-1")],
    )


class Observer:
    """Records what the runtime reports about each record (the real one counts metrics)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def handled(self, topic: str) -> None:
        self.calls.append(("handled", topic))

    def failed(self, topic: str, error: BaseException) -> None:
        self.calls.append(("failed", topic, type(error).__name__))

    def dead_lettered(self, topic: str, reason: str) -> None:
        self.calls.append(("dead_lettered", topic, reason))

    @contextlib.contextmanager
    def handling(self, rec: ConsumerRecord[Any, Any]) -> Iterator[None]:
        self.calls.append(("handling", rec.offset))
        yield


class Observability:
    def __init__(self) -> None:
        self.observer = Observer()
        self.groups: list[str] = []

    def consumer(self, group: str) -> Observer:
        self.groups.append(group)
        return self.observer


class Broker:
    """Stands in for the KafkaBroker: keeps what is published and the consumer registered."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.failing: Exception | None = None
        self.subscribed: tuple[tuple[str, ...], dict[str, Any]] | None = None
        self.consume: Callable[[Any], Awaitable[None]] | None = None
        self.specification: Any = None

    async def publish(self, value: bytes | None, *, topic: str, key: bytes | None, headers: dict[str, str]) -> None:
        if self.failing is not None:
            raise self.failing
        self.published.append({"value": value, "topic": topic, "key": key, "headers": headers})

    def subscriber(self, *names: str, **options: Any) -> Any:
        self.subscribed = (names, options)
        broker = self

        class Subscriber:
            specification = "declared"

            def __call__(self, consume: Callable[[Any], Awaitable[None]]) -> None:
                broker.consume = consume

            def __setattr__(self, name: str, value: Any) -> None:
                if name == "specification":
                    broker.specification = value

        return Subscriber()


class Batch:
    def __init__(self, *records: ConsumerRecord[bytes, bytes]) -> None:
        self.raw_message = records


class Log:
    """Stands in for the runtime's logger: the lines it would write, unrendered."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def exception(self, event: str, **fields: Any) -> None:
        self.lines.append(("exception", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    recorded = Log()
    monkeypatch.setattr(kafka, "log", recorded)
    return recorded


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays the runtime asked for, without waiting them."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> None:
        asked.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(kafka.asyncio, "sleep", sleep)
    return asked


@pytest.fixture(autouse=True)
def fresh_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    with structlog.testing.capture_logs():  # kept, not rendered: tracebacks are slow to render
        yield
    structlog.contextvars.clear_contextvars()
    current_position.set(None)


def settings(**overrides: Any) -> RuntimeSettings:
    return RuntimeSettings(
        **{"handler_max_attempts": 3, "handler_retry_backoff_s": 0.5, "max_message_bytes": 1024, **overrides}
    )


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
        ("exception", "could not dead-letter; the message will be redelivered", {"reason": "too_large"})
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


# --- retries -------------------------------------------------------------------------------------------


async def _retry(
    handle: Callable[[Any], Awaitable[None]], settings_: RuntimeSettings, broker: Broker, observer: Observer
) -> None:
    letters = kafka.DeadLetters(broker, "g", observer)  # type: ignore[arg-type]
    await kafka._handle_with_retries(restock(), record(b"{}"), TOPIC, handle, letters, settings_)


async def test_a_handled_message_is_counted_once(sleeps: list[float]) -> None:
    broker, observer, seen = Broker(), Observer(), []

    async def handle(message: Any) -> None:
        seen.append(message)

    await _retry(handle, settings(), broker, observer)
    assert seen == [restock()] and broker.published == [] and sleeps == []
    assert observer.calls == [("handled", TOPIC.name)]


async def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered(sleeps: list[float], log: Log) -> None:
    broker, observer, calls = Broker(), Observer(), []

    async def handle(message: Any) -> None:
        calls.append(message)
        raise ValueError("still broken")

    await _retry(handle, settings(handler_max_attempts=4), broker, observer)
    assert len(calls) == 4
    assert sleeps == [0.5, 1.0, 2.0], "doubling from the backoff, none after the last attempt"
    [letter] = broker.published
    assert letter["headers"]["dlq.reason"] == "processing_failed"
    assert letter["headers"]["dlq.detail"] == "ValueError('still broken')"
    assert letter["headers"]["dlq.attempts"] == "4"
    assert observer.calls == [("failed", TOPIC.name, "ValueError")] * 4 + [
        ("dead_lettered", TOPIC.name, "processing_failed")
    ]
    error = "ValueError('still broken')"
    assert log.lines[:4] == [
        ("warning", "handler failed, retrying", {"error": error, "attempt": 1, "delay_s": 0.5}),
        ("warning", "handler failed, retrying", {"error": error, "attempt": 2, "delay_s": 1.0}),
        ("warning", "handler failed, retrying", {"error": error, "attempt": 3, "delay_s": 2.0}),
        ("exception", "handler kept failing", {}),
    ]


async def test_a_handler_that_recovers_is_not_dead_lettered(sleeps: list[float]) -> None:
    broker, observer, calls = Broker(), Observer(), []

    async def handle(message: Any) -> None:
        calls.append(message)
        if len(calls) < 3:
            raise ValueError("flaky")

    await _retry(handle, settings(handler_max_attempts=3), broker, observer)
    assert len(calls) == 3 and broker.published == [] and sleeps == [0.5, 1.0]
    assert observer.calls[-1] == ("handled", TOPIC.name)


async def test_one_attempt_allowed_means_no_retry(sleeps: list[float]) -> None:
    broker, observer = Broker(), Observer()

    async def handle(message: Any) -> None:
        raise ValueError("broken")

    await _retry(handle, settings(handler_max_attempts=1), broker, observer)
    assert sleeps == [] and broker.published[0]["headers"]["dlq.attempts"] == "1"


async def test_an_unreachable_database_is_retried_without_limit(sleeps: list[float], log: Log) -> None:
    broker, observer, calls = Broker(), Observer(), []

    async def handle(message: Any) -> None:
        calls.append(message)
        if len(calls) <= 9:
            raise AutoReconnect("database gone")

    await _retry(handle, settings(handler_max_attempts=2, handler_retry_backoff_s=0.25), broker, observer)
    assert len(calls) == 10 and broker.published == []
    # backoff x 2^attempt, the exponent capped at 6, the delay at 10 s
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert observer.calls.count(("failed", TOPIC.name, "AutoReconnect")) == 9
    assert log.lines[0] == (
        "warning",
        "database unreachable, retrying",
        {"error": "database gone", "attempt": 1, "delay_s": 0.5},
    )
    assert [fields["attempt"] for _, _, fields in log.lines] == list(range(1, 10))
    assert observer.calls[-1] == ("handled", TOPIC.name)


async def test_the_exponent_of_the_database_backoff_stops_at_six(sleeps: list[float]) -> None:
    calls: list[Any] = []

    async def handle(message: Any) -> None:
        calls.append(message)
        if len(calls) <= 8:
            raise AutoReconnect("database gone")

    await _retry(handle, settings(handler_retry_backoff_s=0.01), Broker(), Observer())
    assert sleeps == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 0.64, 0.64])


async def test_a_refusal_is_dead_lettered_at_once_with_its_code(sleeps: list[float]) -> None:
    broker, observer, calls = Broker(), Observer(), []

    async def handle(message: Any) -> None:
        calls.append(message)
        if len(calls) == 1:
            raise ValueError("first a failure")
        raise Refused("not_your_dispatch", "dispatch D-1 is another courier's")

    await _retry(handle, settings(), broker, observer)
    assert len(calls) == 2 and sleeps == [0.5]
    headers = broker.published[0]["headers"]
    assert (headers["dlq.reason"], headers["dlq.detail"], headers["dlq.attempts"]) == (
        "not_your_dispatch",
        "dispatch D-1 is another courier's",
        "2",
    )
    assert ("handled", TOPIC.name) not in observer.calls


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


# --- the subscriber, record by record -----------------------------------------------------------------


def subscribed(
    monkeypatch: pytest.MonkeyPatch,
    handle: Callable[[Any], Awaitable[None]] | None,
    settings_: RuntimeSettings | None = None,
    *,
    observability: Any = None,
    **options: Any,
) -> tuple[Broker, Any, Callable[..., Awaitable[None]]]:
    """The subscriber on the stand-in broker (with `handle`, or with `handle_batch=` in `options`),
    its observability, and a function that hands it a batch of records."""
    monkeypatch.setattr(kafka, "ContractSpecification", lambda declared, topics_, group: (declared, topics_, group))
    broker = Broker()
    observability = observability if observability is not None else Observability()
    kafka.subscribe(
        broker,  # type: ignore[arg-type]
        settings_ or settings(),
        topics=options.pop("topics", [TOPIC]),
        group="inventory",
        handle=handle,
        title="Inventory commands",
        observability=observability,
        **options,
    )
    assert broker.consume is not None

    async def consume(*records: ConsumerRecord[bytes, bytes]) -> None:
        assert broker.consume is not None
        await broker.consume(Batch(*records))

    return broker, observability, consume


def test_the_consumer_is_registered_at_least_once_with_the_runtime_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handle(message: Any) -> None: ...

    s = settings(kafka_max_batch_records=77, kafka_batch_wait_ms=11, kafka_fetch_max_wait_ms=33, background_wait_ms=900)
    broker, observability, _ = subscribed(monkeypatch, handle, s, topics=[TOPIC, OTHER])
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
        "title": "Inventory commands",
        "description": f"{TOPIC.description} {OTHER.description}",
    }
    assert broker.specification == ("declared", [TOPIC, OTHER], "pharmacy.inventory")
    assert observability.groups == ["pharmacy.inventory"]


def test_a_background_consumer_waits_longer_at_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handle(message: Any) -> None: ...

    s = settings(kafka_batch_wait_ms=11, kafka_fetch_max_wait_ms=33, background_wait_ms=900)
    broker, _, _ = subscribed(monkeypatch, handle, s, background=True)
    assert broker.subscribed is not None
    options = broker.subscribed[1]
    assert (options["batch_timeout_ms"], options["fetch_max_wait_ms"]) == (900, 900)


def test_without_observability_a_disabled_observer_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "ContractSpecification", lambda declared, topics_, group: None)
    broker = Broker()

    async def handle(message: Any) -> None: ...

    kafka.subscribe(broker, settings(), topics=[TOPIC], group="g", handle=handle, title="t")  # type: ignore[arg-type]
    assert broker.consume is not None


async def test_a_valid_message_is_handled_with_its_position_and_log_context(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    seen: list[tuple[Any, Position | None, dict[str, Any]]] = []

    async def handle(message: Any) -> None:
        seen.append((message, current_position.get(), structlog.contextvars.get_contextvars()))

    message = restock()
    broker, observability, consume = subscribed(monkeypatch, handle)
    await consume(record(message.model_dump_json().encode(), offset=41, partition=3))
    [(parsed, position, context)] = seen
    assert parsed == message
    assert position == Position(TOPIC.name, 3, 41, 40)
    assert context == {
        "topic": TOPIC.name,
        "partition": 3,
        "offset": 41,
        "correlation_id": message.correlation_id,
        "message_id": message.message_id,
        "message_type": message.type,
    }
    assert broker.published == [] and sleeps == []
    assert observability.observer.calls == [("handling", 41), ("handled", TOPIC.name)]


async def test_the_floor_is_the_offset_before_the_partitions_first_record_in_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Position | None] = {}

    async def handle(message: Any) -> None:
        seen[message.correlation_id] = current_position.get()

    _, _, consume = subscribed(monkeypatch, handle)
    body = {m: restock(m).model_dump_json().encode() for m in "abcd"}
    await consume(
        record(body["a"], offset=12, partition=0, key=b"k1"),
        record(body["b"], offset=10, partition=0, key=b"k2"),
        record(body["c"], offset=11, partition=0, key=b"k1"),
        record(body["d"], offset=5, partition=1, key=b"k1"),
    )
    assert {m: (p.offset, p.floor) for m, p in seen.items() if p} == {
        "RX-a": (12, 9),
        "RX-b": (10, 9),
        "RX-c": (11, 9),
        "RX-d": (5, 4),
    }


async def test_records_of_one_key_are_handled_in_order_and_other_keys_alongside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    gate = asyncio.Event()

    async def handle(message: Any) -> None:
        events.append(f"start {message.correlation_id}")
        if message.correlation_id == "RX-a":
            await gate.wait()  # the other key goes on meanwhile; this key's next record waits
        if message.correlation_id == "RX-z":
            gate.set()
        events.append(f"end {message.correlation_id}")

    _, _, consume = subscribed(monkeypatch, handle)
    body = {m: restock(m).model_dump_json().encode() for m in "abz"}
    await asyncio.wait_for(
        consume(
            record(body["a"], offset=1, key=b"k1"),
            record(body["b"], offset=2, key=b"k1"),
            record(body["z"], offset=3, key=b"k2"),
        ),
        5,
    )
    assert events.index("end RX-a") < events.index("start RX-b")
    assert events.index("start RX-z") < events.index("end RX-a")


async def test_records_without_a_key_are_handled_in_order_per_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    gate = asyncio.Event()

    async def handle(message: Any) -> None:
        events.append(f"start {message.correlation_id}")
        if message.correlation_id == "RX-a":
            await gate.wait()
        if message.correlation_id == "RX-z":
            gate.set()
        events.append(f"end {message.correlation_id}")

    _, _, consume = subscribed(monkeypatch, handle)
    body = {m: restock(m).model_dump_json().encode() for m in "abz"}
    await asyncio.wait_for(
        consume(
            record(body["a"], offset=1, partition=0, key=None),
            record(body["b"], offset=2, partition=0, key=None),
            record(body["z"], offset=3, partition=1, key=None),
        ),
        5,
    )
    assert events.index("end RX-a") < events.index("start RX-b")
    assert events.index("start RX-z") < events.index("end RX-a")


async def _dead_letter_of(
    monkeypatch: pytest.MonkeyPatch, value: bytes | None, **options: Any
) -> tuple[list[Any], list[dict[str, Any]], Observability]:
    handled: list[Any] = []

    async def handle(message: Any) -> None:
        handled.append(message)

    broker, observability, consume = subscribed(monkeypatch, handle, options.pop("settings", None), **options)
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
    headers = letter["headers"]
    assert (headers["dlq.reason"], headers["dlq.detail"], headers["dlq.attempts"]) == (
        "too_large",
        "1025 bytes, at most 1024",
        "1",
    )
    assert headers["dlq.group"] == "pharmacy.inventory" and headers["trace"] == "t-1"
    assert observability.observer.calls == [("handling", 41), ("dead_lettered", TOPIC.name, "too_large")]


async def test_a_message_of_exactly_the_limit_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    message = restock("limit")
    body = message.model_dump_json().encode()
    body += b" " * (1024 - len(body))  # JSON may end in blanks
    handled, published, _ = await _dead_letter_of(monkeypatch, body)
    assert published == [] and handled == [message]


async def test_the_gate_sees_the_raw_bytes_and_headers_and_can_quarantine(monkeypatch: pytest.MonkeyPatch) -> None:
    gated: list[tuple[bytes, dict[str, str]]] = []

    def gate(body: bytes, headers: dict[str, str]) -> None:
        gated.append((body, headers))
        raise Refused("bad_signature", "the signature does not match")

    body = restock().model_dump_json().encode()
    handled, published, _ = await _dead_letter_of(monkeypatch, body, gate=gate)
    assert gated == [(body, {"trace": "t-1"})] and handled == []
    headers = published[0]["headers"]
    assert (headers["dlq.reason"], headers["dlq.detail"], headers["dlq.attempts"]) == (
        "bad_signature",
        "the signature does not match",
        "1",
    )


async def test_a_gate_that_trips_over_hostile_bytes_refuses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    def gate(body: bytes, headers: dict[str, str]) -> None:
        raise IndexError("hostile")

    handled, published, _ = await _dead_letter_of(monkeypatch, b"{}", gate=gate)
    headers = published[0]["headers"]
    assert handled == [] and (headers["dlq.reason"], headers["dlq.detail"]) == ("unreadable", "IndexError('hostile')")
    assert headers["dlq.attempts"] == "1"


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
    headers = letter["headers"]
    assert headers["dlq.reason"] == "contract_violation" and headers["dlq.attempts"] == "1"
    assert headers["dlq.detail"].startswith(detail_start) and ": " in headers["dlq.detail"]


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
    headers = published[0]["headers"]
    assert handled == [] and (headers["dlq.reason"], headers["dlq.detail"], headers["dlq.attempts"]) == (
        reason,
        detail,
        "1",
    )


async def test_a_decoder_validation_error_is_summed_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def decode(body: bytes, headers: dict[str, str], topic: Any) -> Any:
        return RestockRequested.model_validate({"type": "inventory.restock_requested"})

    _, published, _ = await _dead_letter_of(monkeypatch, b"{}", decode=decode)
    headers = published[0]["headers"]
    assert headers["dlq.reason"] == "contract_violation" and "Field required" in headers["dlq.detail"]
    assert "ValidationError" not in headers["dlq.detail"]


async def test_a_handler_refusal_from_the_subscriber_is_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handle(message: Any) -> None:
        raise Refused("not_yours", "no")

    broker, _, consume = subscribed(monkeypatch, handle)
    await consume(record(restock().model_dump_json().encode()))
    assert broker.published[0]["headers"]["dlq.reason"] == "not_yours"


async def test_a_record_without_a_value_reaches_the_gate_as_empty_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    gated: list[bytes] = []
    _, published, _ = await _dead_letter_of(monkeypatch, None, gate=lambda body, headers: gated.append(body))
    assert gated == [b""] and published[0]["value"] is None


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_the_configured_attempts(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    calls: list[Any] = []

    async def handle(message: Any) -> None:
        calls.append(message)
        raise ValueError("broken")

    broker, observability, consume = subscribed(monkeypatch, handle, settings(handler_max_attempts=2))
    await consume(record(restock().model_dump_json().encode()))
    assert len(calls) == 2 and sleeps == [0.5]
    assert broker.published[0]["headers"]["dlq.attempts"] == "2"
    assert ("dead_lettered", TOPIC.name, "processing_failed") in observability.observer.calls


async def test_a_failed_batch_fails_only_once_every_record_of_it_was_dealt_with(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    handled: list[Any] = []

    async def handle(message: Any) -> None:
        await REAL_SLEEP(0.05)  # slower than the failing dead letter
        handled.append(message)

    broker, _, consume = subscribed(monkeypatch, handle)
    broker.failing = ConnectionError("broker down")
    with pytest.raises(ConnectionError):
        await consume(
            record(b"garbage", offset=1, key=b"k1"),
            record(restock("ok").model_dump_json().encode(), offset=2, key=b"k2"),
        )
    assert handled == [restock("ok")], "the commit waits for the whole batch, failed or not"


async def test_a_dead_letter_that_cannot_be_written_fails_the_batch(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    handled: list[Any] = []

    async def handle(message: Any) -> None:
        handled.append(message)

    broker, _, consume = subscribed(monkeypatch, handle)
    broker.failing = ConnectionError("broker down")
    with pytest.raises(ConnectionError):
        await consume(
            record(b"garbage", offset=1, key=b"k1"),
            record(restock("ok").model_dump_json().encode(), offset=2, key=b"k2"),
        )
    assert handled == [restock("ok")], "the rest of the batch was still handled"


async def test_a_background_consumer_lingers_after_a_batch_that_was_not_full(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    async def handle(message: Any) -> None: ...

    s = settings(background_wait_ms=750, kafka_max_batch_records=2)
    body = restock().model_dump_json().encode()
    _, _, consume = subscribed(monkeypatch, handle, s, background=True)
    await consume(record(body, offset=1))
    assert sleeps == [0.75]
    await consume(record(body, offset=2), record(body, offset=3))
    assert sleeps == [0.75], "a full batch: the next one at once"

    _, _, foreground = subscribed(monkeypatch, handle, s)
    await foreground(record(body, offset=4))
    assert sleeps == [0.75], "only background consumers linger"
