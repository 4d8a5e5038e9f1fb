"""What the patient is told (patient.notifications.v1) and the hospital's follow-up calls
(consultation.follow_up_requested): decided from the status alone, once per stage, published by the
status projection on the in-memory store."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from pharmacy_contracts import Envelope
from pharmacy_contracts.consultation import Prescription, PrescriptionAccepted
from pharmacy_contracts.lifecycle import Stage
from pharmacy_contracts.patient import PatientNotified
from services.consultation import domain
from services.consultation.domain import Notice, PrescriptionStatus
from services.consultation.service import ConsultationService
from services.runtime.delivery_codes import delivery_code
from services.runtime.relay import outbox_entry
from services.runtime.unit_of_work import Record, UnitOfWork
from tests.support.stand_ins import Published
from tests.unit import builders as b
from tests.unit.test_consultation_domain import INTERACTION, held, reviewed_rejection
from tests.unit.test_consultation_service import Storage

PHONE = b.prescription_data()["patient"]["phone"]
NOTIFIED = "patient.notified"
FOLLOW_UP = "consultation.follow_up_requested"


def accepted(minute: int = 0, prescription_id: str = b.RX_ID, **patient: Any) -> PrescriptionAccepted:
    """The acceptance, its patient changed by `patient` (phone=None, preferred_language="zh"...)."""
    data = b.prescription_data(prescription_id=prescription_id)
    data["patient"] = data["patient"] | patient
    return PrescriptionAccepted(
        **b.envelope_fields(
            message_id=f"MSG-{prescription_id}-{minute}", occurred_at=b.at(minute), correlation_id=prescription_id
        ),
        sender_id="CLINIC-SYS-1",
        prescription=Prescription.model_validate(data),
    )


def abandoned(minute: int) -> Envelope:
    """Given up, in the same decision as the last failure (so at the same time, under its own id)."""
    return b.abandoned(minute).model_copy(update={"message_id": f"MSG-ABANDONED-{minute}"})


def on_the_way() -> list[Envelope]:
    return [b.approved(1), b.reserved(2), b.assigned(3), b.picked_up(5)]


def notices(*events: Envelope, default_language: str = "ug") -> list[Notice]:
    """Every notice the events make due, folded one by one as the status projection does."""
    status: PrescriptionStatus | None = None
    told: list[Notice] = []
    for event in events:
        folded = domain.track_step(status, event, delivery_code="493017")
        if folded is None:
            continue
        told += domain.to_notify(status, folded[0], event, default_language=default_language)  # type: ignore[arg-type]
        status = folded[0]
    return told


def follow_ups(*events: Envelope) -> list[domain.FollowUp]:
    status: PrescriptionStatus | None = None
    due: list[domain.FollowUp] = []
    for event in events:
        folded = domain.track_step(status, event)
        if folded is None:
            continue
        found = domain.follow_up(status, folded[0])
        due += [found] if found is not None else []
        status = folded[0]
    return due


# --- which notices, decided from the status ---------------------------------------------------------

KINDS: dict[str, tuple[list[Envelope], list[str]]] = {
    "accepted": ([accepted(0)], ["accepted"]),
    "held for a pharmacist": ([accepted(0), held(1)], ["accepted", "held_for_pharmacist"]),
    "out for delivery": ([accepted(0), *on_the_way()], ["accepted", "out_for_delivery"]),
    "failed attempt": (
        [accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=True)],
        ["accepted", "out_for_delivery", "failed_attempt"],
    ),
    "delivered": ([accepted(0), *on_the_way(), b.completed(7)], ["accepted", "out_for_delivery", "delivered"]),
    "cancelled": ([accepted(0), b.approved(1), b.cancelled(2)], ["accepted", "cancelled"]),
    "refused": ([accepted(0), b.rejected(1)], ["accepted", "refused"]),
    "out of stock": ([accepted(0), b.approved(1), b.reservation_failed(2)], ["accepted", "out_of_stock"]),
    "undeliverable": (
        [accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=False), abandoned(6)],
        ["accepted", "out_for_delivery", "undeliverable"],
    ),
}


@pytest.mark.parametrize("case", KINDS, ids=list(KINDS))
def test_each_stage_a_patient_should_know_of_is_told_once(case: str):
    events, kinds = KINDS[case]
    assert [n.kind for n in notices(*events)] == kinds


def test_the_approval_reservation_and_offer_are_not_the_patients_business():
    assert [n.kind for n in notices(accepted(0), b.approved(1), b.reserved(2), b.assigned(3))] == ["accepted"]


def test_a_failed_attempt_says_why_and_that_another_comes_the_last_is_told_once_as_undeliverable():
    [_, _, failed] = notices(accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=True))
    assert (failed.kind, failed.reason, failed.will_retry) == ("failed_attempt", "patient_absent", True)
    last = notices(accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=False), abandoned(6))[-1]
    assert (last.kind, last.reason, last.will_retry) == ("undeliverable", "address_not_found", False)


def test_a_second_attempt_is_on_the_way_again():
    again = [b.assigned(7, attempt=2), b.picked_up(8, attempt=2), b.completed(9, attempt=2)]
    told = notices(accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=True), *again)
    assert [n.kind for n in told] == ["accepted", "out_for_delivery", "failed_attempt", "out_for_delivery", "delivered"]
    assert len({(n.kind, n.at) for n in told}) == 5, "each its own message"


@pytest.mark.parametrize(
    ("rejection", "reason"),
    [
        (b.rejected(1), "needs_correction"),
        (reviewed_rejection(62), "pharmacist_declined"),
        (reviewed_rejection(62, code="REVIEW_EXPIRED", pharmacist=None), "review_expired"),
        (reviewed_rejection(62, code="PRESCRIPTION_EXPIRED", pharmacist=None), "expired"),
        (reviewed_rejection(62, code="ALLERGY_CONFLICT", pharmacist=None), "not_safe"),
        (reviewed_rejection(62, code="REFILL_TOO_SOON", pharmacist=None), "too_soon"),
        (reviewed_rejection(62, code="PRESCRIBER_UNKNOWN", pharmacist=None), "needs_correction"),
    ],
    ids=["unknown-drug", "pharmacist", "review-expired", "expired", "allergy", "too-soon", "prescriber"],
)
def test_a_refusal_is_told_as_a_reason_a_patient_understands(rejection, reason):
    [_, refused] = notices(accepted(0), rejection)
    assert (refused.kind, refused.reason) == ("refused", reason)


def test_the_reason_a_person_gave_comes_before_what_the_checks_found():
    assert domain.refusal_reason(["ALLERGY_CONFLICT: x", "PHARMACIST_REJECTED: y"]) == "pharmacist_declined"
    assert domain.refusal_reason(["QUANTITY_ABOVE_MAXIMUM: x", "PRESCRIPTION_EXPIRED: y"]) == "expired"


def test_a_patient_without_a_phone_is_told_nothing():
    assert notices(accepted(0, phone=None), *on_the_way(), b.completed(7)) == []


def test_the_patients_language_and_else_the_default():
    assert {n.language for n in notices(accepted(0, preferred_language="zh"), held(1))} == {"zh"}
    assert {n.language for n in notices(accepted(0), held(1), default_language="en")} == {"en"}


def test_an_acceptance_read_late_tells_it_was_received_and_where_it_stands_now():
    """Four topics, no order between them: the courier's pickup may be read before the acceptance."""
    told = notices(*on_the_way(), accepted(0))
    assert [(n.kind, n.at) for n in told] == [("accepted", b.at(0)), ("out_for_delivery", b.at(5))]
    # The same notices as when read in order: the same message ids.
    in_order = notices(accepted(0), *on_the_way())
    assert [(n.kind, n.at) for n in in_order] == [(n.kind, n.at) for n in told]
    # Already over: only how it ended.
    ended = notices(b.approved(1), b.reservation_failed(2), accepted(0))
    assert [(n.kind, n.at) for n in ended] == [("out_of_stock", b.at(2))]
    # A hold read first, then released: the patient hears only that it was received.
    assert [n.kind for n in notices(held(1), b.approved(2), accepted(0))] == ["accepted"]


