"""Stock commands (`inventory.commands.v1`) and events (`inventory.events.v1`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .consultation import EXAMPLE_PRESCRIPTION, Coordinates
from .envelope import Contract, Envelope, Identifier, example_id, wire_example
from .limits import MAX_SHELF_LIFE, MAX_STOCK_UNITS, MAX_UNITS, MULTILINE, ONE_LINE, StockUnits, Units

StaffName = Annotated[str, Field(min_length=1, max_length=80), ONE_LINE]
WarehouseName = Annotated[str, Field(min_length=1, max_length=120), ONE_LINE]
AdjustmentReason = Annotated[str, Field(min_length=1, max_length=200), MULTILINE]
Delta = Annotated[int, Field(ge=-MAX_UNITS, le=MAX_UNITS)]
# Staff read the refusal; inventory writes it from lot ids, dates and figures.
RefusalReason = Annotated[str, Field(min_length=1, max_length=1000), MULTILINE]

Bucket = Literal["outside", "available", "reserved", "dispatched", "quarantine", "expired", "in_transit"]
"""Where a unit of a lot is. `outside` is the world beyond the warehouse (suppliers, patients, bins,
another warehouse). `in_transit`: shipped to another warehouse, counted here until it says it
received them."""

MovementKind = Literal[
    "received",
    "reserved",
    "released",
    "dispatched",
    "returned",
    "adjusted",
    "expired",
    "delivered",
    "transfer_out",
    "transfer_in",
    "transfer_closed",
    "recalled",
]
"""`recalled`: units of a recalled lot taken out of use (available or reserved → quarantine).
`transfer_out`: shipped to another warehouse (available → in_transit, at the source);
`transfer_in`: received from one (outside → available, at the destination); `transfer_closed`: the
destination confirmed the receipt (in_transit → outside, at the source)."""


class Movement(Contract):
    """One line of the stock ledger: `quantity` units of one lot moved from one bucket to another."""

    kind: MovementKind
    lot_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS)
    source: Bucket
    target: Bucket


class StockLine(Contract):
    """One drug of a prescription: its lines' quantities added up."""

    drug_code: Identifier
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS)


class LotPick(Contract):
    """Units of one lot taken for a prescription (first expiry, first out)."""

    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS)


class StockLevel(Contract):
    """A drug's figures in one warehouse right after the change that reports it."""

    drug_code: Identifier
    available: StockUnits
    reserved: StockUnits
    dispatched: StockUnits
    quarantined: StockUnits = 0


# The published examples follow one prescription and one warehouse.
_RX = EXAMPLE_PRESCRIPTION["prescription_id"]
_WH = "WH-NORTHFORD"
_WH_AT = {"latitude": 51.806, "longitude": 69.391}
_STAFF = "Aigerim Bekova"
_LOT = {"lot_id": "MET500-L2611", "drug_code": "MET500"}
_LINES = [{"drug_code": "MET500", "quantity": 180}, {"drug_code": "AML5", "quantity": 90}]
_RESERVATION = {"prescription_id": _RX, "warehouse_id": _WH, "lines": _LINES}
_HELD = [
    {"drug_code": "MET500", "available": 420, "reserved": 180, "dispatched": 0},
    {"drug_code": "AML5", "available": 210, "reserved": 90, "dispatched": 0},
]
_ON_THE_ROAD = [
    {"drug_code": "MET500", "available": 420, "reserved": 0, "dispatched": 180},
    {"drug_code": "AML5", "available": 210, "reserved": 0, "dispatched": 90},
]
# A staff command and the event that records it carry the same particulars.
_RESTOCK = {**_LOT, "warehouse_id": _WH, "expiry_date": "2028-03-31", "quantity": 600, "requested_by": _STAFF}
_ADJUSTMENT = {
    **_LOT,
    "warehouse_id": _WH,
    "delta": -12,
    "reason": "Carton crushed in unloading",
    "requested_by": _STAFF,
}
_QUARANTINE = {
    **_LOT,
    "warehouse_id": _WH,
    "quantity": 6,
    "decision": "release",
    "reason": "Inspected: only the outer carton was damaged",
    "requested_by": _STAFF,
}
QuarantineDecision = Literal["release", "write_off"]
_EXPIRING_LOT = {"warehouse_id": _WH, "drug_code": "AML5", "lot_id": "AML5-L2609", "expiry_date": "2027-12-31"}


