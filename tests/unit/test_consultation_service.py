"""The consultation service's use cases on the in-memory store: intake, cancellation and status,
each a batch at a time, in milliseconds. The real broker and database are in tests/integration."""

from __future__ import annotations

from typing import Any

import pytest

from pharmacy_contracts import Envelope
from pharmacy_contracts.consultation import CancellationAccepted, PrescriptionAccepted, SenderReceipt
from pharmacy_contracts.lifecycle import Stage
from services.consultation.domain import IntakeRecord, MessageClaim, PrescriptionStatus
from services.consultation.service import ConsultationService, refusal_receipt
from services.runtime.relay import outbox_entry
from services.runtime.store import DocumentMemory, MemoryStore
from services.runtime.unit_of_work import Outcome, Record, UnitOfWork
from tests.support.stand_ins import Published
from tests.unit import builders as b


class Storage:
    """ConsultationStorage's shape, in memory."""

    def __init__(self) -> None:
        # With the options production has (storage.py), so round trips and duplicates count as there.
        self.intake: MemoryStore[IntakeRecord] = MemoryStore(
            "consultation_prescriptions",
            IntakeRecord,
            keeps_trace=True,
            remembers_commands=False,
            memory=DocumentMemory(presumes_new=True),
        )
        self.messages: MemoryStore[MessageClaim] = MemoryStore(
            "consultation_messages", MessageClaim, remembers_commands=False, memory=DocumentMemory(presumes_new=True)
        )
        self.status: MemoryStore[PrescriptionStatus] = MemoryStore(
            "consultation_status",
            PrescriptionStatus,
            remembers_commands=False,
            memory=DocumentMemory(presumes_new=True),
        )

    def round_trips(self) -> int:
        return self.intake.round_trips + self.messages.round_trips + self.status.round_trips


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def service(storage: Storage, published: Published) -> ConsultationService:
    return ConsultationService(
        storage,  # type: ignore[arg-type]
        UnitOfWork(published, outbox_entry),
        clock=lambda: b.at(0),
        sender_keys={},
        delivery_code_key=b"key",
    )


def submitted(rx: str, message_id: str | None = None, **prescription: Any) -> Any:
    return b.make_submitted(
        b.make_prescription(prescription_id=rx, **prescription), message_id=message_id or f"MSG-{rx}"
    )


async def outcomes(service: ConsultationService, *messages: Envelope) -> list[Outcome]:
    return [h.outcome for h in await service.receive_from_upstream([Record(m) for m in messages])]


async def test_a_batch_of_prescriptions_is_taken_in_with_a_few_round_trips(
    service: ConsultationService, storage: Storage, published: Published
) -> None:
    batch = [submitted(f"RX-{i}") for i in range(50)]
    assert await outcomes(service, *batch) == [Outcome.APPLIED] * 50
    accepted, receipt = (m.model_fields["type"].default for m in (PrescriptionAccepted, SenderReceipt))
    assert published.types == [accepted, receipt] * 50, "each taken in, and its sender told so"
    assert storage.intake.state_of("RX-7") is not None
    # claims saved, then intake looked up, loaded, saved and its message ids recorded: not 50 of each
    assert storage.round_trips() <= 8


async def test_the_same_message_again_changes_nothing(service: ConsultationService, published: Published) -> None:
    message = submitted("RX-1")
    assert await outcomes(service, message, message) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert await outcomes(service, message) in ([Outcome.DUPLICATE], [Outcome.UNCHANGED])
    assert published.types == ["consultation.prescription_accepted", "consultation.receipt"], "answered once"


async def test_a_message_id_reused_for_other_content_is_refused(service: ConsultationService) -> None:
    await outcomes(service, submitted("RX-1", message_id="MSG-SAME"))
    [handled] = await service.receive_from_upstream([Record(submitted("RX-2", message_id="MSG-SAME"))])
    assert handled.outcome is Outcome.REFUSED and handled.refusal is not None
    assert handled.refusal.code == "message_id_replayed"


async def test_a_prescription_id_reused_by_another_message_is_refused(
    service: ConsultationService, storage: Storage
) -> None:
    await outcomes(service, submitted("RX-1"))
    [handled] = await service.receive_from_upstream([Record(submitted("RX-1", message_id="MSG-OTHER"))])
    assert handled.refusal is not None and handled.refusal.code == "prescription_id_reused"
    assert storage.intake.state_of("RX-1").message_id == "MSG-RX-1"  # type: ignore[union-attr]


