"""One chaos run, start to end: the six processes up, the load and the killer on, the system
settled, the evidence read and checked."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime

from services.consultation.storage import ConsultationStorage
from services.courier.storage import CourierStorage
from services.inventory.storage import InventoryStorage
from services.prescription.storage import PrescriptionStorage
from services.runtime.mongo import client_for

from ..devstack import DevStack
from ..reference import UNLIMITED_CAPACITY, Reference, load_reference_data
from ..simulation import CourierSimulator, county_prescriptions
from .checks import check
from .evidence import Records, gather, log_warnings
from .killer import Killer
from .load import Couriers, Load, Shelf, demand_of
from .progress import Progress, quiet
from .report import ChaosReport
from .settling import Settling

PROCESSES = ("consultation-1", "prescription-1", "inventory-1", "inventory-2", "courier-1", "courier-2")


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
        self.client = client_for(self.settings)
        self.db = self.client[self.settings.mongo_database]
        self.records = Records(
            consultation=ConsultationStorage(self.db),
            prescription=PrescriptionStorage(self.db),
            inventory=InventoryStorage(self.db),
            courier=CourierStorage(self.db),
        )
        self.load = Load(self.settings, rate=rate, rng=self.rng)
        self.settling = Settling(
            self.settings,
            self.db,
            self.records.consultation.status.name,
            expected=prescriptions,
            progress=progress,
        )

    async def seed_data(self, demand: Counter[Shelf]) -> None:
        """Formulary, prescribers and interactions as staff load them; the first `couriers` of the
        roster with room for every delivery; then the warehouses and their opening stock."""
        # Room for every delivery at once: the chaos run checks the guarantees under kills, not the
        # throttling by capacity (unit and end-to-end tests cover that), which would only slow it down.
        await load_reference_data(self.db, couriers=self.couriers, courier_capacity=UNLIMITED_CAPACITY)
        await self.load.open_stock(demand, self.records.inventory)

    async def run(self) -> ChaosReport:
        messages = list(county_prescriptions(self.count, seed=self.seed, faulty_share=self.faulty_share, patients=None))
        reference = Reference.load()
        demand = demand_of(messages, reference)
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
        watcher = asyncio.create_task(self.settling.watch(self.load, started, stop_watch))
        simulator.start()
        try:
            killer.start()
            publish_started = time.monotonic()
            await self.load.submit(messages, demand)
            report.publish_s = round(time.monotonic() - publish_started, 1)
            self.progress(
                f"all published in {report.publish_s}s; killing until {self.kill_until_terminal:.0%} are terminal "
                f"(at most {self.kill_after_publish_s:.0f}s more)"
            )
            # The killer goes on while the backlog flows through the services.
            await self.settling.until_terminal_share(self.kill_until_terminal, at_most_s=self.kill_after_publish_s)
            await killer.stop()
            self.progress(f"killer stopped after {killer.kills.total()} kills; waiting for the system to settle")
            settle_started = time.monotonic()
            await self.settling.settle(report, timeout_s=self.settle_timeout_s)
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
        check(report, await gather(self.settings, self.records, ids, self.load, couriers))
        report.log_warnings = log_warnings(self.stack.logs, PROCESSES)
        return report

    def close(self) -> None:
        self.client.close()


CHAOS_ROUNDS = {
    "PHARMACY_ROUNDS": "true",
    "PHARMACY_ROUNDS_CADENCE_S": "1",
    "PHARMACY_ROUNDS_MIN_DELIVERIES": "5",
    "PHARMACY_ROUNDS_PLAN_ITERATIONS": "200",
    "PHARMACY_ROUNDS_PLAN_TIME_LIMIT_S": "0.5",
}


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
    rounds: bool = True,
    progress: Progress = quiet,
) -> ChaosReport:
    """Run the six processes on `stack` (broker and database already up) under load and kills, then
    check every guarantee. The service processes are stopped at the end; the stack stays up.
    `rounds`: deliveries go out in planned delivery rounds, planned often and briefly (a depot
    every second, or at five waiting), so kills land in the middle of plans and re-plans."""
    if rounds:
        stack.extra_env.update(CHAOS_ROUNDS)
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
