"""Use cases of the prescription service, each over a batch: check, hold for review, pharmacist
decisions, deadlines, cancellation, supplies that never reached the patient.

Each use case takes a batch's records and answers, in the same order, what became of each
(`Handled`). It loads what the batch touches with one query per store, decides in memory with the
plain functions at the bottom of this module (`(state, message) -> Decision`), and saves each store
once, through the unit of work (see services/runtime/unit_of_work.py).

Two documents take part in an approval: the patient's medication history (which later checks of
the same patient read for interactions and early refills) and the prescription's verdict. The
unit of work runs once per store, and the history goes first: it is written idempotently (keyed
by prescription id, and not tracked by message id, so a redelivered message decides again and
finds its entry there), so a crash in between leaves an entry that the redelivered message finds
and keeps, never a verdict without its entry.

Two prescriptions of one patient checked at the same time: the history-dependent rules are the
history's own decision, so in one batch the second is decided on the history the first left, and
of two instances' concurrent approvals the second loses the versioned write and is decided again on
the history that includes the first (it may then be held or rejected instead). What stays open: a
prescription that is held enters the history only when a pharmacist approves it, so two holds of
one patient do not see each other, and a pharmacist's approval does not re-run the checks; the
pharmacist sees both in the review queue.

An entry leaves the history's active medicine in three ways. A cancellation withdraws it after its
verdict write, whatever that write did (applied, changed nothing, or a duplicate): an approval
racing it (the check, or a pharmacist on the review topic's own consumer group) either wrote its
verdict first, and so its entry too, or finds the verdict no longer open and withdraws its own
entry. A pharmacist's approval that is refused (the hold ended otherwise meanwhile) withdraws the
entry it recorded unless the prescription stands approved. And a prescription approved but never
supplied (out of stock, delivery given up or withdrawn, as inventory and courier report) is marked
so: the interaction and refill rules must consider only medicine the patient actually has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import structlog

from pharmacy_contracts import Envelope, signing
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import CancellationAccepted, Prescription, PrescriptionAccepted
from pharmacy_contracts.prescription import (
    CancellationOrdered,
    DecisionAnswered,
    DeliveryDetails,
    PrescriptionCancelled,
    PrescriptionRejected,
    ReviewDecided,
    ReviewEscalated,
)
from services.runtime.reasons import SENDER_UNKNOWN, identifier_or_none
from services.runtime.unit_of_work import Decision, Handled, Outcome, Record, UnitOfWork

from . import domain, messages
from .domain import MedicationHistory, Verdict, VerdictState
from .storage import PrescriptionStorage

log = structlog.get_logger()

Intake = PrescriptionAccepted | CancellationAccepted
Review = ReviewDecided | CancellationOrdered
Cancellation = CancellationAccepted | CancellationOrdered
#: The sweep's proposals: what a held review's passed deadline announces.
DeadlineEvent = ReviewEscalated | PrescriptionRejected

#: Outcomes after which a record goes no further (it is dead-lettered or tried again alone).
STOPPED = (Outcome.REFUSED, Outcome.FAILED)


@dataclass(frozen=True)
class Checked:
    """What the checks of one prescription decided, carried from the history's decision to the verdict's."""

    verdict: Verdict
    delivery: DeliveryDetails
    #: As checked: lines without days of supply took the formulary's default.
    prescription: Prescription


class PrescriptionService:
    """Use cases over batches: each takes a batch's records and says what became of each."""

    def __init__(
        self,
        storage: PrescriptionStorage,
        unit_of_work: UnitOfWork,
        clock: Callable[[], datetime],
        policy: domain.ReviewPolicy | None = None,
    ):
        self._storage = storage
        self._uow = unit_of_work
        self._clock = clock
        self._policy = policy or domain.ReviewPolicy()

    async def _run(self, store: Any, records: Sequence[Record[Any]], **how: Any) -> list[Handled[Any]]:
        """The unit of work over one store, and nothing at all for no records."""
        return await self._uow.run(store, records, **how) if records else []

    # --- consultation.intake: checks and upstream cancellations ---------------------------------------

    async def on_intake(self, records: Sequence[Record[Intake]]) -> list[Handled[Intake]]:
        """Check each new prescription (history first, then the verdict) and honour cancellations."""
        now = self._clock()
        outcomes: dict[int, Handled[Any]] = {}
        accepted = [i for i, r in enumerate(records) if isinstance(r.message, PrescriptionAccepted)]
        # Decided before (a duplicate, or cancelled before its checks): not checked again. From
        # memory: a verdict this process does not know of is taken to be none, and if one exists
        # after all, its version-guarded insert below loses, and it is decided on the real one
        # (the checks record a supply idempotently, and a cancelled one's supply is withdrawn).
        before = await self._storage.verdicts_of((_rx(records[i].message) for i in accepted), from_memory=True)
        # A cancellation earlier in the batch decides it too: it is dropped, so its checks never run.
        to_check: list[int] = []
        cancelled_earlier: set[str] = set()
        for i, record in enumerate(records):
            rx = _rx(record.message)
            if isinstance(record.message, CancellationAccepted):
                cancelled_earlier.add(rx)
            elif (
                isinstance(record.message, PrescriptionAccepted) and before[rx] is None and rx not in cancelled_earlier
            ):
                to_check.append(i)
        checked: dict[str, Checked] = {}  # by message id
        if to_check:
            reference = await self._storage.reference_for(records[i].message.prescription for i in to_check)  # type: ignore[union-attr]
            decide = partial(check_and_record, reference, self._policy, now)
            histories = await self._run(
                self._storage.histories, [records[i] for i in to_check], key=_patient, decide=decide, tracked=False
            )
            for i, handled in zip(to_check, histories, strict=True):
                if handled.outcome in STOPPED:
                    outcomes[i] = handled
                else:
                    checked[records[i].message_id] = handled.result
        rest = [i for i in range(len(records)) if i not in outcomes]
        verdicts = await self._run(
            self._storage.verdicts,
            [records[i] for i in rest],
            key=_rx,
            decide=partial(decide_intake, checked, now),
        )
        outcomes.update(zip(rest, verdicts, strict=True))
        # An accepted prescription whose verdict stands cancelled (before its checks, or in this
        # batch before them) withdraws what its check may have recorded in the patient's history.
        cancelled_first = {
            i: records[i].message.prescription.patient.patient_id  # type: ignore[union-attr]
            for i in accepted
            if outcomes[i].outcome not in STOPPED and _is_cancelled(outcomes[i].result)
        }
        outcomes.update(await self._withdraw_after(records, outcomes, cancelled_first))
        handled = [outcomes[i] for i in range(len(records))]
        for one in handled:
            one.record.in_context(_log_intake, one)
        return handled

    # --- prescription.reviews: pharmacists' decisions and cancellations --------------------------------

    async def on_review(self, records: Sequence[Record[Review]]) -> list[Handled[Review]]:
        """A pharmacist's approval records the supply in the patient's history, then releases the
        verdict; a rejection or a cancellation changes the verdict alone (a cancellation then
        withdraws the supply)."""
        now = self._clock()
        outcomes: dict[int, Handled[Any]] = {}
        before = await self._storage.verdicts_of(_rx(r.message) for r in records)
        held = {rx: v for rx, v in before.items() if v is not None and v.state is VerdictState.HELD and v.prescription}
        approvals = [
            i
            for i, r in enumerate(records)
            if isinstance(r.message, ReviewDecided) and r.message.decision == "approve" and _rx(r.message) in held
        ]
        if approvals:
            formulary = await self._storage.formulary_entries(
                item.drug_code
                for i in approvals
                for item in held[_rx(records[i].message)].prescription.items  # type: ignore[union-attr]
            )
            histories = await self._run(
                self._storage.histories,
                [records[i] for i in approvals],
                key=partial(_patient_of_held, held),
                decide=partial(record_approved_supply, held, formulary, now),
                tracked=False,
            )
            outcomes.update((i, h) for i, h in zip(approvals, histories, strict=True) if h.outcome in STOPPED)
        rest = [i for i in range(len(records)) if i not in outcomes]
        verdicts = await self._run(
            self._storage.verdicts, [records[i] for i in rest], key=_rx, decide=partial(decide_review, now)
        )
        outcomes.update(zip(rest, verdicts, strict=True))
        # An approval refused because the hold ended otherwise meanwhile (expired, rejected,
        # cancelled) takes back the supply it may have recorded, unless the prescription stands
        # approved. Every refused approval, not only those whose hold was open at the start of
        # this batch: on a retry or a redelivery the first attempt's entry may be there already.
        refused = [
            i
            for i, r in enumerate(records)
            if isinstance(r.message, ReviewDecided)
            and r.message.decision == "approve"
            and outcomes[i].outcome is Outcome.REFUSED
        ]
        now_verdicts = await self._storage.verdicts_of(_rx(records[i].message) for i in refused)
        not_approved = {
            i: verdict.patient_id
            for i in refused
            if (verdict := now_verdicts[_rx(records[i].message)]) is not None and not _is_approved(verdict)
        }
        outcomes.update(await self._withdraw_after(records, outcomes, not_approved))
        handled = [outcomes[i] for i in range(len(records))]
        for one in handled:
            one.record.in_context(_log_review, one)
        return handled

    # --- cancelled supplies ----------------------------------------------------------------------------

    async def _withdraw_after(
        self,
        records: Sequence[Record[Any]],
        outcomes: Mapping[int, Handled[Any]],
        also: Mapping[int, str | None],
    ) -> dict[int, Handled[Any]]:
        """After the verdicts are written: the cancelled prescriptions' entries leave their patients'
        histories. Asked for every cancellation that went through, applied, unchanged or a duplicate
        (a crash after its verdict write leaves the withdrawal to the redelivery), and for the other
        records in `also` (index: patient). Returns the records whose withdrawal failed."""
        cancellations = [
            i
            for i, r in enumerate(records)
            if isinstance(r.message, Cancellation) and outcomes[i].outcome not in STOPPED
        ]
        duplicates = [i for i in cancellations if outcomes[i].outcome is Outcome.DUPLICATE]
        reread = await self._storage.verdicts_of(_rx(records[i].message) for i in duplicates)
        patients: dict[int, str] = {}
        for i in cancellations:
            duplicate = outcomes[i].outcome is Outcome.DUPLICATE
            final = reread[_rx(records[i].message)] if duplicate else outcomes[i].result
            if (patient := domain.history_to_withdraw(final)) is not None:
                patients[i] = patient
        patients.update({i: p for i, p in also.items() if p is not None})
        if not patients:
            return {}
        return await self._withdraw_supplies([records[i] for i in sorted(patients)], sorted(patients), patients)

    async def _withdraw_supplies(
        self, records: list[Record[Any]], indexes: list[int], patients: Mapping[int, str]
    ) -> dict[int, Handled[Any]]:
        by_message = {records[n].message_id: patients[i] for n, i in enumerate(indexes)}
        withdrawn = await self._run(
            self._storage.histories,
            records,
            key=partial(_patient_by_message, by_message),
            decide=withdraw_supply,
            tracked=False,
        )
        return {i: h for i, h in zip(indexes, withdrawn, strict=True) if h.outcome is Outcome.FAILED}

    # --- inventory and courier events: supplies that never reached the patient -------------------------

    async def on_supply_event(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Inventory and courier events that end a supply before the patient has it mark the
        prescription's history entries as never supplied; the rest of those topics is none of this
        service's business."""
        ending = [i for i, r in enumerate(records) if not_supplied_why(r.message) is not None]
        before = await self._storage.verdicts_of(_rx(records[i].message) for i in ending)
        patients = {rx: v.patient_id for rx, v in before.items() if v is not None and v.patient_id is not None}
        marked_indexes = [i for i in ending if _rx(records[i].message) in patients]
        marked = await self._run(
            self._storage.histories,
            [records[i] for i in marked_indexes],
            key=partial(_patient_by_rx, patients),
            decide=mark_not_supplied,
        )
        outcomes: dict[int, Handled[Envelope]] = dict(zip(marked_indexes, marked, strict=True))
        handled = [outcomes.get(i) or Handled(r, Outcome.UNCHANGED) for i, r in enumerate(records)]
        for i in ending:
            handled[i].record.in_context(_log_supply_end, handled[i], i in outcomes)
        return handled

    # --- deadlines -------------------------------------------------------------------------------------

    async def sweep_reviews(self) -> None:
        """Escalate holds past their escalation time and reject those past their expiry: the review
        queue in one query, then one load and one version-guarded save of the due verdicts. Each
        action re-checks its deadline on the version it saves over, so two instances sweeping at once
        (or a pharmacist deciding meanwhile) cannot both act."""
        now = self._clock()
        due = [
            Record(messages.deadline_passed(held, action))
            for held in await self._storage.held_verdicts()
            if (action := domain.due_review_action(held, now)) is not None
        ]
        if not due:
            return
        acted = await self._run(
            self._storage.verdicts,
            due,
            key=lambda event: event.prescription_id,
            decide=partial(act_on_deadline, now),
            tracked=False,
        )
        for handled in acted:
            if handled.outcome is Outcome.APPLIED:
                _log_deadline(handled.record.message)
            elif handled.outcome is Outcome.FAILED:
                log.warning("review deadline not acted on; the next sweep tries again", error=handled.error)


# --- decisions: plain functions of (state, message) ------------------------------------------------------


def check_and_record(
    reference: domain.Reference,
    policy: domain.ReviewPolicy,
    now: datetime,
    history: MedicationHistory | None,
    accepted: PrescriptionAccepted,
) -> Decision[MedicationHistory]:
    """The checks, on the patient's history as the records before this one left it; an approval's
    supply recorded in that history. The verdict to write next is the decision's result."""
    prescription = domain.with_formulary_defaults(accepted.prescription, reference.formulary)
    safety = domain.Safety(
        formulary=reference.formulary,
        prescriber=reference.prescribers.get(prescription.prescriber.licence_number),
        interactions=reference.interactions,
        history=history.others_than(prescription.prescription_id) if history else [],
        refill_tolerance=policy.refill_tolerance,
    )
    found = domain.check_prescription(prescription, safety, now)
    verdict = domain.verdict_of_check(prescription, found, reference.formulary, policy, now)
    checked = Checked(verdict, domain.delivery_details(prescription, reference.formulary), prescription)
    recorded = domain.with_supply(history, prescription, reference.formulary, now) if found.approved else None
    return Decision(recorded, result=checked)


def decide_intake(
    checked: Mapping[str, Checked], now: datetime, existing: Verdict | None, message: Intake
) -> Decision[Verdict]:
    """A checked prescription's verdict (unless it has one: the result says which), or a cancellation."""
    if isinstance(message, CancellationAccepted):
        return cancel(existing, message, now)
    if not isinstance(message, PrescriptionAccepted):
        return Decision.refused("unexpected_message", f"{type(message).__name__} is not sent on this topic")
    if existing is not None:
        return Decision(result=existing)  # decided before: a duplicate, or cancelled before its checks
    found = checked.get(message.message_id)
    if found is None:  # not checked because it had a verdict then: verdicts are never removed
        raise RuntimeError(f"{message.prescription.prescription_id} lost its verdict")
    verdict = found.verdict
    if verdict.state is VerdictState.APPROVED:
        event: Envelope = messages.approved(found.prescription, found.delivery, message)
    elif verdict.state is VerdictState.HELD:
        event = messages.held_for_review(verdict, message.prescription.patient.patient_id, message)
    else:
        event = messages.rejected_by_checks(verdict, message)
    return Decision(verdict, [event], result=verdict)


def record_approved_supply(
    held: Mapping[str, Verdict],
    formulary: Mapping[str, domain.FormularyEntry],
    now: datetime,
    history: MedicationHistory | None,
    decision: ReviewDecided,
) -> Decision[MedicationHistory]:
    """A pharmacist's approval of a hold: the supply enters the patient's history (idempotent)."""
    prescription = held[decision.prescription_id].prescription
    assert prescription is not None
    return Decision(domain.with_supply(history, prescription, formulary, now))


def decide_review(now: datetime, existing: Verdict | None, message: Review) -> Decision[Verdict]:
    if isinstance(message, CancellationOrdered):
        return cancel(existing, message, now)
    rx = message.prescription_id
    if existing is None or existing.state is not VerdictState.HELD:
        state = "never checked" if existing is None else existing.state.value
        return Decision.refused("not_under_review", f"{rx} is not held for review ({state})")
    if message.decision == "approve":
        assert existing.prescription is not None and existing.delivery is not None
        approval = messages.approved(
            existing.prescription, existing.delivery, message, reviewed_by=message.pharmacist_id
        )
        answer = messages.decision_answered(message, "approved: on its way to the warehouse")
        return Decision(
            domain.approved_by_pharmacist(existing, message.pharmacist_id, message.note, now), [approval, answer]
        )
    rejection = messages.rejected_by_pharmacist(message)
    answer = messages.decision_answered(message, "rejected: the sender is told why")
    return Decision(
        domain.rejected_by_pharmacist(existing, message.pharmacist_id, message.note, now), [rejection, answer]
    )


def cancel(existing: Verdict | None, message: Cancellation, now: datetime) -> Decision[Verdict]:
    """Honoured while approved or held, and before the checks; the result is the verdict after it."""
    rx = message.prescription_id
    requested_by = message.requested_by if isinstance(message, CancellationAccepted) else message.pharmacist_id
    updated = domain.cancelled(existing, rx, requested_by, message.reason, now)
    if updated is None:
        return Decision(result=existing)
    event = messages.cancelled(
        message,
        requested_by=requested_by,
        was_approved=existing is not None and existing.state is VerdictState.APPROVED,
    )
    if isinstance(message, CancellationOrdered):  # a pharmacist's: they hear it was done
        return Decision(updated, [event, messages.decision_answered(message, "cancelled")], result=updated)
    return Decision(updated, [event], result=updated)


def withdraw_supply(history: MedicationHistory | None, message: Envelope) -> Decision[MedicationHistory]:
    return Decision(domain.with_cancelled(history, _rx(message)))


#: The inventory and courier events that end a supply before the patient has it (`not_supplied_why`).
SUPPLY_ENDINGS: tuple[type[Envelope], ...] = (inv.ReservationFailed, c.DeliveryAbandoned, c.DeliveryCancelled)


def not_supplied_why(event: Envelope) -> domain.NotSupplied | None:
    match event:
        case inv.ReservationFailed():
            return event.reason
        case c.DeliveryAbandoned():
            return "DELIVERY_ABANDONED"
        case c.DeliveryCancelled():
            return "DELIVERY_CANCELLED"
    return None


def mark_not_supplied(history: MedicationHistory | None, event: Envelope) -> Decision[MedicationHistory]:
    """The prescription's history entries marked as never supplied: the interaction and refill rules
    must consider only medicine the patient actually has, not every approval."""
    why = not_supplied_why(event)
    assert why is not None
    return Decision(domain.with_not_supplied(history, _rx(event), why))


def act_on_deadline(now: datetime, existing: Verdict | None, proposed: DeadlineEvent) -> Decision[Verdict]:
    """The sweep's proposal, if the deadline is still due on this version (nobody decided or swept
    meanwhile). While held, what the event says (held since, expiry, reasons) does not change."""
    action: domain.ReviewAction = "escalate" if isinstance(proposed, ReviewEscalated) else "expire"
    if existing is None or domain.due_review_action(existing, now) != action:
        return Decision.unchanged()
    state = domain.escalated(existing) if action == "escalate" else domain.expired_review(existing, now)
    return Decision(state, [proposed])


# --- keys ----------------------------------------------------------------------------------------------


def _rx(message: Envelope) -> str:
    if isinstance(message, PrescriptionAccepted):
        return message.prescription.prescription_id
    prescription_id = getattr(message, "prescription_id", None)
    return prescription_id if isinstance(prescription_id, str) else message.correlation_id


def _patient(accepted: PrescriptionAccepted) -> str:
    return accepted.prescription.patient.patient_id


def _patient_of_held(held: Mapping[str, Verdict], decision: ReviewDecided) -> str:
    prescription = held[decision.prescription_id].prescription
    assert prescription is not None
    return prescription.patient.patient_id


def _patient_by_message(patients: Mapping[str, str], message: Envelope) -> str:
    return patients[message.message_id]


def _patient_by_rx(patients: Mapping[str, str], event: Envelope) -> str:
    return patients[_rx(event)]


def _is_cancelled(verdict: Any) -> bool:
    return isinstance(verdict, Verdict) and verdict.state is VerdictState.CANCELLED


def _is_approved(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.state is VerdictState.APPROVED


# --- one log line per decision ---------------------------------------------------------------------------


def _log_intake(handled: Handled[Any]) -> None:
    message = handled.record.message
    if handled.outcome in STOPPED:
        return  # refusals and failures are logged where they are dead-lettered or retried
    if isinstance(message, PrescriptionAccepted):
        if handled.outcome is not Outcome.APPLIED:
            log.info("prescription already decided; duplicate dropped")
            return
        verdict: Verdict = handled.result
        codes = [r.code for r in verdict.reasons]
        if verdict.state is VerdictState.HELD:
            log.info(
                "prescription held for pharmacist review",
                reasons=codes,
                escalate_at=verdict.escalate_at.isoformat() if verdict.escalate_at else None,
                expires_at=verdict.expires_at.isoformat() if verdict.expires_at else None,
            )
        else:
            log.info(f"prescription {verdict.state.value}", reasons=codes)
    else:
        _log_cancellation(handled)


def _log_review(handled: Handled[Any]) -> None:
    message = handled.record.message
    if isinstance(message, CancellationOrdered):
        _log_cancellation(handled)
    elif handled.outcome is Outcome.REFUSED:
        log.warning("pharmacist decision refused: not under review", pharmacist_id=message.pharmacist_id)
    elif handled.outcome is Outcome.APPLIED:
        log.info(
            "prescription approved by pharmacist"
            if message.decision == "approve"
            else "prescription rejected by pharmacist",
            pharmacist_id=message.pharmacist_id,
        )
    elif handled.outcome is Outcome.DUPLICATE:
        log.info("pharmacist decision already applied; duplicate dropped")


def _log_cancellation(handled: Handled[Any]) -> None:
    """Who asked, as a system or staff id; never the free-text reason or requester's name (an upstream
    cancellation may be the patient's own, in their words): those stay in the stored verdict."""
    message = handled.record.message
    by = (
        {"sender_id": message.sender_id}
        if isinstance(message, CancellationAccepted)
        else {"pharmacist_id": message.pharmacist_id}
    )
    if handled.outcome is Outcome.APPLIED:
        event = next(e for e in handled.events if isinstance(e, PrescriptionCancelled))
        log.info("prescription cancelled", was_approved=event.was_approved, **by)
    elif handled.outcome is Outcome.DUPLICATE:
        log.info("cancellation already applied; duplicate dropped")
    elif handled.outcome is Outcome.UNCHANGED and isinstance(handled.result, Verdict):
        log.info(
            "cancellation changes nothing: prescription already final",
            state=handled.result.state.value,
            **by,
        )


def _log_supply_end(handled: Handled[Any], had_history: bool) -> None:
    why = not_supplied_why(handled.record.message)
    if not had_history:
        log.info("supply ended for a prescription with no patient history here; nothing to mark", why=why)
    elif handled.outcome is Outcome.APPLIED:
        log.info("prescription never supplied: dropped from the patient's active medicine", why=why)
    elif handled.outcome in (Outcome.UNCHANGED, Outcome.DUPLICATE):
        log.info("supply end changes nothing: no entry of the prescription still counts", why=why)


def _log_deadline(event: DeadlineEvent) -> None:
    bound = log.bind(correlation_id=event.prescription_id)
    if isinstance(event, ReviewEscalated):
        bound.warning(
            "review escalated: no pharmacist decided in time",
            held_at=event.held_since.isoformat(),
            reasons=[r.code for r in event.reasons],
            expires_at=event.expires_at.isoformat(),
        )
    else:
        bound.warning("prescription rejected: review expired undecided")


def refused_decision_answer(
    headers: Mapping[str, str], body: bytes | None, key: bytes | None, reason: str, detail: str
) -> DecisionAnswered | None:
    """The answer to a pharmacist whose signed decision was refused (None: the signer is unknown)."""
    pharmacist_id = identifier_or_none(headers.get(signing.SENDER_HEADER))
    if reason in SENDER_UNKNOWN or pharmacist_id is None:
        return None
    prescription_id = identifier_or_none(key.decode("utf-8", "replace") if key else None)
    return messages.decision_refused(
        pharmacist_id,
        prescription_id=prescription_id,
        message_id=identifier_or_none(headers.get("message-id")),
        code=reason,
        detail=detail,
    )
