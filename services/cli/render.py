"""How the tools show things to people."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from pharmacy_contracts import Envelope
from pharmacy_contracts import inventory as inv
from services.consultation.domain import PrescriptionStatus, Stage
from services.inventory.domain import Warehouse


def status_panel(status: PrescriptionStatus) -> Panel:
    if status.stage is Stage.DELIVERED:
        style = "green"
    elif status.terminal:
        style = "red"
    elif status.stage in (Stage.HELD_FOR_REVIEW, Stage.WAITING_FOR_COURIER, Stage.DELIVERY_FAILED):
        style = "yellow"
    else:
        style = "bold"
    lines = [f"[{style}]{status.stage.value.replace('_', ' ')}[/]" + ("  (final)" if status.terminal else "")]
    # Reasons and names come from upstream systems and staff: escaped, never read as markup.
    lines += [f"  why: {escape(w)}" for w in status.why]
    if status.warehouse_id:
        lines.append(f"  warehouse: {status.warehouse_id}")
    if status.courier_id:
        lines.append(f"  courier: {status.courier_id} (attempt {status.delivery_attempts})")
    if status.delivery_code and not status.terminal:
        # Only the patient's side sees this; the courier hears it at the door and the delivery counts only then.
        lines.append(f"  delivery code to read to the courier at the door: [bold]{status.delivery_code}[/]")
    lines.append("")
    for h in status.history:
        line = f"{h.at:%Y-%m-%d %H:%M:%S}  {h.stage.value:<20} {escape(h.detail)}"
        lines.append(f"[yellow]{line}  (!)[/]" if h.warning else line)
    return Panel("\n".join(lines), title=f"prescription {status.prescription_id}")


def stock_table(warehouses: list[Warehouse], *, today: date | None = None, near_expiry_days: int = 30) -> Table:
    """By warehouse, drug and lot (first expiry first), with expiry marks: EXPIRED once past it,
    "expires soon" within `near_expiry_days`."""
    today = today or datetime.now(UTC).date()
    table = Table(title="stock by lot")
    columns = ("warehouse", "drug", "lot", "expires", "available", "reserved", "dispatched", "quarantine", "expired")
    columns += ("delivered", "received", "adjusted")
    for column in columns:
        table.add_column(column, justify="left" if column in ("warehouse", "drug", "lot", "expires") else "right")
    for warehouse in sorted(warehouses, key=lambda w: w.warehouse_id):
        where = warehouse.warehouse_id + ("" if warehouse.registered else " [red](not registered)[/]")
        for drug in sorted({lot.drug_code for lot in warehouse.lots.values()}):
            for lot_id, lot in warehouse.lots_of(drug):
                if lot.expiry_date <= today:
                    expires = f"[red]{lot.expiry_date} EXPIRED[/]"
                elif lot.expiry_date <= today + timedelta(days=near_expiry_days):
                    expires = f"[yellow]{lot.expiry_date} expires soon[/]"
                else:
                    expires = str(lot.expiry_date)
                table.add_row(
                    where,
                    drug,
                    escape(lot_id),
                    expires,
                    str(lot.available),
                    str(lot.reserved),
                    str(lot.dispatched),
                    f"[magenta]{lot.quarantined}[/]" if lot.quarantined else "0",
                    str(lot.expired),
                    str(lot.delivered),
                    str(lot.received),
                    f"{lot.adjusted:+d}",
                )
    return table


def describe_inventory_event(event: Envelope) -> str:
    at = f"{event.occurred_at:%H:%M:%S}"
    match event:
        case (
            inv.StockReserved()
            | inv.StockReleased()
            | inv.StockDispatched()
            | inv.StockReturned()
            | inv.StockQuarantined()
            | inv.StockDelivered()
        ):
            verb = {
                "inventory.stock_reserved": "[cyan]reserved[/]",
                "inventory.stock_released": "[yellow]released[/]",
                "inventory.stock_dispatched": "[green]dispatched[/]",
                "inventory.stock_returned": "[magenta]returned[/]",
                "inventory.stock_quarantined": "[bold magenta]quarantined[/]",
                "inventory.stock_delivered": "[bold green]delivered[/]",
            }[event.type]
            lines = ", ".join(f"{line.quantity} × {line.drug_code}" for line in event.lines)
            left = ", ".join(f"{lv.drug_code} {lv.available} left" for lv in event.levels)
            extra = ""
            if isinstance(event, inv.StockReserved):
                extra = " lots " + ", ".join(f"{p.lot_id} ({p.quantity}, exp {p.expiry_date})" for p in event.picks)
            elif isinstance(event, inv.StockQuarantined):
                extra = f" ({event.why})"
            return f"{at} {verb:<22} {event.warehouse_id:<14} {lines}  for {event.prescription_id}{extra}  ({left})"
        case inv.ReservationFailed():
            short = ", ".join(f"{s.drug_code} {s.requested} wanted, best {s.best_available}" for s in event.shortages)
            why = "out of stock" if event.reason == "OUT_OF_STOCK" else "not all in one warehouse"
            return f"{at} [red]{why}[/]         {event.prescription_id}: {short}"
        case inv.StockRestocked():
            return (
                f"{at} [green]restocked[/]            {event.warehouse_id:<14} +{event.quantity} × {event.drug_code}"
                f" lot {event.lot_id} (exp {event.expiry_date}) by {escape(event.requested_by)}"
                f" (now {event.level.available})"
            )
        case inv.StockAdjusted():
            return (
                f"{at} [yellow]adjusted[/]             {event.warehouse_id:<14} {event.delta:+d} × {event.drug_code}"
                f" lot {event.lot_id} ({escape(event.reason)}) by {escape(event.requested_by)}"
                f" (now {event.level.available})"
            )
        case inv.QuarantineCleared():
            done = "released" if event.decision == "release" else "written off"
            return (
                f"{at} [yellow]quarantine {done:<11}[/] {event.warehouse_id:<14} {event.quantity} × {event.drug_code}"
                f" lot {event.lot_id} ({escape(event.reason)}) by {escape(event.requested_by)}"
                f" (now {event.level.available} on the shelf, {event.level.quarantined} in quarantine)"
            )
        case inv.WarehouseRegistered():
            return (
                f"{at} [blue]registered[/]           {event.warehouse_id:<14} {escape(event.name)} ({event.kind})"
                f" at {event.location.latitude}, {event.location.longitude}"
            )
        case inv.LowStock():
            return (
                f"{at} [bold red]LOW STOCK[/]            {event.warehouse_id:<14} {event.drug_code}: "
                f"{event.available} left (threshold {event.threshold})"
            )
        case inv.LotNearingExpiry():
            return (
                f"{at} [yellow]expires soon[/]         {event.warehouse_id:<14} {event.drug_code} lot {event.lot_id}:"
                f" {event.available} on the shelf expire {event.expiry_date}"
            )
        case inv.LotExpired():
            return (
                f"{at} [bold red]EXPIRED[/]              {event.warehouse_id:<14} {event.drug_code} lot {event.lot_id}"
                f" ({event.expiry_date}): {event.removed} taken off the shelf (now {event.level.available})"
            )
        case inv.StockCommandRefused():
            return (
                f"{at} [red]refused[/]              {event.warehouse_id:<14} {event.drug_code}: {escape(event.reason)}"
            )
    return f"{at} {event.type}"
