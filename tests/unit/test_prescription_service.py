"""The prescription service's use cases on the in-memory store: checks, holds, pharmacists'
decisions, cancellations, supplies that never arrived and review deadlines, each a batch at a time,
in milliseconds. The real broker and database are in tests/integration."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from pharmacy_contracts import Envelope
from pharmacy_contracts.consultation import CancellationAccepted, PrescriptionAccepted
from pharmacy_contracts.prescription import CancellationOrdered, ReviewDecided
from services.prescription.domain import (
    FormularyEntry,
    Interaction,
    MedicationHistory,
    PrescriberRecord,
    Verdict,
    VerdictState,
)
from services.prescription.service import PrescriptionService, refused_decision_answer
from services.prescription.storage import PrescriptionStorage, ReferenceStamp
from services.runtime.relay import outbox_entry
from services.runtime.store import DocumentMemory, MemoryStore
from services.runtime.unit_of_work import Handled, Outcome, Record, UnitOfWork
from tests.support import stand_ins
from tests.support.stand_ins import Clock
from tests.unit import builders as b

LICENCE = "LIC-KZ-77120"  # the example prescription's prescriber
NOW = b.DURING_VALIDITY


class Storage(PrescriptionStorage):
    """PrescriptionStorage's repository over in-memory stores (its queries beyond the Store protocol too)."""

    def __init__(self) -> None:
        # With the memories production has (storage.py), so round trips count as there.
        self.verdicts = MemoryStore(  # type: ignore[assignment]
            "prescription_verdicts",
            Verdict,
            keeps_trace=True,
            keeps_every_message=True,
            remembers_commands=False,
            memory=DocumentMemory(presumes_new=True),
        )
        self.histories = MemoryStore("prescription_patient_history", MedicationHistory, memory=DocumentMemory())  # type: ignore[assignment]
        self.formulary = MemoryStore("prescription_formulary", FormularyEntry)  # type: ignore[assignment]
        self.prescribers = MemoryStore("prescription_prescribers", PrescriberRecord)  # type: ignore[assignment]
        self.interactions = MemoryStore("prescription_interactions", Interaction)  # type: ignore[assignment]
        self.reference_stamp = MemoryStore("prescription_reference_stamp", ReferenceStamp)  # type: ignore[assignment]
        self._reference_check_s = 1.0
        self._reference = None
        self._reference_stamp = None
        self._reference_checked_at = float("-inf")

    @property
    def stores(self) -> list[MemoryStore[Any]]:
        return [
            self.verdicts,
            self.histories,
            self.formulary,
            self.prescribers,
            self.interactions,
            self.reference_stamp,
        ]  # type: ignore[list-item]

    async def held_verdicts(self) -> list[Verdict]:
        held = [s.state for s in await self.verdicts.all() if s.state and s.state.state is VerdictState.HELD]
        return sorted(held, key=lambda v: (v.held_at is None, v.held_at, v.prescription_id))

    def round_trips(self) -> int:
        return sum(store.round_trips for store in self.stores)

    def verdict(self, rx: str) -> Verdict | None:
        return self.stores[0].state_of(rx)

    def history(self, patient_id: str) -> MedicationHistory | None:
        return self.stores[1].state_of(patient_id)


class Published(stand_ins.Published):
    def body(self, rx: str, type_: str) -> dict[str, Any]:
        (body,) = self.bodies(rx, type_)
        return body


@pytest.fixture
async def storage() -> Storage:
    storage = Storage()
    for entry in b.make_formulary().values():
        await storage.save_formulary_entry(entry)
    await storage.save_prescriber(
        PrescriberRecord(licence_number=LICENCE, prescriber_id="DR-0042", name="Dr K", licensed_until=date(2030, 1, 1))
    )
    await storage.save_interaction(Interaction(class_a="anticoagulant", class_b="nsaid", severity="severe"))
    await storage.save_interaction(Interaction(class_a="ace-inhibitor", class_b="nsaid", severity="moderate"))
    for store in storage.stores:
        store.round_trips = 0
    return storage


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def service(storage: Storage, published: Published, clock: Clock) -> PrescriptionService:
    return PrescriptionService(storage, UnitOfWork(published, outbox_entry), clock=clock)


