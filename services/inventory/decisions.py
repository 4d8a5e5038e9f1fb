"""The inventory service's decisions: plain functions of (state, message) -> Decision, with no I/O.

The use cases (service.py) hand them to the unit of work; each reads only its document, its
message and the batch's `Rules` (the moment and the stock settings), and says what the document
becomes, the events it causes (assembled in messages.py), or why nothing happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from functools import cached_property, partial
from typing import Literal
from uuid import NAMESPACE_URL, uuid5

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.prescription import DrugListed, PrescriptionApproved
from services.runtime.unit_of_work import Decision

from . import domain, messages, recalls, transfers
from .domain import Allocation, AllocationState, Demand, Hold, ListedDrug, Location, Transfer, TransferPick, Warehouse
from .settings import InventorySettings

DeliveryEvent = c.DeliveryPickedUp | c.DeliveryFailed | c.DeliveryCompleted | c.DeliveryAbandoned | c.DeliveryCancelled

#: How a hold moves: the rule, the event that reports the move, and what the log line says.
HoldRule = Callable[[Warehouse, str], domain.Outcome | None]
HoldMove = tuple[HoldRule, Callable[..., Envelope], str]


class ExpiryDue(Envelope):
    """The expiry sweep's proposal for one warehouse (never on the wire): lots to alert on or expire."""

    type: Literal["inventory.expiry_due"] = "inventory.expiry_due"
    warehouse_id: str


class TransfersDue(Envelope):
    """The transfer sweep's proposal for one township (never on the wire): drugs that look like they
    need a transfer, decided again on the document as it stands."""

    type: Literal["inventory.transfers_due"] = "inventory.transfers_due"
    warehouse_id: str
    drug_codes: list[str]


@dataclass(frozen=True)
class Rules:
    """What every decision of one batch reads besides its document and its message: the moment
    (events carry it, expiry counts days from it) and the stock settings."""

    now: datetime
    settings: InventorySettings
    #: The drugs the formulary lists, of those this batch restocks (none looked up: none listed).
    listed: frozenset[str] = frozenset()
    #: Every warehouse, as the batch read them (possibly a moment stale): the centres a transfer is
    #: suggested from, the township one is shipped to. Empty where the batch needs none.
    warehouses: Mapping[str, Warehouse] = field(default_factory=dict)
    #: Units of each recalled lot the ledger says were delivered, by (warehouse, lot) then prescription.
    delivered: Mapping[tuple[str, str], Mapping[str, int]] = field(default_factory=dict)

    @property
    def today(self) -> date:
        return self.now.date()

    @property
    def delivery_days(self) -> int:
        return self.settings.delivery_days

    def threshold(self, drug: str, warehouse: Warehouse) -> int:
        settings = self.settings
        return domain.threshold_for(drug, settings.low_stock_thresholds, settings.low_stock_threshold, warehouse)

    @cached_property
    def transfer_rules(self) -> transfers.TransferRules:
        settings = self.settings
        return transfers.TransferRules(
            today=self.today,
            window_days=settings.demand_window_days,
            min_shelf_days=settings.transfer_min_shelf_days,
            policies=settings.reorder_policies,
            default=settings.reorder_default,
        )

    def suggest_transfers(
        self, township: Warehouse, drugs: Iterable[str], cause: Envelope | None, *, key: str | None = None
    ) -> tuple[Warehouse, list[Envelope]]:
        """A transfer suggested for each of these drugs the township now needs (`transfers.suggest`),
        from the centres as the batch read them; the township remembers it open. Its id follows
        from `key` (the cause's message id unless given), so a decision made again names the same."""
        if township.kind != "township":
            return township, []
        others = [w for wid, w in self.warehouses.items() if wid != township.warehouse_id]
        events: list[Envelope] = []
        for drug in sorted(set(drugs)):
            transfer_id = transfer_id_for(township.warehouse_id, drug, key or (cause.message_id if cause else ""))
            suggestion = transfers.suggest(
                township, drug, others, self.transfer_rules, transfer_id=transfer_id, at=self.now
            )
            if suggestion is not None:
                township = suggestion.township
                events.append(
                    messages.transfer_suggested(suggestion, self.settings.demand_window_days, cause, at=self.now)
                )
        return township, events

    def alerts(
        self, before: Warehouse, after: Warehouse, drugs: Iterable[str], correlation_id: str, cause: Envelope | None
    ) -> list[Envelope]:
        """LowStock once a drug's stock crosses under its threshold (as it stands after the change:
        a reservation larger than any before raises it as it is made)."""
        return [
            messages.low_stock(after, drug, self.threshold(drug, after), correlation_id, cause, at=self.now)
            for drug in sorted(set(drugs))
            if domain.fell_below(before, after, drug, self.threshold(drug, after))
        ]


