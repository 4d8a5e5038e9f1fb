"""`make bench`: how fast prescriptions go end to end on the dev stack, and how close that is to
what the broker allows.

Each run has two phases, each on a dev stack of its own (free ports, home under `.devstack/bench`,
the four services as processes; formulary, prescribers, interactions, couriers with room for every
delivery, the warehouses and 10^7 units of every drug they stock seeded), so no phase inherits
another's backlog, broker memory or database size. Prescription ids also differ per phase. Only
prescriptions the checks approve are sent (none faulty, none for a patient allergic to the drug).
Simulated couriers deliver every offer at once, with the patient's delivery code.

1. **Throughput.** N signed prescriptions (none faulty) published at once through one producer;
   prescriptions per second from the first submission until N distinct prescriptions have been
   offered to a courier (`DispatchOffered` on `courier.dispatch.v1`), and until N were delivered.
   Once every consumer group has caught up, the documents the services wrote are counted (writes
   per prescription, per collection). Then, on the same broker with the services stopped, the
   bare four-hop relay (`relay_ceiling.py`), the ceiling any four-hop pipeline here could reach;
   ours / ceiling. And the stored relay: the same four hops, each also storing every message as a
   document in the same database, the ceiling of a pipeline whose four services persist each
   prescription once. The database's CPU per document it stored is the least a write costs here.
2. **Latency.** Prescriptions submitted at a fixed rate (absolute schedule, no drift); for each,
   submission → first dispatch offer consumed. p50, p95, p99, max; those not dispatched within
   `--timeout` of their submission are counted as missing, never dropped.

Peak RSS of every process is sampled every 0.2 s, and CPU time per process over the throughput
window shows where the work goes. Stage counts (accepted, approved, reserved, dispatched,
delivered) are read from the topics, so a slow run shows which service holds the backlog.
Medians over `--runs` runs are reported against the targets; every run's figures are kept in the
JSON. The stack is always torn down, also on Ctrl-C, SIGTERM or an error.

`python -m services.ops.bench --count 200 --paced-seconds 3 --rate 50 --runs 1` is a quick look.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerClosed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import PrescriptionAccepted
from pharmacy_contracts.prescription import PrescriptionApproved, PrescriptionRejected
from pharmacy_contracts.topics import TOPIC_OF_MESSAGE
from services.cli import bus
from services.runtime.documents import connect
from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings

from .bench_plot import LatencySeries, plot_latencies
from .demo import STOCK
from .devstack import SERVICES, DevStack
from .lag import consumer_lag
from .reference import UNLIMITED_CAPACITY, Reference, load_reference_data
from .relay_ceiling import MAX_BATCH_BYTES, RelayResult, measure_relay_ceiling
from .simulation import CourierSimulator, Plan, county_prescriptions, restocks, warehouse_registrations

T = TypeVar("T")

UNITS_PER_DRUG = 10**7  # per warehouse and drug: no run can empty a shelf
SAMPLE_EVERY_S = 0.2
#: The bench's reader of the topics shares the machine with what it measures. Measured on the dev
#: broker (Tansu 0.6, idle, nothing else running): with fetch_max_wait_ms 5 / 50 / 500 a record is
#: read ~3 / ~8 / ~115 ms after it was confirmed, and one idle reader of the watched topics costs
#: the broker 0.31 / 0.10 / 0.02 cores. 50 ms adds a few ms to each latency and leaves the broker's
#: CPU to the pipeline.
WATCH_FETCH_MAX_WAIT_MS = 50
SEED_TIMEOUT_S = 60.0
WARMUP_TIMEOUT_S = 90.0
#: After a phase, how long the simulated couriers may take to finish the trips they started (their
#: reports go out through a producer that closes with the phase).
COURIER_GRACE_S = 15.0
#: How long the services may take to catch up (projections trail the pipeline) before writes are counted.
CATCH_UP_TIMEOUT_S = 120.0
INFRASTRUCTURE = ("broker", "database")
BENCH_PROCESS = "bench (this process)"


@dataclass(frozen=True)
class Target:
    """A bound from the issue (on this 2-core machine, dev stack)."""

    bound: float
    at_least: bool  # True: the figure must reach the bound; False: it must stay under it
    unit: str

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.bound if self.at_least else value <= self.bound

    def __str__(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.bound:,.0f} {self.unit}"


THROUGHPUT_TARGET = Target(1500, at_least=True, unit="rx/s")
P99_TARGET = Target(250, at_least=False, unit="ms")
RSS_TARGET = Target(150, at_least=False, unit="MB")  # per service process


class BenchError(Exception):
    """A phase could not be measured (the message says why); the other phases and runs go on."""


# --- statistics: plain functions ---------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolating linearly between the two nearest ranks (the
    same as numpy's default). None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    below, above = math.floor(position), math.ceil(position)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are known (None: a run that could not measure it)."""
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def rate_per_s(count: int, seconds: float | None) -> float | None:
    return count / seconds if count and seconds and seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def scheduled_at(start: float, rate: float, index: int) -> float:
    """When the index-th paced submission is due: from the start, never from the previous send,
    so a late send does not push every later one back."""
    return start + index / rate


def achieved_rate(send_times: Iterable[float]) -> float | None:
    """Submissions per second over the span they were sent in (n sends span n-1 intervals)."""
    ordered = sorted(send_times)
    if len(ordered) < 2 or ordered[-1] == ordered[0]:
        return None
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def latency_summary(latencies_ms: Sequence[float], missing: int) -> dict[str, float | int | None]:
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=None),
        "arrived": len(latencies_ms),
        "missing": missing,
    }


def latencies_within(
    submitted_at: Mapping[str, float], dispatched_at: Mapping[str, float], timeout_s: float
) -> tuple[list[float], int]:
    """Latency in ms of every prescription dispatched within `timeout_s` of its submission, and how
    many were not (those are missing: a late arrival does not count as a latency)."""
    latencies = []
    for prescription_id, sent in submitted_at.items():
        arrived = dispatched_at.get(prescription_id)
        if arrived is not None and arrived - sent <= timeout_s:
            latencies.append((arrived - sent) * 1000)
    return latencies, len(submitted_at) - len(latencies)


def stage_window(arrivals: Mapping[str, float], ids: Sequence[str], started: float, waited_until: float) -> float:
    """Seconds from the first submission until the last of `ids` arrived, or, if some never did,
    until the bench stopped waiting: a stalled stage must not look fast for what it did early on."""
    times = [arrivals[i] for i in ids if i in arrivals]
    return (max(times) if len(times) == len(ids) and times else waited_until) - started


def hop_latencies_ms(
    submitted_at: Mapping[str, float], first_seen: Mapping[str, Mapping[str, float]], stages: Sequence[str]
) -> dict[str, list[float]]:
    """Per stage, ms from the previous stage (the first: from submission) for every prescription
    seen at both: the share of the end-to-end latency each service adds. Stages are observed by one
    reader, so a stage fetched in the same batch as its predecessor shows 0 and, read from another
    partition a fetch earlier, a few ms below 0."""
    hops: dict[str, list[float]] = {}
    previous = submitted_at
    for stage in stages:
        current = first_seen[stage]
        hops[stage] = [(current[i] - previous[i]) * 1000 for i in submitted_at if i in current and i in previous]
        previous = current
    return hops