def accepted(rx: str, *items: tuple[str, int, int], patient: str = "PAT-1", message_id: str | None = None) -> Any:
    prescription = b.make_prescription(
        prescription_id=rx,
        items=[b.item_data(code, quantity, days) for code, quantity, days in items or [("MET500", 60, 30)]],
    )
    prescription = prescription.model_copy(
        update={"patient": prescription.patient.model_copy(update={"patient_id": patient})}
    )
    return PrescriptionAccepted(
        message_id=message_id or f"MSG-{rx}",
        correlation_id=rx,
        producer="consultation",
        sender_id="CLINIC-SYS-1",
        prescription=prescription,
    )


def cancellation(rx: str, message_id: str | None = None) -> CancellationAccepted:
    return CancellationAccepted(
        message_id=message_id or f"MSG-CANCEL-{rx}",
        correlation_id=rx,
        producer="consultation",
        sender_id="CLINIC-SYS-1",
        prescription_id=rx,
        reason="patient moved",
        requested_by="Dr Test",
    )


def review(rx: str, decision: str, pharmacist: str = "PH-1", message_id: str | None = None) -> ReviewDecided:
    return ReviewDecided(
        message_id=message_id or f"MSG-{decision}-{rx}-{pharmacist}",
        correlation_id=rx,
        producer="pharmacist-cli",
        prescription_id=rx,
        decision=decision,  # type: ignore[arg-type]
        pharmacist_id=pharmacist,
        note="looked at it",
    )


def records(*messages: Envelope) -> list[Record[Any]]:
    return [Record(m) for m in messages]


def outcomes(handled: list[Handled[Any]]) -> list[Outcome]:
    return [h.outcome for h in handled]


APPROVED, HELD, REJECTED, CANCELLED = (
    "prescription.approved",
    "prescription.held_for_review",
    "prescription.rejected",
    "prescription.cancelled",
)


# --- reference data, held in memory ------------------------------------------------------------------


def another_process(storage: Storage) -> Storage:
    """A second prescription process (or `pharmacy formulary load`): the same collections, its own memory."""
    other = Storage()
    for name in ("verdicts", "histories", "formulary", "prescribers", "interactions", "reference_stamp"):
        setattr(other, name, getattr(storage, name))
    return other


async def test_reference_data_is_read_once_then_looked_up_in_memory(
    service: PrescriptionService, storage: Storage
) -> None:
    await service.on_intake(records(accepted("RX-1")))
    before = storage.round_trips()
    await service.on_intake(records(accepted("RX-2", patient="PAT-2")))
    # histories load + save, the verdict's insert: no reference data, no stamp
    assert storage.round_trips() - before == 3


