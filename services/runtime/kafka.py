"""Kafka wiring: the broker, the at-least-once subscriber with dead letters, topic creation."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from itertools import chain
from typing import Any

import structlog
from aiokafka.structs import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.specification import KafkaSubscriberSpecification
from faststream.specification.asyncapi.utils import resolve_payloads
from faststream.specification.schema import SubscriberSpec
from pydantic import ValidationError

from pharmacy_contracts import Envelope
from pharmacy_contracts.topics import Topic

from .errors import Refused
from .mongo import is_outage
from .observability import ConsumerObserver, Observability, current_message_type
from .security import faststream_security
from .settings import RuntimeSettings
from .topic_ids import TopicIncarnations
from .tracking import Position, current_position
from .unit_of_work import Handled, Outcome, Record

log = structlog.get_logger()
#: aiokafka's and Apache Kafka's default largest request (1 MiB); `kafka_max_request_bytes` sets it.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
#: Room a produce request needs beside its one record's body and headers (batch and record framing).
REQUEST_OVERHEAD_BYTES = 16 * 1024
#: What a dead letter keeps of a body too large to keep whole: enough for a person to see what it was.
DEAD_LETTER_PREVIEW_BYTES = 64 * 1024

#: Takes a batch's admitted records in arrival order and says what became of each (see `unit_of_work`).
BatchHandler = Callable[[Sequence[Record[Any]]], Awaitable[Sequence[Handled[Any]]]]
#: Turns a record's raw bytes and headers into a contract message instead of `Topic.parse` (e.g.
#: another wire format on the same topic, told apart by its content type); raises Refused or a
#: ValidationError to dead-letter the record with that reason.
Decode = Callable[[bytes, dict[str, str], Topic], Envelope]
#: Checks a record's raw bytes and headers before it is parsed; raises Refused to quarantine it.
Gate = Callable[[bytes, dict[str, str]], None]
#: Told of every record a consumer dead-lettered, with the reason and the sentence (to answer its sender).
DeadLetterHook = Callable[[ConsumerRecord, str, str], Awaitable[None]]


class ConcurrentStartBroker(KafkaBroker):
    """A KafkaBroker that starts its subscribers together rather than one after another.

    Joining a consumer group takes seconds (the dev broker answers every join after ~5 s, Apache
    Kafka after `group.initial.rebalance.delay.ms`), and a service has up to three groups: started
    in turn, a restart after a crash would leave partitions idle three times as long. FastStream
    0.7's own `start` is `connect()`, then each subscriber, then each publisher; this keeps that
    order and only overlaps the subscribers.
    """

    async def start(self) -> None:
        await self.connect()
        await asyncio.gather(*(subscriber.start() for subscriber in self.subscribers))
        for publisher in self.publishers:
            await publisher.start()
        self.running = True


def create_broker(settings: RuntimeSettings, client_id: str, middlewares: Sequence[Any] = ()) -> KafkaBroker:
    """`middlewares`: FastStream's telemetry and Prometheus middlewares (see `Observability`)."""
    return ConcurrentStartBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks=settings.kafka_acks_value(),
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=settings.kafka_max_batch_bytes,
        max_request_size=settings.kafka_max_request_bytes,
        graceful_timeout=settings.shutdown_grace_s,
        security=faststream_security(settings),
        logger=None,
        middlewares=tuple(middlewares),
    )


