"""Replaying: publishing dead letters again to their original topic, one at a time, each recorded
in the replay log right after the broker confirmed it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiokafka.structs import RecordMetadata
from pymongo.errors import PyMongoError

from services.runtime.settings import RuntimeSettings

from .. import bus
from .letters import DeadLetter
from .replay_log import Replayed, ReplayLog


async def replay(
    settings: RuntimeSettings,
    letters: Sequence[DeadLetter],
    *,
    on_replayed: Callable[[DeadLetter, RecordMetadata], None] | None = None,
    log: ReplayLog | None = None,
    by: str | None = None,
) -> int:
    """Republish each letter's original bytes, key and headers to its original topic, in order, one
    at a time: each is confirmed by the broker (and, with a `log`, recorded there) before the next
    is sent, so a crash leaves at most one letter replayed but not recorded. Checks every letter
    before sending any."""
    targets = [letter.replay_target() for letter in letters]
    if not letters:
        return 0
    async with bus.producer(settings) as client:
        for letter, target in zip(letters, targets, strict=True):
            metadata = await client.send_and_wait(target, letter.value, key=letter.key, headers=letter.replay_headers())
            if on_replayed is not None:
                on_replayed(letter, metadata)
            if log is not None:
                landed = Replayed(datetime.now(UTC), by, metadata.topic, metadata.partition, metadata.offset)
                try:
                    await log.add(letter, landed)
                except (PyMongoError, RuntimeError) as error:
                    raise NotRecordedError(letter, landed, error) from error
    return len(letters)


class NotRecordedError(Exception):
    """A letter was replayed (the broker confirmed it) but its record could not be written; the
    replay stopped there."""

    def __init__(self, letter: DeadLetter, replayed: Replayed, cause: BaseException) -> None:
        super().__init__(
            f"{letter.position} was replayed to {replayed.landed} but could not be recorded ({cause}); "
            "stopped there; a later replay sends that one letter again (harmless: the handlers are idempotent)"
        )
        self.letter = letter
        self.replayed = replayed
