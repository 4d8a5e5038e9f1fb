"""How the tools show things to people.

Tables are made for an 80-column terminal: ids, numbers and dates are never cut or folded. A
listing shows its few essential columns unless asked for all (`--wide`), draws each row as a block
of lines where even those do not fit (`Fitted`), and gives scripts the whole of it as one JSON
document instead (`--json`, `print_json`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic_core import to_jsonable_python
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pharmacy_contracts import Envelope
from pharmacy_contracts import inventory as inv
from services.consultation.domain import PrescriptionStatus, Stage
from services.inventory.domain import Figures, LedgerEntry, Warehouse, shift

#: Room enough that measuring a table tells what it needs, not what it was given.
_UNBOUNDED = 100_000


# --- tables that fit ------------------------------------------------------------------------------


def listing(title: str | None = None) -> Table:
    """The look of the listing commands' tables: no borders, a rule under the headers, two spaces
    between columns, so that the width of a terminal goes to the values."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )


class Fitted:
    """`table` where its rows fit the width given, else `narrow` (by default the same rows, a block
    of "header value" lines each: `one_block_per_row`).

    Ids, numbers and dates go in `no_wrap` columns and free text in `overflow="fold"` ones. Short
    of room, rich would squeeze even a no_wrap column to `WH-…` (its last resort), so a table is
    drawn only if its no_wrap columns fit whole and its free text has room for its longest word.
    """

    def __init__(self, table: Table, narrow: RenderableType | None = None) -> None:
        self.table = table
        self.narrow = narrow

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        unbounded = options.update_width(_UNBOUNDED)
        for column in self.table.columns:
            if column.no_wrap:
                # A no_wrap column is measured by its longest word, like any other: its least width
                # is its widest cell.
                cells = (column.header, *column.cells)
                column.min_width = max(Measurement.get(console, unbounded, cell).maximum for cell in cells)
        needed = Measurement.get(console, unbounded, self.table).minimum
        if needed <= options.max_width:
            yield self.table
        else:
            yield self.narrow if self.narrow is not None else one_block_per_row(self.table)


def one_block_per_row(table: Table) -> Group:
    """The rows of `table` one below the other, each a block of "header value" lines: for a
    terminal too narrow for a row, where a value longer than the whole line still folds rather
    than disappear."""
    parts: list[RenderableType] = []
    if isinstance(table.title, str):
        parts.append(Text.from_markup(table.title, style="table.title"))
    elif table.title is not None:
        parts.append(table.title)
    columns = table.columns
    for row in zip(*(list(column.cells) for column in columns), strict=True):
        block = Table.grid(padding=(0, 2))
        block.add_column(style="bold", no_wrap=True)
        block.add_column(overflow="fold")
        for column, cell in zip(columns, row, strict=True):
            block.add_row(column.header, cell)
        parts += [Text(""), block]
    return Group(*parts)


def print_json(document: Any) -> None:
    """A listing's `--json`: one JSON document on stdout, without colour or line wrapping,
    whatever the terminal (dates and times in ISO 8601)."""
    print(json.dumps(document, indent=2, ensure_ascii=False, default=to_jsonable_python))


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


#: The figures of a lot as `warehouse stock` heads them: the few a warehouse acts on, then the rest (`--wide`).
STOCK_FIGURES = {"available": "available", "reserved": "reserved", "quarantined": "quarantine"}
WIDE_STOCK_FIGURES = STOCK_FIGURES | {
    "dispatched": "dispatched",
    "expired": "expired",
    "delivered": "delivered",
    "received": "received",
    "adjusted": "adjusted",
    "in_transit": "in transit",
    "transferred_in": "moved in",
    "transferred_out": "moved out",
}


def _expiry(expiry_date: date, today: date, near_expiry_days: int) -> str:
    if expiry_date <= today:
        return "expired"
    return "expires_soon" if expiry_date <= today + timedelta(days=near_expiry_days) else "ok"


