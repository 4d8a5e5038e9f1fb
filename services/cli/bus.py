"""Publishing and following topics from tools (CLI, demo, tests): plain aiokafka, contracts only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import uuid4

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from pharmacy_contracts import Envelope, client, signing
from pharmacy_contracts.consultation import CancellationRequested, PrescriptionSubmitted
from pharmacy_contracts.courier import CourierReported
from pharmacy_contracts.prescription import CancellationOrdered, ReviewDecided
from pharmacy_contracts.topics import CONSULTATION_PRESCRIPTIONS, Topic, topic_for
from services.runtime import credentials
from services.runtime.credentials import COURIER, PHARMACIST
from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings


@asynccontextmanager
async def producer(settings: RuntimeSettings) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks=settings.kafka_acks_value(),
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        **aiokafka_kwargs(settings),
    )
    try:
        await client.start()
    except BaseException:
        await client.stop()  # a producer that never connected still holds its sockets and tasks
        raise
    try:
        yield client
    finally:
        await client.stop()


def encode(
    message: Envelope, settings: RuntimeSettings | None = None
) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """Topic, key, value and headers of a message, encoded as upstream systems do (`pharmacy_contracts.client`).
    A prescription or a cancellation is signed as its sender when `settings` carry a signing key
    (see `RuntimeSettings.signing_key_id`); a courier's report and a pharmacist's decision as that
    person, with their own token or one made from their organisation's key (`runtime.credentials`)."""
    record = client.encode(message, _signing_key(message, settings))
    return record.topic, record.key, record.value, record.headers


def _signing_key(message: Envelope, settings: RuntimeSettings | None) -> client.SigningKey | None:
    if settings is None:
        return None
    if isinstance(message, PrescriptionSubmitted | CancellationRequested):
        if settings.signing_secret and settings.signing_key_id:
            secret = settings.signing_secret.get_secret_value().encode()
            return client.SigningKey(sender_id=message.sender_id, key_id=settings.signing_key_id, secret=secret)
        return None
    if isinstance(message, CourierReported):
        person, own, key, purpose = message.courier_id, settings.courier_token, settings.courier_gateway_key, COURIER
    elif isinstance(message, ReviewDecided | CancellationOrdered):
        person, own, key, purpose = (
            message.pharmacist_id,
            settings.pharmacist_token,
            settings.pharmacist_key,
            PHARMACIST,
        )
    else:
        return None
    organisation = credentials.secret_of(key)
    token = (
        own.get_secret_value() if own else credentials.token(organisation, purpose, person) if organisation else None
    )
    return client.SigningKey(person, token.partition(".")[0], token.encode()) if token else None


async def publish_all(
    client: AIOKafkaProducer, messages: Iterable[Envelope], settings: RuntimeSettings | None = None
) -> int:
    """Send in order and wait until the broker confirmed every one."""
    futures = []
    for message in messages:
        name, key, value, headers = encode(message, settings)
        futures.append(await client.send(name, value, key=key, headers=headers))
    for future in futures:
        await future
    return len(futures)


async def publish(settings: RuntimeSettings, *messages: Envelope) -> int:
    async with producer(settings) as client:
        return await publish_all(client, messages, settings)


#: A record as tools send it: topic, key, value and headers.
Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


def encode_fhir(
    body: bytes, *, prescription_id: str, message_id: str, sender_id: str, settings: RuntimeSettings | None = None
) -> Record:
    """A FHIR R4 bundle for consultation.prescriptions.v1: its bytes unchanged, marked by its content
    type, keyed by the prescription id and signed like a native prescription."""
    headers = {
        "content-type": "application/fhir+json; fhirVersion=4.0",
        "message-id": message_id,
        "correlation-id": prescription_id,
    }
    if settings and settings.signing_secret and settings.signing_key_id:
        headers |= signing.signature_headers(
            body,
            sender_id=sender_id,
            key_id=settings.signing_key_id,
            secret=settings.signing_secret.get_secret_value().encode(),
        )
    return (
        CONSULTATION_PRESCRIPTIONS.name,
        prescription_id.encode(),
        body,
        [(k, v.encode()) for k, v in headers.items()],
    )


