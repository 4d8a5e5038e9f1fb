"""What a run measured, the options it ran with, and the targets the figures are held to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..relay_ceiling import RelayResult
from .counters import totals
from .processes import by_owner
from .stats import half_of, latency_summary, percentile, rate_per_s, ratio
from .watch import STAGES


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
ROUND_TRIPS_PATH_TARGET = Target(8, at_least=False, unit="per rx")  # the groups on the way to DispatchOffered
ROUND_TRIPS_TARGET = Target(16, at_least=False, unit="per rx")
RECORDS_TARGET = Target(16, at_least=False, unit="per rx")
IGNORED_TARGET = Target(0, at_least=False, unit="per rx")


HALF = "half"


@dataclass(frozen=True)
class PacedRate:
    """A rate of the latency phases: submissions per second, or (`per_s` None) half the throughput
    the same run measured, which is known only once its throughput phase is over."""

    per_s: float | None = None

    @property
    def key(self) -> str:
        """The same in every run ("5/s", "half"): what the medians over runs group by."""
        return HALF if self.per_s is None else f"{self.per_s:g}/s"

    def resolve(self, throughput_per_s: float | None) -> float | None:
        return self.per_s if self.per_s is not None else half_of(throughput_per_s)


#: The issue holds p99 to P99_TARGET at this rate; the other rates are printed beside it.
P99_RATE = PacedRate(20.0)
#: At this rate no two prescriptions share a batch, hence a round trip: the paced round trips come
#: from it when it is measured.
ROUND_TRIPS_RATE = PacedRate(5.0)


def rate_label(key: str, per_s: float | None) -> str:
    """ "5/s", or for half the rate it came to: "half (24.6/s)"."""
    return f"{HALF} ({per_s:g}/s)" if key == HALF and per_s is not None else key


def latency_metric(key: str, name: str) -> str:
    """The name of a per-rate figure among a run's metrics (and the medians)."""
    return f"latency[{key}].{name}"


