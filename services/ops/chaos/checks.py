"""The guarantees, checked against what the run left behind. Pure: the evidence in, the report's
findings out (`ChaosReport.violations` says which are broken)."""

from __future__ import annotations

from collections import Counter, defaultdict

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.lifecycle import TERMINAL, Stage
from services.courier.domain import DeliveryState
from services.inventory.domain import AllocationState, Figures, Warehouse, current_lots, recompute_lots
from services.inventory.transfers import county_books
from services.prescription.domain import VerdictState

from .evidence import Evidence
from .load import Shelf
from .report import ChaosReport, StockRow, figures_text


def check(report: ChaosReport, seen: Evidence) -> None:
    report.republished_events = {name: log.republished for name, log in seen.logs.items()}
    report.dead_letters = dict(seen.dead_letters)
    check_outcomes(report, seen)
    check_stock(report, seen)
    check_transfers(report, seen)
    check_ledger(report, seen)
    check_reservations(report, seen)
    check_dispatches(report, seen)


#: The events that close a prescription's hold on stock, one of them per reserved prescription.
CLOSING_EVENTS = ("StockDelivered", "StockReleased", "StockQuarantined")
#: The events that move stock held for a prescription (their movements say from where to where).
HOLD_EVENTS = (
    inv.StockReserved,
    inv.StockDispatched,
    inv.StockReturned,
    inv.StockReleased,
    inv.StockQuarantined,
    inv.StockRepacked,
    inv.StockDelivered,
)


def owner_agrees(
    stage: Stage,
    delivery: DeliveryState | None,
    allocation: AllocationState | None,
    verdict: VerdictState | None,
) -> bool:
    """The service that decided a terminal stage recorded the same outcome."""
    match stage:
        case Stage.DELIVERED:
            return delivery is DeliveryState.DELIVERED
        case Stage.UNDELIVERABLE:
            return delivery is DeliveryState.UNDELIVERABLE
        case Stage.OUT_OF_STOCK:
            return allocation is AllocationState.OUT_OF_STOCK
        case Stage.REJECTED:
            return verdict is VerdictState.REJECTED
        case Stage.CANCELLED:
            return verdict is VerdictState.CANCELLED and delivery in (None, DeliveryState.CANCELLED)
    return False  # not a terminal stage


def expected_closing(stage: Stage, *, reserved: bool, travelled: bool) -> dict[str, int]:
    """How the stock held for a prescription must have left the hold, by its terminal stage: to the
    patient; back to the shelf if the goods never left; to quarantine if they travelled."""
    if stage is Stage.DELIVERED:
        return {"StockDelivered": 1}
    if stage in (Stage.UNDELIVERABLE, Stage.CANCELLED) and reserved:
        return {"StockQuarantined": 1} if travelled else {"StockReleased": 1}
    return {}


def with_repacks(expected: dict[str, int], *, damaged: int, repacked: int) -> dict[str, int]:
    """Each package found damaged closed its hold to quarantine; packed again each time, the last
    hold closes as the ending says, otherwise the damaged goods were the end of it."""
    if not damaged:
        return expected
    closing = Counter(expected if repacked == damaged else {})
    closing["StockQuarantined"] += damaged
    return dict(closing)


def check_outcomes(report: ChaosReport, seen: Evidence) -> None:
    """Every prescription has one status, terminal, and the service that decided it agrees."""
    statuses, allocations, deliveries, verdicts = seen.statuses, seen.allocations, seen.deliveries, seen.verdicts
    terminal: Counter[str] = Counter()
    non_terminal: Counter[str] = Counter()
    for rx in seen.ids:
        status = statuses.get(rx)
        if status is None:
            report.missing_status.append(rx)
            continue
        (terminal if status.terminal else non_terminal)[status.stage.value] += 1
        ends = sorted({h.stage.value for h in status.history if h.stage in TERMINAL})
        if len(ends) > 1:
            report.several_terminal_states[rx] = ends
        if not status.terminal:
            continue
        delivery_state = getattr(deliveries.get(rx), "state", None)
        allocation_state = getattr(allocations.get(rx), "state", None)
        verdict_state = getattr(verdicts.get(rx), "state", None)
        if not owner_agrees(status.stage, delivery_state, allocation_state, verdict_state):
            report.owner_disagrees[rx] = (
                f"status {status.stage.value}; delivery {delivery_state}, allocation {allocation_state}, "
                f"verdict {verdict_state}"
            )
    report.terminal = dict(terminal.most_common())
    report.non_terminal = dict(non_terminal.most_common())