def stock_table(
    warehouses: Sequence[Warehouse], *, today: date | None = None, near_expiry_days: int = 30, wide: bool = False
) -> Group:
    """A table per warehouse, by drug and lot (first expiry first), with expiry marks: EXPIRED
    once past it, "expires soon" within `near_expiry_days`. Available, reserved and in quarantine
    units; `wide`: every figure of the lot."""
    today = today or datetime.now(UTC).date()
    figures = WIDE_STOCK_FIGURES if wide else STOCK_FIGURES
    parts: list[RenderableType] = [Text("stock by lot", style="bold")]
    for warehouse in sorted(warehouses, key=lambda w: w.warehouse_id):
        title = f"{warehouse.warehouse_id}  {escape(warehouse.name)}".rstrip()
        title += "" if warehouse.registered else "  [red](not registered)[/]"
        parts.append(Text(""))
        if not warehouse.lots:
            parts.append(Text.from_markup(f"{title}: no lots", style="table.title"))
            continue
        table = listing(title)
        for column in ("drug", "lot", "expires"):
            table.add_column(column, no_wrap=True)
        for heading in figures.values():
            table.add_column(heading, justify="right", no_wrap=True)
        for drug in sorted({lot.drug_code for lot in warehouse.lots.values()}):
            for lot_id, lot in warehouse.lots_of(drug):
                # The mark goes under the date: beside it, it would widen the column past 80 columns.
                expires = {
                    "expired": f"[red]{lot.expiry_date}\nEXPIRED[/]",
                    "expires_soon": f"[yellow]{lot.expiry_date}\nexpires soon[/]",
                    "ok": str(lot.expiry_date),
                }[_expiry(lot.expiry_date, today, near_expiry_days)]
                cells = [_figure(name, getattr(lot, name)) for name in figures]
                table.add_row(drug, escape(lot_id), expires, *cells)
        parts.append(Fitted(table))
    return Group(*parts)


def _figure(name: str, value: int) -> str:
    if name == "adjusted":
        return f"{value:+d}"
    if name == "quarantined" and value:
        return f"[magenta]{value}[/]"
    return str(value)


def stock_document(
    warehouses: Sequence[Warehouse], *, today: date | None = None, near_expiry_days: int = 30
) -> list[dict[str, Any]]:
    """`warehouse stock --json`: every lot with every figure, in the order of the tables."""
    today = today or datetime.now(UTC).date()
    return [
        {
            "warehouse_id": warehouse.warehouse_id,
            "registered": warehouse.registered,
            "drug_code": drug,
            "lot_id": lot_id,
            "expiry_date": lot.expiry_date,
            "expiry": _expiry(lot.expiry_date, today, near_expiry_days),
            **lot.counts().model_dump(),
        }
        for warehouse in sorted(warehouses, key=lambda w: w.warehouse_id)
        for drug in sorted({lot.drug_code for lot in warehouse.lots.values()})
        for lot_id, lot in warehouse.lots_of(drug)
    ]


#: The figures a movement leaves, as `warehouse ledger` heads them: what is on the shelf, then the rest (`--wide`).
LEDGER_FIGURES = {"available": "available"}
WIDE_LEDGER_FIGURES = LEDGER_FIGURES | {
    "reserved": "reserved",
    "dispatched": "dispatched",
    "quarantined": "quarantine",
    "expired": "expired",
    "in_transit": "in transit",
}


def _cause(entry: LedgerEntry) -> str:
    return "; ".join(p for p in (entry.prescription_id, entry.by, entry.reason) if p)


