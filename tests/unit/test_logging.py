"""Log lines never carry patient data, even when someone logs a whole model."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from fhir.resources.R4B.bundle import Bundle

from pharmacy_contracts.consultation import EXAMPLE_PRESCRIPTION, Prescription, PrescriptionSubmitted
from services.runtime.logging import REDACTED, configure_logging
from tests.support.scenario import prescription_message

FHIR_EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "examples" / "fhir"

#: Every value of the example prescription that says something about its patient.
PATIENT_DATA = (
    "Gulnara Sadykova",  # name
    "+7 701 555 0134",  # phone
    "1958-03-14",  # date of birth
    "penicillin",  # allergy
    "Farmstead 7, Steppe Road",  # address line
    "Northford",  # town
    "N-0412",  # postcode
    "51.812",  # coordinates
    "69.403",
    "E11.9",  # diagnoses
    "I10",
    "1 tablet twice daily with meals",  # dosage texts
    "1 tablet once daily",
)

#: The same for each FHIR example bundle: its Patient, Condition and AllergyIntolerance, its dosages and reasons.
FHIR_PATIENT_DATA = {
    "chronic-metformin-amlodipine.json": (
        "Sadykova",
        "Gulnara",
        "g.sadykova@mail.example",
        "+7 701 555 0134",
        "1958-03-14",
        "Farmstead 7",
        "Steppe Road",
        "N-0412",
        "Penicillin",
        "1 tablet twice daily with meals",
        "E11.9",
        "Type 2 diabetes",
        "Hypertensive disorder",
    ),
    "insulin-glargine.json": (
        "Arman Bekov",
        "+7 702 555 0199",
        "+7 777 555 0142",
        "1971-09-02",
        "12 Mill Lane",
        "Westmere",
        "Aul Zhanatalap",
        "50.4177",
        "20 units subcutaneously at bedtime",
        "E10.9",
        "Type 1 diabetes",
    ),
    "acute-amoxicillin-message.json": (
        "Omarov",
        "Timur",
        "+7 705 555 0177",
        "1994-06-30",
        "Station Street 41",
        "N-0401",
        "51.7702",
        "1 capsule three times daily for 7 days",
        "Streptococcal",
        "J02.0",
    ),
}


@dataclass
class Handled:
    """An internal value that holds a message, as a handler's own bookkeeping might."""

    offset: int
    message: PrescriptionSubmitted


def submitted() -> PrescriptionSubmitted:
    return PrescriptionSubmitted(
        correlation_id="RX-2026-000123",
        producer="district-clinic",
        sender_id="district-clinic",
        prescription=Prescription.model_validate(EXAMPLE_PRESCRIPTION),
    )


