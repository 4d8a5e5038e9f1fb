"""Stock rules. Pure functions: a warehouse in, a new warehouse and the ledger movements that made it out
(or a refusal).

Every change of a lot's figures is expressed as movements (`quantity` units of one lot from one bucket
to another) and applied by one function, `apply_movement`; the events carry the same movements, so the
ledger built from them recomputes exactly the figures the warehouse documents hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from pharmacy_contracts.geo import great_circle_km
from pharmacy_contracts.inventory import Bucket, Movement, MovementKind
from pharmacy_contracts.limits import MAX_STOCK_UNITS

WarehouseKind = Literal["central", "township"]


class Figures(BaseModel):
    """Units in each place, and how they came and went. The conservation law the tests check:
    available + reserved + dispatched + quarantined + expired + delivered + in_transit + transferred_out
    == received + adjusted + transferred_in.

    Transfers between warehouses: units shipped stay on the source's books as `in_transit` until the
    destination confirms their receipt (there they count as `transferred_in`); the source then
    closes them (`transferred_out`). Summed over the county, `transferred_in` and `transferred_out`
    cancel once every receipt is closed, so shipped units are counted once (see `county_books`)."""

    available: int = Field(default=0, ge=0)
    reserved: int = Field(default=0, ge=0)
    dispatched: int = Field(default=0, ge=0)
    quarantined: int = Field(default=0, ge=0)
    expired: int = Field(default=0, ge=0)
    delivered: int = Field(default=0, ge=0, description="Units handed to patients (gone to `outside`)")
    in_transit: int = Field(default=0, ge=0, description="Units shipped to another warehouse, not yet received there")
    received: int = Field(default=0, ge=0)
    adjusted: int = 0
    transferred_in: int = Field(default=0, ge=0, description="Units received from another warehouse")
    transferred_out: int = Field(
        default=0, ge=0, description="Units shipped to another warehouse that confirmed their receipt"
    )

    def counts(self) -> Figures:
        """The figures alone, without whatever else a subclass carries (to compare with the ledger)."""
        return Figures(**{name: getattr(self, name) for name in Figures.model_fields})

    @property
    def held(self) -> int:
        """Units on these books: in the warehouse, on the road to patients or to another warehouse."""
        return self.available + self.reserved + self.dispatched + self.quarantined + self.expired + self.in_transit

    @property
    def balanced(self) -> bool:
        gone = self.delivered + self.transferred_out
        return self.held + gone == self.received + self.adjusted + self.transferred_in


class DrugStock(Figures):
    """One drug in one warehouse: the sum over its lots."""


class Lot(Figures):
    drug_code: str
    expiry_date: date
    near_expiry_alerted: bool = False
    delivered_to: dict[str, int] = Field(
        default_factory=dict,
        description="Units of this lot delivered from here, by prescription (a recall lists them)",
    )


class Pick(BaseModel):
    """Units of one lot held for a prescription."""

    lot_id: str
    drug_code: str
    quantity: int = Field(gt=0)


class Hold(BaseModel):
    """Stock held for one prescription, from reservation until delivered, released or quarantined."""

    picks: list[Pick]
    days_supply: dict[str, int] = Field(
        default_factory=dict, description="Per drug, the days the units must last (a recall's re-pick honours it)"
    )
    dispatched: bool = Field(default=False, description="On the road now")
    travelled: bool = Field(
        default=False, description="Has been on the road, even if back now: never goes straight back on the shelf"
    )

    @model_validator(mode="after")
    def _on_the_road_has_travelled(self) -> Hold:
        """Documents written before `travelled` existed: goods on the road have travelled."""
        if self.dispatched:
            self.travelled = True
        return self

    @property
    def lines(self) -> dict[str, int]:
        return merge_quantities((pick.drug_code, pick.quantity) for pick in self.picks)


class Location(BaseModel):
    latitude: float
    longitude: float


class ListedDrug(BaseModel):
    """A drug the formulary lists, as the prescription service announced it: only these are stocked."""

    drug_code: str
    name: str
    form: str
    cold_chain: bool = False
    controlled: bool = False


#: How many of a drug's latest reservations a warehouse remembers, to know what the next may ask.
RECENT_DEMAND = 20
#: Days of demand a warehouse remembers per drug: a reorder point's moving average is taken over at
#: most these (`InventorySettings.demand_window_days`). One figure per day that had demand, so a
#: drug's history never holds more than this many.
DEMAND_DAYS = 90
#: Transfers a warehouse keeps once finished (received, closed), newest first, for the listing; open
#: ones are kept until they finish. A message about a transfer dropped since is recognised by the
#: document's tracking (its partition offsets), and a dropped transfer is never open again.
FINISHED_TRANSFERS_KEPT = 100


class DayDemand(BaseModel):
    day: date
    units: int = Field(ge=0)


class DrugDemand(BaseModel):
    """What prescriptions took of one drug at one warehouse, day by day (days without demand are not
    written: they count as zero). `since`: the first day any was taken here, so a young history is
    averaged over the days it covers, not over a whole window it was not there for."""

    since: date
    days: list[DayDemand] = Field(default_factory=list, description=f"At most {DEMAND_DAYS} days, oldest first")

    def taken(self, day: date, units: int) -> DrugDemand:
        """With `units` more taken on `day`, days older than `DEMAND_DAYS` forgotten."""
        days = [d for d in self.days if (day - d.day).days < DEMAND_DAYS]
        if days and days[-1].day == day:
            days[-1] = DayDemand(day=day, units=days[-1].units + units)
        else:
            days.append(DayDemand(day=day, units=units))
        return DrugDemand(since=min(self.since, day), days=days)

    def in_window(self, today: date, window_days: int) -> tuple[int, int]:
        """Units taken over the last `window_days` days (today included), and the days they are
        averaged over: the window, or fewer if the history is younger."""
        units = sum(d.units for d in self.days if 0 <= (today - d.day).days < window_days)
        observed = max(1, min(window_days, (today - self.since).days + 1))
        return units, observed


TransferState = Literal["suggested", "in_transit", "received", "closed"]


class TransferPick(BaseModel):
    """Units of one lot in a transfer (the lot keeps its id and expiry at the destination)."""

    lot_id: str
    expiry_date: date
    quantity: int = Field(gt=0)


class Transfer(BaseModel):
    """A transfer as one warehouse knows it: a township its incoming ones (suggested, in transit to
    it, received), the centre its outgoing ones (in transit from it, closed)."""

    transfer_id: str
    drug_code: str
    quantity: int = Field(gt=0)
    from_warehouse_id: str
    to_warehouse_id: str
    state: TransferState
    picks: list[TransferPick] = Field(default_factory=list)
    suggested_at: datetime | None = None
    shipped_at: datetime | None = None
    finished_at: datetime | None = Field(default=None, description="Received (incoming) or closed (outgoing)")
    shipped_by: str | None = None
    received_by: str | None = None

    @property
    def open(self) -> bool:
        return self.state in ("suggested", "in_transit")

    @property
    def since(self) -> datetime | None:
        """When it entered its state."""
        return {"suggested": self.suggested_at, "in_transit": self.shipped_at}.get(self.state, self.finished_at)


class RecallNote(BaseModel):
    """A lot recalled at this warehouse: it never goes back on the shelf here."""

    recall_id: str
    reason: str
    at: datetime
    by: str


class Warehouse(BaseModel):
    """A central warehouse or township pharmacy: where it is, its lots, and what it holds for whom."""

    warehouse_id: str
    name: str = ""
    kind: WarehouseKind = "township"
    location: Location | None = Field(default=None, description="None until registered")
    lots: dict[str, Lot] = Field(default_factory=dict)
    holds: dict[str, Hold] = Field(default_factory=dict)
    recent_demand: dict[str, list[int]] = Field(
        default_factory=dict,
        description=f"The last {RECENT_DEMAND} quantities one prescription took of each drug here (newest last)",
    )
    daily_demand: dict[str, DrugDemand] = Field(
        default_factory=dict, description="Units prescriptions took of each drug here per day (reorder points)"
    )
    incoming: dict[str, Transfer] = Field(default_factory=dict, description="Transfers to here, by transfer id")
    outgoing: dict[str, Transfer] = Field(default_factory=dict, description="Transfers from here, by transfer id")
    recalled_lots: dict[str, RecallNote] = Field(
        default_factory=dict, description="Lots recalled here, by lot id: never on the shelf here again"
    )

    @property
    def registered(self) -> bool:
        return self.location is not None

    def lots_of(self, drug_code: str) -> list[tuple[str, Lot]]:
        """The drug's lots, first expiry first (ties by lot id)."""
        found = [(lot_id, lot) for lot_id, lot in self.lots.items() if lot.drug_code == drug_code]
        return sorted(found, key=lambda item: (item[1].expiry_date, item[0]))

    def level(self, drug_code: str) -> DrugStock:
        return _sum(lot for lot in self.lots.values() if lot.drug_code == drug_code)

    @property
    def stock(self) -> dict[str, DrugStock]:
        """Per-drug figures (sums over lots), for readers that do not care about lots."""
        return {drug: self.level(drug) for drug in sorted({lot.drug_code for lot in self.lots.values()})}


