"""Stock commands (`inventory.commands.v1`) and events (`inventory.events.v1`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field

from .consultation import Coordinates
from .envelope import Contract, Envelope, Identifier

StaffName = Annotated[str, Field(min_length=1, max_length=80)]

Bucket = Literal["outside", "available", "reserved", "dispatched", "quarantine", "expired"]
"""Where a unit of a lot is. `outside` is the world beyond the warehouse (suppliers, patients, bins)."""

MovementKind = Literal["received", "reserved", "released", "dispatched", "returned", "adjusted", "expired", "delivered"]


class Movement(Contract):
    """One line of the stock ledger: `quantity` units of one lot moved from one bucket to another."""

    kind: MovementKind
    lot_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0)
    source: Bucket
    target: Bucket


class StockLine(Contract):
    drug_code: Identifier
    quantity: int = Field(gt=0)


class LotPick(Contract):
    """Units of one lot taken for a prescription (first expiry, first out)."""

    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    quantity: int = Field(gt=0)


class StockLevel(Contract):
    """A drug's figures in one warehouse right after the change that reports it."""

    drug_code: Identifier
    available: int = Field(ge=0)
    reserved: int = Field(ge=0)
    dispatched: int = Field(ge=0)
    quarantined: int = Field(default=0, ge=0)


# --- commands from warehouse staff -------------------------------------------------------------


class WarehouseRegistrationRequested(Envelope):
    """A warehouse or township pharmacy joins (or moves): where it is decides what it serves first."""

    type: Literal["inventory.warehouse_registration_requested"] = "inventory.warehouse_registration_requested"
    warehouse_id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=120)]
    kind: Literal["central", "township"]
    location: Coordinates
    requested_by: StaffName


class RestockRequested(Envelope):
    """Goods received: one lot of one drug, with the expiry printed on the pack."""

    type: Literal["inventory.restock_requested"] = "inventory.restock_requested"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    quantity: int = Field(gt=0)
    requested_by: StaffName


class AdjustmentRequested(Envelope):
    """A stock count correction of one lot (breakage, miscount). Cannot take available stock below zero."""

    type: Literal["inventory.adjustment_requested"] = "inventory.adjustment_requested"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    delta: int = Field(description="Units added (positive) or removed (negative); never zero")
    reason: Annotated[str, Field(min_length=1, max_length=200)]
    requested_by: StaffName


# --- events ------------------------------------------------------------------------------------


class WarehouseRegistered(Envelope):
    type: Literal["inventory.warehouse_registered"] = "inventory.warehouse_registered"
    warehouse_id: Identifier
    name: str
    kind: Literal["central", "township"]
    location: Coordinates


class StockReserved(Envelope):
    type: Literal["inventory.stock_reserved"] = "inventory.stock_reserved"
    prescription_id: Identifier
    warehouse_id: Identifier
    pickup_location: Coordinates
    lines: list[StockLine] = Field(min_length=1)
    picks: list[LotPick] = Field(min_length=1)
    levels: list[StockLevel]
    movements: list[Movement] = Field(default_factory=list)


class Shortage(Contract):
    drug_code: Identifier
    requested: int = Field(gt=0)
    best_available: int = Field(ge=0, description="Most units of this drug any single warehouse had")


class ReservationFailed(Envelope):
    """No single warehouse could fill the whole prescription; nothing was reserved.

    OUT_OF_STOCK lists the drugs no warehouse has enough of. NOT_IN_ONE_WAREHOUSE means every
    drug is in stock somewhere, but not all in one place: prescriptions are not split, because a
    courier makes one pickup and a patient gets one package.
    """

    type: Literal["inventory.reservation_failed"] = "inventory.reservation_failed"
    prescription_id: Identifier
    reason: Literal["OUT_OF_STOCK", "NOT_IN_ONE_WAREHOUSE"] = "OUT_OF_STOCK"
    shortages: list[Shortage]


class _Movement(Envelope):
    """A change of stock held for one prescription."""

    prescription_id: Identifier
    warehouse_id: Identifier
    lines: list[StockLine]
    levels: list[StockLevel]
    movements: list[Movement] = Field(default_factory=list)


class StockReleased(_Movement):
    """Held stock back on the shelf: the delivery was withdrawn before the goods left."""

    type: Literal["inventory.stock_released"] = "inventory.stock_released"


class StockDispatched(_Movement):
    type: Literal["inventory.stock_dispatched"] = "inventory.stock_dispatched"


class StockReturned(_Movement):
    """A sealed package a courier brought back after a failed attempt; held again for the retry."""

    type: Literal["inventory.stock_returned"] = "inventory.stock_returned"


class StockQuarantined(_Movement):
    """Goods back from the road for good (undeliverable, damaged, cancelled after pickup): quarantined
    until a pharmacist inspects them, never straight back on the shelf."""

    type: Literal["inventory.stock_quarantined"] = "inventory.stock_quarantined"
    why: Literal["undeliverable", "damaged", "cancelled"]


class StockDelivered(_Movement):
    """The patient has the goods: the hold is closed."""

    type: Literal["inventory.stock_delivered"] = "inventory.stock_delivered"


class StockRestocked(Envelope):
    type: Literal["inventory.stock_restocked"] = "inventory.stock_restocked"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    quantity: int = Field(gt=0)
    requested_by: StaffName
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class StockAdjusted(Envelope):
    type: Literal["inventory.stock_adjusted"] = "inventory.stock_adjusted"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    delta: int
    reason: str
    requested_by: StaffName
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class StockCommandRefused(Envelope):
    type: Literal["inventory.stock_command_refused"] = "inventory.stock_command_refused"
    warehouse_id: Identifier
    drug_code: Identifier | None = None
    reason: str


class LotNearingExpiry(Envelope):
    """Alert: a lot with units on the shelf expires within the warning window. Sent once per lot."""

    type: Literal["inventory.lot_nearing_expiry"] = "inventory.lot_nearing_expiry"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    available: int = Field(ge=0)


class LotExpired(Envelope):
    """A lot passed its expiry date: its shelf units are removed from availability."""

    type: Literal["inventory.lot_expired"] = "inventory.lot_expired"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    removed: int = Field(ge=0)
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class LowStock(Envelope):
    type: Literal["inventory.low_stock"] = "inventory.low_stock"
    warehouse_id: Identifier
    drug_code: Identifier
    available: int = Field(ge=0)
    threshold: int = Field(ge=0)
