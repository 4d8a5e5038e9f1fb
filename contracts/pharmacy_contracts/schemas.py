"""Writes a JSON Schema per message, so senders in other languages can validate (`make contracts`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .topics import ALL_TOPICS


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic in ALL_TOPICS:
        for message in topic.messages:
            schema = message.model_json_schema(mode="validation")
            schema["$id"] = f"{topic.name}/{message.__name__}.schema.json"
            schema["x-topic"] = topic.name
            path = directory / f"{topic.name}.{message.__name__}.schema.json"
            path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
            written.append(path)
    return written


def topics_markdown() -> str:
    """The topic table for README.md, generated so it cannot drift from the code."""
    rows = ["| topic | public | key | messages | purpose |", "|---|---|---|---|---|"]
    for topic in ALL_TOPICS:
        names = ", ".join(f"`{m.__name__}`" for m in topic.messages)
        public = "yes" if topic.public else "internal"
        rows.append(f"| `{topic.name}` | {public} | {topic.key} | {names} | {topic.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "contracts/schemas")
    for path in write_schemas(target):
        print(path)


def messages_markdown() -> str:
    """One line per message: its `type` and its own fields (beyond the envelope)."""
    from .envelope import Envelope

    envelope_fields = set(Envelope.model_fields)
    lines = [
        "Every message carries the envelope: "
        + ", ".join(f"`{name}`" for name in Envelope.model_fields)
        + ". Full schemas: `contracts/schemas/`.",
        "",
        "| message | `type` | fields |",
        "|---|---|---|",
    ]
    for topic in ALL_TOPICS:
        for message in topic.messages:
            own = [n for n in message.model_fields if n not in envelope_fields]
            type_value = message.model_fields["type"].default
            lines.append(f"| `{message.__name__}` | `{type_value}` | {', '.join(f'`{n}`' for n in own)} |")
    return "\n".join(lines)
