"""Wire contracts: the envelope, message-level rules, and the topic registry."""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, core_schema

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import prescription as rx
from pharmacy_contracts import topics
from pharmacy_contracts.consultation import CancellationRequested, Prescription, PrescriptionSubmitted
from pharmacy_contracts.envelope import Envelope, Producer
from pharmacy_contracts.geo import EARTH_RADIUS_KM, great_circle_km
from pharmacy_contracts.lifecycle import PIPELINE, TERMINAL, Stage, next_stage, stage_of
from pharmacy_contracts.limits import (
    MAX_ATTEMPTS,
    MAX_DAYS_SUPPLY,
    MAX_ITEMS,
    MAX_SHELF_LIFE,
    MAX_STOCK_UNITS,
    MAX_UNITS,
    MULTILINE,
    ONE_LINE,
)
from tests.unit.builders import (
    EXAMPLE_PRESCRIPTION_PATH,
    RX_ID,
    abandoned,
    accepted,
    approved,
    assigned,
    cancellation_requested,
    completed,
    delivery_accepted,
    delivery_failed,
    envelope_fields,
    lifecycle_messages_of_reviews_and_cancellations,
    low_stock,
    make_prescription,
    make_report,
    make_submitted,
    one_of_each_message,
    picked_up,
    prescription_data,
    rejected,
    reservation_failed,
    reserved,
    restocked,
    submitted_data,
)

ALL_MESSAGE_CLASSES = [message for topic in topics.ALL_TOPICS for message in topic.messages]


# --- the example and the envelope -----------------------------------------------------------------


def test_the_example_prescription_is_valid():
    prescription = Prescription.model_validate_json(EXAMPLE_PRESCRIPTION_PATH.read_text())

    assert prescription.prescription_id == "RX-2026-000123"
    assert [item.drug_code for item in prescription.items] == ["MET500", "AML5"]
    assert prescription.issued_at == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def test_envelope_refuses_unknown_fields():
    with pytest.raises(ValidationError) as error:
        PrescriptionSubmitted.model_validate(submitted_data(surprise="hello"))

    assert error.value.errors()[0]["type"] == "extra_forbidden"
    assert error.value.errors()[0]["loc"] == ("surprise",)


def test_nested_contracts_refuse_unknown_fields_too():
    data = prescription_data()
    data["patient"]["address"]["floor"] = 3

    with pytest.raises(ValidationError) as error:
        Prescription.model_validate(data)

    assert [(e["type"], e["loc"]) for e in error.value.errors()] == [
        ("extra_forbidden", ("patient", "address", "floor"))
    ]


def test_envelope_messages_are_immutable():
    message = make_submitted()

    with pytest.raises(ValidationError):
        message.producer = "someone-else"


@pytest.mark.parametrize("occurred_at", ["2027-01-15T09:00:00", datetime(2027, 1, 15, 9, 0)], ids=["str", "datetime"])
def test_occurred_at_without_a_timezone_is_refused(occurred_at):
    with pytest.raises(ValidationError) as error:
        make_submitted(occurred_at=occurred_at)

    assert error.value.errors()[0]["loc"] == ("occurred_at",)
    assert error.value.errors()[0]["type"] == "timezone_aware"


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2027-01-15T14:00:00+05:00",
        "2027-01-15T04:00:00-05:00",
        datetime(2027, 1, 15, 14, 0, tzinfo=timezone(timedelta(hours=5))),
        "2027-01-15T09:00:00Z",
    ],
)
def test_occurred_at_in_another_timezone_is_normalised_to_utc(occurred_at):
    message = make_submitted(occurred_at=occurred_at)

    assert message.occurred_at == datetime(2027, 1, 15, 9, 0, tzinfo=UTC)
    assert message.occurred_at.utcoffset() == timedelta(0)
    assert message.occurred_at.tzinfo is UTC


def test_prescription_times_are_normalised_to_utc_too():
    prescription = make_prescription(valid_until="2027-05-25T13:00:00+05:00")

    assert prescription.valid_until == datetime(2027, 5, 25, 8, 0, tzinfo=UTC)
    assert prescription.valid_until.tzinfo is UTC


def test_prescription_issued_at_without_a_timezone_is_refused():
    with pytest.raises(ValidationError):
        make_prescription(issued_at="2026-11-25T08:00:00")


def test_envelope_defaults_a_message_id_and_an_aware_occurred_at():
    message = PrescriptionSubmitted(
        correlation_id=RX_ID, producer="tests", sender_id="CLINIC-SYS-1", prescription=make_prescription()
    )

    assert message.message_id
    assert message.occurred_at.tzinfo is UTC
    assert message.schema_version == 1
    assert message.type == "consultation.prescription_submitted"


