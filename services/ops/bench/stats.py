"""The arithmetic of the bench: percentiles, medians, rates, the paced schedule, latencies, shares."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence


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


def half_of(throughput_per_s: float | None) -> float | None:
    """Half a measured throughput, to 0.1/s: a paced rate well below capacity, so queueing stays out
    of its latency. At least 0.5/s, so that a phase still submits something; None without a throughput."""
    if throughput_per_s is None or throughput_per_s <= 0:
        return None
    return max(0.5, round(throughput_per_s / 2, 1))


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


def cpu_share(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict[str, float]:
    """Per process: CPU seconds used between two readings, as a share of one core (1.0 = a core busy)."""
    if seconds <= 0:
        return {}
    return {name: round((after[name] - before[name]) / seconds, 3) for name in after if name in before}


def per_prescription(writes: Mapping[str, int], prescriptions: int) -> dict[str, float]:
    """Writes of collections that grow with the prescriptions, per prescription (reference data and
    the warehouses' seeding stay out: they do not grow with the load)."""
    return {name: round(count / prescriptions, 2) for name, count in writes.items() if count >= prescriptions / 10}