def _after(message_type: str) -> dict[str, str]:
    return {"correlation_id": _RX, "causation_id": example_id(message_type), "producer": "inventory"}


def _moves(kind: str, source: str, target: str) -> list[dict[str, object]]:
    return [
        {
            "kind": kind,
            "lot_id": "MET500-L2611",
            "drug_code": "MET500",
            "quantity": 180,
            "source": source,
            "target": target,
        },
        {"kind": kind, "lot_id": "AML5-L2609", "drug_code": "AML5", "quantity": 90, "source": source, "target": target},
    ]


# --- commands from warehouse staff -------------------------------------------------------------


class WarehouseRegistrationRequested(Envelope):
    """A warehouse or township pharmacy joins (or moves): where it is decides what it serves first."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-WH-0001",
            producer="warehouse-console",
            warehouse_id=_WH,
            name="Northford central warehouse",
            kind="central",
            location=_WH_AT,
            requested_by=_STAFF,
        )
    )

    type: Literal["inventory.warehouse_registration_requested"] = "inventory.warehouse_registration_requested"
    warehouse_id: Identifier
    name: WarehouseName
    kind: Literal["central", "township"]
    location: Coordinates
    requested_by: StaffName


class RestockRequested(Envelope):
    """Goods received: one lot of one drug, with the expiry printed on the pack.

    An expiry more than ten years after `occurred_at` is refused here (a typing error such as
    9999-12-31); a lot already expired is refused by inventory, on its own clock, with a
    `StockCommandRefused`.
    """

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-RESTOCK-0415",
            producer="warehouse-console",
            **_RESTOCK,
        )
    )

    type: Literal["inventory.restock_requested"] = "inventory.restock_requested"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date = Field(description="At most ten years after `occurred_at`")
    quantity: Units
    requested_by: StaffName

    @model_validator(mode="after")
    def _expiry_within_a_shelf_life(self) -> RestockRequested:
        # A difference, never a sum: received + MAX_SHELF_LIFE overflows near the year 9999.
        received = self.occurred_at.date()
        if self.expiry_date - received > MAX_SHELF_LIFE:
            raise ValueError(
                f"expiry_date {self.expiry_date} is more than ten years after the restock ({received}): "
                "no medicine keeps that long; check the date printed on the pack"
            )
        return self


class AdjustmentRequested(Envelope):
    """A stock count correction of one lot (breakage, miscount). Cannot take available stock below zero."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-ADJUST-0416",
            producer="warehouse-console",
            **_ADJUSTMENT,
        )
    )

    type: Literal["inventory.adjustment_requested"] = "inventory.adjustment_requested"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    delta: Delta = Field(description="Units added (positive) or removed (negative); never zero")
    reason: AdjustmentReason
    requested_by: StaffName


class QuarantineDecided(Envelope):
    """Warehouse staff's decision on quarantined units of one lot (returned damaged, recalled) after
    inspection: back on the shelf (`release`, never for an expired lot) or destroyed (`write_off`)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(correlation_id="CMD-QUAR-0417", producer="warehouse-console", **_QUARANTINE)
    )

    type: Literal["inventory.quarantine_decided"] = "inventory.quarantine_decided"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    quantity: Units
    decision: QuarantineDecision
    reason: AdjustmentReason
    requested_by: StaffName


# Transfers: a township pharmacy restocked from the central warehouse (see `TransferSuggested`).
_TOWNSHIP = "PH-KARA-BULAK"
_TRANSFER_ID = "TR-5F0C2A9D41B7"
_TRANSFER = {"transfer_id": _TRANSFER_ID, "drug_code": "LEV50"}
_TRANSFER_PICKS = [
    {"drug_code": "LEV50", "lot_id": "LEV50-L2702", "expiry_date": "2027-09-30", "quantity": 120},
    {"drug_code": "LEV50", "lot_id": "LEV50-L2711", "expiry_date": "2028-06-30", "quantity": 70},
]


def _transfer_moves(kind: str, source: str, target: str) -> list[dict[str, object]]:
    return [
        {
            "kind": kind,
            "lot_id": pick["lot_id"],
            "drug_code": "LEV50",
            "quantity": pick["quantity"],
            "source": source,
            "target": target,
        }
        for pick in _TRANSFER_PICKS
    ]


class TransferShipRequested(Envelope):
    """Warehouse staff at the central warehouse ship a transfer (usually one inventory suggested,
    `TransferSuggested`) to a township pharmacy: the units leave the shelf and are counted here as
    in transit until the township confirms their receipt. A transfer id is shipped once."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_TRANSFER_ID,
            producer="warehouse-console",
            warehouse_id=_WH,
            **_TRANSFER,
            to_warehouse_id=_TOWNSHIP,
            quantity=190,
            requested_by=_STAFF,
        )
    )

    type: Literal["inventory.transfer_ship_requested"] = "inventory.transfer_ship_requested"
    warehouse_id: Identifier = Field(description="The central warehouse the units leave")
    transfer_id: Identifier
    to_warehouse_id: Identifier = Field(description="The township pharmacy they go to")
    drug_code: Identifier
    quantity: Units
    requested_by: StaffName


