"""Intake de-duplication and the status a prescription shows, folded from its lifecycle events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.consultation.domain import (
    IntakeRecord,
    IntakeVerdict,
    PrescriptionStatus,
    Stage,
    judge_intake,
    prescription_of,
    track,
)
from tests.unit.builders import (
    RX_ID,
    abandoned,
    accepted,
    approved,
    assigned,
    at,
    completed,
    delivery_accepted,
    delivery_failed,
    low_stock,
    make_prescription,
    make_submitted,
    picked_up,
    rejected,
    reservation_failed,
    reserved,
    restocked,
)


def fold(*events) -> PrescriptionStatus | None:
    status = None
    for event in events:
        status = track(status, event) or status
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
    ],
    ids=["rejected", "out-of-stock", "delivered", "undeliverable"],
)
def test_terminal_states_are_final(terminal_events, stage):
    status = fold(accepted(0), *terminal_events)
    later = [approved(20), reserved(21), assigned(22, attempt=2), delivery_failed(23), picked_up(24), accepted(25)]

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
    assert [h.stage for h in status.history] == [Stage.REJECTED, Stage.RECEIVED]


# --- track: ordering ---------------------------------------------------------------------------------


def test_reserved_before_approved_keeps_reserved():
    status = fold(accepted(0), reserved(2), approved(1))

    assert status.stage is Stage.RESERVED
    assert status.warehouse_id == "WH-1"
    assert [h.stage for h in status.history] == [Stage.RECEIVED, Stage.RESERVED, Stage.APPROVED]


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
        "passed the formulary check",
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
