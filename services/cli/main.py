"""`pharmacy`: the command line for upstream systems, pharmacy and warehouse staff, and couriers.

It reaches the system the way its users do: by publishing contract messages on Kafka. The
read-only views (`status`, `warehouse stock`) ask the owning service's own storage module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr, ValidationError
from rich.table import Table
from rich.text import Text

from pharmacy_contracts import inventory as inv
from pharmacy_contracts import topics
from pharmacy_contracts.consultation import CancellationRequested, Prescription, PrescriptionSubmitted, SenderReceipt
from services.consultation import fhir
from services.consultation.domain import Stage
from services.consultation.storage import ConsultationStorage
from services.inventory.storage import InventoryStorage
from services.prescription.domain import FormularyEntry
from services.prescription.storage import PrescriptionStorage
from services.runtime.errors import Refused
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_ids import KafkaTopicIds
from services.runtime.topic_setup import TopicSetupError, create_topics

from . import bus, dlq, pharmacist
from . import couriers as couriers_cli
from .dlq.letters import DeadLetter
from .dlq.reading import read_dead_letters
from .render import describe_inventory_event, status_panel, stock_table
from .running import console, report_failure, run, say_answer, settings_from_env, with_database
from .warehouses import registrations

app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True, help=__doc__)
warehouse = typer.Typer(no_args_is_help=True, help="For warehouse staff: watch stock move, restock, adjust.")
formulary = typer.Typer(no_args_is_help=True, help="For pharmacists: the formulary the checks use.")
app.add_typer(warehouse, name="warehouse")
app.add_typer(couriers_cli.courier, name="courier")
app.add_typer(formulary, name="formulary")
app.add_typer(couriers_cli.roster, name="couriers")
app.add_typer(couriers_cli.dispatch, name="dispatch")
app.add_typer(dlq.app, name="dlq")
app.add_typer(pharmacist.app, name="review")


# --- upstream -----------------------------------------------------------------------------------


@app.command()
def submit(
    file: Path = typer.Argument(
        ..., exists=True, readable=True, help="A prescription, a whole message, or a FHIR R4 Bundle, as JSON"
    ),
    sender_id: str = typer.Option("cli", help="The upstream system's registered id (it signs the message)"),
    wait: float | None = typer.Option(None, "--wait", help="Seconds to wait for the receipt (PHARMACY_ANSWER_WAIT_S)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="Send and return (scripts)"),
) -> None:
    """Publish a prescription on consultation.prescriptions.v1, as an upstream system does, and
    print the consultation service's receipt: accepted, or refused and why (exit 1).

    A FHIR R4 Bundle is sent as it is, marked `content-type: application/fhir+json` and signed the same way."""
    data = json.loads(file.read_text())
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        _submit_fhir_bundle(file.read_bytes(), sender_id, wait, no_wait)
        return
    if "prescription" in data:
        message = PrescriptionSubmitted.model_validate(data)
    else:
        prescription = Prescription.model_validate(data)
        message = PrescriptionSubmitted(
            correlation_id=prescription.prescription_id,
            producer=sender_id,
            sender_id=sender_id,
            prescription=prescription,
        )
    settings = settings_from_env()
    if settings.signing_secret is None:
        settings = _with_dev_stack_key(settings)
    console.print(
        f"submitting [bold]{message.prescription.prescription_id}[/] as message {message.message_id}, "
        f"signed by {message.sender_id} with key {settings.signing_key_id or '(none: it will be quarantined)'}"
    )
    what = f"prescription {message.prescription.prescription_id}"
    wait = _waiting(settings, wait, no_wait)
    if wait <= 0:
        run(bus.publish(settings, message))
        return
    receipt = run(bus.ask(settings, message, topics.CONSULTATION_RECEIPTS, sender_id, wait, answered=_receipt_of))
    say_answer(receipt, waited_s=wait, what=what)


def _waiting(settings: RuntimeSettings, wait: float | None, no_wait: bool) -> float:
    """How long a command waits for its answer: --wait, else PHARMACY_ANSWER_WAIT_S; none with --no-wait."""
    return 0.0 if no_wait else settings.answer_wait_s if wait is None else wait


def _receipt_of(answer: Any, message_id: str) -> bool:
    """The receipt of an upstream message (not the later receipts of its prescription's stages)."""
    return isinstance(answer, SenderReceipt) and answer.answers_message_id == message_id


def _submit_fhir_bundle(body: bytes, sender_id: str, wait: float | None, no_wait: bool) -> None:
    # Mapped here first, as the service will: an unmappable bundle is explained now rather than
    # dead-lettered later, and the record gets the prescription id as its key.
    try:
        bundle = fhir.parse_bundle(body)
        prescription = fhir.to_prescription(bundle).prescription
    except Refused as refusal:
        console.print(
            Text.assemble((f"the pharmacy cannot read this bundle ({refusal.code}): ", "red"), refusal.detail)
        )
        raise typer.Exit(2) from None
    message_id = fhir.message_id_of(bundle, body, {})
    settings = settings_from_env()
    if settings.signing_secret is None:
        settings = _with_dev_stack_key(settings)
    record = bus.encode_fhir(
        body,
        prescription_id=prescription.prescription_id,
        message_id=message_id,
        sender_id=sender_id,
        settings=settings,
    )
    console.print(
        f"submitting FHIR bundle for [bold]{prescription.prescription_id}[/] as message {message_id}, "
        f"signed by {sender_id} with key {settings.signing_key_id or '(none: it will be quarantined)'}"
    )
    wait_s = _waiting(settings, wait, no_wait)
    if wait_s <= 0:
        run(bus.publish_records(settings, record))
        return
    receipt = run(
        bus.ask_after(
            settings,
            lambda: bus.publish_records(settings, record),
            message_id,
            topics.CONSULTATION_PRESCRIPTIONS,
            topics.CONSULTATION_RECEIPTS,
            sender_id,
            wait_s,
            answered=_receipt_of,
        )
    )
    say_answer(receipt, waited_s=wait_s, what=f"prescription {prescription.prescription_id}")


def _with_dev_stack_key(settings: RuntimeSettings) -> RuntimeSettings:
    """Without PHARMACY_SIGNING_KEY_ID/SECRET, sign with the key of a local dev stack (`make up`);
    where the dev tools are not installed (the production image), as the settings say."""
    try:
        from services.ops.devstack import DEV_KEY_ID, DevStack
    except ImportError:
        return settings

    stack = DevStack.from_env()
    if not (stack.home / "signing.key").exists():
        return settings
    return settings.model_copy(update={"signing_key_id": DEV_KEY_ID, "signing_secret": SecretStr(stack.signing_secret)})


@app.command()
def cancel(
    prescription_id: str,
    reason: str = typer.Option(..., help="Why it is withdrawn; the pharmacy and the patient see it"),
    by: str = typer.Option(..., help="Who withdraws it: the doctor, the patient, ..."),
    sender_id: str = typer.Option("cli", help="The upstream system that sent the prescription (it signs the message)"),
    wait: float | None = typer.Option(None, "--wait", help="Seconds to wait for the receipt (PHARMACY_ANSWER_WAIT_S)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="Send and return (scripts)"),
) -> None:
    """Withdraw a prescription on consultation.prescriptions.v1, as the upstream system that sent
    it does, and print the receipt: accepted, or refused and why (exit 1)."""
    try:
        message = CancellationRequested(
            correlation_id=prescription_id,
            producer=sender_id,
            sender_id=sender_id,
            prescription_id=prescription_id,
            reason=reason,
            requested_by=by,
        )
    except ValidationError as error:
        console.print(f"[red]not a valid cancellation:[/] {error}")
        raise typer.Exit(2) from None
    settings = settings_from_env()
    if settings.signing_secret is None:
        settings = _with_dev_stack_key(settings)
    console.print(
        f"cancelling [bold]{prescription_id}[/] as message {message.message_id}, "
        f"signed by {message.sender_id} with key {settings.signing_key_id or '(none: it will be quarantined)'}; "
        f"follow it with `pharmacy status {prescription_id}`"
    )
    wait_s = _waiting(settings, wait, no_wait)
    if wait_s <= 0:
        run(bus.publish(settings, message))
        return
    receipt = run(bus.ask(settings, message, topics.CONSULTATION_RECEIPTS, sender_id, wait_s, answered=_receipt_of))
    say_answer(receipt, waited_s=wait_s, what=f"cancellation of {prescription_id}")


@app.command()
def status(
    prescription_id: str,
    as_json: bool = typer.Option(False, "--json"),
    code: bool = typer.Option(
        False, "--code", help="Only the patient's delivery code (what the hospital's app tells the patient)"
    ),
    until: Stage | None = typer.Option(
        None, "--until", help="Wait until it has reached this stage (up to PHARMACY_ANSWER_WAIT_S), then show it"
    ),
) -> None:
    """Where a prescription is, and why; or, if it never got in, why it was refused at the door."""
    found = run(with_database(lambda db: _status_reaching(ConsultationStorage(db), prescription_id, until)))
    if found is None:
        refusals = refused_at_the_door(
            run(read_dead_letters(settings_from_env(), [topics.CONSULTATION_PRESCRIPTIONS.name])), prescription_id
        )
        if refusals:
            for line in refusals:
                console.print(Text(line, style="red"))
            raise typer.Exit(1)
        console.print(f"no prescription {prescription_id} has been seen yet")
        raise typer.Exit(1)
    if code:
        if found.delivery_code is None:
            console.print(f"{prescription_id} has no delivery code yet: it is given once the prescription is approved")
            raise typer.Exit(1)
        print(found.delivery_code)
    elif as_json:
        print(found.model_dump_json(indent=2))
    else:
        console.print(status_panel(found))


async def _status_reaching(storage: ConsultationStorage, prescription_id: str, stage: Stage | None) -> Any:
    """The status, once it has reached `stage` (its history holds it) or the answer wait is over."""
    deadline = time.monotonic() + settings_from_env().answer_wait_s
    while True:
        found = await storage.status_of(prescription_id)
        reached = found is not None and any(step.stage is stage for step in found.history)
        if stage is None or reached or time.monotonic() > deadline:
            if stage is not None and not reached:
                now = found.stage.value if found is not None else "not seen"
                console.print(Text(f"{prescription_id} has not reached {stage.value} (now: {now})", style="yellow"))
                raise typer.Exit(1)
            return found
        await asyncio.sleep(0.3)


def refused_at_the_door(letters: Iterable[DeadLetter], prescription_id: str) -> list[str]:
    """What became of every message about this prescription the consultation service refused at
    the door (its dead letters, keyed by the prescription id), oldest first."""
    lines = []
    for letter in letters:
        if letter.key != prescription_id.encode():
            continue
        at = datetime.fromtimestamp(letter.timestamp_ms / 1000, UTC)
        sender = letter.header("x-sender-id") or "an unknown sender"
        lines.append(
            f"{prescription_id}: refused at the door {at:%Y-%m-%d %H:%M} UTC, from {sender}: "
            f"{letter.reason}: {letter.header('dlq.detail') or ''}".rstrip(": ")
        )
    return lines


@app.command("fhir-status")
def fhir_status(prescription_id: str) -> None:
    """Where a prescription is, as FHIR R4: a searchset Bundle of MedicationRequest, MedicationDispense
    and SupplyDelivery, for systems that follow prescriptions in FHIR."""

    async def read(db: Any) -> tuple[Any, Any]:
        storage = ConsultationStorage(db)
        return await storage.status_of(prescription_id), await storage.intake_of(prescription_id)

    found, intake = run(with_database(read))
    if found is None:
        console.print(f"no prescription {prescription_id} has been seen yet")
        raise typer.Exit(1)
    print(json.dumps(fhir.status_to_fhir(found, intake.prescription if intake else None), indent=2, ensure_ascii=False))


# --- pharmacists and dispatchers ----------------------------------------------------------------


@formulary.command("load")
def formulary_load(file: Path = typer.Argument(..., exists=True, help="A JSON list of formulary entries")) -> None:
    """Load or update formulary entries (the prescription service's own collection)."""
    entries = [FormularyEntry.model_validate(e) for e in json.loads(file.read_text())]

    async def save(db: Any) -> None:
        storage = PrescriptionStorage(db)
        for entry in entries:
            await storage.save_formulary_entry(entry)

    run(with_database(save))
    console.print(f"{len(entries)} formulary entries loaded")


# --- warehouse staff ----------------------------------------------------------------------------


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date like 2028-03-31") from None


@warehouse.command()
def register(
    warehouse_id: str | None = typer.Argument(None, help="The warehouse's id, e.g. PH-NORTHFORD"),
    name: str | None = typer.Option(None, help="Its name, as staff and couriers know it"),
    kind: str = typer.Option("township", help="central | township"),
    lat: float | None = typer.Option(None, help="Latitude: where it is decides which patients it serves first"),
    lon: float | None = typer.Option(None, help="Longitude"),
    file: Path | None = typer.Option(None, exists=True, help="Register every warehouse of a warehouses.json instead"),
    by: str = typer.Option(..., help="Who is registering"),
) -> None:
    """Register a warehouse or township pharmacy (or move one). Stock is accepted only for registered ones."""
    if file is not None:
        commands = registrations(file, requested_by=by)
    else:
        if warehouse_id is None or name is None or lat is None or lon is None:
            raise typer.BadParameter("give WAREHOUSE_ID, --name, --lat and --lon, or --file")
        fields = {"warehouse_id": warehouse_id, "name": name, "kind": kind, "requested_by": by}
        try:
            command = inv.WarehouseRegistrationRequested.model_validate(
                {
                    **fields,
                    "correlation_id": f"register-{bus.short_id()}",
                    "producer": "warehouse-cli",
                    "location": {"latitude": lat, "longitude": lon},
                }
            )
        except ValidationError as error:
            console.print(f"[red]not a valid registration:[/] {error}")
            raise typer.Exit(2) from None
        commands = [command]
    for command in commands:
        _ask_inventory(
            command,
            f"registration of {command.warehouse_id} ({command.kind}) at "
            f"{command.location.latitude}, {command.location.longitude}",
        )


@warehouse.command()
def restock(
    warehouse_id: str,
    drug_code: str,
    quantity: int,
    lot: str = typer.Option(..., help="The lot number printed on the pack"),
    expiry: str = typer.Option(..., help="The expiry date printed on the pack, e.g. 2028-03-31"),
    by: str = typer.Option(..., help="Who is restocking"),
) -> None:
    """Add received units of one lot of a drug to a registered warehouse."""
    command = inv.RestockRequested(
        correlation_id=f"restock-{bus.short_id()}",
        producer="warehouse-cli",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        lot_id=lot,
        expiry_date=_date(expiry),
        quantity=quantity,
        requested_by=by,
    )
    _ask_inventory(command, f"restock of {quantity} × {drug_code} lot {lot} (expires {expiry}) at {warehouse_id}")


# "-12" is a count to remove, not an option: the command knows no short options to confuse it with.
@warehouse.command(context_settings={"ignore_unknown_options": True})
def adjust(
    warehouse_id: str,
    drug_code: str,
    delta: int = typer.Argument(..., help="Units to add (positive) or remove (negative)"),
    lot: str = typer.Option(..., help="The lot counted"),
    reason: str = typer.Option(..., help="Why: breakage, count correction, ..."),
    by: str = typer.Option(..., help="Who is adjusting"),
) -> None:
    """Correct the shelf count of one lot in a warehouse."""
    command = inv.AdjustmentRequested(
        correlation_id=f"adjust-{bus.short_id()}",
        producer="warehouse-cli",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        lot_id=lot,
        delta=delta,
        reason=reason,
        requested_by=by,
    )
    _ask_inventory(command, f"adjustment of {delta:+d} × {drug_code} lot {lot} at {warehouse_id}")


def _decide_quarantine(
    decision: inv.QuarantineDecision, warehouse_id: str, drug_code: str, quantity: int, lot: str, reason: str, by: str
) -> None:
    command = inv.QuarantineDecided(
        correlation_id=f"quarantine-{bus.short_id()}",
        producer="warehouse-cli",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        lot_id=lot,
        quantity=quantity,
        decision=decision,
        reason=reason,
        requested_by=by,
    )
    done = "release" if decision == "release" else "write-off"
    _ask_inventory(command, f"{done} of {quantity} × {drug_code} lot {lot} from quarantine at {warehouse_id}")


@dataclass(frozen=True)
class _StockAnswer:
    """What a warehouse command did, told as the other commands' answers are."""

    outcome: str
    code: str | None
    detail: str


def _ask_inventory(
    command: inv.WarehouseRegistrationRequested
    | inv.RestockRequested
    | inv.AdjustmentRequested
    | inv.QuarantineDecided,
    what: str,
) -> None:
    """Send a warehouse command and print what inventory did (the event it caused on
    inventory.events.v1), or why it refused it; exits 1 on a refusal. PHARMACY_ANSWER_WAIT_S: 0
    sends and returns."""
    settings = settings_from_env()
    wait = settings.answer_wait_s
    if wait <= 0:
        run(bus.publish(settings, command))
        console.print(f"{what}: sent")
        return
    answer = run(
        bus.ask(settings, command, topics.INVENTORY_EVENTS, command.warehouse_id, wait, answered=bus.caused_by_it)
    )
    if isinstance(answer, inv.StockCommandRefused):
        answer = _StockAnswer("refused", "stock rule", answer.reason)
    elif answer is not None and not isinstance(answer, bus.RefusedAtTheDoor):
        told = " ".join(Text.from_markup(describe_inventory_event(answer)).plain.split())
        answer = _StockAnswer("applied", None, told)
    say_answer(answer, waited_s=wait, what=what)


@warehouse.command()
def release(
    warehouse_id: str,
    drug_code: str,
    quantity: int = typer.Argument(..., help="Units to put back on the shelf"),
    lot: str = typer.Option(..., help="The lot inspected"),
    reason: str = typer.Option(..., help="What the inspection found"),
    by: str = typer.Option(..., help="Who inspected"),
) -> None:
    """Put quarantined units of one lot back on the shelf after inspection (never an expired lot)."""
    _decide_quarantine("release", warehouse_id, drug_code, quantity, lot, reason, by)


@warehouse.command("write-off")
def write_off(
    warehouse_id: str,
    drug_code: str,
    quantity: int = typer.Argument(..., help="Units to destroy"),
    lot: str = typer.Option(..., help="The lot inspected"),
    reason: str = typer.Option(..., help="Why they cannot be dispensed"),
    by: str = typer.Option(..., help="Who decided"),
) -> None:
    """Write off quarantined units of one lot (destroyed or returned to the supplier); the ledger
    keeps who and why."""
    _decide_quarantine("write_off", warehouse_id, drug_code, quantity, lot, reason, by)


@warehouse.command()
def watch(from_beginning: bool = typer.Option(False, "--from-beginning")) -> None:
    """A live feed of every stock change and alert (inventory.events.v1). Ctrl-C to stop."""

    async def feed() -> None:
        async for _, event, raw in bus.follow(
            settings_from_env(), topics.INVENTORY_EVENTS, from_beginning=from_beginning
        ):
            console.print(describe_inventory_event(event) if event else f"[red]unreadable event[/] {raw[:120]!r}")

    run(feed())


@warehouse.command()
def stock(
    wide: bool = typer.Option(False, "--wide", help="Every figure of each lot (dispatched, delivered, received, ...)"),
    as_json: bool = typer.Option(False, "--json", help="Every lot with every figure, as one JSON document"),
) -> None:
    """Current stock per warehouse, drug and lot, with expiry, quarantine and expiry warnings."""
    from services.inventory.settings import InventorySettings

    from .render import print_json, stock_document

    warehouses = run(with_database(lambda db: InventoryStorage(db).all_warehouses()))
    near_expiry_days = InventorySettings().near_expiry_days
    if as_json:
        print_json(stock_document(warehouses, near_expiry_days=near_expiry_days))
        return
    console.print(stock_table(warehouses, near_expiry_days=near_expiry_days, wide=wide))


@warehouse.command()
def ledger(
    warehouse_id: str,
    lot: str = typer.Argument(..., help="The lot id"),
    wide: bool = typer.Option(False, "--wide", help="Where each movement came from and went to, and every figure"),
    as_json: bool = typer.Option(False, "--json", help="Every movement with every figure, as one JSON document"),
) -> None:
    """Every movement of one lot, oldest first, with the figures it left (from the stock ledger)."""
    from .render import ledger_document, ledger_table, ledger_totals, print_json

    entries = run(with_database(lambda db: InventoryStorage(db).movements(warehouse_id, lot)))
    if not entries:
        console.print(f"no movements of lot {lot} at {warehouse_id} recorded")
        raise typer.Exit(1)
    if as_json:
        print_json(ledger_document(entries))
        return
    console.print(ledger_table(entries, wide=wide))
    figures = ledger_totals(entries)
    console.print(
        f"received {figures.received}, adjusted {figures.adjusted:+d}, delivered {figures.delivered}"
        + ("" if figures.balanced else "  [red]the books do not balance[/]")
    )


# --- operators ----------------------------------------------------------------------------------


@app.command("create-topics")
def create_topics_command() -> None:
    """Create every topic of the contracts registry and its dead-letter topic, then check each
    (partitions, replication factor, configs); idempotent. Exits 1 saying what is wrong otherwise."""
    try:
        created = run(create_topics(settings_from_env()))
    except TopicSetupError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(f"created: {', '.join(created) if created else 'nothing, all topics exist'}; every topic checked")


@app.command("topic-ids")
def topic_ids_command(
    as_json: bool = typer.Option(False, "--json", help="Each topic's id (null: none), as one JSON document"),
) -> None:
    """Each topic's id: services keep a topic's offset floors per id, so a topic deleted and
    created again, or mirrored to another cluster, gets a new id and no floor from before applies.

    Where the broker gives no ids, floors are keyed by the topic name: after recreating a topic
    there, set PHARMACY_KAFKA_TRACKING_EPOCH to a new value and restart the services."""
    from .render import Fitted, print_json

    settings = settings_from_env()
    names = [topic.name for topic in topics.ALL_TOPICS]
    ids = run(KafkaTopicIds(settings)(names))
    if as_json:
        found = [{"topic": name, "topic_id": str(ids[name]) if ids.get(name) else None} for name in names]
        print_json({"tracking_epoch": settings.kafka_tracking_epoch or None, "topics": found})
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("topic", no_wrap=True)
    table.add_column("topic id", no_wrap=True)
    for name in names:
        table.add_row(name, str(ids[name]) if ids.get(name) else "[yellow]none[/yellow]")
    console.print(Fitted(table))
    if settings.kafka_tracking_epoch:
        console.print(f"tracking epoch: {settings.kafka_tracking_epoch}")
    if any(ids.get(name) is None for name in names):
        console.print("[yellow]a topic without an id is missing, or the broker keeps none: see --help[/yellow]")


def main() -> None:
    """`pharmacy`: what a command could not do is one line with what to do about it, not a
    traceback; `--debug` anywhere on the line shows the traceback instead."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    else:
        # The client libraries' own error lines ("Unable connect to ...") would say it twice.
        for library in ("aiokafka", "pymongo"):
            logging.getLogger(library).setLevel(logging.CRITICAL)
    try:
        app()
    except Exception as error:  # whatever a command did not answer itself
        if debug:
            raise
        report_failure(error)
        sys.exit(1)


if __name__ == "__main__":
    main()