async def test_a_refused_message_leaves_its_neighbours_taken_in(service: ConsultationService) -> None:
    await outcomes(service, submitted("RX-1"))
    reused, fine = submitted("RX-1", message_id="MSG-OTHER"), submitted("RX-2")
    assert await outcomes(service, reused, fine) == [Outcome.REFUSED, Outcome.APPLIED]


async def test_only_the_sender_cancels_and_only_once(service: ConsultationService, published: Published) -> None:
    await outcomes(service, submitted("RX-1"))
    stranger = b.cancellation_requested("RX-1", message_id="MSG-C1", sender_id="OTHER-SYS")
    unknown = b.cancellation_requested("RX-NONE", message_id="MSG-C2")
    first = b.cancellation_requested("RX-1", message_id="MSG-C3")
    again = b.cancellation_requested("RX-1", message_id="MSG-C4")
    handled = await service.receive_from_upstream([Record(m) for m in (stranger, unknown, first, again)])
    assert [h.outcome for h in handled] == [Outcome.REFUSED, Outcome.REFUSED, Outcome.APPLIED, Outcome.UNCHANGED]
    assert [h.refusal.code for h in handled[:2] if h.refusal] == ["not_your_prescription", "unknown_prescription"]
    assert published.types.count(CancellationAccepted.model_fields["type"].default) == 1


async def test_the_status_follows_a_prescription_to_its_end_in_one_round(
    service: ConsultationService, storage: Storage
) -> None:
    events = [b.accepted(0), b.approved(1), b.reserved(2), b.assigned(3), b.picked_up(5), b.completed(7)]
    before = storage.round_trips()
    handled = await service.track([Record(e) for e in events])
    assert [h.outcome for h in handled] == [Outcome.APPLIED] * len(events)
    status = storage.status.state_of(b.RX_ID)
    assert status is not None and status.stage is Stage.DELIVERED and status.terminal
    assert status.delivery_code is not None
    assert [h.result for h in handled] == [None] * 5 + [Stage.DELIVERED.value], "finished once, by the last"
    # presumed new: no load, no applied ids; one insert for the six
    assert storage.round_trips() - before == 1
    # events about no prescription are let through untouched
    [restock] = await service.track([Record(b.restocked())])
    assert restock.outcome is Outcome.UNCHANGED


async def test_the_sender_is_told_each_change_of_stage_once_with_its_fhir_statuses(
    service: ConsultationService, published: Published
) -> None:
    events = [b.accepted(0), b.approved(1), b.reserved(2), b.assigned(3), b.picked_up(5), b.completed(7)]
    await service.track([Record(e) for e in events])
    told = published.answers(b.RX_ID)
    assert [(r["stage"], r["terminal"]) for r in told] == [
        ("approved", False),
        ("reserved", False),
        ("courier_assigned", False),
        ("picked_up", False),
        ("delivered", True),
    ], "each change after the acceptance receipt, none for 'received'"
    assert {r["sender_id"] for r in told} == {"CLINIC-SYS-1"}
    assert {r["answers_message_id"] for r in told} == {events[0].causation_id}
    receipts = [e for e in published.entries if e["type"] == "consultation.status_receipt"]
    assert [(e["topic"], e["key"]) for e in receipts] == [("consultation.receipts.v1", "CLINIC-SYS-1")] * 5
    assert [
        (r["medication_request_status"], r["medication_dispense_status"], r["supply_delivery_status"]) for r in told
    ] == [
        ("active", None, None),
        ("active", "preparation", None),
        ("active", "preparation", "in-progress"),
        ("active", "in-progress", "in-progress"),
        ("completed", "completed", "completed"),
    ]
    assert "delivery_code" not in str(told) and "patient" not in str(told)
    # The same events again (a redelivery): absorbed, nobody told twice.
    await service.track([Record(e) for e in events])
    assert len(published.answers(b.RX_ID)) == 5


async def test_a_hold_and_a_rejection_are_told_with_their_reasons(
    service: ConsultationService, published: Published
) -> None:
    await service.track([Record(b.accepted(0)), Record(b.rejected(1))])
    [rejected] = published.answers(b.RX_ID)
    assert (rejected["stage"], rejected["terminal"], rejected["medication_request_status"]) == (
        "rejected",
        True,
        "cancelled",
    )
    assert rejected["reasons"] and all(":" in reason for reason in rejected["reasons"])