def _sum(lots: Iterable[Figures]) -> DrugStock:
    totals = dict.fromkeys(Figures.model_fields, 0)
    for lot in lots:
        for name in totals:
            totals[name] += getattr(lot, name)
    return DrugStock(**totals)


class AllocationState(StrEnum):
    RESERVING = "reserving"
    RESERVED = "reserved"
    OUT_OF_STOCK = "out_of_stock"
    CANCELLED = "cancelled"
    """The delivery was withdrawn before any stock was held: a late approval reserves nothing."""


class Allocation(BaseModel):
    """Inventory's record of one approved prescription: where its stock was taken from, if anywhere."""

    prescription_id: str
    state: AllocationState
    lines: dict[str, int]
    warehouse_id: str | None = None


class StockRefused(ValueError):
    """The change would take stock below zero or otherwise break the books."""


@dataclass(frozen=True)
class Outcome:
    """A changed warehouse and the movements that changed it (and, for a reservation, its picks)."""

    warehouse: Warehouse
    movements: tuple[Movement, ...] = ()
    picks: tuple[Pick, ...] = field(default_factory=tuple)


# --- movements: the one way figures change ----------------------------------------------------------

BUCKET_FIELDS: dict[Bucket, str | None] = {
    "outside": None,
    "available": "available",
    "reserved": "reserved",
    "dispatched": "dispatched",
    "quarantine": "quarantined",
    "expired": "expired",
    "in_transit": "in_transit",
}