class AtWarehouse(Enum):
    """What a reservation found at the warehouse it was sent to."""

    RESERVED = "reserved"
    ALREADY_HELD = "already held"
    CANNOT_FILL = "cannot fill"


def demand_of(approved: PrescriptionApproved) -> Demand:
    coordinates = approved.delivery.address.coordinates
    patient = None if coordinates is None else Location(latitude=coordinates.latitude, longitude=coordinates.longitude)
    return Demand(
        prescription_id=approved.prescription_id,
        lines=domain.merge_lines((line.drug_code, line.quantity, line.days_supply) for line in approved.lines),
        patient=patient,
    )


def allocate(
    rules: Rules,
    plans: Mapping[str, tuple[domain.ReservationPlan | None, Demand]],
    current: Allocation | None,
    approved: PrescriptionApproved,
) -> Decision[Allocation]:
    """The allocation as the plan wants it before any warehouse is written: a claim of the chosen
    warehouse, the failure, or a hold found settled. It is left alone if another worker moved it
    on meanwhile (claimed another warehouse, settled, withdrawn); the result is the allocation as
    it stands, which says what to do next."""
    plan, demand = plans[approved.message_id]
    rx = approved.prescription_id
    replacing = plan.replacing if isinstance(plan, domain.ReserveAt | domain.Unfillable) else None
    open_to_us = current is None or (
        current.state is AllocationState.RESERVING and current.warehouse_id in (None, replacing)
    )
    match plan:
        case domain.AlreadyHeld(warehouse_id):
            return settle_at(warehouse_id, demand, current)
        case domain.ReserveAt(warehouse_id) if open_to_us:
            claim = Allocation(
                prescription_id=rx, state=AllocationState.RESERVING, lines=demand.quantities, warehouse_id=warehouse_id
            )
            return Decision(claim, result=claim)
        case domain.Unfillable() if open_to_us:
            failed = Allocation(prescription_id=rx, state=AllocationState.OUT_OF_STOCK, lines=demand.quantities)
            event = messages.reservation_failed(approved, plan, at=rules.now)
            return Decision(failed, [event], result=failed)
    return Decision(result=current)


def settle_at(warehouse_id: str, demand: Demand, current: Allocation | None) -> Decision[Allocation]:
    """RESERVED at the warehouse holding the stock, unless the allocation was settled (or
    withdrawn) meanwhile; the result is the allocation as it stands."""
    if current is None:
        current = Allocation(
            prescription_id=demand.prescription_id, state=AllocationState.RESERVING, lines=demand.quantities
        )
    if current.state is not AllocationState.RESERVING:
        return Decision(result=current)
    settled = current.model_copy(update={"state": AllocationState.RESERVED, "warehouse_id": warehouse_id})
    return Decision(settled, result=settled)


def settle_reservation(
    holding: Mapping[str, tuple[str, Demand]], current: Allocation | None, approved: PrescriptionApproved
) -> Decision[Allocation]:
    warehouse_id, demand = holding[approved.message_id]
    return settle_at(warehouse_id, demand, current)


def reserve_at(
    rules: Rules, demands: Mapping[str, Demand], current: Warehouse | None, approved: PrescriptionApproved
) -> Decision[Warehouse]:
    """All lines held at this warehouse, first expiry first, or nothing (the result says which)."""
    rx = approved.prescription_id
    if current is not None and rx in current.holds:
        return Decision(result=AtWarehouse.ALREADY_HELD)
    demand = demands[approved.message_id]
    if current is None or not current.registered:
        return Decision(result=AtWarehouse.CANNOT_FILL)
    try:
        reserved = domain.reserve(current, rx, demand.lines, today=rules.today, delivery_days=rules.delivery_days)
    except domain.StockRefused:
        return Decision(result=AtWarehouse.CANNOT_FILL)
    event = messages.stock_reserved(approved, demand, reserved, at=rules.now)
    alerts = rules.alerts(current, reserved.warehouse, demand.lines, rx, approved)
    after, suggested = rules.suggest_transfers(reserved.warehouse, demand.lines, approved)
    return Decision(after, [event, *alerts, *suggested], result=AtWarehouse.RESERVED)


