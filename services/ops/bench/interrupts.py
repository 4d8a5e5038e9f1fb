"""Stopping on Ctrl-C or SIGTERM with every stack torn down.

Outside the event loop (starting a stack), both raise KeyboardInterrupt and the `finally` of
`on_fresh_stack` stops the stack. Inside it, raising from a signal handler would tear through
asyncio's own bookkeeping, so there they cancel the phase's task instead (asyncio.run does that
for Ctrl-C; SIGTERM is handled alike below): every `finally` in the phase runs in a live loop.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiokafka.errors import ProducerClosed

T = TypeVar("T")

STOP_REQUESTED = threading.Event()  # set by either signal: no further phase starts


def interrupt_on_sigterm() -> None:
    def interrupt(*_: object) -> None:
        STOP_REQUESTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


async def _cancelled_on_sigterm(coroutine: Awaitable[T]) -> T:
    loop = asyncio.get_running_loop()
    phase = asyncio.current_task()
    assert phase is not None

    def cancel() -> None:
        STOP_REQUESTED.set()
        phase.cancel()

    loop.add_signal_handler(signal.SIGTERM, cancel)
    loop.set_exception_handler(_quiet_about_cut_off_trips)
    try:
        return await coroutine
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # leaves SIGTERM at its default: kill at once
        interrupt_on_sigterm()


def _quiet_about_cut_off_trips(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A simulated courier still on a trip when its phase ends finds its producer closed: expected."""
    if not isinstance(context.get("exception"), ProducerClosed):
        loop.default_exception_handler(context)


def run_until_interrupted(coroutine: Awaitable[T]) -> T:
    """asyncio.run, turning a cancellation by either signal into KeyboardInterrupt."""
    try:
        return asyncio.run(_cancelled_on_sigterm(coroutine))  # type: ignore[arg-type]
    except (KeyboardInterrupt, asyncio.CancelledError):
        STOP_REQUESTED.set()
        raise KeyboardInterrupt from None