F = TypeVar("F", bound=Figures)


def move(kind: MovementKind, lot_id: str, drug_code: str, quantity: int, source: Bucket, target: Bucket) -> Movement:
    return Movement(kind=kind, lot_id=lot_id, drug_code=drug_code, quantity=quantity, source=source, target=target)


def shift(figures: F, movement: Movement) -> F:
    """Move the units between buckets; receipts, adjustments, deliveries and transfers received or
    closed also count where units came from or went to, which keeps the conservation law. Unchecked:
    see `apply_movement`."""
    changes: dict[str, int] = {}
    quantity = movement.quantity
    if (source := BUCKET_FIELDS[movement.source]) is not None:
        changes[source] = getattr(figures, source) - quantity
    if (target := BUCKET_FIELDS[movement.target]) is not None:
        changes[target] = changes.get(target, getattr(figures, target)) + quantity
    if movement.kind == "received":
        changes["received"] = figures.received + quantity
    elif movement.kind == "adjusted":
        changes["adjusted"] = figures.adjusted + (quantity if movement.source == "outside" else -quantity)
    elif movement.kind == "delivered":
        changes["delivered"] = figures.delivered + quantity
    elif movement.kind == "transfer_in":
        changes["transferred_in"] = figures.transferred_in + quantity
    elif movement.kind == "transfer_closed":
        changes["transferred_out"] = figures.transferred_out + quantity
    return figures.model_copy(update=changes)


def apply_movement(figures: F, movement: Movement) -> F:
    """`shift`, refused if it would take units that are not in the source bucket."""
    after = shift(figures, movement)
    if min(getattr(after, name) for name in BUCKET_FIELDS.values() if name is not None) < 0:
        raise StockRefused(f"{movement.kind} of {movement.quantity} from {movement.source} of lot {movement.lot_id}")
    return after


def _apply(warehouse: Warehouse, movements: Sequence[Movement]) -> dict[str, Lot]:
    lots = dict(warehouse.lots)
    for movement in movements:
        lots[movement.lot_id] = apply_movement(lots[movement.lot_id], movement)
    return lots


def apply_movements(warehouse: Warehouse, movements: Sequence[Movement]) -> dict[str, Lot]:
    """The warehouse's lots after the movements, each checked (`apply_movement`)."""
    return _apply(warehouse, movements)


# --- registration, restock, adjustment -------------------------------------------------------------


def register(
    current: Warehouse | None, warehouse_id: str, *, name: str, kind: WarehouseKind, location: Location
) -> Warehouse:
    """A new warehouse, or an existing one renamed or moved; its lots and holds stay."""
    base = current or Warehouse(warehouse_id=warehouse_id)
    return base.model_copy(update={"name": name, "kind": kind, "location": location})


def restock(
    warehouse: Warehouse, lot_id: str, drug_code: str, expiry_date: date, quantity: int, *, today: date
) -> Outcome:
    """Received goods: a new lot, or more of a lot already here (same drug, same printed expiry).
    Never a lot that has expired (on its expiry date it counts as expired, as for the sweep): it
    would go from the delivery van straight to the expired bucket."""
    if quantity <= 0:
        raise StockRefused("a restock adds at least one unit")
    if expiry_date <= today:
        raise StockRefused(
            f"lot {lot_id} of {drug_code} expired on {expiry_date} (today is {today}): "
            "expired goods are not put on the shelf; return them to the supplier"
        )
    refuse_recalled(warehouse, lot_id, "restocked")
    refuse_over_capacity(warehouse, drug_code, quantity)
    existing = warehouse.lots.get(lot_id)
    if existing is not None and (existing.drug_code, existing.expiry_date) != (drug_code, expiry_date):
        raise StockRefused(
            f"lot {lot_id} is {existing.drug_code} expiring {existing.expiry_date}, "
            f"not {drug_code} expiring {expiry_date}"
        )
    lot = existing or Lot(drug_code=drug_code, expiry_date=expiry_date)
    movements = (move("received", lot_id, drug_code, quantity, "outside", "available"),)
    lots = _apply(warehouse.model_copy(update={"lots": {**warehouse.lots, lot_id: lot}}), movements)
    return Outcome(warehouse.model_copy(update={"lots": lots}), movements)


