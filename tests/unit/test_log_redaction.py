"""Logs carry no patient data, and redaction takes away nothing else: the log pipeline of
`services.runtime.logging` as a service configures it, one shape and one setting at a time.

(tests/unit/test_logging.py holds the broad cases: every personal field, every shape of a message
logged whole, library lines.)
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import date, datetime

import pytest
import structlog
from pydantic import BaseModel

from services.runtime.logging import REDACTED, configure_logging, redact_personal_data

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Configures logging into a buffer like a service does; everything it changed is undone afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    names = ("aiokafka", "pymongo.command")
    saved_levels = {name: logging.getLogger(name).level for name in names}

    def configure_into(*args: str, **kwargs: str) -> io.StringIO:
        buffer = io.StringIO()
        configure_logging(*args, stream=buffer, **kwargs)  # type: ignore[arg-type]
        return buffer

    yield configure_into
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class Lot(BaseModel):
    lot_id: str
    expiry_date: date


@dataclasses.dataclass
class Handled:
    offset: int
    rx: str


# --- the processor: personal fields go, everything else stays as it was --------------------------------


def test_lists_keep_their_other_items() -> None:
    event = {"ids": ["RX-1", {"name": "Gulnara", "rx": "RX-2"}], "pair": ("a", 1)}
    assert redact_personal_data(None, "info", event) == {
        "ids": ["RX-1", {"name": REDACTED, "rx": "RX-2"}],
        "pair": ["a", 1],
    }


def test_a_model_is_logged_as_its_json_form() -> None:
    assert redact_personal_data(None, "info", {"lot": Lot(lot_id="L1", expiry_date=date(2030, 1, 31))}) == {
        "lot": {"lot_id": "L1", "expiry_date": "2030-01-31"}
    }


def test_a_dataclass_is_logged_field_by_field() -> None:
    assert redact_personal_data(None, "info", {"item": Handled(offset=7, rx="RX-1")}) == {
        "item": {"offset": 7, "rx": "RX-1"}
    }


@pytest.mark.parametrize(
    "text",
    [
        '[{"name": "Gulnara", "rx": "RX-1", "city": "Алматы"}]',
        b'[{"name": "Gulnara", "rx": "RX-1", "city": "\xd0\x90\xd0\xbb\xd0\xbc\xd0\xb0\xd1\x82\xd1\x8b"}]',
        '  {"name": "Gulnara", "rx": "RX-1", "city": "Алматы"}',
    ],
    ids=["JSON list", "JSON bytes", "JSON object after blanks"],
)
def test_json_text_is_scrubbed_and_stays_readable(text: str | bytes) -> None:
    scrubbed = redact_personal_data(None, "info", {"body_text": text})["body_text"]
    assert isinstance(scrubbed, str) and "Gulnara" not in scrubbed
    assert "Алматы" in scrubbed, "not escaped to \\u sequences"
    parsed = json.loads(scrubbed)
    item = parsed[0] if isinstance(parsed, list) else parsed
    assert item == {"name": REDACTED, "rx": "RX-1", "city": "Алматы"}


@pytest.mark.parametrize("text", ["plain words", "{not json", b"[1, 2", b"\xff\xfe"])
def test_text_that_is_not_json_is_left_alone(text: str | bytes) -> None:
    assert redact_personal_data(None, "info", {"note": text}) == {"note": text}


# --- library lines (stdlib logging) ---------------------------------------------------------------------


def test_a_library_lines_arguments_are_scrubbed_before_formatting(configure: Configure) -> None:
    out = configure("svc")
    library = logging.getLogger("a.library")
    library.warning("rx %s for %s", "RX-1", {"name": "Gulnara", "ward": 3})
    library.warning("%(rx)s for %(name)s", {"rx": "RX-2", "name": "Gulnara"})
    library.warning({"name": "Gulnara", "rx": "RX-3"})
    library.warning("no arguments at all: 100%")
    events = [line["event"] for line in lines(out)]
    assert events[0] == "rx RX-1 for {'name': '[redacted]', 'ward': 3}"
    assert events[1] == "RX-2 for [redacted]"
    assert "RX-3" in str(events[2]) and "Gulnara" not in str(events[2])
    assert events[3] == "no arguments at all: 100%"


# --- configure_logging ---------------------------------------------------------------------------------


def test_by_default_json_lines_at_info_with_the_service_and_a_utc_timestamp(configure: Configure) -> None:
    out = configure("inventory")
    log = structlog.get_logger()
    log.debug("not shown")
    log.info("shown", rx="RX-1")
    [line] = lines(out)
    assert (line["event"], line["rx"], line["service"], line["level"]) == ("shown", "RX-1", "inventory", "info")
    stamp = str(line["timestamp"])
    assert stamp.endswith("Z") and datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None


def test_the_level_filters_structlog_and_library_lines(configure: Configure) -> None:
    out = configure("svc", "WARNING")
    structlog.get_logger().info("quiet")
    logging.getLogger("a.library").info("quiet too")
    structlog.get_logger().warning("loud")
    assert [line["event"] for line in lines(out)] == ["loud"]
    assert logging.getLogger().level == logging.WARNING


def test_chatty_libraries_are_capped(configure: Configure) -> None:
    configure("svc", "DEBUG")
    assert logging.getLogger("aiokafka").level == logging.WARNING
    assert logging.getLogger("pymongo.command").level == logging.INFO
    configure("svc", "ERROR")
    assert logging.getLogger("aiokafka").level == logging.ERROR
    assert logging.getLogger("pymongo.command").level == logging.ERROR


def test_console_format_is_plain_text_with_plain_tracebacks(configure: Configure) -> None:
    out = configure("svc", "INFO", "console")
    log = structlog.get_logger()
    log.info("readable", phone="+7 701 555 0134")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    assert not text.startswith("{") and "readable" in text and "+7 701" not in text
    assert "Traceback (most recent call last):" in text and "ValueError: boom" in text
    assert "\x1b[" not in text, "no colours when stderr is not a terminal"
    assert "╭" not in text, "a plain traceback, not a boxed one"


def test_loggers_made_before_configuration_follow_it(configure: Configure) -> None:
    early = structlog.get_logger()
    out = configure("svc")
    early.info("after", name="Gulnara")
    [line] = lines(out)
    assert line["name"] == REDACTED and line["service"] == "svc"
