"""Intake and status rules of the consultation service. Pure: no I/O, no clock, no ids."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, Field

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import CancellationAccepted, PatientLanguage, Prescription, PrescriptionAccepted
from pharmacy_contracts.lifecycle import PIPELINE, TERMINAL, Stage, next_stage, prescription_of, stage_of
from pharmacy_contracts.patient import NotificationKind, NotificationReason

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


class PatientContact(BaseModel):
    """The patient as the accepted prescription names them: who the hospital calls back, and where
    the patient hears of each thing worth knowing. The phone leaves only in patient.notifications.v1."""

    patient_id: str
    # repr=False: kept out of tracebacks and debug output (a logged `patient` is redacted whole).
    phone: str | None = Field(default=None, repr=False)
    language: PatientLanguage | None = Field(
        default=None, description="As the prescription stated it; None: the service's default language applies"
    )


def patient_of(prescription: Prescription) -> PatientContact:
    patient = prescription.patient
    return PatientContact(patient_id=patient.patient_id, phone=patient.phone, language=patient.preferred_language)


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
    #: The patient, from the accepted prescription (None until it is read).
    patient: PatientContact | None = None
    #: Long-term therapy (an item marked chronic): the hospital's follow-up call says so.
    chronic: bool | None = None
    #: The last failed delivery attempt's reason, and whether the courier service tries again.
    last_failure: str | None = None
    will_retry: bool | None = None
    #: When the courier's round is planned to reach the door (a round's stop only).
    expected_at: datetime | None = None
    #: Lots delivered to the patient and recalled since, that the patient and hospital were told of.
    recalled_lots: list[str] = Field(default_factory=list)
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


def _lines(
    event: inv.StockReleased | inv.StockReturned | inv.StockQuarantined | inv.StockRepacked | inv.StockDelivered,
) -> str:
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
    inv.StockRepacked,
    inv.StockDelivered,
    inv.PrescriptionRecalled,
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
        case inv.StockRepacked():
            return _Step(f"packed again at {event.warehouse_id} after the package was damaged: {_lines(event)}")
        case inv.StockDelivered():
            return _Step(f"stock hold closed at {event.warehouse_id}: the patient has the goods")
        case inv.PrescriptionRecalled():
            recalled = f"lot {event.lot_id} of {event.drug_code} recalled ({event.reason})"
            if event.status == "delivered":
                return _Step(f"{recalled}: {event.quantity} units of it were delivered to the patient", warning=True)
            if event.status == "on_the_road":
                why = (f"RECALLED: {recalled}; the delivery on the road was called back",)
                return _Step(f"{recalled}: the delivery on the road is called back, the goods go to quarantine", why)
            why = (f"RECALLED: {recalled}; no other lot at {event.warehouse_id} could replace it",)
            return _Step(f"{recalled}: no other lot at {event.warehouse_id} replaces it; reservation withdrawn", why)
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
        updated.patient = patient_of(event.prescription)
        updated.chronic = any(item.chronic for item in event.prescription.items)
    if isinstance(event, c.DeliveryFailed):
        updated.last_failure, updated.will_retry = event.reason, event.will_retry
    if isinstance(event, c.DeliveryAbandoned):
        updated.last_failure, updated.will_retry = event.last_reason, False
    if isinstance(event, c.DeliveryPickedUp):
        updated.expected_at = event.expected_at
    if isinstance(event, inv.StockReserved):
        updated.warehouse_id = event.warehouse_id
    if _newly_recalled(updated, event):
        assert isinstance(event, inv.PrescriptionRecalled)
        updated.recalled_lots = [*updated.recalled_lots, event.lot_id]
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


def _newly_recalled(before: PrescriptionStatus | None, event: Envelope) -> bool:
    """A recall of a lot delivered to the patient, not told before (once per lot)."""
    if not isinstance(event, inv.PrescriptionRecalled) or event.status != "delivered":
        return False
    return before is None or event.lot_id not in before.recalled_lots


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


# --- what the patient is told, and the hospital's follow-up ----------------------------------------


@dataclass(frozen=True)
class Notice:
    """One thing the patient is told (messages.py words it in their language)."""

    kind: NotificationKind
    at: datetime
    language: PatientLanguage
    reason: NotificationReason | None = None
    will_retry: bool | None = None
    #: When the delivery should arrive: the round's planned time at the door, give or take
    #: `ARRIVAL_WINDOW` (a trip of its own plans no time).
    expected_from: datetime | None = None
    expected_by: datetime | None = None


#: The stages a patient hears of, as what they are told. Approval, reservation and the courier's
#: offer are the pharmacy's business: the patient hears next when the medicine is on the way.
_NOTICE_OF_STAGE: dict[Stage, NotificationKind] = {
    Stage.HELD_FOR_REVIEW: "held_for_pharmacist",
    Stage.PICKED_UP: "out_for_delivery",
    Stage.DELIVERY_FAILED: "failed_attempt",
    Stage.DELIVERED: "delivered",
    Stage.CANCELLED: "cancelled",
    Stage.REJECTED: "refused",
    Stage.OUT_OF_STOCK: "out_of_stock",
    Stage.UNDELIVERABLE: "undeliverable",
}

#: A refusal's checker codes as what the patient is told, the first that applies in this order: what
#: a pharmacist decided (or did not decide in time); an expired prescription (a new one is needed
#: whatever else is wrong); a danger; too soon; and anything else is the prescription to correct.
_REFUSALS: tuple[tuple[NotificationReason, frozenset[str]], ...] = (
    ("review_expired", frozenset({"REVIEW_EXPIRED"})),
    ("pharmacist_declined", frozenset({"PHARMACIST_REJECTED"})),
    ("expired", frozenset({"PRESCRIPTION_EXPIRED"})),
    (
        "not_safe",
        frozenset(
            {"ALLERGY_CONFLICT", "SEVERE_INTERACTION", "MODERATE_INTERACTION", "CONTROLLED_SUBSTANCE", "HIGH_RISK_DRUG"}
        ),
    ),
    ("too_soon", frozenset({"REFILL_TOO_SOON"})),
)

_FAILURES: dict[str, NotificationReason] = {
    "patient_absent": "patient_absent",
    "address_not_found": "address_not_found",
    "refused": "refused_at_door",
    "damaged": "damaged",
}


def _codes(why: list[str]) -> set[str]:
    """The codes of `why` lines ("CODE: sentence")."""
    return {line.split(":", 1)[0].strip() for line in why}


def refusal_reason(why: list[str]) -> NotificationReason:
    codes = _codes(why)
    return next((reason for reason, matching in _REFUSALS if codes & matching), "needs_correction")


def failure_reason(failure: str | None) -> NotificationReason:
    return _FAILURES.get(failure or "", "other")


def _since(status: PrescriptionStatus) -> datetime:
    """When the status reached its current stage: the first entry of the history's last run at it."""
    since = status.history[-1].at if status.history else datetime.min
    run_started = False
    for entry in status.history:
        if entry.stage is status.stage and not run_started:
            since, run_started = entry.at, True
        elif entry.stage is not status.stage:
            run_started = False
    return since