def after_delivery_event(current: Allocation | None, event: DeliveryEvent) -> Decision[Allocation]:
    """The allocation as a delivery event leaves it; the result is the allocation as it stands."""
    rx = event.prescription_id
    if isinstance(event, c.DeliveryCancelled | c.DeliveryAbandoned) and current is None:
        withdrawn = isinstance(event, c.DeliveryCancelled) and not event.goods_returned
        if withdrawn or (isinstance(event, c.DeliveryAbandoned) and not event.goods_travelled):
            # Withdrawn before inventory saw the approval: a late approval reserves nothing.
            cancelled = Allocation(prescription_id=rx, state=AllocationState.CANCELLED, lines={})
            return Decision(cancelled, result=cancelled)
    if current is None or current.state is not AllocationState.RESERVING:
        return Decision(result=current)
    if isinstance(event, c.DeliveryCancelled):
        if event.goods_returned:
            return Decision(result=current)
        cancelled = current.model_copy(update={"state": AllocationState.CANCELLED})
        return Decision(cancelled, result=cancelled)
    settled = current.model_copy(update={"state": AllocationState.RESERVED, "warehouse_id": event.warehouse_id})
    return Decision(settled, result=settled)


def hold_move_for(message: Envelope, hold: Hold) -> HoldMove | None:
    """How a message moves a prescription's hold, as the hold stands (None: it does not)."""
    match message:
        case c.DeliveryPickedUp():
            return domain.dispatch, messages.stock_dispatched, "dispatched"
        case c.DeliveryFailed(goods_returned=True):
            return domain.return_goods, messages.stock_returned, "returned"
        case c.DeliveryCompleted():
            return domain.deliver, messages.stock_delivered, "delivered"
        case c.DeliveryAbandoned(goods_travelled=True):
            why = "damaged" if message.last_reason == "damaged" else "undeliverable"
            return domain.quarantine, partial(messages.stock_quarantined, why=why), f"quarantined ({why})"
        case c.DeliveryAbandoned():
            return withdrawal(hold, "undeliverable")
        case c.DeliveryCancelled(goods_returned=True):
            return domain.quarantine, partial(messages.stock_quarantined, why="cancelled"), "quarantined (cancelled)"
        case c.DeliveryCancelled() | PrescriptionApproved():
            # An approval here: its delivery was withdrawn while it was being reserved.
            return withdrawal(hold, "cancelled")
    return None


def repack(rules: Rules, current: Warehouse, failed: c.DeliveryFailed) -> Decision[Warehouse]:
    """A package found damaged, to be tried again: the damaged units to quarantine and the
    prescription packed again from the shelf. If the shelf cannot, only the quarantine is told, and
    the courier service gives the delivery up (it waits for the re-pack)."""
    rx = failed.prescription_id
    outcomes = domain.repack(current, rx, today=rules.today, delivery_days=rules.delivery_days)
    assert outcomes is not None
    damaged, packed = outcomes
    quarantined = messages.stock_quarantined(
        current, rx, damaged, failed, at=rules.now, why="damaged", packed_again=packed is not None
    )
    if packed is None:
        return Decision(
            damaged.warehouse, [quarantined], result="quarantined (damaged); the shelf cannot pack it again"
        )
    repacked = messages.stock_repacked(packed, rx, failed, at=rules.now)
    return Decision(packed.warehouse, [quarantined, repacked], result="quarantined (damaged) and packed again")


def withdrawal(hold: Hold, why: Literal["undeliverable", "cancelled"]) -> HoldMove:
    """The delivery is given up: goods that never left go back on the shelf; goods that travelled,
    even if back since, go to quarantine: nothing that left goes straight back to available stock."""
    if hold.travelled:
        return domain.withdraw, partial(messages.stock_quarantined, why=why), f"quarantined ({why}): the goods had left"
    return domain.withdraw, messages.stock_released, "released"


