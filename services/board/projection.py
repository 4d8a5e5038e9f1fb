"""The board's state as a pure fold of the public events: `fold(board, event) -> board`.

Only contracts come in, so the board depends on no service's model. Four rules keep it right
when it reads five topics (their relative order is not guaranteed) and messages arrive twice:

- Stock figures are sums of the events' `movements` (deltas), which add up the same in any order;
  each lot remembers the message ids it counted, so a re-delivered event changes nothing. (The
  `levels` snapshots would be simpler but a stale one read late from another partition would win.)
- A prescription's stage follows the shared lifecycle rules (`pharmacy_contracts.lifecycle`), as the
  consultation service's tracking does: before the courier stage the furthest stage seen wins;
  courier events, in order on one topic, set it; the first terminal stage stays. The board shows
  the stages coarser (`STATES`).
- A row's last step never contradicts its state: an event that moves no stage (a package back at
  the warehouse, a wrong delivery code) explains the row only in the states it can describe
  (`note_fits`); read late, after the prescription moved on, it changes nothing.
- Per-courier counts are sets of (prescription, attempt), so counting twice is impossible.

No patient data is kept: ids, drug codes and names, warehouses and couriers only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Literal

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import CancellationAccepted, PrescriptionAccepted
from pharmacy_contracts.envelope import Envelope
from pharmacy_contracts.lifecycle import TERMINAL, Stage, next_stage, prescription_of, stage_of

STATES: dict[str, str] = {
    "received": "received",
    "held_for_review": "held for review",
    "approved": "approved",
    "reserved": "reserved",
    "with_courier": "with courier",
    "delivered": "delivered",
    "rejected": "rejected",
    "out_of_stock": "out of stock",
    "undeliverable": "undeliverable",
    "cancelled": "cancelled",
}
"""Every state a prescription can be shown in, in lifecycle order, with its label."""
SHOWN_AS: dict[Stage, str] = {
    Stage.RECEIVED: "received",
    Stage.HELD_FOR_REVIEW: "held_for_review",
    Stage.APPROVED: "approved",
    Stage.RESERVED: "reserved",
    Stage.WAITING_FOR_COURIER: "reserved",
    Stage.COURIER_ASSIGNED: "with_courier",
    Stage.ACCEPTED_BY_COURIER: "with_courier",
    Stage.PICKED_UP: "with_courier",
    # A failed attempt's goods are back at the warehouse (or never left) until the next courier.
    Stage.DELIVERY_FAILED: "reserved",
    Stage.DELIVERED: "delivered",
    Stage.REJECTED: "rejected",
    Stage.OUT_OF_STOCK: "out_of_stock",
    Stage.UNDELIVERABLE: "undeliverable",
    Stage.CANCELLED: "cancelled",
}
"""The state the board shows for each lifecycle stage."""
BUCKETS = ("available", "reserved", "dispatched", "quarantine", "expired", "in_transit")
"""Where a lot's units are, inside the warehouse or on the road (to a patient, or to another
warehouse: in transit, counted at the source until received); `outside` is not shown."""
RECENT_ALERTS = 12

DeliveryPhase = Literal["waiting", "assigned", "accepted", "picked_up"]
LotAlert = Literal["nearing_expiry", "expired"]


@dataclass(frozen=True)
class Lot:
    warehouse_id: str
    lot_id: str
    drug_code: str
    expiry_date: date | None = None
    units: Mapping[str, int] = field(default_factory=dict)
    counted: frozenset[str] = frozenset()
    alert: LotAlert | None = None


@dataclass(frozen=True)
class PrescriptionRow:
    prescription_id: str
    stage: Stage
    updated_at: datetime
    seq: int
    note: str = ""
    warehouse_id: str | None = None
    courier_id: str | None = None
    attempt: int = 0
    phase: DeliveryPhase | None = None

    @property
    def state(self) -> str:
        return SHOWN_AS[self.stage]

    @property
    def terminal(self) -> bool:
        return self.stage in TERMINAL


@dataclass(frozen=True)
class CourierRecord:
    """Finished attempts of one courier; what it carries now is read from the prescriptions."""

    courier_id: str
    delivered: frozenset[str] = frozenset()
    failed: frozenset[tuple[str, int]] = frozenset()
    missed_offers: frozenset[tuple[str, int]] = frozenset()


@dataclass(frozen=True)
class Alert:
    message_id: str
    at: datetime
    kind: str
    text: str


@dataclass(frozen=True)
class TransferSeen:
    """A transfer between two warehouses, as its events told it (in any order, any number of times)."""

    transfer_id: str
    drug_code: str
    quantity: int
    from_warehouse_id: str
    to_warehouse_id: str
    shipped: bool = False
    received: bool = False

    @property
    def in_transit(self) -> bool:
        return self.shipped and not self.received


@dataclass(frozen=True)
class Board:
    warehouses: Mapping[str, str] = field(default_factory=dict)
    drug_names: Mapping[str, str] = field(default_factory=dict)
    lots: Mapping[tuple[str, str], Lot] = field(default_factory=dict)
    low_stock: Mapping[tuple[str, str], int] = field(default_factory=dict)
    prescriptions: Mapping[str, PrescriptionRow] = field(default_factory=dict)
    couriers: Mapping[str, CourierRecord] = field(default_factory=dict)
    transfers: Mapping[str, TransferSeen] = field(default_factory=dict)
    alerts: tuple[Alert, ...] = ()
    events: int = 0
    last_event_at: datetime | None = None


EMPTY = Board()


# --- the fold ------------------------------------------------------------------------------------


def fold(board: Board, event: Envelope) -> Board:
    """The board after one more event. Never mutates `board`; events it does not show change only the count."""
    board = replace(board, events=board.events + 1, last_event_at=event.occurred_at)
    board = _stock(board, event)
    board = _transfer(board, event)
    board = _alert(board, event)
    board = _prescription(board, event)
    return _courier(board, event)


def fold_all(board: Board, events: Iterable[Envelope]) -> Board:
    for event in events:
        board = fold(board, event)
    return board


# --- stock ----------------------------------------------------------------------------------------


def _stock(board: Board, event: Envelope) -> Board:
    match event:
        case inv.WarehouseRegistered():
            return replace(board, warehouses={**board.warehouses, event.warehouse_id: event.name})
        case rx.DrugListed():
            return replace(board, drug_names={**board.drug_names, event.drug_code: event.name})
        case inv.StockRestocked():
            board = _with_lot_details(board, event.warehouse_id, event.lot_id, event.drug_code, event.expiry_date)
        case inv.StockReserved() | inv.TransferShipped() | inv.TransferReceived():
            for pick in event.picks:
                board = _with_lot_details(board, event.warehouse_id, pick.lot_id, pick.drug_code, pick.expiry_date)
        case inv.LotNearingExpiry():
            board = _with_lot_details(board, event.warehouse_id, event.lot_id, event.drug_code, event.expiry_date)
            board = _with_lot_alert(board, event.warehouse_id, event.lot_id, "nearing_expiry")
        case inv.LotExpired():
            board = _with_lot_details(board, event.warehouse_id, event.lot_id, event.drug_code, event.expiry_date)
            board = _with_lot_alert(board, event.warehouse_id, event.lot_id, "expired")
        case inv.LowStock():
            key = (event.warehouse_id, event.drug_code)
            board = replace(board, low_stock={**board.low_stock, key: event.threshold})
    movements: list[inv.Movement] = getattr(event, "movements", None) or []
    warehouse_id = getattr(event, "warehouse_id", None)
    if movements and warehouse_id:
        board = _count_movements(board, event.message_id, warehouse_id, movements)
    return board


def _lot(board: Board, warehouse_id: str, lot_id: str, drug_code: str) -> Lot:
    return board.lots.get((warehouse_id, lot_id)) or Lot(warehouse_id=warehouse_id, lot_id=lot_id, drug_code=drug_code)


def _with_lot_details(board: Board, warehouse_id: str, lot_id: str, drug_code: str, expiry: date) -> Board:
    lot = _lot(board, warehouse_id, lot_id, drug_code)
    if lot.expiry_date == expiry:
        return board
    return replace(board, lots={**board.lots, (warehouse_id, lot_id): replace(lot, expiry_date=expiry)})


def _with_lot_alert(board: Board, warehouse_id: str, lot_id: str, alert: LotAlert) -> Board:
    lot = board.lots[(warehouse_id, lot_id)]
    if lot.alert == "expired":  # an expired lot never goes back to "nearing"
        return board
    return replace(board, lots={**board.lots, (warehouse_id, lot_id): replace(lot, alert=alert)})


def _count_movements(board: Board, message_id: str, warehouse_id: str, movements: list[inv.Movement]) -> Board:
    lots = dict(board.lots)
    for lot_id in dict.fromkeys(m.lot_id for m in movements):
        mine = [m for m in movements if m.lot_id == lot_id]
        lot = lots.get((warehouse_id, lot_id)) or Lot(warehouse_id, lot_id, mine[0].drug_code)
        if message_id in lot.counted:
            continue
        units = dict(lot.units)
        for movement in mine:
            units[movement.source] = units.get(movement.source, 0) - movement.quantity
            units[movement.target] = units.get(movement.target, 0) + movement.quantity
        units.pop("outside", None)
        lots[(warehouse_id, lot_id)] = replace(lot, units=units, counted=lot.counted | {message_id})
    return replace(board, lots=lots)


# --- transfers between warehouses ------------------------------------------------------------------


def _transfer(board: Board, event: Envelope) -> Board:
    """Shipped sets one flag and received (or closed at the source) the other: order and repeats do
    not matter. Its units are counted by their movements like any others (`in_transit` at the source)."""
    match event:
        case inv.TransferShipped() | inv.TransferClosed():
            source, destination = event.warehouse_id, event.to_warehouse_id
        case inv.TransferReceived():
            source, destination = event.from_warehouse_id, event.warehouse_id
        case _:
            return board
    seen = board.transfers.get(event.transfer_id) or TransferSeen(
        event.transfer_id, event.drug_code, event.quantity, source, destination
    )
    shipped = isinstance(event, inv.TransferShipped)
    seen = replace(seen, shipped=seen.shipped or shipped, received=seen.received or not shipped)
    return replace(board, transfers={**board.transfers, event.transfer_id: seen})


# --- alerts ---------------------------------------------------------------------------------------


def _alert_of(event: Envelope) -> tuple[str, str] | None:
    match event:
        case inv.LowStock():
            return "low_stock", (
                f"{event.drug_code} low at {event.warehouse_id}: {event.available} left (threshold {event.threshold})"
            )
        case inv.LotNearingExpiry():
            return "nearing_expiry", (
                f"lot {event.lot_id} ({event.drug_code}) at {event.warehouse_id} expires {event.expiry_date}"
            )
        case inv.LotExpired():
            lot = f"lot {event.lot_id} ({event.drug_code}) at {event.warehouse_id}"
            return "expired", f"{lot} expired: {event.removed} units removed"
        case inv.TransferSuggested():
            return "transfer_suggested", (
                f"{event.drug_code} low at {event.warehouse_id} ({event.usable} usable, reorder point "
                f"{event.reorder_point}): transfer {event.transfer_id} of {event.quantity} from "
                f"{event.from_warehouse_id} suggested"
            )
        case inv.LotRecalled() if event.drug_code is not None:
            return "recalled", (
                f"lot {event.lot_id} ({event.drug_code}) recalled at {event.warehouse_id}: {event.quarantined} units to"
                f" quarantine, {len(event.re_picked)} reservations re-picked, {len(event.withdrawn)} withdrawn,"
                f" {len(event.on_the_road)} called back from the road, {len(event.delivered_to)} patients served"
            )
        case rx.ReviewEscalated():
            return "review_overdue", f"{event.prescription_id}: pharmacist review overdue"
        case c.DeliveryOverdue():
            where = f"on the road with {event.courier_id}"
            if event.stage == "awaiting_courier":
                where = "waiting for a courier"
            return "delivery_overdue", f"{event.prescription_id}: overdue, {where}"
    return None


def _alert(board: Board, event: Envelope) -> Board:
    found = _alert_of(event)
    if found is None or any(a.message_id == event.message_id for a in board.alerts):
        return board
    alert = Alert(message_id=event.message_id, at=event.occurred_at, kind=found[0], text=found[1])
    return replace(board, alerts=(alert, *board.alerts)[:RECENT_ALERTS])


# --- prescriptions --------------------------------------------------------------------------------


def _note_of(event: Envelope) -> str | None:
    """What the board says about an event of a prescription's lifecycle, or None if it shows none."""
    match event:
        case PrescriptionAccepted():
            return f"received from {event.sender_id}"
        case CancellationAccepted():
            return f"cancellation requested by {event.sender_id}"
        case rx.PrescriptionHeld():
            return "held: " + ", ".join(dict.fromkeys(r.code for r in event.reasons))
        case rx.ReviewEscalated():
            return "review overdue: escalated"
        case rx.PrescriptionApproved():
            return f"released by {event.reviewed_by}" if event.reviewed_by else "passed the checks"
        case rx.PrescriptionRejected():
            return ", ".join(dict.fromkeys(r.code for r in event.reasons))
        case rx.PrescriptionCancelled():
            return f"cancelled by {event.requested_by}"
        case inv.StockReserved():
            return f"stock reserved at {event.warehouse_id}"
        case inv.ReservationFailed():
            drugs = ", ".join(s.drug_code for s in event.shortages)
            return f"{event.reason}: {drugs}" if drugs else event.reason
        case inv.StockReturned():
            return f"package back at {event.warehouse_id}"
        case inv.StockQuarantined():
            return f"goods quarantined at {event.warehouse_id} ({event.why})"
        case c.DeliveryWaiting():
            return "waiting for a courier"
        case c.CourierAssigned():
            return f"offered to {event.courier_id} (attempt {event.attempt})"
        case c.DeliveryOfferExpired():
            return f"{event.courier_id} did not accept in time"
        case c.DeliveryAccepted():
            return f"accepted by {event.courier_id}"
        case c.DeliveryPickedUp():
            return f"picked up by {event.courier_id}"
        case c.DeliveryCodeRejected():
            return f"wrong delivery code reported by {event.courier_id}"
        case c.DeliveryOverdue():
            return "delivery overdue"
        case c.DeliveryFailed():
            return f"attempt {event.attempt} failed: {event.reason}"
        case c.DeliveryCompleted():
            return f"delivered by {event.courier_id}"
        case c.DeliveryAbandoned():
            return f"given up after {event.attempts} attempts ({event.last_reason})"
        case c.DeliveryCancelled():
            return "delivery cancelled"
    return None


