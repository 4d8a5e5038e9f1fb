"""The report on disk: the figures as JSON, with the machine and method, and the latency plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from .plot import LatencySeries, plot_latencies
from .processes import is_service_process
from .results import (
    IGNORED_TARGET,
    P99_RATE,
    P99_TARGET,
    RECORDS_TARGET,
    ROUND_TRIPS_PATH_TARGET,
    ROUND_TRIPS_TARGET,
    RSS_TARGET,
    THROUGHPUT_TARGET,
    BenchOptions,
    RunResult,
    latency_metric,
    rate_label,
)
from .stats import medians


def paced_round_trips_label(runs: Sequence[RunResult]) -> str | None:
    """The rate the paced round trips were counted at (the same in every run unless it is half)."""
    return next((run.paced_round_trips_rate for run in runs if run.paced_round_trips_rate), None)


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
    root = Path(__file__).resolve().parents[3]  # services/ops/bench/ -> the repository
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
    "prescriptions sent; database CPU per pipeline write = its CPU ms per prescription / writes. Latency: a "
    "phase per paced rate (half: half the throughput the same run measured, to 0.1/s, at least 0.5/s), "
    "submissions on an absolute schedule, submission -> first DispatchOffered consumed by the bench; not "
    "dispatched within the timeout = missing; p99 is held to its target at 20/s. Stage rates and hop latencies "
    "come from the first sighting of each prescription on each service's output topic. Database round trips and "
    "records delivered: each service's own counters (a command listener on its database client, attributed to "
    "the consumer group whose handler sent the command; records by group and contract type), scraped from "
    "/metrics after the warm-up and once every group caught up, per prescription of the burst (round trips also "
    "per prescription of the paced submissions at 5/s, else at the first rate, after at most 30 s of catching "
    "up); a record is ignored when its group's handler has no branch for its type (bench/counters.py ACTED_ON). "
    "RSS sampled every 0.2 s; CPU per process over the throughput window (the bench process shares the same "
    "cores). Medians over runs."
)


#: Per rate, the figures of its latency phase that the report gives (medians over runs).
LATENCY_FIGURES = ("rate_per_s", "achieved_rate", "p50_ms", "p95_ms", "p99_ms", "max_ms", "arrived", "missing")


def latency_by_rate(
    summary: Mapping[str, float | None], rate_keys: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """The medians of each rate's latency phase, keyed by its label ("5/s", "half (24.6/s)": for
    half, the median of the rates it came to); rates no run measured are left out."""
    by_rate = {}
    for key in rate_keys:
        figures = {name: summary.get(latency_metric(key, name)) for name in LATENCY_FIGURES}
        if figures["arrived"] is not None:
            by_rate[rate_label(key, figures["rate_per_s"])] = figures
    return by_rate


def build_report(runs: Sequence[RunResult], options: BenchOptions, machine: Mapping[str, Any]) -> dict[str, Any]:
    summary = medians([run.metrics() for run in runs])
    rate_keys = [rate.key for rate in options.rates]
    services = {
        name: mb
        for name, mb in summary.items()
        if name.startswith("rss_mb.") and is_service_process(name.removeprefix("rss_mb."))
    }
    return {
        "machine": dict(machine),
        "options": {**asdict(options), "rates": rate_keys, "home": str(options.home)},
        "method": METHOD,
        "targets": {
            "throughput_per_s": THROUGHPUT_TARGET.bound,
            "p99_ms": P99_TARGET.bound,
            "p99_at": P99_RATE.key,
            "rss_mb_per_service": RSS_TARGET.bound,
            "round_trips_path_per_rx": ROUND_TRIPS_PATH_TARGET.bound,
            "round_trips_per_rx": ROUND_TRIPS_TARGET.bound,
            "records_delivered_per_rx": RECORDS_TARGET.bound,
            "records_ignored_per_rx": IGNORED_TARGET.bound,
        },
        "medians": summary,
        "latency": latency_by_rate(summary, rate_keys),
        "paced_round_trips_rate": paced_round_trips_label(runs),
        "meets_targets": {
            "throughput": THROUGHPUT_TARGET.met(summary.get("throughput_per_s")),
            "p99": P99_TARGET.met(summary.get(latency_metric(P99_RATE.key, "p99_ms"))),
            "round_trips_path": ROUND_TRIPS_PATH_TARGET.met(summary.get("round_trips_path")),
            "round_trips": ROUND_TRIPS_TARGET.met(summary.get("round_trips_all")),
            "records_delivered": RECORDS_TARGET.met(summary.get("records_delivered")),
            "records_ignored": IGNORED_TARGET.met(summary.get("records_ignored")),
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
            f"{latency.label}, run {run.number}", latency.latencies_ms, latency.missing, latency.summary()["p99_ms"]
        )
        for run in runs
        for latency in run.latencies.values()
    ]
    if series:
        written.append(
            plot_latencies(series, plot, target_ms=P99_TARGET.bound, target_label=f"p99 target at {P99_RATE.key}")
        )
    return written
