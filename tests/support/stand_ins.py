"""Stand-ins the tests share: the broker's publish, the service's clock, a logger that keeps its lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

#: The types that answer a person or system (a receipt, a report's or a decision's outcome).
ANSWERS = frozenset(
    {"consultation.receipt", "consultation.status_receipt", "courier.report_answered", "prescription.decision_answered"}
)


class Published:
    """Takes the broker's place for a unit of work: every outbox entry handed over, in order."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    async def __call__(self, entries: Sequence[dict[str, Any]]) -> None:
        self.entries += entries

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.entries]

    def of(self, correlation_id: str) -> list[str]:
        """The types of the events published about this prescription (or command), in order; the
        answers to the people who sent the messages are left to `answers`."""
        return [e["type"] for e in self.entries if e["correlation_id"] == correlation_id and e["type"] not in ANSWERS]

    def answers(self, correlation_id: str) -> list[dict[str, Any]]:
        """The answers published to the people whose messages these were, in order."""
        return [
            json.loads(e["body"])
            for e in self.entries
            if e["correlation_id"] == correlation_id and e["type"] in ANSWERS
        ]

    def bodies(self, correlation_id: str, type_: str) -> list[dict[str, Any]]:
        return [
            json.loads(e["body"]) for e in self.entries if e["correlation_id"] == correlation_id and e["type"] == type_
        ]


class Clock:
    """The service's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Log:
    """Stands in for a module's structlog logger: the lines it would write, unrendered."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def exception(self, event: str, **fields: Any) -> None:
        self.lines.append(("exception", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))
