"""`pharmacy`: the command line for upstream systems, pharmacy and warehouse staff, and couriers.

It reaches the system the way its users do: by publishing contract messages on Kafka. The
read-only views (`status`, `warehouse stock`) ask the owning service's own storage module.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import SecretStr

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import topics
from pharmacy_contracts.consultation import Prescription, PrescriptionSubmitted
from services.consultation.storage import ConsultationStorage
from services.courier.domain import CourierProfile
from services.courier.storage import CourierStorage
from services.inventory.storage import InventoryStorage
from services.prescription.domain import FormularyEntry
from services.prescription.storage import PrescriptionStorage
from services.runtime.documents import connect
from services.runtime.kafka import create_topics
from services.runtime.settings import RuntimeSettings

from . import bus, dlq
from .render import describe_inventory_event, status_panel, stock_table
from .running import console, run, settings_from_env

T = TypeVar("T")

app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True, help=__doc__)
warehouse = typer.Typer(no_args_is_help=True, help="For warehouse staff: watch stock move, restock, adjust.")
courier = typer.Typer(no_args_is_help=True, help="For couriers: receive dispatches and report on them.")
formulary = typer.Typer(no_args_is_help=True, help="For pharmacists: the formulary the checks use.")
couriers = typer.Typer(no_args_is_help=True, help="For dispatchers: the courier roster.")
app.add_typer(warehouse, name="warehouse")
app.add_typer(courier, name="courier")
app.add_typer(formulary, name="formulary")
app.add_typer(couriers, name="couriers")
app.add_typer(dlq.app, name="dlq")


async def _with_database(use: Callable[[Any], Awaitable[T]]) -> T:
    settings = settings_from_env()
    client = connect(settings.mongo_url.get_secret_value())
    try:
        return await use(client[settings.mongo_database])
    finally:
        client.close()


# --- upstream -----------------------------------------------------------------------------------


@app.command()
def submit(
    file: Path = typer.Argument(..., exists=True, readable=True, help="A prescription, or a whole message, as JSON"),
    sender_id: str = typer.Option("cli", help="The upstream system's registered id (it signs the message)"),
) -> None:
    """Publish a prescription on consultation.prescriptions.v1, as an upstream system does."""
    data = json.loads(file.read_text())
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
    run(bus.publish(settings, message))
    console.print(
        f"submitted [bold]{message.prescription.prescription_id}[/] as message {message.message_id}, "
        f"signed by {message.sender_id} with key {settings.signing_key_id or '(none: it will be quarantined)'}"
    )


def _with_dev_stack_key(settings: RuntimeSettings) -> RuntimeSettings:
    """Without PHARMACY_SIGNING_KEY_ID/SECRET, sign with the key of a local dev stack (`make up`)."""
    from services.ops.devstack import DEV_KEY_ID, DevStack

    stack = DevStack.from_env()
    if not (stack.home / "signing.key").exists():
        return settings
    return settings.model_copy(update={"signing_key_id": DEV_KEY_ID, "signing_secret": SecretStr(stack.signing_secret)})


@app.command()
def status(prescription_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Where a prescription is, and why."""
    found = run(_with_database(lambda db: ConsultationStorage(db).status.get(prescription_id)))
    if found is None:
        console.print(f"no prescription {prescription_id} has been seen yet")
        raise typer.Exit(1)
    if as_json:
        print(found.model_dump_json(indent=2))
    else:
        console.print(status_panel(found))


# --- pharmacists and dispatchers ----------------------------------------------------------------


@formulary.command("load")
def formulary_load(file: Path = typer.Argument(..., exists=True, help="A JSON list of formulary entries")) -> None:
    """Load or update formulary entries (the prescription service's own collection)."""
    entries = [FormularyEntry.model_validate(e) for e in json.loads(file.read_text())]

    async def save(db: Any) -> None:
        storage = PrescriptionStorage(db)
        for entry in entries:
            await storage.save_formulary_entry(entry)

    run(_with_database(save))
    console.print(f"{len(entries)} formulary entries loaded")


