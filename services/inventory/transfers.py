"""Townships restocked from the centre. Pure functions: warehouses in, warehouses and the movements
that changed them out (or `StockRefused`).

The rule. A township pharmacy's *reorder point* for a drug is the average daily demand there (what
prescriptions took of it over the last `window_days`, per day) times the lead time (days a transfer
takes) plus a safety stock. When its *usable* stock (units on the shelf in lots with at least
`min_shelf_days` left) is at or below it, and no transfer of the drug to it is open, inventory
suggests one from the central warehouse that can spare the most: enough to bring the township to the
reorder point plus a cover quantity, never more than the centre can spare (its usable stock above
its own reorder point, less what it was already asked for), from its lots that will still have
`min_shelf_days` left when they arrive, first expiry first.

Why two steps linked by events. A transfer changes two warehouse documents, and one document is
the unit of a write here (a version-guarded replace carrying its outbox); a write spanning two
would need a transaction the dev database does not offer and that would couple two warehouses'
writers. So each warehouse changes its own books, and the events say what happened, in order:

1. Suggested, at the township (its own write: the suggestion is *its* open transfer, which is what
   keeps a second one from being suggested while it is open).
2. Shipped, at the centre, on staff's command: available → in_transit (`transfer_out`). The
   centre's document remembers the transfer as in transit; shipping the same transfer id again is
   refused. `TransferShipped` tells the township, which notes the transfer in transit with its lots.
3. Received, at the township, on staff's command: outside → available (`transfer_in`), lot by lot
   as shipped. The township's transfer goes from in transit to received in the same write, so a
   receipt applies exactly once however often it is sent. `TransferReceived` tells the centre.
4. Closed, at the centre, on hearing the receipt: in_transit → outside (`transfer_closed`), once
   (the transfer goes from in transit to closed in the same write).

Each step is one document's write with its event in its outbox, so a crash between steps leaves
the event to be published, never half a step; a redelivered message finds the step done. Between
steps 3 and 4 the units are on the township's shelf and still in transit at the centre: the county's
books count them once by netting what townships received against what the centre closed
(`county_books`: on the way = in transit - (transferred in - transferred out)), and every warehouse's
own books balance at every moment. The alternative (the township's receipt decided at the centre)
would leave the township's shelf to be filled by a message the township cannot refuse, and would
let a receipt be confirmed by staff who are not where the goods are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from math import ceil

from .domain import (
    FINISHED_TRANSFERS_KEPT,
    Figures,
    Lot,
    Outcome,
    StockRefused,
    Transfer,
    TransferPick,
    Warehouse,
    apply_movements,
    distance_km,
    move,
    refuse_over_capacity,
)


@dataclass(frozen=True)
class ReorderPolicy:
    """One drug's settings: days a transfer takes, units kept as a margin, units asked beyond the
    reorder point."""

    lead_time_days: int
    safety_stock: int
    cover: int


@dataclass(frozen=True)
class TransferRules:
    """What the transfer rules read besides the warehouses."""

    today: date
    window_days: int
    min_shelf_days: int
    policies: Mapping[str, ReorderPolicy] = field(default_factory=dict)
    default: ReorderPolicy = ReorderPolicy(lead_time_days=3, safety_stock=20, cover=50)

    def policy(self, drug_code: str) -> ReorderPolicy:
        return self.policies.get(drug_code, self.default)

    @property
    def usable_from(self) -> date:
        """The earliest expiry of a lot counted as usable stock today."""
        return self.today + timedelta(days=self.min_shelf_days)

    def sendable_from(self, drug_code: str) -> date:
        """The earliest expiry of a lot sent now: still usable when it arrives."""
        return self.usable_from + timedelta(days=self.policy(drug_code).lead_time_days)


# --- the reorder point ------------------------------------------------------------------------------


def recent_demand(warehouse: Warehouse, drug_code: str, rules: TransferRules) -> tuple[int, int]:
    """Units prescriptions took of the drug here over the window, and the days they are averaged over."""
    demand = warehouse.daily_demand.get(drug_code)
    return demand.in_window(rules.today, rules.window_days) if demand is not None else (0, rules.window_days)


def reorder_point(warehouse: Warehouse, drug_code: str, rules: TransferRules) -> int:
    """Average daily demand times lead time (rounded up: a part of a tablet is a tablet) + safety stock."""
    units, days = recent_demand(warehouse, drug_code, rules)
    policy = rules.policy(drug_code)
    return ceil(units * policy.lead_time_days / days) + policy.safety_stock


def usable_stock(warehouse: Warehouse, drug_code: str, rules: TransferRules) -> int:
    """Units on the shelf in lots that still have `min_shelf_days` left."""
    return sum(lot.available for _, lot in warehouse.lots_of(drug_code) if lot.expiry_date >= rules.usable_from)


def open_transfer(warehouse: Warehouse, drug_code: str) -> Transfer | None:
    """The transfer of the drug to this warehouse suggested or in transit, if any."""
    return next((t for t in warehouse.incoming.values() if t.drug_code == drug_code and t.open), None)


def promised(warehouses: Iterable[Warehouse], centre_id: str, drug_code: str) -> int:
    """Units of the drug suggested from the centre and not shipped yet (they are still on its shelf)."""
    return sum(
        t.quantity
        for w in warehouses
        for t in w.incoming.values()
        if t.state == "suggested" and t.from_warehouse_id == centre_id and t.drug_code == drug_code
    )


def sendable_lots(centre: Warehouse, drug_code: str, rules: TransferRules) -> list[tuple[str, Lot]]:
    """The centre's lots of the drug that may be sent now, first expiry first."""
    earliest = rules.sendable_from(drug_code)
    return [(i, lot) for i, lot in centre.lots_of(drug_code) if lot.available > 0 and lot.expiry_date >= earliest]


