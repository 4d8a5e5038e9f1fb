"""Intake and status rules of the consultation service. Pure: no I/O, no clock, no ids."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import CancellationAccepted, Prescription, PrescriptionAccepted
from pharmacy_contracts.lifecycle import PIPELINE, TERMINAL, Stage, next_stage, prescription_of, stage_of

# --- intake ------------------------------------------------------------------------------------


class Cancellation(BaseModel):
    """The upstream system's withdrawal of a prescription it sent, as first received."""

    message_id: str
    requested_by: str
    reason: str
    received_at: datetime


class IntakeRecord(BaseModel):
    """A prescription exactly as the upstream system sent it (and its withdrawal, if one came)."""

    prescription_id: str
    sender_id: str
    message_id: str
    received_at: datetime
    prescription: Prescription
    cancellation: Cancellation | None = None


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


class CancellationVerdict(StrEnum):
    NEW = "new"
    ALREADY_CANCELLED = "already_cancelled"
    UNKNOWN_PRESCRIPTION = "unknown_prescription"
    NOT_YOUR_PRESCRIPTION = "not_your_prescription"


def judge_cancellation(existing: IntakeRecord | None, sender_id: str) -> CancellationVerdict:
    """Only the system that sent a prescription may withdraw it, and only one we received. The
    first cancellation counts; a repeat (the same request again, or another one) changes nothing."""
    if existing is None:
        return CancellationVerdict.UNKNOWN_PRESCRIPTION
    if existing.sender_id != sender_id:
        return CancellationVerdict.NOT_YOUR_PRESCRIPTION
    if existing.cancellation is not None:
        return CancellationVerdict.ALREADY_CANCELLED
    return CancellationVerdict.NEW


def with_cancellation(record: IntakeRecord, cancellation: Cancellation) -> IntakeRecord:
    return record.model_copy(update={"cancellation": cancellation})


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
# The stages and how events move them are shared vocabulary (pharmacy_contracts.lifecycle); what
# the patient reads about each event is this service's.


class HistoryEntry(BaseModel):
    at: datetime
    stage: Stage = Field(description="The stage the event moved to; for a note, the stage the prescription was at")
    detail: str
    warning: bool = Field(default=False, description="Something needs a person's attention (overdue, wrong code)")