def _prescription(board: Board, event: Envelope) -> Board:
    prescription_id = prescription_of(event)
    note = _note_of(event)
    if prescription_id is None or note is None:
        return board
    row = board.prescriptions.get(prescription_id) or PrescriptionRow(
        prescription_id=prescription_id, stage=Stage.RECEIVED, updated_at=event.occurred_at, seq=board.events
    )
    if _earlier_attempt(row, event):
        return board  # a late copy of an earlier delivery attempt
    reported = stage_of(event)
    stage = row.stage if reported is None else next_stage(row.stage, reported)
    explains = reported is stage if reported is not None else note_fits(event, SHOWN_AS[stage])
    if explains:  # a stale event read late neither explains nor refreshes the row
        row = replace(row, stage=stage, note=note, updated_at=event.occurred_at, seq=board.events)
    if isinstance(event, inv.StockReserved):
        row = replace(row, warehouse_id=event.warehouse_id)
    row = _delivery(row, event)
    return replace(board, prescriptions={**board.prescriptions, prescription_id: row})


_TERMINAL_STATES = frozenset(SHOWN_AS[stage] for stage in TERMINAL)
_QUARANTINED_AFTER = {"undeliverable": "undeliverable", "damaged": "undeliverable", "cancelled": "cancelled"}
_OVERDUE_WHILE = {"awaiting_stock": "approved", "awaiting_courier": "reserved", "on_the_road": "with_courier"}