def medians(per_run: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the median over the runs that measured it."""
    metrics = sorted({name for run in per_run for name in run})
    return {name: median(run.get(name) for run in per_run) for name in metrics}


# --- what the bench sees on the topics -----------------------------------------------------------


def _type_of(message: type[Any]) -> str:
    return message.model_fields["type"].default


#: message type → (milestone, where the prescription id is). Contracts only: what each service
#: stores is its own business, and these topics are what any consumer may read.
MILESTONES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    _type_of(PrescriptionAccepted): ("accepted", lambda m: m["prescription"]["prescription_id"]),
    _type_of(PrescriptionApproved): ("approved", lambda m: m["prescription_id"]),
    _type_of(PrescriptionRejected): ("rejected", lambda m: m["prescription_id"]),
    _type_of(inv.StockReserved): ("reserved", lambda m: m["prescription_id"]),
    _type_of(inv.ReservationFailed): ("out_of_stock", lambda m: m["prescription_id"]),
    _type_of(c.DispatchOffered): ("dispatched", lambda m: m["package_id"]),
    _type_of(c.DeliveryCompleted): ("delivered", lambda m: m["prescription_id"]),
    _type_of(inv.StockRestocked): ("restocked", lambda m: f"{m['warehouse_id']}/{m['drug_code']}"),
}
WATCHED_TOPICS = sorted(
    {
        TOPIC_OF_MESSAGE[message].name
        for message in (
            PrescriptionAccepted,
            PrescriptionApproved,
            inv.StockReserved,
            c.DispatchOffered,
            c.DeliveryCompleted,
        )
    }
)
STAGES = ("accepted", "approved", "reserved", "dispatched", "delivered")  # in pipeline order
REFUSALS = ("rejected", "out_of_stock")  # the bench's prescriptions are meant never to end here
#: Who moves a prescription into each stage (the couriers are the bench's simulated ones).
STAGE_OWNERS = {
    "accepted": "consultation",
    "approved": "prescription",
    "reserved": "inventory",
    "dispatched": "courier",
    "delivered": "couriers + courier",
}


def milestone_of(raw: bytes) -> tuple[str, str] | None:
    """(milestone, prescription id) of a message on a watched topic, or None if it is no milestone."""
    try:
        message = json.loads(raw)
        milestone, id_of = MILESTONES[message["type"]]
        return milestone, id_of(message)
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class PipelineWatch:
    """When the bench first saw each prescription reach each milestone (a re-published event, as
    at-least-once delivery allows, counts once). Times are `time.monotonic()` at consumption."""

    first_seen: dict[str, dict[str, float]] = field(default_factory=lambda: {m: {} for m, _ in MILESTONES.values()})

    def observe(self, raw: bytes, seen_at: float) -> None:
        found = milestone_of(raw)
        if found is not None:
            milestone, key = found
            self.first_seen[milestone].setdefault(key, seen_at)

    def count(self, milestone: str, ids: Iterable[str]) -> int:
        seen = self.first_seen[milestone]
        return sum(1 for prescription_id in ids if prescription_id in seen)

    def counts(self, ids: Sequence[str]) -> dict[str, int]:
        """How many of `ids` reached each stage, and how many ended early (none should)."""
        return {milestone: self.count(milestone, ids) for milestone in (*STAGES, *REFUSALS)}

    async def wait_for(self, milestone: str, ids: Sequence[str], deadline: float) -> bool:
        """True once every id reached the milestone; False at the deadline."""
        while self.count(milestone, ids) < len(ids):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def follow(self, settings: RuntimeSettings) -> None:
        """Read the watched topics from their beginning until cancelled (no group: never steals)."""
        consumer = AIOKafkaConsumer(
            *WATCHED_TOPICS,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=WATCH_FETCH_MAX_WAIT_MS,
            **aiokafka_kwargs(settings),
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                seen_at = time.monotonic()
                for records in batches.values():
                    for record in records:
                        self.observe(record.value, seen_at)
        finally:
            await consumer.stop()


# --- memory and CPU of the processes -------------------------------------------------------------------


class ProcessSampler:
    """Peak RSS of each named process, sampled on a thread of its own so that a busy event loop
    cannot stretch the interval; CPU time (user + system) on demand."""

    def __init__(self, pids: Mapping[str, int], interval_s: float = SAMPLE_EVERY_S) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="rss-sampler", daemon=True)
        self.peak_rss: dict[str, int] = {}

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while not self._stopping.is_set():
            self.sample()
            self._stopping.wait(self._interval_s)

    def sample(self) -> None:
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):  # stopped meanwhile (the services stop before the relay)
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), process.memory_info().rss)

    def peak_rss_mb(self) -> dict[str, float]:
        return {name: round(rss / 2**20, 1) for name, rss in self.peak_rss.items()}

    def cpu_seconds(self) -> dict[str, float]:
        times = {}
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                cpu = process.cpu_times()
                times[name] = cpu.user + cpu.system
        return times


def cpu_share(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict[str, float]:
    """Per process: CPU seconds used between two readings, as a share of one core (1.0 = a core busy)."""
    if seconds <= 0:
        return {}
    return {name: round((after[name] - before[name]) / seconds, 3) for name in after if name in before}


# --- the stack, seeded -------------------------------------------------------------------------------


def free_port(taken: Iterable[int] = ()) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def service_names(instances: int) -> list[str]:
    return [f"{service}-{number}" for service in SERVICES for number in range(1, instances + 1)]


def fresh_stack(home: Path, service_env: Mapping[str, str]) -> DevStack:
    """A dev stack on free ports under `home`, whose old logs and pid files are cleared (a service
    counts as ready once its log says so: an old log would say it too early)."""
    kafka_port = free_port()
    stack = DevStack(
        home=home.resolve(),
        kafka_port=kafka_port,
        mongo_port=free_port(taken={kafka_port}),
        extra_env=dict(service_env),
    )
    if stack.running():
        raise BenchError(
            f"processes of an earlier bench still run under {stack.home}: "
            f"PHARMACY_DEV_HOME={stack.home} .venv/bin/pharmacy-dev down"
        )
    shutil.rmtree(stack.logs, ignore_errors=True)
    shutil.rmtree(stack.pids, ignore_errors=True)
    return stack


def stack_pids(stack: DevStack) -> dict[str, int]:
    return {name: pid for name in stack.running() if (pid := stack.pid_of(name)) is not None}


def opening_stock() -> list[inv.RestockRequested]:
    """The demo's warehouses and drugs, each with far more than any run needs."""
    lines = [(warehouse, drug, UNITS_PER_DRUG) for warehouse, drugs in STOCK.items() for drug in drugs]
    return restocks(lines, requested_by="bench opening stock")


async def seed(settings: RuntimeSettings, watch: PipelineWatch) -> None:
    """Reference data in the owning services' collections (as `pharmacy formulary load` and its
    siblings do), the roster with room for every delivery (the bench measures the pipeline, not
    courier capacity), then the warehouses and their opening stock through inventory's command
    topic (registrations first: both are keyed by warehouse id, so they arrive in order); waits
    until inventory applied the stock."""
    client = connect(settings.mongo_url.get_secret_value())
    try:
        database = client[settings.mongo_database]
        await load_reference_data(database, courier_capacity=UNLIMITED_CAPACITY)
    finally:
        client.close()
    commands = opening_stock()
    await bus.publish(settings, *warehouse_registrations(requested_by="bench opening stock"), *commands)
    shelves = [f"{command.warehouse_id}/{command.drug_code}" for command in commands]
    if not await watch.wait_for("restocked", shelves, time.monotonic() + SEED_TIMEOUT_S):
        raise BenchError(f"inventory did not apply the opening stock within {SEED_TIMEOUT_S:.0f}s")


def deliver_every_offer_once() -> Callable[[c.DispatchOffered], Plan | None]:
    """Couriers that deliver at once; a re-published offer (same dispatch id) is already in hand."""
    acted: set[str] = set()

    def plan_for(offer: c.DispatchOffered) -> Plan | None:
        if offer.dispatch_id in acted:
            return None
        acted.add(offer.dispatch_id)
        return "deliver"

    return plan_for


# --- submitting ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """A prescription encoded and signed before the clock starts: sending is all that is timed."""

    prescription_id: str
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def signed_prescriptions(settings: RuntimeSettings, count: int, seed: int) -> list[Outgoing]:
    """`count` prescriptions the checks approve (no faulty share; the county's allergic patients
    who were prescribed what they are allergic to are skipped), signed as their sender."""
    reference, now = Reference.load(), datetime.now(UTC)
    drawn = county_prescriptions(10 * count + 100, seed=seed, faulty_share=0.0, patients=None)
    approvable = (message for message in drawn if reference.approvable(message, now))
    outgoing = []
    for message in itertools.islice(approvable, count):
        topic, key, value, headers = bus.encode(message, settings)
        outgoing.append(Outgoing(message.prescription.prescription_id, topic, key, value, headers))
    return outgoing


@contextlib.asynccontextmanager
async def upstream_producer(settings: RuntimeSettings) -> AsyncIterator[AIOKafkaProducer]:
    """The hospital's producer: like `bus.producer`, with 256 KiB batches instead of aiokafka's
    16 KiB, which confirm only ~11,000 prescriptions/s here: the submitter must never be the limit."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks=settings.kafka_acks_value(),
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        max_batch_size=MAX_BATCH_BYTES,
        **aiokafka_kwargs(settings),
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def send(producer: AIOKafkaProducer, message: Outgoing) -> asyncio.Future[Any]:
    """Queue one message; the returned future completes when the broker confirmed it."""
    return await producer.send(message.topic, message.value, key=message.key, headers=message.headers)


async def confirmed(futures: Sequence[asyncio.Future[Any]]) -> int:
    """Wait for every confirmation; how many sends failed."""
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    return sum(1 for outcome in outcomes if isinstance(outcome, BaseException))


async def submit_burst(producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> int:
    """Everything at once through one producer (no wait per message); how many sends failed."""
    return await confirmed([await send(producer, message) for message in messages])


async def submit_paced(
    producer: AIOKafkaProducer, messages: Sequence[Outgoing], rate: float, submitted_at: dict[str, float]
) -> int:
    """One message every 1/rate s on an absolute schedule; fills `submitted_at` as it goes (the
    progress bar reads it). How many sends failed."""
    futures = []
    start = time.monotonic()
    for index, message in enumerate(messages):
        delay = scheduled_at(start, rate, index) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        submitted_at[message.prescription_id] = time.monotonic()
        futures.append(await send(producer, message))
    return await confirmed(futures)


# --- progress on screen -------------------------------------------------------------------------------


class BenchScreen:
    """Progress bars while a phase runs, and one line per step above them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<34}"),
            BarColumn(bar_width=32),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        self.progress.console.print(f"[dim]{time.monotonic() - self.started:6.0f}s[/] {text}")

    @contextlib.asynccontextmanager
    async def bars(self, counters: Mapping[str, tuple[int, Callable[[], int]]]) -> AsyncIterator[None]:
        """One bar per (label → total, how many so far), refreshed four times a second, removed after."""
        tasks = {label: self.progress.add_task(label, total=total) for label, (total, _) in counters.items()}

        def refresh() -> None:
            for label, (_, count) in counters.items():
                self.progress.update(tasks[label], completed=count())

        async def keep_refreshing() -> None:
            while True:
                refresh()
                await asyncio.sleep(0.25)

        refresher = asyncio.create_task(keep_refreshing())
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            refresh()
            for task in tasks.values():
                self.progress.remove_task(task)


