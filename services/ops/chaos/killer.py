"""The killer: `kill -9` a random service process every few seconds, restart it, watch it come back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..devstack import DevStack
from .progress import Progress, quiet


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
        progress: Progress = quiet,
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