class DeadLetters:
    """Keeps what a consumer could not use, with the original bytes, so a person can replay it.

    A dead letter always fits what the producer may send (`kafka_max_request_bytes`): a body that
    would not is cut to its first `DEAD_LETTER_PREVIEW_BYTES`, original headers that would not are
    dropped, and the letter says so (`dlq.original-bytes`, `dlq.original-sha256`,
    `dlq.truncated`); such a letter cannot be replayed, only read. If the broker still refuses the
    letter, it is sent once more with the `dlq.*` headers alone. Otherwise a record near the size
    limit would fail its dead-letter send, rewind its batch, and block its partition for good."""

    def __init__(
        self,
        broker: KafkaBroker,
        group: str,
        observed: ConsumerObserver | None = None,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        on_dead_letter: DeadLetterHook | None = None,
    ) -> None:
        self._broker = broker
        self._group = group
        self._on_dead_letter = on_dead_letter
        self.observed = observed or Observability.disabled()
        #: What a letter's body and headers may take, leaving room for the batch's own framing.
        self._room = max(DEAD_LETTER_PREVIEW_BYTES, max_request_bytes - REQUEST_OVERHEAD_BYTES)

    async def send(self, record: ConsumerRecord, topic: Topic, *, reason: str, detail: str, attempts: int) -> None:
        value: bytes | None = record.value
        ours = {
            "dlq.reason": reason,
            "dlq.detail": detail[:2000],
            "dlq.topic": record.topic,
            "dlq.partition": str(record.partition),
            "dlq.offset": str(record.offset),
            "dlq.group": self._group,
            "dlq.attempts": str(attempts),
        }
        original = _headers(record)
        headers = {**original, **ours}
        if value is not None and _size(value, headers) > self._room:
            described = {**ours, **_described(value)}
            if _size(b"", {**original, **described}) <= self._room - DEAD_LETTER_PREVIEW_BYTES:
                headers = {**original, **described}
            else:
                headers = {**described, "dlq.headers": f"{len(original)} original headers dropped: too large"}
            value = value[:DEAD_LETTER_PREVIEW_BYTES]
        try:
            await self._broker.publish(value, topic=topic.dead_letter_topic, key=record.key, headers=headers)
        except Exception as error:
            log.warning("dead letter refused whole; sending its headers alone", reason=reason, error=repr(error))
            bare = {**ours, **_described(record.value or b""), "dlq.headers": "dropped: the letter was refused whole"}
            try:
                await self._broker.publish(b"", topic=topic.dead_letter_topic, key=record.key, headers=bare)
            except Exception:
                log.exception("could not dead-letter; the message will be redelivered", reason=reason)
                await asyncio.sleep(1.0)  # the broker is struggling: do not spin on it
                raise
        self.observed.dead_lettered(record.topic, reason)
        log.warning("message dead-lettered", reason=reason, detail=detail[:300], attempts=attempts)
        if self._on_dead_letter is not None:
            try:
                await self._on_dead_letter(record, reason, detail)
            except Exception as error:  # the letter is kept: a person can still find and replay it
                log.warning("the sender of a dead-lettered message was not answered", reason=reason, error=repr(error))


def _described(value: bytes) -> dict[str, str]:
    """Headers that stand for a body not kept whole: its size and hash, to match it with a resend."""
    return {
        "dlq.original-bytes": str(len(value)),
        "dlq.original-sha256": hashlib.sha256(value).hexdigest(),
        "dlq.truncated": "true",
    }


def _size(value: bytes, headers: dict[str, str]) -> int:
    return len(value) + sum(len(k) + len(v.encode()) for k, v in headers.items())


class ContractSpecification(KafkaSubscriberSpecification):
    """How FastStream's AsyncAPI generator sees a runtime consumer: a channel per topic, named after
    the topic, with the topic's description and its contract as the payload (the message class, or
    the union of the topic's classes). FastStream would describe the handler's parameters, and
    `consume_whole_batch` takes raw records. Read only when a document is generated (`make asyncapi`)."""

    __slots__ = ("contract_topics", "group_id")

    def __init__(self, declared: KafkaSubscriberSpecification, topics: Sequence[Topic], group_id: str) -> None:
        super().__init__(declared._outer_config, declared.config, declared.calls)
        self.contract_topics = {topic.name: topic for topic in topics}
        self.group_id = group_id

    def _channel_key(self, address: str, *, split: bool) -> str:
        return address

    def get_schema(self) -> dict[str, SubscriberSpec]:
        channels = super().get_schema()
        for channel in channels.values():
            topic = self.contract_topics[channel.address or ""]
            channel.description = topic.description
            channel.operation.message.payload = resolve_payloads(
                [(message.model_json_schema(mode="validation"), message.__name__) for message in topic.messages]
            )
        return channels


