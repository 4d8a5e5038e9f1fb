"""Stock commands (`inventory.commands.v1`) and events (`inventory.events.v1`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .envelope import Contract, Envelope, Identifier

StaffName = Annotated[str, Field(min_length=1, max_length=80)]


class StockLine(Contract):
    drug_code: Identifier
    quantity: int = Field(gt=0)


class StockLevel(Contract):
    """A drug's figures in one warehouse right after the change that reports it."""

    drug_code: Identifier
    available: int = Field(ge=0)
    reserved: int = Field(ge=0)
    dispatched: int = Field(ge=0)


# --- commands from warehouse staff -------------------------------------------------------------


class RestockRequested(Envelope):
    type: Literal["inventory.restock_requested"] = "inventory.restock_requested"
    warehouse_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0)
    requested_by: StaffName


class AdjustmentRequested(Envelope):
    """A stock count correction (breakage, miscount). Cannot take available stock below zero."""

    type: Literal["inventory.adjustment_requested"] = "inventory.adjustment_requested"
    warehouse_id: Identifier
    drug_code: Identifier
    delta: int = Field(description="Units added (positive) or removed (negative); never zero")
    reason: Annotated[str, Field(min_length=1, max_length=200)]
    requested_by: StaffName


# --- events ------------------------------------------------------------------------------------


class StockReserved(Envelope):
    type: Literal["inventory.stock_reserved"] = "inventory.stock_reserved"
    prescription_id: Identifier
    warehouse_id: Identifier
    lines: list[StockLine] = Field(min_length=1)
    levels: list[StockLevel]


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


class StockReleased(Envelope):
    type: Literal["inventory.stock_released"] = "inventory.stock_released"
    prescription_id: Identifier
    warehouse_id: Identifier
    lines: list[StockLine]
    levels: list[StockLevel]


class StockDispatched(Envelope):
    type: Literal["inventory.stock_dispatched"] = "inventory.stock_dispatched"
    prescription_id: Identifier
    warehouse_id: Identifier
    lines: list[StockLine]
    levels: list[StockLevel]


class StockReturned(Envelope):
    """Goods a courier brought back after a failed attempt; held again for the prescription."""

    type: Literal["inventory.stock_returned"] = "inventory.stock_returned"
    prescription_id: Identifier
    warehouse_id: Identifier
    lines: list[StockLine]
    levels: list[StockLevel]


class StockRestocked(Envelope):
    type: Literal["inventory.stock_restocked"] = "inventory.stock_restocked"
    warehouse_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0)
    requested_by: StaffName
    level: StockLevel


class StockAdjusted(Envelope):
    type: Literal["inventory.stock_adjusted"] = "inventory.stock_adjusted"
    warehouse_id: Identifier
    drug_code: Identifier
    delta: int
    reason: str
    requested_by: StaffName
    level: StockLevel


class StockCommandRefused(Envelope):
    type: Literal["inventory.stock_command_refused"] = "inventory.stock_command_refused"
    warehouse_id: Identifier
    drug_code: Identifier
    reason: str


class LowStock(Envelope):
    type: Literal["inventory.low_stock"] = "inventory.low_stock"
    warehouse_id: Identifier
    drug_code: Identifier
    available: int = Field(ge=0)
    threshold: int = Field(ge=0)