def adjust(warehouse: Warehouse, lot_id: str, drug_code: str, delta: int) -> Outcome:
    """A count correction on the shelf of one lot: never below zero, never reserved or travelling units."""
    if delta == 0:
        raise StockRefused("an adjustment changes at least one unit")
    lot = warehouse.lots.get(lot_id)
    if lot is None:
        raise StockRefused(f"no lot {lot_id} in {warehouse.warehouse_id}: restock it first")
    if lot.drug_code != drug_code:
        raise StockRefused(f"lot {lot_id} is {lot.drug_code}, not {drug_code}")
    if delta > 0:
        refuse_recalled(warehouse, lot_id, "put back on the shelf")
    if lot.available + delta < 0:
        raise StockRefused(f"only {lot.available} units of {drug_code} in lot {lot_id} are available to remove")
    refuse_over_capacity(warehouse, drug_code, delta)
    if delta > 0:
        movement = move("adjusted", lot_id, drug_code, delta, "outside", "available")
    else:
        movement = move("adjusted", lot_id, drug_code, -delta, "available", "outside")
    return Outcome(warehouse.model_copy(update={"lots": _apply(warehouse, [movement])}), (movement,))


def clear_quarantine(
    warehouse: Warehouse, lot_id: str, drug_code: str, quantity: int, *, release: bool, today: date
) -> Outcome:
    """Quarantined units of one lot, after inspection: back on the shelf, or written off (gone
    `outside`, counted as an adjustment so the books still balance). An expired lot is never
    released."""
    lot = warehouse.lots.get(lot_id)
    if lot is None:
        raise StockRefused(f"no lot {lot_id} in {warehouse.warehouse_id}")
    if lot.drug_code != drug_code:
        raise StockRefused(f"lot {lot_id} is {lot.drug_code}, not {drug_code}")
    if lot.quarantined < quantity:
        raise StockRefused(f"only {lot.quarantined} units of lot {lot_id} are in quarantine")
    if release:
        refuse_recalled(warehouse, lot_id, "released from quarantine; write it off")
    if release and lot.expiry_date < today:
        raise StockRefused(f"lot {lot_id} expired on {lot.expiry_date:%Y-%m-%d}: it can only be written off")
    if release:
        movement = move("released", lot_id, drug_code, quantity, "quarantine", "available")
    else:
        movement = move("adjusted", lot_id, drug_code, quantity, "quarantine", "outside")
    return Outcome(warehouse.model_copy(update={"lots": _apply(warehouse, [movement])}), (movement,))


def refuse_recalled(warehouse: Warehouse, lot_id: str, what: str) -> None:
    """A recalled lot is never put (back) on the shelf here."""
    note = warehouse.recalled_lots.get(lot_id)
    if note is not None:
        raise StockRefused(f"lot {lot_id} was recalled ({note.recall_id}: {note.reason}): it cannot be {what}")


def refuse_over_capacity(warehouse: Warehouse, drug_code: str, adding: int) -> None:
    """Every figure an event reports of a drug (a level, a lot, a movement, a shortage) is at most
    what the warehouse holds of it; keeping that under the contracts' bound keeps every event valid."""
    level = warehouse.level(drug_code)
    held = level.available + level.reserved + level.dispatched + level.quarantined + level.in_transit
    if adding > 0 and held + adding > MAX_STOCK_UNITS:
        raise StockRefused(
            f"{warehouse.warehouse_id} holds {held} units of {drug_code}; {adding} more would pass the "
            f"{MAX_STOCK_UNITS} units one warehouse may hold of a drug"
        )


# --- allocation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One drug's demand: the units and the longest therapy they must last."""

    drug_code: str
    quantity: int
    days_supply: int = 0


@dataclass(frozen=True)
class Shortage:
    drug_code: str
    requested: int
    best_available: int