def assert_no_patient_data(out: str, patient_data: tuple[str, ...] = PATIENT_DATA) -> None:
    leaked = [value for value in patient_data if value in out]
    assert not leaked, f"patient data in the log: {leaked}\n{out}"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Logging configured as a service does, into a buffer; undone afterwards."""
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level
    capped = {name: logging.getLogger(name).level for name in ("aiokafka", "pymongo.command")}
    buffer = io.StringIO()
    configure_logging("test", "INFO", "json", stream=buffer)
    yield buffer
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = root_handlers
    root.setLevel(root_level)
    for name, level in capped.items():
        logging.getLogger(name).setLevel(level)


def test_the_example_holds_every_kind_of_patient_data() -> None:
    """Otherwise the checks below could pass because a value was never there to leak."""
    whole = submitted().model_dump_json()
    assert [value for value in PATIENT_DATA if value not in whole] == []


def test_personal_fields_are_redacted_anywhere_in_a_line(captured_logs: io.StringIO) -> None:
    submitted = prescription_message("RX-LOG-1", [("MET500", 30)])
    structlog.get_logger().info(
        "something happened", prescription=submitted.prescription, extra={"phone": "+7 700 111 2233"}, rx="RX-LOG-1"
    )
    logging.getLogger("a.library").warning("library line")
    out = captured_logs.getvalue()
    line = json.loads(out.splitlines()[0])
    assert line["prescription"] == REDACTED and line["extra"] == {"phone": REDACTED} and line["rx"] == "RX-LOG-1"
    assert json.loads(out.splitlines()[1])["event"] == "library line"
    for secret in ("Test Patient", "+7 700", "Farm 1", "E11.9", "Northford"):
        assert secret not in out


def test_a_whole_message_logged_under_a_neutral_key_is_redacted(captured_logs: io.StringIO) -> None:
    message = submitted()
    structlog.get_logger().info("handled", message=message)
    line = json.loads(captured_logs.getvalue())
    assert_no_patient_data(captured_logs.getvalue())
    # Scrubbed, not dropped: the ids that make a line useful are still there.
    assert line["message"]["prescription"] == REDACTED and line["message"]["message_id"] == message.message_id


SHAPES: dict[str, Callable[[PrescriptionSubmitted], Any]] = {
    "model": lambda m: m,
    "inner model": lambda m: m.prescription,
    "patient model": lambda m: m.prescription.patient,
    "address model": lambda m: m.prescription.patient.address,
    "item model": lambda m: m.prescription.items[0],
    "list of models": lambda m: [m.prescription, m.prescription.patient],
    "tuple of models": lambda m: (m.prescription, m.prescription.patient),
    "tuple of dumps": lambda m: (m.prescription.model_dump(mode="json"),),
    "set of models": lambda m: {m.prescription.patient.address},
    "frozenset of models": lambda m: frozenset({m.prescription.patient.address}),
    "dict of models": lambda m: {"first": m.prescription, "second": {"deeper": [m.prescription.patient]}},
    "nested dumps": lambda m: {"outer": {"inner": m.prescription.model_dump(mode="json")}},
    "model dump": lambda m: m.prescription.patient.model_dump(),
    "model's JSON": lambda m: m.model_dump_json(),
    "indented JSON": lambda m: "\n  " + m.prescription.model_dump_json(indent=2),
    "record bytes": lambda m: m.model_dump_json().encode(),
    "JSON in a dict": lambda m: {"value": m.prescription.patient.model_dump_json()},
    "dataclass": lambda m: Handled(offset=7, message=m),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_models_logged_in_any_shape_under_a_neutral_key_are_redacted(
    captured_logs: io.StringIO, shape: Callable[[PrescriptionSubmitted], Any]
) -> None:
    structlog.get_logger().info("handled", item=shape(submitted()), rx="RX-2026-000123")
    line = json.loads(captured_logs.getvalue())
    assert line["rx"] == "RX-2026-000123"
    assert_no_patient_data(captured_logs.getvalue())


def test_patient_data_bound_to_the_context_is_redacted_in_every_line(captured_logs: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(item=submitted(), phone="+7 701 555 0134")
    structlog.get_logger().info("handled")
    logging.getLogger("a.library").warning("library line")
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["handled", "library line"]
    assert all(line["phone"] == REDACTED for line in lines)
    assert_no_patient_data(captured_logs.getvalue())


@pytest.mark.parametrize(
    "emit",
    [
        lambda logger, m: logger.warning("handling %s", m),
        lambda logger, m: logger.warning("handling %r of %s", m.prescription.patient, "consultation"),
        lambda logger, m: logger.warning("handling %(message)s", {"message": m, "phone": "+7 701 555 0134"}),
        lambda logger, m: logger.warning(m),
        lambda logger, m: logger.warning(m.model_dump_json()),
    ],
    ids=["argument", "repr argument", "mapping argument", "model as the message", "JSON as the message"],
)
def test_library_lines_formatted_from_models_are_redacted(
    captured_logs: io.StringIO, emit: Callable[[logging.Logger, PrescriptionSubmitted], None]
) -> None:
    emit(logging.getLogger("a.library"), submitted())
    line = json.loads(captured_logs.getvalue())
    assert line["logger"] == "a.library" and line["level"] == "warning"
    assert_no_patient_data(captured_logs.getvalue())


def test_database_commands_stay_out_of_debug_logs(captured_logs: io.StringIO) -> None:
    configure_logging("test", "DEBUG", "json", stream=captured_logs)
    # What pymongo writes at DEBUG: the command with its document, cut at 1,000 characters.
    command = json.dumps(
        {"message": "Command started", "command": json.dumps({"update": submitted().model_dump(mode="json")})}
    )
    assert "Gulnara Sadykova" in command[:1000]
    logging.getLogger("pymongo.command").debug(command[:1000])
    logging.getLogger("a.library").debug("library debug line")
    assert [json.loads(line)["event"] for line in captured_logs.getvalue().splitlines()] == ["library debug line"]


@pytest.mark.parametrize("example", FHIR_PATIENT_DATA, ids=FHIR_PATIENT_DATA)
def test_fhir_bundles_logged_whole_are_redacted(captured_logs: io.StringIO, example: str) -> None:
    raw = (FHIR_EXAMPLES / example).read_bytes()
    patient_data = FHIR_PATIENT_DATA[example]
    assert [value for value in patient_data if value not in raw.decode()] == []
    bundle = Bundle.model_validate_json(raw)
    structlog.get_logger().info("bundle received", item=bundle, raw=raw, text=raw.decode())
    line = json.loads(captured_logs.getvalue())
    assert line["item"]["resourceType"] == "Bundle"
    assert_no_patient_data(captured_logs.getvalue(), patient_data)


def test_every_line_carries_its_service_level_and_a_utc_timestamp(captured_logs: io.StringIO) -> None:
    """Lines from processes on machines in other time zones sort and correlate as they happened."""
    structlog.get_logger().info("service line")
    logging.getLogger("a.library").warning("library line")
    ours, library = (json.loads(line) for line in captured_logs.getvalue().splitlines())
    for line in (ours, library):
        assert line["timestamp"].endswith("Z"), line
        written = datetime.fromisoformat(line["timestamp"])
        assert written.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - written) < timedelta(minutes=5)
    assert (ours["service"], ours["level"], library["level"]) == ("test", "info", "warning")