def _notice_of_stage(status: PrescriptionStatus, at: datetime, language: PatientLanguage) -> Notice | None:
    kind = _NOTICE_OF_STAGE.get(status.stage)
    match kind:
        case None:
            return None
        case "failed_attempt":
            # The last attempt's failure comes with the abandonment, told once, as undeliverable.
            if not status.will_retry:
                return None
            return Notice(kind, at, language, reason=failure_reason(status.last_failure), will_retry=True)
        case "undeliverable":
            return Notice(kind, at, language, reason=failure_reason(status.last_failure), will_retry=False)
        case "refused":
            return Notice(kind, at, language, reason=refusal_reason(status.why))
    if kind == "out_for_delivery" and status.expected_at is not None:
        expected = status.expected_at
        return Notice(
            kind, at, language, expected_from=expected - ARRIVAL_WINDOW, expected_by=expected + ARRIVAL_WINDOW
        )
    return Notice(kind, at, language)


#: A round's planned time at a door, as the patient is told it: an hour either side (roads, doors before).
ARRIVAL_WINDOW = timedelta(hours=1)


def to_notify(
    before: PrescriptionStatus | None,
    after: PrescriptionStatus,
    event: Envelope,
    *,
    default_language: PatientLanguage,
) -> list[Notice]:
    """What the patient is told after one event: that the prescription was received, then each
    stage they should know of (`_NOTICE_OF_STAGE`) once, when an event moves the status to it.

    Nothing for a patient without a phone, nothing before the acceptance names the patient, and
    nothing read late (a pipeline stage after a later one, anything after the end). When the
    acceptance is read after later events, the patient hears it was received (unless it has already
    ended) and where it stands now, not the stages it went through: old news is noise on a phone."""
    patient = after.patient
    if patient is None or patient.phone is None:
        return []
    language = patient.language or default_language
    if _newly_recalled(before, event):
        # Told whatever the stage: the patient may have the medicine at home.
        return [Notice("recalled", event.occurred_at, language)]
    if before is None or before.patient is None:
        received = [] if after.terminal else [Notice("accepted", event.occurred_at, language)]
        now = _notice_of_stage(after, _since(after), language) if after.stage is not Stage.RECEIVED else None
        return received + ([now] if now is not None else [])
    reported = stage_of(event)
    if reported is None or reported is before.stage or after.stage is not reported:
        return []
    notice = _notice_of_stage(after, event.occurred_at, language)
    return [notice] if notice is not None else []