def merge_quantities(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The same drug on two lines is one demand (first-seen order)."""
    merged: dict[str, int] = {}
    for drug_code, quantity in lines:
        merged[drug_code] = merged.get(drug_code, 0) + quantity
    return merged


def merge_lines(lines: Iterable[tuple[str, int, int]]) -> dict[str, Line]:
    """(drug, quantity, days of supply) lines merged per drug: quantities add up, and the lot must
    last the longest of the therapies."""
    merged: dict[str, Line] = {}
    for drug_code, quantity, days_supply in lines:
        before = merged.get(drug_code, Line(drug_code, 0, 0))
        merged[drug_code] = Line(drug_code, before.quantity + quantity, max(before.days_supply, days_supply))
    return merged


def usable_until(today: date, delivery_days: int, days_supply: int) -> date:
    """The earliest expiry a lot may have: the goods must last the delivery and the whole therapy."""
    return today + timedelta(days=delivery_days + days_supply)


def is_usable(lot: Lot, *, today: date, delivery_days: int, days_supply: int) -> bool:
    return lot.expiry_date >= usable_until(today, delivery_days, days_supply)


def usable_units(warehouse: Warehouse, line: Line, *, today: date, delivery_days: int) -> int:
    return sum(
        lot.available
        for _, lot in warehouse.lots_of(line.drug_code)
        if is_usable(lot, today=today, delivery_days=delivery_days, days_supply=line.days_supply)
    )


def plan_picks(
    warehouse: Warehouse, lines: Mapping[str, Line], *, today: date, delivery_days: int
) -> list[Pick] | None:
    """Lots first-expiry-first-out among the usable ones, as many lots per line as it takes; None
    if some line cannot be filled here."""
    picks: list[Pick] = []
    for line in lines.values():
        wanted = line.quantity
        for lot_id, lot in warehouse.lots_of(line.drug_code):
            if wanted == 0:
                break
            if lot.available == 0 or not is_usable(
                lot, today=today, delivery_days=delivery_days, days_supply=line.days_supply
            ):
                continue
            taken = min(wanted, lot.available)
            picks.append(Pick(lot_id=lot_id, drug_code=line.drug_code, quantity=taken))
            wanted -= taken
        if wanted > 0:
            return None
    return picks


def can_fill(warehouse: Warehouse, lines: Mapping[str, Line], *, today: date, delivery_days: int) -> bool:
    return plan_picks(warehouse, lines, today=today, delivery_days=delivery_days) is not None


def distance_km(a: Location, b: Location) -> float:
    """Great-circle distance between two places, as every side measures it."""
    return great_circle_km((a.latitude, a.longitude), (b.latitude, b.longitude))


def choose_warehouse(
    warehouses: Iterable[Warehouse],
    lines: Mapping[str, Line],
    patient: Location | None,
    *,
    today: date,
    delivery_days: int,
) -> Warehouse | None:
    """The registered warehouse nearest the patient that can fill the whole prescription from usable
    lots (ties by id), or none: couriers make one pickup and the patient gets one package. An
    address without coordinates is near none of them: the first by id that can fill it."""
    candidates = [
        w for w in warehouses if w.registered and can_fill(w, lines, today=today, delivery_days=delivery_days)
    ]

    def nearness(warehouse: Warehouse) -> tuple[float, str]:
        if patient is None or warehouse.location is None:  # registered warehouses have a location
            return (0.0, warehouse.warehouse_id)
        return (distance_km(warehouse.location, patient), warehouse.warehouse_id)

    return min(candidates, key=nearness, default=None)


def shortages(
    warehouses: Iterable[Warehouse], lines: Mapping[str, Line], *, today: date, delivery_days: int
) -> list[Shortage]:
    """Drugs no single registered warehouse has enough usable units of (empty: the drugs are there,
    only not all in one place)."""
    registered = [w for w in warehouses if w.registered]
    found = []
    for line in lines.values():
        best = max((usable_units(w, line, today=today, delivery_days=delivery_days) for w in registered), default=0)
        if best < line.quantity:
            found.append(Shortage(line.drug_code, line.quantity, best))
    return found


def reserve(
    warehouse: Warehouse, prescription_id: str, lines: Mapping[str, Line], *, today: date, delivery_days: int
) -> Outcome:
    """Available → reserved for every pick, all or nothing. Again for the same prescription: no change."""
    if prescription_id in warehouse.holds:
        return Outcome(warehouse)
    if not lines or any(line.quantity <= 0 for line in lines.values()):
        raise StockRefused(f"a reservation takes at least one unit per line: {list(lines.values())}")
    picks = plan_picks(warehouse, lines, today=today, delivery_days=delivery_days)
    if picks is None:
        raise StockRefused(
            f"{warehouse.warehouse_id} cannot fill {[(ln.drug_code, ln.quantity) for ln in lines.values()]}"
        )
    movements = tuple(move("reserved", p.lot_id, p.drug_code, p.quantity, "available", "reserved") for p in picks)
    days_supply = {line.drug_code: line.days_supply for line in lines.values()}
    holds = {**warehouse.holds, prescription_id: Hold(picks=picks, days_supply=days_supply)}
    demand = {**warehouse.recent_demand}
    daily = {**warehouse.daily_demand}
    for line in lines.values():
        demand[line.drug_code] = [*demand.get(line.drug_code, ()), line.quantity][-RECENT_DEMAND:]
        daily[line.drug_code] = daily.get(line.drug_code, DrugDemand(since=today)).taken(today, line.quantity)
    lots = _apply(warehouse, movements)
    after = warehouse.model_copy(update={"lots": lots, "holds": holds, "recent_demand": demand, "daily_demand": daily})
    return Outcome(after, movements, tuple(picks))


# --- the delivery moves held stock -----------------------------------------------------------------


def _move_hold(
    warehouse: Warehouse, prescription_id: str, kind: MovementKind, source: Bucket, target: Bucket, hold: Hold | None
) -> Outcome:
    """Every pick of a prescription's hold from `source` to `target`; the hold becomes `hold` (None: closed)."""
    held = warehouse.holds[prescription_id]
    movements = tuple(move(kind, p.lot_id, p.drug_code, p.quantity, source, target) for p in held.picks)
    holds = {k: v for k, v in warehouse.holds.items() if k != prescription_id}
    if hold is not None:
        holds[prescription_id] = hold
    return Outcome(warehouse.model_copy(update={"lots": _apply(warehouse, movements), "holds": holds}), movements)


def dispatch(warehouse: Warehouse, prescription_id: str) -> Outcome | None:
    """Reserved → dispatched when the courier picks the goods up. None if nothing to do."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None or hold.dispatched:
        return None
    travelling = hold.model_copy(update={"dispatched": True, "travelled": True})
    return _move_hold(warehouse, prescription_id, "dispatched", "reserved", "dispatched", travelling)


def return_goods(warehouse: Warehouse, prescription_id: str) -> Outcome | None:
    """Dispatched → reserved: the sealed package came back from a failed attempt and waits for the
    retry. It stays marked as travelled: if the delivery ends without one, it goes to quarantine."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None or not hold.dispatched:
        return None
    back = hold.model_copy(update={"dispatched": False})
    return _move_hold(warehouse, prescription_id, "returned", "dispatched", "reserved", back)


def release(warehouse: Warehouse, prescription_id: str) -> Outcome | None:
    """Reserved → available when the delivery is given up before the goods ever left. Goods that are
    on the road or came back from it are not released (see `withdraw`): nothing that left goes
    straight back on the shelf."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None or hold.travelled:
        return None
    return _move_hold(warehouse, prescription_id, "released", "reserved", "available", None)


def withdraw(warehouse: Warehouse, prescription_id: str) -> Outcome | None:
    """The delivery is given up: held goods that never left go back on the shelf (`release`); goods
    that travelled, even if back in the warehouse since, go to quarantine (`quarantine`)."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None:
        return None
    return quarantine(warehouse, prescription_id) if hold.travelled else release(warehouse, prescription_id)


def quarantine(warehouse: Warehouse, prescription_id: str) -> Outcome | None:
    """Held goods back from the road for good (undeliverable, damaged, cancelled) → quarantine,
    until a pharmacist inspects them. The hold is closed."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None:
        return None
    source: Bucket = "dispatched" if hold.dispatched else "reserved"
    return _move_hold(warehouse, prescription_id, "returned", source, "quarantine", None)


def repack(
    warehouse: Warehouse, prescription_id: str, *, today: date, delivery_days: int
) -> tuple[Outcome, Outcome | None] | None:
    """A package found damaged: its units go to quarantine (the hold closes, `quarantine`), then the
    same lines are picked again from the shelf, first expiry first, and held for the next attempt.
    The second outcome is None when the shelf cannot fill it again. A re-pack is no new demand.
    None if nothing is held for the prescription."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None:
        return None
    damaged = quarantine(warehouse, prescription_id)
    assert damaged is not None
    lines = {
        code: Line(code, quantity)
        for code, quantity in merge_quantities((p.drug_code, p.quantity) for p in hold.picks).items()
    }
    picks = plan_picks(damaged.warehouse, lines, today=today, delivery_days=delivery_days)
    if picks is None:
        return damaged, None
    movements = tuple(move("reserved", p.lot_id, p.drug_code, p.quantity, "available", "reserved") for p in picks)
    shelf = damaged.warehouse
    holds = {**shelf.holds, prescription_id: Hold(picks=picks)}
    packed = shelf.model_copy(update={"lots": _apply(shelf, movements), "holds": holds})
    return damaged, Outcome(packed, movements, tuple(picks))


def deliver(warehouse: Warehouse, prescription_id: str) -> Outcome | None:
    """Dispatched → the patient: the units leave the books as delivered and the hold is closed."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None or not hold.dispatched:
        return None
    moved = _move_hold(warehouse, prescription_id, "delivered", "dispatched", "outside", None)
    lots = dict(moved.warehouse.lots)
    for pick in hold.picks:
        lot = lots[pick.lot_id]
        to = {**lot.delivered_to, prescription_id: lot.delivered_to.get(prescription_id, 0) + pick.quantity}
        lots[pick.lot_id] = lot.model_copy(update={"delivered_to": to})
    return replace(moved, warehouse=moved.warehouse.model_copy(update={"lots": lots}))


# --- expiry and alerts -----------------------------------------------------------------------------


def expired_lots(warehouse: Warehouse, today: date) -> list[str]:
    """Lots past (or at) their expiry date with units still on the shelf."""
    return sorted(lot_id for lot_id, lot in warehouse.lots.items() if lot.expiry_date <= today and lot.available > 0)


def expire(warehouse: Warehouse, today: date) -> Outcome:
    """Available → expired for every lot at or past its expiry date: never allocated again."""
    movements = tuple(
        move("expired", lot_id, lot.drug_code, lot.available, "available", "expired")
        for lot_id in expired_lots(warehouse, today)
        for lot in [warehouse.lots[lot_id]]
    )
    if not movements:
        return Outcome(warehouse)
    return Outcome(warehouse.model_copy(update={"lots": _apply(warehouse, movements)}), movements)


def nearing_expiry(warehouse: Warehouse, today: date, near_expiry_days: int) -> list[str]:
    """Lots with units on the shelf expiring within the warning window (today excluded: that lot has
    expired), not alerted before."""
    horizon = today + timedelta(days=near_expiry_days)
    return sorted(
        lot_id
        for lot_id, lot in warehouse.lots.items()
        if lot.available > 0 and not lot.near_expiry_alerted and today < lot.expiry_date <= horizon
    )


def mark_near_expiry_alerted(warehouse: Warehouse, lot_ids: Iterable[str]) -> Warehouse:
    lots = dict(warehouse.lots)
    for lot_id in lot_ids:
        lots[lot_id] = lots[lot_id].model_copy(update={"near_expiry_alerted": True})
    return warehouse.model_copy(update={"lots": lots})


def threshold_for(
    drug_code: str, thresholds: Mapping[str, int], default: int, warehouse: Warehouse | None = None
) -> int:
    """The level under which a drug's stock is low here: the one set for the drug (or for every
    drug), and never less than the most one recent prescription took of it at this warehouse, so
    the alert comes while the next such prescription can still be filled, not after it failed."""
    recent = warehouse.recent_demand.get(drug_code, ()) if warehouse is not None else ()
    return max(thresholds.get(drug_code, default), max(recent, default=0))


def fell_below(before: Warehouse, after: Warehouse, drug_code: str, threshold: int) -> bool:
    """Alert once, when available stock crosses below the threshold, not on every later change."""
    return after.level(drug_code).available < threshold <= before.level(drug_code).available


# --- the ledger ------------------------------------------------------------------------------------


class LedgerEntry(BaseModel):
    """One movement as the ledger keeps it: which event, which warehouse, when."""

    entry_id: str
    message_id: str
    event_type: str
    index: int
    warehouse_id: str
    occurred_at: datetime
    kind: MovementKind
    lot_id: str
    drug_code: str
    quantity: int
    source: Bucket
    target: Bucket
    #: Why it moved: the prescription it was for, or who asked (staff) and their reason.
    prescription_id: str | None = None
    by: str | None = None
    reason: str | None = None

    @property
    def movement(self) -> Movement:
        return move(self.kind, self.lot_id, self.drug_code, self.quantity, self.source, self.target)


def ledger_entries(
    message_id: str,
    event_type: str,
    warehouse_id: str,
    occurred_at: datetime,
    movements: Sequence[Movement],
    *,
    prescription_id: str | None = None,
    by: str | None = None,
    reason: str | None = None,
) -> list[LedgerEntry]:
    """An event's movements as ledger entries; the id makes recording one event twice harmless."""
    return [
        LedgerEntry(
            entry_id=f"{message_id}:{index}",
            message_id=message_id,
            event_type=event_type,
            index=index,
            warehouse_id=warehouse_id,
            occurred_at=occurred_at,
            prescription_id=prescription_id,
            by=by,
            reason=reason,
            **m.model_dump(),
        )
        for index, m in enumerate(movements)
    ]