@pytest.mark.parametrize("bad_id", ["", " RX-1", "RX 1", "-RX-1", "RX/1", "x" * 129])
def test_identifiers_must_be_plain(bad_id):
    with pytest.raises(ValidationError):
        make_submitted(message_id=bad_id)


def test_a_message_of_the_wrong_type_is_refused():
    with pytest.raises(ValidationError):
        PrescriptionSubmitted.model_validate(submitted_data(type="consultation.prescription_accepted"))


# --- message rules ----------------------------------------------------------------------------------


def test_prescription_submitted_needs_the_correlation_id_to_be_the_prescription_id():
    with pytest.raises(ValidationError, match=r"correlation_id must equal prescription\.prescription_id"):
        make_submitted(correlation_id="RX-OTHER")


def test_prescription_submitted_with_matching_correlation_id_is_accepted():
    message = make_submitted(make_prescription(prescription_id="RX-77"))

    assert message.correlation_id == message.prescription.prescription_id == "RX-77"


@pytest.mark.parametrize("status", ["accepted", "picked_up", "delivered"])
def test_courier_report_without_failure_needs_no_reason(status):
    assert make_report(dispatch_id="D1", courier_id="CUR-1", status=status).failure_reason is None


@pytest.mark.parametrize("status", ["accepted", "picked_up", "delivered"])
def test_courier_report_with_a_reason_but_no_failure_is_refused(status):
    with pytest.raises(ValidationError, match="failure_reason is required"):
        make_report(dispatch_id="D1", courier_id="CUR-1", status=status, failure_reason="damaged")


def test_courier_report_of_failure_needs_a_reason():
    with pytest.raises(ValidationError, match="failure_reason is required"):
        make_report(dispatch_id="D1", courier_id="CUR-1", status="failed")

    report = make_report(dispatch_id="D1", courier_id="CUR-1", status="failed", failure_reason="patient_absent")
    assert report.failure_reason == "patient_absent"


def test_courier_report_refuses_unknown_statuses_and_reasons():
    with pytest.raises(ValidationError):
        make_report(dispatch_id="D1", courier_id="CUR-1", status="lost")
    with pytest.raises(ValidationError):
        make_report(dispatch_id="D1", courier_id="CUR-1", status="failed", failure_reason="dog")


def test_cancellation_requested_needs_the_correlation_id_to_be_the_prescription_id():
    with pytest.raises(ValidationError, match="correlation_id must equal prescription_id"):
        cancellation_requested(correlation_id="RX-OTHER")


def test_cancellation_requested_with_matching_correlation_id_is_accepted():
    message = cancellation_requested(prescription_id="RX-77")

    assert message.correlation_id == message.prescription_id == "RX-77"


def test_a_delivered_report_carries_the_patients_code():
    report = make_report(dispatch_id="D1", courier_id="CUR-1", status="delivered", delivery_code="004217")

    assert report.delivery_code == "004217"


@pytest.mark.parametrize("status", ["accepted", "picked_up", "returned"])
def test_a_delivery_code_on_any_other_report_is_refused(status):
    with pytest.raises(ValidationError, match="delivery_code belongs to a 'delivered' report only"):
        make_report(dispatch_id="D1", courier_id="CUR-1", status=status, delivery_code="123456")


def test_a_delivery_code_on_a_failure_report_is_refused():
    with pytest.raises(ValidationError, match="delivery_code belongs to a 'delivered' report only"):
        make_report(
            dispatch_id="D1", courier_id="CUR-1", status="failed", failure_reason="refused", delivery_code="123456"
        )


def test_a_delivered_report_without_a_code_still_parses():
    # A missing code is the courier service's rule (the delivery does not count), not a parse error.
    assert make_report(dispatch_id="D1", courier_id="CUR-1", status="delivered").delivery_code is None


@pytest.mark.parametrize("code", ["12345", "1234567", "12345a", "١٢٣٤٥٦", " 123456", "123456\n", ""])
def test_a_delivered_report_with_a_code_that_is_not_six_digits_is_refused(code):
    with pytest.raises(ValidationError) as error:
        make_report(dispatch_id="D1", courier_id="CUR-1", status="delivered", delivery_code=code)

    assert error.value.errors()[0]["loc"] == ("delivery_code",)


@pytest.mark.parametrize(
    ("code", "accepted"),
    [
        ("000000", True),
        ("999999", True),
        ("123456", True),
        ("12345", False),  # one digit short
        ("1234567", False),  # one digit over
        ("", False),
        ("12 456", False),
        ("12345x", False),
    ],
)
def test_delivery_code_is_exactly_six_ascii_digits(code, accepted):
    adapter = TypeAdapter(c.DeliveryCode)

    if accepted:
        assert adapter.validate_python(code) == code
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(code)


