"""Lot recalls. Pure functions: a warehouse in, the warehouse and the movements that changed it out.

What a recall does at one warehouse (`recall`):

1. Every unit of the lot on the shelf goes to quarantine (available → quarantine, `recalled`).
2. Every open reservation (a hold not on the road) that took units of the lot gives them up
   (reserved → quarantine, `recalled`) and is **re-picked** from other lots of the same drug here,
   first expiry first, among lots that last the therapy the reservation was made for (available →
   reserved, `reserved`); the hold's picks change, the patient and the courier see nothing.
3. A reservation no other lot here can cover is **withdrawn**: its other units go back on the shelf
   (to quarantine if they ever travelled), and the prescription ends out of stock: the patient is
   told and the hospital asked to call, as when no warehouse could fill it. Why not keep the hold
   and wait for a restock: a recall comes without warning and its replacement may take weeks; a
   patient waiting in silence on a hold nobody looks at is worse than a call from the hospital
   today, which can send a new prescription that any warehouse of the county may fill (this one
   can only re-pick from its own shelf: a write here is one warehouse).
4. A hold on the road is left as it is and named (`on_the_road`): the courier service calls the
   dispatch back (`DispatchWithdrawn`, reason `recalled`, return goods); when the courier brings the
   package back the delivery is cancelled with the goods returned, and inventory's existing rule for
   goods that travelled puts the whole package in quarantine.
5. The prescriptions units of the lot were delivered to from here are listed (`delivered_to`),
   from what each lot remembers since this rule exists and, for older deliveries, the ledger.

Why one command per warehouse. A recall touches every warehouse that holds the lot, and a write here
is one warehouse document (a version-guarded replace carrying its outbox). One command naming the
lot for every warehouse would need either a transaction across documents or a process that fans it
out and remembers how far it got; instead the tool sends one `LotRecallRequested` per registered
warehouse, all under one recall id, and each warehouse applies its part in one write with its events
(`LotRecalled`, and a `PrescriptionRecalled` per prescription concerned). Each part is applied once:
the command's id is kept for good (like a restock's), and the warehouse remembers the recall id with
the lot (`recalled_lots`), so the same recall sent again under a new message id is refused ("recalled
already"). A warehouse that does not hold the lot remembers the recall too: a transfer of it received
later goes straight to quarantine, and no restock, positive adjustment or release from quarantine
puts it back on a shelf.

The books stay balanced: a recall moves units between buckets of the same lot and adds none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from pharmacy_contracts.inventory import Movement

from .domain import (
    Hold,
    Pick,
    RecallNote,
    StockRefused,
    Warehouse,
    apply_movements,
    is_usable,
    move,
)


@dataclass(frozen=True)
class Recalled:
    """A warehouse after its part of a recall, and what it did."""

    warehouse: Warehouse
    movements: tuple[Movement, ...]
    drug_code: str | None
    #: Units taken off the shelf.
    quarantined: int
    re_picked: tuple[str, ...]
    withdrawn: tuple[str, ...]
    on_the_road: tuple[str, ...]
    delivered_to: tuple[str, ...]
    #: Units of the lot each prescription concerned took (delivered, on the road or withdrawn).
    units: Mapping[str, int]


def recall(
    warehouse: Warehouse,
    lot_id: str,
    note: RecallNote,
    *,
    today: date,
    delivery_days: int,
    delivered_before: Mapping[str, int] | None = None,
) -> Recalled:
    """The lot recalled here (see the module's docstring); refused if this recall was applied here
    already. `delivered_before`: units of the lot the ledger says were delivered from here, by
    prescription (deliveries from before lots remembered them)."""
    known = warehouse.recalled_lots.get(lot_id)
    if known is not None and known.recall_id == note.recall_id:
        raise StockRefused(
            f"recall {note.recall_id} of lot {lot_id} was applied here already ({known.at:%Y-%m-%d %H:%M})"
        )
    current = warehouse.model_copy(update={"recalled_lots": {**warehouse.recalled_lots, lot_id: note}})
    lot = warehouse.lots.get(lot_id)
    units = {**(delivered_before or {}), **(lot.delivered_to if lot else {})}
    delivered = sorted(units)
    if lot is None:
        return Recalled(current, (), None, 0, (), (), (), tuple(delivered), units)
    drug = lot.drug_code
    movements: list[Movement] = []
    shelf = lot.available
    if shelf:
        movements.append(move("recalled", lot_id, drug, shelf, "available", "quarantine"))
        current = current.model_copy(update={"lots": apply_movements(current, movements)})
    re_picked: list[str] = []
    withdrawn: list[str] = []
    on_the_road: list[str] = []
    for rx, hold in sorted(current.holds.items()):
        taken = sum(p.quantity for p in hold.picks if p.lot_id == lot_id)
        if not taken:
            continue
        units[rx] = taken
        if hold.dispatched:
            on_the_road.append(rx)
            continue
        changed, moved, covered = _re_pick(current, rx, hold, lot_id, today=today, delivery_days=delivery_days)
        current = changed
        movements += moved
        (re_picked if covered else withdrawn).append(rx)
    return Recalled(
        current,
        tuple(movements),
        drug,
        shelf,
        tuple(re_picked),
        tuple(withdrawn),
        tuple(on_the_road),
        tuple(delivered),
        units,
    )


def _re_pick(
    warehouse: Warehouse, rx: str, hold: Hold, lot_id: str, *, today: date, delivery_days: int
) -> tuple[Warehouse, list[Movement], bool]:
    """The hold's units of the recalled lot to quarantine, replaced from other lots of the drug
    (True), or the hold withdrawn if they cannot all be replaced (False)."""
    recalled = warehouse.lots[lot_id]
    drug = recalled.drug_code
    taken = sum(p.quantity for p in hold.picks if p.lot_id == lot_id)
    out = [move("recalled", lot_id, drug, taken, "reserved", "quarantine")]
    kept = [p for p in hold.picks if p.lot_id != lot_id]
    days = hold.days_supply.get(drug)
    wanted, new_picks = taken, []
    for other_id, other in warehouse.lots_of(drug):
        if wanted == 0:
            break
        if other_id == lot_id or other_id in warehouse.recalled_lots or other.available == 0:
            continue
        # Lots that last the therapy; a hold from before its days were kept: lots that last as long as the recalled one.
        lasts = (
            is_usable(other, today=today, delivery_days=delivery_days, days_supply=days)
            if days is not None
            else other.expiry_date >= recalled.expiry_date
        )
        if not lasts:
            continue
        take = min(wanted, other.available)
        new_picks.append(Pick(lot_id=other_id, drug_code=drug, quantity=take))
        wanted -= take
    if wanted == 0:
        moved = out + [move("reserved", p.lot_id, drug, p.quantity, "available", "reserved") for p in new_picks]
        picks = _merged([*kept, *new_picks])
        holds = {**warehouse.holds, rx: hold.model_copy(update={"picks": picks})}
        after = warehouse.model_copy(update={"lots": apply_movements(warehouse, moved), "holds": holds})
        return after, moved, True
    # Withdrawn: nothing that travelled goes back on the shelf.
    target = "quarantine" if hold.travelled else "available"
    kind = "recalled" if hold.travelled else "released"
    moved = out + [move(kind, p.lot_id, p.drug_code, p.quantity, "reserved", target) for p in kept]
    holds = {k: v for k, v in warehouse.holds.items() if k != rx}
    after = warehouse.model_copy(update={"lots": apply_movements(warehouse, moved), "holds": holds})
    return after, moved, False


def _merged(picks: list[Pick]) -> list[Pick]:
    """One pick per lot."""
    merged: dict[str, Pick] = {}
    for pick in picks:
        before = merged.get(pick.lot_id)
        merged[pick.lot_id] = (
            pick if before is None else before.model_copy(update={"quantity": before.quantity + pick.quantity})
        )
    return list(merged.values())


def recalled_in(warehouse: Warehouse, lot_ids: Iterable[str]) -> list[str]:
    """Those of these lots recalled at this warehouse."""
    return [lot_id for lot_id in dict.fromkeys(lot_ids) if lot_id in warehouse.recalled_lots]


def note_for(recall_id: str, reason: str, by: str, at: datetime) -> RecallNote:
    return RecallNote(recall_id=recall_id, reason=reason, at=at, by=by)