async def test_a_drug_added_by_another_process_is_known_at_once(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    await service.on_intake(records(accepted("RX-1")))
    new_drug = b.make_formulary()["MET500"].model_copy(update={"drug_code": "MET850", "name": "Metformin 850"})
    await another_process(storage).save_formulary_entry(new_drug)
    await service.on_intake(records(accepted("RX-2", ("MET850", 60, 30), patient="PAT-2")))
    assert published.of("RX-2") == [APPROVED]


async def test_a_change_to_a_known_entry_is_seen_once_the_stamp_is_looked_at_again(
    service: PrescriptionService, storage: Storage, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service.on_intake(records(accepted("RX-1")))
    limited = b.make_formulary()["MET500"].model_copy(update={"max_quantity": 10})
    await another_process(storage).save_formulary_entry(limited)
    await service.on_intake(records(accepted("RX-2", patient="PAT-2")))
    assert published.of("RX-2") == [APPROVED], "within reference_check_s of the last look: as it was"
    storage._reference_check_s = 0.0  # the interval passed
    await service.on_intake(records(accepted("RX-3", patient="PAT-3")))
    assert published.of("RX-3") == [REJECTED]


# --- checks ------------------------------------------------------------------------------------------


async def test_a_line_without_days_of_supply_is_approved_with_the_formularys_default(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    with_default = b.make_formulary()["MET500"].model_copy(update={"default_days_supply": 28})
    await storage.save_formulary_entry(with_default)
    message = accepted("RX-NO-DAYS")
    items = [message.prescription.items[0].model_copy(update={"days_supply": None})]
    message = message.model_copy(update={"prescription": message.prescription.model_copy(update={"items": items})})
    await service.on_intake(records(message))
    (line,) = published.body("RX-NO-DAYS", APPROVED)["lines"]
    assert line == {"drug_code": "MET500", "quantity": 60, "days_supply": 28}
    (supplied,) = storage.history("PAT-1").entries  # type: ignore[union-attr]
    assert supplied.days_supply == 28


async def test_a_batch_of_prescriptions_is_checked_with_a_few_round_trips(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    batch = [accepted(f"RX-{i}", patient=f"PAT-{i}") for i in range(50)]
    assert outcomes(await service.on_intake(records(*batch))) == [Outcome.APPLIED] * 50
    assert [e["type"] for e in published.entries] == [APPROVED] * 50
    assert storage.verdict("RX-7").state is VerdictState.APPROVED  # type: ignore[union-attr]
    assert [e.prescription_id for e in storage.history("PAT-7").entries] == ["RX-7"]  # type: ignore[union-attr]
    # verdicts before and their load: none (unknown to this process's memory, so presumed new);
    # reference: its stamp and the three collections read whole, once (4); histories load + save (2);
    # verdicts: one insert for the fifty (each keeps its own message ids: no applied-id list)
    assert storage.round_trips() == 7


async def test_allergy_and_interaction_rejections_and_a_hold(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    allergic = accepted("RX-ALLERGY", ("AMOX500", 21, 7), patient="PAT-A")  # the example patient: penicillin
    severe = accepted("RX-SEVERE", ("WAR5", 30, 30), ("IBU400", 20, 10), patient="PAT-B")
    controlled = accepted("RX-MORPHINE", ("MOR10", 20, 10), patient="PAT-C")
    handled = await service.on_intake(records(allergic, severe, controlled))
    assert outcomes(handled) == [Outcome.APPLIED] * 3
    reasons = {
        rx: [r["code"] for r in published.body(rx, t)["reasons"]]
        for rx, t in (("RX-ALLERGY", REJECTED), ("RX-SEVERE", REJECTED), ("RX-MORPHINE", HELD))
    }
    assert reasons == {
        "RX-ALLERGY": ["ALLERGY_CONFLICT"],
        "RX-SEVERE": ["SEVERE_INTERACTION"],
        "RX-MORPHINE": ["CONTROLLED_SUBSTANCE"],
    }
    held = storage.verdict("RX-MORPHINE")
    assert held is not None and held.state is VerdictState.HELD and held.prescription == controlled.prescription
    assert storage.history("PAT-A") is None and storage.history("PAT-C") is None, "only approvals enter the history"


async def test_a_patients_second_prescription_in_the_same_batch_sees_the_first(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    first = accepted("RX-1", ("IBU400", 20, 10), patient="PAT-H")
    second = accepted("RX-2", ("LIS10", 30, 30), patient="PAT-H")
    assert outcomes(await service.on_intake(records(first, second))) == [Outcome.APPLIED] * 2
    assert published.of("RX-1") == [APPROVED] and published.of("RX-2") == [HELD]
    (reason,) = published.body("RX-2", HELD)["reasons"]
    assert reason["code"] == "MODERATE_INTERACTION" and "RX-1" in reason["message"]


async def test_the_same_prescription_twice_is_decided_once(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    message = accepted("RX-1")
    assert outcomes(await service.on_intake(records(message, message))) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert outcomes(await service.on_intake(records(message))) in ([Outcome.DUPLICATE], [Outcome.UNCHANGED])
    assert published.of("RX-1") == [APPROVED]
    assert len(storage.history("PAT-1").entries) == 1  # type: ignore[union-attr]


async def test_a_history_that_cannot_be_written_fails_its_prescription_alone(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    storage.stores[1].fail_writes_of("PAT-BAD")
    storage.stores[1].let_another_writer_win("PAT-RACE")
    batch = [accepted("RX-OK"), accepted("RX-BAD", patient="PAT-BAD"), accepted("RX-RACE", patient="PAT-RACE")]
    assert outcomes(await service.on_intake(records(*batch))) == [Outcome.APPLIED, Outcome.FAILED, Outcome.APPLIED]
    assert storage.verdict("RX-BAD") is None, "no verdict without its history entry"
    assert published.of("RX-OK") == [APPROVED] and published.of("RX-RACE") == [APPROVED]
    storage.stores[1].heal("PAT-BAD")
    assert outcomes(await service.on_intake(records(batch[1]))) == [Outcome.APPLIED]


# --- pharmacists -------------------------------------------------------------------------------------


async def test_a_pharmacist_approves_or_rejects_a_hold_and_nothing_else(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    await service.on_intake(
        records(
            accepted("RX-YES", ("MOR10", 20, 10), ("INSGL", 2, 30), patient="PAT-Y"),
            accepted("RX-NO", ("MOR10", 20, 10), patient="PAT-N"),
            accepted("RX-PLAIN", patient="PAT-P"),
        )
    )
    approve = review("RX-YES", "approve", "PH-7")
    before = storage.round_trips()
    handled = await service.on_review(
        records(approve, approve, review("RX-NO", "reject", "PH-7"), review("RX-PLAIN", "approve"))
    )
    assert outcomes(handled) == [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.APPLIED, Outcome.REFUSED]
    assert handled[3].refusal is not None and handled[3].refusal.code == "not_under_review"
    # verdicts before (1), formulary (0: in memory), histories load + save (2: PAT-Y's was never
    # written), verdicts saved (1: loaded from memory, their own message ids kept on them), the
    # refusal decided on a copy from memory confirmed by a load (1), and the refused approval's
    # verdict read again (1): it may have left a supply to take back
    assert storage.round_trips() - before == 6
    assert published.of("RX-YES") == [HELD, APPROVED]
    released = published.body("RX-YES", APPROVED)
    assert (released["reviewed_by"], released["causation_id"]) == ("PH-7", approve.message_id)
    assert (released["delivery"]["cold_chain"], released["delivery"]["controlled"]) == (True, True)
    assert published.of("RX-NO") == [HELD, REJECTED] and published.of("RX-PLAIN") == [APPROVED]
    # Each pharmacist hears that their decision counted (the refused one: from its dead letter).
    assert [(a["pharmacist_id"], a["outcome"]) for a in published.answers("RX-YES")] == [("PH-7", "applied")]
    assert [a["answers_message_id"] for a in published.answers("RX-YES")] == [approve.message_id]
    assert published.answers("RX-PLAIN") == []
    verdict = storage.verdict("RX-YES")
    assert verdict is not None and (verdict.state, verdict.decided_by, verdict.prescription) == (
        VerdictState.APPROVED,
        "PH-7",
        None,
    )
    assert {e.drug_code for e in storage.history("PAT-Y").entries} == {"MOR10", "INSGL"}  # type: ignore[union-attr]
    assert storage.history("PAT-N") is None


async def test_an_approval_that_lost_to_another_decision_takes_its_supply_back(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    await service.on_intake(records(accepted("RX-1", ("MOR10", 20, 10))))
    handled = await service.on_review(records(review("RX-1", "reject", "PH-A"), review("RX-1", "approve", "PH-B")))
    assert outcomes(handled) == [Outcome.APPLIED, Outcome.REFUSED]
    assert published.of("RX-1") == [HELD, REJECTED]
    assert [e.cancelled for e in storage.history("PAT-1").entries] == [True]  # type: ignore[union-attr]


async def test_an_approval_sent_again_after_its_hold_ended_takes_back_what_its_first_attempt_recorded(
    service: PrescriptionService, storage: Storage
) -> None:
    """The first attempt recorded the supply, then the hold ended (here a rejection) before its
    verdict was written; the approval comes again: refused, and the supply it left is taken back."""
    await service.on_intake(records(accepted("RX-1", ("MOR10", 20, 10))))
    first = review("RX-1", "approve", "PH-B")
    held_state = storage.verdict("RX-1")
    approval_recorded_history = await service.on_review(records(first))
    assert storage.history("PAT-1") is not None
    # Undo the verdict as if only the history step had happened, then let a rejection win.
    storage.verdicts.put("RX-1", held_state)  # type: ignore[arg-type]
    await service.on_review(records(review("RX-1", "reject", "PH-A")))
    handled = await service.on_review(records(first.model_copy(update={"message_id": "MSG-APPROVE-AGAIN"})))
    assert outcomes(approval_recorded_history) == [Outcome.APPLIED]
    assert outcomes(handled) == [Outcome.REFUSED]
    assert all(e.cancelled for e in storage.history("PAT-1").entries)  # type: ignore[union-attr]


# --- cancellations -----------------------------------------------------------------------------------


async def test_cancellations_of_approved_held_rejected_and_unknown_prescriptions(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    await service.on_intake(
        records(
            accepted("RX-OK", patient="PAT-OK"),
            accepted("RX-HELD", ("MOR10", 20, 10), patient="PAT-H"),
            accepted("RX-BAD", ("NOPE", 1, 1), patient="PAT-B"),
        )
    )
    by_pharmacist = CancellationOrdered(
        correlation_id="RX-HELD",
        producer="pharmacist-cli",
        prescription_id="RX-HELD",
        pharmacist_id="PH-2",
        reason="doubt",
    )
    on_intake = await service.on_intake(
        records(cancellation("RX-OK"), cancellation("RX-BAD"), cancellation("RX-EARLY"))
    )
    assert outcomes(on_intake) == [Outcome.APPLIED, Outcome.UNCHANGED, Outcome.APPLIED]
    assert outcomes(await service.on_review(records(by_pharmacist))) == [Outcome.APPLIED]
    assert published.body("RX-OK", CANCELLED)["was_approved"] is True
    assert (
        published.body("RX-HELD", CANCELLED)["requested_by"],
        published.body("RX-HELD", CANCELLED)["was_approved"],
    ) == (
        "PH-2",
        False,
    )
    assert published.of("RX-BAD") == [REJECTED] and published.of("RX-EARLY") == [CANCELLED]
    assert [(e.prescription_id, e.cancelled) for e in storage.history("PAT-OK").entries] == [("RX-OK", True)]  # type: ignore[union-attr]
    # checked after its cancellation: dropped, nothing published, nothing left active
    assert outcomes(await service.on_intake(records(accepted("RX-EARLY", patient="PAT-E")))) == [Outcome.UNCHANGED]
    assert published.of("RX-EARLY") == [CANCELLED]
    assert storage.history("PAT-E") is None


async def test_a_check_and_its_cancellation_in_one_batch(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    handled = await service.on_intake(
        records(cancellation("RX-2"), accepted("RX-2"), accepted("RX-1"), cancellation("RX-1"))
    )
    assert outcomes(handled) == [Outcome.APPLIED, Outcome.UNCHANGED, Outcome.APPLIED, Outcome.APPLIED]
    assert published.of("RX-1") == [APPROVED, CANCELLED] and published.of("RX-2") == [CANCELLED]
    entries = storage.history("PAT-1").entries  # type: ignore[union-attr]
    # RX-2 was cancelled before its checks: they never ran, so it never entered the history
    assert {e.prescription_id: e.active_at(NOW) for e in entries} == {"RX-1": False}


async def test_a_cancellation_whose_withdrawal_failed_withdraws_when_delivered_again(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    await service.on_intake(records(accepted("RX-1")))
    storage.stores[1].fail_writes_of("PAT-1")
    message = cancellation("RX-1")
    assert outcomes(await service.on_intake(records(message))) == [Outcome.FAILED]
    assert storage.verdict("RX-1").state is VerdictState.CANCELLED  # type: ignore[union-attr]
    assert [e.cancelled for e in storage.history("PAT-1").entries] == [False]  # type: ignore[union-attr]
    storage.stores[1].heal("PAT-1")
    assert outcomes(await service.on_intake(records(message))) == [Outcome.DUPLICATE]
    assert [e.cancelled for e in storage.history("PAT-1").entries] == [True]  # type: ignore[union-attr]
    assert published.of("RX-1") == [APPROVED, CANCELLED]


async def test_a_refusal_beside_valid_neighbours(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    await service.on_intake(
        records(accepted("RX-H1", ("MOR10", 20, 10)), accepted("RX-H2", ("MOR10", 20, 10), patient="PAT-2"))
    )
    handled = await service.on_review(
        records(review("RX-H1", "approve"), review("RX-NEVER", "approve"), review("RX-H2", "reject"))
    )
    assert outcomes(handled) == [Outcome.APPLIED, Outcome.REFUSED, Outcome.APPLIED]
    assert published.of("RX-H1") == [HELD, APPROVED] and published.of("RX-H2") == [HELD, REJECTED]
    assert published.of("RX-NEVER") == []


# --- supplies that never reached the patient ---------------------------------------------------------


async def test_a_supply_that_never_reached_the_patient_no_longer_counts(
    service: PrescriptionService, storage: Storage, published: Published
) -> None:
    rx = b.RX_ID
    await service.on_intake(records(accepted(rx, patient="PAT-S")))
    failed, abandoned = b.reservation_failed(prescription_id=rx), b.abandoned(prescription_id=rx)
    unknown = b.reservation_failed(prescription_id="RX-UNKNOWN")
    before = storage.round_trips()
    handled = await service.on_supply_event(records(b.reserved(prescription_id=rx), failed, failed, unknown))
    assert outcomes(handled) == [Outcome.UNCHANGED, Outcome.APPLIED, Outcome.DUPLICATE, Outcome.UNCHANGED]
    # verdicts (1), histories applied + save + applied (3: PAT-S's is in memory)
    assert storage.round_trips() - before == 4
    assert [e.not_supplied for e in storage.history("PAT-S").entries] == ["OUT_OF_STOCK"]  # type: ignore[union-attr]
    assert outcomes(await service.on_supply_event(records(abandoned))) == [Outcome.UNCHANGED], "already not supplied"
    assert outcomes(await service.on_supply_event(records(failed))) == [Outcome.DUPLICATE]
    # the refill the patient still needs is not held as too soon
    await service.on_intake(records(accepted("RX-AGAIN", patient="PAT-S")))
    assert published.of("RX-AGAIN") == [APPROVED]
    before = storage.round_trips()
    assert outcomes(await service.on_supply_event(records(b.restocked()))) == [Outcome.UNCHANGED]
    assert storage.round_trips() == before, "events of no interest cost nothing"


# --- review deadlines --------------------------------------------------------------------------------


async def test_an_undecided_hold_escalates_once_then_expires_once(
    service: PrescriptionService, storage: Storage, published: Published, clock: Clock
) -> None:
    await service.on_intake(
        records(accepted("RX-W", ("MOR10", 20, 10)), accepted("RX-V", ("MOR10", 20, 10), patient="PAT-2"))
    )
    clock.now = NOW + timedelta(hours=4) - timedelta(seconds=1)
    before = storage.round_trips()
    await service.sweep_reviews()
    assert storage.round_trips() - before == 1, "nothing due: one query"
    clock.now = NOW + timedelta(hours=4)
    before = storage.round_trips()
    await service.sweep_reviews()
    assert storage.round_trips() - before == 2, "the queue, then one save for both (loaded from memory)"
    await service.sweep_reviews()
    assert published.of("RX-W") == [HELD, "prescription.review_escalated"]
    clock.now = NOW + timedelta(hours=24)
    await service.sweep_reviews()
    await service.sweep_reviews()
    assert published.of("RX-W") == [HELD, "prescription.review_escalated", REJECTED]
    assert [r["code"] for r in published.body("RX-W", REJECTED)["reasons"]] == ["REVIEW_EXPIRED"]
    verdict = storage.verdict("RX-W")
    assert verdict is not None and (verdict.state, verdict.escalated, verdict.decided_by) == (
        VerdictState.REJECTED,
        True,
        "review-timeout",
    )
    # a pharmacist too late is refused
    handled = await service.on_review(records(review("RX-V", "approve")))
    assert outcomes(handled) == [Outcome.REFUSED]


async def test_a_sweep_that_loses_a_race_acts_only_if_still_due(
    service: PrescriptionService, storage: Storage, published: Published, clock: Clock
) -> None:
    await service.on_intake(records(accepted("RX-W", ("MOR10", 20, 10))))
    clock.now = NOW + timedelta(hours=4)
    storage.stores[0].let_another_writer_win("RX-W")
    await service.sweep_reviews()
    assert published.of("RX-W") == [HELD, "prescription.review_escalated"]


def test_a_pharmacist_hears_why_a_signed_decision_was_refused_and_a_forger_hears_nothing():
    headers = {"x-sender-id": "PH-7", "message-id": "MSG-D1"}
    answer = refused_decision_answer(headers, b"{}", b"RX-PLAIN", "not_under_review", "RX-PLAIN is not held")
    assert answer is not None
    assert (answer.pharmacist_id, answer.prescription_id, answer.answers_message_id, answer.outcome) == (
        "PH-7",
        "RX-PLAIN",
        "MSG-D1",
        "refused",
    )
    assert refused_decision_answer(headers, b"{}", b"RX-PLAIN", "unsigned", "no signature") is None