def move_hold(rules: Rules, current: Warehouse | None, message: Envelope) -> Decision[Warehouse]:
    """The prescription's hold moved by the rule the message and the hold as it stands pick; the
    result is what the log line says."""
    rx: str = message.prescription_id  # type: ignore[attr-defined]
    if current is None or rx not in current.holds:
        return Decision.unchanged()
    if isinstance(message, c.DeliveryFailed) and message.reason == "damaged" and message.will_retry:
        return repack(rules, current, message)
    move = hold_move_for(message, current.holds[rx])
    outcome = move[0](current, rx) if move is not None else None
    if move is None or outcome is None:
        return Decision.unchanged()
    _, reported_as, what = move
    reported = reported_as(current, rx, outcome, message, at=rules.now)
    # Delivered after its lot was recalled here (the courier was faster than the call-back): the
    # patient is among those who received it.
    late = [
        messages.recalled_on_delivery(current, rx, pick, message, at=rules.now)
        for pick in current.holds[rx].picks
        if isinstance(message, c.DeliveryCompleted) and pick.lot_id in current.recalled_lots
    ]
    return Decision(outcome.warehouse, [reported, *late], result=what)


def decide_command(rules: Rules, current: Warehouse | None, command: Envelope) -> Decision[Warehouse]:
    match command:
        case inv.WarehouseRegistrationRequested():
            return register(rules, current, command)
        case inv.RestockRequested() | inv.AdjustmentRequested() | inv.QuarantineDecided():
            if current is None or not current.registered:
                return Decision.refused("unknown_warehouse", f"warehouse {command.warehouse_id} is not registered")
            if isinstance(command, inv.RestockRequested):
                return restock(rules, current, command)
            if isinstance(command, inv.QuarantineDecided):
                return clear_quarantine(rules, current, command)
            return adjust(rules, current, command)
        case inv.LotRecallRequested():
            if current is None or not current.registered:
                return Decision.refused("unknown_warehouse", f"warehouse {command.warehouse_id} is not registered")
            return recall_lot(rules, current, command)
        case inv.TransferShipRequested() | inv.TransferReceiptRequested():
            if current is None or not current.registered:
                return Decision.refused("unknown_warehouse", f"warehouse {command.warehouse_id} is not registered")
            if isinstance(command, inv.TransferShipRequested):
                return ship_transfer(rules, current, command)
            return receive_transfer(rules, current, command)
    return Decision.refused("unexpected_message", f"{type(command).__name__} is not a warehouse command")


def list_drug(current: ListedDrug | None, listed: DrugListed) -> Decision[ListedDrug]:
    """The drug as the formulary now lists it (nothing to write if it reads the same)."""
    drug = ListedDrug(
        drug_code=listed.drug_code,
        name=listed.name,
        form=listed.form,
        cold_chain=listed.cold_chain,
        controlled=listed.controlled,
    )
    return Decision.unchanged() if drug == current else Decision(drug)


def register(
    rules: Rules, current: Warehouse | None, command: inv.WarehouseRegistrationRequested
) -> Decision[Warehouse]:
    location = Location(latitude=command.location.latitude, longitude=command.location.longitude)
    after = domain.register(current, command.warehouse_id, name=command.name, kind=command.kind, location=location)
    return Decision(after, [messages.warehouse_registered(command, at=rules.now)])


def restock(rules: Rules, current: Warehouse, command: inv.RestockRequested) -> Decision[Warehouse]:
    if command.drug_code not in rules.listed:
        reason = (
            f"{command.drug_code} is not in the formulary: nothing is stocked that no prescription may ask for; "
            "add it (pharmacy formulary load), then send the restock again"
        )
        return refuse_command(rules, current, command, reason)
    try:
        outcome = domain.restock(
            current, command.lot_id, command.drug_code, command.expiry_date, command.quantity, today=rules.today
        )
    except domain.StockRefused as refused:
        return refuse_command(rules, current, command, str(refused))
    return Decision(outcome.warehouse, [messages.stock_restocked(command, outcome, at=rules.now)])


def adjust(rules: Rules, current: Warehouse, command: inv.AdjustmentRequested) -> Decision[Warehouse]:
    try:
        outcome = domain.adjust(current, command.lot_id, command.drug_code, command.delta)
    except domain.StockRefused as refused:
        return refuse_command(rules, current, command, str(refused))
    after = outcome.warehouse
    adjusted = messages.stock_adjusted(command, outcome, at=rules.now)
    alerts = rules.alerts(current, after, [command.drug_code], command.correlation_id, command)
    return Decision(after, [adjusted, *alerts])