def stage_counters(watch: PipelineWatch, ids: Sequence[str]) -> dict[str, tuple[int, Callable[[], int]]]:
    return {f"  {stage}": (len(ids), lambda stage=stage: watch.count(stage, ids)) for stage in STAGES}


# --- results ------------------------------------------------------------------------------------------


@dataclass
class ThroughputResult:
    prescriptions: int
    submit_seconds: float  # until the broker confirmed the last submission
    stages: dict[str, int]  # how many of the N reached each stage by the end of the phase
    stage_seconds: dict[str, float]  # per stage, see stage_window
    complete: bool  # all N dispatched before the timeout
    send_errors: int
    cpu_share: dict[str, float]  # per process, share of one core between first submission and the end
    cpu_ms_per_prescription: dict[str, float]

    @property
    def window_seconds(self) -> float:
        return self.stage_seconds["dispatched"]

    @property
    def dispatched_per_s(self) -> float | None:
        return rate_per_s(self.stages["dispatched"], self.stage_seconds["dispatched"])

    @property
    def delivered_per_s(self) -> float | None:
        return rate_per_s(self.stages["delivered"], self.stage_seconds["delivered"])

    def stage_per_s(self) -> dict[str, float | None]:
        """How fast each stage took in the burst: the slowest service holds everyone after it back."""
        return {stage: rate_per_s(self.stages[stage], self.stage_seconds.get(stage)) for stage in STAGES}

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "dispatched_per_s": self.dispatched_per_s,
            "delivered_per_s": self.delivered_per_s,
            "stage_per_s": self.stage_per_s(),
        }