def test_news_read_late_from_another_topic_tells_the_patient_nothing():
    late = notices(accepted(0), b.approved(1), b.assigned(3), b.picked_up(5), b.reserved(2), held(1))
    assert [n.kind for n in late] == ["accepted", "out_for_delivery"]
    after_the_end = notices(accepted(0), b.rejected(1), b.approved(1), b.cancelled(30))
    assert [n.kind for n in after_the_end] == ["accepted", "refused"]


# --- the hospital's follow-up -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "stage", "reason"),
    [
        (
            [accepted(0), b.approved(1), b.reservation_failed(2)],
            Stage.OUT_OF_STOCK,
            "Out of stock: MET500 needs 180, best warehouse has 40. Call the patient",
        ),
        (
            [accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=False), abandoned(6)],
            Stage.UNDELIVERABLE,
            "Not delivered: 3 attempts, last failure address_not_found. Call the patient to check the address",
        ),
    ],
    ids=["out-of-stock", "undeliverable"],
)
def test_an_ending_without_the_medicine_asks_the_hospital_to_call_the_patient_once(events, stage, reason):
    [due] = follow_ups(*events, *events)
    assert due.stage is stage and due.reason.startswith(reason)
    assert PHONE not in due.reason


@pytest.mark.parametrize(
    "events",
    [
        [accepted(0), *on_the_way(), b.completed(7)],
        [accepted(0), b.rejected(1)],
        [accepted(0), b.approved(1), b.cancelled(2)],
        [accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=True)],
    ],
    ids=["delivered", "rejected", "cancelled", "failed-once"],
)
def test_other_endings_need_no_call(events):
    assert follow_ups(*events) == []


