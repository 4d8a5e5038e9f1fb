"""Intake and status rules of the consultation service. Pure: no I/O, no clock, no ids."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import Prescription, PrescriptionAccepted

# --- intake ------------------------------------------------------------------------------------


class IntakeRecord(BaseModel):
    """A prescription exactly as the upstream system sent it."""

    prescription_id: str
    sender_id: str
    message_id: str
    received_at: datetime
    prescription: Prescription


class IntakeVerdict(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    ID_REUSED = "id_reused"


def judge_intake(existing: IntakeRecord | None, sender_id: str, message_id: str) -> IntakeVerdict:
    """A prescription id is accepted once; the same message again is a harmless duplicate, but
    a different message reusing the id is refused for a person to look at."""
    if existing is None:
        return IntakeVerdict.NEW
    if existing.message_id == message_id and existing.sender_id == sender_id:
        return IntakeVerdict.DUPLICATE
    return IntakeVerdict.ID_REUSED


class MessageClaim(BaseModel):
    """The first content seen under one sender's message id."""

    sender_id: str
    message_id: str
    content_sha256: str
    prescription_id: str


def is_replay(existing: MessageClaim | None, content_sha256: str) -> bool:
    """The same message id with different content is a replay (or a sender bug): refused, never merged."""
    return existing is not None and existing.content_sha256 != content_sha256


# --- status ------------------------------------------------------------------------------------


class Stage(StrEnum):
    RECEIVED = "received"
    APPROVED = "approved"
    RESERVED = "reserved"
    COURIER_ASSIGNED = "courier_assigned"
    ACCEPTED_BY_COURIER = "accepted_by_courier"
    PICKED_UP = "picked_up"
    DELIVERY_FAILED = "delivery_failed"
    DELIVERED = "delivered"
    REJECTED = "rejected"
    OUT_OF_STOCK = "out_of_stock"
    UNDELIVERABLE = "undeliverable"


TERMINAL = frozenset({Stage.DELIVERED, Stage.REJECTED, Stage.OUT_OF_STOCK, Stage.UNDELIVERABLE})
# Before the courier stage, events come from different topics and may be read out of order:
# the furthest stage seen wins. Courier events come in order from one topic: the latest wins.
_PIPELINE_RANK = {Stage.RECEIVED: 0, Stage.APPROVED: 1, Stage.RESERVED: 2}


class HistoryEntry(BaseModel):
    at: datetime
    stage: Stage
    detail: str


class PrescriptionStatus(BaseModel):
    prescription_id: str
    stage: Stage
    terminal: bool = False
    why: list[str] = Field(default_factory=list)
    warehouse_id: str | None = None
    courier_id: str | None = None
    delivery_attempts: int = 0
    history: list[HistoryEntry] = Field(default_factory=list)


def prescription_of(event: Envelope) -> str | None:
    """The prescription an event is about, or None for stock-only events (restock, alerts)."""
    if isinstance(event, PrescriptionAccepted):
        return event.prescription.prescription_id
    return getattr(event, "prescription_id", None)


def _stage_and_detail(event: Envelope) -> tuple[Stage, str, list[str]] | None:
    match event:
        case PrescriptionAccepted():
            return Stage.RECEIVED, f"received from {event.sender_id}", []
        case rx.PrescriptionApproved():
            return Stage.APPROVED, "passed the formulary check", []
        case rx.PrescriptionRejected():
            why = [f"{r.code}: {r.message}" for r in event.reasons]
            return Stage.REJECTED, "rejected by the formulary check", why
        case inv.StockReserved():
            return Stage.RESERVED, f"stock reserved at {event.warehouse_id}", []
        case inv.ReservationFailed():
            why = [
                f"OUT_OF_STOCK: {s.drug_code} needs {s.requested}, best warehouse has {s.best_available}"
                for s in event.shortages
            ] or [f"{event.reason}: every item is in stock, but no single warehouse holds them all"]
            return Stage.OUT_OF_STOCK, "no warehouse can fill the whole prescription", why
        case c.CourierAssigned():
            return Stage.COURIER_ASSIGNED, f"offered to courier {event.courier_id} (attempt {event.attempt})", []
        case c.DeliveryAccepted():
            return Stage.ACCEPTED_BY_COURIER, f"courier {event.courier_id} accepted", []
        case c.DeliveryPickedUp():
            return Stage.PICKED_UP, f"picked up by {event.courier_id} at {event.warehouse_id}", []
        case c.DeliveryFailed():
            then = "will be re-dispatched" if event.will_retry else "no attempts left"
            return Stage.DELIVERY_FAILED, f"attempt {event.attempt} failed: {event.reason}; {then}", []
        case c.DeliveryCompleted():
            return Stage.DELIVERED, f"delivered by {event.courier_id}", []
        case c.DeliveryAbandoned():
            why = [f"UNDELIVERABLE: {event.attempts} attempts, last failure {event.last_reason}"]
            return Stage.UNDELIVERABLE, "given up; held stock released", why
    return None


def track(status: PrescriptionStatus | None, event: Envelope) -> PrescriptionStatus | None:
    """Fold one lifecycle event into the status. Returns None if the event says nothing new."""
    prescription_id = prescription_of(event)
    found = _stage_and_detail(event)
    if prescription_id is None or found is None:
        return None
    stage, detail, why = found
    current = status or PrescriptionStatus(prescription_id=prescription_id, stage=Stage.RECEIVED)
    # A shallow copy with a new history list: every later change assigns, never mutates in place.
    entry = HistoryEntry(at=event.occurred_at, stage=stage, detail=detail)
    updated = current.model_copy(update={"history": [*current.history, entry]})
    if why:
        updated.why = why
    if isinstance(event, inv.StockReserved):
        updated.warehouse_id = event.warehouse_id
    if isinstance(event, c.CourierAssigned):
        updated.courier_id = event.courier_id
        updated.delivery_attempts = event.attempt
    if current.terminal:
        return updated
    if stage in TERMINAL:
        updated.stage, updated.terminal = stage, True
    elif stage in _PIPELINE_RANK:
        if current.stage in _PIPELINE_RANK and _PIPELINE_RANK[stage] > _PIPELINE_RANK[current.stage]:
            updated.stage = stage
    else:
        updated.stage = stage
    return updated
