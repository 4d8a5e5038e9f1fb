"""Fault injection, for the tests that prove what a crash at the worst moment does.

`PHARMACY_FAULT_CRASH_AT=after-write:<collection>` makes the process kill itself (SIGKILL, no
cleanup, like a power cut) right after it wrote a state change with events into that collection
and before the outbox relay could publish them. Unset in production; it costs one set lookup.
"""

from __future__ import annotations

import os
import signal
from functools import cache


@cache
def _armed() -> frozenset[str]:
    return frozenset(p for p in os.environ.get("PHARMACY_FAULT_CRASH_AT", "").split(",") if p)


def crash_point(name: str) -> None:
    if name in _armed():
        os.kill(os.getpid(), signal.SIGKILL)
