"""A prescription's lifecycle as the public events tell it: the stage each event reports, and how a
status moves when events read from several topics arrive in any order.

Every side that shows a prescription's progress (the consultation service's patient-facing status,
the live board) folds the same events with these rules, so they never disagree on a stage. What each
side says about an event (its wording, notes, warnings) stays with that side.
"""

from __future__ import annotations

from . import courier as c
from . import inventory as inv
from . import prescription as rx
from .consultation import PrescriptionAccepted
from .envelope import Envelope
from .stages import TERMINAL, Stage

__all__ = ["TERMINAL", "Stage", "next_stage", "prescription_of", "stage_of"]


# Before the courier stage, events come from different topics and may be read out of order: the
# furthest stage seen wins. Courier events come in order from one topic: the latest wins.
PIPELINE: tuple[Stage, ...] = (Stage.RECEIVED, Stage.HELD_FOR_REVIEW, Stage.APPROVED, Stage.RESERVED)
_RANK = {stage: rank for rank, stage in enumerate(PIPELINE)}


def prescription_of(event: Envelope) -> str | None:
    """The prescription an event is about, or None for stock-only events (restock, alerts)."""
    if isinstance(event, PrescriptionAccepted):
        return event.prescription.prescription_id
    return getattr(event, "prescription_id", None)


def stage_of(event: Envelope) -> Stage | None:
    """The stage an event moves its prescription to, or None if it moves none (a note such as a
    cancellation request, a stock movement, a warning; or an event about no prescription).

    An expired offer puts the package back to waiting for a courier: nobody carries it until the
    next offer. A delivery's cancellation is only a note: it follows the prescription's, which ends
    the lifecycle with the reason a patient should read."""
    match event:
        case PrescriptionAccepted():
            return Stage.RECEIVED
        case rx.PrescriptionHeld():
            return Stage.HELD_FOR_REVIEW
        case rx.PrescriptionApproved():
            return Stage.APPROVED
        case rx.PrescriptionRejected():
            return Stage.REJECTED
        case rx.PrescriptionCancelled():
            return Stage.CANCELLED
        case inv.StockReserved():
            return Stage.RESERVED
        case inv.ReservationFailed():
            return Stage.OUT_OF_STOCK
        case inv.PrescriptionRecalled(status="on_the_road" | "withdrawn"):
            # A lot in it was recalled and nothing at its warehouse replaces it: it ends without the medicine.
            return Stage.OUT_OF_STOCK
        case c.DeliveryWaiting() | c.DeliveryOfferExpired():
            return Stage.WAITING_FOR_COURIER
        case c.CourierAssigned():
            return Stage.COURIER_ASSIGNED
        case c.DeliveryAccepted():
            return Stage.ACCEPTED_BY_COURIER
        case c.DeliveryPickedUp():
            return Stage.PICKED_UP
        case c.DeliveryFailed():
            return Stage.DELIVERY_FAILED
        case c.DeliveryCompleted():
            return Stage.DELIVERED
        case c.DeliveryAbandoned():
            return Stage.UNDELIVERABLE
    return None


def next_stage(current: Stage, reported: Stage) -> Stage:
    """The stage after an event reporting `reported` is read at `current`: the first terminal stage
    stays; a pipeline stage only moves a prescription forward (read late from another topic, it never
    pulls back what a courier event said); a courier stage, read in order, is the latest word."""
    if current in TERMINAL:
        return current
    if reported in TERMINAL:
        return reported
    if reported in _RANK:
        return reported if current in _RANK and _RANK[reported] > _RANK[current] else current
    return reported
