"""How `pharmacy warehouse transfers` shows transfers from the central warehouse to townships: one
row per transfer, put together from what both ends know (a township its incoming transfers, the
centre its outgoing ones), at 80 columns like every listing (see render.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from rich.markup import escape

from services.inventory.domain import Transfer, Warehouse

from .render import Fitted, listing

#: The states a listing shows, in the order a transfer goes through them.
STATES = ("suggested", "in_transit", "received")
_SHOWN = {"suggested": "suggested", "in_transit": "in transit", "received": "received"}


@dataclass(frozen=True)
class TransferRow:
    transfer_id: str
    drug_code: str
    quantity: int
    from_warehouse_id: str
    to_warehouse_id: str
    state: str
    #: When it entered its state (suggested, shipped, received).
    since: datetime | None
    #: The lots shipped (or suggested), each with its expiry and units.
    lots: tuple[tuple[str, date, int], ...]
    #: Whether the centre closed its in-transit units (it heard of the receipt).
    closed_at_source: bool
    shipped_by: str | None = None
    received_by: str | None = None


def transfer_rows(warehouses: Iterable[Warehouse]) -> list[TransferRow]:
    """Every transfer either end knows, as far as it got: the township's word for suggested and
    received, the centre's for in transit (it knows first) and for closed; oldest first."""
    incoming: dict[str, Transfer] = {}
    outgoing: dict[str, Transfer] = {}
    for warehouse in warehouses:
        incoming.update(warehouse.incoming)
        outgoing.update(warehouse.outgoing)
    rows = []
    for transfer_id in sorted(set(incoming) | set(outgoing)):
        at_township, at_centre = incoming.get(transfer_id), outgoing.get(transfer_id)
        if at_township is not None and at_township.state != "suggested":
            known = at_township  # in transit (it heard of the shipment) or received
        elif at_centre is not None:
            known = at_centre  # shipped, the township not told yet (or closed, long received)
        else:
            assert at_township is not None
            known = at_township  # suggested
        rows.append(
            TransferRow(
                transfer_id=transfer_id,
                drug_code=known.drug_code,
                quantity=known.quantity,
                from_warehouse_id=known.from_warehouse_id,
                to_warehouse_id=known.to_warehouse_id,
                state="received" if known.state == "closed" else known.state,
                since=known.since,
                lots=tuple((p.lot_id, p.expiry_date, p.quantity) for p in known.picks),
                closed_at_source=at_centre is not None and at_centre.state == "closed",
                shipped_by=known.shipped_by,
                received_by=known.received_by,
            )
        )
    earliest = datetime.min.replace(tzinfo=UTC)
    return sorted(rows, key=lambda r: (STATES.index(r.state), r.since or earliest, r.transfer_id))


def transfers_table(rows: Sequence[TransferRow], *, wide: bool = False) -> Fitted:
    """Suggested, in transit and received transfers: what, from where to where, how far it got;
    `wide`: since when, the lots and who shipped and received it."""
    table = listing("transfers from the central warehouse")
    for column in ("transfer", "drug", "units", "from", "to", "state"):
        table.add_column(column, justify="right" if column == "units" else "left", no_wrap=True)
    if wide:
        table.add_column("since (UTC)", no_wrap=True)
        table.add_column("lots (expiry, units)", no_wrap=True)
        table.add_column("shipped by, received by", overflow="fold")
    for row in rows:
        state = _SHOWN[row.state]
        if row.state == "received" and not row.closed_at_source:
            state += "\n(closing at source)"
        cells = [row.transfer_id, row.drug_code, str(row.quantity), row.from_warehouse_id, row.to_warehouse_id, state]
        if wide:
            cells += [
                f"{row.since:%Y-%m-%d %H:%M}" if row.since else "",
                "\n".join(f"{lot} ({expiry}, {units})" for lot, expiry, units in row.lots),
                escape("; ".join(p for p in (row.shipped_by, row.received_by) if p)),
            ]
        table.add_row(*cells)
    return Fitted(table)


def transfers_document(rows: Sequence[TransferRow]) -> list[dict[str, Any]]:
    """`warehouse transfers --json`: every transfer with every detail, in the table's order."""
    return [
        {
            **asdict(row),
            "lots": [{"lot_id": lot, "expiry_date": expiry, "quantity": units} for lot, expiry, units in row.lots],
        }
        for row in rows
    ]
