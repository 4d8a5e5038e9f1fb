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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr, ValidationError
from rich.table import Table
from rich.text import Text

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import CancellationRequested, Prescription, PrescriptionSubmitted, SenderReceipt
from services.consultation import fhir
from services.consultation.domain import Stage
from services.consultation.storage import ConsultationStorage
from services.prescription.domain import FormularyEntry
from services.prescription.storage import PrescriptionStorage
from services.runtime.errors import Refused
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_ids import KafkaTopicIds
from services.runtime.topic_setup import TopicSetupError, create_topics

from . import bus, dlq, pharmacist, recall, warehouse_staff
from . import couriers as couriers_cli
from .dlq.letters import DeadLetter
from .dlq.reading import read_dead_letters
from .render import status_panel
from .running import console, report_failure, run, say_answer, settings_from_env, with_database

app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True, help=__doc__)
formulary = typer.Typer(no_args_is_help=True, help="For pharmacists: the formulary the checks use.")
app.add_typer(warehouse_staff.app, name="warehouse")
app.add_typer(couriers_cli.courier, name="courier")
app.add_typer(formulary, name="formulary")
app.add_typer(couriers_cli.roster, name="couriers")
app.add_typer(couriers_cli.dispatch, name="dispatch")
app.add_typer(dlq.app, name="dlq")
app.add_typer(pharmacist.app, name="review")
app.command("recall")(recall.recall)


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
        # The patient's phone leaves the pharmacy only in the patient's own notifications.
        print(found.model_dump_json(indent=2, exclude={"patient": {"phone"}}))
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
