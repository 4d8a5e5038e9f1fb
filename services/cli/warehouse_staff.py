"""`pharmacy warehouse`: the commands of warehouse staff. Each command that changes stock sends
its command on inventory.commands.v1 and prints what inventory did (the event it caused on
inventory.events.v1), or why it refused; the views (`stock`, `ledger`, `transfers`) read inventory's
own storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.text import Text

from pharmacy_contracts import inventory as inv
from pharmacy_contracts import topics
from services.inventory.settings import InventorySettings
from services.inventory.storage import InventoryStorage

from . import bus
from .render import (
    describe_inventory_event,
    ledger_document,
    ledger_table,
    ledger_totals,
    print_json,
    stock_document,
    stock_table,
)
from .running import console, run, say_answer, settings_from_env, with_database
from .transfer_view import TransferRow, transfer_rows, transfers_document, transfers_table
from .warehouses import registrations

app = typer.Typer(no_args_is_help=True, help="For warehouse staff: watch stock move, restock, adjust, transfer.")
transfers = typer.Typer(help="Transfers from the central warehouse to township pharmacies: list them, ship, receive.")
app.add_typer(transfers, name="transfers")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date like 2028-03-31") from None


@app.command()
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


@app.command()
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
@app.command(context_settings={"ignore_unknown_options": True})
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
    | inv.QuarantineDecided
    | inv.TransferShipRequested
    | inv.TransferReceiptRequested,
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


@app.command()
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


@app.command("write-off")
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


@app.command()
def watch(from_beginning: bool = typer.Option(False, "--from-beginning")) -> None:
    """A live feed of every stock change and alert (inventory.events.v1). Ctrl-C to stop."""

    async def feed() -> None:
        async for _, event, raw in bus.follow(
            settings_from_env(), topics.INVENTORY_EVENTS, from_beginning=from_beginning
        ):
            console.print(describe_inventory_event(event) if event else f"[red]unreadable event[/] {raw[:120]!r}")

    run(feed())


@app.command()
def stock(
    wide: bool = typer.Option(False, "--wide", help="Every figure of each lot (dispatched, delivered, received, ...)"),
    as_json: bool = typer.Option(False, "--json", help="Every lot with every figure, as one JSON document"),
) -> None:
    """Current stock per warehouse, drug and lot, with expiry, quarantine and expiry warnings."""
    warehouses = run(with_database(lambda db: InventoryStorage(db).all_warehouses()))
    near_expiry_days = InventorySettings().near_expiry_days
    if as_json:
        print_json(stock_document(warehouses, near_expiry_days=near_expiry_days))
        return
    console.print(stock_table(warehouses, near_expiry_days=near_expiry_days, wide=wide))


@app.command()
def ledger(
    warehouse_id: str,
    lot: str = typer.Argument(..., help="The lot id"),
    wide: bool = typer.Option(False, "--wide", help="Where each movement came from and went to, and every figure"),
    as_json: bool = typer.Option(False, "--json", help="Every movement with every figure, as one JSON document"),
) -> None:
    """Every movement of one lot, oldest first, with the figures it left (from the stock ledger)."""
    entries = run(with_database(lambda db: InventoryStorage(db).movements(warehouse_id, lot)))
    if not entries:
        console.print(f"no movements of lot {lot} at {warehouse_id} recorded")
        raise typer.Exit(1)
    if as_json:
        print_json(ledger_document(entries))
        return
    console.print(ledger_table(entries, wide=wide))
    figures = ledger_totals(entries)
    moved = figures.transferred_in or figures.transferred_out or figures.in_transit
    console.print(
        f"received {figures.received}, adjusted {figures.adjusted:+d}, delivered {figures.delivered}"
        + (
            f", transferred in {figures.transferred_in}, in transit {figures.in_transit}, "
            f"transferred out {figures.transferred_out}"
            if moved
            else ""
        )
        + ("" if figures.balanced else "  [red]the books do not balance[/]")
    )


# --- transfers: townships restocked from the centre -------------------------------------------------


@transfers.callback(invoke_without_command=True)
def transfers_list(
    context: typer.Context,
    wide: bool = typer.Option(False, "--wide", help="Since when, the lots, who shipped and received"),
    as_json: bool = typer.Option(False, "--json", help="Every transfer with every detail, as one JSON document"),
) -> None:
    """Suggested, in transit and received transfers (`ship` and `receive` act on them)."""
    if context.invoked_subcommand is not None:
        return
    rows = transfer_rows(run(with_database(lambda db: InventoryStorage(db).all_warehouses())))
    if as_json:
        print_json(transfers_document(rows))
        return
    if not rows:
        console.print("no transfers yet: inventory suggests one when a township runs low of a drug the centre has")
        return
    console.print(transfers_table(rows, wide=wide))


def _transfer(transfer_id: str) -> TransferRow:
    rows = transfer_rows(run(with_database(lambda db: InventoryStorage(db).all_warehouses())))
    found = next((row for row in rows if row.transfer_id == transfer_id), None)
    if found is None:
        console.print(f"[red]no transfer {escape(transfer_id)} is known[/]: `pharmacy warehouse transfers` lists them")
        raise typer.Exit(1)
    return found


@transfers.command("ship")
def transfer_ship(
    transfer_id: str,
    by: str = typer.Option(..., help="Who is shipping, at the central warehouse"),
    quantity: int | None = typer.Option(None, help="Units to ship, if not the suggested quantity"),
) -> None:
    """Ship a suggested transfer from the central warehouse: its units leave the shelf (first
    expiry first, lots that last) and are in transit until the township receives them."""
    row = _transfer(transfer_id)
    if row.state == "received":
        # The centre refuses a transfer it shipped while it remembers it; one received long ago it
        # may have forgotten (it keeps the last finished ones), so the tool does not ask.
        console.print(f"[red]transfer {escape(transfer_id)} was received at {row.to_warehouse_id}[/]: nothing to ship")
        raise typer.Exit(1)
    units = quantity if quantity is not None else row.quantity
    command = inv.TransferShipRequested(
        correlation_id=transfer_id,
        producer="warehouse-cli",
        warehouse_id=row.from_warehouse_id,
        transfer_id=transfer_id,
        to_warehouse_id=row.to_warehouse_id,
        drug_code=row.drug_code,
        quantity=units,
        requested_by=by,
    )
    what = f"shipment of {units} × {row.drug_code} from {row.from_warehouse_id} to {row.to_warehouse_id}"
    _ask_inventory(command, f"{what} (transfer {transfer_id})")


@transfers.command("receive")
def transfer_receive(
    transfer_id: str,
    by: str = typer.Option(..., help="Who received the goods, at the township pharmacy"),
) -> None:
    """Confirm a shipped transfer arrived at the township: its lots go on the shelf there, and the
    central warehouse closes its in-transit units."""
    row = _transfer(transfer_id)
    command = inv.TransferReceiptRequested(
        correlation_id=transfer_id,
        producer="warehouse-cli",
        warehouse_id=row.to_warehouse_id,
        transfer_id=transfer_id,
        requested_by=by,
    )
    _ask_inventory(
        command, f"receipt of {row.quantity} × {row.drug_code} at {row.to_warehouse_id} (transfer {transfer_id})"
    )
