"""`make demo`: the whole system on the embedded dev stack, a rural county's prescriptions, a summary.

An internet hospital publishes chronic-care prescriptions for patients spread over a large rural
county. Some break a safety rule and are rejected; some need a pharmacist, who approves or rejects
them (one hold is left undecided, so it escalates and then expires); the hospital cancels a few,
before and after the courier picked them up. Simulated couriers accept, pick up and deliver with
the patient's code; insulin travels only with cold-chain couriers; some attempts fail and one
courier never answers an offer. The live view shows where every prescription is; the summary shows
how each one ended, the reviews, the cancellations, the deliveries and the stock left by lot.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import typer
from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as pr
from pharmacy_contracts import topics
from pharmacy_contracts.consultation import CancellationRequested
from pharmacy_contracts.patient import PatientNotified
from services.cli import bus
from services.cli.render import Fitted, describe_inventory_event, stock_table
from services.consultation.domain import TERMINAL, PrescriptionStatus, Stage
from services.consultation.storage import ConsultationStorage
from services.inventory.storage import InventoryStorage
from services.runtime.mongo import client_for
from services.runtime.settings import RuntimeSettings

from .devstack import DevStack
from .reference import load_reference_data
from .simulation import CourierSimulator, Plan, county_prescriptions, restocks, warehouse_registrations

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
        "IBU400": 400,
        "WAR5": 300,
        "MOR10": 120,
    },
    "PH-NORTHFORD": {"MET500": 600, "AML5": 300, "LIS10": 200, "LEV50": 180, "SALB100": 6, "INSGL": 10},
    "PH-RIVERTON": {"MET500": 400, "AML5": 200, "ATV20": 180, "AMOX500": 63, "IBU400": 60},
    "PH-KARA-BULAK": {"MET500": 300, "AML5": 150, "LIS10": 120, "LEV50": 90},
}
# Lots a pharmacy has to be careful with: one that expired last week (refused at the door, with a
# reason on inventory.events.v1), one that expires within the warning window (an alert), one too
# short-dated for a 90-day therapy (first-expiry-first-out passes over it).
DIFFICULT_LOTS = [
    ("PH-NORTHFORD", "MET500", 200, "MET500-OLD", -7),
    ("PH-RIVERTON", "AML5", 100, "AML5-SOON", 20),
    ("WH-CENTRAL", "LEV50", 150, "LEV50-SHORT", 60),
    # One supplier batch at the centre and a pharmacy, recalled while the demo runs (`quality_officer`).
    ("WH-CENTRAL", "AML5", 360, "AML5-B2611", 400),
    ("PH-NORTHFORD", "AML5", 90, "AML5-B2611", 400),
]
RECALLED_LOT = "AML5-B2611"
UNREACHABLE = "Farmstead 13"  # no courier ever finds it: shows the retry limit and the release of stock
FAILURES = ["patient_absent", "refused", "damaged", "address_not_found"]
#: Deadlines short enough to happen while the demo runs (hours in production; see the README).
DEMO_DEADLINES = {
    "PHARMACY_SWEEP_INTERVAL_S": "1",
    "PHARMACY_REVIEW_ESCALATE_AFTER_S": "15",
    "PHARMACY_REVIEW_EXPIRE_AFTER_S": "35",
    "PHARMACY_OFFER_ACCEPT_TIMEOUT_S": "10",
    # Deliveries go out in rounds: a depot is planned every 5 s of the demo, or at 4 waiting.
    "PHARMACY_ROUNDS": "true",
    "PHARMACY_ROUNDS_CADENCE_S": "5",
    "PHARMACY_ROUNDS_MIN_DELIVERIES": "4",
    "PHARMACY_ROUNDS_PLAN_ITERATIONS": "300",
    "PHARMACY_ROUNDS_PLAN_TIME_LIMIT_S": "1",
}


def review_decision(codes: Sequence[str], controlled_seen: int) -> Literal["approve", "reject"]:
    """The simulated pharmacist's decision on a hold (after the one left undecided): every other
    controlled-drug prescription, the first among them, is rejected for want of a documented pain
    assessment; every other hold is approved after a look. `controlled_seen`: controlled-drug holds
    decided before this one. Deterministic, so every run shows both (README: `make demo`)."""
    if "CONTROLLED_SUBSTANCE" in codes and controlled_seen % 2 == 0:
        return "reject"
    return "approve"


class Demo:
    def __init__(self, settings: RuntimeSettings, count: int, rate: float, failure_rate: float, seed: int):
        self.settings = settings
        self.count = count
        self.rate = rate
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)
        self.seed = seed
        self.client = client_for(settings)
        db = self.client[settings.mongo_database]
        self.consultation = ConsultationStorage(db)
        self.inventory = InventoryStorage(db)
        self.database = db
        self.feed: deque[str] = deque(maxlen=14)
        self.submitted = 0
        self.failures: Counter[str] = Counter()
        self.reviews: Counter[str] = Counter()
        self.cancel_early: set[str] = set()
        self.cancel_late: set[str] = set()
        self.ignored_once = False
        #: Transfer ids suggested, shipped and received; re-packs (message ids); notifications by language.
        self.transfers: defaultdict[str, set[str]] = defaultdict(set)
        self.told: defaultdict[str, set[str]] = defaultdict(set)
        #: Set once most prescriptions have ended: the recall then also finds patients already served.
        self.recall_due = asyncio.Event()
        #: The recall's answer from each warehouse.
        self.recalled: dict[str, inv.LotRecalled] = {}

    def plan_for(self, offer: c.DispatchOffered) -> Plan:
        if offer.cold_chain:
            self.feed.append(f"[blue]cold chain[/] {offer.package_id} offered to {offer.courier_id} (cold box)")
        if offer.package_id in self.cancel_late:
            return "hold-after-pickup"
        if offer.package_id in self.cancel_early:
            return "ignore"
        if not self.ignored_once:
            self.ignored_once = True
            self.feed.append(f"[magenta]courier[/] {offer.courier_id} does not answer the offer of {offer.package_id}")
            return "ignore"
        if offer.address.line == UNREACHABLE:
            self.failures["address_not_found"] += 1
            return "fail:address_not_found"
        if self.rng.random() < 0.08:
            self.feed.append(f"[magenta]courier[/] {offer.courier_id} is given a wrong code for {offer.package_id}")
            return "wrong-code"
        if self.rng.random() < self.failure_rate:
            reason = self.rng.choice(FAILURES)
            self.failures[reason] += 1
            self.feed.append(f"[magenta]courier[/] {offer.courier_id} will fail {offer.package_id}: {reason}")
            return f"fail-after-pickup:{reason}" if self.rng.random() < 0.5 else f"fail:{reason}"
        return "deliver"

    async def seed_data(self) -> None:
        await load_reference_data(self.database)
        await bus.publish(self.settings, *warehouse_registrations(requested_by="opening stock count"))
        opening = [(w, d, q) for w, drugs in STOCK.items() for d, q in drugs.items()]
        await bus.publish(self.settings, *restocks(opening, requested_by="opening stock count"))
        today = datetime.now(UTC).date()
        difficult = [
            inv.RestockRequested(
                correlation_id=f"opening-{lot}",
                producer="demo",
                warehouse_id=warehouse,
                drug_code=drug,
                lot_id=lot,
                expiry_date=today + timedelta(days=days),
                quantity=units,
                requested_by="opening stock count",
            )
            for warehouse, drug, units, lot, days in DIFFICULT_LOTS
        ]
        await bus.publish(self.settings, *difficult)

    async def submit_all(self) -> list[str]:
        ids = []
        messages = list(county_prescriptions(self.count, seed=self.seed, review_share=0.12))
        for message in messages:
            prescription = message.prescription
            draw = self.rng.random()
            if draw < 0.05:
                object.__setattr__(prescription.patient.address, "line", UNREACHABLE)
            elif draw < 0.08:
                self.cancel_early.add(prescription.prescription_id)
            elif draw < 0.11:
                self.cancel_late.add(prescription.prescription_id)
            # Most patients read Uyghur, some Chinese, a few (visiting experts' patients) English.
            language = self.rng.choices(("ug", "zh", "en"), weights=(6, 3, 1))[0]
            object.__setattr__(prescription.patient, "preferred_language", language)
            ids.append(prescription.prescription_id)
        async with bus.producer(self.settings) as producer:
            for message in messages:
                await bus.publish_all(producer, [message], self.settings)
                self.submitted += 1
                await asyncio.sleep(1 / self.rate)
        return ids

    async def cancel_some(self) -> None:
        """The hospital withdraws a few prescriptions: some while a courier is on the way to the
        warehouse, some after the courier picked the goods up (they come back to quarantine)."""
        handled: set[str] = set()
        async with bus.producer(self.settings) as producer:
            while True:
                wanted = {rx: "courier_assigned" for rx in self.cancel_early} | {
                    rx: "picked_up" for rx in self.cancel_late
                }
                for rx, stage in wanted.items():
                    status = None if rx in handled else await self.consultation.status_of(rx)
                    if status is not None and status.terminal:
                        handled.add(rx)  # finished before the hospital got to it
                    elif status is not None and status.stage.value == stage:
                        cancellation = CancellationRequested(
                            correlation_id=rx,
                            producer="internet-hospital",
                            sender_id="internet-hospital",
                            prescription_id=rx,
                            reason="the patient was admitted to hospital",
                            requested_by="Dr. Petrova",
                        )
                        await bus.publish_all(producer, [cancellation], self.settings)
                        self.feed.append(f"[red]hospital[/] cancels {rx} ({stage.replace('_', ' ')})")
                        handled.add(rx)
                await asyncio.sleep(0.5)

    async def pharmacist(self) -> None:
        """The pharmacist on duty works the review queue: misses the first hold, which escalates and
        expires, then decides each as `review_decision` says."""
        missed_one, controlled_seen = False, 0
        async with bus.producer(self.settings) as producer:
            async for _, event, _ in bus.follow(self.settings, topics.PRESCRIPTION_DECISIONS, from_beginning=True):
                if isinstance(event, pr.ReviewEscalated):
                    self.feed.append(f"[yellow]escalated[/] {event.prescription_id}: review overdue")
                if not isinstance(event, pr.PrescriptionHeld):
                    continue
                codes = sorted({r.code for r in event.reasons})
                if not missed_one:
                    missed_one = True
                    self.reviews["left undecided"] += 1
                    self.feed.append(f"[yellow]held[/] {event.prescription_id} ({', '.join(codes)}): nobody looks")
                    continue
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                controlled = "CONTROLLED_SUBSTANCE" in codes
                reject = review_decision(codes, controlled_seen) == "reject"
                controlled_seen += controlled
                decision = pr.ReviewDecided(
                    correlation_id=event.prescription_id,
                    producer="pharmacist-console",
                    prescription_id=event.prescription_id,
                    decision="reject" if reject else "approve",
                    pharmacist_id="PH-AIGUL",
                    note="no documented pain assessment" if reject else "checked with the patient by phone",
                )
                await bus.publish_all(producer, [decision], self.settings)
                self.reviews["rejected" if reject else "approved"] += 1
                verb = "[red]rejects[/]" if reject else "[green]approves[/]"
                self.feed.append(f"[cyan]pharmacist[/] {verb} {event.prescription_id} ({', '.join(codes)})")

    async def warehouse_clerks(self) -> None:
        """Staff at the central warehouse ship each transfer inventory suggests, and the township's
        clerk confirms it arrived, a moment later each (README: Townships restocked from the centre)."""
        async with bus.producer(self.settings) as producer:
            async for _, event, _ in bus.follow(self.settings, topics.INVENTORY_EVENTS, from_beginning=True):
                command: inv.TransferShipRequested | inv.TransferReceiptRequested
                match event:
                    case inv.TransferSuggested() if event.transfer_id not in self.transfers["suggested"]:
                        self.transfers["suggested"].add(event.transfer_id)
                        command = inv.TransferShipRequested(
                            correlation_id=event.transfer_id,
                            producer="warehouse-console",
                            warehouse_id=event.from_warehouse_id,
                            transfer_id=event.transfer_id,
                            to_warehouse_id=event.warehouse_id,
                            drug_code=event.drug_code,
                            quantity=event.quantity,
                            requested_by="Aigerim Bekova",
                        )
                    case inv.TransferShipped() if event.transfer_id not in self.transfers["shipped"]:
                        self.transfers["shipped"].add(event.transfer_id)
                        command = inv.TransferReceiptRequested(
                            correlation_id=event.transfer_id,
                            producer="warehouse-console",
                            warehouse_id=event.to_warehouse_id,
                            transfer_id=event.transfer_id,
                            requested_by="Gulnara Sadykova",
                        )
                    case inv.TransferReceived():
                        self.transfers["received"].add(event.transfer_id)
                        continue
                    case inv.StockRepacked():
                        self.transfers["packed again"].add(event.message_id)
                        continue
                    case inv.LotRecalled():
                        self.recalled[event.warehouse_id] = event
                        continue
                    case _:
                        continue
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                await bus.publish_all(producer, [command], self.settings)

    async def quality_officer(self) -> None:
        """Once most prescriptions have ended, the supplier recalls a batch: the pharmacy's quality
        officer recalls the lot in every warehouse, as `pharmacy recall` does (README: Lot recall)."""
        await self.recall_due.wait()
        recall_id = "RC-DEMO-B2611"
        commands = [
            inv.LotRecallRequested(
                correlation_id=recall_id,
                producer="warehouse-cli",
                warehouse_id=warehouse_id,
                recall_id=recall_id,
                lot_id=RECALLED_LOT,
                reason="supplier recall notice: tablets out of specification",
                requested_by="Aigerim Bekova",
            )
            for warehouse_id in STOCK
        ]
        await bus.publish(self.settings, *commands)
        self.feed.append(f"[red]recall[/] lot {RECALLED_LOT} in every warehouse")

    async def patients_told(self) -> None:
        """What patients' phones received (patient.notifications.v1), by language."""
        async for _, event, _ in bus.follow(self.settings, topics.PATIENT_NOTIFICATIONS, from_beginning=True):
            if isinstance(event, PatientNotified):
                self.told[event.language].add(event.message_id)  # each once, however often re-published

    async def watch_inventory(self) -> None:
        async for _, event, _ in bus.follow(self.settings, topics.INVENTORY_EVENTS, from_beginning=True):
            if event is not None and not isinstance(event, inv.StockRestocked):
                self.feed.append(describe_inventory_event(event))

    async def statuses(self) -> list[PrescriptionStatus]:
        return await self.consultation.statuses()

    def view(self, statuses: list[PrescriptionStatus], elapsed: float) -> Group:
        return progress_view(Counter(s.stage for s in statuses), self.submitted, self.count, elapsed, self.feed)

    async def run(self, timeout_s: float) -> list[PrescriptionStatus]:
        await self.seed_data()
        couriers = CourierSimulator(self.settings, self.plan_for, delay_s=lambda: self.rng.uniform(0.05, 0.4))
        couriers.start()
        self.couriers = couriers
        helpers = [
            asyncio.create_task(self.watch_inventory()),
            asyncio.create_task(self.pharmacist()),
            asyncio.create_task(self.cancel_some()),
            asyncio.create_task(self.warehouse_clerks()),
            asyncio.create_task(self.patients_told()),
            asyncio.create_task(self.quality_officer()),
        ]
        submitter = asyncio.create_task(self.submit_all())
        started = time.monotonic()
        try:
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    statuses = await self.statuses()
                    live.update(self.view(statuses, time.monotonic() - started))
                    if sum(s.terminal for s in statuses) >= 0.85 * self.count:
                        self.recall_due.set()
                    done = submitter.done() and sum(s.terminal for s in statuses) >= self.count
                    if done or time.monotonic() - started > timeout_s:
                        return statuses
                    await asyncio.sleep(0.5)
        finally:
            for helper in helpers:
                helper.cancel()
            await couriers.stop()
            await asyncio.gather(*helpers, submitter, return_exceptions=True)

    async def summary(self, statuses: list[PrescriptionStatus]) -> None:
        console.print(endings_table(statuses))
        console.print(self.activity(statuses))
        warehouses = await self.inventory.all_warehouses()
        console.print(stock_table(warehouses))
        balanced = all(lot.balanced for w in warehouses for lot in w.lots.values())
        console.print(
            "stock books balance for every lot (received + adjusted + transferred in = available + reserved"
            " + dispatched + quarantined + expired + delivered + in transit + transferred out): "
            + ("[green]yes[/]" if balanced else "[red]NO[/]")
        )

    def activity(self, statuses: list[PrescriptionStatus]) -> Fitted:
        """Reviews, cancellations and deliveries: what the pharmacy and the couriers did."""
        by_id = {s.prescription_id: s for s in statuses}
        delivered = {rx for rx, s in by_id.items() if s.stage is Stage.DELIVERED}
        offers = self.couriers.offers
        cold = {o.package_id for o in offers if o.cold_chain and o.package_id in delivered}
        rounds: dict[str, set[str]] = {}
        for o in offers:
            if o.round_id is not None:
                rounds.setdefault(o.round_id, set()).add(o.dispatch_id)
        expired = sum(1 for s in statuses if any("REVIEW_EXPIRED" in why for why in s.why))
        cancelled = [s for s in statuses if s.stage is Stage.CANCELLED]
        rows = [
            ("held for a pharmacist, approved", self.reviews["approved"]),
            ("held for a pharmacist, rejected", self.reviews["rejected"]),
            ("held, never decided: escalated, then expired", expired),
            (
                "cancelled by the hospital before pickup (stock released)",
                len(self.cancel_early & {s.prescription_id for s in cancelled}),
            ),
            (
                "cancelled after pickup (goods back to quarantine)",
                len(self.cancel_late & {s.prescription_id for s in cancelled}),
            ),
            ("cold-chain deliveries (insulin), all by cold-chain couriers", len(cold)),
            ("delivery rounds driven", len(rounds)),
            ("stops in the largest round", max((len(stops) for stops in rounds.values()), default=0)),
            ("damaged packages packed again", len(self.transfers["packed again"])),
            (
                "transfers to townships suggested / shipped / received",
                " / ".join(str(len(self.transfers[step])) for step in ("suggested", "shipped", "received")),
            ),
            (
                f"lot {RECALLED_LOT} recalled: units quarantined / reservations re-picked / called back"
                " from the road / patients already served (told, and the hospital asked to call)",
                " / ".join(
                    str(n)
                    for n in (
                        sum(r.quarantined for r in self.recalled.values()),
                        sum(len(r.re_picked) + len(r.withdrawn) for r in self.recalled.values()),
                        sum(len(r.on_the_road) for r in self.recalled.values()),
                        sum(len(r.delivered_to) for r in self.recalled.values()),
                    )
                ),
            ),
            (
                "patients told on their phones (Uyghur / Chinese / English)",
                " / ".join(str(len(self.told[language])) for language in ("ug", "zh", "en")),
            ),
            (
                "offers not accepted in time, passed to the next courier",
                sum(1 for w in self.couriers.withdrawals if w.reason == "acceptance_timeout"),
            ),
            (
                "wrong delivery codes refused",
                sum(1 for s in statuses for h in s.history if "wrong delivery code" in h.detail),
            ),
        ]
        rows += [(f"failed attempts: {reason.replace('_', ' ')}", n) for reason, n in sorted(self.failures.items())]
        return activity_table(rows)


