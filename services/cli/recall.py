"""`pharmacy recall LOT --reason ... --by ...`: recall a lot everywhere.

A write in inventory is one warehouse document, so the tool sends one `LotRecallRequested` per
registered warehouse (read from inventory's storage, as `pharmacy warehouse stock` does), all under
one recall id, and waits for every warehouse's answer (`LotRecalled`, or a refusal) at once. What
each warehouse did is printed, then the prescriptions the lot reached: delivered (the patients are
told and the hospital asked to call them), on the road (called back), withdrawn (ending out of
stock). Sending the same recall again is harmless: each warehouse applies a recall once.
"""

from __future__ import annotations

import asyncio
import json

import typer
from rich.markup import escape

from pharmacy_contracts import inventory as inv
from pharmacy_contracts import topics
from services.inventory.storage import InventoryStorage

from . import bus
from .running import console, run, settings_from_env, with_database


def recall(
    lot: str = typer.Argument(..., help="The lot id, as printed on the pack"),
    reason: str = typer.Option(..., help="Why: the supplier's or the authority's recall notice"),
    by: str = typer.Option(..., help="Who is recalling"),
    as_json: bool = typer.Option(False, "--json", help="Every warehouse's answer as one JSON document"),
) -> None:
    """Recall a lot in every warehouse: its units to quarantine, reservations re-picked from other
    lots (or withdrawn), deliveries on the road called back, the patients served listed and told."""
    settings = settings_from_env()
    warehouses = run(with_database(lambda db: InventoryStorage(db).all_warehouses()))
    registered = sorted(w.warehouse_id for w in warehouses if w.registered)
    if not registered:
        console.print("[red]no registered warehouse[/]: nothing to recall")
        raise typer.Exit(1)
    recall_id = f"RC-{bus.short_id().upper()}"
    commands = [
        inv.LotRecallRequested(
            correlation_id=recall_id,
            producer="warehouse-cli",
            warehouse_id=warehouse_id,
            recall_id=recall_id,
            lot_id=lot,
            reason=reason,
            requested_by=by,
        )
        for warehouse_id in registered
    ]
    wait = settings.answer_wait_s
    if wait <= 0:
        run(bus.publish(settings, *commands))
        console.print(f"recall {recall_id} of lot {escape(lot)} sent to {len(commands)} warehouses")
        return

    async def ask_all() -> list[inv.LotRecalled | object | None]:
        return list(
            await asyncio.gather(
                *(
                    bus.ask(settings, c, topics.INVENTORY_EVENTS, c.warehouse_id, wait, answered=bus.caused_by_it)
                    for c in commands
                )
            )
        )

    answers = run(ask_all())
    done = [a for a in answers if isinstance(a, inv.LotRecalled)]
    if as_json:
        print(json.dumps([a.model_dump(mode="json") for a in done], indent=2, ensure_ascii=False))
    else:
        _print(recall_id, lot, commands, answers)
    if len(done) < len(commands):
        raise typer.Exit(1)


def _print(recall_id: str, lot: str, commands: list[inv.LotRecallRequested], answers: list[object]) -> None:
    console.print(f"recall {recall_id} of lot {escape(lot)}:")
    delivered: list[str] = []
    on_the_road: list[str] = []
    withdrawn: list[str] = []
    for command, answer in zip(commands, answers, strict=True):
        where = command.warehouse_id
        if isinstance(answer, inv.LotRecalled):
            if answer.drug_code is None:
                console.print(f"  {where}: never held the lot (refused from now on)")
                continue
            console.print(
                f"  [green]{where}[/]: {answer.quarantined} units off the shelf, "
                f"{len(answer.re_picked)} reservations re-picked, {len(answer.withdrawn)} withdrawn, "
                f"{len(answer.on_the_road)} on the road called back, delivered to {len(answer.delivered_to)}"
            )
            delivered += answer.delivered_to
            on_the_road += answer.on_the_road
            withdrawn += answer.withdrawn
        elif isinstance(answer, inv.StockCommandRefused):
            console.print(f"  [bold red]{where} REFUSED[/] (stock rule): {escape(answer.reason)}")
        elif isinstance(answer, bus.RefusedAtTheDoor):
            console.print(f"  [bold red]{where} REFUSED[/] ({answer.code}): {escape(answer.detail)}")
        else:
            console.print(f"  [yellow]{where}: no answer yet[/] (the service may be behind)")
    console.print(f"delivered to (patients told, hospital asked to call): {', '.join(delivered) or 'none'}")
    console.print(f"on the road (called back to quarantine): {', '.join(on_the_road) or 'none'}")
    console.print(f"withdrawn (ending out of stock): {', '.join(withdrawn) or 'none'}")
