"""The live board's fold: stock by lot, prescriptions by state, deliveries by courier."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts.consultation import Address, CancellationAccepted, Coordinates, PrescriptionAccepted
from pharmacy_contracts.envelope import Envelope
from services.board.app import LiveBoard, create_app
from services.board.projection import EMPTY, RECENT_ALERTS, STATES, Board, fold, fold_all, snapshot
from services.board.settings import BoardSettings
from tests.unit.builders import make_prescription

WH, DRUG, LOT = "WH-N", "MET500", "LOT-1"
EXPIRY = date(2027, 6, 30)
HERE = Coordinates(latitude=51.8, longitude=69.4)
_ids = itertools.count(1)
_clock = itertools.count(0)


def meta(correlation_id: str = "RX-1", message_id: str | None = None) -> dict[str, Any]:
    """Envelope fields: a fresh message id and a later time for each event unless told otherwise."""
    at = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(seconds=next(_clock))
    return {
        "message_id": message_id or f"M-{next(_ids)}",
        "occurred_at": at,
        "correlation_id": correlation_id,
        "producer": "test",
    }


def move(kind: str, quantity: int, source: str, target: str, lot: str = LOT, drug: str = DRUG) -> inv.Movement:
    return inv.Movement(kind=kind, lot_id=lot, drug_code=drug, quantity=quantity, source=source, target=target)


def level(available: int = 0) -> inv.StockLevel:
    return inv.StockLevel(drug_code=DRUG, available=available, reserved=0, dispatched=0)


def restocked(quantity: int, lot: str = LOT, expiry: date = EXPIRY, **fields: Any) -> inv.StockRestocked:
    return inv.StockRestocked(
        **meta(f"restock-{lot}", **fields),
        warehouse_id=WH,
        drug_code=DRUG,
        lot_id=lot,
        expiry_date=expiry,
        quantity=quantity,
        requested_by="staff",
        level=level(),
        movements=[move("received", quantity, "outside", "available", lot)],
    )


def reserved(rx_id: str, quantity: int, lot: str = LOT, **fields: Any) -> inv.StockReserved:
    return inv.StockReserved(
        **meta(rx_id, **fields),
        prescription_id=rx_id,
        warehouse_id=WH,
        pickup_location=HERE,
        lines=[inv.StockLine(drug_code=DRUG, quantity=quantity)],
        picks=[inv.LotPick(drug_code=DRUG, lot_id=lot, expiry_date=EXPIRY, quantity=quantity)],
        levels=[level()],
        movements=[move("reserved", quantity, "available", "reserved", lot)],
    )


def held_stock(
    kind: type[inv.StockDispatched | inv.StockDelivered], rx_id: str, quantity: int, source: str, target: str
):
    return kind(
        **meta(rx_id),
        prescription_id=rx_id,
        warehouse_id=WH,
        lines=[inv.StockLine(drug_code=DRUG, quantity=quantity)],
        levels=[level()],
        movements=[move("dispatched" if target == "dispatched" else "delivered", quantity, source, target)],
    )


def accepted(rx_id: str) -> PrescriptionAccepted:
    return PrescriptionAccepted(
        **meta(rx_id), sender_id="hospital", prescription=make_prescription(prescription_id=rx_id)
    )


def approved(rx_id: str) -> rx.PrescriptionApproved:
    delivery = rx.DeliveryDetails(
        address=Address(line="Farm 1", town="Northford", coordinates=HERE), contact_phone="+7 700 000 0000"
    )
    return rx.PrescriptionApproved(
        **meta(rx_id),
        prescription_id=rx_id,
        patient_id="PAT-1",
        lines=[rx.ApprovedLine(drug_code=DRUG, quantity=30, days_supply=30)],
        delivery=delivery,
    )


def reason(code: str = "CONTROLLED_SUBSTANCE") -> rx.Reason:
    return rx.Reason(code=code, message="a pharmacist must look")


def held(rx_id: str) -> rx.PrescriptionHeld:
    soon = datetime(2027, 1, 2, tzinfo=UTC)
    return rx.PrescriptionHeld(
        **meta(rx_id), prescription_id=rx_id, patient_id="PAT-1", reasons=[reason()], escalate_at=soon, expires_at=soon
    )


def rejected(rx_id: str) -> rx.PrescriptionRejected:
    return rx.PrescriptionRejected(**meta(rx_id), prescription_id=rx_id, reasons=[reason("QUANTITY_ABOVE_MAXIMUM")])


def cancelled(rx_id: str) -> rx.PrescriptionCancelled:
    return rx.PrescriptionCancelled(
        **meta(rx_id), prescription_id=rx_id, reason="changed therapy", requested_by="Dr A", was_approved=True
    )


def delivery(kind: type[Envelope], rx_id: str, courier: str = "C-1", attempt: int = 1, **extra: Any) -> Envelope:
    fields: dict[str, Any] = {"prescription_id": rx_id, "dispatch_id": f"D-{rx_id}-{attempt}", "courier_id": courier}
    if kind in (c.CourierAssigned, c.DeliveryPickedUp, c.DeliveryCompleted, c.DeliveryFailed):
        fields["warehouse_id"] = WH
    if kind is c.DeliveryFailed:
        fields |= {"reason": "patient_absent", "goods_returned": False, "will_retry": True}
    return kind(**meta(rx_id, **extra), attempt=attempt, **fields)


def abandoned(rx_id: str) -> c.DeliveryAbandoned:
    return c.DeliveryAbandoned(
        **meta(rx_id), prescription_id=rx_id, warehouse_id=WH, attempts=3, last_reason="patient_absent"
    )


def stock_row(board: Board, drug: str = DRUG, warehouse: str = WH) -> dict[str, Any]:
    view = snapshot(board)["stock"]
    return next(d for w in view if w["warehouse_id"] == warehouse for d in w["drugs"] if d["drug_code"] == drug)


def lot_row(board: Board, lot: str = LOT) -> dict[str, Any]:
    return next(entry for entry in stock_row(board)["lots"] if entry["lot_id"] == lot)


def state_of(board: Board, rx_id: str) -> str:
    return board.prescriptions[rx_id].state


def counts(board: Board) -> dict[str, int]:
    return {entry["state"]: entry["count"] for entry in snapshot(board)["prescriptions"]["counts"] if entry["count"]}


def courier_row(board: Board, courier: str = "C-1") -> dict[str, Any]:
    return next(row for row in snapshot(board)["couriers"] if row["courier_id"] == courier)


# --- stock ----------------------------------------------------------------------------------------


def test_lot_figures_follow_the_movements_through_the_whole_path() -> None:
    board = fold_all(
        EMPTY,
        [
            restocked(100),
            reserved("RX-1", 30),
            held_stock(inv.StockDispatched, "RX-1", 30, "reserved", "dispatched"),
        ],
    )
    assert lot_row(board) | {"alert": None} == {
        "lot_id": LOT,
        "expiry_date": "2027-06-30",
        "available": 70,
        "reserved": 0,
        "dispatched": 30,
        "quarantine": 0,
        "expired": 0,
        "in_transit": 0,
        "alert": None,
    }
    board = fold(board, held_stock(inv.StockDelivered, "RX-1", 30, "dispatched", "outside"))
    assert {k: stock_row(board)[k] for k in ("available", "reserved", "dispatched")} == {
        "available": 70,
        "reserved": 0,
        "dispatched": 0,
    }


def test_a_drug_sums_its_lots_and_lists_them_first_expiry_first() -> None:
    board = fold_all(EMPTY, [restocked(50, "LOT-LATE", date(2028, 1, 1)), restocked(20, "LOT-SOON", date(2027, 2, 1))])
    row = stock_row(board)
    assert row["available"] == 70
    assert [lot["lot_id"] for lot in row["lots"]] == ["LOT-SOON", "LOT-LATE"]


def test_an_event_read_twice_counts_once() -> None:
    twice = reserved("RX-1", 30, message_id="M-RES")
    board = fold_all(EMPTY, [restocked(100), twice, twice])
    assert (lot_row(board)["available"], lot_row(board)["reserved"]) == (70, 30)


def test_stock_figures_do_not_depend_on_the_order_topics_are_read_in() -> None:
    events = [
        restocked(100),
        reserved("RX-1", 30),
        held_stock(inv.StockDispatched, "RX-1", 30, "reserved", "dispatched"),
    ]
    assert lot_row(fold_all(EMPTY, events)) == lot_row(fold_all(EMPTY, reversed(events)))


def test_warehouse_names_come_from_their_registration() -> None:
    registered = inv.WarehouseRegistered(
        **meta("register-WH-N"), warehouse_id=WH, name="Northford pharmacy", kind="township", location=HERE
    )
    board = fold_all(EMPTY, [registered])
    assert snapshot(board)["stock"] == [
        {"warehouse_id": WH, "name": "Northford pharmacy", "drugs": [], "in_transit": []}
    ]


def listed(drug: str, name: str) -> rx.DrugListed:
    return rx.DrugListed(**meta(drug), drug_code=drug, name=name, form="tablet")


def test_drugs_show_their_formulary_name_once_it_is_heard() -> None:
    board = fold(EMPTY, restocked(100))
    assert stock_row(board)["name"] is None, "before the formulary's announcement, the code alone"
    board = fold_all(board, [listed(DRUG, "Metformin 500 mg"), listed("AML5", "Amlodipine 5 mg")])
    assert (stock_row(board)["drug_code"], stock_row(board)["name"]) == (DRUG, "Metformin 500 mg")
    board = fold(board, listed(DRUG, "Metformin 500 mg tablets"))
    assert stock_row(board)["name"] == "Metformin 500 mg tablets", "a changed entry renames the drug"
    assert [w["drug_code"] for w in snapshot(board)["stock"][0]["drugs"]] == [DRUG], "a name alone stocks nothing"


def low_stock(threshold: int) -> inv.LowStock:
    return inv.LowStock(**meta("low"), warehouse_id=WH, drug_code=DRUG, available=0, threshold=threshold)


@pytest.mark.parametrize(("available", "low"), [(19, True), (20, False), (21, False)])
def test_low_stock_shows_while_available_is_below_the_threshold(available: int, low: bool) -> None:
    board = fold_all(EMPTY, [restocked(available), low_stock(20)])
    assert stock_row(board)["low_stock_threshold"] == (20 if low else None)


def test_low_stock_clears_once_restocked() -> None:
    board = fold_all(EMPTY, [restocked(5), low_stock(20)])
    assert stock_row(board)["low_stock_threshold"] == 20
    board = fold(board, restocked(15, "LOT-2"))
    assert stock_row(board)["low_stock_threshold"] is None


def test_lot_alerts_nearing_then_expired_and_never_back() -> None:
    nearing = inv.LotNearingExpiry(
        **meta("near"), warehouse_id=WH, drug_code=DRUG, lot_id=LOT, expiry_date=EXPIRY, available=10
    )
    expired = inv.LotExpired(
        **meta("exp"),
        warehouse_id=WH,
        drug_code=DRUG,
        lot_id=LOT,
        expiry_date=EXPIRY,
        removed=10,
        level=level(),
        movements=[move("expired", 10, "available", "expired")],
    )
    board = fold_all(EMPTY, [restocked(10), nearing])
    assert lot_row(board)["alert"] == "nearing_expiry"
    board = fold(board, expired)
    assert (lot_row(board)["alert"], lot_row(board)["available"], lot_row(board)["expired"]) == ("expired", 0, 10)
    assert fold(board, nearing.model_copy(update={"message_id": "M-again"})).lots[(WH, LOT)].alert == "expired"
    assert [a["kind"] for a in snapshot(board)["alerts"]] == ["expired", "nearing_expiry"]


def test_alerts_keep_the_latest_few_each_once() -> None:
    board = EMPTY
    for _ in range(RECENT_ALERTS + 3):
        board = fold(board, low_stock(20))
    board = fold(board, low_stock(20).model_copy(update={"message_id": board.alerts[0].message_id}))
    assert len(board.alerts) == RECENT_ALERTS
    assert len({a.message_id for a in board.alerts}) == RECENT_ALERTS


# --- prescriptions --------------------------------------------------------------------------------


def test_a_prescription_moves_through_its_states_to_delivered() -> None:
    board = EMPTY
    seen = []
    for event in [
        accepted("RX-1"),
        approved("RX-1"),
        reserved("RX-1", 30),
        delivery(c.CourierAssigned, "RX-1"),
        delivery(c.DeliveryPickedUp, "RX-1"),
        delivery(c.DeliveryCompleted, "RX-1"),
    ]:
        board = fold(board, event)
        seen.append(state_of(board, "RX-1"))
    assert seen == ["received", "approved", "reserved", "with_courier", "with_courier", "delivered"]
    assert counts(board) == {"delivered": 1}
    row = snapshot(board)["prescriptions"]["latest"][0]
    assert (row["warehouse_id"], row["courier_id"], row["terminal"], row["note"]) == (
        WH,
        "C-1",
        True,
        "delivered by C-1",
    )


def test_events_read_late_from_another_topic_never_move_a_prescription_back() -> None:
    board = fold_all(EMPTY, [reserved("RX-1", 30), delivery(c.CourierAssigned, "RX-1")])
    board = fold_all(board, [approved("RX-1"), accepted("RX-1")])
    assert state_of(board, "RX-1") == "with_courier"
    assert board.prescriptions["RX-1"].note == "offered to C-1 (attempt 1)", "a stale event explains nothing"


def test_the_furthest_pipeline_state_wins_whatever_the_order() -> None:
    assert state_of(fold_all(EMPTY, [reserved("RX-1", 30), approved("RX-1")]), "RX-1") == "reserved"
    assert state_of(fold_all(EMPTY, [approved("RX-1"), held("RX-1")]), "RX-1") == "approved"
    assert state_of(fold_all(EMPTY, [accepted("RX-1"), held("RX-1")]), "RX-1") == "held_for_review"


def test_an_expired_offer_puts_it_back_to_reserved_until_the_next_courier() -> None:
    board = fold_all(EMPTY, [reserved("RX-1", 30), delivery(c.CourierAssigned, "RX-1")])
    board = fold(board, delivery(c.DeliveryOfferExpired, "RX-1"))
    assert state_of(board, "RX-1") == "reserved"
    board = fold(board, delivery(c.CourierAssigned, "RX-1", courier="C-2"))
    assert (state_of(board, "RX-1"), board.prescriptions["RX-1"].courier_id) == ("with_courier", "C-2")


def test_a_late_copy_of_an_earlier_attempt_changes_nothing() -> None:
    board = fold_all(
        EMPTY,
        [
            delivery(c.CourierAssigned, "RX-1", attempt=1),
            delivery(c.DeliveryFailed, "RX-1", attempt=1),
            delivery(c.CourierAssigned, "RX-1", courier="C-2", attempt=2),
        ],
    )
    before = board.prescriptions["RX-1"]
    board = fold(board, delivery(c.DeliveryOfferExpired, "RX-1", attempt=1))
    assert board.prescriptions["RX-1"] == before


@pytest.mark.parametrize(
    ("events", "final"),
    [
        (lambda: [held("RX-1"), rejected("RX-1")], "rejected"),
        (
            lambda: [approved("RX-1"), inv.ReservationFailed(**meta("RX-1"), prescription_id="RX-1", shortages=[])],
            "out_of_stock",
        ),
        (lambda: [delivery(c.CourierAssigned, "RX-1"), abandoned("RX-1")], "undeliverable"),
        (lambda: [approved("RX-1"), cancelled("RX-1")], "cancelled"),
        (lambda: [delivery(c.DeliveryCompleted, "RX-1"), cancelled("RX-1")], "delivered"),
        (lambda: [rejected("RX-1"), approved("RX-1"), delivery(c.CourierAssigned, "RX-1")], "rejected"),
    ],
)
def test_the_first_terminal_state_stays(events: Any, final: str) -> None:
    assert state_of(fold_all(EMPTY, events()), "RX-1") == final


def test_counts_cover_every_state_and_the_latest_come_first() -> None:
    board = fold_all(EMPTY, [accepted(f"RX-{n}") for n in range(5)] + [held("RX-2"), rejected("RX-3")])
    view = snapshot(board, latest=3)["prescriptions"]
    assert [entry["state"] for entry in view["counts"]] == list(STATES)
    assert counts(board) == {"received": 3, "held_for_review": 1, "rejected": 1}
    assert view["total"] == 5
    assert [row["prescription_id"] for row in view["latest"]] == ["RX-3", "RX-2", "RX-4"]


def test_no_patient_data_reaches_the_board() -> None:
    board = fold_all(EMPTY, [accepted("RX-1"), approved("RX-1")])
    shown = json.dumps(snapshot(board))
    prescription = make_prescription(prescription_id="RX-1")
    for personal in (prescription.patient.name, prescription.patient.phone, prescription.patient.address.line):
        assert personal not in shown


# --- couriers -------------------------------------------------------------------------------------


def test_couriers_show_what_they_carry_and_what_they_finished() -> None:
    board = fold_all(
        EMPTY,
        [
            delivery(c.CourierAssigned, "RX-1"),
            delivery(c.CourierAssigned, "RX-2"),
            delivery(c.DeliveryPickedUp, "RX-2"),
            delivery(c.CourierAssigned, "RX-3"),
            delivery(c.DeliveryFailed, "RX-3"),
            delivery(c.CourierAssigned, "RX-4"),
            delivery(c.DeliveryCompleted, "RX-4"),
            delivery(c.CourierAssigned, "RX-5", courier="C-2"),
            delivery(c.DeliveryOfferExpired, "RX-5", courier="C-2"),
        ],
    )
    assert courier_row(board) == {
        "courier_id": "C-1",
        "to_pickup": ["RX-1"],
        "on_the_road": ["RX-2"],
        "delivered": 1,
        "failed": 1,
        "missed_offers": 0,
    }
    assert courier_row(board, "C-2") | {"courier_id": None} == {
        "courier_id": None,
        "to_pickup": [],
        "on_the_road": [],
        "delivered": 0,
        "failed": 0,
        "missed_offers": 1,
    }


def test_a_courier_report_read_twice_counts_once() -> None:
    done = delivery(c.DeliveryCompleted, "RX-1", message_id="M-DONE")
    failed = delivery(c.DeliveryFailed, "RX-2", message_id="M-FAIL")
    board = fold_all(EMPTY, [done, done, failed, failed.model_copy(update={"message_id": "M-FAIL-2"})])
    assert (courier_row(board)["delivered"], courier_row(board)["failed"]) == (1, 1)


def test_a_cancelled_delivery_leaves_the_couriers_load() -> None:
    board = fold_all(EMPTY, [delivery(c.CourierAssigned, "RX-1"), delivery(c.DeliveryPickedUp, "RX-1")])
    board = fold(board, c.DeliveryCancelled(**meta("RX-1"), prescription_id="RX-1", goods_returned=True))
    assert courier_row(board)["on_the_road"] == []
    # Until the prescription's own cancellation is read, it is still shown with its courier.
    assert board.prescriptions["RX-1"].note == "picked up by C-1"
    board = fold(board, cancelled("RX-1"))
    assert (state_of(board, "RX-1"), board.prescriptions["RX-1"].note) == ("cancelled", "cancelled by Dr A")


def test_the_prescriptions_cancellation_ends_it_whichever_topic_is_read_first() -> None:
    on_the_road = [delivery(c.CourierAssigned, "RX-1"), delivery(c.DeliveryPickedUp, "RX-1")]
    delivery_cancelled = c.DeliveryCancelled(**meta("RX-1"), prescription_id="RX-1", goods_returned=True)
    for ending in ([cancelled("RX-1"), delivery_cancelled], [delivery_cancelled, cancelled("RX-1")]):
        assert state_of(fold_all(EMPTY, [*on_the_road, *ending]), "RX-1") == "cancelled"


# --- state and last step --------------------------------------------------------------------------


def failed_with_goods_back(rx_id: str, attempt: int = 1) -> Envelope:
    return delivery(c.DeliveryFailed, rx_id, attempt=attempt).model_copy(update={"goods_returned": True})


def returned(rx_id: str) -> inv.StockReturned:
    return inv.StockReturned(
        **meta(rx_id),
        prescription_id=rx_id,
        warehouse_id=WH,
        lines=[inv.StockLine(drug_code=DRUG, quantity=30)],
        levels=[level()],
        movements=[move("returned", 30, "dispatched", "reserved")],
    )


def cancellation_request(rx_id: str) -> CancellationAccepted:
    return CancellationAccepted(
        **meta(rx_id), prescription_id=rx_id, sender_id="hospital", reason="changed therapy", requested_by="Dr A"
    )


def shown(board: Board, rx_id: str) -> tuple[str, str]:
    row = next(row for row in snapshot(board)["prescriptions"]["latest"] if row["prescription_id"] == rx_id)
    return row["state"], row["note"]


def test_a_package_back_at_the_warehouse_is_not_shown_with_a_courier() -> None:
    on_the_road = [reserved("RX-1", 30), delivery(c.CourierAssigned, "RX-1"), delivery(c.DeliveryPickedUp, "RX-1")]
    board = fold_all(EMPTY, [*on_the_road, failed_with_goods_back("RX-1")])
    assert shown(board, "RX-1") == ("reserved", "attempt 1 failed: patient_absent")
    board = fold(board, returned("RX-1"))
    assert shown(board, "RX-1") == ("reserved", f"package back at {WH}")


def test_a_return_read_after_the_next_courier_took_the_package_changes_nothing() -> None:
    board = fold_all(
        EMPTY,
        [
            reserved("RX-1", 30),
            delivery(c.CourierAssigned, "RX-1"),
            delivery(c.DeliveryPickedUp, "RX-1"),
            failed_with_goods_back("RX-1"),
            delivery(c.CourierAssigned, "RX-1", courier="C-2", attempt=2),
        ],
    )
    before = board.prescriptions["RX-1"]
    board = fold(board, returned("RX-1"))  # the inventory topic was read behind the courier topic
    assert board.prescriptions["RX-1"] == before
    assert shown(board, "RX-1") == ("with_courier", "offered to C-2 (attempt 2)")


def test_a_cancellation_request_read_after_the_end_keeps_the_ending() -> None:
    request = cancellation_request("RX-1")
    board = fold_all(EMPTY, [delivery(c.DeliveryCompleted, "RX-1"), request])
    assert shown(board, "RX-1") == ("delivered", "delivered by C-1")


# Which states each last step may be shown with: written out here, apart from the board's code.
AGREES_WITH = {
    "cancellation requested by": {"received", "held_for_review", "approved", "reserved", "with_courier"},
    "passed the checks": {"approved"},
    "stock reserved at": {"reserved"},
    "offered to": {"with_courier"},
    "picked up by": {"with_courier"},
    "delivery overdue": {"with_courier"},
    "wrong delivery code": {"with_courier"},
    "attempt 1 failed": {"reserved"},
    "package back at": {"reserved"},
    "delivered by": {"delivered"},
    "cancelled by": {"cancelled"},
    "goods quarantined at": {"cancelled"},
    "delivery cancelled": {"cancelled"},
}


def interleavings(*topics: list[Envelope]) -> list[list[Envelope]]:
    """Every order the board may read these topics in: each topic in its own order, the topics mixed."""
    topics_left = [topic for topic in topics if topic]
    if not topics_left:
        return [[]]
    orders = []
    for i, topic in enumerate(topics_left):
        rest = [*topics_left[:i], topic[1:], *topics_left[i + 1 :]]
        orders += [[topic[0], *order] for order in interleavings(*rest)]
    return orders


def redelivered_after_a_failure() -> list[list[Envelope]]:
    return [
        [approved("RX-1")],
        [reserved("RX-1", 30), returned("RX-1")],
        [
            delivery(c.CourierAssigned, "RX-1"),
            delivery(c.DeliveryPickedUp, "RX-1"),
            failed_with_goods_back("RX-1"),
            delivery(c.CourierAssigned, "RX-1", courier="C-2", attempt=2),
            delivery(c.DeliveryPickedUp, "RX-1", courier="C-2", attempt=2),
            c.DeliveryCodeRejected(
                **meta("RX-1"),
                prescription_id="RX-1",
                dispatch_id="D-RX-1-2",
                courier_id="C-2",
                attempt=2,
                wrong_codes=1,
                locked=False,
            ),
            delivery(c.DeliveryCompleted, "RX-1", courier="C-2", attempt=2),
        ],
    ]


def cancelled_on_the_road() -> list[list[Envelope]]:
    request = cancellation_request("RX-1")
    overdue = c.DeliveryOverdue(
        **meta("RX-1"), prescription_id="RX-1", stage="on_the_road", since=datetime(2027, 1, 1, tzinfo=UTC)
    )
    quarantined = inv.StockQuarantined(
        **meta("RX-1"),
        prescription_id="RX-1",
        warehouse_id=WH,
        lines=[inv.StockLine(drug_code=DRUG, quantity=30)],
        levels=[level()],
        why="cancelled",
    )
    return [
        [request],
        [cancelled("RX-1")],
        [reserved("RX-1", 30), quarantined],
        [
            delivery(c.CourierAssigned, "RX-1"),
            delivery(c.DeliveryPickedUp, "RX-1"),
            overdue,
            c.DeliveryCancelled(**meta("RX-1"), prescription_id="RX-1", warehouse_id=WH, goods_returned=True),
        ],
    ]


@pytest.mark.parametrize("journey", [redelivered_after_a_failure, cancelled_on_the_road])
def test_state_and_last_step_agree_whatever_order_the_topics_are_read_in(journey: Any) -> None:
    for order in interleavings(*journey()):
        board = EMPTY
        for event in order:
            board = fold(board, event)
            row = board.prescriptions["RX-1"]
            state, note = row.state, row.note
            if not note:
                continue  # a row first seen through an event that cannot explain it yet says nothing
            allowed = next(states for start, states in AGREES_WITH.items() if note.startswith(start))
            assert state in allowed, f"{state!r} shown with {note!r}, after {[e.type for e in order]}"


# --- the fold itself ------------------------------------------------------------------------------


def test_fold_never_changes_the_board_it_was_given() -> None:
    before = fold_all(EMPTY, [restocked(100), accepted("RX-1"), delivery(c.CourierAssigned, "RX-1")])
    picture = json.dumps(snapshot(before))
    after = fold_all(before, [reserved("RX-1", 30), delivery(c.DeliveryCompleted, "RX-1"), low_stock(200)])
    assert json.dumps(snapshot(before)) == picture
    assert snapshot(after) != snapshot(before)
    assert Board() == EMPTY


def test_events_the_board_does_not_show_only_count() -> None:
    refused = inv.StockCommandRefused(**meta("cmd"), warehouse_id=WH, reason="unknown warehouse")
    board = fold(EMPTY, refused)
    assert snapshot(board)["events"] == 1
    assert (board.lots, board.prescriptions, board.couriers, board.alerts) == ({}, {}, {}, ())


# --- the app around it ----------------------------------------------------------------------------


async def test_the_live_board_versions_each_change_and_wakes_waiting_pages() -> None:
    live = LiveBoard(latest=5)
    version = live.version
    waiter = asyncio.create_task(live.changed_since(version))
    await asyncio.sleep(0)
    assert not waiter.done()
    live.apply([restocked(10)], unreadable=1)
    await asyncio.wait_for(waiter, 1)
    state = json.loads(live.state_json())
    assert (state["version"], state["events"], state["unreadable"]) == (version + 1, 1, 1)
    assert live.state_json() is live.state_json(), "serialised once per version"


async def call(app: Any, path: str) -> tuple[int, bytes]:
    """One GET through the ASGI interface, without a server."""
    sent: list[dict[str, Any]] = []
    requested, finished = False, asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # the client hangs up once the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_the_app_serves_state_health_and_the_page() -> None:
    live = LiveBoard(latest=5)
    app = create_app(BoardSettings(), live, follow_topics=False)
    assert (await call(app, "/health"))[0] == 503
    live.following = True
    live.apply([restocked(10)])
    status, body = await call(app, "/api/state")
    assert status == 200 and json.loads(body)["stock"][0]["drugs"][0]["available"] == 10
    assert json.loads((await call(app, "/health"))[1]) == {"status": "ok", "events": 1}
    status, page = await call(app, "/")
    assert status == 200 and b"EventSource" not in page and b"/static/board.js" in page
    status, script = await call(app, "/static/board.js")
    assert status == 200 and b'new EventSource("/events")' in script
