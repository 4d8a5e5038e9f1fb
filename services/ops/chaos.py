"""Chaos run: a steady load of prescriptions while a killer `kill -9`s a random service process every
few seconds and restarts it; then a check of every guarantee the system makes.

Six processes run: consultation-1, prescription-1, inventory-1, inventory-2, courier-1, courier-2.
Simulated couriers deliver most offers, fail some (before and after pickup) and read out a wrong
delivery code now and then; warehouse staff register the warehouses, restock lots and adjust
counts while the load flows. When the load is in, the killer stops, the run waits until every
prescription is final and every consumer group has caught up, and then it checks, from the topics
and from each service's own records:

* every prescription is in exactly one terminal state (and the owning services agree);
* for every warehouse and drug, and for every lot, available + reserved + dispatched + quarantined
  + expired + delivered == received + adjusted; what was restocked was received exactly once;
  delivered stock is exactly what the delivered prescriptions took, quarantined stock exactly what
  undeliverable prescriptions took on the road, and nothing is left reserved or on the road;
* the stock ledger recomputes every lot's figures exactly;
* no prescription reserved twice, nor dispatched more often than it was picked up; each ended with
  the stock movements its outcome calls for (delivered, released, or quarantined);
* every dispatch offer has a unique dispatch id and was acted on once (by the couriers, which
  ignore a re-published offer, and by the courier service);
* consumer lag is back to zero.

`python -m services.ops.chaos --prescriptions 2000` runs it on a throw-away dev stack;
`tests/chaos/test_chaos.py` runs the same code and asserts the report has no violations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import PrescriptionSubmitted
from services.cli import bus
from services.consultation.domain import TERMINAL, PrescriptionStatus, Stage
from services.consultation.storage import ConsultationStorage
from services.courier.domain import Delivery, DeliveryState
from services.courier.storage import CourierStorage
from services.inventory.domain import (
    Allocation,
    AllocationState,
    Figures,
    Warehouse,
    current_lots,
    recompute_lots,
)
from services.inventory.storage import InventoryStorage
from services.prescription.domain import (
    Verdict,
    VerdictState,
)
from services.prescription.storage import PrescriptionStorage
from services.runtime.documents import connect
from services.runtime.settings import RuntimeSettings

from .devstack import DevStack
from .lag import consumer_lag
from .reference import UNLIMITED_CAPACITY, Reference, load_reference_data
from .simulation import CourierSimulator, Plan, county_prescriptions, restocks, warehouse_registrations

PROCESSES = ("consultation-1", "prescription-1", "inventory-1", "inventory-2", "courier-1", "courier-2")
FAILURES = ("patient_absent", "refused", "damaged", "address_not_found", "other")
OPENING_SHARE = 0.65  # of the expected demand, before the first prescription
RESTOCK_ROUNDS = (0.25, 0.5, 0.75)  # restock (and adjust) when this share of the load is published
RESTOCK_SHARE = 0.08  # of the expected demand, per round
WRONG_CODE_SHARE = 0.03  # of the offers: the patient first reads out a wrong delivery code
#: Room for every delivery at once: the chaos run checks the guarantees under kills, not the
#: throttling by capacity (unit and end-to-end tests cover that), which would only slow it down.
STALL_S = 120.0  # settling gives up when nothing (states, lag, outboxes) changed for this long

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the report ------------------------------------------------------------------------------------


@dataclass
class StockRow:
    warehouse_id: str
    drug_code: str
    received: int
    adjusted: int
    available: int
    reserved: int
    dispatched: int
    quarantined: int
    expired: int
    delivered: int
    restocked_sent: int  # what warehouse staff asked for: opening stock plus restocks
    adjusted_applied: int  # sum of StockAdjusted deltas on inventory.events.v1
    delivered_expected: int  # the lines of the prescriptions delivered from this warehouse
    quarantined_expected: int  # the lines of undeliverable prescriptions whose goods had travelled

    @property
    def figures(self) -> Figures:
        return Figures(
            **{name: getattr(self, name) for name in Figures.model_fields},
        )

    @property
    def balanced(self) -> bool:
        return self.figures.balanced


@dataclass
class ChaosReport:
    prescriptions: int
    faulty_submitted: int
    rate_per_s: float
    seed: int
    duration_s: float = 0.0
    publish_s: float = 0.0
    settle_s: float = 0.0
    settled: bool = False
    # the killer
    kills: dict[str, int] = field(default_factory=dict)
    unexpected_exits: dict[str, int] = field(default_factory=dict)
    restart_ready_s: list[float] = field(default_factory=list)
    restarts_not_ready: list[str] = field(default_factory=list)
    # outcomes
    terminal: dict[str, int] = field(default_factory=dict)
    non_terminal: dict[str, int] = field(default_factory=dict)
    missing_status: list[str] = field(default_factory=list)
    several_terminal_states: dict[str, list[str]] = field(default_factory=dict)
    owner_disagrees: dict[str, str] = field(default_factory=dict)
    # stock
    stock: list[StockRow] = field(default_factory=list)
    lots_checked: int = 0
    unbalanced_lots: list[str] = field(default_factory=list)  # warehouse/lot: figures
    ledger_entries: int = 0
    ledger_mismatches: dict[str, str] = field(default_factory=dict)  # warehouse/lot → ledger vs document
    open_holds: list[str] = field(default_factory=list)
    restocks_sent: int = 0
    adjustments_sent: int = 0
    adjustments_unanswered: list[str] = field(default_factory=list)
    adjustments_answered_twice: list[str] = field(default_factory=list)
    # reservations and dispatches
    double_reservations: dict[str, int] = field(default_factory=dict)
    reserved_and_refused: list[str] = field(default_factory=list)
    allocation_mismatches: dict[str, str] = field(default_factory=dict)
    double_dispatches: dict[str, str] = field(default_factory=dict)
    net_dispatch_mismatches: dict[str, str] = field(default_factory=dict)
    # couriers
    offers_total: int = 0  # distinct offers (by message id) on courier.dispatch.v1
    offers_acted_on: int = 0
    duplicate_offers_ignored: int = 0  # seen again by the couriers, same dispatch id: not acted on
    duplicate_offers_republished: int = 0  # of those: the same message id (at-least-once publishing)
    dispatch_ids_reused: dict[str, list[str]] = field(default_factory=dict)  # dispatch id → message ids
    dispatches_acted_twice: dict[str, str] = field(default_factory=dict)  # by the courier service
    offers_without_outcome: list[str] = field(default_factory=list)
    wrong_codes_planned: int = 0  # offers where the patient first read out a wrong code
    codes_rejected: int = 0  # DeliveryCodeRejected on courier.deliveries.v1
    # plumbing
    republished_events: dict[str, int] = field(default_factory=dict)  # same message id twice, per topic
    dead_letters: dict[str, int] = field(default_factory=dict)
    final_lag: dict[str, int] = field(default_factory=dict)
    lag_detail: dict[str, str] = field(default_factory=dict)  # per partition, for groups not at zero
    outbox_pending: int = 0
    log_warnings: dict[str, dict[str, int]] = field(default_factory=dict)
    logs_dir: str = ""

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def kills_per_service(self) -> dict[str, int]:
        per: Counter[str] = Counter()
        for name, count in self.kills.items():
            per[name.partition("-")[0]] += count
        return dict(per)

    def violations(self) -> list[str]:
        """Every guarantee the run found broken, one sentence each (empty: all held)."""
        found = []
        unfinished = sum(self.non_terminal.values()) + len(self.missing_status)
        if not self.settled:
            found.append("the system did not settle (all terminal, lag zero, outboxes empty) in time")
        if unfinished:
            found.append(
                f"{unfinished} prescriptions not in a terminal state: {self.non_terminal}, "
                f"{len(self.missing_status)} without any status {self.missing_status[:5]}"
            )
        if sum(self.terminal.values()) + unfinished != self.prescriptions:
            found.append(f"{sum(self.terminal.values()) + unfinished} statuses for {self.prescriptions} prescriptions")
        if self.several_terminal_states:
            found.append(f"prescriptions with several terminal states: {_some(self.several_terminal_states)}")
        if self.owner_disagrees:
            found.append(f"status disagrees with the owning service: {_some(self.owner_disagrees)}")
        unbalanced = [r for r in self.stock if not r.balanced]
        if unbalanced:
            found.append(f"stock books do not balance: {[_row(r) for r in unbalanced]}")
        if wrong := [r for r in self.stock if r.received != r.restocked_sent]:
            found.append(f"received differs from what was restocked: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.adjusted != r.adjusted_applied]:
            found.append(f"adjusted differs from the adjustments published: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.reserved != 0]:
            found.append(f"stock still reserved after everything finished: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.dispatched != 0]:
            found.append(f"stock still on the road after everything finished: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.delivered != r.delivered_expected]:
            found.append(f"delivered stock differs from what was delivered: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.quarantined != r.quarantined_expected]:
            found.append(f"quarantined stock differs from what came back: {[_row(r) for r in wrong]}")
        if self.unbalanced_lots:
            found.append(f"{len(self.unbalanced_lots)} lots do not balance: {self.unbalanced_lots[:5]}")
        if self.ledger_mismatches:
            found.append(f"the ledger does not recompute these lots: {_some(self.ledger_mismatches)}")
        if self.open_holds:
            found.append(f"{len(self.open_holds)} holds still open: {self.open_holds[:5]}")
        if self.adjustments_unanswered or self.adjustments_answered_twice:
            found.append(
                f"adjustments not answered exactly once: unanswered {self.adjustments_unanswered[:5]}, "
                f"twice {self.adjustments_answered_twice[:5]}"
            )
        if self.double_reservations:
            found.append(f"prescriptions reserved more than once: {_some(self.double_reservations)}")
        if self.reserved_and_refused:
            found.append(f"prescriptions both reserved and refused: {self.reserved_and_refused[:5]}")
        if self.allocation_mismatches:
            found.append(f"allocations disagree with the reservations published: {_some(self.allocation_mismatches)}")
        if self.double_dispatches:
            found.append(f"stock dispatched more often than picked up: {_some(self.double_dispatches)}")
        if self.net_dispatch_mismatches:
            found.append(f"stock movements do not match the outcome: {_some(self.net_dispatch_mismatches)}")
        if self.dispatch_ids_reused:
            found.append(f"dispatch ids used by more than one offer: {_some(self.dispatch_ids_reused)}")
        if self.dispatches_acted_twice:
            found.append(f"dispatches acted on more than once: {_some(self.dispatches_acted_twice)}")
        if self.offers_without_outcome:
            found.append(f"offers acted on with no outcome: {self.offers_without_outcome[:5]}")
        if self.codes_rejected != self.wrong_codes_planned:
            found.append(f"{self.wrong_codes_planned} wrong delivery codes read out, {self.codes_rejected} refused")
        if any(self.final_lag.values()):
            found.append(f"consumer lag not zero: { {k: v for k, v in self.final_lag.items() if v} }")
        if self.outbox_pending:
            found.append(f"{self.outbox_pending} documents still have events in their outbox")
        if self.restarts_not_ready:
            found.append(f"restarted processes that never became ready: {self.restarts_not_ready}")
        return found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_kills"] = self.total_kills
        data["kills_per_service"] = self.kills_per_service()
        data["violations"] = self.violations()
        for row, stock in zip(data["stock"], self.stock, strict=True):
            row["balanced"] = stock.balanced
        return data


def _some(mapping: dict[str, Any], limit: int = 5) -> str:
    items = list(mapping.items())
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(f"{k}: {v}" for k, v in items[:limit]) + more


def _row(r: StockRow) -> str:
    return f"{r.warehouse_id}/{r.drug_code} {_figures(r.figures)} (restocked {r.restocked_sent}, adjustments " + (
        f"{r.adjusted_applied}, delivered prescriptions {r.delivered_expected}, came back {r.quarantined_expected})"
    )


def _figures(f: Figures) -> str:
    return (
        f"received {f.received} adjusted {f.adjusted} = available {f.available} + reserved {f.reserved} "
        f"+ dispatched {f.dispatched} + quarantined {f.quarantined} + expired {f.expired} + delivered {f.delivered}"
    )


# --- the killer ------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running, not a zombie (a child that died but was not reaped still answers kill -0)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Killer:
    """Every `every` seconds (uniform in the range), SIGKILLs one random process and restarts it
    after `restart_after_s`. Restarts are not waited for, but watched: the time until the process
    logs "service started" is recorded, and one that dies on its own is counted and restarted."""

    def __init__(
        self,
        stack: DevStack,
        names: Iterable[str],
        *,
        every: tuple[float, float],
        rng: random.Random,
        restart_after_s: float = 1.0,
        ready_timeout_s: float = 90.0,
        progress: Progress = _quiet,
    ) -> None:
        self.stack = stack
        self.names = list(names)
        self.every = every
        self.rng = rng
        self.restart_after_s = restart_after_s
        self.ready_timeout_s = ready_timeout_s
        self.progress = progress
        self.kills: Counter[str] = Counter()
        self.unexpected_exits: Counter[str] = Counter()
        self.ready_s: list[float] = []
        self.not_ready: list[str] = []
        self._generation: Counter[str] = Counter()
        self._down: set[str] = set()  # killed, not yet restarted
        self._bag: list[str] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chaos-killer")

    async def stop(self) -> None:
        """Stop killing; then make sure every process runs and has become ready again."""
        if self._task is None or self._stopping.is_set():
            return
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.revive_dead()
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
        await self.revive_dead()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.rng.uniform(*self.every))
            if self._stopping.is_set():
                return
            await self.revive_dead()
            await self.crash_and_restart(self._next_victim())

    def _next_victim(self) -> str:
        """Random, from a shuffled bag of all processes: every one is killed equally often."""
        if not self._bag:
            self._bag = self.rng.sample(self.names, k=len(self.names))
        return self._bag.pop()

    async def crash_and_restart(self, name: str) -> None:
        self._down.add(name)
        self._generation[name] += 1
        try:
            await asyncio.to_thread(self.stack.kill, name)
            self.kills[name] += 1
            self.progress(f"kill -9 {name} (kill #{sum(self.kills.values())})")
            await asyncio.sleep(self.restart_after_s)
            self._restart(name)
        finally:
            self._down.discard(name)

    async def revive_dead(self) -> None:
        for name in self.names:
            pid = self.stack.pid_of(name)
            if name not in self._down and (pid is None or not _alive(pid)):
                self.unexpected_exits[name] += 1
                self.progress(f"{name} exited on its own; restarting it")
                self._generation[name] += 1
                self._restart(name)

    def _restart(self, name: str) -> None:
        log_path = self.stack.logs / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        service, _, instance = name.partition("-")
        self.stack.start_service(service, int(instance))
        watcher = asyncio.create_task(self._watch_ready(name, log_path, offset, self._generation[name]))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch_ready(self, name: str, log_path: Path, offset: int, generation: int) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.ready_timeout_s:
            if self._generation[name] != generation:
                return  # killed again while starting: the next restart is watched instead
            with log_path.open("rb") as log:
                log.seek(offset)
                if b'"service started"' in log.read():
                    self.ready_s.append(round(time.monotonic() - started, 2))
                    return
            await asyncio.sleep(0.25)
        self.not_ready.append(name)
        self.progress(f"{name} not ready {self.ready_timeout_s:.0f}s after its restart")


# --- the users: couriers, warehouse staff, the hospital ----------------------------------------------


@dataclass
class Couriers:
    """Plans every offer once. A dispatch id seen again is not acted on again: counted instead."""

    seed: int
    unreachable: set[str]
    failure_rate: float = 0.12
    wrong_code_share: float = WRONG_CODE_SHARE
    acted: dict[str, c.DispatchOffered] = field(default_factory=dict)
    duplicates: list[c.DispatchOffered] = field(default_factory=list)
    wrong_codes: int = 0

    def plan_for(self, offer: c.DispatchOffered) -> Plan | None:
        if offer.dispatch_id in self.acted:
            self.duplicates.append(offer)
            return None
        self.acted[offer.dispatch_id] = offer
        rng = random.Random(f"{self.seed}:{offer.dispatch_id}")
        if offer.package_id in self.unreachable:
            # Never found: the first attempt fails before pickup, the second after it; address_not_found
            # allows two attempts, so the delivery is undeliverable and its goods, which travelled, are
            # quarantined.
            return "fail:address_not_found" if offer.attempt % 2 else "fail-after-pickup:address_not_found"
        roll = rng.random()
        if roll < self.failure_rate / 2:
            return f"fail:{rng.choice(FAILURES)}"
        if roll < self.failure_rate:
            return f"fail-after-pickup:{rng.choice(FAILURES)}"
        if roll < self.failure_rate + self.wrong_code_share:
            self.wrong_codes += 1
            return "wrong-code"
        return "deliver"


Shelf = tuple[str, str]  # (warehouse id, drug code)


def _demand(messages: Iterable[PrescriptionSubmitted], reference: Reference) -> Counter[Shelf]:
    """The units the approvable prescriptions will ask of each warehouse nearest their patients."""
    now = datetime.now(UTC)
    demand: Counter[Shelf] = Counter()
    for message in messages:
        if reference.approvable(message, now):
            warehouse = reference.nearest_warehouse(message)
            for item in message.prescription.items:
                demand[warehouse, item.drug_code] += item.quantity
    return demand


def _restocks(demand: Counter[Shelf], share: float, by: str, round_no: int) -> list[inv.RestockRequested]:
    """A share of each warehouse's expected demand, as one new lot per shelf. A warehouse that runs
    out sends its prescriptions to the next nearest that has everything, or they end out of stock."""
    lines = [
        (warehouse, drug, quantity)
        for (warehouse, drug), units in sorted(demand.items())
        if (quantity := round(units * share)) > 0
    ]
    return restocks(lines, requested_by=by, round_name=f"chaos-restock-{round_no}")


def _adjustments(lots: dict[Shelf, list[str]], rng: random.Random, round_no: int) -> list[inv.AdjustmentRequested]:
    """A few stock-count corrections of lots restocked before: breakage (some refused if the lot's
    shelf is already empty), a find."""
    commands = []
    shelves = sorted(lots)
    for number in range(3):
        warehouse, drug = rng.choice(shelves)
        delta = rng.choice([-1, -1, 1]) * rng.randint(1, 5)
        commands.append(
            inv.AdjustmentRequested(
                correlation_id=f"chaos-adjust-{round_no}-{number}",
                producer="chaos",
                warehouse_id=warehouse,
                drug_code=drug,
                lot_id=rng.choice(lots[warehouse, drug]),
                delta=delta,
                reason="breakage found at stock count" if delta < 0 else "found during stock count",
                requested_by="night shift",
            )
        )
    return commands


# --- reading what happened -----------------------------------------------------------------------------


async def read_topic(settings: RuntimeSettings, name: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of a topic from the beginning up to its current end: (key, value)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata of every topic
        partitions = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[tuple[bytes | None, bytes]] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        await consumer.stop()


@dataclass
class TopicLog:
    """A topic's messages, each once (by message id), and how many were published again."""

    messages: list[Envelope]
    republished: int
    unreadable: int