# --- what the demo shows: whole numbers and states at 80 columns as on a wide screen ----------------


def progress_view(counts: Counter[Stage], submitted: int, count: int, elapsed: float, feed: Iterable[str]) -> Group:
    """The live view: how many prescriptions are in each state, then the feed. A count beside its
    state, as many to a line as fit: a column per state needs some 200 columns, and narrower rich
    cut the states to `re… he… for re…`."""
    states = [
        Text.assemble((f"{counts[stage]:>5}", "bold" if stage in TERMINAL else ""), f" {stage.value.replace('_', ' ')}")
        for stage in Stage
    ]
    title = f"{submitted}/{count} prescriptions submitted · {elapsed:.0f}s"
    return Group(
        Panel(Columns(states, equal=True, padding=(0, 2)), title=title),
        Panel("\n".join(feed) or "(nothing yet)", title="warehouse and courier feed"),
    )


def endings_table(statuses: list[PrescriptionStatus]) -> Fitted:
    """How each prescription ended: by final state, the most common first, with an example why."""
    table = Table(title="how each prescription ended")
    table.add_column("final state", no_wrap=True)
    table.add_column("prescriptions", justify="right", no_wrap=True)
    table.add_column("for example, why", overflow="fold")
    by_stage: dict[Stage, list[PrescriptionStatus]] = {}
    for status in statuses:
        by_stage.setdefault(status.stage, []).append(status)
    for stage, members in sorted(by_stage.items(), key=lambda kv: -len(kv[1])):
        example = next((m.why[0] for m in members if m.why), "")
        retried = sum(1 for m in members if m.delivery_attempts > 1)
        if stage is Stage.DELIVERED and retried:
            example = f"{retried} of them after a failed attempt"
        label = stage.value if stage in TERMINAL else f"{stage.value}\n(not finished)"
        table.add_row(label, str(len(members)), escape(example))
    return Fitted(table)


def activity_table(rows: Iterable[tuple[str, int | str]]) -> Fitted:
    """Reviews, cancellations and deliveries, counted."""
    table = Table(title="the pharmacy's and the couriers' work")
    table.add_column("what", overflow="fold")
    table.add_column("count", justify="right", no_wrap=True)
    for what, count in rows:
        table.add_row(what, str(count))
    return Fitted(table)


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
    stack.extra_env.update(DEMO_DEADLINES)
    console.print("[bold]starting broker, database, the four services and the live board…[/]")
    stack.start_infra()
    try:
        stack.start_services()
        board = stack.start_board()
        console.print(f"services ready · logs in {stack.logs}")
        console.print(f"[bold]live board: {board}[/]  (open it in a browser to watch the run)")

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
            console.print(f"stack and board ({stack.board_url()}) left running: [bold]make down[/] stops them")
        else:
            stack.stop_all()
            console.print("stack stopped (`--keep-running` leaves it and the board up)")


app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