def note_fits(event: Envelope, state: str) -> bool:
    """Whether an event that moves no stage can be the last step of a row shown in `state`.

    Such events come from other topics than the one that moves the stage, so they may be read after
    the prescription moved on: "package back at the warehouse" read once the next courier has it
    would contradict "with courier". Each fits only the states it describes; once a prescription
    ended, only what happened to its goods afterwards still explains it."""
    match event:
        case CancellationAccepted():
            return state not in _TERMINAL_STATES
        case rx.ReviewEscalated():
            return state == "held_for_review"
        case inv.StockReturned():
            return state == "reserved"
        case inv.StockQuarantined():
            return state == _QUARANTINED_AFTER[event.why]
        case c.DeliveryCodeRejected():
            return state == "with_courier"
        case c.DeliveryOverdue():
            return state == _OVERDUE_WHILE[event.stage]
        case c.DeliveryCancelled():
            return state == "cancelled"
    return True


_COURIER_EVENTS = (
    c.DeliveryWaiting,
    c.CourierAssigned,
    c.DeliveryOfferExpired,
    c.DeliveryAccepted,
    c.DeliveryPickedUp,
    c.DeliveryFailed,
    c.DeliveryCompleted,
    c.DeliveryAbandoned,
    c.DeliveryCancelled,
)