class PrescriptionStatus(BaseModel):
    prescription_id: str
    #: The system that sent it, and its message: told of each change of stage (once it is known).
    sender_id: str | None = None
    sender_message_id: str | None = None
    stage: Stage
    terminal: bool = False
    why: list[str] = Field(default_factory=list, description="What explains the current stage (holds, refusals)")
    warehouse_id: str | None = None
    courier_id: str | None = None
    delivery_attempts: int = 0
    # The patient's proof of delivery, read out to the courier at the door. Only the patient's
    # side sees it; repr=False keeps it out of tracebacks and debug output.
    delivery_code: str | None = Field(default=None, repr=False)
    history: list[HistoryEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class _Step:
    """What the patient reads about one event (its stage, if any, comes from `stage_of`)."""

    detail: str
    why: tuple[str, ...] = ()
    warning: bool = False


def _reasons(reasons: list[rx.Reason]) -> tuple[str, ...]:
    return tuple(f"{r.code}: {r.message}" for r in reasons)


def _rejection_detail(event: rx.PrescriptionRejected) -> str:
    if any(r.code == "REVIEW_EXPIRED" for r in event.reasons):
        return "rejected: no pharmacist decided the review in time"
    if event.reviewed_by:
        return f"rejected by pharmacist {event.reviewed_by} after review"
    return "rejected by the checks"


def _lines(event: inv.StockReleased | inv.StockReturned | inv.StockQuarantined | inv.StockDelivered) -> str:
    return ", ".join(f"{line.quantity} × {line.drug_code}" for line in event.lines) or "the goods"


#: The events `track` folds into a status (each has a step below); the status consumer passes over the rest.
LIFECYCLE_EVENTS: tuple[type[Envelope], ...] = (
    PrescriptionAccepted,
    CancellationAccepted,
    rx.PrescriptionHeld,
    rx.ReviewEscalated,
    rx.PrescriptionApproved,
    rx.PrescriptionRejected,
    rx.PrescriptionCancelled,
    inv.StockReserved,
    inv.ReservationFailed,
    inv.StockReleased,
    inv.StockReturned,
    inv.StockQuarantined,
    inv.StockDelivered,
    c.DeliveryWaiting,
    c.CourierAssigned,
    c.DeliveryOfferExpired,
    c.DeliveryAccepted,
    c.DeliveryPickedUp,
    c.DeliveryCodeRejected,
    c.DeliveryOverdue,
    c.DeliveryFailed,
    c.DeliveryCompleted,
    c.DeliveryAbandoned,
    c.DeliveryCancelled,
)


def _step_of(event: Envelope) -> _Step | None:
    match event:
        # --- intake and the checks
        case PrescriptionAccepted():
            return _Step(f"received from {event.sender_id}")
        case CancellationAccepted():
            return _Step(f"cancellation requested by {event.requested_by} ({event.sender_id}): {event.reason}")
        case rx.PrescriptionHeld():
            codes = ", ".join(dict.fromkeys(r.code for r in event.reasons))
            return _Step(f"held for pharmacist review ({codes})", _reasons(event.reasons))
        case rx.ReviewEscalated():
            expires = f"{event.expires_at:%Y-%m-%d %H:%M} UTC"
            detail = f"review overdue: escalated to the pharmacist on duty; expires {expires}"
            return _Step(detail, warning=True)
        case rx.PrescriptionApproved():
            if event.reviewed_by:
                return _Step(f"released by pharmacist {event.reviewed_by} after review")
            return _Step("passed the checks")
        case rx.PrescriptionRejected():
            return _Step(_rejection_detail(event), _reasons(event.reasons))
        case rx.PrescriptionCancelled():
            why = (f"CANCELLED: {event.reason} (requested by {event.requested_by})",)
            return _Step(f"cancelled by {event.requested_by}: {event.reason}", why)
        # --- stock
        case inv.StockReserved():
            return _Step(f"stock reserved at {event.warehouse_id}")
        case inv.ReservationFailed():
            why = tuple(
                f"OUT_OF_STOCK: {s.drug_code} needs {s.requested}, best warehouse has {s.best_available}"
                for s in event.shortages
            ) or (f"{event.reason}: every item is in stock, but no single warehouse holds them all",)
            return _Step("no warehouse can fill the whole prescription", why)
        case inv.StockReleased():
            return _Step(f"held stock released at {event.warehouse_id}: {_lines(event)} back on the shelf")
        case inv.StockReturned():
            return _Step(f"package back at {event.warehouse_id}, held for the next attempt")
        case inv.StockQuarantined():
            return _Step(f"{_lines(event)} quarantined at {event.warehouse_id} ({event.why})")
        case inv.StockDelivered():
            return _Step(f"stock hold closed at {event.warehouse_id}: the patient has the goods")
        # --- delivery
        case c.DeliveryWaiting():
            return _Step(f"waiting for a courier: {event.why}")
        case c.CourierAssigned():
            return _Step(f"offered to courier {event.courier_id} (attempt {event.attempt})")
        case c.DeliveryOfferExpired():
            return _Step(f"courier {event.courier_id} did not accept in time; offered to the next courier")
        case c.DeliveryAccepted():
            return _Step(f"courier {event.courier_id} accepted")
        case c.DeliveryPickedUp():
            return _Step(f"picked up by {event.courier_id} at {event.warehouse_id}")
        case c.DeliveryCodeRejected():
            detail = f"wrong delivery code reported by courier {event.courier_id} ({event.wrong_codes} on this attempt)"
            return _Step(detail, warning=True)
        case c.DeliveryOverdue():
            if event.stage == "awaiting_courier":
                detail = f"overdue: no courier has taken it since {event.since:%Y-%m-%d %H:%M} UTC"
            elif event.stage == "awaiting_stock":
                detail = f"overdue: no stock reserved for it since {event.since:%Y-%m-%d %H:%M} UTC"
            else:
                detail = f"overdue: on the road with {event.courier_id} since {event.since:%Y-%m-%d %H:%M} UTC"
            return _Step(detail, warning=True)
        case c.DeliveryFailed():
            then = "will be re-dispatched" if event.will_retry else "no attempts left"
            return _Step(f"attempt {event.attempt} failed: {event.reason}; {then}")
        case c.DeliveryCompleted():
            return _Step(f"delivered by {event.courier_id}")
        case c.DeliveryAbandoned():
            attempts = f"{event.attempts} attempt{'' if event.attempts == 1 else 's'}"
            why = (f"UNDELIVERABLE: {attempts}, last failure {event.last_reason}",)
            goods = "the goods go to quarantine" if event.goods_travelled else "held stock released"
            return _Step(f"given up; {goods}", why)
        case c.DeliveryCancelled():
            if event.goods_returned:
                return _Step("delivery cancelled; the goods came back and are in quarantine")
            return _Step("delivery cancelled before pickup; held stock released")
    return None


def track(
    status: PrescriptionStatus | None, event: Envelope, *, delivery_code: str | None = None
) -> PrescriptionStatus | None:
    """Fold one lifecycle event into the status. Returns None if the event says nothing about a prescription.

    `delivery_code` is the patient's proof-of-delivery code; it is shown once the prescription is approved.
    """
    folded = track_step(status, event, delivery_code=delivery_code)
    return folded[0] if folded is not None else None


def track_step(
    status: PrescriptionStatus | None, event: Envelope, *, delivery_code: str | None = None
) -> tuple[PrescriptionStatus, HistoryEntry] | None:
    """`track`, with the history entry the event added."""
    prescription_id = prescription_of(event)
    step = _step_of(event)
    if prescription_id is None or step is None:
        return None
    current = status or PrescriptionStatus(prescription_id=prescription_id, stage=Stage.RECEIVED)
    reported = stage_of(event)
    entry = HistoryEntry(
        at=event.occurred_at, stage=reported or current.stage, detail=step.detail, warning=step.warning
    )
    # A shallow copy with a new history list: every later change assigns, never mutates in place.
    # In the order things happened, not the order their events arrived from four services' topics
    # (a stable sort: events of the same instant keep their arrival order).
    history = sorted([*current.history, entry], key=lambda h: h.at)
    updated = current.model_copy(update={"history": history})
    if isinstance(event, PrescriptionAccepted):
        updated.sender_id, updated.sender_message_id = event.sender_id, event.causation_id
    if isinstance(event, inv.StockReserved):
        updated.warehouse_id = event.warehouse_id
    if isinstance(event, c.CourierAssigned):
        updated.courier_id = event.courier_id
        updated.delivery_attempts = event.attempt
    if isinstance(event, rx.PrescriptionApproved) and delivery_code is not None:
        updated.delivery_code = delivery_code
    if current.terminal or reported is None:
        return updated, entry
    stage = next_stage(current.stage, reported)
    if stage is not current.stage:
        # `why` explains the current stage: a hold's reasons do not outlive the hold.
        updated.stage, updated.terminal, updated.why = stage, stage in TERMINAL, list(step.why)
    return updated, entry


@dataclass(frozen=True)
class Told:
    """A change of stage the sending system hears about."""

    stage: Stage
    at: datetime
    detail: str
    why: tuple[str, ...] = ()


def to_tell(
    before: PrescriptionStatus | None, after: PrescriptionStatus, entry: HistoryEntry, event: Envelope
) -> list[Told]:
    """The changes of stage the sender is told of after one event.

    Each event that moves a prescription to a stage is told, once: read late from another topic
    too (an approval read after the courier's offer is still news to the sender; each receipt
    carries when it happened), but nothing after the first terminal stage but such late news.
    When this event names the sender (its acceptance read after later events), every change the
    history already holds is told. Nothing while the sender is unknown, and nothing for "received":
    the sender's acceptance receipt said that."""
    if after.sender_id is None:
        return []
    if before is None or before.sender_id is None:
        moves: list[Told] = []
        at = Stage.RECEIVED
        for step in after.history:
            if step.stage is not at:
                at = step.stage
                moves.append(Told(step.stage, step.at, step.detail))
            if at in TERMINAL:
                break
        if moves and moves[-1].stage is after.stage:
            moves[-1] = Told(after.stage, moves[-1].at, moves[-1].detail, tuple(after.why))
        return moves
    reported = stage_of(event)
    if reported is None or reported is before.stage or reported is Stage.RECEIVED:
        return []
    if before.terminal and reported not in PIPELINE:
        return []
    why = tuple(after.why) if after.stage is reported else ()
    return [Told(reported, entry.at, entry.detail, why)]
