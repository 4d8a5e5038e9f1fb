"""How the chaos run tells a person what it is doing: one line at a time, to wherever they look."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    return None