def test_quantities_and_days_are_plain_integers_on_the_prescription():
    # Whether they are sensible is a formulary rule (a reason code), not a parse error.
    prescription = make_prescription(
        items=[{"drug_code": "MET500", "quantity": -3, "dosage_text": "x", "days_supply": 0}]
    )

    assert (prescription.items[0].quantity, prescription.items[0].days_supply) == (-3, 0)


def test_stock_lines_must_be_positive():
    with pytest.raises(ValidationError):
        inv.StockLine(drug_code="MET500", quantity=0)


def test_a_rejection_needs_at_least_one_reason():
    with pytest.raises(ValidationError):
        rx.PrescriptionRejected(**envelope_fields(), prescription_id=RX_ID, reasons=[])


# --- topics ------------------------------------------------------------------------------------------


def test_every_message_class_belongs_to_exactly_one_topic():
    assert len(ALL_MESSAGE_CLASSES) == len(set(ALL_MESSAGE_CLASSES))
    assert set(topics.TOPIC_OF_MESSAGE) == set(ALL_MESSAGE_CLASSES)
    for message in ALL_MESSAGE_CLASSES:
        owners = [topic.name for topic in topics.ALL_TOPICS if message in topic.messages]
        assert len(owners) == 1, (message.__name__, owners)


def test_every_envelope_subclass_is_on_some_topic():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    # A service may give its own internal records the envelope (a sweep's look at a document); the
    # contracts package declares only messages that travel.
    concrete = {
        cls
        for cls in subclasses(Envelope)
        if not cls.__name__.startswith("_") and cls.__module__.startswith("pharmacy_contracts")
    }

    assert concrete == set(ALL_MESSAGE_CLASSES)


def test_message_types_are_unique_across_all_topics():
    types = [message.model_fields["type"].default for message in ALL_MESSAGE_CLASSES]

    assert len(types) == len(set(types))


def test_topic_names_are_unique_and_versioned():
    names = [topic.name for topic in topics.ALL_TOPICS]

    assert len(names) == len(set(names)) == 15
    assert "prescription.reviews.v1" in names
    assert all(name.endswith(".v1") for name in names)
    assert topics.BY_NAME["courier.updates.v1"] is topics.COURIER_UPDATES
    assert topics.COURIER_UPDATES.dead_letter_topic == "courier.updates.v1.dlq"


def test_one_of_each_message_covers_every_class():
    assert {type(message) for message in one_of_each_message()} == set(ALL_MESSAGE_CLASSES)


