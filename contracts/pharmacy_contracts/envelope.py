"""The envelope every message on every topic carries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import NAMESPACE_URL, uuid4, uuid5

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from .limits import MAX_SCHEMA_VERSION, ONE_LINE


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59-01:00: valid as written, not in UTC
        raise ValueError("timestamp is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timestamp that must carry a timezone; it is normalised to UTC."""

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+\-]*$")]
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
    schema_version: int = Field(default=1, ge=1, le=MAX_SCHEMA_VERSION)
    occurred_at: UtcDatetime = Field(default_factory=utc_now)
    correlation_id: Identifier
    causation_id: Identifier | None = None
    producer: Annotated[str, Field(min_length=1, max_length=64), ONE_LINE]


@dataclass(frozen=True)
class Producer:
    """A service as the producer of its events: the one way every service fills the envelope.

    `correlation_id` is the prescription (or the command) the event belongs to; the cause is the
    message that made it happen (its id becomes `causation_id`; None for a sweep's own events);
    `at` is the event's time when the service's clock decides it (otherwise: now).
    """

    name: str

    def envelope(
        self, correlation_id: str, cause: Envelope | str | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "correlation_id": correlation_id,
            "causation_id": cause.message_id if isinstance(cause, Envelope) else cause,
            "producer": self.name,
        }
        if at is not None:
            fields["occurred_at"] = at
        return fields


EXAMPLE_TIME = "2026-11-25T08:00:05Z"


def example_id(message_type: str) -> str:
    """The `message_id` of the published example of a message type (examples cite each other)."""
    return str(uuid5(NAMESPACE_URL, f"pharmacy-contracts:example:{message_type}"))


def wire_example(**fields: Any) -> Callable[[dict[str, Any], type[BaseModel]], None]:
    """A `json_schema_extra` adding one complete example of a message to its JSON Schema.

    Give the message's own fields (and `correlation_id`, `producer`); the envelope's `type`, a
    stable `message_id` and `occurred_at` are filled in. The example is validated when a schema is
    built, so a published example can never break its own contract.
    """

    def add_example(schema: dict[str, Any], cls: type[BaseModel]) -> None:
        message_type = cls.model_fields["type"].default
        data = {
            "message_id": example_id(message_type),
            "type": message_type,
            "occurred_at": EXAMPLE_TIME,
            **fields,
        }
        schema["examples"] = [cls.model_validate(data).model_dump(mode="json")]

    return add_example