class BenchError(Exception):
    """A phase could not be measured (the message says why); the other phases and runs go on."""


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
    rate_key: str  # PacedRate.key
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

    @property
    def label(self) -> str:
        return rate_label(self.rate_key, self.target_rate)

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
    #: Per service: database round trips per prescription of the burst, counted by the services
    #: ("path": the groups on the way to DispatchOffered, "all", "group.<name>"); read with the writes.
    round_trips_per_prescription: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Per consumer group: records delivered per prescription of the burst, and how many it ignored.
    records_per_prescription: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The same round trips per prescription submitted in one latency phase (small batches): at
    #: ROUND_TRIPS_RATE if measured, else at the first rate.
    paced_round_trips_per_prescription: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The label of the rate those were counted at.
    paced_round_trips_rate: str | None = None
    #: Every consumer group had caught up when the paced round trips were read.
    paced_counters_complete: bool = False
    relay: RelayResult | None = None
    stored_relay: StoredRelayResult | None = None
    latencies: dict[str, LatencyResult] = field(default_factory=dict)  # PacedRate.key → its phase
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
        if self.round_trips_per_prescription:
            for field_name, total in totals(self.round_trips_per_prescription, ("path", "all")).items():
                figures[f"round_trips_{field_name}"] = total
            for service, trips in self.round_trips_per_prescription.items():
                figures[f"round_trips_path.{service}"] = trips["path"]
                figures[f"round_trips_all.{service}"] = trips["all"]
                for name, count in trips.items():
                    if name.startswith("group."):  # (background) is every service's: added up
                        key = f"round_trips.{name.removeprefix('group.')}"
                        figures[key] = round((figures.get(key) or 0.0) + count, 2)
        if self.paced_round_trips_per_prescription:
            for field_name, total in totals(self.paced_round_trips_per_prescription, ("path", "all")).items():
                figures[f"paced_round_trips_{field_name}"] = total
        if self.records_per_prescription:
            fields = ("delivered", "ignored", "skipped")
            for field_name, total in totals(self.records_per_prescription, fields).items():
                figures[f"records_{field_name}"] = total
            for group, records in self.records_per_prescription.items():
                figures[f"records_delivered.{group}"] = records["delivered"]
                figures[f"records_ignored.{group}"] = records["ignored"]
        if self.relay:
            figures["relay_per_s"] = self.relay.rate_per_s
            figures["ratio_to_relay"] = ratio(figures.get("throughput_per_s"), self.relay.rate_per_s)
        if self.stored_relay:
            figures["stored_relay_per_s"] = self.stored_relay.relay.rate_per_s
            figures["ratio_to_stored_relay"] = ratio(
                figures.get("throughput_per_s"), self.stored_relay.relay.rate_per_s
            )
            figures["database_ms_per_write"] = self.stored_relay.database_ms_per_write
        for key, latency in self.latencies.items():
            figures[latency_metric(key, "rate_per_s")] = latency.target_rate
            figures[latency_metric(key, "achieved_rate")] = latency.achieved_rate
            for name, value in latency.summary().items():
                figures[latency_metric(key, name)] = value
            for q in (50, 99):
                for stage, ms in latency.hop_percentiles(q).items():
                    figures[latency_metric(key, f"hop_p{q}_ms.{stage}")] = ms
        for name, mb in self.peak_rss_overall().items():
            figures[f"rss_mb.{name}"] = mb
        return figures

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.number,
            "throughput": self.throughput.to_json() if self.throughput else None,
            "writes_per_prescription": self.writes_per_prescription,
            "writes_complete": self.writes_complete,
            "round_trips_per_prescription": self.round_trips_per_prescription,
            "records_per_prescription": self.records_per_prescription,
            "paced_round_trips_per_prescription": self.paced_round_trips_per_prescription,
            "paced_round_trips_rate": self.paced_round_trips_rate,
            "paced_counters_complete": self.paced_counters_complete,
            "relay_ceiling": self.relay.to_json() if self.relay else None,
            "ratio_to_relay": self.metrics().get("ratio_to_relay"),
            "stored_relay": self.stored_relay.to_json() if self.stored_relay else None,
            "ratio_to_stored_relay": self.metrics().get("ratio_to_stored_relay"),
            "latency": {latency.label: latency.to_json() for latency in self.latencies.values()},
            "peak_rss_mb": self.peak_rss_mb,
            "errors": self.errors,
        }


BATCHES = ("throughput warm-up", "throughput", "latency warm-up", "latency")  # the latter two per rate
#: Seeds a run may use: the throughput's batches and two per rate.
SEEDS_PER_RUN = 100
#: How long a paced submission lasts unless --paced-seconds says...
DEFAULT_PACED_S = 10.0
#: ...or longer, at low rates: a p99 of fewer prescriptions would be their maximum.
MIN_PACED_PRESCRIPTIONS = 100


@dataclass(frozen=True)
class BenchOptions:
    count: int
    rates: tuple[PacedRate, ...]
    paced_seconds: float | None  # None: DEFAULT_PACED_S, or as long as MIN_PACED_PRESCRIPTIONS take
    runs: int
    timeout_s: float
    relay_messages: int
    stored_relay_messages: int
    warmup: int
    instances: int
    service_env: dict[str, str]
    home: Path
    seed: int

    def seed_of(self, run: int, batch: str, rate_index: int = 0) -> int:
        """Different prescription ids for every batch of every run (ids are RX-<seed>-<number>)."""
        latency_batch = batch.startswith("latency")
        return self.seed + SEEDS_PER_RUN * run + BATCHES.index(batch) + (2 * rate_index if latency_batch else 0)

    def paced_seconds_at(self, per_s: float) -> float:
        if self.paced_seconds is not None:
            return self.paced_seconds
        return max(DEFAULT_PACED_S, MIN_PACED_PRESCRIPTIONS / per_s)

    @property
    def round_trips_rate(self) -> PacedRate:
        return ROUND_TRIPS_RATE if ROUND_TRIPS_RATE in self.rates else self.rates[0]