def subscribe(
    broker: KafkaBroker,
    settings: RuntimeSettings,
    *,
    topics: Sequence[Topic],
    group: str,
    handle_batch: BatchHandler,
    title: str,
    gate: Gate | None = None,
    decode: Decode | None = None,
    observability: Observability | None = None,
    background: bool = False,
    acts_on: Collection[type[Envelope]] | None = None,
    incarnations: TopicIncarnations | None = None,
    on_dead_letter: DeadLetterHook | None = None,
) -> None:
    """Register one at-least-once consumer (one consumer-group member) of `topics`.

    `acts_on`: the contract types the handler has something to do with. A record whose
    `message-type` header names another type is passed over before it is parsed (counted as
    skipped, not delivered); its offset is committed with its batch's. A record without the header
    is parsed and judged by its type. Only for topics whose producers are ours (the header is
    theirs to set truthfully): a public topic written by others is read whole.

    Records come in batches of up to `kafka_max_batch_records`. The records of a batch that pass
    the checks below are handed to `handle_batch` together, in arrival order, as one unit of work
    (see `unit_of_work`: one load and one save per store for the whole batch, each document's
    records decided in their order); its answer says, per record, what became of it. The offsets
    are committed once the whole batch is handled, so a crash redelivers it; handlers are
    idempotent, so a redelivery changes nothing.

    Bad input never stops the consumer: unparseable or contract-violating bytes and `Refused`
    messages go straight to the dead-letter topic; records that keep failing are tried again
    together, with backoff, and then dead-lettered. An unreachable database retries the whole
    batch without limit: our outage is not the messages' fault. Every message therefore ends in
    the handler's effect or in a dead letter. The only exceptions that escape are infrastructure
    failures (a dead-letter publish failed): NACK_ON_ERROR then rewinds to the batch's first
    records instead of committing past them. No poison message can loop, because none reaches that
    path. An outage longer than half of `kafka_max_poll_interval_ms` also rewinds the batch
    (`OutageOutlastsPoll`), so the consumer polls again before the group would evict it.

    `on_dead_letter`: told of each record after its dead letter is kept (consultation answers the
    sender); a failure there is logged, never un-keeps the letter.

    `incarnations`: which incarnation of each topic a record comes from, so that the offset floors
    documents keep are never applied to a recreated or mirrored topic (see `topic_ids`); without
    it, floors are keyed by the topic name alone.

    A `background` consumer keeps a projection no prescription waits for on its way (a status, a
    ledger, a history). It gathers one batch from several fetches for `background_wait_ms`, up to
    `background_max_batch_records`, and only then handles and commits it: the events of one
    prescription that arrive within the window are folded into one write of its document, and the
    fetches, commits and group writes that remain leave the CPU to the consumers a prescription
    does wait for. Nothing is committed before it is handled, so a crash loses nothing.
    """
    group_id = settings.group(group)
    fetch_max_wait_ms = settings.background_wait_ms if background else settings.kafka_fetch_max_wait_ms
    batch_wait_ms = settings.background_wait_ms if background else settings.kafka_batch_wait_ms
    max_records = settings.background_max_batch_records if background else settings.kafka_max_batch_records
    observed = observability.consumer(group_id) if observability is not None else Observability.disabled()
    dead_letters = DeadLetters(
        broker, group_id, observed, max_request_bytes=settings.kafka_max_request_bytes, on_dead_letter=on_dead_letter
    )

    by_name = {topic.name: topic for topic in topics}
    acted_types = None if acts_on is None else frozenset(message.model_fields["type"].default for message in acts_on)

    def passed_over(record: ConsumerRecord) -> bool:
        if acted_types is None:
            return False
        message_type = _header_value(record, "message-type")
        if message_type is None or message_type in acted_types:
            return False
        observed.skipped(record, message_type)
        return True

    async def admit(record: ConsumerRecord, floor: int, incarnation: str | None) -> Envelope | None:
        """The record's contract message, or None once it is dead-lettered (too large, refused at
        the gate, unreadable or violating its contract)."""
        topic = by_name[record.topic]
        body: bytes = record.value or b""
        structlog.contextvars.bind_contextvars(topic=record.topic, partition=record.partition, offset=record.offset)
        current_position.set(Position(record.topic, record.partition, record.offset, floor, incarnation))
        if len(body) > settings.max_message_bytes:
            detail = f"{len(body)} bytes, at most {settings.max_message_bytes}"
            await dead_letters.send(record, topic, reason="too_large", detail=detail, attempts=1)
            return None
        if gate is not None:
            try:
                gate(body, _headers(record))
            except Refused as refusal:
                await dead_letters.send(record, topic, reason=refusal.code, detail=refusal.detail, attempts=1)
                return None
            except Exception as error:  # a gate that trips over hostile bytes refuses them
                await dead_letters.send(record, topic, reason="unreadable", detail=repr(error), attempts=1)
                return None
        try:
            parsed: Envelope = topic.parse(body) if decode is None else decode(body, _headers(record), topic)
        except Refused as refusal:
            await dead_letters.send(record, topic, reason=refusal.code, detail=refusal.detail, attempts=1)
            return None
        except ValidationError as error:
            await dead_letters.send(record, topic, reason="contract_violation", detail=_brief(error), attempts=1)
            return None
        except Exception as error:  # parsing is pure: whatever it raises, the bytes are at fault
            await dead_letters.send(record, topic, reason="contract_violation", detail=repr(error), attempts=1)
            return None
        structlog.contextvars.bind_contextvars(
            correlation_id=parsed.correlation_id, message_id=parsed.message_id, message_type=parsed.type
        )
        current_message_type.set(parsed.type)  # records delivered are counted by group and type
        return parsed

    async def consume_whole_batch(message: KafkaMessage) -> None:
        observed.claim_task()  # the unit of work's database round trips count as this group's
        floors = _floors(message.raw_message)
        labels = (
            await incarnations.labels([(r.topic, r.partition, r.offset) for r in message.raw_message])
            if incarnations is not None
            else {}
        )
        admitted: list[tuple[ConsumerRecord, Record[Any]]] = []
        for raw in message.raw_message:
            if passed_over(raw):
                continue
            with observed.handling(raw):
                parsed = await admit(raw, floors[raw.topic, raw.partition], labels.get(raw.topic))
                if parsed is not None and (acted_types is None or parsed.type in acted_types):
                    # Its log fields and trace go with it into the unit of work.
                    record = Record(parsed, current_position.get(), contextvars.copy_context())
                    admitted.append((raw, record))
            structlog.contextvars.unbind_contextvars("correlation_id", "message_id", "message_type")
        if admitted:
            await _handle_batch_with_retries(admitted, by_name, handle_batch, dead_letters, settings)

    subscriber = broker.subscriber(
        *by_name,
        batch=True,
        max_records=max_records,
        # How long an idle consumer waits for records before looking again; records that arrive
        # meanwhile end the wait at once.
        batch_timeout_ms=batch_wait_ms,
        # The runtime parses the raw bytes itself: FastStream's own decoding of a body labelled
        # application/json would fail on garbage before `consume` runs, outside the dead-letter path.
        decoder=_raw_body,
        parser=_tolerant_parser,
        group_id=group_id,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.kafka_max_partition_fetch_bytes,
        fetch_max_bytes=settings.kafka_fetch_max_bytes,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        title=title,
        description=" ".join(topic.description for topic in topics),
    )
    subscriber(consume_whole_batch)
    subscriber.specification = ContractSpecification(subscriber.specification, topics, group_id)
    subscriber.get_msg = _gathering(subscriber) if background else _fetching_without_idle_sleep(subscriber)