@dataclass
class LatencyResult:
    target_rate: float
    planned_seconds: float
    timeout_s: float
    submitted: int
    achieved_rate: float | None
    latencies_ms: list[float]
    missing: int
    stages: dict[str, int]
    send_errors: int
    hop_ms: dict[str, list[float]]  # per stage: ms from the stage before (see hop_latencies_ms)

    def summary(self) -> dict[str, float | int | None]:
        return latency_summary(self.latencies_ms, self.missing)

    def hop_percentiles(self, q: float) -> dict[str, float | None]:
        return {stage: percentile(values, q) for stage, values in self.hop_ms.items()}

    def to_json(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["latencies_ms"] = [round(value, 2) for value in self.latencies_ms]
        figures["hop_ms"] = {"p50": self.hop_percentiles(50), "p99": self.hop_percentiles(99)}
        return {**figures, **self.summary()}


@dataclass
class StoredRelayResult:
    relay: RelayResult
    database_cpu_s: float  # the database's CPU time from the first message published to the last counted

    @property
    def database_ms_per_write(self) -> float | None:
        written = self.relay.documents_written
        return round(self.database_cpu_s * 1000 / written, 3) if written else None

    def to_json(self) -> dict[str, Any]:
        figures = {"database_cpu_s": self.database_cpu_s, "database_ms_per_write": self.database_ms_per_write}
        return {**self.relay.to_json(), **figures}


@dataclass
class RunResult:
    number: int
    throughput: ThroughputResult | None = None
    #: Document writes per prescription sent in the throughput phase, per collection.
    writes_per_prescription: dict[str, float] = field(default_factory=dict)
    #: Every consumer group had caught up when the writes were counted (else some are missing).
    writes_complete: bool = False
    relay: RelayResult | None = None
    stored_relay: StoredRelayResult | None = None
    latency: LatencyResult | None = None
    peak_rss_mb: dict[str, dict[str, float]] = field(default_factory=dict)  # phase → process → MB
    errors: list[str] = field(default_factory=list)

    def peak_rss_overall(self) -> dict[str, float]:
        overall: dict[str, float] = {}
        for peaks in self.peak_rss_mb.values():
            for name, mb in peaks.items():
                overall[name] = max(overall.get(name, 0.0), mb)
        return overall

    def metrics(self) -> dict[str, float | None]:
        """The figures that are compared across runs (medians) and against the targets."""
        figures: dict[str, float | None] = {}
        if self.throughput:
            figures["throughput_per_s"] = self.throughput.dispatched_per_s
            figures["delivered_per_s"] = self.throughput.delivered_per_s
            figures["dispatched"] = self.throughput.stages["dispatched"]
            for stage, rate in self.throughput.stage_per_s().items():
                figures[f"stage_per_s.{stage}"] = rate
            for name, share in by_owner(self.throughput.cpu_share).items():
                figures[f"cpu_cores.{name}"] = share
            for name, ms in by_owner(self.throughput.cpu_ms_per_prescription).items():
                figures[f"cpu_ms_per_rx.{name}"] = ms
        if self.writes_per_prescription:
            figures["writes_per_rx"] = writes = round(sum(self.writes_per_prescription.values()), 2)
            database_ms = figures.get("cpu_ms_per_rx.database")
            figures["database_ms_per_pipeline_write"] = round(database_ms / writes, 3) if database_ms else None
        if self.relay:
            figures["relay_per_s"] = self.relay.rate_per_s
            figures["ratio_to_relay"] = ratio(figures.get("throughput_per_s"), self.relay.rate_per_s)
        if self.stored_relay:
            figures["stored_relay_per_s"] = self.stored_relay.relay.rate_per_s
            figures["ratio_to_stored_relay"] = ratio(
                figures.get("throughput_per_s"), self.stored_relay.relay.rate_per_s
            )
            figures["database_ms_per_write"] = self.stored_relay.database_ms_per_write
        if self.latency:
            figures["achieved_rate"] = self.latency.achieved_rate
            for name, value in self.latency.summary().items():
                figures[name] = value
            for q in (50, 99):
                for stage, ms in self.latency.hop_percentiles(q).items():
                    figures[f"hop_p{q}_ms.{stage}"] = ms
        for name, mb in self.peak_rss_overall().items():
            figures[f"rss_mb.{name}"] = mb
        return figures

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.number,
            "throughput": self.throughput.to_json() if self.throughput else None,
            "writes_per_prescription": self.writes_per_prescription,
            "writes_complete": self.writes_complete,
            "relay_ceiling": self.relay.to_json() if self.relay else None,
            "ratio_to_relay": self.metrics().get("ratio_to_relay"),
            "stored_relay": self.stored_relay.to_json() if self.stored_relay else None,
            "ratio_to_stored_relay": self.metrics().get("ratio_to_stored_relay"),
            "latency": self.latency.to_json() if self.latency else None,
            "peak_rss_mb": self.peak_rss_mb,
            "errors": self.errors,
        }


def owner_of(process: str) -> str:
    """`inventory-2` → `inventory`; the broker, the database and the bench are their own owners."""
    service, _, instance = process.rpartition("-")
    return service if service in SERVICES and instance.isdigit() else process


def is_service_process(process: str) -> bool:
    return owner_of(process) in SERVICES


def by_owner(per_process: Mapping[str, float]) -> dict[str, float]:
    """Figures of several instances of a service added up under the service's name."""
    totals: dict[str, float] = {}
    for process, value in per_process.items():
        totals[owner_of(process)] = round(totals.get(owner_of(process), 0.0) + value, 3)
    return totals


BATCHES = ("throughput warm-up", "throughput", "latency warm-up", "latency")  # prescriptions sent per run


@dataclass(frozen=True)
class BenchOptions:
    count: int
    rate: float
    paced_seconds: float
    runs: int
    timeout_s: float
    relay_messages: int
    stored_relay_messages: int
    warmup: int
    instances: int
    service_env: dict[str, str]
    home: Path
    seed: int

    def seed_of(self, run: int, batch: str) -> int:
        """Different prescription ids for every batch of every run (ids are RX-<seed>-<number>)."""
        return self.seed + 10 * run + BATCHES.index(batch)


# --- the phases ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def flowing_pipeline(
    stack: DevStack, options: BenchOptions, screen: BenchScreen, seed_number: int
) -> AsyncIterator[PipelineWatch]:
    """Seeded, watched, couriers on the road, and warmed up (connections open, groups joined,
    the first messages through every hop) before anything is timed."""
    settings = stack.runtime_settings()
    watch = PipelineWatch()
    watching = asyncio.create_task(watch.follow(settings))
    couriers = CourierSimulator(settings, deliver_every_offer_once())
    couriers.start()
    try:
        await seed(settings, watch)
        await warm_up(settings, watch, options, screen, seed_number)
        yield watch
        await let_couriers_finish(watch)
    finally:
        watching.cancel()
        await couriers.stop()
        await asyncio.gather(watching, return_exceptions=True)


async def let_couriers_finish(watch: PipelineWatch) -> None:
    """Every trip the couriers started ends with a delivery; wait (a little) for those."""
    offered = list(watch.first_seen["dispatched"])
    await watch.wait_for("delivered", offered, time.monotonic() + COURIER_GRACE_S)