class TransferReceiptRequested(Envelope):
    """Staff at the township pharmacy confirm a shipped transfer arrived: its lots go on the shelf.
    A transfer is received once; the central warehouse then closes its in-transit units."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_TRANSFER_ID,
            producer="warehouse-console",
            warehouse_id=_TOWNSHIP,
            transfer_id=_TRANSFER_ID,
            requested_by="Gulnara Sadykova",
        )
    )

    type: Literal["inventory.transfer_receipt_requested"] = "inventory.transfer_receipt_requested"
    warehouse_id: Identifier = Field(description="The township pharmacy the units arrived at")
    transfer_id: Identifier
    requested_by: StaffName


# A lot recall: every warehouse that holds the lot quarantines it (see `LotRecallRequested`).
_RECALL_ID = "RC-7A41C09E2B55"
_RECALL = {
    "recall_id": _RECALL_ID,
    "lot_id": "MET500-L2611",
    "reason": "Supplier recall notice 2026/118: tablets may not dissolve",
    "requested_by": _STAFF,
}
RecallStatus = Literal["delivered", "on_the_road", "withdrawn"]
"""What a recall means for one prescription: units of the lot were `delivered` to the patient; they
are `on_the_road` (the courier brings them back, to quarantine); the reservation was `withdrawn`
(no other lot at the warehouse could replace the recalled units: the prescription ends out of stock)."""


class LotRecallRequested(Envelope):
    """Staff recall a lot at one warehouse: every unit of it there goes to quarantine, open
    reservations holding it are re-picked from other lots of the drug (or withdrawn), deliveries on
    the road with it are called back, and the prescriptions it was delivered to are listed.

    One command per warehouse (the `pharmacy recall` tool sends one to every registered warehouse,
    under one `recall_id`): a write here is one warehouse document, so each warehouse applies its own
    part once (its command id is kept for good, and the same recall id is refused a second time)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RECALL_ID, producer="warehouse-console", warehouse_id=_WH, **_RECALL
        )
    )

    type: Literal["inventory.lot_recall_requested"] = "inventory.lot_recall_requested"
    warehouse_id: Identifier
    recall_id: Identifier
    lot_id: Identifier
    reason: AdjustmentReason
    requested_by: StaffName


# --- events ------------------------------------------------------------------------------------


class WarehouseRegistered(Envelope):
    """A warehouse or township pharmacy and where it is; allocation measures distances from here."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-WH-0001",
            causation_id=example_id("inventory.warehouse_registration_requested"),
            producer="inventory",
            warehouse_id=_WH,
            name="Northford central warehouse",
            kind="central",
            location=_WH_AT,
        )
    )

    type: Literal["inventory.warehouse_registered"] = "inventory.warehouse_registered"
    warehouse_id: Identifier
    name: WarehouseName
    kind: Literal["central", "township"]
    location: Coordinates


class StockReserved(Envelope):
    """The whole prescription is held at one warehouse, lot by lot (first expiry first out)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("prescription.approved"),
            **_RESERVATION,
            pickup_location=_WH_AT,
            picks=[
                {**_LOT, "expiry_date": "2028-03-31", "quantity": 180},
                {"lot_id": "AML5-L2609", "drug_code": "AML5", "expiry_date": "2027-12-31", "quantity": 90},
            ],
            levels=_HELD,
            movements=_moves("reserved", "available", "reserved"),
        )
    )

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
    requested: int = Field(gt=0, le=MAX_STOCK_UNITS)
    best_available: StockUnits = Field(description="Most units of this drug any single warehouse had")