async def test_changes_read_before_the_acceptance_are_told_once_the_sender_is_known(
    service: ConsultationService, published: Published
) -> None:
    """Four topics, no order between them: the approval and the reservation may be read first."""
    await service.track([Record(b.approved(1)), Record(b.reserved(2))])
    assert published.answers(b.RX_ID) == [], "nobody to tell yet"
    await service.track([Record(b.accepted(0)), Record(b.assigned(3))])
    assert [r["stage"] for r in published.answers(b.RX_ID)] == ["approved", "reserved", "courier_assigned"]


async def test_a_stage_read_late_from_another_topic_is_still_told_with_when_it_happened(
    service: ConsultationService, published: Published
) -> None:
    """The courier's offer may be read before the reservation that preceded it."""
    await service.track([Record(b.accepted(0)), Record(b.approved(1)), Record(b.assigned(3)), Record(b.reserved(2))])
    await service.track([Record(b.completed(7)), Record(b.rejected(8))])
    told = published.answers(b.RX_ID)
    assert [(r["stage"], r["occurred_at"][14:16]) for r in told] == [
        ("approved", "01"),
        ("courier_assigned", "03"),
        ("reserved", "02"),
        ("delivered", "07"),
    ], "the late reservation is told; nothing after the end but such late news"


async def test_a_receipt_told_again_is_the_same_receipt(service: ConsultationService, published: Published) -> None:
    """Published before the status is saved: a save that fails tells the change again, with the same id."""
    events = [b.accepted(0), b.approved(1)]
    await service.track([Record(e) for e in events])
    first = published.answers(b.RX_ID)
    again = ConsultationService(
        Storage(),  # type: ignore[arg-type]
        UnitOfWork(published, outbox_entry),
        clock=lambda: b.at(0),
        sender_keys={},
        delivery_code_key=b"key",
    )
    await again.track([Record(e) for e in events])
    assert published.answers(b.RX_ID) == first * 2


# --- answers to senders -----------------------------------------------------------------------------


def test_a_verified_sender_hears_why_its_message_was_refused_at_the_door():
    headers = {"x-sender-id": "hospital-a", "message-id": "MSG-77"}
    receipt = refusal_receipt(headers, b"RX-77", "fhir_unmappable", "Patient/p1 has no current physical address")
    assert receipt is not None
    assert (receipt.sender_id, receipt.answers_message_id, receipt.prescription_id, receipt.outcome) == (
        "hospital-a",
        "MSG-77",
        "RX-77",
        "refused",
    )
    assert (receipt.code, receipt.detail) == ("fhir_unmappable", "Patient/p1 has no current physical address")


def test_a_refused_fhir_message_is_also_answered_with_an_operation_outcome():
    headers = {"x-sender-id": "hospital-a", "message-id": "MSG-78", "content-type": "application/fhir+json"}
    receipt = refusal_receipt(headers, b"RX-78", "fhir_unmappable", "Patient/p1 has no current physical address")
    assert receipt is not None and receipt.operation_outcome is not None
    [issue] = receipt.operation_outcome["issue"]
    assert (issue["severity"], issue["code"], issue["diagnostics"]) == (
        "error",
        "invalid",
        "Patient/p1 has no current physical address",
    )
    assert issue["details"]["coding"][0]["code"] == "fhir_unmappable"
    native = refusal_receipt({"x-sender-id": "hospital-a"}, b"RX-78", "prescription_id_reused", "again")
    assert native is not None and native.operation_outcome is None


@pytest.mark.parametrize("reason", ["unsigned", "unknown_key", "bad_signature", "sender_mismatch", "too_large"])
def test_unsigned_forged_or_unread_messages_get_no_answer(reason: str):
    assert refusal_receipt({"x-sender-id": "hospital-a"}, b"RX-1", reason, "why") is None


def test_ids_that_are_not_ids_are_left_out_of_the_answer():
    receipt = refusal_receipt(
        {"x-sender-id": "hospital-a", "message-id": "not an id!"}, b"\xff\xfe", "contract_violation", "x"
    )
    assert receipt is not None and (receipt.answers_message_id, receipt.prescription_id) == (None, None)