def test_a_follow_up_waits_for_the_acceptance_that_names_the_hospital():
    [due] = follow_ups(b.approved(1), b.reservation_failed(2), accepted(0))
    assert (due.stage, due.at) == (Stage.OUT_OF_STOCK, b.at(2))


# --- published by the status projection -------------------------------------------------------------


@pytest.fixture
def published() -> Published:
    return Published()


def make_service(published: Published, **options: Any) -> ConsultationService:
    return ConsultationService(
        Storage(),  # type: ignore[arg-type]
        UnitOfWork(published, outbox_entry),
        clock=lambda: b.at(0),
        sender_keys={},
        delivery_code_key=b"key",
        **options,
    )


@pytest.fixture
def service(published: Published) -> ConsultationService:
    return make_service(published)


def told(published: Published, prescription_id: str = b.RX_ID) -> list[PatientNotified]:
    return [PatientNotified.model_validate(body) for body in published.bodies(prescription_id, NOTIFIED)]


@pytest.mark.parametrize("case", KINDS, ids=list(KINDS))
async def test_each_notification_is_published_to_the_patients_phone_in_their_language(
    service: ConsultationService, published: Published, case: str
):
    events, kinds = KINDS[case]
    await service.track([Record(e) for e in events])
    notifications = told(published)
    assert [n.kind for n in notifications] == kinds
    assert {(n.phone, n.language, n.prescription_id) for n in notifications} == {(PHONE, "ug", b.RX_ID)}
    entries = [e for e in published.entries if e["type"] == NOTIFIED]
    assert {(e["topic"], e["key"]) for e in entries} == {("patient.notifications.v1", b.RX_ID)}
    for notification in notifications:
        assert b.RX_ID in notification.text and notification.text.isprintable()
        assert "MET500" not in notification.text and "E11.9" not in notification.text and "%(" not in notification.text
    # A redelivery of every event tells nobody again.
    await service.track([Record(e) for e in events])
    assert [n.kind for n in told(published)] == kinds


async def test_the_delivery_code_goes_with_the_medicine_on_its_way_and_nowhere_else(
    service: ConsultationService, published: Published
):
    events = [accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=True), b.assigned(7, attempt=2)]
    await service.track([Record(e) for e in [*events, b.picked_up(8, attempt=2), b.completed(9, attempt=2)]])
    code = delivery_code(b"key", b.RX_ID)
    with_code = [n for n in told(published) if n.delivery_code is not None]
    assert [(n.kind, n.delivery_code) for n in with_code] == [("out_for_delivery", code)] * 2
    assert all(code in n.text for n in with_code)
    others = [
        e for e in published.entries if e["type"] != NOTIFIED or json.loads(e["body"])["kind"] != "out_for_delivery"
    ]
    assert not [e["type"] for e in others if code in e["body"]]


async def test_the_phone_is_only_in_the_patients_notifications(service: ConsultationService, published: Published):
    events = [accepted(0), *on_the_way(), b.delivery_failed(6, will_retry=False), abandoned(6)]
    with capture_logs() as logs:
        await service.track([Record(e) for e in events])
    assert {e["type"] for e in published.entries} == {NOTIFIED, FOLLOW_UP, "consultation.status_receipt"}
    assert {e["type"] for e in published.entries if PHONE in e["body"]} == {NOTIFIED}
    assert PHONE not in str(logs)


async def test_a_patient_without_a_phone_gets_nothing_and_the_log_says_so_without_a_phone(
    service: ConsultationService, published: Published
):
    with capture_logs() as logs:
        await service.track([Record(e) for e in [accepted(0, phone=None), *on_the_way(), b.completed(7)]])
    assert told(published) == []
    assert [line["event"] for line in logs] == ["the patient gave no phone: no notifications will be sent"]
    assert len(published.answers(b.RX_ID)) == 5, "the sender is told all the same"


async def test_the_patients_language_else_the_services_default(published: Published):
    service = make_service(published, default_patient_language="zh")
    await service.track([Record(accepted(0, prescription_id="RX-ZH"))])
    await service.track([Record(accepted(0, prescription_id="RX-EN", preferred_language="en"))])
    assert [n.language for n in told(published, "RX-ZH")] == ["zh"]
    assert [n.language for n in told(published, "RX-EN")] == ["en"]
    assert "处方" in told(published, "RX-ZH")[0].text
    assert told(published, "RX-EN")[0].text.startswith("We received your prescription RX-EN.")