def check_stock(report: ChaosReport, seen: Evidence) -> None:
    """The books of every warehouse, drug and lot balance, and agree with what staff asked for and
    with how the prescriptions ended; no hold is left open."""
    statuses, allocations, warehouses = seen.statuses, seen.allocations, seen.warehouses
    events, travelled = seen.inventory_events, seen.travelled
    restocked, adjustments = seen.load.restocked, seen.load.adjustments
    delivered_lines: Counter[Shelf] = Counter()
    came_back_lines: Counter[Shelf] = Counter()
    # Packages found damaged are quarantined whole; the last one not packed again ended the hold.
    damaged: Counter[str] = Counter()
    repacked: Counter[str] = Counter()
    for event in events:
        if isinstance(event, inv.StockQuarantined) and event.why == "damaged":
            damaged[event.prescription_id] += 1
            for line in event.lines:
                came_back_lines[event.warehouse_id, line.drug_code] += line.quantity
        elif isinstance(event, inv.StockRepacked):
            repacked[event.prescription_id] += 1
    for rx, status in statuses.items():
        allocation = allocations.get(rx)
        if allocation is None or not allocation.warehouse_id or damaged[rx] > repacked[rx]:
            continue
        if status.stage is Stage.DELIVERED:
            target = delivered_lines
        elif status.stage in (Stage.UNDELIVERABLE, Stage.CANCELLED) and rx in travelled:
            target = came_back_lines
        else:
            continue
        for drug, quantity in allocation.lines.items():
            target[allocation.warehouse_id, drug] += quantity
    adjusted: Counter[Shelf] = Counter()
    answers: Counter[str] = Counter()
    for event in events:
        if isinstance(event, inv.StockAdjusted):
            adjusted[event.warehouse_id, event.drug_code] += event.delta
        if isinstance(event, inv.StockAdjusted | inv.StockRestocked | inv.StockCommandRefused) and event.causation_id:
            answers[event.causation_id] += 1
    report.restocks_sent = len(restocked)
    report.adjustments_sent = len(adjustments)
    report.adjustments_unanswered = [a.message_id for a in adjustments if answers[a.message_id] == 0]
    report.adjustments_answered_twice = [a.message_id for a in adjustments if answers[a.message_id] > 1]
    # A command applied twice would still balance the books: count the answers instead.
    report.restocks_answered_twice = [r.message_id for r in seen.load.restocks if answers[r.message_id] > 1]
    keys = sorted(
        {(w.warehouse_id, d) for w in warehouses for d in w.stock}
        | set(restocked)
        | set(delivered_lines)
        | set(came_back_lines)
    )
    by_id = {w.warehouse_id: w for w in warehouses}
    for warehouse_id, drug in keys:
        warehouse = by_id.get(warehouse_id) or Warehouse(warehouse_id=warehouse_id)
        level = warehouse.level(drug)
        report.stock.append(
            StockRow(
                warehouse_id=warehouse_id,
                drug_code=drug,
                **{name: getattr(level, name) for name in Figures.model_fields},
                restocked_sent=restocked[warehouse_id, drug],
                adjusted_applied=adjusted[warehouse_id, drug],
                delivered_expected=delivered_lines[warehouse_id, drug],
                quarantined_expected=came_back_lines[warehouse_id, drug],
            )
        )
    for warehouse in warehouses:
        for lot_id, lot in sorted(warehouse.lots.items()):
            report.lots_checked += 1
            if not lot.balanced:
                report.unbalanced_lots.append(f"{warehouse.warehouse_id}/{lot_id}: {figures_text(lot)}")
    report.open_holds = [f"{w.warehouse_id}/{rx}" for w in warehouses for rx in w.holds]