def _earlier_attempt(row: PrescriptionRow, event: Envelope) -> bool:
    attempt = getattr(event, "attempt", None)
    return isinstance(event, _COURIER_EVENTS) and attempt is not None and attempt < row.attempt


def _delivery(row: PrescriptionRow, event: Envelope) -> PrescriptionRow:
    """Who carries the prescription now, and how far they got."""
    match event:
        case c.CourierAssigned():
            return replace(row, courier_id=event.courier_id, attempt=event.attempt, phase="assigned")
        case c.DeliveryAccepted():
            return replace(row, courier_id=event.courier_id, attempt=event.attempt, phase="accepted")
        case c.DeliveryPickedUp():
            return replace(row, courier_id=event.courier_id, attempt=event.attempt, phase="picked_up")
        case c.DeliveryCompleted() | c.DeliveryFailed() | c.DeliveryOfferExpired():
            return replace(row, courier_id=event.courier_id, attempt=event.attempt, phase=None)
        case c.DeliveryWaiting():
            return replace(row, phase="waiting")
        case c.DeliveryAbandoned() | c.DeliveryCancelled():
            return replace(row, phase=None)
    return row


# --- couriers -------------------------------------------------------------------------------------


def _courier(board: Board, event: Envelope) -> Board:
    if not isinstance(event, c.CourierAssigned | c.DeliveryCompleted | c.DeliveryFailed | c.DeliveryOfferExpired):
        return board
    record = board.couriers.get(event.courier_id) or CourierRecord(courier_id=event.courier_id)
    attempt = (event.prescription_id, event.attempt)
    match event:
        case c.DeliveryCompleted():
            record = replace(record, delivered=record.delivered | {event.prescription_id})
        case c.DeliveryFailed():
            record = replace(record, failed=record.failed | {attempt})
        case c.DeliveryOfferExpired():
            record = replace(record, missed_offers=record.missed_offers | {attempt})
    return replace(board, couriers={**board.couriers, event.courier_id: record})