def spare(centre: Warehouse, drug_code: str, rules: TransferRules, promised_units: int = 0) -> int:
    """What the centre can send of the drug: units in lots that may be sent, as long as its own usable
    stock stays above its own reorder point, less what it was already asked for."""
    sendable = sum(lot.available for _, lot in sendable_lots(centre, drug_code, rules))
    above_its_own = usable_stock(centre, drug_code, rules) - reorder_point(centre, drug_code, rules)
    return max(0, min(sendable, above_its_own) - promised_units)


def pick_lots(centre: Warehouse, drug_code: str, quantity: int, rules: TransferRules) -> list[TransferPick] | None:
    """`quantity` units from the lots that may be sent, first expiry first; None if they hold fewer."""
    picks: list[TransferPick] = []
    left = quantity
    for lot_id, lot in sendable_lots(centre, drug_code, rules):
        if left == 0:
            break
        take = min(left, lot.available)
        picks.append(TransferPick(lot_id=lot_id, expiry_date=lot.expiry_date, quantity=take))
        left -= take
    return picks if left == 0 else None


# --- 1. suggested, at the township ------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    """A transfer suggested to a township, and what it was decided on."""

    township: Warehouse
    transfer: Transfer
    usable: int
    reorder_point: int
    recent_demand: int
    policy: ReorderPolicy


def needs_transfer(township: Warehouse, drug_code: str, rules: TransferRules) -> bool:
    """A registered township with recent demand for the drug, usable stock at or below its reorder
    point, and no transfer of the drug open."""
    if township.kind != "township" or not township.registered or open_transfer(township, drug_code):
        return False
    units, _ = recent_demand(township, drug_code, rules)
    return units > 0 and usable_stock(township, drug_code, rules) <= reorder_point(township, drug_code, rules)


def suggest(
    township: Warehouse,
    drug_code: str,
    warehouses: Iterable[Warehouse],
    rules: TransferRules,
    *,
    transfer_id: str,
    at: datetime,
) -> Suggestion | None:
    """A transfer to bring the township to its reorder point plus cover, from the central warehouse
    that can spare the most (the nearest of equals); None if it needs none or no centre can spare any."""
    if not needs_transfer(township, drug_code, rules):
        return None
    others = [w for w in warehouses if w.warehouse_id != township.warehouse_id]
    usable, point = usable_stock(township, drug_code, rules), reorder_point(township, drug_code, rules)
    policy = rules.policy(drug_code)
    wanted = point + policy.cover - usable
    centres = [w for w in others if w.kind == "central" and w.registered]
    best: tuple[int, float, str, Warehouse] | None = None
    for centre in centres:
        can = spare(centre, drug_code, rules, promised(others, centre.warehouse_id, drug_code))
        assert centre.location is not None and township.location is not None
        key = (-can, distance_km(centre.location, township.location), centre.warehouse_id, centre)
        if can > 0 and (best is None or key[:3] < best[:3]):
            best = key
    if best is None or wanted <= 0:
        return None
    centre = best[3]
    quantity = min(wanted, -best[0])
    picks = pick_lots(centre, drug_code, quantity, rules)
    assert picks is not None, "spare counts only lots that may be sent"
    transfer = Transfer(
        transfer_id=transfer_id,
        drug_code=drug_code,
        quantity=quantity,
        from_warehouse_id=centre.warehouse_id,
        to_warehouse_id=township.warehouse_id,
        state="suggested",
        picks=picks,
        suggested_at=at,
    )
    after = township.model_copy(update={"incoming": {**township.incoming, transfer_id: transfer}})
    units, _ = recent_demand(township, drug_code, rules)
    return Suggestion(after, transfer, usable, point, units, policy)


