"""The measured processes: their peak RSS and CPU time, and which service each belongs to."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import psutil

from ..devstack import SERVICES

SAMPLE_EVERY_S = 0.2
INFRASTRUCTURE = ("broker", "database")
BENCH_PROCESS = "bench (this process)"


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