# --- what the page shows --------------------------------------------------------------------------


def snapshot(board: Board, *, latest: int = 15) -> dict[str, Any]:
    """The board as JSON-ready data: stock by warehouse, drug (with its formulary name, once heard) and lot;
    prescriptions; couriers."""
    return {
        "events": board.events,
        "last_event_at": board.last_event_at.isoformat() if board.last_event_at else None,
        "stock": _stock_view(board),
        "prescriptions": _prescriptions_view(board, latest),
        "couriers": _couriers_view(board),
        "alerts": [{"at": a.at.isoformat(), "kind": a.kind, "text": a.text} for a in board.alerts],
    }


def _stock_view(board: Board) -> list[dict[str, Any]]:
    by_warehouse: dict[str, dict[str, list[Lot]]] = {}
    for (warehouse_id, _), lot in sorted(board.lots.items()):
        by_warehouse.setdefault(warehouse_id, {}).setdefault(lot.drug_code, []).append(lot)
    for warehouse_id in board.warehouses:
        by_warehouse.setdefault(warehouse_id, {})
    travelling = sorted((t for t in board.transfers.values() if t.in_transit), key=lambda t: t.transfer_id)
    for transfer in travelling:
        by_warehouse.setdefault(transfer.from_warehouse_id, {})
        by_warehouse.setdefault(transfer.to_warehouse_id, {})
    view = []
    for warehouse_id in sorted(by_warehouse):
        drugs = []
        for drug_code, lots in sorted(by_warehouse[warehouse_id].items()):
            lots = sorted(lots, key=lambda lot: (lot.expiry_date or date.max, lot.lot_id))
            totals = {bucket: sum(lot.units.get(bucket, 0) for lot in lots) for bucket in BUCKETS}
            threshold = board.low_stock.get((warehouse_id, drug_code))
            low = threshold is not None and totals["available"] < threshold
            drugs.append(
                {
                    "drug_code": drug_code,
                    "name": board.drug_names.get(drug_code),
                    **totals,
                    "low_stock_threshold": threshold if low else None,
                    "lots": [
                        {
                            "lot_id": lot.lot_id,
                            "expiry_date": lot.expiry_date.isoformat() if lot.expiry_date else None,
                            **{bucket: lot.units.get(bucket, 0) for bucket in BUCKETS},
                            "alert": lot.alert,
                        }
                        for lot in lots
                    ],
                }
            )
        in_transit = [
            {
                "transfer_id": t.transfer_id,
                "drug_code": t.drug_code,
                "quantity": t.quantity,
                "direction": "out" if t.from_warehouse_id == warehouse_id else "in",
                "other_warehouse_id": t.to_warehouse_id if t.from_warehouse_id == warehouse_id else t.from_warehouse_id,
            }
            for t in travelling
            if warehouse_id in (t.from_warehouse_id, t.to_warehouse_id)
        ]
        view.append(
            {
                "warehouse_id": warehouse_id,
                "name": board.warehouses.get(warehouse_id),
                "drugs": drugs,
                "in_transit": in_transit,
            }
        )
    return view