async def read_messages(settings: RuntimeSettings, topic: topics.Topic) -> TopicLog:
    seen: set[str] = set()
    messages, republished, unreadable = [], 0, 0
    for _, value in await read_topic(settings, topic.name):
        try:
            message = topic.parse(value)
        except ValidationError:
            unreadable += 1
            continue
        if message.message_id in seen:
            republished += 1
            continue
        seen.add(message.message_id)
        messages.append(message)
    return TopicLog(messages, republished, unreadable)


async def partition_lag(settings: RuntimeSettings, group: str, topic: str) -> str:
    """`partition: committed/end` for one group and topic, to show where a lag (or a negative one) sits."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
        committed = [await consumer.committed(p) for p in partitions]
        return ", ".join(f"{p.partition}: {done}/{ends[p]}" for p, done in zip(partitions, committed, strict=True))
    finally:
        await consumer.stop()


def _log_warnings(logs: Path, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per process: warning and error lines of its log, counted by event."""
    found: dict[str, dict[str, int]] = {}
    for name in names:
        path = logs / f"{name}.log"
        counts: Counter[str] = Counter()
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    if "Traceback" in line or "Error" in line:
                        counts["(not json) " + line[:80]] += 1
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                    counts[f"{entry.get('level')}: {entry.get('event')}"] += 1
        found[name] = dict(counts.most_common(8))
    return found


