"""The services' own counters, read from every service process's /metrics before and after the
throughput burst: database round trips per consumer group (counted by each service's command
listener, not estimated) and records delivered per group and contract type.

Which records a group ignores is read from the code, not observed: a handler that receives a type
it has no branch for returns without a write or an event, and the runtime cannot tell that apart
from a handler that found nothing to change. `ACTED_ON` lists, per group, the types its handler has
a branch for (see each service's `service.py`); `test_bench_stats` checks the groups and topics
against the apps, so a renamed group or a moved topic cannot leave the table behind silently.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    PrescriptionAccepted,
    PrescriptionSubmitted,
)
from services.consultation.domain import LIFECYCLE_EVENTS
from services.courier.service import DECISIONS, STOCK_EVENTS
from services.inventory.service import APPROVALS, DELIVERY_EVENTS, MOVING_STOCK
from services.prescription.service import SUPPLY_ENDINGS

from .processes import owner_of

ROUND_TRIPS = "pharmacy_database_round_trips_total"
DELIVERED = "pharmacy_records_delivered_total"
SKIPPED = "pharmacy_records_skipped_total"
SCRAPE_TIMEOUT_S = 10.0

#: (metric, labels) → value, as one process's /metrics showed them.
Counters = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _type_of(message: type[Any]) -> str:
    return message.model_fields["type"].default


def _types(*messages: type[Any]) -> frozenset[str]:
    return frozenset(_type_of(message) for message in messages)


#: Per consumer group (without the deployment's prefix), the contract types its handler acts on.
ACTED_ON: dict[str, frozenset[str]] = {
    "consultation.intake": _types(PrescriptionSubmitted, CancellationRequested),
    # `domain.track`: every lifecycle step of a prescription; stock-only events and dispatches are no step.
    "consultation.status": _types(*LIFECYCLE_EVENTS),
    "prescription.check": _types(PrescriptionAccepted, CancellationAccepted),
    "prescription.reviews": _types(rx.ReviewDecided, rx.CancellationOrdered),
    "prescription.supply": _types(*SUPPLY_ENDINGS),
    "inventory.reservations": _types(*APPROVALS),
    "inventory.deliveries": _types(*DELIVERY_EVENTS),
    "inventory.commands": _types(
        inv.WarehouseRegistrationRequested,
        inv.RestockRequested,
        inv.AdjustmentRequested,
        inv.QuarantineDecided,
        inv.TransferShipRequested,
        inv.TransferReceiptRequested,
    ),
    "inventory.ledger": _types(*MOVING_STOCK),
    "inventory.formulary": _types(rx.DrugListed),
    "courier.decisions": _types(*DECISIONS),
    "courier.stock": _types(*STOCK_EVENTS),
    "courier.updates": _types(c.CourierReported),
    "courier.dispatchers": _types(c.AddressLocated),
}
#: The groups a prescription passes on its way to `DispatchOffered`: intake, the checks, the
#: reservation, and the courier service's two inputs (the delivery details and the reserved stock).
PATH_TO_DISPATCH = (
    "consultation.intake",
    "prescription.check",
    "inventory.reservations",
    "courier.decisions",
    "courier.stock",
)


def parse_counters(exposition: str) -> Counters:
    """The round-trip and records-delivered samples of one /metrics page."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name in (ROUND_TRIPS, DELIVERED, SKIPPED)
    }


def _get(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
        return response.read().decode()


async def scrape(urls: Mapping[str, str]) -> dict[str, Counters]:
    """Every service process's counters (process name → counters); a process that does not answer
    is left out (its figures then show as missing, not as zero)."""

    async def one(url: str) -> Counters | None:
        try:
            return parse_counters(await asyncio.to_thread(_get, url))
        except (OSError, ValueError):
            return None

    found = await asyncio.gather(*(one(url) for url in urls.values()))
    return {name: counters for name, counters in zip(urls, found, strict=True) if counters is not None}


def increase(before: Counters, after: Counters) -> Counters:
    """What each series counted between two scrapes (a series first seen after counts from 0)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}


def short_group(label: str, prefix: str) -> str:
    """`pharmacy.inventory.reservations` → `inventory.reservations`; `(background)` stays."""
    return label.removeprefix(f"{prefix}.")


def round_trips_per_prescription(
    increases: Mapping[str, Counters], prescriptions: int, prefix: str
) -> dict[str, dict[str, float]]:
    """Per service (instances added up): round trips per prescription on the path to
    `DispatchOffered` (its groups in PATH_TO_DISPATCH), in all (every group and the background),
    and per group (`group.<name>`)."""
    per_service: dict[str, dict[str, float]] = {}
    for process, counters in increases.items():
        figures = per_service.setdefault(owner_of(process), {"path": 0.0, "all": 0.0})
        for (name, labels), count in counters.items():
            if name != ROUND_TRIPS:
                continue
            group = short_group(dict(labels)["group"], prefix)
            share = count / prescriptions
            figures["all"] += share
            figures[f"group.{group}"] = figures.get(f"group.{group}", 0.0) + share
            if group in PATH_TO_DISPATCH:
                figures["path"] += share
    return {service: {k: round(v, 2) for k, v in figures.items()} for service, figures in per_service.items()}


def records_per_prescription(
    increases: Mapping[str, Counters], prescriptions: int, prefix: str
) -> dict[str, dict[str, float]]:
    """Per group: records delivered per prescription, how many of those its handler has no branch
    for (ACTED_ON; a group missing from ACTED_ON ignores nothing as far as the bench knows), and
    the records it fetched but passed over unparsed by their type header (`acts_on`)."""
    per_group: dict[str, dict[str, float]] = {}
    for counters in increases.values():
        for (name, labels), count in counters.items():
            if name not in (DELIVERED, SKIPPED):
                continue
            found = dict(labels)
            group = short_group(found["group"], prefix)
            figures = per_group.setdefault(group, {"delivered": 0.0, "ignored": 0.0, "skipped": 0.0})
            if name == SKIPPED:
                figures["skipped"] += count / prescriptions
                continue
            figures["delivered"] += count / prescriptions
            acted_on = ACTED_ON.get(group)
            if acted_on is not None and found["type"] not in acted_on:
                figures["ignored"] += count / prescriptions
    return {group: {k: round(v, 2) for k, v in figures.items()} for group, figures in sorted(per_group.items())}


def totals(per_key: Mapping[str, Mapping[str, float]], fields: Iterable[str]) -> dict[str, float]:
    """The fields added up over every service or group."""
    return {f: round(sum(figures.get(f, 0.0) for figures in per_key.values()), 2) for f in fields}
