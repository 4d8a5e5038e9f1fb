"""Showing dead letters on a terminal: the table (where its rows fit) or lines (narrower terminals)
of `list`, or its JSON, the full letter of `show`, all with untrusted text made safe to print."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..render import Fitted
from ..running import console
from .letters import DeadLetter
from .replay_log import ReplayRecord

VALUE_PREVIEW_BYTES = 4096


def printable(text: str | bytes | None, limit: int | None = None) -> str:
    """Untrusted text made safe for a terminal: control characters escaped, optionally shortened."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = repr(text)
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is not None and len(safe) > limit:
        return safe[: max(limit - 1, 0)] + "…"
    return safe


def _original(letter: DeadLetter) -> str:
    if not letter.original_topic:
        return "?"
    return printable(f"{letter.original_topic} {letter.original_partition}:{letter.original_offset}")


def _replayed_count(letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None) -> str:
    if records is None:
        return ""
    done = sum(1 for letter in letters if letter.position in records)
    return f", {done} replayed"


def _replayed_cell(record: ReplayRecord | None) -> str:
    if record is None:
        return "no"
    times = f" ×{len(record.replays)}" if len(record.replays) > 1 else ""
    return f"{record.last.at:%Y-%m-%d %H:%M:%S}{times}"


def letters_table(letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None = None) -> Table:
    """One row per letter, for terminals wide enough (`letters_view`). With `records`, whether and
    when each was replayed. Positions, times, topics, reasons and keys are never cut or folded;
    the detail is free text and folds."""
    table = Table(title=f"{count_of(letters, 'dead letter')}{_replayed_count(letters, records)}", show_lines=True)
    table.add_column("dead letter", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("original", no_wrap=True)
    table.add_column("reason", style="bold red", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold", min_width=20)
    table.add_column("key", no_wrap=True)
    if records is not None:
        table.add_column("replayed (UTC)", no_wrap=True)
    for letter in letters:
        replayed = [] if records is None else [Text(_replayed_cell(records.get(letter.position)))]
        table.add_row(
            Text(f"{letter.topic}\n{letter.partition}:{letter.offset}"),
            Text(f"{letter.time:%Y-%m-%d %H:%M:%S}"),
            Text(_original(letter).replace(" ", "\n", 1)),
            Text(printable(letter.reason) or "?"),
            Text(str(letter.attempts) if letter.attempts is not None else "?"),
            Text(printable(letter.detail, 120)),
            Text(printable(letter.key, 60)),
            *replayed,
        )
    return table


def letters_view(letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None = None) -> Fitted:
    """`dlq list`: the table where its rows fit the terminal, else `letters_lines`."""
    return Fitted(letters_table(letters, records), narrow=Group(*letters_lines(letters, records)))


def letters_document(
    letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None = None
) -> list[dict[str, Any]]:
    """`dlq list --json`: each letter's position, time, origin, reason, detail and key in full (the
    key decoded, undecodable bytes as \\x escapes), and its replays (null: the records could not
    be read)."""
    return [
        {
            "position": letter.position,
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "time": letter.time,
            "original_topic": letter.original_topic,
            "original_partition": letter.original_partition,
            "original_offset": letter.original_offset,
            "reason": letter.reason,
            "attempts": letter.attempts,
            "detail": letter.detail,
            "key": None if letter.key is None else letter.key.decode("utf-8", "backslashreplace"),
            "replays": None if records is None else _replays(records.get(letter.position)),
        }
        for letter in letters
    ]


def _replays(record: ReplayRecord | None) -> list[dict[str, Any]]:
    return [] if record is None else [replayed.document() for replayed in record.replays]


def letters_lines(letters: Sequence[DeadLetter], records: dict[str, ReplayRecord] | None = None) -> list[Text]:
    """The same as `letters_table`, three lines per letter (four if it was replayed), for narrow
    terminals: the lines wrap between words, never inside a position, a time or a reason."""
    records_ = records or {}
    lines = [Text(count_of(letters, "dead letter") + _replayed_count(letters, records), style="bold")]
    for letter in letters:
        lines.append(
            Text.assemble(
                (f"{letter.topic} {letter.partition}:{letter.offset}", "bold"),
                f"  {letter.time:%Y-%m-%d %H:%M:%S}  ",
                (printable(letter.reason) or "?", "bold red"),
                f" ×{letter.attempts if letter.attempts is not None else '?'}",
            )
        )
        lines.append(Text(f"  from {_original(letter)}  key {printable(letter.key, 60) or '(none)'}"))
        lines.append(Text(f"  {printable(letter.detail, 200)}", style="dim"))
        if letter.position in records_:
            lines.append(Text(f"  {printable(records_[letter.position].describe())}", style="green"))
    return lines


def count_of(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def describe_value(value: bytes) -> str:
    """Pretty JSON if it parses, else a safe repr of (the start of) the bytes."""
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        shown = repr(value[:VALUE_PREVIEW_BYTES])
        return shown + (
            f" … ({len(value) - VALUE_PREVIEW_BYTES} more bytes)" if len(value) > VALUE_PREVIEW_BYTES else ""
        )


def print_letter(letter: DeadLetter) -> None:
    console.print(f"[bold]{escape(letter.position)}[/]  {letter.time:%Y-%m-%d %H:%M:%S} UTC")
    console.print(Text(f"key: {printable(letter.key) if letter.key is not None else '(none)'}"))
    headers = Table(title="headers", show_header=True)
    headers.add_column("name", no_wrap=True)
    # Any bytes at all, maybe one long token (a trace id, a topic:partition:offset): folded, never cut.
    headers.add_column("value", overflow="fold")
    for name, raw in letter.headers:
        headers.add_row(Text(printable(name)), Text(printable(raw)))
    console.print(headers)
    console.print(Text(f"value ({len(letter.value)} bytes):", style="bold"))
    # JSON is escaped by json.dumps; anything else is a repr: neither carries control characters
    console.print(Text(printable_block(describe_value(letter.value))))


def printable_block(text: str) -> str:
    return "\n".join(printable(line) for line in text.splitlines())