def recompute_lots(entries: Iterable[LedgerEntry], *, until: datetime | None = None) -> dict[tuple[str, str], Figures]:
    """Each lot's figures (by warehouse and lot id) from its movements alone, up to `until` if given.

    Figures are sums of movements, so the order of the entries does not matter; an entry seen twice
    (same id) counts once."""
    figures: dict[tuple[str, str], Figures] = {}
    seen: set[str] = set()
    for entry in entries:
        if entry.entry_id in seen or (until is not None and entry.occurred_at > until):
            continue
        seen.add(entry.entry_id)
        key = (entry.warehouse_id, entry.lot_id)
        figures[key] = shift(figures.get(key, Figures()), entry.movement)
    return figures


def current_lots(warehouses: Iterable[Warehouse]) -> dict[tuple[str, str], Figures]:
    """Each lot's figures as the warehouse documents hold them (to compare with `recompute_lots`)."""
    return {(w.warehouse_id, lot_id): lot.counts() for w in warehouses for lot_id, lot in w.lots.items()}


# --- a batch of reservations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Demand:
    """One approved prescription as a reservation sees it: its merged lines and where it goes."""

    prescription_id: str
    lines: Mapping[str, Line]
    #: None: the address has no coordinates (see `choose_warehouse`).
    patient: Location | None

    @property
    def quantities(self) -> dict[str, int]:
        return {drug: line.quantity for drug, line in self.lines.items()}