async def warm_up(
    settings: RuntimeSettings, watch: PipelineWatch, options: BenchOptions, screen: BenchScreen, seed_number: int
) -> None:
    if not options.warmup:
        return
    messages = signed_prescriptions(settings, options.warmup, seed=seed_number)
    ids = [m.prescription_id for m in messages]
    started = time.monotonic()
    async with (
        upstream_producer(settings) as producer,
        screen.bars({"  warm-up": (len(ids), lambda: watch.count("dispatched", ids))}),
    ):
        await submit_burst(producer, messages)
        arrived = await watch.wait_for("dispatched", ids, started + WARMUP_TIMEOUT_S)
    took = time.monotonic() - started
    if not watch.count("dispatched", ids):
        raise BenchError(f"none of {len(ids)} warm-up prescriptions was dispatched within {WARMUP_TIMEOUT_S:.0f}s")
    screen.step(
        f"warmed up: {watch.count('dispatched', ids)}/{len(ids)} dispatched in {took:.1f}s"
        + ("" if arrived else " [yellow](not all: the pipeline is struggling)[/]")
    )


async def measure_throughput(
    stack: DevStack, sampler: ProcessSampler, options: BenchOptions, screen: BenchScreen, run: int
) -> ThroughputResult:
    settings = stack.runtime_settings()
    async with flowing_pipeline(stack, options, screen, options.seed_of(run, "throughput warm-up")) as watch:
        messages = signed_prescriptions(settings, options.count, seed=options.seed_of(run, "throughput"))
        ids = [m.prescription_id for m in messages]
        screen.step(f"throughput: publishing {len(ids)} prescriptions at once")
        async with upstream_producer(settings) as producer, screen.bars(stage_counters(watch, ids)):
            cpu_before, started = sampler.cpu_seconds(), time.monotonic()
            send_errors = await submit_burst(producer, messages)
            submit_seconds = time.monotonic() - started
            deadline = time.monotonic() + options.timeout_s
            complete = await watch.wait_for("dispatched", ids, deadline)
            await watch.wait_for("delivered", ids, deadline)
            cpu_after, ended = sampler.cpu_seconds(), time.monotonic()
        stages = watch.counts(ids)
        windows = {stage: stage_window(watch.first_seen[stage], ids, started, ended) for stage in STAGES}
    return ThroughputResult(
        prescriptions=len(ids),
        submit_seconds=round(submit_seconds, 3),
        stages=stages,
        stage_seconds={stage: round(seconds, 3) for stage, seconds in windows.items()},
        complete=complete,
        send_errors=send_errors,
        cpu_share=cpu_share(cpu_before, cpu_after, ended - started),
        cpu_ms_per_prescription={
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / len(ids), 2)
            for name in cpu_after
            if name in cpu_before and complete
        },
    )


async def measure_latency(stack: DevStack, options: BenchOptions, screen: BenchScreen, run: int) -> LatencyResult:
    settings = stack.runtime_settings()
    async with flowing_pipeline(stack, options, screen, options.seed_of(run, "latency warm-up")) as watch:
        count = max(1, round(options.rate * options.paced_seconds))
        messages = signed_prescriptions(settings, count, seed=options.seed_of(run, "latency"))
        ids = [m.prescription_id for m in messages]
        submitted_at: dict[str, float] = {}
        screen.step(f"latency: {count} prescriptions at {options.rate:g}/s for {options.paced_seconds:g}s")
        counters = {"  submitted": (count, lambda: len(submitted_at)), **stage_counters(watch, ids)}
        async with upstream_producer(settings) as producer, screen.bars(counters):
            send_errors = await submit_paced(producer, messages, options.rate, submitted_at)
            await watch.wait_for("dispatched", ids, max(submitted_at.values()) + options.timeout_s)
        latencies, missing = latencies_within(submitted_at, watch.first_seen["dispatched"], options.timeout_s)
        stages = watch.counts(ids)
        hops = hop_latencies_ms(submitted_at, watch.first_seen, STAGES[:-1])  # delivery: the simulated couriers
    return LatencyResult(
        target_rate=options.rate,
        planned_seconds=options.paced_seconds,
        timeout_s=options.timeout_s,
        submitted=len(submitted_at),
        achieved_rate=achieved_rate(submitted_at.values()),
        latencies_ms=latencies,
        missing=missing,
        stages=stages,
        send_errors=send_errors,
        hop_ms={stage: [round(ms, 2) for ms in values] for stage, values in hops.items()},
    )


