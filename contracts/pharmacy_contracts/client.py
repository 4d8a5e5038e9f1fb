"""A small client for upstream systems: build a prescription message, sign it, publish it.

Building and signing need nothing but pydantic. Publishing uses aiokafka, installed with the
`publish` extra (`pip install "pharmacy-contracts[publish]"`)::

    key = SigningKey(sender_id="district-clinic", key_id="2026-01", secret=b"...")
    async with PharmacyClient("kafka:9092", key) as pharmacy:
        sent = await pharmacy.submit(prescription)  # a Prescription or a dict of one
        ...
        await pharmacy.cancel(sent.prescription.prescription_id, reason="...", requested_by="Dr. ...")

Records carry the headers the pharmacy's own services put on theirs, so the pharmacy's tools and
dead-letter handling read them alike. If a send fails, send the *same* message again
(`pharmacy.send(message)`): the pharmacy recognises its `message_id` and takes it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from .consultation import CancellationRequested, Prescription, PrescriptionSubmitted
from .envelope import Envelope, new_message_id, utc_now
from .signing import signature_headers
from .topics import CONSULTATION_PRESCRIPTIONS, topic_for

CONTENT_TYPE = "application/json"

#: Header names every record carries; the values are the message's own fields.
CONTENT_TYPE_HEADER = "content-type"
MESSAGE_TYPE_HEADER = "message-type"
MESSAGE_ID_HEADER = "message-id"
CORRELATION_ID_HEADER = "correlation-id"

#: Every record on these topics must be signed: the consultation service checks the signature
#: before it reads anything else, and dead-letters what fails.
SIGNED_TOPICS = frozenset({CONSULTATION_PRESCRIPTIONS.name})


@dataclass(frozen=True)
class SigningKey:
    """One of the HMAC keys the pharmacy registered for an upstream system (`PHARMACY_SENDER_KEYS`)."""

    sender_id: str
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"SigningKey(sender_id={self.sender_id!r}, key_id={self.key_id!r}, secret=<hidden>)"


@dataclass(frozen=True)
class Record:
    """A Kafka record ready to send: topic, key, value and headers as bytes."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def headers_of(message: Envelope) -> dict[str, str]:
    """The headers every record carries, whoever sends it."""
    return {
        CONTENT_TYPE_HEADER: CONTENT_TYPE,
        MESSAGE_TYPE_HEADER: message.type,
        MESSAGE_ID_HEADER: message.message_id,
        CORRELATION_ID_HEADER: message.correlation_id,
    }


def encode(message: Envelope, key: SigningKey | None = None) -> Record:
    """The record for `message`: its topic, its partition key, its JSON bytes and headers, signed
    with `key` when one is given. The signature covers exactly the value bytes."""
    topic = topic_for(message)
    value = message.model_dump_json().encode()
    headers = headers_of(message)
    if key is not None:
        claimed = getattr(message, "sender_id", key.sender_id)
        if claimed != key.sender_id:  # consultation would dead-letter it as sender_mismatch
            raise ValueError(f"the message claims sender {claimed!r} but the key belongs to {key.sender_id!r}")
        headers |= signature_headers(value, sender_id=key.sender_id, key_id=key.key_id, secret=key.secret)
    return Record(topic.name, topic.key_of(message).encode(), value, [(k, v.encode()) for k, v in headers.items()])


def prescription_submitted(
    prescription: Prescription | Mapping[str, Any],
    *,
    sender_id: str,
    producer: str | None = None,
    message_id: str | None = None,
    occurred_at: datetime | None = None,
) -> PrescriptionSubmitted:
    """The message announcing an issued prescription; `prescription` may be a dict (e.g. parsed JSON)."""
    if not isinstance(prescription, Prescription):
        prescription = Prescription.model_validate(prescription)
    return PrescriptionSubmitted(
        message_id=message_id or new_message_id(),
        occurred_at=occurred_at or utc_now(),
        correlation_id=prescription.prescription_id,
        producer=producer or sender_id,
        sender_id=sender_id,
        prescription=prescription,
    )


def cancellation_requested(
    prescription_id: str,
    *,
    sender_id: str,
    reason: str,
    requested_by: str,
    producer: str | None = None,
    message_id: str | None = None,
    occurred_at: datetime | None = None,
) -> CancellationRequested:
    """The message withdrawing a prescription this sender submitted earlier."""
    return CancellationRequested(
        message_id=message_id or new_message_id(),
        occurred_at=occurred_at or utc_now(),
        correlation_id=prescription_id,
        producer=producer or sender_id,
        sender_id=sender_id,
        prescription_id=prescription_id,
        reason=reason,
        requested_by=requested_by,
    )


class PharmacyClient:
    """Publishes signed prescriptions and cancellations to the pharmacy's Kafka.

    `producer_options` go to aiokafka's `AIOKafkaProducer` (security settings, timeouts, ...).
    Each send waits until the broker confirmed the record.
    """

    def __init__(self, bootstrap_servers: str, key: SigningKey, **producer_options: Any) -> None:
        try:
            from aiokafka import AIOKafkaProducer
        except ImportError as missing:
            raise ImportError('publishing needs aiokafka: pip install "pharmacy-contracts[publish]"') from missing
        self.key = key
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, **{"acks": "all", "client_id": key.sender_id, **producer_options}
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> PharmacyClient:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    async def send(self, message: Envelope) -> None:
        record = encode(message, self.key)
        await self._producer.send_and_wait(record.topic, record.value, key=record.key, headers=record.headers)

    async def submit(self, prescription: Prescription | Mapping[str, Any], **fields: Any) -> PrescriptionSubmitted:
        """Publish an issued prescription; returns the message sent (keep it to resend on failure)."""
        message = prescription_submitted(prescription, sender_id=self.key.sender_id, **fields)
        await self.send(message)
        return message

    async def cancel(
        self, prescription_id: str, *, reason: str, requested_by: str, **fields: Any
    ) -> CancellationRequested:
        """Withdraw a prescription this sender submitted; honoured at any stage before delivery."""
        message = cancellation_requested(
            prescription_id, sender_id=self.key.sender_id, reason=reason, requested_by=requested_by, **fields
        )
        await self.send(message)
        return message