#: A transfer's steps: each happens once per transfer (a second would move its units twice).
TRANSFER_STEPS = (inv.TransferShipped, inv.TransferReceived, inv.TransferClosed)


def check_transfers(report: ChaosReport, seen: Evidence) -> None:
    """The county's books balance with units in transit counted once (at the source until received),
    every receipt was closed at its source, and no transfer was shipped, received or closed twice."""
    for drug, books in county_books(seen.warehouses).items():
        if not books.balanced:
            report.county_unbalanced.append(f"{drug}: {figures_text(books.figures)}, on the way {books.on_the_way}")
        if not books.settled:
            f = books.figures
            report.transfers_not_closed.append(f"{drug}: transferred in {f.transferred_in}, out {f.transferred_out}")
    steps: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for event in seen.inventory_events:
        if isinstance(event, TRANSFER_STEPS):
            steps[event.transfer_id][type(event).__name__] += 1
    for transfer_id, counts in steps.items():
        if twice := {k: v for k, v in counts.items() if v > 1}:
            report.transfer_steps_twice[transfer_id] = ", ".join(f"{k} ×{v}" for k, v in twice.items())


def check_ledger(report: ChaosReport, seen: Evidence) -> None:
    """Every lot's figures, recomputed from the ledger's movements alone, match the warehouse documents."""
    entries, warehouses = seen.ledger, seen.warehouses
    report.ledger_entries = len(entries)
    recomputed = recompute_lots(entries)
    held = current_lots(warehouses)
    for warehouse_id, lot_id in sorted(set(recomputed) | set(held)):
        from_ledger = recomputed.get((warehouse_id, lot_id), Figures())
        in_document = held.get((warehouse_id, lot_id), Figures())
        if from_ledger != in_document:
            report.ledger_mismatches[f"{warehouse_id}/{lot_id}"] = (
                f"ledger {figures_text(from_ledger)}; document {figures_text(in_document)}"
            )


def check_reservations(report: ChaosReport, seen: Evidence) -> None:
    """No prescription reserved twice, nor dispatched more often than picked up; each ended with the
    stock movements its outcome calls for."""
    statuses, allocations, travelled = seen.statuses, seen.allocations, seen.travelled
    events, delivery_events = seen.inventory_events, seen.delivery_events
    reserved: defaultdict[str, list[str]] = defaultdict(list)
    refused: set[str] = set()
    moved: defaultdict[str, Counter[str]] = defaultdict(Counter)
    held: defaultdict[str, Counter[str]] = defaultdict(Counter)  # units per bucket, by the movements
    for event in events:
        match event:
            case inv.StockReserved():
                reserved[event.prescription_id].append(event.warehouse_id)
            case inv.ReservationFailed():
                refused.add(event.prescription_id)
            case (
                inv.StockDispatched()
                | inv.StockReturned()
                | inv.StockReleased()
                | inv.StockQuarantined()
                | inv.StockRepacked()
                | inv.StockDelivered()
            ):
                moved[event.prescription_id][type(event).__name__] += 1
                if isinstance(event, inv.StockQuarantined) and event.why == "damaged":
                    moved[event.prescription_id]["damaged"] += 1
        if isinstance(event, HOLD_EVENTS):
            for movement in event.movements:
                held[event.prescription_id][movement.source] -= movement.quantity
                held[event.prescription_id][movement.target] += movement.quantity
    pickups: Counter[str] = Counter()
    for event in delivery_events:
        if isinstance(event, c.DeliveryPickedUp):
            pickups[event.prescription_id] += 1
    report.double_reservations = {rx: len(w) for rx, w in reserved.items() if len(w) > 1}
    report.reserved_and_refused = sorted(rx for rx in reserved if rx in refused)
    for rx, allocation in allocations.items():
        published = reserved.get(rx, [])
        if allocation.state is AllocationState.RESERVED and published != [allocation.warehouse_id]:
            report.allocation_mismatches[rx] = f"reserved at {allocation.warehouse_id}, published {published}"
        elif allocation.state is not AllocationState.RESERVED and published:
            report.allocation_mismatches[rx] = f"allocation {allocation.state.value}, published {published}"
    for rx, counts in moved.items():
        if counts["StockDispatched"] > pickups[rx]:
            report.double_dispatches[rx] = f"{counts['StockDispatched']} dispatched, {pickups[rx]} pickups"
    for rx, status in statuses.items():
        if not status.terminal:
            continue
        counts = moved.get(rx, Counter())
        expected = with_repacks(
            expected_closing(status.stage, reserved=rx in reserved, travelled=rx in travelled),
            damaged=counts["damaged"],
            repacked=counts["StockRepacked"],
        )
        closing = {kind: counts[kind] for kind in CLOSING_EVENTS if counts[kind]}
        left = {bucket: units for bucket in ("reserved", "dispatched") if (units := held[rx][bucket])}
        if closing != expected or left:
            report.net_dispatch_mismatches[rx] = (
                f"{status.stage.value}: expected {expected or 'no stock moved'}, got {closing or 'none'}"
                + (f", still held {left}" if left else "")
                + f" (dispatched {counts['StockDispatched']}, returned {counts['StockReturned']})"
            )


