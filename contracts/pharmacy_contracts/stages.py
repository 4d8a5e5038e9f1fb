"""The stages of a prescription's lifecycle, named once: the status, the board and the receipts a
sending system reads all speak of these (how events move them: `lifecycle`)."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    RECEIVED = "received"
    HELD_FOR_REVIEW = "held_for_review"
    APPROVED = "approved"
    RESERVED = "reserved"
    WAITING_FOR_COURIER = "waiting_for_courier"
    COURIER_ASSIGNED = "courier_assigned"
    ACCEPTED_BY_COURIER = "accepted_by_courier"
    PICKED_UP = "picked_up"
    DELIVERY_FAILED = "delivery_failed"
    DELIVERED = "delivered"
    REJECTED = "rejected"
    OUT_OF_STOCK = "out_of_stock"
    UNDELIVERABLE = "undeliverable"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Stage.DELIVERED, Stage.REJECTED, Stage.OUT_OF_STOCK, Stage.UNDELIVERABLE, Stage.CANCELLED})