@dataclass(frozen=True)
class AlreadyDecided:
    """Reserved, out of stock or withdrawn before (`state`), or an earlier approval of the same
    prescription in this batch is being reserved (`state` None): nothing to do."""

    state: AllocationState | None


@dataclass(frozen=True)
class AlreadyHeld:
    """A warehouse holds stock for the prescription: the hold is the truth, and the allocation only
    has to say where (an earlier attempt died between the two writes)."""

    warehouse_id: str


@dataclass(frozen=True)
class ReserveAt:
    warehouse_id: str
    #: The allocation names this warehouse already (an earlier attempt claimed it): no claim to write.
    claimed: bool = False
    #: The warehouse an earlier attempt claimed that can no longer fill it: the claim moves off it.
    replacing: str | None = None


@dataclass(frozen=True)
class Unfillable:
    """No registered warehouse can fill every line from lots that last."""

    shortages: tuple[Shortage, ...]
    replacing: str | None = None

    @property
    def reason(self) -> Literal["OUT_OF_STOCK", "NOT_IN_ONE_WAREHOUSE"]:
        return "OUT_OF_STOCK" if self.shortages else "NOT_IN_ONE_WAREHOUSE"


ReservationPlan = AlreadyDecided | AlreadyHeld | ReserveAt | Unfillable