def _fetching_without_idle_sleep(subscriber: Any) -> Callable[[Any], Awaitable[tuple[ConsumerRecord, ...]]]:
    """FastStream's batch subscriber sleeps `batch_timeout_ms` after a fetch that found nothing,
    so a record arriving during that sleep waits for it at every hop. Fetching again at once costs
    nothing: the fetch itself waits for records, and returns as soon as the first arrives."""

    async def fetch(consumer: Any) -> tuple[ConsumerRecord, ...]:
        found = await consumer.getmany(timeout_ms=subscriber.batch_timeout_ms, max_records=subscriber.max_records)
        return tuple(chain.from_iterable(found.values()))

    return fetch


def _gathering(subscriber: Any) -> Callable[[Any], Awaitable[tuple[ConsumerRecord, ...]]]:
    """A background consumer's batch: what its fetches bring within `batch_timeout_ms` of the first
    record, up to `max_records`; each partition's records stay in offset order. Idle, it returns
    nothing after one fetch's wait, so the consume loop can notice a stop."""

    async def gather(consumer: Any) -> tuple[ConsumerRecord, ...]:
        window_s = subscriber.batch_timeout_ms / 1000
        gathered: list[ConsumerRecord] = []
        deadline = time.monotonic() + window_s
        while len(gathered) < subscriber.max_records:
            left_ms = round((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            found = await consumer.getmany(timeout_ms=left_ms, max_records=subscriber.max_records - len(gathered))
            if not found and not gathered:
                break
            if not gathered:
                deadline = time.monotonic() + window_s  # the window starts with the first record
            gathered.extend(chain.from_iterable(found.values()))
        return tuple(gathered)

    return gather


def _floors(records: Sequence[ConsumerRecord]) -> dict[tuple[str, int], int]:
    """Per partition, the offset before the batch's first record: everything up to it was handled."""
    floors: dict[tuple[str, int], int] = {}
    for record in records:
        partition = (record.topic, record.partition)
        floors[partition] = min(floors.get(partition, record.offset), record.offset - 1)
    return floors


async def _handle_batch_with_retries(
    admitted: list[tuple[ConsumerRecord, Record[Any]]],
    topics: dict[str, Topic],
    handle_batch: BatchHandler,
    dead_letters: DeadLetters,
    settings: RuntimeSettings,
) -> None:
    """The batch once; the records that failed again together, in arrival order, with backoff (the
    unit of work isolates their documents again, and a record whose key failed before it failed
    with it, so a key's records keep their order); what still fails is dead-lettered."""
    records = [record for _, record in admitted]
    outcomes = list(await _while_unreachable(handle_batch, records, settings))
    attempts = [1] * len(records)
    for attempt in range(1, settings.handler_max_attempts):
        failing = [i for i, handled in enumerate(outcomes) if handled.outcome is Outcome.FAILED]
        if not failing:
            break
        for i in failing:
            dead_letters.observed.failed(admitted[i][0].topic, RuntimeError(outcomes[i].error or "failed"))
        delay = settings.handler_retry_backoff_s * 2 ** (attempt - 1)
        log.warning(
            "messages failed, retrying them", failed=len(failing), error=outcomes[failing[0]].error, attempt=attempt
        )
        await asyncio.sleep(delay)
        again = await _while_unreachable(handle_batch, [records[i] for i in failing], settings)
        for i, handled in zip(failing, again, strict=True):
            outcomes[i], attempts[i] = handled, attempt + 1
    for (raw, _), handled, attempt in zip(admitted, outcomes, attempts, strict=True):
        topic = topics[raw.topic]
        if handled.outcome is Outcome.REFUSED and handled.refusal is not None:
            refusal = handled.refusal
            await dead_letters.send(raw, topic, reason=refusal.code, detail=refusal.detail, attempts=attempt)
        elif handled.outcome is Outcome.FAILED:
            detail = handled.error or "failed"
            await dead_letters.send(raw, topic, reason="processing_failed", detail=detail, attempts=attempt)
        else:
            dead_letters.observed.handled(raw.topic)


class OutageOutlastsPoll(RuntimeError):
    """The database has been unreachable for half the consumer's `max_poll_interval_ms`: the batch
    is given back (NACK_ON_ERROR rewinds to its first record) and fetched again, so the consumer
    keeps its place in the group instead of being evicted and starting a rebalance."""


async def _while_unreachable(
    handle_batch: BatchHandler, records: list[Record[Any]], settings: RuntimeSettings
) -> Sequence[Handled[Any]]:
    """Our outage is not the messages' fault: an unreachable database, or one without a primary (an
    election, a stepdown: `mongo.is_outage`), is waited out without limit, with one warning when it
    starts and one line when it ends, not a traceback per attempt. The wait within one batch stops
    at half the consumer's `max_poll_interval_ms` (`OutageOutlastsPoll`: the batch is fetched again
    and the wait goes on). Any other error fails every record of this attempt, so each is tried
    again alone."""
    attempt = 0
    waited_s, budget_s = 0.0, settings.kafka_max_poll_interval_ms / 2000
    while True:
        attempt += 1
        try:
            outcomes = await handle_batch(records)
        except Exception as error:
            if not is_outage(error):
                log.exception("unit of work failed", records=len(records))
                return [Handled(record, Outcome.FAILED, error=repr(error)) for record in records]
            if attempt == 1:
                log.warning("database unreachable; retrying until it answers", error=str(error))
            delay = min(settings.handler_retry_backoff_s * 2 ** min(attempt, 6), 10.0)
            if waited_s + delay > budget_s:
                log.warning("database still unreachable; the batch is fetched again", waited_s=round(waited_s, 1))
                raise OutageOutlastsPoll(f"unreachable for {waited_s:.0f} s: {error}") from error
            await asyncio.sleep(delay)
            waited_s += delay
            continue
        if attempt > 1:
            log.info("database reachable again", attempts=attempt)
        return outcomes


async def _raw_body(message: Any) -> bytes:
    return message.body


async def _tolerant_parser(
    records: tuple[ConsumerRecord, ...], original_parser: Callable[[Any], Awaitable[Any]]
) -> Any:
    """FastStream decodes every header as strict UTF-8 before any handler runs; one hostile header
    would then fail the whole batch again and again. Such a batch gets readable copies; the
    handlers keep the original records, so a dead letter carries the bytes exactly as they came."""
    try:
        return await original_parser(records)
    except (UnicodeDecodeError, AttributeError):  # AttributeError: a header with no value
        readable = tuple(
            dataclasses.replace(r, headers=[(k, (v or b"").decode("utf-8", "replace").encode()) for k, v in r.headers])
            for r in records
        )
        message = await original_parser(readable)
        message.raw_message = records
        return message


def _header_value(record: Any, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def _headers(record: Any) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}


def _brief(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in error.errors()[:10])
