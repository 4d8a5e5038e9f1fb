"""Log lines never carry patient data, even when someone logs a whole model."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from services.runtime.logging import REDACTED, configure_logging
from tests.support.scenario import prescription_message


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Logging configured as a service does, into a buffer; undone afterwards."""
    root_handlers = logging.getLogger().handlers[:]
    buffer = io.StringIO()
    configure_logging("test", "INFO", "json", stream=buffer)
    yield buffer
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = root_handlers


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