def _prescriptions_view(board: Board, latest: int) -> dict[str, Any]:
    counts = dict.fromkeys(STATES, 0)
    for row in board.prescriptions.values():
        counts[row.state] += 1
    newest = sorted(board.prescriptions.values(), key=lambda row: row.seq, reverse=True)[:latest]
    return {
        "total": len(board.prescriptions),
        "counts": [{"state": state, "label": label, "count": counts[state]} for state, label in STATES.items()],
        "latest": [
            {
                "prescription_id": row.prescription_id,
                "state": row.state,
                "label": STATES[row.state],
                "terminal": row.terminal,
                "note": row.note,
                "warehouse_id": row.warehouse_id,
                "courier_id": row.courier_id,
                "updated_at": row.updated_at.isoformat(),
            }
            for row in newest
        ],
    }


def _couriers_view(board: Board) -> list[dict[str, Any]]:
    carrying: dict[str, dict[str, list[str]]] = {}
    for row in board.prescriptions.values():
        if row.courier_id and row.phase in ("assigned", "accepted", "picked_up") and not row.terminal:
            where = "on_the_road" if row.phase == "picked_up" else "to_pickup"
            carrying.setdefault(row.courier_id, {"to_pickup": [], "on_the_road": []})[where].append(row.prescription_id)
    view = []
    for courier_id in sorted(set(board.couriers) | set(carrying)):
        record = board.couriers.get(courier_id) or CourierRecord(courier_id=courier_id)
        now = carrying.get(courier_id, {"to_pickup": [], "on_the_road": []})
        view.append(
            {
                "courier_id": courier_id,
                "to_pickup": sorted(now["to_pickup"]),
                "on_the_road": sorted(now["on_the_road"]),
                "delivered": len(record.delivered),
                "failed": len(record.failed),
                "missed_offers": len(record.missed_offers),
            }
        )
    return view