#: The events that close a prescription's hold on stock, one of them per reserved prescription.
CLOSING_EVENTS = ("StockDelivered", "StockReleased", "StockQuarantined")
#: The events that move stock held for a prescription (their movements say from where to where).
HOLD_EVENTS = (
    inv.StockReserved,
    inv.StockDispatched,
    inv.StockReturned,
    inv.StockReleased,
    inv.StockQuarantined,
    inv.StockDelivered,
)


def owner_agrees(
    stage: Stage,
    delivery: DeliveryState | None,
    allocation: AllocationState | None,
    verdict: VerdictState | None,
) -> bool:
    """The service that decided a terminal stage recorded the same outcome."""
    match stage:
        case Stage.DELIVERED:
            return delivery is DeliveryState.DELIVERED
        case Stage.UNDELIVERABLE:
            return delivery is DeliveryState.UNDELIVERABLE
        case Stage.OUT_OF_STOCK:
            return allocation is AllocationState.OUT_OF_STOCK
        case Stage.REJECTED:
            return verdict is VerdictState.REJECTED
        case Stage.CANCELLED:
            return verdict is VerdictState.CANCELLED and delivery in (None, DeliveryState.CANCELLED)
    return False  # not a terminal stage


def expected_closing(stage: Stage, *, reserved: bool, travelled: bool) -> dict[str, int]:
    """How the stock held for a prescription must have left the hold, by its terminal stage: to the
    patient; back to the shelf if the goods never left; to quarantine if they travelled."""
    if stage is Stage.DELIVERED:
        return {"StockDelivered": 1}
    if stage in (Stage.UNDELIVERABLE, Stage.CANCELLED) and reserved:
        return {"StockQuarantined": 1} if travelled else {"StockReleased": 1}
    return {}