class ReservationFailed(Envelope):
    """No single warehouse could fill the whole prescription; nothing was reserved.

    OUT_OF_STOCK lists the drugs no warehouse has enough of. NOT_IN_ONE_WAREHOUSE means every
    drug is in stock somewhere, but not all in one place: prescriptions are not split, because a
    courier makes one pickup and a patient gets one package.
    """

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("prescription.approved"),
            prescription_id=_RX,
            reason="OUT_OF_STOCK",
            shortages=[{"drug_code": "AML5", "requested": 90, "best_available": 40}],
        )
    )

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

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.delivery_cancelled"),
            **_RESERVATION,
            levels=[{**level, "available": level["available"] + level["reserved"], "reserved": 0} for level in _HELD],
            movements=_moves("released", "reserved", "available"),
        )
    )


class StockDispatched(_Movement):
    """The courier picked the held units up: they are on the road."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.picked_up"),
            **_RESERVATION,
            levels=_ON_THE_ROAD,
            movements=_moves("dispatched", "reserved", "dispatched"),
        )
    )

    type: Literal["inventory.stock_dispatched"] = "inventory.stock_dispatched"


class StockReturned(_Movement):
    """A sealed package a courier brought back after a failed attempt; held again for the retry."""

    type: Literal["inventory.stock_returned"] = "inventory.stock_returned"

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.delivery_failed"),
            **_RESERVATION,
            levels=_HELD,
            movements=_moves("returned", "dispatched", "reserved"),
        )
    )


class StockQuarantined(_Movement):
    """Goods back from the road for good (undeliverable, damaged, cancelled after pickup): quarantined
    until a pharmacist inspects them, never straight back on the shelf."""

    type: Literal["inventory.stock_quarantined"] = "inventory.stock_quarantined"
    why: Literal["undeliverable", "damaged", "cancelled"]
    packed_again: bool | None = Field(
        default=None,
        description="Damaged goods of a delivery to be tried again: whether the shelf packed the prescription "
        "again (`inventory.stock_repacked` follows) or could not (the delivery is given up)",
    )

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.delivery_abandoned"),
            **_RESERVATION,
            levels=[{**level, "dispatched": 0, "quarantined": level["dispatched"]} for level in _ON_THE_ROAD],
            movements=_moves("returned", "dispatched", "quarantine"),
            why="undeliverable",
        )
    )


class StockRepacked(_Movement):
    """A package found damaged (at the door or at the depot) was packed again: its units went to
    quarantine (`inventory.stock_quarantined`, why `damaged`) and the same lines are held again from
    the shelf, first expiry first, for the next attempt (`picks`). When the shelf cannot fill it
    again, only the quarantine is told and the delivery is given up."""

    type: Literal["inventory.stock_repacked"] = "inventory.stock_repacked"
    picks: list[LotPick] = Field(min_length=1)

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.delivery_failed"),
            **_RESERVATION,
            picks=[
                {**_LOT, "expiry_date": "2028-03-31", "quantity": 180},
                {"lot_id": "AML5-L2609", "drug_code": "AML5", "expiry_date": "2027-12-31", "quantity": 90},
            ],
            levels=_HELD,
            movements=_moves("reserved", "available", "reserved"),
        )
    )


class StockDelivered(_Movement):
    """The patient has the goods: the hold is closed."""

    type: Literal["inventory.stock_delivered"] = "inventory.stock_delivered"

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("courier.delivered"),
            **_RESERVATION,
            levels=[{**level, "dispatched": 0} for level in _ON_THE_ROAD],
            movements=_moves("delivered", "dispatched", "outside"),
        )
    )


class StockRestocked(Envelope):
    """Goods received: one lot of one drug added to a warehouse's shelf."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-RESTOCK-0415",
            causation_id=example_id("inventory.restock_requested"),
            producer="inventory",
            **_RESTOCK,
            level={"drug_code": "MET500", "available": 780, "reserved": 0, "dispatched": 0},
            movements=[{"kind": "received", **_LOT, "quantity": 600, "source": "outside", "target": "available"}],
        )
    )

    type: Literal["inventory.stock_restocked"] = "inventory.stock_restocked"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    quantity: Units
    requested_by: StaffName
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class StockAdjusted(Envelope):
    """A count correction of one lot by warehouse staff, with its reason."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-ADJUST-0416",
            causation_id=example_id("inventory.adjustment_requested"),
            producer="inventory",
            **_ADJUSTMENT,
            level={"drug_code": "MET500", "available": 768, "reserved": 0, "dispatched": 0},
            movements=[{"kind": "adjusted", **_LOT, "quantity": 12, "source": "available", "target": "outside"}],
        )
    )

    type: Literal["inventory.stock_adjusted"] = "inventory.stock_adjusted"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    delta: Delta
    reason: AdjustmentReason
    requested_by: StaffName
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class QuarantineCleared(Envelope):
    """Quarantined units released to the shelf or written off, as staff decided, with their reason."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-QUAR-0417",
            causation_id=example_id("inventory.quarantine_decided"),
            producer="inventory",
            **_QUARANTINE,
            level={"drug_code": "MET500", "available": 774, "reserved": 0, "dispatched": 0, "quarantined": 0},
            movements=[{"kind": "released", **_LOT, "quantity": 6, "source": "quarantine", "target": "available"}],
        )
    )

    type: Literal["inventory.quarantine_cleared"] = "inventory.quarantine_cleared"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    quantity: Units
    decision: QuarantineDecision
    reason: AdjustmentReason
    requested_by: StaffName
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class StockCommandRefused(Envelope):
    """A restock, adjustment, quarantine decision or transfer shipment or receipt that would break
    the books (e.g. below zero, a transfer shipped or received twice); nothing changed."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="CMD-ADJUST-0417",
            causation_id=example_id("inventory.adjustment_requested"),
            producer="inventory",
            warehouse_id=_WH,
            drug_code="MET500",
            reason="lot MET500-L2611 has 768 units available; cannot remove 1000",
        )
    )

    type: Literal["inventory.stock_command_refused"] = "inventory.stock_command_refused"
    warehouse_id: Identifier
    drug_code: Identifier | None = None
    reason: RefusalReason


class LotNearingExpiry(Envelope):
    """Alert: a lot with units on the shelf expires within the warning window. Sent once per lot."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="AML5-L2609",
            producer="inventory",
            **_EXPIRING_LOT,
            available=210,
        )
    )

    type: Literal["inventory.lot_nearing_expiry"] = "inventory.lot_nearing_expiry"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    available: StockUnits