def plan_reservations(
    demands: Sequence[Demand],
    allocations: Mapping[str, Allocation | None],
    warehouses: Iterable[Warehouse],
    *,
    today: date,
    delivery_days: int,
) -> list[ReservationPlan]:
    """What to do for each demand, in order, each on the warehouses as the demands before it left
    them: units planned for one prescription are not planned again for the next.

    A warehouse that holds stock for the prescription wins; then the warehouse an earlier attempt
    claimed, if it can still fill it (resuming it, even if another is nearer, is what keeps one
    prescription from being reserved at two warehouses); then the nearest that can."""
    stock = {w.warehouse_id: w for w in warehouses}
    planned: set[str] = set()
    plans: list[ReservationPlan] = []
    for demand in demands:
        rx = demand.prescription_id
        allocation = allocations.get(rx)
        if rx in planned:
            plans.append(AlreadyDecided(None))
            continue
        planned.add(rx)
        if allocation is not None and allocation.state is not AllocationState.RESERVING:
            plans.append(AlreadyDecided(allocation.state))
            continue
        holding = next((w for w in stock.values() if rx in w.holds), None)
        if holding is not None:
            plans.append(AlreadyHeld(holding.warehouse_id))
            continue
        claimed = allocation.warehouse_id if allocation is not None else None
        if claimed is not None and (reserved := _reserved(stock.get(claimed), demand, today, delivery_days)):
            stock[claimed] = reserved
            plans.append(ReserveAt(claimed, claimed=True))
            continue
        chosen = choose_warehouse(
            stock.values(), demand.lines, demand.patient, today=today, delivery_days=delivery_days
        )
        reserved = _reserved(chosen, demand, today, delivery_days)
        if chosen is None or reserved is None:
            short = shortages(stock.values(), demand.lines, today=today, delivery_days=delivery_days)
            plans.append(Unfillable(tuple(short), replacing=claimed))
            continue
        stock[chosen.warehouse_id] = reserved
        plans.append(ReserveAt(chosen.warehouse_id, replacing=claimed))
    return plans


def _reserved(warehouse: Warehouse | None, demand: Demand, today: date, delivery_days: int) -> Warehouse | None:
    """The warehouse after reserving the demand, or None if it cannot fill it."""
    if warehouse is None or not warehouse.registered:
        return None
    try:
        return reserve(
            warehouse, demand.prescription_id, demand.lines, today=today, delivery_days=delivery_days
        ).warehouse
    except StockRefused:
        return None