@couriers.command("load")
def couriers_load(file: Path = typer.Argument(..., exists=True, help="A JSON list of couriers")) -> None:
    """Load or update the courier roster (the courier service's own collection)."""
    roster = [CourierProfile.model_validate(e) for e in json.loads(file.read_text())]

    async def save(db: Any) -> None:
        storage = CourierStorage(db)
        for profile in roster:
            await storage.save_courier(profile)

    run(_with_database(save))
    console.print(f"{len(roster)} couriers loaded")


# --- warehouse staff ----------------------------------------------------------------------------


@warehouse.command()
def restock(
    warehouse_id: str, drug_code: str, quantity: int, by: str = typer.Option(..., help="Who is restocking")
) -> None:
    """Add received units of a drug to a warehouse."""
    command = inv.RestockRequested(
        correlation_id=f"restock-{bus.short_id()}",
        producer="warehouse-cli",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        quantity=quantity,
        requested_by=by,
    )
    run(bus.publish(settings_from_env(), command))
    console.print(f"restock of {quantity} × {drug_code} at {warehouse_id} requested")


@warehouse.command()
def adjust(
    warehouse_id: str,
    drug_code: str,
    delta: int = typer.Argument(..., help="Units to add (positive) or remove (negative)"),
    reason: str = typer.Option(..., help="Why: breakage, count correction, ..."),
    by: str = typer.Option(..., help="Who is adjusting"),
) -> None:
    """Correct the count of a drug in a warehouse."""
    command = inv.AdjustmentRequested(
        correlation_id=f"adjust-{bus.short_id()}",
        producer="warehouse-cli",
        warehouse_id=warehouse_id,
        drug_code=drug_code,
        delta=delta,
        reason=reason,
        requested_by=by,
    )
    run(bus.publish(settings_from_env(), command))
    console.print(f"adjustment of {delta:+d} × {drug_code} at {warehouse_id} requested")


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
def stock() -> None:
    """Current stock per warehouse and drug."""
    warehouses = run(_with_database(lambda db: InventoryStorage(db).all_warehouses()))
    console.print(stock_table(warehouses))


# --- couriers -----------------------------------------------------------------------------------


@courier.command()
def inbox(courier_id: str, from_beginning: bool = typer.Option(True, "--from-beginning/--new-only")) -> None:
    """Dispatches offered to one courier, live. Report with `pharmacy courier report`."""

    async def feed() -> None:
        async for _, offer, _ in bus.follow(
            settings_from_env(), topics.COURIER_DISPATCH, from_beginning=from_beginning, keys={courier_id}
        ):
            if isinstance(offer, c.DispatchOffered):
                flags = " ".join(
                    f for f, on in (("COLD-CHAIN", offer.cold_chain), ("CONTROLLED", offer.controlled)) if on
                )
                console.print(
                    f"[bold]{offer.dispatch_id}[/] package {offer.package_id} (attempt {offer.attempt}) "
                    f"pick up at {offer.pickup_warehouse_id} → {offer.address.line}, {offer.address.town} "
                    f"☎ {offer.contact_phone} {flags}"
                )

    run(feed())


@courier.command()
def report(
    dispatch_id: str,
    status: str = typer.Argument(..., help="accepted | picked_up | delivered | failed"),
    courier_id: str = typer.Option(..., "--courier", help="Your courier id"),
    package_id: str = typer.Option(..., "--package", help="The package id from the dispatch"),
    reason: str | None = typer.Option(None, help="For failed: patient_absent | address_not_found | refused | damaged"),
    note: str | None = typer.Option(None),
) -> None:
    """Report on a dispatch: accepted, picked up, delivered, or failed with a reason."""
    update = c.CourierReported.model_validate(
        {
            "correlation_id": package_id,
            "producer": f"courier-{courier_id}",
            "dispatch_id": dispatch_id,
            "courier_id": courier_id,
            "package_id": package_id,
            "status": status,
            "failure_reason": reason,
            "note": note,
        }
    )
    run(bus.publish(settings_from_env(), update))
    console.print(f"reported {status} on {dispatch_id}")


# --- operators ----------------------------------------------------------------------------------


@app.command("create-topics")
def create_topics_command() -> None:
    """Create every topic of the contracts registry and its dead-letter topic (idempotent)."""
    created = run(create_topics(settings_from_env()))
    console.print(f"created: {', '.join(created) if created else 'nothing, all topics exist'}")


if __name__ == "__main__":
    app()