class LotExpired(Envelope):
    """A lot passed its expiry date: its shelf units are removed from availability."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id="AML5-L2609",
            producer="inventory",
            **_EXPIRING_LOT,
            removed=35,
            level={"drug_code": "AML5", "available": 0, "reserved": 0, "dispatched": 0},
            movements=[
                {
                    "kind": "expired",
                    "lot_id": "AML5-L2609",
                    "drug_code": "AML5",
                    "quantity": 35,
                    "source": "available",
                    "target": "expired",
                }
            ],
        )
    )

    type: Literal["inventory.lot_expired"] = "inventory.lot_expired"
    warehouse_id: Identifier
    drug_code: Identifier
    lot_id: Identifier
    expiry_date: date
    removed: StockUnits
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class LowStock(Envelope):
    """Alert: a drug's available units at a warehouse fell below its threshold."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("inventory.stock_reserved"),
            warehouse_id=_WH,
            drug_code="AML5",
            available=18,
            threshold=20,
        )
    )

    type: Literal["inventory.low_stock"] = "inventory.low_stock"
    warehouse_id: Identifier
    drug_code: Identifier
    available: StockUnits
    threshold: StockUnits


# --- transfers: townships restocked from the centre ----------------------------------------------

_DAYS = Annotated[int, Field(ge=0, le=365)]