def _one_stop_re_planned(offers: list[c.DispatchOffered]) -> bool:
    """The offers of one dispatch id are one round's stop, sent again as its round was re-planned
    before it left (its place and time changed): the same courier, package, attempt and round."""
    return len({(o.courier_id, o.package_id, o.attempt, o.round_id) for o in offers}) == 1 and all(
        o.round_id for o in offers
    )


def check_dispatches(report: ChaosReport, seen: Evidence) -> None:
    """Every dispatch offer has its own dispatch id and was acted on once, by the couriers and by the
    courier service; every wrong delivery code was refused."""
    couriers, offers, delivery_events = seen.couriers, seen.offers, seen.delivery_events
    by_dispatch: defaultdict[str, list[c.DispatchOffered]] = defaultdict(list)
    for offer in offers:
        if isinstance(offer, c.DispatchOffered):
            by_dispatch[offer.dispatch_id].append(offer)
    report.offers_total = sum(len(o) for o in by_dispatch.values())
    report.dispatch_ids_reused = {
        d: [f"{o.message_id} → {o.courier_id}" for o in found]
        for d, found in by_dispatch.items()
        if len(found) > 1 and not _one_stop_re_planned(found)
    }
    report.offers_acted_on = len(couriers.acted)
    report.duplicate_offers_ignored = len(couriers.duplicates)
    report.duplicate_offers_republished = sum(
        1 for o in couriers.duplicates if o.message_id == couriers.acted[o.dispatch_id].message_id
    )
    report.wrong_codes_planned = couriers.wrong_codes
    report.codes_rejected = sum(isinstance(e, c.DeliveryCodeRejected) for e in delivery_events)
    acted_on: defaultdict[str, Counter[str]] = defaultdict(Counter)
    acting = c.CourierAssigned | c.DeliveryAccepted | c.DeliveryPickedUp | c.DeliveryCompleted | c.DeliveryFailed
    for event in delivery_events:
        if isinstance(event, acting):
            acted_on[event.dispatch_id][type(event).__name__] += 1
    for dispatch_id, counts in acted_on.items():
        if twice := {k: v for k, v in counts.items() if v > 1}:
            report.dispatches_acted_twice[dispatch_id] = ", ".join(f"{k} ×{v}" for k, v in twice.items())
    for dispatch_id in couriers.acted:
        counts = acted_on.get(dispatch_id, Counter())
        if counts["DeliveryCompleted"] + counts["DeliveryFailed"] != 1:
            report.offers_without_outcome.append(dispatch_id)