async def measure_relay(
    stack: DevStack,
    options: BenchOptions,
    screen: BenchScreen,
    message_bytes: int,
    while_driving: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> RelayResult:
    """The bare relay, or with `while_driving` (entered while messages flow) the stored relay."""
    stored = while_driving is not None
    messages = options.stored_relay_messages if stored else options.relay_messages
    name, hops = ("stored relay", "4 hops storing each one") if stored else ("relay ceiling", "4 bare hops")
    screen.step(f"{name}: {messages} messages of {message_bytes} bytes through {hops}")
    relayed = 0

    def progress(count: int) -> None:
        nonlocal relayed
        relayed = count

    async with screen.bars({"  relayed": (messages, lambda: relayed)}):
        return await measure_relay_ceiling(
            stack.bootstrap,
            messages=messages,
            message_bytes=message_bytes,
            partitions=stack.partitions,
            timeout_s=options.timeout_s,
            mongo_url=stack.runtime_settings().mongo_url.get_secret_value() if stored else None,
            log_dir=stack.logs,
            progress=progress,
            while_driving=while_driving or contextlib.nullcontext,
        )


async def caught_up(settings: RuntimeSettings, timeout_s: float) -> bool:
    """True once every consumer group of the services has no lag, twice in a row a second apart
    (projections trail the pipeline; their last writes count too); False at the timeout."""
    deadline, calm = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        calm = calm + 1 if not any(g.lag for g in await consumer_lag(settings)) else 0
        if calm >= 2:
            return True
        await asyncio.sleep(1.0)
    return False


async def document_writes(settings: RuntimeSettings) -> dict[str, int]:
    """Writes per collection of the pipeline's database: a versioned document was written as many
    times as its version says; a document without a version (a ledger line) once."""
    client = connect(settings.mongo_url.get_secret_value())
    try:
        database = client[settings.mongo_database]
        writes = {}
        for name in sorted(await database.list_collection_names()):
            versions = [doc.get("version") async for doc in database[name].find({}, {"version": 1})]
            writes[name] = sum(v if isinstance(v, int) else 1 for v in versions)
        return writes
    finally:
        client.close()


def per_prescription(writes: Mapping[str, int], prescriptions: int) -> dict[str, float]:
    """Writes of collections that grow with the prescriptions, per prescription (reference data and
    the warehouses' seeding stay out: they do not grow with the load)."""
    return {name: round(count / prescriptions, 2) for name, count in writes.items() if count >= prescriptions / 10}


def typical_prescription_bytes(settings: RuntimeSettings) -> int:
    return round(statistics.median(len(m.value) for m in signed_prescriptions(settings, 50, seed=1)))


def on_fresh_stack(
    home: Path, options: BenchOptions, screen: BenchScreen, body: Callable[[DevStack, ProcessSampler], Awaitable[T]]
) -> T:
    """Start a dev stack and the services, run `body` with a sampler on every process, always stop."""
    stack = fresh_stack(home, options.service_env)
    screen.step(f"starting a dev stack (broker {stack.bootstrap}, database {stack.mongo_url}, logs {stack.logs})")
    try:
        stack.start_infra()
        stack.start_services(*service_names(options.instances))
        pids = {**stack_pids(stack), BENCH_PROCESS: os.getpid()}
        with ProcessSampler(pids) as sampler:
            return run_until_interrupted(body(stack, sampler))
    finally:
        stop_stack(stack)


def stop_services(stack: DevStack) -> None:
    """All at once: each may take its shutdown grace (seconds, with a backlog) to finish in-flight work."""
    services = [name for name in stack.running() if name not in INFRASTRUCTURE]
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        list(pool.map(stack.stop, services))


def stop_stack(stack: DevStack) -> None:
    stop_services(stack)
    stack.stop_all()  # the database and the broker, after the services that use them


# --- stopping on Ctrl-C or SIGTERM ---------------------------------------------------------------------
#
# Outside the event loop (starting a stack), both raise KeyboardInterrupt and the `finally` of
# `on_fresh_stack` stops the stack. Inside it, raising from a signal handler would tear through
# asyncio's own bookkeeping, so there they cancel the phase's task instead (asyncio.run does that
# for Ctrl-C; SIGTERM is handled alike below): every `finally` in the phase runs in a live loop.

STOP_REQUESTED = threading.Event()  # set by either signal: no further phase starts


def _interrupt_on_sigterm() -> None:
    def interrupt(*_: object) -> None:
        STOP_REQUESTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


async def _cancelled_on_sigterm(coroutine: Awaitable[T]) -> T:
    loop = asyncio.get_running_loop()
    phase = asyncio.current_task()
    assert phase is not None

    def cancel() -> None:
        STOP_REQUESTED.set()
        phase.cancel()

    loop.add_signal_handler(signal.SIGTERM, cancel)
    loop.set_exception_handler(_quiet_about_cut_off_trips)
    try:
        return await coroutine
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # leaves SIGTERM at its default: kill at once
        _interrupt_on_sigterm()


def _quiet_about_cut_off_trips(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A simulated courier still on a trip when its phase ends finds its producer closed: expected."""
    if not isinstance(context.get("exception"), ProducerClosed):
        loop.default_exception_handler(context)


def run_until_interrupted(coroutine: Awaitable[T]) -> T:
    """asyncio.run, turning a cancellation by either signal into KeyboardInterrupt."""
    try:
        return asyncio.run(_cancelled_on_sigterm(coroutine))  # type: ignore[arg-type]
    except (KeyboardInterrupt, asyncio.CancelledError):
        STOP_REQUESTED.set()
        raise KeyboardInterrupt from None


def throughput_phase(run: RunResult, options: BenchOptions, screen: BenchScreen) -> None:
    async def body(stack: DevStack, sampler: ProcessSampler) -> None:
        run.throughput = await measure_throughput(stack, sampler, options, screen, run.number)
        run.peak_rss_mb["throughput"] = sampler.peak_rss_mb()
        screen.step(describe_throughput(run.throughput))
        settled = await caught_up(stack.runtime_settings(), CATCH_UP_TIMEOUT_S)
        # Same broker, services stopped: a relay must not share two cores with idle pollers.
        await asyncio.to_thread(stop_services, stack)
        sent = options.count + options.warmup
        run.writes_per_prescription = per_prescription(await document_writes(stack.runtime_settings()), sent)
        run.writes_complete = settled and run.throughput.complete
        screen.step(describe_writes(run.writes_per_prescription, run.writes_complete))
        message_bytes = typical_prescription_bytes(stack.runtime_settings())
        if options.relay_messages:
            run.relay = await measure_relay(stack, options, screen, message_bytes)
            screen.step(describe_relay(run.relay, run.throughput))
        if options.stored_relay_messages:
            database_cpu: list[float] = []

            @contextlib.contextmanager
            def database_cpu_while_driving() -> Iterator[None]:
                database_cpu.append(sampler.cpu_seconds().get("database", 0.0))
                yield
                database_cpu.append(sampler.cpu_seconds().get("database", 0.0))

            stored = await measure_relay(stack, options, screen, message_bytes, database_cpu_while_driving)
            spent = database_cpu[-1] - database_cpu[0] if len(database_cpu) == 2 else 0.0
            run.stored_relay = StoredRelayResult(stored, round(spent, 3))
            screen.step(describe_stored_relay(run.stored_relay, run.throughput))

    on_fresh_stack(options.home / f"run-{run.number}-throughput", options, screen, body)


def latency_phase(run: RunResult, options: BenchOptions, screen: BenchScreen) -> None:
    async def body(stack: DevStack, sampler: ProcessSampler) -> None:
        run.latency = await measure_latency(stack, options, screen, run.number)
        run.peak_rss_mb["latency"] = sampler.peak_rss_mb()
        screen.step(describe_latency(run.latency))

    on_fresh_stack(options.home / f"run-{run.number}-latency", options, screen, body)


def run_once(run: RunResult, options: BenchOptions, screen: BenchScreen) -> None:
    """Both phases of a run; a phase that fails is recorded in `run.errors` and the other still runs."""
    for name, phase in (("throughput", throughput_phase), ("latency", latency_phase)):
        screen.step(f"[bold]run {run.number}/{options.runs} · {name}[/]")
        try:
            phase(run, options, screen)
        except (BenchError, KafkaError, OSError, RuntimeError) as error:
            if STOP_REQUESTED.is_set():  # an error while stopping is part of stopping
                raise KeyboardInterrupt from error
            # TimeoutError is an OSError: a stack that would not start is a result too, not a crash.
            run.errors.append(f"{name}: {error}")
            screen.step(f"[red]{name} phase failed:[/] {error}")


# --- telling ------------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def describe_throughput(result: ThroughputResult) -> str:
    state = "" if result.complete else f" [red]INCOMPLETE: {result.stages['dispatched']}/{result.prescriptions}[/]"
    stages = ", ".join(f"{stage} {result.stages[stage]}" for stage in STAGES)
    return (
        f"throughput {_number(result.dispatched_per_s, 1)} rx/s to dispatch over {result.window_seconds:.1f}s{state} "
        f"(published in {result.submit_seconds:.2f}s; {stages}){describe_refusals(result.stages, result.send_errors)}"
    )


def describe_refusals(stages: Mapping[str, int], send_errors: int) -> str:
    """Every prescription sent is meant to be approved and reserved: say so loudly when one was not."""
    refused = {"rejected": stages["rejected"], "out of stock": stages["out_of_stock"], "send errors": send_errors}
    shown = ", ".join(f"{what} {count}" for what, count in refused.items() if count)
    return f" [red]{shown}: the figures do not measure the normal path[/]" if shown else ""


def describe_relay(relay: RelayResult, throughput: ThroughputResult | None) -> str:
    share = ratio(throughput.dispatched_per_s if throughput else None, relay.rate_per_s)
    state = "" if relay.complete else f" [red]INCOMPLETE ({relay.error or 'timed out'})[/]"
    return f"relay ceiling {_number(relay.rate_per_s)} msg/s{state}; ours / ceiling {_number(share, 3)}"


def describe_writes(writes: Mapping[str, float], complete: bool) -> str:
    listed = ", ".join(f"{name} {count:g}" for name, count in sorted(writes.items(), key=lambda item: -item[1]))
    state = "" if complete else " [red]INCOMPLETE: counted before every consumer had caught up[/]"
    return f"database writes per prescription: {sum(writes.values()):.1f}{state} ({listed})"


def describe_stored_relay(stored: StoredRelayResult, throughput: ThroughputResult | None) -> str:
    share = ratio(throughput.dispatched_per_s if throughput else None, stored.relay.rate_per_s)
    state = "" if stored.relay.complete else f" [red]INCOMPLETE ({stored.relay.error or 'timed out'})[/]"
    return (
        f"stored relay {_number(stored.relay.rate_per_s)} msg/s{state}; ours / stored relay {_number(share, 3)}; "
        f"database CPU {_number(stored.database_ms_per_write, 3)} ms per document it stored"
    )


def describe_latency(result: LatencyResult) -> str:
    s = result.summary()
    return (
        f"latency at {_number(result.achieved_rate, 1)}/s achieved: p50 {_number(s['p50_ms'])} ms, "
        f"p95 {_number(s['p95_ms'])} ms, p99 {_number(s['p99_ms'])} ms, max {_number(s['max_ms'])} ms, "
        f"missing {result.missing}/{result.submitted}{describe_refusals(result.stages, result.send_errors)}"
    )


def _verdict(target: Target, value: float | None) -> str:
    met = target.met(value)
    return "" if met is None else ("[green]✓[/]" if met else "[red]✗[/]")


@dataclass(frozen=True)
class Row:
    label: str
    metric: str  # a key of RunResult.metrics()
    digits: int = 0
    target: Target | None = None


def result_rows(runs: Sequence[RunResult]) -> list[Row]:
    processes = sorted({name for run in runs for name in run.peak_rss_overall()}, key=_process_order)
    rows = [
        Row("throughput to dispatch (rx/s)", "throughput_per_s", 1, THROUGHPUT_TARGET),
        Row("  prescriptions dispatched", "dispatched"),
        Row("  throughput to delivered (rx/s)", "delivered_per_s", 1),
        Row("  database writes per prescription", "writes_per_rx", 1),
        Row("  database CPU per pipeline write (ms)", "database_ms_per_pipeline_write", 3),
        Row("bare 4-hop relay (msg/s)", "relay_per_s"),
        Row("ours / relay", "ratio_to_relay", 3),
        Row("stored 4-hop relay, 1 write per hop (msg/s)", "stored_relay_per_s"),
        Row("ours / stored relay", "ratio_to_stored_relay", 3),
        Row("  database CPU per document it stored (ms)", "database_ms_per_write", 3),
        Row("paced: achieved rate (/s)", "achieved_rate", 1),
        Row("  latency p50 (ms)", "p50_ms", 1),
        Row("  latency p95 (ms)", "p95_ms", 1),
        Row("  latency p99 (ms)", "p99_ms", 1, P99_TARGET),
        Row("  latency max (ms)", "max_ms", 1),
        Row("  missing (not dispatched in time)", "missing"),
    ]
    for name in processes:
        target = RSS_TARGET if is_service_process(name) else None
        rows.append(Row(f"peak RSS {name} (MB)", f"rss_mb.{name}", 1, target))
    return rows


def _process_order(name: str) -> tuple[int, str]:
    """The services in pipeline order, then the broker, the database and the bench."""
    order = [*SERVICES, *INFRASTRUCTURE, BENCH_PROCESS]
    return order.index(owner_of(name)), name


def results_table(runs: Sequence[RunResult], summary: Mapping[str, float | None], machine: Mapping[str, Any]) -> Table:
    table = Table(
        title=f"make bench · medians of {len(runs)} run(s)",
        caption=f"{machine['cpu_count']} CPUs · {machine['platform']} · Python {machine['python']} · "
        f"{machine['date']} · {machine['git']}",
    )
    table.add_column("figure")
    table.add_column("target")
    table.add_column("median", justify="right", style="bold")
    table.add_column("")
    for run in runs:
        table.add_column(f"run {run.number}", justify="right")
    per_run = [run.metrics() for run in runs]
    for row in result_rows(runs):
        target = str(row.target) if row.target else ""
        value = summary.get(row.metric)
        verdict = _verdict(row.target, value) if row.target else ""
        cells = [_run_cell(figures.get(row.metric), row, run) for figures, run in zip(per_run, runs, strict=True)]
        table.add_row(row.label, target, _number(value, row.digits), verdict, *cells)
    return table


def where_the_time_goes(summary: Mapping[str, float | None]) -> Table:
    """Per service, medians: how fast its stage went in the burst, the CPU it used doing that, and
    the latency it added at the paced rate. The slowest stage, or a service near 1.0 core, is what
    limits the pipeline."""
    table = Table(title="where the time goes (medians)")
    for header in (
        "stage (moved by)",
        "burst: stage rx/s",
        "CPU cores",
        "CPU ms/rx",
        "paced: hop p50 ms",
        "hop p99 ms",
    ):
        table.add_column(header, justify="left" if header.startswith("stage") else "right")
    for stage in STAGES:
        owner = STAGE_OWNERS[stage]
        is_process = owner in SERVICES  # the last stage is the simulated couriers' and the courier service's
        table.add_row(
            f"{stage} ({owner})",
            _number(summary.get(f"stage_per_s.{stage}"), 1),
            _number(summary.get(f"cpu_cores.{owner}"), 2) if is_process else "",
            _number(summary.get(f"cpu_ms_per_rx.{owner}"), 2) if is_process else "",
            _number(summary.get(f"hop_p50_ms.{stage}"), 1),
            _number(summary.get(f"hop_p99_ms.{stage}"), 1),
        )
    for name in (*INFRASTRUCTURE, BENCH_PROCESS):
        table.add_row(
            f"[dim]{name}[/]",
            "",
            _number(summary.get(f"cpu_cores.{name}"), 2),
            _number(summary.get(f"cpu_ms_per_rx.{name}"), 2),
            "",
            "",
        )
    return table


#: Figures that a run measured over only part of what it set out to (a timeout hit).
PARTIAL = {
    "throughput_per_s": lambda run: run.throughput is not None and not run.throughput.complete,
    "relay_per_s": lambda run: run.relay is not None and not run.relay.complete,
    "stored_relay_per_s": lambda run: run.stored_relay is not None and not run.stored_relay.relay.complete,
    "database_ms_per_write": lambda run: run.stored_relay is not None and not run.stored_relay.relay.complete,
    "writes_per_rx": lambda run: bool(run.writes_per_prescription) and not run.writes_complete,
}


def _run_cell(value: float | None, row: Row, run: RunResult) -> str:
    partial = PARTIAL.get(row.metric, lambda _: False)(run)
    return _number(value, row.digits) + (" [red](incomplete)[/]" if partial else "")


# --- the report on disk ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
    }


def git_revision() -> str:
    """The commit measured, with `+changes` when the work tree differs from it."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changes else "")


METHOD = (
    "Every phase on a fresh dev stack (free ports, empty broker and database), four services as processes, "
    "formulary + couriers + 10^7 units per warehouse and drug seeded, warm-up prescriptions dispatched first. "
    "Throughput: N prescriptions (none faulty) published at once by one producer; rate = N / (first submission "
    "-> N-th distinct DispatchOffered on courier.dispatch.v1). Relay: same broker, services stopped, four "
    "processes relaying raw bytes of a prescription's size, messages/s from topic 0 to topic 4. Stored relay: "
    "the same, each hop also bulk-inserting every message as a document into the stack's database before "
    "passing its batch on; the database's CPU time while messages flowed / documents stored. Writes per "
    "prescription: once every consumer group caught up, sum of document versions per collection / "
    "prescriptions sent; database CPU per pipeline write = its CPU ms per prescription / writes. Latency: paced "
    "submissions on an absolute schedule, submission -> first DispatchOffered consumed by the bench; not "
    "dispatched within the timeout = missing. Stage rates and hop latencies come from the first sighting of "
    "each prescription on each service's output topic. RSS sampled every 0.2 s; CPU per process over the "
    "throughput window (the bench process shares the same cores). Medians over runs."
)


def build_report(runs: Sequence[RunResult], options: BenchOptions, machine: Mapping[str, Any]) -> dict[str, Any]:
    summary = medians([run.metrics() for run in runs])
    services = {
        name: mb
        for name, mb in summary.items()
        if name.startswith("rss_mb.") and is_service_process(name.removeprefix("rss_mb."))
    }
    return {
        "machine": dict(machine),
        "options": {**asdict(options), "home": str(options.home)},
        "method": METHOD,
        "targets": {
            "throughput_per_s": THROUGHPUT_TARGET.bound,
            "p99_ms": P99_TARGET.bound,
            "rss_mb_per_service": RSS_TARGET.bound,
        },
        "medians": summary,
        "meets_targets": {
            "throughput": THROUGHPUT_TARGET.met(summary.get("throughput_per_s")),
            "p99": P99_TARGET.met(summary.get("p99_ms")),
            "rss": all(RSS_TARGET.met(mb) for mb in services.values()) if services else None,
        },
        "runs": [run.to_json() for run in runs],
    }


def write_outputs(runs: Sequence[RunResult], report: Mapping[str, Any], output: Path, plot: Path) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    written = [output]
    series = [
        LatencySeries(
            f"run {run.number}", run.latency.latencies_ms, run.latency.missing, run.latency.summary()["p99_ms"]
        )
        for run in runs
        if run.latency
    ]
    if series:
        rate = report["options"]["rate"]
        written.append(plot_latencies(series, plot, target_ms=P99_TARGET.bound, rate=rate))
    return written


# --- command line -------------------------------------------------------------------------------------------


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE")
        env[name] = value
    return env


def main(
    count: int = typer.Option(3000, min=1, help="Prescriptions published at once for the throughput figure"),
    timeout: float = typer.Option(
        120.0,
        min=1,
        help="How long a phase waits after its last submission; a prescription not dispatched "
        "within this many seconds of its submission is missing",
    ),
    rate: float = typer.Option(500.0, min=0.1, help="Paced submissions per second for the latency figure"),
    paced_seconds: float = typer.Option(10.0, min=0.1, help="How long the paced submission lasts"),
    runs: int = typer.Option(3, min=1, help="Runs; medians are reported"),
    relay_messages: int = typer.Option(30_000, min=0, help="Messages through the bare relay (0: skip it)"),
    stored_relay_messages: int = typer.Option(
        6_000, min=0, help="Messages through the stored relay, which writes each at every hop (0: skip it)"
    ),
    warmup: int = typer.Option(20, min=0, help="Prescriptions dispatched before each phase's clock starts"),
    instances: int = typer.Option(1, min=1, max=4, help="Processes per service"),
    env: list[str] = typer.Option(
        [], "--env", help="KEY=VALUE for the service processes, repeatable, e.g. PHARMACY_KAFKA_LINGER_MS=2"
    ),
    output: Path = typer.Option(Path("bench-results/bench.json"), help="Where the figures go (JSON)"),
    plot: Path = typer.Option(Path("bench-results/latency.png"), help="Where the latency plot goes (PNG)"),
    home: Path = typer.Option(Path(".devstack/bench"), help="Dev stack homes (logs, database) of the phases"),
    seed: int = typer.Option(5000, min=0, max=9000, help="Seed of the prescriptions (ids RX-<seed>-<n>)"),
) -> None:
    """Throughput, latency, memory of the pipeline on the dev stack, and the bare relay ceiling."""
    options = BenchOptions(
        count,
        rate,
        paced_seconds,
        runs,
        timeout,
        relay_messages,
        stored_relay_messages,
        warmup,
        instances,
        parse_env(env),
        home,
        seed,
    )
    # Piped into a file or `tee`, rich would assume 80 columns and fold every table row in two.
    console = Console(width=None if sys.stdout.isatty() else 132)
    screen = BenchScreen(console)
    _interrupt_on_sigterm()
    runs_measured: list[RunResult] = []  # an interrupted run is reported with what it measured
    interrupted = False
    try:
        with screen.progress:
            screen.step(
                f"{runs} run(s) of two phases, each phase on a fresh dev stack with prescription ids of its own; "
                f"targets: {THROUGHPUT_TARGET}, p99 {P99_TARGET} at {rate:g}/s, {RSS_TARGET} per service"
            )
            for number in range(1, runs + 1):
                runs_measured.append(RunResult(number))
                run_once(runs_measured[-1], options, screen)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]interrupted[/]: stacks stopped; reporting what was measured")
    machine = machine_info()
    report = build_report(runs_measured, options, machine)
    if runs_measured:
        console.print(results_table(runs_measured, report["medians"], machine))
        console.print(where_the_time_goes(report["medians"]))
    for path in write_outputs(runs_measured, report, output, plot):
        console.print(f"written: [bold]{path}[/]")
    if interrupted:
        raise typer.Exit(130)


app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
