"""The envelope every message on every topic carries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import uuid4

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59-01:00: valid as written, not in UTC
        raise ValueError("timestamp is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timestamp that must carry a timezone; it is normalised to UTC."""

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
"""Ids travel in Kafka keys, Mongo `_id`s and log lines: keep them plain."""


def new_message_id() -> str:
    return str(uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every wire model: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Envelope(Contract):
    """Fields shared by every message.

    `correlation_id` is the prescription id for everything that concerns a prescription, so one
    prescription's whole story can be followed through logs and topics; messages that concern no
    prescription (a restock) use their own command id.
    """

    message_id: Identifier = Field(default_factory=new_message_id)
    type: str
    schema_version: int = Field(default=1, ge=1)
    occurred_at: UtcDatetime = Field(default_factory=utc_now)
    correlation_id: Identifier
    causation_id: Identifier | None = None
    producer: Annotated[str, Field(min_length=1, max_length=64)]