@dataclass(frozen=True)
class FollowUp:
    """A call the hospital's side should make: the prescription ended without the medicine."""

    stage: Stage
    at: datetime
    reason: str
    #: A lot delivered to the patient and recalled since (the call is about it, whatever the stage).
    recalled_lot: str | None = None

    @property
    def ending(self) -> str:
        return "recalled" if self.recalled_lot is not None else self.stage.value


#: The endings someone at the hospital calls the patient about: the prescription was right, the
#: patient still needs the medicine, and the pharmacy could not get it to them.
FOLLOW_UP_STAGES = frozenset({Stage.OUT_OF_STOCK, Stage.UNDELIVERABLE})

#: What the call is for: out of stock, agree another supply; undeliverable, what the last failure asks.
_OUT_OF_STOCK_CALL = (
    "Call the patient to agree how they will get their medicine (another supply, another prescription)."
)
_UNDELIVERABLE_CALLS = {
    "address_not_found": "Call the patient to check the address, then send the prescription again.",
    "patient_absent": "Call the patient to agree when someone will be at home, then send the prescription again.",
    "refused": "Call the patient to ask why the delivery was refused.",
    "damaged": "Call the patient: the medicine was damaged on the way, and a new supply is needed.",
}
_UNDELIVERABLE_CALL = "Call the patient to arrange another delivery."


def follow_up(
    before: PrescriptionStatus | None, after: PrescriptionStatus, event: Envelope | None = None
) -> FollowUp | None:
    """The follow-up an event makes due: once, when the prescription reaches an ending in
    `FOLLOW_UP_STAGES` with its sender and patient known (either may come last); and once per lot
    delivered to the patient and recalled since."""
    if event is not None and _newly_recalled(before, event) and after.sender_id and after.patient:
        assert isinstance(event, inv.PrescriptionRecalled)
        reason = (
            f"Recalled: lot {event.lot_id} of {event.drug_code} ({event.reason}); {event.quantity} units of it "
            "were delivered to the patient. Call the patient: tell them not to take it, arrange its return, "
            "and agree a replacement."
        )
        return FollowUp(after.stage, event.occurred_at, reason, recalled_lot=event.lot_id)
    if after.sender_id is None or after.patient is None or after.stage not in FOLLOW_UP_STAGES:
        return None
    if before is not None and before.sender_id is not None and before.stage is after.stage:
        return None
    details = "; ".join(line.split(":", 1)[-1].strip() for line in after.why) or after.stage.value.replace("_", " ")
    if after.stage is Stage.OUT_OF_STOCK:
        what, call = "Out of stock", _OUT_OF_STOCK_CALL
    else:
        what, call = "Not delivered", _UNDELIVERABLE_CALLS.get(after.last_failure or "", _UNDELIVERABLE_CALL)
    return FollowUp(after.stage, _since(after), f"{what}: {details}. {call}")
