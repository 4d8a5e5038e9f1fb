"""The inventory service's outgoing events: every one is assembled here, its envelope filled by
`PRODUCER`. Pure functions: the decisions say what happened, these say how it is told.

`at` is the event's time, the batch's moment on the service's clock (`Rules.now`), so the ledger
and the tests agree on it; `cause` is the message that made it happen (None for a sweep's own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

from pharmacy_contracts import Envelope
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.envelope import Producer
from pharmacy_contracts.prescription import PrescriptionApproved

from . import domain, recalls, transfers
from .domain import Demand, Location, Warehouse

PRODUCER = Producer("inventory")


# --- reservations --------------------------------------------------------------------------------------


def stock_reserved(
    approved: PrescriptionApproved, demand: Demand, reserved: domain.Outcome, *, at: datetime
) -> inv.StockReserved:
    rx = approved.prescription_id
    after = reserved.warehouse
    assert after.location is not None
    return inv.StockReserved(
        **PRODUCER.envelope(rx, approved, at=at),
        prescription_id=rx,
        warehouse_id=after.warehouse_id,
        pickup_location=_coordinates(after.location),
        lines=_lines(demand.quantities),
        picks=_picks(after, reserved.picks),
        levels=_levels(after, demand.lines),
        movements=list(reserved.movements),
    )


def reservation_failed(
    approved: PrescriptionApproved, unfillable: domain.Unfillable, *, at: datetime
) -> inv.ReservationFailed:
    rx = approved.prescription_id
    return inv.ReservationFailed(
        **PRODUCER.envelope(rx, approved, at=at),
        prescription_id=rx,
        reason=unfillable.reason,
        shortages=[
            inv.Shortage(drug_code=s.drug_code, requested=s.requested, best_available=s.best_available)
            for s in unfillable.shortages
        ],
    )


# --- a prescription's hold moving ------------------------------------------------------------------------
# `before` is the warehouse holding the prescription's stock; `moved` is the move out of that hold.


def stock_dispatched(
    before: Warehouse, rx: str, moved: domain.Outcome, cause: Envelope, *, at: datetime
) -> inv.StockDispatched:
    return inv.StockDispatched(**_hold_moved(before, rx, moved, cause, at))


def stock_returned(
    before: Warehouse, rx: str, moved: domain.Outcome, cause: Envelope, *, at: datetime
) -> inv.StockReturned:
    return inv.StockReturned(**_hold_moved(before, rx, moved, cause, at))


def stock_delivered(
    before: Warehouse, rx: str, moved: domain.Outcome, cause: Envelope, *, at: datetime
) -> inv.StockDelivered:
    return inv.StockDelivered(**_hold_moved(before, rx, moved, cause, at))


def stock_released(
    before: Warehouse, rx: str, moved: domain.Outcome, cause: Envelope, *, at: datetime
) -> inv.StockReleased:
    return inv.StockReleased(**_hold_moved(before, rx, moved, cause, at))


def stock_quarantined(
    before: Warehouse,
    rx: str,
    moved: domain.Outcome,
    cause: Envelope,
    *,
    at: datetime,
    why: Literal["undeliverable", "damaged", "cancelled"],
    packed_again: bool | None = None,
) -> inv.StockQuarantined:
    return inv.StockQuarantined(**_hold_moved(before, rx, moved, cause, at), why=why, packed_again=packed_again)


def stock_repacked(packed: domain.Outcome, rx: str, cause: Envelope, *, at: datetime) -> inv.StockRepacked:
    """The new hold of a prescription packed again (`packed.warehouse` holds it)."""
    after = packed.warehouse
    return inv.StockRepacked(
        **_hold_moved(after, rx, packed, cause, at),
        picks=_picks(after, packed.picks),
    )


def _picks(warehouse: Warehouse, picks: Iterable[domain.Pick]) -> list[inv.LotPick]:
    return [
        inv.LotPick(
            drug_code=p.drug_code,
            lot_id=p.lot_id,
            expiry_date=warehouse.lots[p.lot_id].expiry_date,
            quantity=p.quantity,
        )
        for p in picks
    ]


def _hold_moved(before: Warehouse, rx: str, moved: domain.Outcome, cause: Envelope, at: datetime) -> dict[str, object]:
    held = before.holds[rx].lines
    return {
        **PRODUCER.envelope(rx, cause, at=at),
        "prescription_id": rx,
        "warehouse_id": before.warehouse_id,
        "lines": _lines(held),
        "levels": _levels(moved.warehouse, held),
        "movements": list(moved.movements),
    }


# --- warehouse staff's commands ---------------------------------------------------------------------------


def warehouse_registered(command: inv.WarehouseRegistrationRequested, *, at: datetime) -> inv.WarehouseRegistered:
    return inv.WarehouseRegistered(
        **PRODUCER.envelope(command.correlation_id, command, at=at),
        warehouse_id=command.warehouse_id,
        name=command.name,
        kind=command.kind,
        location=command.location,
    )


def stock_restocked(command: inv.RestockRequested, restocked: domain.Outcome, *, at: datetime) -> inv.StockRestocked:
    return inv.StockRestocked(
        **PRODUCER.envelope(command.correlation_id, command, at=at),
        warehouse_id=command.warehouse_id,
        drug_code=command.drug_code,
        lot_id=command.lot_id,
        expiry_date=command.expiry_date,
        quantity=command.quantity,
        requested_by=command.requested_by,
        level=_level(restocked.warehouse, command.drug_code),
        movements=list(restocked.movements),
    )


def stock_adjusted(command: inv.AdjustmentRequested, adjusted: domain.Outcome, *, at: datetime) -> inv.StockAdjusted:
    return inv.StockAdjusted(
        **PRODUCER.envelope(command.correlation_id, command, at=at),
        warehouse_id=command.warehouse_id,
        drug_code=command.drug_code,
        lot_id=command.lot_id,
        delta=command.delta,
        reason=command.reason,
        requested_by=command.requested_by,
        level=_level(adjusted.warehouse, command.drug_code),
        movements=list(adjusted.movements),
    )


def quarantine_cleared(
    command: inv.QuarantineDecided, cleared: domain.Outcome, *, at: datetime
) -> inv.QuarantineCleared:
    return inv.QuarantineCleared(
        **PRODUCER.envelope(command.correlation_id, command, at=at),
        warehouse_id=command.warehouse_id,
        drug_code=command.drug_code,
        lot_id=command.lot_id,
        quantity=command.quantity,
        decision=command.decision,
        reason=command.reason,
        requested_by=command.requested_by,
        level=_level(cleared.warehouse, command.drug_code),
        movements=list(cleared.movements),
    )


#: The commands warehouse staff send that change stock (a refusal of any answers with its drug).
StaffCommand = (
    inv.RestockRequested
    | inv.AdjustmentRequested
    | inv.QuarantineDecided
    | inv.TransferShipRequested
    | inv.TransferReceiptRequested
    | inv.LotRecallRequested
)


def stock_command_refused(
    command: StaffCommand, reason: str, *, at: datetime, drug_code: str | None = None
) -> inv.StockCommandRefused:
    return inv.StockCommandRefused(
        **PRODUCER.envelope(command.correlation_id, command, at=at),
        warehouse_id=command.warehouse_id,
        drug_code=getattr(command, "drug_code", drug_code),
        reason=reason,
    )


# --- transfers: townships restocked from the centre ---------------------------------------------------


def transfer_suggested(
    suggestion: transfers.Suggestion, window_days: int, cause: Envelope | None, *, at: datetime
) -> inv.TransferSuggested:
    transfer, policy = suggestion.transfer, suggestion.policy
    return inv.TransferSuggested(
        **PRODUCER.envelope(transfer.transfer_id, cause, at=at),
        warehouse_id=transfer.to_warehouse_id,
        transfer_id=transfer.transfer_id,
        from_warehouse_id=transfer.from_warehouse_id,
        drug_code=transfer.drug_code,
        quantity=transfer.quantity,
        usable=suggestion.usable,
        reorder_point=suggestion.reorder_point,
        cover=policy.cover,
        recent_demand=suggestion.recent_demand,
        window_days=window_days,
        lead_time_days=policy.lead_time_days,
        safety_stock=policy.safety_stock,
        picks=_transfer_picks(transfer),
    )


def transfer_shipped(
    command: inv.TransferShipRequested, shipped: domain.Outcome, transfer: domain.Transfer, *, at: datetime
) -> inv.TransferShipped:
    after = shipped.warehouse
    return inv.TransferShipped(
        **PRODUCER.envelope(transfer.transfer_id, command, at=at),
        warehouse_id=after.warehouse_id,
        transfer_id=transfer.transfer_id,
        to_warehouse_id=transfer.to_warehouse_id,
        drug_code=transfer.drug_code,
        quantity=transfer.quantity,
        picks=_transfer_picks(transfer),
        requested_by=command.requested_by,
        level=_level(after, transfer.drug_code),
        in_transit=after.level(transfer.drug_code).in_transit,
        movements=list(shipped.movements),
    )


def transfer_received(
    command: inv.TransferReceiptRequested, received: domain.Outcome, transfer: domain.Transfer, *, at: datetime
) -> inv.TransferReceived:
    after = received.warehouse
    return inv.TransferReceived(
        **PRODUCER.envelope(transfer.transfer_id, command, at=at),
        warehouse_id=after.warehouse_id,
        transfer_id=transfer.transfer_id,
        from_warehouse_id=transfer.from_warehouse_id,
        drug_code=transfer.drug_code,
        quantity=transfer.quantity,
        picks=_transfer_picks(transfer),
        requested_by=command.requested_by,
        level=_level(after, transfer.drug_code),
        movements=list(received.movements),
    )


def transfer_closed(
    cause: inv.TransferReceived, closed: domain.Outcome, transfer: domain.Transfer, *, at: datetime
) -> inv.TransferClosed:
    after = closed.warehouse
    return inv.TransferClosed(
        **PRODUCER.envelope(transfer.transfer_id, cause, at=at),
        warehouse_id=after.warehouse_id,
        transfer_id=transfer.transfer_id,
        to_warehouse_id=transfer.to_warehouse_id,
        drug_code=transfer.drug_code,
        quantity=transfer.quantity,
        level=_level(after, transfer.drug_code),
        in_transit=after.level(transfer.drug_code).in_transit,
        movements=list(closed.movements),
    )


def _transfer_picks(transfer: domain.Transfer) -> list[inv.LotPick]:
    return [
        inv.LotPick(drug_code=transfer.drug_code, lot_id=p.lot_id, expiry_date=p.expiry_date, quantity=p.quantity)
        for p in transfer.picks
    ]


# --- lot recalls -----------------------------------------------------------------------------------------


def lot_recalled(command: inv.LotRecallRequested, done: recalls.Recalled, *, at: datetime) -> inv.LotRecalled:
    after = done.warehouse
    return inv.LotRecalled(
        **PRODUCER.envelope(command.recall_id, command, at=at),
        warehouse_id=after.warehouse_id,
        recall_id=command.recall_id,
        lot_id=command.lot_id,
        drug_code=done.drug_code,
        reason=command.reason,
        requested_by=command.requested_by,
        quarantined=done.quarantined,
        re_picked=list(done.re_picked),
        withdrawn=list(done.withdrawn),
        on_the_road=list(done.on_the_road),
        delivered_to=list(done.delivered_to),
        level=_level(after, done.drug_code) if done.drug_code is not None else None,
        movements=list(done.movements),
    )


def prescriptions_recalled(
    command: inv.LotRecallRequested, done: recalls.Recalled, *, at: datetime
) -> list[inv.PrescriptionRecalled]:
    """One per prescription the recall concerns (a re-picked one: nothing changes for its patient)."""
    if done.drug_code is None:  # never held here: nobody was served from here
        return []
    drug = done.drug_code
    concerned: list[tuple[str, inv.RecallStatus]] = [
        *((rx, "delivered") for rx in done.delivered_to),
        *((rx, "on_the_road") for rx in done.on_the_road),
        *((rx, "withdrawn") for rx in done.withdrawn),
    ]
    return [
        inv.PrescriptionRecalled(
            **PRODUCER.envelope(rx, command, at=at),
            prescription_id=rx,
            warehouse_id=done.warehouse.warehouse_id,
            recall_id=command.recall_id,
            lot_id=command.lot_id,
            drug_code=drug,
            quantity=max(1, done.units.get(rx, 1)),
            reason=command.reason,
            status=status,
        )
        for rx, status in concerned
    ]


def recalled_on_delivery(
    before: Warehouse, rx: str, pick: domain.Pick, cause: Envelope, *, at: datetime
) -> inv.PrescriptionRecalled:
    note = before.recalled_lots[pick.lot_id]
    return inv.PrescriptionRecalled(
        **PRODUCER.envelope(rx, cause, at=at),
        prescription_id=rx,
        warehouse_id=before.warehouse_id,
        recall_id=note.recall_id,
        lot_id=pick.lot_id,
        drug_code=pick.drug_code,
        quantity=pick.quantity,
        reason=note.reason,
        status="delivered",
    )


# --- alerts and expiry ---------------------------------------------------------------------------------


def low_stock(
    warehouse: Warehouse, drug: str, threshold: int, correlation_id: str, cause: Envelope | None, *, at: datetime
) -> inv.LowStock:
    return inv.LowStock(
        **PRODUCER.envelope(correlation_id, cause, at=at),
        warehouse_id=warehouse.warehouse_id,
        drug_code=drug,
        available=warehouse.level(drug).available,
        threshold=threshold,
    )


def lot_nearing_expiry(warehouse: Warehouse, lot_id: str, *, at: datetime) -> inv.LotNearingExpiry:
    lot = warehouse.lots[lot_id]
    return inv.LotNearingExpiry(
        **PRODUCER.envelope(lot_id, at=at),
        warehouse_id=warehouse.warehouse_id,
        drug_code=lot.drug_code,
        lot_id=lot_id,
        expiry_date=lot.expiry_date,
        available=lot.available,
    )


def lot_expired(before: Warehouse, after: Warehouse, removed: inv.Movement, *, at: datetime) -> inv.LotExpired:
    return inv.LotExpired(
        **PRODUCER.envelope(removed.lot_id, at=at),
        warehouse_id=before.warehouse_id,
        drug_code=removed.drug_code,
        lot_id=removed.lot_id,
        expiry_date=before.lots[removed.lot_id].expiry_date,
        removed=removed.quantity,
        level=_level(after, removed.drug_code),
        movements=[removed],
    )


# --- payload parts -------------------------------------------------------------------------------------


def _level(warehouse: Warehouse, drug: str) -> inv.StockLevel:
    s = warehouse.level(drug)
    return inv.StockLevel(
        drug_code=drug, available=s.available, reserved=s.reserved, dispatched=s.dispatched, quarantined=s.quarantined
    )


def _levels(warehouse: Warehouse, drugs: Iterable[str]) -> list[inv.StockLevel]:
    return [_level(warehouse, drug) for drug in sorted(set(drugs))]


def _lines(lines: Mapping[str, int]) -> list[inv.StockLine]:
    return [inv.StockLine(drug_code=d, quantity=q) for d, q in sorted(lines.items())]


def _coordinates(location: Location) -> Coordinates:
    return Coordinates(latitude=location.latitude, longitude=location.longitude)
