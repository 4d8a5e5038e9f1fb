"""JSON logs through structlog, one line per decision, correlation id bound per message."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from pydantic import BaseModel

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
        "town",
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
        "delivery_code",
        # The same in a FHIR bundle (consultation's other input), as a model or as JSON.
        "telecom",
        "birthDate",
        "dosageInstruction",
        "reasonCode",
    }
)
#: FHIR resources that are about the patient through and through: redacted whole.
PERSONAL_RESOURCES = frozenset({"Patient", "RelatedPerson", "Condition", "AllergyIntolerance", "Observation"})
REDACTED = "[redacted]"


def _scrub_fields(fields: Mapping[Any, Any]) -> dict[Any, Any]:
    return {k: REDACTED if k in PERSONAL_FIELDS else _scrub(v) for k, v in fields.items()}


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return REDACTED if value.get("resourceType") in PERSONAL_RESOURCES else _scrub_fields(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    if isinstance(value, BaseModel):  # a model logged whole
        return _scrub(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _scrub({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, str | bytes | bytearray):
        return _scrub_json_text(value)
    return value


def _scrub_json_text(text: str | bytes | bytearray) -> Any:
    """A model's JSON or a record's bytes logged whole are scrubbed like the model itself."""
    start = text.lstrip()[:1]
    if start not in ("{", "[", b"{", b"["):
        return text
    try:
        parsed = json.loads(text)
    except ValueError:  # not JSON after all (UnicodeDecodeError is a ValueError too)
        return text
    return json.dumps(_scrub(parsed), ensure_ascii=False)


def redact_personal_data(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Replace patient names, phones, addresses, diagnoses and the like anywhere in a log line."""
    return _scrub_fields(event_dict)


def _scrub_arguments(record: logging.LogRecord) -> bool:
    """A library line's message is formatted from its arguments before any processor sees it, so
    its arguments are scrubbed first."""
    if not isinstance(record.msg, str):
        record.msg = _scrub(record.msg)
    if isinstance(record.args, Mapping):
        record.args = _scrub_fields(record.args)
    elif record.args:
        record.args = tuple(_scrub(argument) for argument in record.args)
    return True


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
    handler.addFilter(_scrub_arguments)
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
    # At DEBUG pymongo logs every command with its documents: whole prescriptions, as truncated
    # JSON text that no processor can take apart.
    logging.getLogger("pymongo.command").setLevel(max(logging.getLevelName(level), logging.INFO))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
