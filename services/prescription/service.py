"""Use cases of the prescription service: check, hold for review, pharmacist decisions, deadlines, cancellation.

Two documents take part in an approval: the patient's medication history (which later checks of
the same patient read for interactions and early refills) and the prescription's verdict. The
history is written first and idempotently (keyed by prescription id), so a crash in between leaves
an entry that the redelivered message finds and keeps, never a verdict without its entry.

Two prescriptions of one patient checked at the same time: the history-dependent rules run inside
the history document's versioned write, so of two concurrent approvals the second is decided again
on the history that includes the first (it may then be held or rejected instead). What stays open:
a prescription that is held enters the history only when a pharmacist approves it, so two holds of
one patient do not see each other, and a pharmacist's approval does not re-run the checks; the
pharmacist sees both in the review queue.

An entry leaves the history's active medicine in two ways. A cancellation withdraws it after its
verdict write, whatever that write did: an approval racing it (the check, or a pharmacist on the
review topic's own consumer group) either wrote its verdict first, and so its entry too, or finds
the verdict no longer open and withdraws its own entry. And a prescription approved but never
supplied (out of stock, delivery given up or withdrawn, as inventory and courier report) is marked
so: the interaction and refill rules must consider only medicine the patient actually has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import CancellationAccepted, Prescription, PrescriptionAccepted
from pharmacy_contracts.prescription import (
    ApprovedLine,
    CancellationOrdered,
    DeliveryDetails,
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionHeld,
    PrescriptionRejected,
    ReviewDecided,
    ReviewEscalated,
)
from services.runtime.documents import Change
from services.runtime.errors import Refused

from . import domain
from .domain import Verdict, VerdictState
from .storage import PrescriptionStorage

log = structlog.get_logger()
PRODUCER = "prescription"


def approval_event(
    prescription: Prescription,
    delivery: DeliveryDetails,
    *,
    causation_id: str | None,
    reviewed_by: str | None = None,
) -> PrescriptionApproved:
    """The one way an approval is announced, whether the checks or a pharmacist approved."""
    return PrescriptionApproved(
        correlation_id=prescription.prescription_id,
        causation_id=causation_id,
        producer=PRODUCER,
        prescription_id=prescription.prescription_id,
        patient_id=prescription.patient.patient_id,
        lines=[
            ApprovedLine(drug_code=i.drug_code, quantity=i.quantity, days_supply=i.days_supply)
            for i in prescription.items
        ],
        delivery=delivery,
        reviewed_by=reviewed_by,
    )


def _envelope(prescription_id: str, causation_id: str | None) -> dict[str, str | None]:
    return {
        "correlation_id": prescription_id,
        "causation_id": causation_id,
        "producer": PRODUCER,
        "prescription_id": prescription_id,
    }


class PrescriptionService:
    def __init__(
        self,
        storage: PrescriptionStorage,
        clock: Callable[[], datetime],
        policy: domain.ReviewPolicy | None = None,
    ):
        self._storage = storage
        self._clock = clock
        self._policy = policy or domain.ReviewPolicy()

    # --- messages in ------------------------------------------------------------------------------

    async def on_intake(self, message: PrescriptionAccepted | CancellationAccepted) -> None:
        if isinstance(message, PrescriptionAccepted):
            await self.check(message)
        else:
            await self.cancel(
                message.prescription_id,
                requested_by=message.requested_by,
                reason=message.reason,
                message_id=message.message_id,
            )

    async def on_review(self, message: ReviewDecided | CancellationOrdered) -> None:
        if isinstance(message, ReviewDecided):
            await self.decide_review(message)
        else:
            await self.cancel(
                message.prescription_id,
                requested_by=message.pharmacist_id,
                reason=message.reason,
                message_id=message.message_id,
            )

    # --- the checks ---------------------------------------------------------------------------------

    async def check(self, accepted: PrescriptionAccepted) -> None:
        prescription = accepted.prescription
        rx = prescription.prescription_id
        if (existing := await self._storage.verdicts.get(rx)) is not None:
            log.info("prescription already decided; message dropped", state=existing.state.value)
            return
        formulary = await self._storage.formulary_entries(item.drug_code for item in prescription.items)
        prescriber = await self._storage.prescriber(prescription.prescriber.licence_number)
        interactions = await self._storage.interaction_table()
        now = self._clock()
        found: list[domain.Check] = []

        def check_and_record(history: domain.MedicationHistory | None) -> Change[domain.MedicationHistory] | None:
            # Runs again if another write to this patient's history came first, on the history it left.
            others = history.others_than(rx) if history else []
            safety = domain.Safety(
                formulary=formulary,
                prescriber=prescriber,
                interactions=interactions,
                history=others,
                refill_tolerance=self._policy.refill_tolerance,
            )
            found[:] = [domain.check_prescription(prescription, safety, now)]
            if not found[0].approved:
                return None
            recorded = domain.with_supply(history, prescription, formulary, now)
            return None if recorded is None else Change(recorded)

        recorded = await self._storage.histories.apply(prescription.patient.patient_id, check_and_record)
        (result,) = found
        verdict = domain.verdict_of_check(prescription, result, formulary, self._policy, now)

        def decide(existing: Verdict | None) -> Change[Verdict] | None:
            if existing is not None:
                return None
            common = _envelope(rx, accepted.message_id)
            if verdict.state is VerdictState.APPROVED:
                event = approval_event(
                    prescription,
                    domain.delivery_details(prescription, formulary),
                    causation_id=accepted.message_id,
                )
                return Change(verdict, [event])
            if verdict.state is VerdictState.HELD:
                assert verdict.escalate_at is not None and verdict.expires_at is not None
                held = PrescriptionHeld(
                    **common,
                    patient_id=prescription.patient.patient_id,
                    reasons=verdict.reasons,
                    escalate_at=verdict.escalate_at,
                    expires_at=verdict.expires_at,
                )
                return Change(verdict, [held])
            return Change(verdict, [PrescriptionRejected(**common, reasons=verdict.reasons)])

        change = await self._storage.verdicts.apply(rx, decide, message_id=accepted.message_id)
        if change is None:
            if recorded is not None:
                # Decided meanwhile (a cancellation came first): the supply just recorded never happens.
                await self._withdraw_supply(prescription.patient.patient_id, rx)
            log.info("prescription already decided; duplicate dropped")
            return
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

    # --- the pharmacist's decision ----------------------------------------------------------------

    async def decide_review(self, decision: ReviewDecided) -> None:
        rx = decision.prescription_id
        now = self._clock()
        current = await self._storage.verdicts.get(rx)
        recorded = None
        if decision.decision == "approve" and current is not None and current.state is VerdictState.HELD:
            recorded = await self._record_supply(current, now)

        def decide(existing: Verdict | None) -> Change[Verdict] | None:
            if existing is None or existing.state is not VerdictState.HELD:
                state = "never checked" if existing is None else existing.state.value
                raise Refused("not_under_review", f"{rx} is not held for review ({state})")
            common = _envelope(rx, decision.message_id)
            if decision.decision == "approve":
                assert existing.prescription is not None and existing.delivery is not None
                event = approval_event(
                    existing.prescription,
                    existing.delivery,
                    causation_id=decision.message_id,
                    reviewed_by=decision.pharmacist_id,
                )
                return Change(
                    domain.approved_by_pharmacist(existing, decision.pharmacist_id, decision.note, now), [event]
                )
            rejected = PrescriptionRejected(
                **common,
                reasons=[domain.pharmacist_rejection(decision.pharmacist_id, decision.note)],
                reviewed_by=decision.pharmacist_id,
            )
            return Change(
                domain.rejected_by_pharmacist(existing, decision.pharmacist_id, decision.note, now), [rejected]
            )

        try:
            change = await self._storage.verdicts.apply(rx, decide, message_id=decision.message_id)
        except Refused:
            if recorded is not None and current is not None and current.patient_id is not None:
                # The hold ended otherwise meanwhile (expired, cancelled, another pharmacist decided).
                await self._withdraw_supply(current.patient_id, rx)
            log.warning("pharmacist decision refused: not under review", pharmacist_id=decision.pharmacist_id)
            raise
        if change is None:
            log.info("pharmacist decision already applied; duplicate dropped")
            return
        log.info(
            "prescription approved by pharmacist"
            if decision.decision == "approve"
            else "prescription rejected by pharmacist",
            pharmacist_id=decision.pharmacist_id,
            note=decision.note,
        )

    async def _record_supply(self, held: Verdict, now: datetime) -> domain.MedicationHistory | None:
        prescription = held.prescription
        if prescription is None:
            return None
        formulary: Mapping[str, domain.FormularyEntry] = await self._storage.formulary_entries(
            item.drug_code for item in prescription.items
        )

        def record(history: domain.MedicationHistory | None) -> Change[domain.MedicationHistory] | None:
            recorded = domain.with_supply(history, prescription, formulary, now)
            return None if recorded is None else Change(recorded)

        change = await self._storage.histories.apply(prescription.patient.patient_id, record)
        return None if change is None else change.state

    async def _withdraw_supply(self, patient_id: str, prescription_id: str) -> None:
        def withdraw(history: domain.MedicationHistory | None) -> Change[domain.MedicationHistory] | None:
            marked = domain.with_cancelled(history, prescription_id)
            return None if marked is None else Change(marked)

        await self._storage.histories.apply(patient_id, withdraw)

    # --- deadlines ------------------------------------------------------------------------------------

    async def sweep_reviews(self) -> None:
        """Escalate holds past their escalation time and reject those past their expiry (idempotent:
        each action re-checks its deadline inside the versioned write)."""
        now = self._clock()
        for held in await self._storage.held_verdicts():
            action = domain.due_review_action(held, now)
            if action is not None:
                await self._act_on_deadline(held.prescription_id, action, now)

    async def _act_on_deadline(self, rx: str, action: domain.ReviewAction, now: datetime) -> None:
        def decide(existing: Verdict | None) -> Change[Verdict] | None:
            if existing is None or domain.due_review_action(existing, now) != action:
                return None  # decided or swept by someone else meanwhile
            assert existing.held_at is not None and existing.expires_at is not None
            common = _envelope(rx, None)
            if action == "escalate":
                event = ReviewEscalated(
                    **common, held_since=existing.held_at, expires_at=existing.expires_at, reasons=existing.reasons
                )
                return Change(domain.escalated(existing), [event])
            rejected = PrescriptionRejected(**common, reasons=[domain.review_expiry(existing)])
            return Change(domain.expired_review(existing, now), [rejected])

        change = await self._storage.verdicts.apply(rx, decide)
        if change is None:
            return
        verdict = change.state
        bound = log.bind(correlation_id=rx, held_at=verdict.held_at.isoformat() if verdict.held_at else None)
        if action == "escalate":
            bound.warning(
                "review escalated: no pharmacist decided in time",
                reasons=[r.code for r in verdict.reasons],
                expires_at=verdict.expires_at.isoformat() if verdict.expires_at else None,
            )
        else:
            bound.warning("prescription rejected: review expired undecided")

    # --- cancellation ---------------------------------------------------------------------------------

    async def cancel(self, rx: str, *, requested_by: str, reason: str, message_id: str) -> None:
        now = self._clock()
        outcome: list[Verdict | None] = []

        def decide(existing: Verdict | None) -> Change[Verdict] | None:
            outcome[:] = [existing]
            updated = domain.cancelled(existing, rx, requested_by, reason, now)
            if updated is None:
                return None
            was_approved = existing is not None and existing.state is VerdictState.APPROVED
            event = PrescriptionCancelled(
                **_envelope(rx, message_id), reason=reason, requested_by=requested_by, was_approved=was_approved
            )
            return Change(updated, [event])

        change = await self._storage.verdicts.apply(rx, decide, message_id=message_id)
        # After the verdict, and also when this write was a duplicate or changed nothing: a pharmacist's
        # approval may have recorded the supply after any earlier look, and a crash right after the
        # verdict write leaves the withdrawal to the redelivery (see the module docstring).
        final = change.state if change is not None else await self._storage.verdicts.get(rx)
        if (patient_id := domain.history_to_withdraw(final)) is not None:
            await self._withdraw_supply(patient_id, rx)
        if change is None:
            if not outcome or outcome[0] is None:
                log.info("cancellation already applied; duplicate dropped")
            else:
                log.info(
                    "cancellation changes nothing: prescription already final",
                    state=outcome[0].state.value,
                    requested_by=requested_by,
                )
            return
        (event,) = change.events
        assert isinstance(event, PrescriptionCancelled)
        log.info("prescription cancelled", requested_by=requested_by, reason=reason, was_approved=event.was_approved)

    # --- supplies that never reached the patient ------------------------------------------------------

    async def on_supply_event(self, event: Envelope) -> None:
        """Inventory and courier events that end a supply before the patient has it; the rest of
        those topics is none of this service's business."""
        match event:
            case inv.ReservationFailed():
                await self.not_supplied(event.prescription_id, event.reason, message_id=event.message_id)
            case c.DeliveryAbandoned():
                await self.not_supplied(event.prescription_id, "DELIVERY_ABANDONED", message_id=event.message_id)
            case c.DeliveryCancelled():
                await self.not_supplied(event.prescription_id, "DELIVERY_CANCELLED", message_id=event.message_id)

    async def not_supplied(self, rx: str, why: domain.NotSupplied, *, message_id: str) -> None:
        """Mark the prescription's history entries as never supplied: the interaction and refill rules
        must consider only medicine the patient actually has, not every approval."""
        verdict = await self._storage.verdicts.get(rx)
        if verdict is None or verdict.patient_id is None:
            log.info("supply ended for a prescription with no patient history here; nothing to mark", why=why)
            return

        def mark(history: domain.MedicationHistory | None) -> Change[domain.MedicationHistory] | None:
            marked = domain.with_not_supplied(history, rx, why)
            return None if marked is None else Change(marked)

        change = await self._storage.histories.apply(verdict.patient_id, mark, message_id=message_id)
        if change is None:
            log.info("supply end changes nothing: no entry of the prescription still counts", why=why)
            return
        log.info("prescription never supplied: dropped from the patient's active medicine", why=why)