def clear_quarantine(rules: Rules, current: Warehouse, command: inv.QuarantineDecided) -> Decision[Warehouse]:
    release = command.decision == "release"
    try:
        outcome = domain.clear_quarantine(
            current, command.lot_id, command.drug_code, command.quantity, release=release, today=rules.today
        )
    except domain.StockRefused as refused:
        return refuse_command(rules, current, command, str(refused))
    return Decision(outcome.warehouse, [messages.quarantine_cleared(command, outcome, at=rules.now)])


def refuse_command(
    rules: Rules, current: Warehouse, command: messages.StaffCommand, reason: str, *, drug_code: str | None = None
) -> Decision[Warehouse]:
    """A command the stock rules refuse is answered on the events topic (staff watch it), and the
    warehouse remembers it was handled: sent again, it is not refused twice."""
    return Decision(current, [messages.stock_command_refused(command, reason, at=rules.now, drug_code=drug_code)])


# --- lot recalls (see recalls.py for what a recall does and why one command per warehouse) ------------


def recall_lot(rules: Rules, current: Warehouse, command: inv.LotRecallRequested) -> Decision[Warehouse]:
    """The warehouse's part of a recall, once per recall id: the answer (`LotRecalled`), one
    `PrescriptionRecalled` per prescription delivered, on the road or withdrawn, and a low-stock
    alert if the shelf fell under its threshold."""
    note = recalls.note_for(command.recall_id, command.reason, command.requested_by, rules.now)
    try:
        done = recalls.recall(
            current,
            command.lot_id,
            note,
            today=rules.today,
            delivery_days=rules.delivery_days,
            delivered_before=rules.delivered.get((current.warehouse_id, command.lot_id)),
        )
    except domain.StockRefused as refused:
        known = current.lots.get(command.lot_id)
        return refuse_command(rules, current, command, str(refused), drug_code=known.drug_code if known else None)
    events: list[Envelope] = [messages.lot_recalled(command, done, at=rules.now)]
    events += messages.prescriptions_recalled(command, done, at=rules.now)
    if done.drug_code is not None:
        events += rules.alerts(current, done.warehouse, [done.drug_code], command.correlation_id, command)
    return Decision(done.warehouse, events, result=done)


# --- transfers: townships restocked from the centre (see transfers.py for the two steps and why) ----


def transfer_id_for(township_id: str, drug_code: str, cause_id: str) -> str:
    """The id of a transfer suggested because of `cause_id`: the same decision made again (a lost
    race, a redelivery) names the same transfer."""
    return "TR-" + uuid5(NAMESPACE_URL, f"transfer:{township_id}:{drug_code}:{cause_id}").hex[:12].upper()


def ship_transfer(rules: Rules, current: Warehouse, command: inv.TransferShipRequested) -> Decision[Warehouse]:
    """At the centre: the units leave the shelf for in transit, once per transfer id."""
    try:
        shipped, transfer = transfers.ship(
            current,
            command.transfer_id,
            command.to_warehouse_id,
            command.drug_code,
            command.quantity,
            rules.transfer_rules,
            destination=rules.warehouses.get(command.to_warehouse_id),
            by=command.requested_by,
            at=rules.now,
        )
    except domain.StockRefused as refused:
        return refuse_command(rules, current, command, str(refused))
    return Decision(shipped.warehouse, [messages.transfer_shipped(command, shipped, transfer, at=rules.now)])


def receive_transfer(rules: Rules, current: Warehouse, command: inv.TransferReceiptRequested) -> Decision[Warehouse]:
    """At the township: the units shipped go on the shelf, once per transfer."""
    try:
        received, transfer = transfers.receive(current, command.transfer_id, by=command.requested_by, at=rules.now)
    except domain.StockRefused as refused:
        known = current.incoming.get(command.transfer_id)
        drug = known.drug_code if known is not None else None
        return refuse_command(rules, current, command, str(refused), drug_code=drug)
    return Decision(received.warehouse, [messages.transfer_received(command, received, transfer, at=rules.now)])


