"""JSON logs through structlog, one line per decision, correlation id bound per message."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

#: Fields that identify or describe a patient. Handlers log ids, never these; the processor below
#: is the safety net for the day someone logs a model or a payload.
PERSONAL_FIELDS = frozenset(
    {
        "name",
        "patient_name",
        "phone",
        "contact_phone",
        "address",
        "line",
        "postcode",
        "coordinates",
        "latitude",
        "longitude",
        "date_of_birth",
        "allergies",
        "diagnosis_codes",
        "dosage_text",
        "patient",
        "prescription",
        "delivery",
        "body",
        "payload",
    }
)
REDACTED = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in PERSONAL_FIELDS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if hasattr(value, "model_dump"):  # a pydantic model logged whole
        return _scrub(value.model_dump(mode="json"))
    return value


def redact_personal_data(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Replace patient names, phones, addresses, diagnoses and the like anywhere in a log line."""
    return {k: REDACTED if k in PERSONAL_FIELDS else _scrub(v) for k, v in event_dict.items()}


def configure_logging(service: str, level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    shared = [
        structlog.contextvars.merge_contextvars,
        redact_personal_data,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    # Library loggers (FastStream, aiokafka, pymongo) render through the same pipeline.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