# --- 2. shipped, at the centre ----------------------------------------------------------------------


def ship(
    centre: Warehouse,
    transfer_id: str,
    to_warehouse_id: str,
    drug_code: str,
    quantity: int,
    rules: TransferRules,
    *,
    destination: Warehouse | None,
    by: str,
    at: datetime,
) -> tuple[Outcome, Transfer]:
    """Available → in transit for lots that may be sent, first expiry first, all or nothing. A
    transfer id is shipped once; `destination` is the warehouse `to_warehouse_id` names, as known."""
    if transfer_id in centre.outgoing:
        shipped = centre.outgoing[transfer_id]
        raise StockRefused(f"transfer {transfer_id} was shipped already ({shipped.state.replace('_', ' ')})")
    if centre.kind != "central":
        raise StockRefused(f"{centre.warehouse_id} is a township pharmacy: transfers leave from a central warehouse")
    if destination is None or not destination.registered or to_warehouse_id == centre.warehouse_id:
        raise StockRefused(f"{to_warehouse_id} is not a registered warehouse {centre.warehouse_id} can ship to")
    picks = pick_lots(centre, drug_code, quantity, rules)
    if picks is None:
        sendable = sum(lot.available for _, lot in sendable_lots(centre, drug_code, rules))
        raise StockRefused(
            f"{centre.warehouse_id} has {sendable} units of {drug_code} in lots expiring on or after "
            f"{rules.sendable_from(drug_code)} (still usable on arrival); {quantity} cannot be shipped"
        )
    movements = tuple(move("transfer_out", p.lot_id, drug_code, p.quantity, "available", "in_transit") for p in picks)
    transfer = Transfer(
        transfer_id=transfer_id,
        drug_code=drug_code,
        quantity=quantity,
        from_warehouse_id=centre.warehouse_id,
        to_warehouse_id=to_warehouse_id,
        state="in_transit",
        picks=picks,
        shipped_at=at,
        shipped_by=by,
    )
    after = centre.model_copy(
        update={"lots": apply_movements(centre, movements), "outgoing": {**centre.outgoing, transfer_id: transfer}}
    )
    return Outcome(after, movements), transfer


def shipment_heard(township: Warehouse, shipped: Transfer) -> Warehouse | None:
    """The township notes the transfer in transit with the lots shipped (a transfer it suggested, or
    one staff shipped without a suggestion); None if it knew already."""
    known = township.incoming.get(shipped.transfer_id)
    if known is not None and known.state != "suggested":
        return None
    noted = shipped.model_copy(update={"suggested_at": known.suggested_at if known else None})
    return township.model_copy(update={"incoming": {**township.incoming, shipped.transfer_id: noted}})


# --- 3. received, at the township -------------------------------------------------------------------


