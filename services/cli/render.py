"""How the tools show things to people."""

from __future__ import annotations

from rich.panel import Panel
from rich.table import Table

from pharmacy_contracts import Envelope
from pharmacy_contracts import inventory as inv
from services.consultation.domain import PrescriptionStatus
from services.inventory.domain import Warehouse


def status_panel(status: PrescriptionStatus) -> Panel:
    lines = [f"[bold]{status.stage.value}[/]" + ("  (final)" if status.terminal else "")]
    lines += [f"  why: {w}" for w in status.why]
    if status.warehouse_id:
        lines.append(f"  warehouse: {status.warehouse_id}")
    if status.courier_id:
        lines.append(f"  courier: {status.courier_id} (attempt {status.delivery_attempts})")
    lines.append("")
    lines += [f"{h.at:%Y-%m-%d %H:%M:%S}  {h.stage.value:<20} {h.detail}" for h in status.history]
    return Panel("\n".join(lines), title=f"prescription {status.prescription_id}")


def stock_table(warehouses: list[Warehouse]) -> Table:
    table = Table(title="stock")
    for column in ("warehouse", "drug", "available", "reserved", "dispatched", "received", "adjusted"):
        table.add_column(column, justify="right" if column not in ("warehouse", "drug") else "left")
    for warehouse in sorted(warehouses, key=lambda w: w.warehouse_id):
        for drug, s in sorted(warehouse.stock.items()):
            table.add_row(
                warehouse.warehouse_id,
                drug,
                str(s.available),
                str(s.reserved),
                str(s.dispatched),
                str(s.received),
                f"{s.adjusted:+d}",
            )
    return table


def describe_inventory_event(event: Envelope) -> str:
    at = f"{event.occurred_at:%H:%M:%S}"
    match event:
        case inv.StockReserved() | inv.StockReleased() | inv.StockDispatched() | inv.StockReturned():
            verb = {
                "inventory.stock_reserved": "[cyan]reserved[/]",
                "inventory.stock_released": "[yellow]released[/]",
                "inventory.stock_dispatched": "[green]dispatched[/]",
                "inventory.stock_returned": "[magenta]returned[/]",
            }[event.type]
            lines = ", ".join(f"{line.quantity} × {line.drug_code}" for line in event.lines)
            left = ", ".join(f"{lv.drug_code} {lv.available} left" for lv in event.levels)
            return f"{at} {verb:<22} {event.warehouse_id:<14} {lines}  for {event.prescription_id}  ({left})"
        case inv.ReservationFailed():
            short = ", ".join(f"{s.drug_code} {s.requested} wanted, best {s.best_available}" for s in event.shortages)
            return f"{at} [red]out of stock[/]         {event.prescription_id}: {short}"
        case inv.StockRestocked():
            return (
                f"{at} [green]restocked[/]            {event.warehouse_id:<14} +{event.quantity} × {event.drug_code}"
                f" by {event.requested_by} (now {event.level.available})"
            )
        case inv.StockAdjusted():
            return (
                f"{at} [yellow]adjusted[/]             {event.warehouse_id:<14} {event.delta:+d} × {event.drug_code}"
                f" ({event.reason}) by {event.requested_by} (now {event.level.available})"
            )
        case inv.LowStock():
            return (
                f"{at} [bold red]LOW STOCK[/]            {event.warehouse_id:<14} {event.drug_code}: "
                f"{event.available} left (threshold {event.threshold})"
            )
        case inv.StockCommandRefused():
            return f"{at} [red]refused[/]              {event.warehouse_id:<14} {event.drug_code}: {event.reason}"
    return f"{at} {event.type}"
