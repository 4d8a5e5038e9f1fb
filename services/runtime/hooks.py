"""Where development tools may reach into a running service: the crash, pause and failed-publish
faults that the crash and stop tests inject (`services/ops/faults.py`).

They do nothing unless that module sets them before the service is built, and the production
image ships without `services/ops`: no environment variable can arm a fault there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

HandleBatch = Callable[[Sequence[Any]], Awaitable[Any]]
Publish = Callable[[Sequence[dict[str, Any]]], Awaitable[None]]


def _unchanged(function: Any) -> Any:
    return function


def _nothing(_: str) -> None:
    return None


@dataclass
class Hooks:
    #: Called right after a state change with events was written into a collection (named).
    after_write: Callable[[str], None] = _nothing
    #: Wraps the publisher the unit of work calls right after a write.
    wrap_publish: Callable[[Publish], Publish] = _unchanged
    #: Wraps each consumer's batch handler.
    wrap_handler: Callable[[HandleBatch], HandleBatch] = _unchanged


#: The hooks of this process; `services.ops.faults` replaces them before a service is built.
installed = Hooks()
