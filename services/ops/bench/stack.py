"""A fresh dev stack per phase: started on free ports, seeded, caught up, counted, stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.limits import MAX_UNITS
from services.cli import bus
from services.runtime.mongo import client_for
from services.runtime.settings import RuntimeSettings

from ..demo import STOCK
from ..devstack import SERVICES, DevStack, free_port
from ..lag import consumer_lag
from ..reference import UNLIMITED_CAPACITY, load_reference_data
from ..simulation import Plan, restocks, warehouse_registrations
from .interrupts import run_until_interrupted
from .processes import BENCH_PROCESS, INFRASTRUCTURE, ProcessSampler
from .results import BenchError, BenchOptions
from .screen import BenchScreen
from .watch import PipelineWatch

T = TypeVar("T")
UNITS_PER_DRUG = MAX_UNITS  # per warehouse and drug, the most one restock may bring: 3,000 prescriptions use a fraction
SEED_TIMEOUT_S = 60.0


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
            f"PHARMACY_DEV_HOME={stack.home} .venv/bin/python -m services.ops.devstack down"
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
    client = client_for(settings)
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
    times as its version says; a document without a version (a page of ledger lines) once."""
    client = client_for(settings)
    try:
        database = client[settings.mongo_database]
        writes = {}
        for name in sorted(await database.list_collection_names()):
            versions = [doc.get("version") async for doc in database[name].find({}, {"version": 1})]
            writes[name] = sum(v if isinstance(v, int) else 1 for v in versions)
        return writes
    finally:
        client.close()


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
