"""Intake de-duplication and cancellation, and the status a prescription shows, folded from its
lifecycle events."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts import signing
from pharmacy_contracts.consultation import CancellationAccepted, CancellationRequested, Coordinates
from services.cli.render import status_panel
from services.consultation.domain import (
    TERMINAL,
    Cancellation,
    CancellationVerdict,
    IntakeRecord,
    IntakeVerdict,
    PrescriptionStatus,
    Stage,
    judge_cancellation,
    judge_intake,
    prescription_of,
    track,
    with_cancellation,
)
from services.consultation.service import ConsultationService
from services.consultation.settings import ConsultationSettings
from services.runtime.errors import Refused
from tests.unit.builders import (
    RX_ID,
    abandoned,
    accepted,
    approved,
    assigned,
    at,
    cancelled,
    completed,
    delivery_accepted,
    delivery_failed,
    envelope_fields,
    low_stock,
    make_prescription,
    make_submitted,
    picked_up,
    rejected,
    reservation_failed,
    restocked,
)

CODE = "493017"


# --- builders of the events this file needs beyond tests/unit/builders.py ----------------------------


def _common(minute: int, prescription_id: str = RX_ID, **overrides: Any) -> dict[str, Any]:
    fields = {
        "message_id": f"MSG-{prescription_id}-{minute}",
        "occurred_at": at(minute),
        "correlation_id": prescription_id,
    }
    return envelope_fields(**{**fields, **overrides})


def _movement(minute: int, **fields: Any) -> dict[str, Any]:
    return {
        **_common(minute),
        "prescription_id": RX_ID,
        "warehouse_id": "WH-1",
        "lines": [inv.StockLine(drug_code="MET500", quantity=180)],
        "levels": [inv.StockLevel(drug_code="MET500", available=20, reserved=0, dispatched=0)],
        **fields,
    }


def reserved(minute: int = 2, warehouse_id: str = "WH-1", prescription_id: str = RX_ID) -> inv.StockReserved:
    return inv.StockReserved(
        **_common(minute, prescription_id),
        prescription_id=prescription_id,
        warehouse_id=warehouse_id,
        pickup_location=Coordinates(latitude=51.8, longitude=69.4),
        lines=[inv.StockLine(drug_code="MET500", quantity=180)],
        picks=[inv.LotPick(drug_code="MET500", lot_id="LOT-1", expiry_date=date(2028, 1, 31), quantity=180)],
        levels=[inv.StockLevel(drug_code="MET500", available=20, reserved=180, dispatched=0)],
    )


def _reason(code: str, message: str) -> rx.Reason:
    return rx.Reason(code=code, message=message, item_index=0)


INTERACTION = _reason("MODERATE_INTERACTION", "MET500 and AML5 interact: monitor blood pressure")
REFILL = _reason("REFILL_TOO_SOON", "MET500 supplied 10 days ago for 90 days")


def held(minute: int = 1, reasons: tuple[rx.Reason, ...] = (INTERACTION, REFILL)) -> rx.PrescriptionHeld:
    return rx.PrescriptionHeld(
        **_common(minute),
        prescription_id=RX_ID,
        patient_id="PAT-5521",
        reasons=list(reasons),
        escalate_at=at(minute + 60),
        expires_at=at(minute + 240),
    )


def escalated(minute: int = 61) -> rx.ReviewEscalated:
    return rx.ReviewEscalated(
        **_common(minute), prescription_id=RX_ID, held_since=at(1), expires_at=at(241), reasons=[INTERACTION]
    )


def reviewed_approval(minute: int = 62, pharmacist: str = "PH-7") -> rx.PrescriptionApproved:
    return approved(minute).model_copy(update={"reviewed_by": pharmacist})


def reviewed_rejection(minute: int = 62, code: str = "PHARMACIST_REJECTED", pharmacist: str | None = "PH-7"):
    return rx.PrescriptionRejected(
        **_common(minute),
        prescription_id=RX_ID,
        reasons=[_reason(code, "not safe for this patient")],
        reviewed_by=pharmacist,
    )


def cancellation_accepted(minute: int = 29) -> CancellationAccepted:
    return CancellationAccepted(
        **_common(minute),
        sender_id="CLINIC-SYS-1",
        prescription_id=RX_ID,
        reason="therapy changed",
        requested_by="Dr. Karimov",
    )


def waiting(minute: int = 3) -> c.DeliveryWaiting:
    return c.DeliveryWaiting(
        **_common(minute), prescription_id=RX_ID, warehouse_id="WH-1", why="no cold-chain courier free"
    )


def _delivery(minute: int, courier_id: str = "CUR-1", attempt: int = 1) -> dict[str, Any]:
    return {
        **_common(minute),
        "prescription_id": RX_ID,
        "dispatch_id": f"{RX_ID}-D{attempt}",
        "courier_id": courier_id,
        "attempt": attempt,
    }


def offer_expired(minute: int = 4) -> c.DeliveryOfferExpired:
    return c.DeliveryOfferExpired(**_delivery(minute))


def code_rejected(minute: int = 6, wrong_codes: int = 1) -> c.DeliveryCodeRejected:
    return c.DeliveryCodeRejected(**_delivery(minute), wrong_codes=wrong_codes)


def overdue(minute: int = 9, stage: str = "on_the_road") -> c.DeliveryOverdue:
    courier = "CUR-1" if stage == "on_the_road" else None
    return c.DeliveryOverdue(**_common(minute), prescription_id=RX_ID, stage=stage, since=at(5), courier_id=courier)


def delivery_cancelled(minute: int = 31, goods_returned: bool = False) -> c.DeliveryCancelled:
    return c.DeliveryCancelled(
        **_common(minute), prescription_id=RX_ID, warehouse_id="WH-1", goods_returned=goods_returned
    )


def withdrawn(minute: int = 31) -> c.DispatchWithdrawn:
    return c.DispatchWithdrawn(
        **_common(minute),
        dispatch_id=f"{RX_ID}-D1",
        courier_id="CUR-1",
        package_id=RX_ID,
        reason="cancelled",
        return_goods=False,
    )


def stock_released(minute: int = 32) -> inv.StockReleased:
    return inv.StockReleased(**_movement(minute))


def stock_returned(minute: int = 32) -> inv.StockReturned:
    return inv.StockReturned(**_movement(minute))


def stock_quarantined(minute: int = 32, why: str = "cancelled") -> inv.StockQuarantined:
    return inv.StockQuarantined(**_movement(minute), why=why)


def stock_delivered(minute: int = 8) -> inv.StockDelivered:
    return inv.StockDelivered(**_movement(minute))


def stock_dispatched(minute: int = 5) -> inv.StockDispatched:
    return inv.StockDispatched(**_movement(minute))


def lot_expired() -> inv.LotExpired:
    return inv.LotExpired(
        **envelope_fields(correlation_id="LOT-1"),
        warehouse_id="WH-1",
        drug_code="MET500",
        lot_id="LOT-1",
        expiry_date=date(2027, 1, 14),
        removed=12,
        level=inv.StockLevel(drug_code="MET500", available=0, reserved=0, dispatched=0),
    )


def lot_nearing_expiry() -> inv.LotNearingExpiry:
    return inv.LotNearingExpiry(
        **envelope_fields(correlation_id="LOT-1"),
        warehouse_id="WH-1",
        drug_code="MET500",
        lot_id="LOT-1",
        expiry_date=date(2027, 2, 1),
        available=12,
    )


def warehouse_registered() -> inv.WarehouseRegistered:
    return inv.WarehouseRegistered(
        **envelope_fields(correlation_id="WH-1"),
        warehouse_id="WH-1",
        name="Central",
        kind="central",
        location=Coordinates(latitude=51.1, longitude=71.4),
    )


def delivered_status() -> PrescriptionStatus:
    return fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(4), completed(5))


def fold(*events, delivery_code: str | None = None) -> PrescriptionStatus | None:
    status = None
    for event in events:
        status = track(status, event, delivery_code=delivery_code) or status
    return status


# --- judge_intake ----------------------------------------------------------------------------------


@pytest.fixture
def record() -> IntakeRecord:
    return IntakeRecord(
        prescription_id=RX_ID,
        sender_id="CLINIC-SYS-1",
        message_id="MSG-1",
        received_at=datetime(2027, 1, 15, 9, 0, tzinfo=UTC),
        prescription=make_prescription(),
    )


def test_intake_of_an_unseen_prescription_is_new():
    assert judge_intake(None, "CLINIC-SYS-1", "MSG-1") is IntakeVerdict.NEW


def test_intake_of_the_same_message_from_the_same_sender_is_a_duplicate(record):
    assert judge_intake(record, "CLINIC-SYS-1", "MSG-1") is IntakeVerdict.DUPLICATE


@pytest.mark.parametrize(
    ("sender_id", "message_id"),
    [("CLINIC-SYS-1", "MSG-2"), ("CLINIC-SYS-2", "MSG-1"), ("CLINIC-SYS-2", "MSG-2")],
    ids=["same-sender-new-message", "other-sender-same-message", "other-sender-new-message"],
)
def test_intake_reusing_the_id_in_another_message_is_refused(record, sender_id, message_id):
    assert judge_intake(record, sender_id, message_id) is IntakeVerdict.ID_REUSED


# --- prescription_of -------------------------------------------------------------------------------


def test_prescription_of_lifecycle_events():
    assert prescription_of(accepted(prescription_id="RX-7")) == "RX-7"
    assert prescription_of(approved(prescription_id="RX-7")) == "RX-7"
    assert prescription_of(reserved(prescription_id="RX-7")) == "RX-7"
    assert prescription_of(delivery_failed(prescription_id="RX-7")) == "RX-7"
    assert prescription_of(abandoned(prescription_id="RX-7")) == "RX-7"
    assert prescription_of(cancellation_accepted()) == RX_ID
    assert prescription_of(held()) == RX_ID
    assert prescription_of(waiting()) == RX_ID
    assert prescription_of(overdue()) == RX_ID


@pytest.mark.parametrize("event", [restocked(), low_stock()], ids=["restocked", "low-stock"])
def test_prescription_of_stock_only_events_is_none(event):
    assert prescription_of(event) is None


@pytest.mark.parametrize("event", [restocked(), low_stock(), make_submitted()], ids=["restock", "low", "submitted"])
def test_track_ignores_events_that_are_not_a_prescription_stage(event):
    status = fold(accepted())

    assert track(None, event) is None
    assert track(status, event) is None


# --- track: building the status ----------------------------------------------------------------------


def test_status_starts_at_received_from_the_accepted_prescription():
    status = track(None, accepted(minute=0))

    assert status.prescription_id == RX_ID
    assert status.stage is Stage.RECEIVED
    assert status.terminal is False
    assert [(h.at, h.stage, h.detail) for h in status.history] == [
        (at(0), Stage.RECEIVED, "received from CLINIC-SYS-1")
    ]


def test_a_full_delivery_walks_every_stage_and_ends_terminal():
    events = [accepted(0), approved(1), reserved(2), assigned(3), delivery_accepted(4), picked_up(5), completed(6)]
    stages = []
    status = None
    for event in events:
        status = track(status, event)
        stages.append(status.stage)

    assert stages == [
        Stage.RECEIVED,
        Stage.APPROVED,
        Stage.RESERVED,
        Stage.COURIER_ASSIGNED,
        Stage.ACCEPTED_BY_COURIER,
        Stage.PICKED_UP,
        Stage.DELIVERED,
    ]
    assert status.terminal is True
    assert status.warehouse_id == "WH-1"
    assert status.courier_id == "CUR-1"
    assert status.delivery_attempts == 1
    assert [h.stage for h in status.history] == stages
    assert [h.at for h in status.history] == [at(m) for m in range(7)]


def test_history_grows_by_one_entry_per_event_and_the_old_status_is_untouched():
    first = track(None, accepted(0))
    second = track(first, approved(1))

    assert len(first.history) == 1
    assert first.stage is Stage.RECEIVED
    assert len(second.history) == 2
    assert second.history[0] == first.history[0]


def test_history_is_in_the_order_things_happened_whatever_order_their_events_arrive_in():
    # The courier's event (minute 3) comes in before inventory's (minute 2), as topics allow.
    status = fold(accepted(0), approved(1), assigned(3), reserved(2))

    assert [entry.at for entry in status.history] == [at(0), at(1), at(2), at(3)]
    assert status.history[-1].detail.startswith("offered to courier CUR-1")


def test_rejection_is_terminal_and_explains_why():
    status = fold(accepted(0), rejected(1))

    assert (status.stage, status.terminal) == (Stage.REJECTED, True)
    assert status.why == ["UNKNOWN_DRUG: XYZ is not in the formulary"]


def test_out_of_stock_is_terminal_and_explains_the_shortage():
    status = fold(accepted(0), approved(1), reservation_failed(2))

    assert (status.stage, status.terminal) == (Stage.OUT_OF_STOCK, True)
    assert status.why == ["OUT_OF_STOCK: MET500 needs 180, best warehouse has 40"]


def test_undeliverable_is_terminal_and_explains_why():
    status = fold(
        accepted(0), approved(1), reserved(2), assigned(3), delivery_failed(4, will_retry=False), abandoned(5)
    )

    assert (status.stage, status.terminal) == (Stage.UNDELIVERABLE, True)
    assert status.why == ["UNDELIVERABLE: 3 attempts, last failure address_not_found"]


@pytest.mark.parametrize(
    ("terminal_events", "stage"),
    [
        ([rejected(1)], Stage.REJECTED),
        ([approved(1), reservation_failed(2)], Stage.OUT_OF_STOCK),
        ([approved(1), reserved(2), assigned(3), picked_up(4), completed(5)], Stage.DELIVERED),
        ([approved(1), reserved(2), assigned(3), abandoned(4)], Stage.UNDELIVERABLE),
        ([approved(1), reserved(2), cancelled(3)], Stage.CANCELLED),
    ],
    ids=["rejected", "out-of-stock", "delivered", "undeliverable", "cancelled"],
)
def test_terminal_states_are_final(terminal_events, stage):
    status = fold(accepted(0), *terminal_events)
    later = [
        approved(20),
        held(21),
        reserved(22),
        waiting(23),
        assigned(24, attempt=2),
        delivery_failed(25),
        picked_up(26),
        accepted(27),
        completed(28),
        cancelled(29),
    ]

    for event in later:
        updated = track(status, event)
        assert updated.stage is stage
        assert updated.terminal is True
        assert len(updated.history) == len(status.history) + 1
        status = updated


def test_a_terminal_state_is_not_replaced_by_another_terminal_state():
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(4), completed(5))

    after = track(status, abandoned(6))

    assert after.stage is Stage.DELIVERED


def test_a_terminal_event_arriving_first_still_holds():
    status = fold(rejected(1), accepted(0))

    assert (status.stage, status.terminal) == (Stage.REJECTED, True)
    assert [h.stage for h in status.history] == [Stage.RECEIVED, Stage.REJECTED], "in the order it happened"


# --- track: ordering ---------------------------------------------------------------------------------


def test_reserved_before_approved_keeps_reserved():
    status = fold(accepted(0), reserved(2), approved(1))

    assert status.stage is Stage.RESERVED
    assert status.warehouse_id == "WH-1"
    assert [h.stage for h in status.history] == [Stage.RECEIVED, Stage.APPROVED, Stage.RESERVED]


def test_pipeline_events_before_the_accepted_prescription_keep_the_furthest_stage():
    status = fold(approved(1), accepted(0))
    assert status.stage is Stage.APPROVED

    status = fold(reserved(2), approved(1), accepted(0))
    assert status.stage is Stage.RESERVED


def test_a_late_pipeline_event_does_not_pull_a_courier_stage_back():
    status = fold(accepted(0), approved(1), assigned(3), reserved(2))

    assert status.stage is Stage.COURIER_ASSIGNED
    assert status.warehouse_id == "WH-1"


def test_courier_events_take_the_latest():
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(4), delivery_failed(5))
    assert status.stage is Stage.DELIVERY_FAILED

    status = track(status, assigned(6, courier_id="CUR-2", attempt=2))
    assert status.stage is Stage.COURIER_ASSIGNED
    assert status.courier_id == "CUR-2"
    assert status.delivery_attempts == 2

    status = track(status, delivery_accepted(7, courier_id="CUR-2", attempt=2))
    assert status.stage is Stage.ACCEPTED_BY_COURIER


def test_history_details_say_what_happened():
    status = fold(
        accepted(0),
        approved(1),
        reserved(2),
        assigned(3),
        delivery_accepted(4),
        picked_up(5),
        delivery_failed(6, will_retry=True),
        assigned(7, courier_id="CUR-2", attempt=2),
        picked_up(8, courier_id="CUR-2", attempt=2),
        delivery_failed(9, courier_id="CUR-2", attempt=2, will_retry=False),
    )

    assert [h.detail for h in status.history] == [
        "received from CLINIC-SYS-1",
        "passed the checks",
        "stock reserved at WH-1",
        "offered to courier CUR-1 (attempt 1)",
        "courier CUR-1 accepted",
        "picked up by CUR-1 at WH-1",
        "attempt 1 failed: patient_absent; will be re-dispatched",
        "offered to courier CUR-2 (attempt 2)",
        "picked up by CUR-2 at WH-1",
        "attempt 2 failed: patient_absent; no attempts left",
    ]
    assert status.stage is Stage.DELIVERY_FAILED
    assert status.terminal is False


def test_a_late_event_after_a_terminal_state_leaves_the_why_alone():
    status = track(delivered_status(), rejected(9))

    assert (status.stage, status.why) == (Stage.DELIVERED, [])
    assert status.history[-1].stage is Stage.REJECTED


# --- judge_cancellation ------------------------------------------------------------------------------


def a_cancellation(message_id: str = "MSG-C1") -> Cancellation:
    return Cancellation(message_id=message_id, requested_by="Dr. Karimov", reason="therapy changed", received_at=at(30))


def test_cancelling_a_prescription_never_received_is_refused():
    assert judge_cancellation(None, "CLINIC-SYS-1") is CancellationVerdict.UNKNOWN_PRESCRIPTION


def test_the_sender_of_a_prescription_may_cancel_it(record):
    assert judge_cancellation(record, "CLINIC-SYS-1") is CancellationVerdict.NEW


def test_another_system_may_not_cancel_a_prescription(record):
    assert judge_cancellation(record, "CLINIC-SYS-2") is CancellationVerdict.NOT_YOUR_PRESCRIPTION


def test_another_system_may_not_cancel_even_an_already_cancelled_prescription(record):
    cancelled_record = with_cancellation(record, a_cancellation())

    assert judge_cancellation(cancelled_record, "CLINIC-SYS-2") is CancellationVerdict.NOT_YOUR_PRESCRIPTION


def test_a_second_cancellation_changes_nothing(record):
    cancelled_record = with_cancellation(record, a_cancellation())

    assert judge_cancellation(cancelled_record, "CLINIC-SYS-1") is CancellationVerdict.ALREADY_CANCELLED


def test_the_cancellation_is_recorded_in_a_new_record_and_the_old_one_is_untouched(record):
    cancelled_record = with_cancellation(record, a_cancellation())

    assert record.cancellation is None
    assert cancelled_record.cancellation == a_cancellation()
    assert cancelled_record.prescription == record.prescription
    assert cancelled_record.message_id == record.message_id, "the record still names the prescription's message"


def test_an_intake_record_stored_before_cancellations_existed_still_reads():
    stored = {
        "prescription_id": RX_ID,
        "sender_id": "CLINIC-SYS-1",
        "message_id": "MSG-1",
        "received_at": "2027-01-15T09:00:00Z",
        "prescription": make_prescription().model_dump(mode="json"),
    }

    assert IntakeRecord.model_validate(stored).cancellation is None


# --- the signature gate covers cancellations --------------------------------------------------------

KEYS = {"CLINIC-SYS-1": {"k1": b"secret-1"}, "CLINIC-SYS-2": {"k2": b"secret-2"}}


def gate_service() -> ConsultationService:
    return ConsultationService(
        storage=None, unit_of_work=None, clock=lambda: at(0), sender_keys=KEYS, delivery_code_key=b"key"
    )  # type: ignore[arg-type]


def cancellation_request(sender_id: str = "CLINIC-SYS-1") -> bytes:
    message = CancellationRequested(
        **_common(30, message_id="MSG-C1"),
        sender_id=sender_id,
        prescription_id=RX_ID,
        reason="therapy changed",
        requested_by="Dr. Karimov",
    )
    return message.model_dump_json().encode()


def test_a_cancellation_signed_by_its_sender_passes_the_gate():
    body = cancellation_request()

    gate_service().check_signature(
        body, signing.signature_headers(body, sender_id="CLINIC-SYS-1", key_id="k1", secret=b"secret-1")
    )


def test_a_cancellation_signed_by_one_system_in_another_systems_name_is_refused():
    body = cancellation_request(sender_id="CLINIC-SYS-1")
    headers = signing.signature_headers(body, sender_id="CLINIC-SYS-2", key_id="k2", secret=b"secret-2")

    with pytest.raises(Refused) as refused:
        gate_service().check_signature(body, headers)
    assert refused.value.code == "sender_mismatch"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unsigned"),
        (
            signing.signature_headers(b"other bytes", sender_id="CLINIC-SYS-1", key_id="k1", secret=b"secret-1"),
            "bad_signature",
        ),
        (
            signing.signature_headers(cancellation_request(), sender_id="CLINIC-SYS-1", key_id="k9", secret=b"x"),
            "unknown_key",
        ),
    ],
    ids=["unsigned", "tampered", "unknown-key"],
)
def test_an_unsigned_or_forged_cancellation_is_refused(headers, code):
    with pytest.raises(Refused) as refused:
        gate_service().check_signature(cancellation_request(), headers)
    assert refused.value.code == code


# --- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_consultation_refuses_to_start_without_a_delivery_code_key(key, monkeypatch):
    monkeypatch.delenv("PHARMACY_DELIVERY_CODE_KEY", raising=False)
    with pytest.raises(ValidationError, match="PHARMACY_DELIVERY_CODE_KEY is not set"):
        ConsultationSettings(delivery_code_key=key)


def test_the_delivery_code_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PHARMACY_DELIVERY_CODE_KEY", "k" * 64)

    assert ConsultationSettings().delivery_code_secret() == b"k" * 64


# --- track: pharmacist review ------------------------------------------------------------------------


def test_a_hold_waits_for_review_and_says_why():
    status = fold(accepted(0), held(1))

    assert (status.stage, status.terminal) == (Stage.HELD_FOR_REVIEW, False)
    assert status.why == [
        "MODERATE_INTERACTION: MET500 and AML5 interact: monitor blood pressure",
        "REFILL_TOO_SOON: MET500 supplied 10 days ago for 90 days",
    ]
    assert status.history[-1].detail == "held for pharmacist review (MODERATE_INTERACTION, REFILL_TOO_SOON)"


def test_a_hold_ranks_between_received_and_approved():
    assert fold(held(1), accepted(0)).stage is Stage.HELD_FOR_REVIEW
    assert fold(accepted(0), approved(2), held(1)).stage is Stage.APPROVED
    assert fold(accepted(0), held(1), reserved(3)).stage is Stage.RESERVED


def test_held_then_approved_by_a_pharmacist_moves_on_and_drops_the_hold_reasons():
    status = fold(accepted(0), held(1), reviewed_approval(62))

    assert (status.stage, status.terminal) == (Stage.APPROVED, False)
    assert status.why == []
    assert status.history[-1].detail == "released by pharmacist PH-7 after review"


def test_an_escalation_is_a_warning_in_the_history_and_the_hold_stays():
    status = fold(accepted(0), held(1), escalated(61))

    assert status.stage is Stage.HELD_FOR_REVIEW
    assert len(status.why) == 2, "the hold's reasons still explain it"
    last = status.history[-1]
    assert (last.stage, last.warning) == (Stage.HELD_FOR_REVIEW, True)
    assert last.detail == "review overdue: escalated to the pharmacist on duty; expires 2027-01-15 13:01 UTC"


def test_held_then_rejected_by_a_pharmacist_is_terminal_and_names_the_pharmacist():
    status = fold(accepted(0), held(1), reviewed_rejection(62))

    assert (status.stage, status.terminal) == (Stage.REJECTED, True)
    assert status.why == ["PHARMACIST_REJECTED: not safe for this patient"]
    assert status.history[-1].detail == "rejected by pharmacist PH-7 after review"


def test_a_review_that_expired_says_so():
    status = fold(accepted(0), held(1), escalated(61), reviewed_rejection(241, code="REVIEW_EXPIRED", pharmacist=None))

    assert (status.stage, status.terminal) == (Stage.REJECTED, True)
    assert status.why == ["REVIEW_EXPIRED: not safe for this patient"]
    assert status.history[-1].detail == "rejected: no pharmacist decided the review in time"


def test_a_rejection_by_the_checks_alone_says_so():
    assert fold(accepted(0), rejected(1)).history[-1].detail == "rejected by the checks"


# --- track: the delivery code ------------------------------------------------------------------------


def test_the_delivery_code_is_given_when_the_prescription_is_approved():
    assert fold(accepted(0), held(1), delivery_code=CODE).delivery_code is None
    assert fold(accepted(0), held(1), reviewed_approval(62), delivery_code=CODE).delivery_code == CODE
    assert fold(accepted(0), approved(1), delivery_code=CODE).delivery_code == CODE


def test_the_delivery_code_stays_for_the_rest_of_the_delivery():
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(4), delivery_code=CODE)

    assert status.delivery_code == CODE


def test_a_rejected_prescription_gets_no_delivery_code():
    assert fold(accepted(0), held(1), reviewed_rejection(62), delivery_code=CODE).delivery_code is None


def test_the_delivery_code_is_kept_out_of_the_status_repr():
    status = fold(accepted(0), approved(1), delivery_code=CODE)

    assert CODE not in repr(status)
    assert CODE not in str(status)


# --- track: cancellation -----------------------------------------------------------------------------


def test_a_cancellation_request_is_noted_and_the_cancellation_is_terminal():
    status = fold(accepted(0), approved(1), reserved(2), cancellation_accepted(29))

    assert status.stage is Stage.RESERVED, "requested is not yet done"
    assert status.history[-1].detail == "cancellation requested by Dr. Karimov (CLINIC-SYS-1): therapy changed"
    assert status.history[-1].stage is Stage.RESERVED

    status = track(status, cancelled(30))

    assert (status.stage, status.terminal) == (Stage.CANCELLED, True)
    assert status.why == ["CANCELLED: therapy changed (requested by Dr. Karimov)"]
    assert status.history[-1].detail == "cancelled by Dr. Karimov: therapy changed"
    assert Stage.CANCELLED in TERMINAL


def test_a_held_prescription_can_be_cancelled():
    status = fold(accepted(0), held(1), cancelled(30, was_approved=False))

    assert (status.stage, status.terminal) == (Stage.CANCELLED, True)
    assert status.why == ["CANCELLED: therapy changed (requested by Dr. Karimov)"]


@pytest.mark.parametrize(
    "ended",
    [
        delivered_status,
        lambda: fold(accepted(0), rejected(1)),
        lambda: fold(accepted(0), approved(1), reservation_failed(2)),
    ],
    ids=["delivered", "rejected", "out-of-stock"],
)
def test_a_cancellation_after_a_terminal_state_stays_terminal_but_is_recorded(ended):
    before = ended()

    after = track(track(before, cancellation_accepted(29)), cancelled(30))

    assert (after.stage, after.terminal, after.why) == (before.stage, True, before.why)
    assert [h.detail for h in after.history[-2:]] == [
        "cancellation requested by Dr. Karimov (CLINIC-SYS-1): therapy changed",
        "cancelled by Dr. Karimov: therapy changed",
    ]


@pytest.mark.parametrize(
    ("goods_returned", "detail"),
    [
        (False, "delivery cancelled before pickup; held stock released"),
        (True, "delivery cancelled; the goods came back and are in quarantine"),
    ],
    ids=["before-pickup", "after-pickup"],
)
def test_a_cancelled_delivery_is_noted_after_the_cancellation(goods_returned, detail):
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(4), cancelled(30))

    after = track(status, delivery_cancelled(31, goods_returned=goods_returned))

    assert (after.stage, after.terminal) == (Stage.CANCELLED, True)
    assert (after.history[-1].stage, after.history[-1].detail) == (Stage.CANCELLED, detail)


# --- track: couriers ---------------------------------------------------------------------------------


def test_no_courier_free_means_waiting_for_one_and_an_assignment_moves_on():
    status = fold(accepted(0), approved(1), reserved(2), waiting(3))

    assert (status.stage, status.terminal) == (Stage.WAITING_FOR_COURIER, False)
    assert status.history[-1].detail == "waiting for a courier: no cold-chain courier free"

    status = track(status, assigned(4))
    assert status.stage is Stage.COURIER_ASSIGNED


def test_a_late_pipeline_event_does_not_pull_waiting_back():
    assert fold(accepted(0), waiting(3), reserved(2), approved(1)).stage is Stage.WAITING_FOR_COURIER


def test_an_expired_offer_waits_for_a_courier_again_until_the_next_offer():
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), offer_expired(4))

    assert (status.stage, status.terminal) == (Stage.WAITING_FOR_COURIER, False)
    assert status.history[-1].detail == "courier CUR-1 did not accept in time; offered to the next courier"

    status = track(status, assigned(5, courier_id="CUR-2", attempt=2))
    assert (status.stage, status.courier_id, status.delivery_attempts) == (Stage.COURIER_ASSIGNED, "CUR-2", 2)


def test_a_wrong_delivery_code_is_a_warning_and_the_delivery_is_still_on_the_road():
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(5), code_rejected(6, wrong_codes=2))

    assert (status.stage, status.terminal) == (Stage.PICKED_UP, False)
    last = status.history[-1]
    assert last.warning is True
    assert last.detail == "wrong delivery code reported by courier CUR-1 (2 on this attempt)"
    assert last.detail.startswith("wrong delivery code reported")

    assert track(status, completed(7)).stage is Stage.DELIVERED


@pytest.mark.parametrize(
    ("stage", "detail"),
    [
        ("awaiting_courier", "overdue: no courier has taken it since 2027-01-15 09:05 UTC"),
        ("awaiting_stock", "overdue: no stock reserved for it since 2027-01-15 09:05 UTC"),
        ("on_the_road", "overdue: on the road with CUR-1 since 2027-01-15 09:05 UTC"),
    ],
)
def test_an_overdue_delivery_is_a_warning_and_the_stage_stays(stage, detail):
    status = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(5), overdue(9, stage=stage))

    assert status.stage is Stage.PICKED_UP
    assert (status.history[-1].detail, status.history[-1].warning) == (detail, True)


def test_an_abandoned_delivery_says_where_the_goods_went():
    before = fold(accepted(0), approved(1), reserved(2), assigned(3))

    assert track(before, abandoned(8)).history[-1].detail == "given up; held stock released"
    travelled = abandoned(8).model_copy(update={"goods_travelled": True})
    assert track(before, travelled).history[-1].detail == "given up; the goods go to quarantine"


# --- track: stock notes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        (stock_released(), "held stock released at WH-1: 180 × MET500 back on the shelf"),
        (stock_returned(), "package back at WH-1, held for the next attempt"),
        (stock_quarantined(why="cancelled"), "180 × MET500 quarantined at WH-1 (cancelled)"),
        (stock_quarantined(why="damaged"), "180 × MET500 quarantined at WH-1 (damaged)"),
    ],
    ids=["released", "returned", "quarantined-cancelled", "quarantined-damaged"],
)
def test_stock_movements_are_noted_and_change_no_stage(event, detail):
    before = fold(accepted(0), approved(1), reserved(2), assigned(3), picked_up(4))

    after = track(before, event)

    assert (after.stage, after.terminal, after.why) == (before.stage, before.terminal, before.why)
    assert len(after.history) == len(before.history) + 1
    assert (after.history[-1].stage, after.history[-1].detail, after.history[-1].warning) == (
        Stage.PICKED_UP,
        detail,
        False,
    )


def test_delivered_stock_is_noted_after_the_delivery():
    after = track(delivered_status(), stock_delivered(8))

    assert (after.stage, after.terminal) == (Stage.DELIVERED, True)
    assert after.history[-1].detail == "stock hold closed at WH-1: the patient has the goods"


def test_a_note_arriving_first_starts_the_status_at_received():
    status = track(None, stock_released(1))

    assert (status.prescription_id, status.stage, status.terminal) == (RX_ID, Stage.RECEIVED, False)
    assert len(status.history) == 1


@pytest.mark.parametrize(
    "event",
    [lot_expired(), lot_nearing_expiry(), warehouse_registered(), withdrawn(), stock_dispatched()],
    ids=["lot-expired", "lot-nearing-expiry", "warehouse-registered", "dispatch-withdrawn", "stock-dispatched"],
)
def test_events_that_say_nothing_about_a_prescriptions_stage_are_ignored(event):
    assert track(None, event) is None
    assert track(delivered_status(), event) is None


# --- the status panel (`pharmacy status`) ------------------------------------------------------------


def rendered(status: PrescriptionStatus) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(status_panel(status))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_panel_tells_the_patient_the_code_to_read_to_the_courier():
    text = rendered(fold(accepted(0), approved(1), reserved(2), assigned(3), delivery_code=CODE))

    assert f"delivery code to read to the courier at the door: {CODE}" in text


def test_the_panel_shows_no_code_once_the_prescription_is_finished():
    status = fold(accepted(0), approved(1), reserved(2), cancelled(30), delivery_code=CODE)

    assert CODE not in rendered(status)


def test_the_panel_shows_a_hold_its_reasons_and_warnings():
    text = rendered(fold(accepted(0), held(1), escalated(61)))

    assert "held for review" in text
    assert "why: MODERATE_INTERACTION: MET500 and AML5 interact" in text
    assert "review overdue: escalated to the pharmacist on duty" in text
    assert "(!)" in text


def test_the_panel_does_not_read_upstream_text_as_markup():
    status = fold(accepted(0), approved(1), cancelled(30).model_copy(update={"reason": "[red]x[/red] changed"}))

    assert "[red]x[/red] changed" in rendered(status)