class TransferSuggested(Envelope):
    """A township pharmacy's usable stock of a drug fell to or below its reorder point (average daily
    demand there times lead time, plus safety stock): inventory suggests a transfer from the central
    warehouse that can spare the most, enough to bring it to the reorder point plus a cover
    quantity, from lots that last (first expiry first). Staff ship it (`TransferShipRequested`).
    One transfer is open per township and drug until it is received."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_TRANSFER_ID,
            causation_id=example_id("prescription.approved"),
            producer="inventory",
            warehouse_id=_TOWNSHIP,
            **_TRANSFER,
            from_warehouse_id=_WH,
            quantity=190,
            usable=60,
            reorder_point=150,
            cover=100,
            recent_demand=420,
            window_days=14,
            lead_time_days=3,
            safety_stock=60,
            picks=_TRANSFER_PICKS,
        )
    )

    type: Literal["inventory.transfer_suggested"] = "inventory.transfer_suggested"
    warehouse_id: Identifier = Field(description="The township pharmacy to restock")
    transfer_id: Identifier
    from_warehouse_id: Identifier = Field(description="The central warehouse suggested to ship it")
    drug_code: Identifier
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS)
    usable: StockUnits = Field(description="Units on the township's shelf in lots that still last")
    reorder_point: StockUnits
    cover: StockUnits = Field(description="Units asked for beyond the reorder point")
    recent_demand: StockUnits = Field(description="Units prescriptions took of the drug there in the window")
    window_days: int = Field(ge=1, le=365, description="Days the average daily demand is taken over")
    lead_time_days: _DAYS
    safety_stock: StockUnits
    picks: list[LotPick] = Field(min_length=1, description="The central warehouse's lots, first expiry first")


class TransferShipped(Envelope):
    """A transfer left the central warehouse: its units moved from available to in transit there
    (`transfer_out`), where they are counted until the township confirms their receipt."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_TRANSFER_ID,
            causation_id=example_id("inventory.transfer_ship_requested"),
            producer="inventory",
            warehouse_id=_WH,
            **_TRANSFER,
            to_warehouse_id=_TOWNSHIP,
            quantity=190,
            picks=_TRANSFER_PICKS,
            requested_by=_STAFF,
            level={"drug_code": "LEV50", "available": 2310, "reserved": 0, "dispatched": 0},
            in_transit=190,
            movements=_transfer_moves("transfer_out", "available", "in_transit"),
        )
    )

    type: Literal["inventory.transfer_shipped"] = "inventory.transfer_shipped"
    warehouse_id: Identifier = Field(description="The central warehouse the units left")
    transfer_id: Identifier
    to_warehouse_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS)
    picks: list[LotPick] = Field(min_length=1)
    requested_by: StaffName
    level: StockLevel
    in_transit: StockUnits = Field(description="Units of the drug in transit from this warehouse after the shipment")
    movements: list[Movement] = Field(default_factory=list)


class TransferReceived(Envelope):
    """A shipped transfer arrived at the township pharmacy: its lots are on the shelf there
    (`transfer_in`). The central warehouse closes its in-transit units on hearing it
    (`TransferClosed`)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_TRANSFER_ID,
            causation_id=example_id("inventory.transfer_receipt_requested"),
            producer="inventory",
            warehouse_id=_TOWNSHIP,
            **_TRANSFER,
            from_warehouse_id=_WH,
            quantity=190,
            picks=_TRANSFER_PICKS,
            requested_by="Gulnara Sadykova",
            level={"drug_code": "LEV50", "available": 250, "reserved": 0, "dispatched": 0},
            movements=_transfer_moves("transfer_in", "outside", "available"),
        )
    )

    type: Literal["inventory.transfer_received"] = "inventory.transfer_received"
    warehouse_id: Identifier = Field(description="The township pharmacy the units arrived at")
    transfer_id: Identifier
    from_warehouse_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS)
    picks: list[LotPick] = Field(min_length=1)
    requested_by: StaffName
    level: StockLevel
    movements: list[Movement] = Field(default_factory=list)


class TransferClosed(Envelope):
    """The central warehouse heard the township received a transfer: its in-transit units leave its
    books (`transfer_closed`). Across the county, the units are counted once throughout: in transit
    at the source until received, on the shelf at the destination after."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_TRANSFER_ID,
            causation_id=example_id("inventory.transfer_received"),
            producer="inventory",
            warehouse_id=_WH,
            **_TRANSFER,
            to_warehouse_id=_TOWNSHIP,
            quantity=190,
            level={"drug_code": "LEV50", "available": 2310, "reserved": 0, "dispatched": 0},
            in_transit=0,
            movements=_transfer_moves("transfer_closed", "in_transit", "outside"),
        )
    )

    type: Literal["inventory.transfer_closed"] = "inventory.transfer_closed"
    warehouse_id: Identifier = Field(description="The central warehouse the units left")
    transfer_id: Identifier
    to_warehouse_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS)
    level: StockLevel
    in_transit: StockUnits = Field(description="Units of the drug still in transit from this warehouse")
    movements: list[Movement] = Field(default_factory=list)