def ledger_table(entries: Sequence[LedgerEntry], *, wide: bool = False) -> Fitted:
    """Every movement of one lot (`entries`, oldest first) with the figures it left: units on the
    shelf after it; `wide`: where from and to, and every figure."""
    first = entries[0]
    table = listing(f"ledger of lot {escape(first.lot_id)} ({first.drug_code}) at {first.warehouse_id}")
    table.add_column("at (UTC)", no_wrap=True)
    table.add_column("movement", no_wrap=True)
    if wide:
        table.add_column("from", no_wrap=True)
        table.add_column("to", no_wrap=True)
    table.add_column("units", justify="right", no_wrap=True)
    figures = WIDE_LEDGER_FIGURES if wide else LEDGER_FIGURES
    for heading in figures.values():
        table.add_column(heading, justify="right", no_wrap=True)
    # Names and reasons staff typed: free text, the one column that may fold.
    table.add_column("for, by, why", overflow="fold")
    after = Figures()
    for entry in entries:
        after = shift(after, entry.movement)
        where = [entry.source, entry.target] if wide else []
        table.add_row(
            f"{entry.occurred_at:%Y-%m-%d %H:%M:%S}",
            entry.kind,
            *where,
            str(entry.quantity),
            *(str(getattr(after, name)) for name in figures),
            escape(_cause(entry)),
        )
    return Fitted(table)


def ledger_totals(entries: Sequence[LedgerEntry]) -> Figures:
    after = Figures()
    for entry in entries:
        after = shift(after, entry.movement)
    return after


_LEDGER_FIELDS = {"occurred_at", "kind", "source", "target", "quantity", "prescription_id", "by", "reason"}


def ledger_document(entries: Sequence[LedgerEntry]) -> dict[str, Any]:
    """`warehouse ledger --json`: the lot, each movement with every figure it left, and the totals."""
    first, after, movements = entries[0], Figures(), []
    for entry in entries:
        after = shift(after, entry.movement)
        movements.append({**entry.model_dump(include=_LEDGER_FIELDS), "after": after.model_dump()})
    return {
        "warehouse_id": first.warehouse_id,
        "lot_id": first.lot_id,
        "drug_code": first.drug_code,
        "movements": movements,
        "totals": after.model_dump(),
        "balanced": after.balanced,
    }


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
        case inv.TransferSuggested():
            return (
                f"{at} [bold cyan]transfer suggested[/]   {event.warehouse_id:<14} {event.quantity} × {event.drug_code}"
                f" from {event.from_warehouse_id}: {event.usable} usable, reorder point {event.reorder_point}"
                f" (pharmacy warehouse transfers ship {event.transfer_id})"
            )
        case inv.TransferShipped():
            lots = ", ".join(f"{p.lot_id} ({p.quantity}, exp {p.expiry_date})" for p in event.picks)
            return (
                f"{at} [cyan]transfer shipped[/]     {event.warehouse_id:<14} {event.quantity} × {event.drug_code}"
                f" to {event.to_warehouse_id} lots {lots} by {escape(event.requested_by)}"
                f" ({event.transfer_id}; {event.level.available} left, {event.in_transit} in transit)"
            )
        case inv.TransferReceived():
            return (
                f"{at} [green]transfer received[/]    {event.warehouse_id:<14} +{event.quantity} × {event.drug_code}"
                f" from {event.from_warehouse_id} by {escape(event.requested_by)}"
                f" ({event.transfer_id}; now {event.level.available})"
            )
        case inv.TransferClosed():
            return (
                f"{at} [green]transfer closed[/]      {event.warehouse_id:<14} {event.quantity} × {event.drug_code}"
                f" received at {event.to_warehouse_id} ({event.transfer_id}; {event.in_transit} still in transit)"
            )
        case inv.LotRecalled():
            return (
                f"{at} [bold red]LOT RECALLED[/]         {event.warehouse_id:<14} lot {event.lot_id}"
                f" ({event.recall_id}, {escape(event.reason)}): {event.quarantined} off the shelf,"
                f" {len(event.re_picked)} re-picked, {len(event.withdrawn)} withdrawn,"
                f" {len(event.on_the_road)} called back, delivered to {len(event.delivered_to)}"
            )
        case inv.PrescriptionRecalled():
            return (
                f"{at} [red]recall[/]               {event.prescription_id:<14} lot {event.lot_id} at"
                f" {event.warehouse_id}: {event.status.replace('_', ' ')}"
            )
    return f"{at} {event.type}"