@pytest.mark.parametrize("message", one_of_each_message(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_its_topic(message):
    topic = topics.topic_for(message)

    parsed = topic.parse(message.model_dump_json())

    assert type(parsed) is type(message)
    assert parsed == message


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\x00garbage", b"not json", b"", b"{}", b"[]", b"null", b'{"type": "nope"}'],
    ids=["binary", "text", "empty", "empty-object", "list", "null", "unknown-type"],
)
@pytest.mark.parametrize("topic", topics.ALL_TOPICS, ids=lambda t: t.name)
def test_parse_of_garbage_raises_a_validation_error(topic, raw):
    with pytest.raises(ValidationError):
        topic.parse(raw)


def test_parse_of_a_message_on_the_wrong_topic_is_refused():
    with pytest.raises(ValidationError):
        topics.COURIER_DELIVERIES.parse(approved().model_dump_json())
    with pytest.raises(ValidationError):
        topics.CONSULTATION_INTAKE.parse(make_submitted().model_dump_json())
    with pytest.raises(ValidationError):
        topics.CONSULTATION_INTAKE.parse(cancellation_requested().model_dump_json())
    review = next(m for m in one_of_each_message() if isinstance(m, rx.ReviewDecided))
    with pytest.raises(ValidationError):
        topics.PRESCRIPTION_DECISIONS.parse(review.model_dump_json())


@pytest.mark.parametrize(
    "message",
    [approved(), rejected()]
    + [
        m
        for m in lifecycle_messages_of_reviews_and_cancellations()
        if topics.topic_for(m) is topics.PRESCRIPTION_DECISIONS
    ],
    ids=lambda m: type(m).__name__,
)
def test_decisions_topic_parses_each_decision_by_its_type(message):
    parsed = topics.PRESCRIPTION_DECISIONS.parse(message.model_dump_json().encode())

    assert type(parsed) is type(message)


@pytest.mark.parametrize(
    "message",
    [
        m
        for m in lifecycle_messages_of_reviews_and_cancellations()
        if topics.topic_for(m) is topics.PRESCRIPTION_REVIEWS
    ],
    ids=lambda m: type(m).__name__,
)
def test_reviews_topic_parses_each_pharmacist_command_by_its_type(message):
    parsed = topics.PRESCRIPTION_REVIEWS.parse(message.model_dump_json())

    assert type(parsed) is type(message)
    assert topics.PRESCRIPTION_REVIEWS.key_of(parsed) == RX_ID


def test_the_upstream_topic_parses_a_cancellation_by_its_type():
    parsed = topics.CONSULTATION_PRESCRIPTIONS.parse(cancellation_requested().model_dump_json())

    assert type(parsed) is CancellationRequested


@pytest.mark.parametrize(
    "message",
    [assigned(), delivery_accepted(), picked_up(), completed(), delivery_failed(), abandoned()]
    + [
        m for m in lifecycle_messages_of_reviews_and_cancellations() if topics.topic_for(m) is topics.COURIER_DELIVERIES
    ],
    ids=lambda m: type(m).__name__,
)
def test_deliveries_topic_parses_each_delivery_event_by_its_type(message):
    parsed = topics.COURIER_DELIVERIES.parse(message.model_dump_json())

    assert type(parsed) is type(message)
    assert parsed.prescription_id == RX_ID


def test_multi_message_topic_refuses_a_known_type_with_the_wrong_fields():
    data = json.loads(approved().model_dump_json())
    data["type"] = "prescription.rejected"

    with pytest.raises(ValidationError):
        topics.PRESCRIPTION_DECISIONS.parse(json.dumps(data))


def test_multi_message_topic_still_forbids_unknown_fields():
    data = json.loads(rejected().model_dump_json()) | {"extra": 1}

    with pytest.raises(ValidationError):
        topics.PRESCRIPTION_DECISIONS.parse(json.dumps(data))


@pytest.mark.parametrize(
    ("topic", "message", "key"),
    [
        (topics.CONSULTATION_PRESCRIPTIONS, make_submitted(), RX_ID),
        (topics.CONSULTATION_PRESCRIPTIONS, cancellation_requested(prescription_id="RX-4"), "RX-4"),
        (topics.PRESCRIPTION_DECISIONS, approved(prescription_id="RX-5"), "RX-5"),
        (topics.PRESCRIPTION_DECISIONS, rejected(prescription_id="RX-6"), "RX-6"),
        (topics.INVENTORY_EVENTS, reserved(prescription_id="RX-7", warehouse_id="WH-9"), "RX-7"),
        (topics.INVENTORY_EVENTS, reservation_failed(prescription_id="RX-8"), "RX-8"),
        (topics.INVENTORY_EVENTS, restocked(warehouse_id="WH-3"), "WH-3"),
        (topics.INVENTORY_EVENTS, low_stock(warehouse_id="WH-4"), "WH-4"),
        (topics.COURIER_UPDATES, make_report(dispatch_id="D1", courier_id="CUR-1", package_id="RX-9"), "RX-9"),
        (topics.COURIER_DELIVERIES, assigned(prescription_id="RX-10"), "RX-10"),
        (topics.COURIER_DELIVERIES, abandoned(prescription_id="RX-11"), "RX-11"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Envelope) else None,
)
def test_key_of_picks_the_topics_key_field(topic, message, key):
    assert topic.key_of(message) == key


def test_key_of_for_every_message_uses_its_topic_key_fields():
    expected = {
        "consultation.prescriptions.v1": lambda m: m.correlation_id,
        "consultation.intake.v1": lambda m: m.correlation_id,
        "consultation.receipts.v1": lambda m: m.sender_id,
        "patient.notifications.v1": lambda m: m.prescription_id,
        "prescription.decisions.v1": lambda m: m.prescription_id,
        "prescription.reviews.v1": lambda m: m.prescription_id,
        "inventory.commands.v1": lambda m: m.warehouse_id,
        "inventory.events.v1": lambda m: getattr(m, "prescription_id", None) or m.warehouse_id,
        "courier.dispatch.v1": lambda m: m.courier_id,
        "courier.updates.v1": lambda m: m.package_id,
        "courier.deliveries.v1": lambda m: m.prescription_id,
        "courier.dispatchers.v1": lambda m: m.prescription_id,
        "courier.answers.v1": lambda m: m.courier_id,
        "prescription.answers.v1": lambda m: m.pharmacist_id,
        "prescription.formulary.v1": lambda m: m.drug_code,
    }
    assert set(expected) == set(topics.BY_NAME)
    for message in one_of_each_message():
        topic = topics.topic_for(message)
        assert topic.key_of(message) == expected[topic.name](message), type(message).__name__


def test_the_dispatch_topic_is_keyed_by_courier():
    offer = next(m for m in one_of_each_message() if isinstance(m, c.DispatchOffered))

    assert topics.COURIER_DISPATCH.key_of(offer.model_copy(update={"courier_id": "CUR-42"})) == "CUR-42"


def test_inventory_commands_are_keyed_by_warehouse():
    command = next(m for m in one_of_each_message() if isinstance(m, inv.RestockRequested))

    assert topics.INVENTORY_COMMANDS.key_of(command) == "WH-1"


def test_key_of_a_message_without_any_key_field_is_an_error():
    with pytest.raises(ValueError, match="has none of"):
        topics.COURIER_DISPATCH.key_of(make_submitted())


def test_a_timestamp_that_overflows_in_utc_is_a_validation_error_not_a_crash() -> None:
    import pydantic

    from pharmacy_contracts.inventory import RestockRequested

    raw = (
        '{"type":"inventory.restock_requested","correlation_id":"c","producer":"p","warehouse_id":"W",'
        '"drug_code":"D","lot_id":"L1","expiry_date":"2031-12-31","quantity":1,"requested_by":"x",'
        '"occurred_at":"9999-12-31T23:59:59-01:00"}'
    )
    RestockRequested.model_validate_json(raw.replace("9999-12-31T23:59:59-01:00", "2027-01-15T09:00:00Z"))
    with pytest.raises(pydantic.ValidationError) as error:
        RestockRequested.model_validate_json(raw)

    assert [e["loc"] for e in error.value.errors()] == [("occurred_at",)]


# --- what storage can hold: bounded numbers, sensible dates, printable text ---------------------------
# The hostile values that found the holes (issue 13): each passed the contract and failed later, in
# storage (OverflowError, retried, dead-lettered `processing_failed`) or on a pharmacist's screen.
# tests/e2e/test_fuzz.py sends the same mutations through the running services.

HUGE_INTEGERS = [2**63, 2**63 - 1, 10**30, -(2**63) - 1]
HIDDEN_CHARACTERS = {
    "NUL": "\x00",
    "bell": "\x07",
    "escape": "\x1b",
    "DEL": "\x7f",
    "C1 next line": "\x85",
    "C1 CSI": "\x9b",
    "LRE": "\u202a",
    "RLE": "\u202b",
    "PDF": "\u202c",
    "LRO": "\u202d",
    "RLO": "\u202e",
    "LRI": "\u2066",
    "RLI": "\u2067",
    "FSI": "\u2068",
    "PDI": "\u2069",
}


def json_leaves(doc, path=()):
    """Every leaf of a JSON tree with its path."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from json_leaves(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from json_leaves(value, (*path, index))
    else:
        yield path, doc


def with_leaf(doc, path, value):
    doc = json.loads(json.dumps(doc))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def accepted_mutations(mutate) -> tuple[int, list[tuple[str, tuple]]]:
    """Each leaf of one of each message that `mutate(path, value)` changes (None: leave it), parsed by
    the message's topic: how many were tried, and those the topic accepted."""
    tried, accepted = 0, []
    for message in one_of_each_message():
        topic = topics.topic_for(message)
        doc = message.model_dump(mode="json")
        for path, value in json_leaves(doc):
            changed = mutate(path, value)
            if changed is None:
                continue
            tried += 1
            try:
                topic.parse(json.dumps(with_leaf(doc, path, changed)))
            except ValidationError:
                continue
            accepted.append((type(message).__name__, path))
    return tried, accepted


@pytest.mark.parametrize("huge", HUGE_INTEGERS)
def test_no_integer_in_any_message_takes_what_storage_cannot_hold(huge):
    tried, accepted = accepted_mutations(lambda _, v: huge if type(v) is int else None)

    assert tried >= 30, "one of each message has integers to try"
    assert accepted == []


@pytest.mark.parametrize("char", HIDDEN_CHARACTERS.values(), ids=HIDDEN_CHARACTERS.keys())
def test_no_text_in_any_message_takes_a_control_or_bidi_character(char):
    tried, accepted = accepted_mutations(lambda _, v: v[:1] + char + v[1:] if isinstance(v, str) else None)

    assert tried >= 200, "one of each message has text to try"
    assert accepted == []


@pytest.mark.parametrize(
    ("message_type", "path", "lowest", "highest"),
    [
        (PrescriptionSubmitted, ("prescription", "items", 0, "quantity"), -MAX_UNITS, MAX_UNITS),
        (PrescriptionSubmitted, ("prescription", "items", 0, "days_supply"), -MAX_DAYS_SUPPLY, MAX_DAYS_SUPPLY),
        (PrescriptionSubmitted, ("schema_version",), 1, 1000),
        (rx.PrescriptionApproved, ("lines", 0, "quantity"), 1, MAX_UNITS),
        (rx.PrescriptionApproved, ("lines", 0, "days_supply"), 1, MAX_DAYS_SUPPLY),
        (rx.PrescriptionRejected, ("reasons", 0, "item_index"), 0, MAX_ITEMS - 1),
        (inv.RestockRequested, ("quantity",), 1, MAX_UNITS),
        (inv.AdjustmentRequested, ("delta",), -MAX_UNITS, MAX_UNITS),
        (inv.StockReserved, ("lines", 0, "quantity"), 1, MAX_STOCK_UNITS),
        (inv.StockReserved, ("picks", 0, "quantity"), 1, MAX_STOCK_UNITS),
        (inv.StockReserved, ("movements", 0, "quantity"), 1, MAX_STOCK_UNITS),
        (inv.StockReserved, ("levels", 0, "available"), 0, MAX_STOCK_UNITS),
        (inv.StockReserved, ("levels", 0, "quarantined"), 0, MAX_STOCK_UNITS),
        (inv.ReservationFailed, ("shortages", 0, "requested"), 1, MAX_STOCK_UNITS),
        (inv.ReservationFailed, ("shortages", 0, "best_available"), 0, MAX_STOCK_UNITS),
        (inv.LowStock, ("threshold",), 0, MAX_STOCK_UNITS),
        (inv.LotExpired, ("removed",), 0, MAX_STOCK_UNITS),
        (inv.LotNearingExpiry, ("available",), 0, MAX_STOCK_UNITS),
        (c.CourierAssigned, ("attempt",), 1, MAX_ATTEMPTS),
        (c.DispatchOffered, ("attempt",), 1, MAX_ATTEMPTS),
        (c.DeliveryAbandoned, ("attempts",), 1, MAX_ATTEMPTS),
        (c.DeliveryCodeRejected, ("wrong_codes",), 1, MAX_ATTEMPTS),
    ],
    ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else getattr(v, "__name__", None),
)
def test_each_integer_takes_its_bounds_and_not_one_more(message_type, path, lowest, highest):
    message = next(m for m in one_of_each_message() if type(m) is message_type)
    topic, doc = topics.topic_for(message), message.model_dump(mode="json")

    for fits in (lowest, highest):
        assert getattr(topic.parse(json.dumps(with_leaf(doc, path, fits))), path[0]) is not None
    for beyond in (lowest - 1, highest + 1):
        with pytest.raises(ValidationError) as error:
            topic.parse(json.dumps(with_leaf(doc, path, beyond)))
        assert any(e["loc"][-len(path) :] == path for e in error.value.errors()), error.value.errors()


def test_an_approval_has_at_most_one_line_per_possible_item():
    # Inventory adds a drug's lines up: bounded lines keep the sum under what a level may hold.
    line = {"drug_code": "MET500", "quantity": MAX_UNITS, "days_supply": 30}
    doc = approved().model_dump(mode="json")

    assert len(topics.PRESCRIPTION_DECISIONS.parse(json.dumps({**doc, "lines": [line] * MAX_ITEMS})).lines) == 20
    with pytest.raises(ValidationError, match="at most 20 items"):
        topics.PRESCRIPTION_DECISIONS.parse(json.dumps({**doc, "lines": [line] * (MAX_ITEMS + 1)}))
    assert MAX_ITEMS * MAX_UNITS <= MAX_STOCK_UNITS


def test_the_bounds_leave_room_for_sums_in_64_bits():
    assert MAX_STOCK_UNITS * 1_000_000 < 2**63  # a million levels summed still fit


ISSUED = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "valid_until", [ISSUED + timedelta(days=367), ISSUED + timedelta(days=30), ISSUED - timedelta(days=1)]
)
def test_a_prescription_may_be_valid_up_to_a_year_after_issue(valid_until):
    # A window that ends before it starts is the prescription service's to answer (VALIDITY_WINDOW_INVALID).
    prescription = make_prescription(issued_at=ISSUED.isoformat(), valid_until=valid_until.isoformat())

    assert prescription.valid_until == valid_until


@pytest.mark.parametrize(
    "valid_until",
    [
        ISSUED + timedelta(days=367, seconds=1),
        "2036-11-25T08:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59.999999+00:00",
    ],
)
def test_a_prescription_valid_for_longer_than_a_year_is_refused_with_the_reason(valid_until):
    value = valid_until if isinstance(valid_until, str) else valid_until.isoformat()

    with pytest.raises(
        ValidationError, match="after issued_at 2026-11-25: no prescription is valid that long"
    ) as error:
        make_prescription(issued_at=ISSUED.isoformat(), valid_until=value)
    assert error.value.errors()[0]["loc"] == ()


def test_a_validity_near_the_end_of_time_is_measured_without_overflowing():
    # issued_at + a year would pass datetime.max: the rule measures the difference.
    prescription = make_prescription(issued_at="9999-12-30T00:00:00Z", valid_until="9999-12-31T23:59:59Z")

    assert prescription.valid_until.year == 9999  # not yet valid: the prescription service's answer
    with pytest.raises(ValidationError, match="no prescription is valid that long"):
        make_prescription(issued_at="0001-01-01T00:00:00Z", valid_until="9999-12-31T23:59:59Z")


def restock_requested(expiry_date, occurred_at="2026-12-07T10:00:00Z") -> inv.RestockRequested:
    return inv.RestockRequested.model_validate(
        {
            **envelope_fields(correlation_id="CMD-1", occurred_at=occurred_at),
            "type": "inventory.restock_requested",
            "warehouse_id": "WH-1",
            "drug_code": "MET500",
            "lot_id": "MET500-L1",
            "expiry_date": str(expiry_date),
            "quantity": 10,
            "requested_by": "Aigerim",
        }
    )


def test_a_lot_may_expire_up_to_ten_years_after_it_is_received_or_already_have_expired():
    # An expired lot is inventory's to refuse, on its own clock (StockCommandRefused), not a parse error.
    received = date(2026, 12, 7)

    assert restock_requested(received + MAX_SHELF_LIFE).expiry_date == date(2036, 12, 7)
    assert restock_requested(date(2020, 1, 1)).expiry_date == date(2020, 1, 1)


@pytest.mark.parametrize("expiry_date", [date(2036, 12, 8), date(2099, 1, 1), date(9999, 12, 31)])
def test_a_lot_expiring_more_than_ten_years_ahead_is_refused_with_the_reason(expiry_date):
    with pytest.raises(ValidationError, match=f"expiry_date {expiry_date} is more than ten years after the restock"):
        restock_requested(expiry_date)

    with pytest.raises(ValidationError, match="no medicine keeps that long"):
        topics.INVENTORY_COMMANDS.parse(
            restock_requested(date(2030, 1, 1)).model_dump_json().replace("2030-01-01", "9999-12-31")
        )


def test_a_hidden_character_is_named_with_where_it_is():
    data = submitted_data()
    data["prescription"]["patient"]["name"] = "Gulnara \u202eavokadaS"

    with pytest.raises(ValidationError) as error:
        PrescriptionSubmitted.model_validate(data)

    (found,) = error.value.errors()
    assert found["loc"] == ("prescription", "patient", "name")
    assert found["type"] == "unprintable_character"
    assert found["msg"] == "contains U+202E at position 8: only visible text on one line is accepted"


@pytest.mark.parametrize(
    ("where", "text"),
    [
        (("patient", "name"), "Gulnara\nSadykova"),
        (("patient", "name"), "Gulnara\tSadykova"),
        (("patient", "name"), "Gulnara\u2028Sadykova"),
        (("patient", "address", "town"), "North\rford"),
        (("prescriber", "name"), "Dr.\u2029Karimov"),
    ],
)
def test_names_and_towns_are_one_line(where, text):
    data = prescription_data()
    target = data
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = text

    with pytest.raises(ValidationError, match="only visible text on one line"):
        Prescription.model_validate(data)


def test_names_in_any_script_with_their_direction_marks_are_accepted():
    data = prescription_data()
    # Uyghur in Arabic script with a right-to-left mark, Chinese, an accent and an astral character.
    data["patient"]["name"] = "\u06af\u06c8\u0644\u0646\u0627\u0631\u06d5 \u200fSadykova \u53e4\u4e3d Zoë 𝄞"
    data["patient"]["address"]["line"] = "Farmstead 7\nSteppe Road\t(behind the mill)"
    data["items"][0]["dosage_text"] = "Week 1: 40 mg daily\r\nWeek 2: 30 mg daily"

    prescription = Prescription.model_validate(data)

    assert prescription.patient.name == data["patient"]["name"]
    assert prescription.patient.address.line.count("\n") == 1


@pytest.mark.parametrize("printable", [ONE_LINE, MULTILINE], ids=["one line", "multiline"])
def test_the_published_pattern_refuses_exactly_what_the_contract_refuses(printable):
    # Senders in other languages validate with the JSON Schema's pattern; it must agree with the code.
    pattern = re.compile(printable.__get_pydantic_json_schema__(core_schema.str_schema(), lambda s: {})["pattern"])
    for code in [*range(0xD800), *range(0xE000, 0x10000), 0x1D11E, 0x10FFFF]:
        text = f"a{chr(code)}b"
        try:
            printable.check(text)
            refused = False
        except PydanticCustomError:
            refused = True
        assert refused is (pattern.fullmatch(text) is None), hex(code)


def test_a_lone_surrogate_is_refused_though_no_pattern_can_say_so():
    # UTF-8 (JSON's, BSON's) cannot encode it; a pattern over UTF-16 code units would refuse pairs too.
    with pytest.raises(PydanticCustomError):
        ONE_LINE.check("a\ud800b")


# --- shared vocabulary: distance ------------------------------------------------------------------


def test_great_circle_one_degree_of_latitude_is_about_111_km():
    assert great_circle_km((51.0, 70.0), (52.0, 70.0)) == pytest.approx(111.2, abs=0.1)
    assert great_circle_km((51.8, 69.4), (51.8, 69.4)) == 0.0


def test_great_circle_is_symmetric_and_follows_the_parallel_s_shrinking():
    north, south = (51.8, 69.4), (43.2, 76.9)
    assert great_circle_km(north, south) == great_circle_km(south, north)
    # one degree of longitude is cos(latitude) times shorter than at the equator
    assert great_circle_km((60.0, 0.0), (60.0, 1.0)) == pytest.approx(111.2 / 2, abs=0.1)


def test_great_circle_between_antipodes_is_half_the_circumference():
    assert great_circle_km((0.0, 0.0), (0.0, 180.0)) == pytest.approx(math.pi * EARTH_RADIUS_KM)


# --- shared vocabulary: a prescription's lifecycle ------------------------------------------------


def test_each_lifecycle_event_reports_its_stage_and_stock_alerts_report_none():
    reported = [
        stage_of(e)
        for e in (accepted(), approved(), reserved(), assigned(), delivery_accepted(), picked_up(), completed())
    ]
    assert reported == [
        Stage.RECEIVED,
        Stage.APPROVED,
        Stage.RESERVED,
        Stage.COURIER_ASSIGNED,
        Stage.ACCEPTED_BY_COURIER,
        Stage.PICKED_UP,
        Stage.DELIVERED,
    ]
    assert [stage_of(e) for e in (rejected(), reservation_failed(), abandoned(), delivery_failed())] == [
        Stage.REJECTED,
        Stage.OUT_OF_STOCK,
        Stage.UNDELIVERABLE,
        Stage.DELIVERY_FAILED,
    ]
    assert stage_of(low_stock()) is None
    assert stage_of(restocked()) is None


def test_a_pipeline_stage_only_moves_forward():
    for earlier, later in itertools.pairwise(PIPELINE):
        assert next_stage(earlier, later) is later
        assert next_stage(later, earlier) is later
    assert next_stage(Stage.COURIER_ASSIGNED, Stage.RESERVED) is Stage.COURIER_ASSIGNED


def test_a_courier_stage_is_the_latest_word_and_the_first_terminal_stage_stays():
    assert next_stage(Stage.PICKED_UP, Stage.WAITING_FOR_COURIER) is Stage.WAITING_FOR_COURIER
    assert next_stage(Stage.HELD_FOR_REVIEW, Stage.REJECTED) is Stage.REJECTED
    for ended in TERMINAL:
        assert all(next_stage(ended, stage) is ended for stage in Stage)


def test_a_producer_fills_the_envelope_the_same_way_for_every_service() -> None:
    cause = inv.LowStock(
        correlation_id="WH-1", producer="other", warehouse_id="WH-1", drug_code="MET500", available=3, threshold=20
    )
    at = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    alert = inv.LowStock(
        **Producer("inventory").envelope("WH-1", cause, at=at),
        warehouse_id="WH-1",
        drug_code="MET500",
        available=2,
        threshold=20,
    )
    assert (alert.correlation_id, alert.causation_id, alert.producer, alert.occurred_at) == (
        "WH-1",
        cause.message_id,
        "inventory",
        at,
    )
    by_id = Producer("courier").envelope("RX-1", "msg-7")
    assert by_id == {"correlation_id": "RX-1", "causation_id": "msg-7", "producer": "courier"}
    assert Producer("courier").envelope("RX-1")["causation_id"] is None