def receive(township: Warehouse, transfer_id: str, *, by: str, at: datetime) -> tuple[Outcome, Transfer]:
    """Outside → available, lot by lot as shipped (each lot keeps its id and expiry); once."""
    transfer = township.incoming.get(transfer_id)
    if transfer is None:
        raise StockRefused(
            f"no transfer {transfer_id} to {township.warehouse_id} is known here (if it was shipped a moment ago, "
            "try again shortly)"
        )
    if transfer.state == "suggested":
        raise StockRefused(f"transfer {transfer_id} has not been shipped yet: nothing can have arrived")
    if transfer.state != "in_transit":
        raise StockRefused(f"transfer {transfer_id} was received already ({transfer.finished_at:%Y-%m-%d %H:%M})")
    lots = dict(township.lots)
    for pick in transfer.picks:
        existing = lots.get(pick.lot_id)
        same = existing is None or (existing.drug_code, existing.expiry_date) == (transfer.drug_code, pick.expiry_date)
        if not same:
            raise StockRefused(
                f"lot {pick.lot_id} here is {existing.drug_code} expiring {existing.expiry_date}, not "
                f"{transfer.drug_code} expiring {pick.expiry_date}: count the goods, and adjust or restock them"
            )
        lots.setdefault(pick.lot_id, Lot(drug_code=transfer.drug_code, expiry_date=pick.expiry_date))
    refuse_over_capacity(township, transfer.drug_code, transfer.quantity)
    movements = tuple(
        move("transfer_in", p.lot_id, transfer.drug_code, p.quantity, "outside", "available") for p in transfer.picks
    )
    # A lot recalled while it was on the way arrives, and goes straight to quarantine (see recalls.py).
    movements += tuple(
        move("recalled", p.lot_id, transfer.drug_code, p.quantity, "available", "quarantine")
        for p in transfer.picks
        if p.lot_id in township.recalled_lots
    )
    received = transfer.model_copy(update={"state": "received", "finished_at": at, "received_by": by})
    before = township.model_copy(update={"lots": lots})
    incoming = _kept({**township.incoming, transfer_id: received})
    after = township.model_copy(update={"lots": apply_movements(before, movements), "incoming": incoming})
    return Outcome(after, movements), received


# --- 4. closed, at the centre -----------------------------------------------------------------------


def close(centre: Warehouse, transfer_id: str, *, at: datetime) -> tuple[Outcome, Transfer] | None:
    """In transit → outside for the lots shipped: the township has them. None if not in transit here
    (closed already, or never shipped from here)."""
    transfer = centre.outgoing.get(transfer_id)
    if transfer is None or transfer.state != "in_transit":
        return None
    movements = tuple(
        move("transfer_closed", p.lot_id, transfer.drug_code, p.quantity, "in_transit", "outside")
        for p in transfer.picks
    )
    closed = transfer.model_copy(update={"state": "closed", "finished_at": at})
    after = centre.model_copy(
        update={"lots": apply_movements(centre, movements), "outgoing": _kept({**centre.outgoing, transfer_id: closed})}
    )
    return Outcome(after, movements), closed


def _kept(transfers: Mapping[str, Transfer]) -> dict[str, Transfer]:
    """Every open transfer, and the last `FINISHED_TRANSFERS_KEPT` finished ones."""
    finished = sorted(
        (t for t in transfers.values() if not t.open),
        key=lambda t: (t.finished_at or datetime.min.replace(tzinfo=UTC), t.transfer_id),
        reverse=True,
    )
    dropped = {t.transfer_id for t in finished[FINISHED_TRANSFERS_KEPT:]}
    return {tid: t for tid, t in transfers.items() if tid not in dropped}


# --- the county's books -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CountyBooks:
    """One drug's figures summed over every warehouse of the county.

    Each warehouse's books balance on their own (`Figures.balanced`). Across the county a unit
    shipped from the centre is counted once: in transit at the source until it is received; once
    received it is on the township's shelf, and `transferred_in - transferred_out` (receipts the
    centre has not closed yet) is taken off what is still in transit."""

    figures: Figures

    @property
    def on_the_way(self) -> int:
        """Units shipped between warehouses and not received anywhere yet."""
        f = self.figures
        return f.in_transit - (f.transferred_in - f.transferred_out)

    @property
    def balanced(self) -> bool:
        f = self.figures
        in_the_county = f.available + f.reserved + f.dispatched + f.quarantined + f.expired + self.on_the_way
        return self.on_the_way >= 0 and in_the_county + f.delivered == f.received + f.adjusted

    @property
    def settled(self) -> bool:
        """Every receipt closed at its source: what townships received is what the centre let go."""
        return self.figures.transferred_in == self.figures.transferred_out


def county_books(warehouses: Iterable[Warehouse]) -> dict[str, CountyBooks]:
    """Per drug, the county's books (see `CountyBooks`)."""
    totals: dict[str, dict[str, int]] = {}
    for warehouse in warehouses:
        for drug, level in warehouse.stock.items():
            into = totals.setdefault(drug, dict.fromkeys(Figures.model_fields, 0))
            for name in into:
                into[name] += getattr(level, name)
    return {drug: CountyBooks(Figures(**figures)) for drug, figures in sorted(totals.items())}