async def test_a_notification_told_again_is_the_same_message(published: Published):
    """Published before the status is saved: a save that fails tells it again, with the same id."""
    events = [accepted(0), held(1, reasons=(INTERACTION,)), *on_the_way()]
    await make_service(published).track([Record(e) for e in events])
    first = told(published)
    await make_service(published).track([Record(e) for e in events])
    assert told(published) == first * 2
    assert len({n.message_id for n in first}) == 3


async def test_the_hospital_is_asked_to_call_once_keyed_by_its_sender_id(
    service: ConsultationService, published: Published
):
    events = [accepted(0), b.approved(1), b.reservation_failed(2)]
    await service.track([Record(e) for e in events])
    await service.track([Record(e) for e in events])
    [entry] = [e for e in published.entries if e["type"] == FOLLOW_UP]
    assert (entry["topic"], entry["key"]) == ("consultation.receipts.v1", "CLINIC-SYS-1")
    body = json.loads(entry["body"])
    assert (body["prescription_id"], body["patient_id"], body["stage"], body["chronic"]) == (
        b.RX_ID,
        "PAT-5521",
        "out_of_stock",
        True,
    )
    assert body["answers_message_id"] == events[0].causation_id
    assert body["reason"].startswith("Out of stock: MET500 needs 180") and PHONE not in entry["body"]


def test_out_for_delivery_in_a_round_gives_the_planned_time_an_hour_either_side():
    at_the_door = b.at(95)
    in_a_round = b.picked_up(5).model_copy(update={"expected_at": at_the_door})
    [_, out] = notices(accepted(0), b.approved(1), b.reserved(2), b.assigned(3), in_a_round)
    assert (out.kind, out.expected_from, out.expected_by) == (
        "out_for_delivery",
        at_the_door - domain.ARRIVAL_WINDOW,
        at_the_door + domain.ARRIVAL_WINDOW,
    )
    [_, alone] = notices(accepted(0), *on_the_way())
    assert (alone.expected_from, alone.expected_by) == (None, None), "a trip of its own plans no time"


# --- a lot recall ---------------------------------------------------------------------------------------


def lot_recalled(minute: int, status: str, lot_id: str = "MET500-L2611") -> Envelope:
    from pharmacy_contracts import inventory as inv

    return inv.PrescriptionRecalled(
        **b.envelope_fields(message_id=f"MSG-RECALL-{minute}", occurred_at=b.at(minute), correlation_id=b.RX_ID),
        prescription_id=b.RX_ID,
        warehouse_id="WH-NORTHFORD",
        recall_id="RC-1",
        lot_id=lot_id,
        drug_code="MET500",
        quantity=180,
        reason="supplier recall notice 118",
        status=status,  # type: ignore[arg-type]
    )


def test_a_patient_who_received_a_recalled_lot_is_told_once_per_lot_and_the_hospital_asked_to_call():
    delivered = [accepted(0), *on_the_way(), b.completed(7)]
    again = lot_recalled(9, "delivered")  # the same lot, told by a second recall
    other = lot_recalled(10, "delivered", lot_id="AML5-L2609")

    events = [*delivered, lot_recalled(8, "delivered"), again, other]
    assert [n.kind for n in notices(*events)] == ["accepted", "out_for_delivery", "delivered", "recalled", "recalled"]
    calls = []
    status: PrescriptionStatus | None = None
    for event in events:
        folded = domain.track_step(status, event)
        assert folded is not None
        found = domain.follow_up(status, folded[0], event)
        calls += [found] if found is not None else []
        status = folded[0]
    assert [(c.ending, c.recalled_lot) for c in calls] == [("recalled", "MET500-L2611"), ("recalled", "AML5-L2609")]
    assert calls[0].reason.startswith("Recalled: lot MET500-L2611 of MET500 (supplier recall notice 118)")
    assert status is not None and status.stage is Stage.DELIVERED


@pytest.mark.parametrize("status", ["withdrawn", "on_the_road"])
def test_a_prescription_the_recall_withdrew_ends_out_of_stock_told_and_followed_up(status: str):
    events = [accepted(0), *on_the_way(), lot_recalled(6, status)]
    assert [n.kind for n in notices(*events)] == ["accepted", "out_for_delivery", "out_of_stock"]
    [due] = follow_ups(*events)
    assert due.stage is Stage.OUT_OF_STOCK and due.reason.startswith("Out of stock: lot MET500-L2611 of MET500")


async def test_the_recalled_notification_and_its_follow_up_are_published(
    service: ConsultationService, published: Published
):
    events = [accepted(0), *on_the_way(), b.completed(7), lot_recalled(8, "delivered")]
    await service.track([Record(e) for e in events])
    recalled = [n for n in told(published) if n.kind == "recalled"]
    assert len(recalled) == 1 and b.RX_ID in recalled[0].text and PHONE not in recalled[0].text
    [entry] = [e for e in published.entries if e["type"] == FOLLOW_UP]
    assert json.loads(entry["body"])["stage"] == "recalled"
