"""Stand-ins for the consumer path of `services.runtime.kafka`: a broker that keeps what is
published and the consumer registered, records, a logger that keeps its lines unrendered, the
backoff recorder, and `subscribed`, which registers a batch consumer on them.

Used by tests/unit/test_dead_letters.py and test_batch_consumer.py; a test module takes the
fixtures by naming them at module level (`log = consumer.log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import date
from typing import Any

import pytest
import structlog
import structlog.testing
from aiokafka.structs import ConsumerRecord

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import RestockRequested
from services.runtime import kafka
from services.runtime.settings import RuntimeSettings
from services.runtime.tracking import current_position
from services.runtime.unit_of_work import Handled, Outcome, Record
from tests.support.stand_ins import Log

TOPIC = topics.INVENTORY_COMMANDS
OTHER = topics.INVENTORY_EVENTS

BatchHandler = Callable[[Sequence[Record[Any]]], Awaitable[Sequence[Handled[Any]]]]


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


def body(marker: str) -> bytes:
    return restock(marker).model_dump_json().encode()


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
    """What the runtime reports, with the failures' messages (the real one counts metrics)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def claim_task(self) -> None:
        self.calls.append(("claim_task",))

    def handled(self, topic: str) -> None:
        self.calls.append(("handled", topic))

    def failed(self, topic: str, error: BaseException) -> None:
        self.calls.append(("failed", topic, type(error).__name__, str(error)))

    def dead_lettered(self, topic: str, reason: str) -> None:
        self.calls.append(("dead_lettered", topic, reason))

    def skipped(self, rec: ConsumerRecord[Any, Any], message_type: str) -> None:
        self.calls.append(("skipped", rec.topic, rec.offset, message_type))

    @contextlib.contextmanager
    def handling(self, rec: ConsumerRecord[Any, Any]) -> Iterator[None]:
        self.calls.append(("handling", rec.offset))
        yield
        self.calls.append(("handled_record", rec.offset))


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


def answering(outcome: Outcome, **fields: Any) -> tuple[BatchHandler, list[list[Record[Any]]]]:
    """A batch handler that answers `outcome` for every record, and the batches it was given."""
    calls: list[list[Record[Any]]] = []

    async def handle_batch(records: Sequence[Record[Any]]) -> list[Handled[Any]]:
        calls.append(list(records))
        return [Handled(r, outcome, **fields) for r in records]

    return handle_batch, calls


def subscribed(
    monkeypatch: pytest.MonkeyPatch,
    handle_batch: BatchHandler,
    settings_: RuntimeSettings | None = None,
    **options: Any,
) -> tuple[Broker, Observability, Callable[..., Awaitable[None]]]:
    """The batch consumer on the stand-in broker, its observability, and a function that hands it
    a batch of records."""
    monkeypatch.setattr(kafka, "ContractSpecification", lambda declared, topics_, group: (declared, topics_, group))
    broker = Broker()
    observability: Any = Observability()
    kafka.subscribe(
        broker,  # type: ignore[arg-type]
        settings_ or settings(),
        topics=options.pop("topics", [TOPIC]),
        group="inventory",
        handle_batch=handle_batch,
        title="Inventory commands",
        observability=observability,
        **options,
    )
    assert broker.consume is not None

    async def consume(*records: ConsumerRecord[bytes, bytes]) -> None:
        assert broker.consume is not None
        await broker.consume(Batch(*records))

    return broker, observability, consume


def dlq(published: dict[str, Any]) -> tuple[str, str, str]:
    headers = published["headers"]
    return headers["dlq.reason"], headers["dlq.detail"], headers["dlq.attempts"]
