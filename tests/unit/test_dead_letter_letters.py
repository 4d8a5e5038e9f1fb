"""What `pharmacy dlq replay` may send back: only a letter that kept its original whole."""

from __future__ import annotations

import pytest

from pharmacy_contracts import topics
from services.cli.dlq import DeadLetter

TOPIC = topics.INVENTORY_COMMANDS


def letter(*headers: tuple[str, str]) -> DeadLetter:
    return DeadLetter(TOPIC.dead_letter_topic, 0, 7, 1_000, b"k", b"{}", tuple((k, v.encode()) for k, v in headers))


def test_a_whole_letter_goes_back_to_the_topic_it_came_from() -> None:
    assert letter(("dlq.topic", TOPIC.name)).replay_target() == TOPIC.name


def test_a_letter_cut_to_fit_cannot_be_replayed_and_says_what_to_ask_for() -> None:
    cut = letter(
        ("dlq.topic", TOPIC.name),
        ("dlq.truncated", "true"),
        ("dlq.original-bytes", "1040000"),
        ("dlq.original-sha256", "ab12"),
    )
    with pytest.raises(ValueError, match=r"keeps only part of the original \(1040000 bytes, sha256 ab12\)"):
        cut.replay_target()