async def publish_records(settings: RuntimeSettings, *records: Record) -> int:
    """Send records already encoded (raw bytes with their headers) and wait until each is confirmed."""
    async with producer(settings) as client:
        futures = [await client.send(name, value, key=key, headers=headers) for name, key, value, headers in records]
        for future in futures:
            await future
        return len(futures)


async def follow(
    settings: RuntimeSettings, topic: Topic, *, from_beginning: bool = False, keys: set[str] | None = None
) -> AsyncIterator[tuple[str | None, Envelope | None, bytes]]:
    """Yield (key, parsed message or None if it breaks the contract, raw bytes), forever.

    A tool reads without a consumer group of its own, so watching never steals messages from a service.
    """
    consumer = AIOKafkaConsumer(
        topic.name,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        client_id=f"pharmacy-tool-{uuid4().hex[:8]}",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **aiokafka_kwargs(settings),
    )
    await consumer.start()
    try:
        async for record in consumer:
            key = record.key.decode() if record.key else None
            if keys is not None and key not in keys:
                continue
            try:
                parsed: Envelope | None = topic.parse(record.value)
            except ValidationError:
                parsed = None
            yield key, parsed, record.value
    finally:
        await consumer.stop()


def short_id() -> str:
    return uuid4().hex[:12]


@dataclass(frozen=True)
class RefusedAtTheDoor:
    """A message the service dead-lettered before any use case saw it (a signature, the contract,
    an unknown warehouse): its answer is the dead letter's reason."""

    code: str
    detail: str
    outcome: str = "refused"


#: Whether an answer (a record of the answers topic) answers the message of this id.
Answers = Callable[[Envelope, str], bool]


def names_it(answer: Envelope, message_id: str) -> bool:
    """An answer naming the message it answers (`answers_message_id`): receipts and answers topics."""
    return getattr(answer, "answers_message_id", None) == message_id


def caused_by_it(answer: Envelope, message_id: str) -> bool:
    """An event the message caused (`causation_id`): what a warehouse command did, or why not."""
    return answer.causation_id == message_id


async def ask(
    settings: RuntimeSettings,
    message: Envelope,
    answers: Topic,
    key: str,
    timeout_s: float,
    answered: Answers = names_it,
) -> Envelope | RefusedAtTheDoor | None:
    """Publish `message` and wait up to `timeout_s` for its answer (see `ask_after`)."""
    return await ask_after(
        settings,
        lambda: publish(settings, message),
        message.message_id,
        topic_for(message),
        answers,
        key,
        timeout_s,
        answered,
    )


async def ask_after(
    settings: RuntimeSettings,
    send: Callable[[], Awaitable[object]],
    message_id: str,
    sent_to: Topic,
    answers: Topic,
    key: str,
    timeout_s: float,
    answered: Answers = names_it,
) -> Envelope | RefusedAtTheDoor | None:
    """`send` the message of `message_id` to `sent_to` and wait up to `timeout_s` for its answer:
    the record of `answers` keyed `key` that `answered` accepts, or the message's own dead letter
    (refused at the door); None if neither came in time. Both are read from where they ended before
    the message went out, so none is missed."""
    dead_letters = sent_to.dead_letter_topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        client_id=f"pharmacy-tool-{uuid4().hex[:8]}",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **aiokafka_kwargs(settings),
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic, the answers' partitions among them
        partitions = [
            TopicPartition(name, p)
            for name in (answers.name, dead_letters)
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        consumer.assign(partitions)
        for partition, end in (await consumer.end_offsets(partitions)).items():
            consumer.seek(partition, end)
        await send()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            found = await consumer.getmany(timeout_ms=max(1, int(min(left, 0.5) * 1000)))
            for record in (r for batch in found.values() for r in batch):
                if record.topic == dead_letters:
                    headers = {name: (value or b"").decode("utf-8", "replace") for name, value in record.headers}
                    if headers.get(client.MESSAGE_ID_HEADER) == message_id:
                        return RefusedAtTheDoor(headers.get("dlq.reason", "refused"), headers.get("dlq.detail", ""))
                    continue
                if record.key != key.encode():
                    continue
                try:
                    answer = answers.parse(record.value)
                except ValidationError:
                    continue
                if answered(answer, message_id):
                    return answer
        return None
    finally:
        await consumer.stop()
