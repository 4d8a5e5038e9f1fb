"""Progress on screen while a phase runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .watch import STAGES, PipelineWatch


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