# --- the run ---------------------------------------------------------------------------------------


class ChaosRun:
    def __init__(
        self,
        stack: DevStack,
        *,
        prescriptions: int,
        kill_every_s: tuple[float, float],
        seed: int,
        rate: float,
        faulty_share: float,
        kill_after_publish_s: float,
        kill_until_terminal: float,
        settle_timeout_s: float,
        couriers: int,
        progress: Progress,
    ) -> None:
        self.stack = stack
        self.settings = stack.runtime_settings()
        self.count = prescriptions
        self.kill_every_s = kill_every_s
        self.seed = seed
        self.rate = rate
        self.faulty_share = faulty_share
        self.kill_after_publish_s = kill_after_publish_s
        self.kill_until_terminal = kill_until_terminal
        self.settle_timeout_s = settle_timeout_s
        self.couriers = couriers
        self.progress = progress
        self.rng = random.Random(seed)
        self.client = connect(self.settings.mongo_url.get_secret_value())
        self.db = self.client[self.settings.mongo_database]
        self.consultation = ConsultationStorage(self.db)
        self.prescription = PrescriptionStorage(self.db)
        self.inventory = InventoryStorage(self.db)
        self.courier = CourierStorage(self.db)
        self.restocked: Counter[Shelf] = Counter()
        self.lots: defaultdict[Shelf, list[str]] = defaultdict(list)
        self.adjustments: list[inv.AdjustmentRequested] = []
        self.submitted = 0

    async def publish_commands(self, commands: list[inv.RestockRequested] | list[inv.AdjustmentRequested]) -> None:
        await bus.publish(self.settings, *commands)
        for command in commands:
            if isinstance(command, inv.RestockRequested):
                shelf = (command.warehouse_id, command.drug_code)
                self.restocked[shelf] += command.quantity
                if command.lot_id not in self.lots[shelf]:
                    self.lots[shelf].append(command.lot_id)
            else:
                self.adjustments.append(command)

    async def seed_data(self, demand: Counter[Shelf]) -> None:
        """Formulary, prescribers and interactions as staff load them; the first `couriers` of the
        roster with room for every delivery; the warehouses registered (before any restock: inventory
        refuses stock for a warehouse it does not know; both go by warehouse id, so in order) and
        the opening stock."""
        await load_reference_data(self.db, couriers=self.couriers, courier_capacity=UNLIMITED_CAPACITY)
        await bus.publish(self.settings, *warehouse_registrations(requested_by="opening stock count"))
        await self.publish_commands(_restocks(demand, OPENING_SHARE, "opening stock count", 0))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            warehouses = await self.inventory.all_warehouses()
            received = {(w.warehouse_id, d): s.received for w in warehouses for d, s in w.stock.items()}
            if all(received.get(k, 0) >= q for k, q in self.restocked.items()):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError("the opening stock did not arrive within 120 s")

    async def submit(self, messages: list[PrescriptionSubmitted], demand: Counter[Shelf]) -> None:
        rounds = {round(share * len(messages)): number for number, share in enumerate(RESTOCK_ROUNDS, start=1)}
        async with bus.producer(self.settings) as producer:
            started = time.monotonic()
            for index, message in enumerate(messages):
                if (number := rounds.get(index)) is not None:
                    await self.publish_commands(
                        _restocks(demand, RESTOCK_SHARE, "delivery from the wholesaler", number)
                    )
                    await self.publish_commands(_adjustments(self.lots, self.rng, number))
                if (delay := started + index / self.rate - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                await bus.publish_all(producer, [message], self.settings)
                self.submitted += 1

    async def terminal_count(self) -> tuple[int, int]:
        """(terminal, with a status). Indexed finds and the collection size only: a count_documents
        with a filter is a full scan on the dev database, and would slow the system it measures."""
        collection = self.db[self.consultation.status.name]
        seen = await collection.estimated_document_count()
        open_stages = [stage.value for stage in Stage if stage not in TERMINAL]
        unfinished = len(await collection.find({"state.stage": {"$in": open_stages}}, {"_id": 1}).to_list(None))
        return seen - unfinished, seen

    async def outbox_pending(self) -> int:
        pending = 0
        for name in await self.db.list_collection_names():
            pending += len(await self.db[name].find({"outbox_pending": {"$gt": 0}}, {"_id": 1}).to_list(None))
        return pending

    async def watch(self, started: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=10)
            terminal, seen = await self.terminal_count()
            self.progress(
                f"{time.monotonic() - started:5.0f}s  submitted {self.submitted}/{self.count}  "
                f"with status {seen}  terminal {terminal}"
            )

    async def keep_killing(self) -> None:
        """After the last prescription is published, the killer goes on while the backlog flows
        through the services: until this share is terminal, or for at most kill_after_publish_s."""
        deadline = time.monotonic() + self.kill_after_publish_s
        while time.monotonic() < deadline:
            terminal, _ = await self.terminal_count()
            if terminal >= self.kill_until_terminal * self.count:
                return
            await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))

    async def settle(self, report: ChaosReport) -> None:
        """Until every prescription is terminal, every group has caught up and no outbox holds events
        (twice in a row, a few seconds apart). Gives up early when nothing changes any more."""
        deadline = time.monotonic() + self.settle_timeout_s
        calm = 0
        last_change, last_seen = time.monotonic(), None
        while time.monotonic() < deadline:
            terminal, seen = await self.terminal_count()
            lags: dict[str, int] = {}
            pending = -1
            if terminal >= self.count:
                lags = {f"{g.group} ← {g.topic}": g.lag for g in await consumer_lag(self.settings)}
                pending = await self.outbox_pending()
                report.final_lag, report.outbox_pending = lags, pending
                calm = calm + 1 if not any(lags.values()) and not pending else 0
                if calm >= 2:
                    report.settled = True
                    return
            now_seen = (terminal, seen, tuple(sorted(lags.items())), pending)
            if now_seen != last_seen:
                last_change, last_seen = time.monotonic(), now_seen
            elif time.monotonic() - last_change > STALL_S:
                self.progress(f"nothing moved for {STALL_S:.0f}s: giving up waiting")
                break
            await asyncio.sleep(3)
        report.final_lag = {f"{g.group} ← {g.topic}": g.lag for g in await consumer_lag(self.settings)}
        report.outbox_pending = await self.outbox_pending()
        for key, lag in report.final_lag.items():
            if lag:
                group, _, topic = key.partition(" ← ")
                report.lag_detail[key] = await partition_lag(self.settings, group, topic)

    async def run(self) -> ChaosReport:
        messages = list(county_prescriptions(self.count, seed=self.seed, faulty_share=self.faulty_share, patients=None))
        reference = Reference.load()
        demand = _demand(messages, reference)
        ids = [m.prescription.prescription_id for m in messages]
        unreachable = set(self.rng.sample(ids, k=max(1, len(ids) // 50)))
        now = datetime.now(UTC)
        report = ChaosReport(
            prescriptions=len(messages),
            faulty_submitted=sum(not reference.approvable(m, now) for m in messages),
            rate_per_s=self.rate,
            seed=self.seed,
            logs_dir=str(self.stack.logs),
        )
        started = time.monotonic()
        self.progress(f"starting {', '.join(PROCESSES)}")
        await asyncio.to_thread(self.stack.start_services, *PROCESSES)
        await self.seed_data(demand)
        self.progress(f"seeded; publishing {len(messages)} prescriptions at {self.rate}/s")

        couriers = Couriers(self.seed, unreachable)
        simulator = CourierSimulator(self.settings, couriers.plan_for, delay_s=lambda: self.rng.uniform(0.05, 0.3))
        killer = Killer(
            self.stack, PROCESSES, every=self.kill_every_s, rng=random.Random(self.seed + 1), progress=self.progress
        )
        stop_watch = asyncio.Event()
        watcher = asyncio.create_task(self.watch(started, stop_watch))
        simulator.start()
        try:
            killer.start()
            publish_started = time.monotonic()
            await self.submit(messages, demand)
            report.publish_s = round(time.monotonic() - publish_started, 1)
            self.progress(
                f"all published in {report.publish_s}s; killing until {self.kill_until_terminal:.0%} are terminal "
                f"(at most {self.kill_after_publish_s:.0f}s more)"
            )
            await self.keep_killing()
            await killer.stop()
            self.progress(f"killer stopped after {killer.kills.total()} kills; waiting for the system to settle")
            settle_started = time.monotonic()
            await self.settle(report)
            report.settle_s = round(time.monotonic() - settle_started, 1)
        finally:
            stop_watch.set()
            await killer.stop()
            await simulator.stop()
            await asyncio.gather(watcher, return_exceptions=True)
        report.duration_s = round(time.monotonic() - started, 1)
        report.kills = dict(sorted(killer.kills.items()))
        report.unexpected_exits = dict(killer.unexpected_exits)
        report.restart_ready_s = sorted(killer.ready_s)
        report.restarts_not_ready = killer.not_ready
        await self.check(report, ids, couriers)
        report.log_warnings = _log_warnings(self.stack.logs, PROCESSES)
        return report

    # --- the checks ----------------------------------------------------------------------------------

    async def check(self, report: ChaosReport, ids: list[str], couriers: Couriers) -> None:
        statuses = {s.prescription_id: s for s in await self.consultation.status.find()}
        allocations: dict[str, Allocation] = {a.prescription_id: a for a in await self.inventory.allocations.find()}
        deliveries: dict[str, Delivery] = {d.prescription_id: d for d in await self.courier.deliveries.find()}
        verdicts: dict[str, Verdict] = {v.prescription_id: v for v in await self.prescription.verdicts.find()}
        warehouses: list[Warehouse] = await self.inventory.all_warehouses()
        logs = {
            t.name: await read_messages(self.settings, t)
            for t in (topics.INVENTORY_EVENTS, topics.COURIER_DISPATCH, topics.COURIER_DELIVERIES)
        }
        report.republished_events = {name: log.republished for name, log in logs.items()}
        for topic in topics.ALL_TOPICS:
            if dead := len(await read_topic(self.settings, topic.dead_letter_topic)):
                report.dead_letters[topic.dead_letter_topic] = dead

        self._check_outcomes(report, ids, statuses, allocations, deliveries, verdicts)
        events = logs[topics.INVENTORY_EVENTS.name].messages
        delivery_events = logs[topics.COURIER_DELIVERIES.name].messages
        travelled = {e.prescription_id for e in delivery_events if isinstance(e, c.DeliveryPickedUp)}
        self._check_stock(report, statuses, allocations, warehouses, events, travelled)
        await self._check_ledger(report, warehouses)
        self._check_reservations(report, statuses, allocations, events, delivery_events, travelled)
        self._check_dispatches(report, couriers, logs[topics.COURIER_DISPATCH.name].messages, delivery_events)

    def _check_outcomes(
        self,
        report: ChaosReport,
        ids: list[str],
        statuses: dict[str, PrescriptionStatus],
        allocations: dict[str, Allocation],
        deliveries: dict[str, Delivery],
        verdicts: dict[str, Verdict],
    ) -> None:
        terminal: Counter[str] = Counter()
        non_terminal: Counter[str] = Counter()
        for rx in ids:
            status = statuses.get(rx)
            if status is None:
                report.missing_status.append(rx)
                continue
            (terminal if status.terminal else non_terminal)[status.stage.value] += 1
            ends = sorted({h.stage.value for h in status.history if h.stage in TERMINAL})
            if len(ends) > 1:
                report.several_terminal_states[rx] = ends
            if not status.terminal:
                continue
            delivery_state = getattr(deliveries.get(rx), "state", None)
            allocation_state = getattr(allocations.get(rx), "state", None)
            verdict_state = getattr(verdicts.get(rx), "state", None)
            if not owner_agrees(status.stage, delivery_state, allocation_state, verdict_state):
                report.owner_disagrees[rx] = (
                    f"status {status.stage.value}; delivery {delivery_state}, allocation {allocation_state}, "
                    f"verdict {verdict_state}"
                )
        report.terminal = dict(terminal.most_common())
        report.non_terminal = dict(non_terminal.most_common())

    def _check_stock(
        self,
        report: ChaosReport,
        statuses: dict[str, PrescriptionStatus],
        allocations: dict[str, Allocation],
        warehouses: list[Warehouse],
        events: list[Envelope],
        travelled: set[str],
    ) -> None:
        delivered_lines: Counter[Shelf] = Counter()
        came_back_lines: Counter[Shelf] = Counter()
        for rx, status in statuses.items():
            allocation = allocations.get(rx)
            if allocation is None or not allocation.warehouse_id:
                continue
            if status.stage is Stage.DELIVERED:
                target = delivered_lines
            elif status.stage in (Stage.UNDELIVERABLE, Stage.CANCELLED) and rx in travelled:
                target = came_back_lines
            else:
                continue
            for drug, quantity in allocation.lines.items():
                target[allocation.warehouse_id, drug] += quantity
        adjusted: Counter[Shelf] = Counter()
        answers: Counter[str] = Counter()
        for event in events:
            if isinstance(event, inv.StockAdjusted):
                adjusted[event.warehouse_id, event.drug_code] += event.delta
            if isinstance(event, inv.StockAdjusted | inv.StockCommandRefused) and event.causation_id:
                answers[event.causation_id] += 1
        report.restocks_sent = sum(1 for _ in self.restocked)
        report.adjustments_sent = len(self.adjustments)
        report.adjustments_unanswered = [a.message_id for a in self.adjustments if answers[a.message_id] == 0]
        report.adjustments_answered_twice = [a.message_id for a in self.adjustments if answers[a.message_id] > 1]
        keys = sorted(
            {(w.warehouse_id, d) for w in warehouses for d in w.stock}
            | set(self.restocked)
            | set(delivered_lines)
            | set(came_back_lines)
        )
        by_id = {w.warehouse_id: w for w in warehouses}
        for warehouse_id, drug in keys:
            warehouse = by_id.get(warehouse_id) or Warehouse(warehouse_id=warehouse_id)
            level = warehouse.level(drug)
            report.stock.append(
                StockRow(
                    warehouse_id=warehouse_id,
                    drug_code=drug,
                    **{name: getattr(level, name) for name in Figures.model_fields},
                    restocked_sent=self.restocked[warehouse_id, drug],
                    adjusted_applied=adjusted[warehouse_id, drug],
                    delivered_expected=delivered_lines[warehouse_id, drug],
                    quarantined_expected=came_back_lines[warehouse_id, drug],
                )
            )
        for warehouse in warehouses:
            for lot_id, lot in sorted(warehouse.lots.items()):
                report.lots_checked += 1
                if not lot.balanced:
                    report.unbalanced_lots.append(f"{warehouse.warehouse_id}/{lot_id}: {_figures(lot)}")
        report.open_holds = [f"{w.warehouse_id}/{rx}" for w in warehouses for rx in w.holds]

    async def _check_ledger(self, report: ChaosReport, warehouses: list[Warehouse]) -> None:
        """Every lot's figures, recomputed from the ledger's movements alone, match the warehouse documents."""
        entries = await self.inventory.movements()
        report.ledger_entries = len(entries)
        recomputed = recompute_lots(entries)
        held = current_lots(warehouses)
        for warehouse_id, lot_id in sorted(set(recomputed) | set(held)):
            from_ledger = recomputed.get((warehouse_id, lot_id), Figures())
            in_document = held.get((warehouse_id, lot_id), Figures())
            if from_ledger != in_document:
                report.ledger_mismatches[f"{warehouse_id}/{lot_id}"] = (
                    f"ledger {_figures(from_ledger)}; document {_figures(in_document)}"
                )

    def _check_reservations(
        self,
        report: ChaosReport,
        statuses: dict[str, PrescriptionStatus],
        allocations: dict[str, Allocation],
        events: list[Envelope],
        delivery_events: list[Envelope],
        travelled: set[str],
    ) -> None:
        reserved: defaultdict[str, list[str]] = defaultdict(list)
        refused: set[str] = set()
        moved: defaultdict[str, Counter[str]] = defaultdict(Counter)
        held: defaultdict[str, Counter[str]] = defaultdict(Counter)  # units per bucket, by the movements
        for event in events:
            match event:
                case inv.StockReserved():
                    reserved[event.prescription_id].append(event.warehouse_id)
                case inv.ReservationFailed():
                    refused.add(event.prescription_id)
                case (
                    inv.StockDispatched()
                    | inv.StockReturned()
                    | inv.StockReleased()
                    | inv.StockQuarantined()
                    | inv.StockDelivered()
                ):
                    moved[event.prescription_id][type(event).__name__] += 1
            if isinstance(event, HOLD_EVENTS):
                for movement in event.movements:
                    held[event.prescription_id][movement.source] -= movement.quantity
                    held[event.prescription_id][movement.target] += movement.quantity
        pickups: Counter[str] = Counter()
        for event in delivery_events:
            if isinstance(event, c.DeliveryPickedUp):
                pickups[event.prescription_id] += 1
        report.double_reservations = {rx: len(w) for rx, w in reserved.items() if len(w) > 1}
        report.reserved_and_refused = sorted(rx for rx in reserved if rx in refused)
        for rx, allocation in allocations.items():
            published = reserved.get(rx, [])
            if allocation.state is AllocationState.RESERVED and published != [allocation.warehouse_id]:
                report.allocation_mismatches[rx] = f"reserved at {allocation.warehouse_id}, published {published}"
            elif allocation.state is not AllocationState.RESERVED and published:
                report.allocation_mismatches[rx] = f"allocation {allocation.state.value}, published {published}"
        for rx, counts in moved.items():
            if counts["StockDispatched"] > pickups[rx]:
                report.double_dispatches[rx] = f"{counts['StockDispatched']} dispatched, {pickups[rx]} pickups"
        for rx, status in statuses.items():
            if not status.terminal:
                continue
            counts = moved.get(rx, Counter())
            expected = expected_closing(status.stage, reserved=rx in reserved, travelled=rx in travelled)
            closing = {kind: counts[kind] for kind in CLOSING_EVENTS if counts[kind]}
            left = {bucket: units for bucket in ("reserved", "dispatched") if (units := held[rx][bucket])}
            if closing != expected or left:
                report.net_dispatch_mismatches[rx] = (
                    f"{status.stage.value}: expected {expected or 'no stock moved'}, got {closing or 'none'}"
                    + (f", still held {left}" if left else "")
                    + f" (dispatched {counts['StockDispatched']}, returned {counts['StockReturned']})"
                )

    def _check_dispatches(
        self,
        report: ChaosReport,
        couriers: Couriers,
        offers: list[Envelope],
        delivery_events: list[Envelope],
    ) -> None:
        by_dispatch: defaultdict[str, list[c.DispatchOffered]] = defaultdict(list)
        for offer in offers:
            if isinstance(offer, c.DispatchOffered):
                by_dispatch[offer.dispatch_id].append(offer)
        report.offers_total = sum(len(o) for o in by_dispatch.values())
        report.dispatch_ids_reused = {
            d: [f"{o.message_id} → {o.courier_id}" for o in found] for d, found in by_dispatch.items() if len(found) > 1
        }
        report.offers_acted_on = len(couriers.acted)
        report.duplicate_offers_ignored = len(couriers.duplicates)
        report.duplicate_offers_republished = sum(
            1 for o in couriers.duplicates if o.message_id == couriers.acted[o.dispatch_id].message_id
        )
        report.wrong_codes_planned = couriers.wrong_codes
        report.codes_rejected = sum(isinstance(e, c.DeliveryCodeRejected) for e in delivery_events)
        acted_on: defaultdict[str, Counter[str]] = defaultdict(Counter)
        acting = c.CourierAssigned | c.DeliveryAccepted | c.DeliveryPickedUp | c.DeliveryCompleted | c.DeliveryFailed
        for event in delivery_events:
            if isinstance(event, acting):
                acted_on[event.dispatch_id][type(event).__name__] += 1
        for dispatch_id, counts in acted_on.items():
            if twice := {k: v for k, v in counts.items() if v > 1}:
                report.dispatches_acted_twice[dispatch_id] = ", ".join(f"{k} ×{v}" for k, v in twice.items())
        for dispatch_id in couriers.acted:
            counts = acted_on.get(dispatch_id, Counter())
            if counts["DeliveryCompleted"] + counts["DeliveryFailed"] != 1:
                report.offers_without_outcome.append(dispatch_id)

    def close(self) -> None:
        self.client.close()


async def run_chaos(
    stack: DevStack,
    *,
    prescriptions: int = 2000,
    kill_every_s: tuple[float, float] = (3.0, 6.0),
    seed: int = 7,
    rate: float = 40.0,
    faulty_share: float = 0.03,
    kill_after_publish_s: float = 300.0,
    kill_until_terminal: float = 0.85,
    settle_timeout_s: float = 600.0,
    couriers: int = 3,
    progress: Progress = _quiet,
) -> ChaosReport:
    """Run the six processes on `stack` (broker and database already up) under load and kills, then
    check every guarantee. The service processes are stopped at the end; the stack stays up."""
    run = ChaosRun(
        stack,
        prescriptions=prescriptions,
        kill_every_s=kill_every_s,
        seed=seed,
        rate=rate,
        faulty_share=faulty_share,
        kill_after_publish_s=kill_after_publish_s,
        kill_until_terminal=kill_until_terminal,
        settle_timeout_s=settle_timeout_s,
        couriers=couriers,
        progress=progress,
    )
    try:
        return await run.run()
    finally:
        run.close()
        await asyncio.gather(*(asyncio.to_thread(stack.stop, name) for name in PROCESSES))


# --- showing it ------------------------------------------------------------------------------------


def render(report: ChaosReport, console: Console | None = None) -> None:
    console = console or Console()
    run = Table(title="chaos run", show_header=False)
    run.add_row(
        "prescriptions",
        f"{report.prescriptions} ({report.faulty_submitted} the checks reject) at {report.rate_per_s}/s",
    )
    run.add_row(
        "duration",
        f"{report.duration_s}s (publishing {report.publish_s}s, settling after the kills {report.settle_s}s)",
    )
    ready = report.restart_ready_s
    run.add_row(
        "kills",
        f"{report.total_kills}: "
        + ", ".join(f"{k} {v}" for k, v in report.kills.items())
        + f"  · per service: {report.kills_per_service()}",
    )
    if ready:
        run.add_row("restart → ready", f"median {ready[len(ready) // 2]}s, max {ready[-1]}s over {len(ready)} restarts")
    run.add_row("exited on their own", str(report.unexpected_exits or 0))
    run.add_row("settled", "yes" if report.settled else "[red]NO[/]")
    console.print(run)

    outcomes = Table(title="how each prescription ended")
    outcomes.add_column("state")
    outcomes.add_column("prescriptions", justify="right")
    for state, count in report.terminal.items():
        outcomes.add_row(state, str(count))
    for state, count in report.non_terminal.items():
        outcomes.add_row(f"[red]{state} (not terminal)[/]", str(count))
    if report.missing_status:
        outcomes.add_row("[red]no status at all[/]", str(len(report.missing_status)))
    console.print(outcomes)

    stock = Table(
        title="stock books: received + adjusted = available + reserved + dispatched + quarantined + expired + delivered"
    )
    columns = ("received", "adjusted", "available", "reserved", "dispatched", "quarantined", "expired", "delivered")
    for column in ("warehouse", "drug", *columns, "delivered rx", "came back"):
        stock.add_column(column, justify="left" if column in ("warehouse", "drug") else "right")
    stock.add_column("balanced")
    for r in report.stock:
        stock.add_row(
            r.warehouse_id,
            r.drug_code,
            *(str(getattr(r, column)) for column in columns),
            str(r.delivered_expected),
            str(r.quarantined_expected),
            "[green]yes[/]" if r.balanced else "[red]NO[/]",
        )
    console.print(stock)

    checks = Table(title="guarantees")
    checks.add_column("check")
    checks.add_column("figure", justify="right")
    rows = [
        ("prescriptions not terminal", sum(report.non_terminal.values()) + len(report.missing_status)),
        ("prescriptions with several terminal states", len(report.several_terminal_states)),
        ("status disagreeing with the owning service", len(report.owner_disagrees)),
        ("stock rows not balanced", sum(not r.balanced for r in report.stock)),
        ("stock rows: received ≠ restocked", sum(r.received != r.restocked_sent for r in report.stock)),
        ("stock rows: adjusted ≠ adjustments", sum(r.adjusted != r.adjusted_applied for r in report.stock)),
        ("stock rows: delivered ≠ delivered rx", sum(r.delivered != r.delivered_expected for r in report.stock)),
        ("stock rows: quarantined ≠ came back", sum(r.quarantined != r.quarantined_expected for r in report.stock)),
        ("stock still reserved (units)", sum(r.reserved for r in report.stock)),
        ("stock still on the road (units)", sum(r.dispatched for r in report.stock)),
        (f"lots not balanced (of {report.lots_checked})", len(report.unbalanced_lots)),
        (f"lots the ledger does not recompute ({report.ledger_entries} entries)", len(report.ledger_mismatches)),
        ("holds still open", len(report.open_holds)),
        ("adjustments not answered once", len(report.adjustments_unanswered + report.adjustments_answered_twice)),
        ("prescriptions reserved twice", len(report.double_reservations)),
        ("prescriptions reserved and refused", len(report.reserved_and_refused)),
        ("allocations ≠ reservations published", len(report.allocation_mismatches)),
        ("dispatched more often than picked up", len(report.double_dispatches)),
        ("stock movements ≠ outcome", len(report.net_dispatch_mismatches)),
        ("dispatch ids on more than one offer", len(report.dispatch_ids_reused)),
        ("dispatches acted on twice (courier service)", len(report.dispatches_acted_twice)),
        ("offers acted on without one outcome", len(report.offers_without_outcome)),
        ("wrong delivery codes not refused once", abs(report.wrong_codes_planned - report.codes_rejected)),
        ("consumer lag (messages)", sum(report.final_lag.values())),
        ("outboxes with pending events", report.outbox_pending),
    ]
    for name, figure in rows:
        checks.add_row(name, f"[green]{figure}[/]" if not figure else f"[red]{figure}[/]")
    console.print(checks)

    info = Table(title="at-least-once at work", show_header=False)
    info.add_row("offers on courier.dispatch.v1 (distinct)", str(report.offers_total))
    info.add_row("offers the couriers acted on", str(report.offers_acted_on))
    info.add_row(
        "offers seen again and ignored",
        f"{report.duplicate_offers_ignored} ({report.duplicate_offers_republished} the same message re-published)",
    )
    info.add_row("wrong delivery codes read out / refused", f"{report.wrong_codes_planned} / {report.codes_rejected}")
    info.add_row("events re-published (same message id)", str(report.republished_events))
    info.add_row("restocks / adjustments sent", f"{report.restocks_sent} / {report.adjustments_sent}")
    info.add_row("dead letters", str(report.dead_letters or 0))
    console.print(info)

    violations = report.violations()
    if violations:
        console.print("[bold red]guarantees violated:[/]")
        for violation in violations:
            console.print(f"  • {violation}")
        console.print(f"service logs: {report.logs_dir}")
    else:
        console.print("[bold green]every guarantee held[/]")


# --- command line ------------------------------------------------------------------------------------


def main(
    prescriptions: int = typer.Option(2000, help="How many prescriptions the hospital publishes"),
    rate: float = typer.Option(40.0, help="Prescriptions per second"),
    kill_min: float = typer.Option(3.0, help="Least seconds between two kills"),
    kill_max: float = typer.Option(6.0, help="Most seconds between two kills"),
    seed: int = typer.Option(7, help="Seed of the county, the couriers and the killer"),
    settle_timeout: float = typer.Option(600.0, help="How long to wait for the system to settle after the kills"),
    report_json: Path | None = typer.Option(None, help="Also write the report to this JSON file"),
    keep: bool = typer.Option(False, help="Keep the temporary stack directory (logs) even if all went well"),
) -> None:
    """Bring up a throw-away dev stack on free ports, run the chaos test on it, print the figures."""
    console = Console()
    home = Path(tempfile.mkdtemp(prefix="pharmacy-chaos-"))
    stack = DevStack(home=home, kafka_port=free_port(), mongo_port=free_port())
    console.print(f"dev stack in {home} (broker {stack.bootstrap}, database {stack.mongo_url})")
    stack.start_infra()
    try:
        report = asyncio.run(
            run_chaos(
                stack,
                prescriptions=prescriptions,
                kill_every_s=(kill_min, kill_max),
                seed=seed,
                rate=rate,
                settle_timeout_s=settle_timeout,
                progress=lambda line: console.print(f"[dim]{line}[/]"),
            )
        )
    finally:
        stack.stop_all()
    render(report, console)
    if report_json is not None:
        report_json.write_text(json.dumps(report.to_json(), indent=2, default=str))
    if report.violations() or keep:
        console.print(f"logs kept in {stack.logs}")
        raise typer.Exit(1 if report.violations() else 0)
    shutil.rmtree(home, ignore_errors=True)


app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
