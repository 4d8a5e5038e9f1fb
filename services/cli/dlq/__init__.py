"""`pharmacy dlq`: look at dead letters and put them back where they came from.

Every consumed topic T has a dead-letter topic T.dlq. A dead letter keeps the original key, bytes
and headers and adds `dlq.*` headers (reason, detail, original topic/partition/offset, group,
attempts). Reading never joins a consumer group and never commits, so looking changes nothing.
A replay publishes the original bytes, key and headers (without `dlq.*`, plus
`dlq.replayed-from`) to the original topic; the services' handlers are idempotent, so replaying
a message that was in fact handled changes nothing.

Each replay is recorded in the MongoDB collection `dlq_replays` (the database the other commands
use), one document per dead letter, `_id` = "<dlq topic>:<partition>:<offset>", with when, by
whom and where each replay of it landed. The record is written right after the broker confirmed
the re-publish, one letter at a time, so a crash in between can replay at worst that one letter a
second time; recording first could instead mark a letter replayed that never was, and every later
replay would skip it. A later replay skips recorded letters unless asked (`--again`); `list` and
`show` say which were replayed.

The package, by what each part does: `letters` (what a dead letter is), `reading` (fetching them
from the broker), `replay_log` (the `dlq_replays` records), `replaying` (publishing them again),
`render` (tables and text) and `commands` (the typer commands, `app`).
"""

from __future__ import annotations

from datetime import UTC, datetime  # re-exported as before the split: tests write dlq.datetime.now(dlq.UTC)

from .commands import app
from .letters import REPLAYED_FROM, DeadLetter
from .reading import read_dead_letter, read_dead_letters
from .replay_log import REPLAYS_COLLECTION, Replayed, ReplayLog
from .replaying import replay

__all__ = [
    "REPLAYED_FROM",
    "REPLAYS_COLLECTION",
    "UTC",
    "DeadLetter",
    "ReplayLog",
    "Replayed",
    "app",
    "datetime",
    "read_dead_letter",
    "read_dead_letters",
    "replay",
]