# --- lot recalls ---------------------------------------------------------------------------------


class LotRecalled(Envelope):
    """A warehouse applied its part of a lot recall (`LotRecallRequested`): the lot's shelf units went
    to quarantine (`quarantined`), the reservations holding it were re-picked from other lots
    (`re_picked`) or withdrawn (`withdrawn`), deliveries on the road with it are called back
    (`on_the_road`), and `delivered_to` lists the prescriptions it was delivered to from here. Each
    of these prescriptions but the re-picked is also told on its own (`PrescriptionRecalled`, keyed
    by it). A warehouse that never held the lot answers with empty lists (and quarantines it if it
    ever arrives)."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            correlation_id=_RECALL_ID,
            causation_id=example_id("inventory.lot_recall_requested"),
            producer="inventory",
            warehouse_id=_WH,
            **_RECALL,
            drug_code="MET500",
            quarantined=420,
            re_picked=["RX-2026-000412"],
            withdrawn=[],
            on_the_road=["RX-2026-000398"],
            delivered_to=[_RX],
            level={"drug_code": "MET500", "available": 360, "reserved": 180, "dispatched": 90, "quarantined": 600},
            movements=[
                {"kind": "recalled", **_LOT, "quantity": 420, "source": "available", "target": "quarantine"},
                {"kind": "recalled", **_LOT, "quantity": 180, "source": "reserved", "target": "quarantine"},
                {
                    "kind": "reserved",
                    "lot_id": "MET500-L2703",
                    "drug_code": "MET500",
                    "quantity": 180,
                    "source": "available",
                    "target": "reserved",
                },
            ],
        )
    )

    type: Literal["inventory.lot_recalled"] = "inventory.lot_recalled"
    warehouse_id: Identifier
    recall_id: Identifier
    lot_id: Identifier
    drug_code: Identifier | None = Field(default=None, description="None: the warehouse never held the lot")
    reason: AdjustmentReason
    requested_by: StaffName
    quarantined: StockUnits = Field(description="Units of the lot taken off the shelf (reserved ones: see movements)")
    re_picked: list[Identifier] = Field(description="Reservations now held from other lots of the drug")
    withdrawn: list[Identifier] = Field(description="Reservations no other lot could cover: withdrawn, out of stock")
    on_the_road: list[Identifier] = Field(description="Deliveries on the road with the lot: called back")
    delivered_to: list[Identifier] = Field(description="Prescriptions the lot was delivered to from here")
    level: StockLevel | None = None
    movements: list[Movement] = Field(default_factory=list)


class PrescriptionRecalled(Envelope):
    """One prescription a lot recall concerns, keyed by it (see `RecallStatus`): the consultation
    service tells the patient and asks the hospital to follow up; the courier service calls back a
    delivery on the road, or withdraws one whose reservation was withdrawn."""

    model_config = ConfigDict(
        json_schema_extra=wire_example(
            **_after("inventory.lot_recall_requested"),
            prescription_id=_RX,
            warehouse_id=_WH,
            **{k: v for k, v in _RECALL.items() if k != "requested_by"},
            drug_code="MET500",
            quantity=180,
            status="delivered",
        )
    )

    type: Literal["inventory.prescription_recalled"] = "inventory.prescription_recalled"
    prescription_id: Identifier
    warehouse_id: Identifier
    recall_id: Identifier
    lot_id: Identifier
    drug_code: Identifier
    quantity: int = Field(gt=0, le=MAX_STOCK_UNITS, description="Units of the lot the prescription took")
    reason: AdjustmentReason
    status: RecallStatus
