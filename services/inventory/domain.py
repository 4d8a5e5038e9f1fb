"""Stock rules. Pure functions: a warehouse in, a new warehouse out (or a refusal)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field


class DrugStock(BaseModel):
    """One drug in one warehouse. `available + reserved + dispatched` always equals
    `received + adjusted` (the conservation law the tests check)."""

    available: int = Field(default=0, ge=0)
    reserved: int = Field(default=0, ge=0)
    dispatched: int = Field(default=0, ge=0)
    received: int = Field(default=0, ge=0)
    adjusted: int = 0


class Hold(BaseModel):
    """Stock held for one prescription, from reservation until delivered or released."""

    lines: dict[str, int]
    dispatched: bool = False


class Warehouse(BaseModel):
    warehouse_id: str
    stock: dict[str, DrugStock] = Field(default_factory=dict)
    holds: dict[str, Hold] = Field(default_factory=dict)

    def level(self, drug_code: str) -> DrugStock:
        return self.stock.get(drug_code, DrugStock())


class AllocationState(StrEnum):
    RESERVING = "reserving"
    RESERVED = "reserved"
    OUT_OF_STOCK = "out_of_stock"


class Allocation(BaseModel):
    """Inventory's record of one approved prescription: where its stock was taken from, if anywhere."""

    prescription_id: str
    state: AllocationState
    lines: dict[str, int]
    warehouse_id: str | None = None


class StockRefused(ValueError):
    """The change would take stock below zero or otherwise break the books."""


@dataclass(frozen=True)
class Shortage:
    drug_code: str
    requested: int
    best_available: int


def merge_lines(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The same drug on two lines is one demand."""
    merged: dict[str, int] = {}
    for drug_code, quantity in lines:
        merged[drug_code] = merged.get(drug_code, 0) + quantity
    return merged


def can_fill(warehouse: Warehouse, lines: Mapping[str, int]) -> bool:
    return all(warehouse.level(drug).available >= quantity for drug, quantity in lines.items())


def choose_warehouse(warehouses: Iterable[Warehouse], lines: Mapping[str, int]) -> Warehouse | None:
    """The whole prescription from one warehouse, or none: couriers make one pickup.

    Simple rule for now: the first warehouse by id that can fill every line.
    """
    for warehouse in sorted(warehouses, key=lambda w: w.warehouse_id):
        if can_fill(warehouse, lines):
            return warehouse
    return None


def shortages(warehouses: Iterable[Warehouse], lines: Mapping[str, int]) -> list[Shortage]:
    warehouses = list(warehouses)
    found = []
    for drug, quantity in lines.items():
        best = max((w.level(drug).available for w in warehouses), default=0)
        if best < quantity:
            found.append(Shortage(drug, quantity, best))
    return found


def _with_stock(warehouse: Warehouse, changes: Mapping[str, DrugStock]) -> dict[str, DrugStock]:
    return {**warehouse.stock, **changes}


def reserve(warehouse: Warehouse, prescription_id: str, lines: Mapping[str, int]) -> Warehouse:
    if prescription_id in warehouse.holds:
        return warehouse
    if any(quantity <= 0 for quantity in lines.values()):
        raise StockRefused(f"a reservation takes at least one unit per line: {dict(lines)}")
    if not can_fill(warehouse, lines):
        raise StockRefused(f"{warehouse.warehouse_id} cannot fill {dict(lines)}")
    changed = {}
    for drug, quantity in lines.items():
        level = warehouse.level(drug)
        changed[drug] = level.model_copy(
            update={"available": level.available - quantity, "reserved": level.reserved + quantity}
        )
    holds = {**warehouse.holds, prescription_id: Hold(lines=dict(lines))}
    return warehouse.model_copy(update={"stock": _with_stock(warehouse, changed), "holds": holds})


def _move_held(warehouse: Warehouse, hold: Hold, *, source: str, target: str) -> dict[str, DrugStock]:
    changed = {}
    for drug, quantity in hold.lines.items():
        level = warehouse.level(drug)
        changed[drug] = level.model_copy(
            update={source: getattr(level, source) - quantity, target: getattr(level, target) + quantity}
        )
    return _with_stock(warehouse, changed)


def dispatch(warehouse: Warehouse, prescription_id: str) -> Warehouse | None:
    """Reserved → dispatched when the courier picks the goods up. None if nothing to do."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None or hold.dispatched:
        return None
    holds = {**warehouse.holds, prescription_id: hold.model_copy(update={"dispatched": True})}
    stock = _move_held(warehouse, hold, source="reserved", target="dispatched")
    return warehouse.model_copy(update={"stock": stock, "holds": holds})


def return_goods(warehouse: Warehouse, prescription_id: str) -> Warehouse | None:
    """Dispatched → reserved: a failed attempt brought the goods back; they stay held for a retry."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None or not hold.dispatched:
        return None
    holds = {**warehouse.holds, prescription_id: hold.model_copy(update={"dispatched": False})}
    stock = _move_held(warehouse, hold, source="dispatched", target="reserved")
    return warehouse.model_copy(update={"stock": stock, "holds": holds})


def release(warehouse: Warehouse, prescription_id: str) -> Warehouse | None:
    """Reserved → available when the delivery is given up."""
    if (returned := return_goods(warehouse, prescription_id)) is not None:
        warehouse = returned
    hold = warehouse.holds.get(prescription_id)
    if hold is None:
        return None
    holds = {k: v for k, v in warehouse.holds.items() if k != prescription_id}
    stock = _move_held(warehouse, hold, source="reserved", target="available")
    return warehouse.model_copy(update={"stock": stock, "holds": holds})


def complete(warehouse: Warehouse, prescription_id: str) -> Warehouse | None:
    """Delivered: the hold is closed; the units stay counted as dispatched."""
    hold = warehouse.holds.get(prescription_id)
    if hold is None or not hold.dispatched:
        return None
    holds = {k: v for k, v in warehouse.holds.items() if k != prescription_id}
    return warehouse.model_copy(update={"holds": holds})


def restock(warehouse: Warehouse, drug_code: str, quantity: int) -> Warehouse:
    if quantity <= 0:
        raise StockRefused("a restock adds at least one unit")
    level = warehouse.level(drug_code)
    updated = level.model_copy(update={"available": level.available + quantity, "received": level.received + quantity})
    return warehouse.model_copy(update={"stock": _with_stock(warehouse, {drug_code: updated})})


def adjust(warehouse: Warehouse, drug_code: str, delta: int) -> Warehouse:
    level = warehouse.level(drug_code)
    if delta == 0:
        raise StockRefused("an adjustment changes at least one unit")
    if level.available + delta < 0:
        raise StockRefused(f"only {level.available} units of {drug_code} are available to remove")
    updated = level.model_copy(update={"available": level.available + delta, "adjusted": level.adjusted + delta})
    return warehouse.model_copy(update={"stock": _with_stock(warehouse, {drug_code: updated})})


def fell_below(before: Warehouse, after: Warehouse, drug_code: str, threshold: int) -> bool:
    """Alert once, when available stock crosses below the threshold, not on every later change."""
    return after.level(drug_code).available < threshold <= before.level(drug_code).available
