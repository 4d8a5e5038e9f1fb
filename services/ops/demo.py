"""`make demo`: the whole system on the embedded dev stack, a rural county's prescriptions, a summary.

An internet hospital publishes chronic-care prescriptions for patients spread over a large rural
county; simulated couriers accept, pick up and deliver, and some deliveries fail. The live view
shows where every prescription is; the summary shows how each one ended and the stock left.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, deque
from importlib import resources
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import topics
from services.cli import bus
from services.cli.render import describe_inventory_event, stock_table
from services.consultation.domain import TERMINAL, PrescriptionStatus, Stage
from services.consultation.storage import ConsultationStorage
from services.courier.domain import CourierProfile
from services.courier.storage import CourierStorage
from services.inventory.storage import InventoryStorage
from services.prescription.domain import FormularyEntry
from services.prescription.storage import PrescriptionStorage
from services.runtime.documents import connect
from services.runtime.settings import RuntimeSettings

from .devstack import DevStack
from .simulation import CourierSimulator, Plan, county_prescriptions, restocks

console = Console()

STOCK = {
    "WH-CENTRAL": {
        "MET500": 3000,
        "AML5": 1500,
        "LIS10": 900,
        "ATV20": 1200,
        "LEV50": 600,
        "SALB100": 30,
        "INSGL": 20,
        "AMOX500": 200,
    },
    "PH-NORTHFORD": {"MET500": 600, "AML5": 300, "LIS10": 200, "LEV50": 180, "SALB100": 6, "INSGL": 10},
    "PH-RIVERTON": {"MET500": 400, "AML5": 200, "ATV20": 180, "AMOX500": 63},
}
UNREACHABLE = "Farmstead 13"  # no courier ever finds it: shows the retry limit and the release of stock
FAILURES = ["patient_absent", "refused", "damaged", "address_not_found"]


def _data(name: str) -> list[dict[str, Any]]:
    return json.loads(resources.files("services.ops").joinpath("data", name).read_text())


class Demo:
    def __init__(self, settings: RuntimeSettings, count: int, rate: float, failure_rate: float, seed: int):
        self.settings = settings
        self.count = count
        self.rate = rate
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)
        self.seed = seed
        self.client = connect(settings.mongo_url.get_secret_value())
        db = self.client[settings.mongo_database]
        self.status_store = ConsultationStorage(db).status
        self.inventory = InventoryStorage(db)
        self.prescription = PrescriptionStorage(db)
        self.courier = CourierStorage(db)
        self.feed: deque[str] = deque(maxlen=12)
        self.submitted = 0

    def plan_for(self, offer: c.DispatchOffered) -> Plan:
        if offer.address.line == UNREACHABLE:
            return "fail:address_not_found"
        if self.rng.random() < self.failure_rate:
            reason = self.rng.choice(FAILURES)
            self.feed.append(f"[magenta]courier[/] {offer.courier_id} will fail {offer.package_id}: {reason}")
            return f"fail-after-pickup:{reason}" if self.rng.random() < 0.5 else f"fail:{reason}"
        return "deliver"

    async def seed_data(self) -> None:
        for entry in _data("formulary.json"):
            await self.prescription.save_formulary_entry(FormularyEntry.model_validate(entry))
        for profile in _data("couriers.json"):
            await self.courier.save_courier(CourierProfile.model_validate(profile))
        opening = [(w, d, q) for w, drugs in STOCK.items() for d, q in drugs.items()]
        await bus.publish(self.settings, *restocks(opening, requested_by="opening stock count"))

    async def submit_all(self) -> list[str]:
        ids = []
        messages = list(county_prescriptions(self.count, seed=self.seed))
        for message in messages:
            prescription = message.prescription
            if self.rng.random() < 0.05:
                object.__setattr__(prescription.patient.address, "line", UNREACHABLE)
            ids.append(prescription.prescription_id)
        async with bus.producer(self.settings) as producer:
            for message in messages:
                await bus.publish_all(producer, [message], self.settings)
                self.submitted += 1
                await asyncio.sleep(1 / self.rate)
        return ids

    async def watch_inventory(self) -> None:
        async for _, event, _ in bus.follow(self.settings, topics.INVENTORY_EVENTS, from_beginning=True):
            if event is not None and not isinstance(event, inv.StockRestocked):
                self.feed.append(describe_inventory_event(event))

    async def statuses(self) -> list[PrescriptionStatus]:
        return await self.status_store.find()

    def view(self, statuses: list[PrescriptionStatus], elapsed: float) -> Group:
        counts = Counter(s.stage for s in statuses)
        table = Table(title=f"{self.submitted}/{self.count} prescriptions submitted · {elapsed:.0f}s", expand=True)
        for stage in Stage:
            table.add_column(stage.value.replace("_", " "), justify="right")
        table.add_row(*(f"[bold]{counts[s]}[/]" if s in TERMINAL else str(counts[s]) for s in Stage))
        return Group(table, Panel("\n".join(self.feed) or "…", title="warehouse and courier feed"))

    async def run(self, timeout_s: float) -> list[PrescriptionStatus]:
        await self.seed_data()
        couriers = CourierSimulator(self.settings, self.plan_for, delay_s=lambda: self.rng.uniform(0.05, 0.4))
        couriers.start()
        watcher = asyncio.create_task(self.watch_inventory())
        submitter = asyncio.create_task(self.submit_all())
        started = time.monotonic()
        try:
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    statuses = await self.statuses()
                    live.update(self.view(statuses, time.monotonic() - started))
                    done = submitter.done() and sum(s.terminal for s in statuses) >= self.count
                    if done or time.monotonic() - started > timeout_s:
                        return statuses
                    await asyncio.sleep(0.5)
        finally:
            watcher.cancel()
            await couriers.stop()
            await asyncio.gather(watcher, submitter, return_exceptions=True)

    async def summary(self, statuses: list[PrescriptionStatus]) -> None:
        table = Table(title="how each prescription ended")
        table.add_column("final state")
        table.add_column("prescriptions", justify="right")
        table.add_column("for example, why")
        by_stage: dict[Stage, list[PrescriptionStatus]] = {}
        for status in statuses:
            by_stage.setdefault(status.stage, []).append(status)
        for stage, members in sorted(by_stage.items(), key=lambda kv: -len(kv[1])):
            example = next((m.why[0] for m in members if m.why), "")
            retried = sum(1 for m in members if m.delivery_attempts > 1)
            if stage is Stage.DELIVERED and retried:
                example = f"{retried} of them after a failed attempt"
            label = stage.value if stage in TERMINAL else f"{stage.value} (not finished)"
            table.add_row(label, str(len(members)), example)
        console.print(table)
        warehouses = await self.inventory.all_warehouses()
        console.print(stock_table(warehouses))
        balanced = all(
            s.received + s.adjusted == s.available + s.reserved + s.dispatched
            for w in warehouses
            for s in w.stock.values()
        )
        console.print(
            "stock books balance (received = available + reserved + dispatched): "
            + ("[green]yes[/]" if balanced else "[red]NO[/]")
        )


def main(
    prescriptions: int = typer.Option(80, help="How many prescriptions the hospital publishes"),
    rate: float = typer.Option(8.0, help="Prescriptions per second"),
    failure_rate: float = typer.Option(0.15, help="Chance that a delivery attempt fails"),
    seed: int = typer.Option(2026, help="Seed of the simulated county"),
    timeout: float = typer.Option(240.0, help="Give up waiting after this many seconds"),
    keep_running: bool = typer.Option(False, help="Leave the stack running afterwards (stop with make down)"),
) -> None:
    """Run the whole system on the embedded stack with a simulated county, then shut it down."""
    stack = DevStack.from_env()
    console.print("[bold]starting broker, database and the four services…[/]")
    stack.start_infra()
    try:
        stack.start_services()
        console.print(f"services ready · logs in {stack.logs}")

        async def run_and_summarise() -> list[PrescriptionStatus]:
            demo = Demo(stack.runtime_settings(), prescriptions, rate, failure_rate, seed)
            try:
                finished = await demo.run(timeout)
                await demo.summary(finished)
                return finished
            finally:
                demo.client.close()

        statuses = asyncio.run(run_and_summarise())
        unfinished = [s for s in statuses if not s.terminal]
        if len(statuses) < prescriptions or unfinished:
            console.print(f"[red]{prescriptions - len(statuses) + len(unfinished)} prescriptions did not finish[/]")
            raise typer.Exit(1)
    finally:
        if keep_running:
            console.print("stack left running: [bold]make down[/] stops it")
        else:
            stack.stop_all()
            console.print("stack stopped")


app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