def hear_transfer(rules: Rules, current: Warehouse | None, event: Envelope) -> Decision[Warehouse]:
    """A transfer event of another warehouse: shipped (the township notes it in transit, with its
    lots) or received (the centre closes its in-transit units). The result says what was done."""
    if current is None:
        return Decision.unchanged()
    match event:
        case inv.TransferShipped():
            shipped = Transfer(
                transfer_id=event.transfer_id,
                drug_code=event.drug_code,
                quantity=event.quantity,
                from_warehouse_id=event.warehouse_id,
                to_warehouse_id=event.to_warehouse_id,
                state="in_transit",
                picks=[
                    TransferPick(lot_id=p.lot_id, expiry_date=p.expiry_date, quantity=p.quantity) for p in event.picks
                ],
                shipped_at=event.occurred_at,
                shipped_by=event.requested_by,
            )
            noted = transfers.shipment_heard(current, shipped)
            return Decision.unchanged() if noted is None else Decision(noted, result="in transit noted")
        case inv.TransferReceived():
            closing = transfers.close(current, event.transfer_id, at=rules.now)
            if closing is None:
                return Decision.unchanged()
            closed, transfer = closing
            return Decision(
                closed.warehouse, [messages.transfer_closed(event, closed, transfer, at=rules.now)], result="closed"
            )
    return Decision.unchanged()


def suggest_due(rules: Rules, current: Warehouse | None, due: TransfersDue) -> Decision[Warehouse]:
    """The sweep's proposal, decided on the township as it stands (another instance, or a
    reservation, may have suggested meanwhile)."""
    if current is None:
        return Decision.unchanged()
    # Named after the sweep's moment: the same township and drug may need another transfer later.
    after, suggested = rules.suggest_transfers(current, due.drug_codes, None, key=f"sweep:{rules.now.isoformat()}")
    if not suggested:
        return Decision.unchanged()
    return Decision(after, suggested, result=[e.drug_code for e in suggested if isinstance(e, inv.TransferSuggested)])


def expire_lots(rules: Rules, window: int, current: Warehouse | None, _: ExpiryDue) -> Decision[Warehouse]:
    """Expired lots off the shelf and an alert once per lot nearing expiry, if still due on this
    version (another instance may have swept it meanwhile); the result is what was found."""
    if current is None:
        return Decision.unchanged()
    nearing = domain.nearing_expiry(current, rules.today, window)
    expired = domain.expire(current, rules.today)
    if not nearing and not expired.movements:
        return Decision.unchanged()
    after = domain.mark_near_expiry_alerted(expired.warehouse, nearing)
    wid = current.warehouse_id
    events: list[Envelope] = [messages.lot_nearing_expiry(current, lot_id, at=rules.now) for lot_id in nearing]
    events += [messages.lot_expired(current, after, movement, at=rules.now) for movement in expired.movements]
    events += rules.alerts(current, after, [m.drug_code for m in expired.movements], wid, None)
    found = {"nearing_expiry": nearing, "expired": sorted({m.lot_id for m in expired.movements})}
    return Decision(after, events, result=found)


def movements_of(event: Envelope) -> list[domain.LedgerEntry]:
    """The ledger entries of the movements an event reports (none for events that move nothing)."""
    movements: list[inv.Movement] = getattr(event, "movements", None) or []
    warehouse_id: str | None = getattr(event, "warehouse_id", None)
    if not movements or warehouse_id is None:
        return []
    return domain.ledger_entries(
        event.message_id,
        event.type,
        warehouse_id,
        event.occurred_at,
        movements,
        prescription_id=_text(event, "prescription_id"),
        by=_text(event, "requested_by"),
        reason=_text(event, "reason") or _transfer_note(event),
    )


def _transfer_note(event: Envelope) -> str | None:
    """What a transfer's ledger line says it was: which transfer, to or from where."""
    match event:
        case inv.TransferShipped():
            return f"transfer {event.transfer_id} to {event.to_warehouse_id}"
        case inv.TransferReceived():
            return f"transfer {event.transfer_id} from {event.from_warehouse_id}"
        case inv.TransferClosed():
            return f"transfer {event.transfer_id} received at {event.to_warehouse_id}"
    return None


def _text(event: Envelope, field_name: str) -> str | None:
    value = getattr(event, field_name, None)
    return value if isinstance(value, str) else None
