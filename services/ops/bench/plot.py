"""The latency picture of `make bench`: a histogram and a cumulative distribution per run and rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LatencySeries:
    label: str
    latencies_ms: Sequence[float]  # the prescriptions that reached dispatch
    missing: int  # submitted but not dispatched in time: the CDF never reaches 1 when there are any
    p99_ms: float | None


def plot_latencies(series: Sequence[LatencySeries], path: Path, *, target_ms: float, target_label: str) -> Path:
    """Write a PNG with a histogram (left) and a CDF (right) of submission → dispatch latency."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (histogram, cdf) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    everything = [value for s in series for value in s.latencies_ms if value > 0]
    log_scale = bool(everything) and max(everything) / min(everything) > 50
    bins = (
        np.geomspace(min(everything), max(everything), 60)
        if log_scale
        else np.linspace(0, max(everything, default=1), 60)
    )
    for s in series:
        values = np.sort(np.asarray(s.latencies_ms, dtype=float))
        submitted = len(values) + s.missing
        p99 = "" if s.p99_ms is None else f", p99 {s.p99_ms:,.0f} ms"
        label = f"{s.label} ({len(values)}/{submitted} dispatched{p99})"
        histogram.hist(values, bins=bins, histtype="step", linewidth=1.5, label=label)
        if submitted:
            cdf.step(values, np.arange(1, len(values) + 1) / submitted, where="post", label=label)
    for axes in (histogram, cdf):
        axes.axvline(target_ms, color="red", linestyle="--", linewidth=1, label=f"{target_label} {target_ms:.0f} ms")
        axes.set_xlabel("submission → first dispatch offer (ms)")
        if log_scale:
            axes.set_xscale("log")
        axes.grid(True, alpha=0.3)
    histogram.set_ylabel("prescriptions")
    histogram.set_title("latency at the paced rates")
    cdf.set_ylabel("share of submitted prescriptions")
    cdf.set_ylim(0, 1.02)
    cdf.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    cdf.set_title("cumulative (missing ones keep it below 1)")
    cdf.legend(loc="lower right", fontsize="small")
    histogram.legend(loc="upper right", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
