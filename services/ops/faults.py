"""Fault injection, for the tests that prove what a crash at the worst moment does. Development
only: `python -m services.ops.faults <service>` arms the faults the environment names, through the
runtime's hooks (`services.runtime.hooks`), then runs the service; the dev stack starts a service
this way when it is given a `PHARMACY_FAULT_*` variable. The production image has no `services/ops`.

`PHARMACY_FAULT_CRASH_AT=after-write:<collection>` makes the process kill itself (SIGKILL, no
cleanup, like a power cut) right after it wrote a state change with events into that collection
and before the outbox relay could publish them.

`PHARMACY_FAULT_PAUSE_AT=before-handling:<message id>` holds the batch that message arrives in for
`PHARMACY_FAULT_PAUSE_S` seconds before it is handled, so a SIGTERM finds it in flight.
`PHARMACY_FAULT_FAIL_AT=publish-after-write:<correlation id>` makes the publish right after a write
fail for that correlation id's events, so they stay in the outbox for the relay.

"""

from __future__ import annotations

import asyncio
import os
import runpy
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from typing import Any

import structlog

from services.runtime import hooks

log = structlog.get_logger()
HandleBatch = Callable[[Sequence[Any]], Awaitable[Any]]
Publish = Callable[[Sequence[dict[str, Any]]], Awaitable[None]]


def _armed(variable: str) -> frozenset[str]:
    return frozenset(point for point in os.environ.get(variable, "").split(",") if point)


@cache
def _crash_points() -> frozenset[str]:
    return _armed("PHARMACY_FAULT_CRASH_AT")


def crash_point(name: str) -> None:
    if name in _crash_points():
        os.kill(os.getpid(), signal.SIGKILL)


def failing_when_armed(publish: Publish) -> Publish:
    armed = _armed("PHARMACY_FAULT_FAIL_AT")
    if not armed:
        return publish

    async def publish_unless_armed(entries: Sequence[dict[str, Any]]) -> None:
        if any(f"publish-after-write:{entry['correlation_id']}" in armed for entry in entries):
            raise ConnectionError("fault injected: publishing after the write failed")
        await publish(entries)

    return publish_unless_armed


def paused_when_armed(handle_batch: HandleBatch) -> HandleBatch:
    """Holds a batch that has the armed message in it before handling any of it."""
    armed = _armed("PHARMACY_FAULT_PAUSE_AT")
    if not armed:
        return handle_batch
    pause_s = float(os.environ.get("PHARMACY_FAULT_PAUSE_S", "3"))

    async def handle_after_pause(records: Sequence[Any]) -> Any:
        held = [r.message_id for r in records if f"before-handling:{r.message_id}" in armed]
        if held:
            log.warning("fault injected: pausing before handling", message_id=held[0], pause_s=pause_s)
            await asyncio.sleep(pause_s)
            log.warning("fault injected: pause over", message_id=held[0])
        return await handle_batch(records)

    return handle_after_pause


def install() -> None:
    """Arm, through the runtime's hooks, the faults the environment names."""
    hooks.installed = hooks.Hooks(
        after_write=lambda store: crash_point(f"after-write:{store}"),
        wrap_publish=failing_when_armed,
        wrap_handler=paused_when_armed,
    )


def main(argv: list[str] | None = None) -> None:
    (service,) = argv if argv is not None else sys.argv[1:]
    install()
    runpy.run_module(f"services.{service}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
