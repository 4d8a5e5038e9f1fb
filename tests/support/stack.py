"""Start the embedded broker and database for a test session, on free ports in a temp dir."""

from __future__ import annotations

from pathlib import Path

from services.ops.devstack import DevStack, free_port

__all__ = ["free_port", "start_test_stack"]


def start_test_stack(home: Path) -> DevStack:
    kafka_port = free_port()
    stack = DevStack(home=home, kafka_port=kafka_port, mongo_port=free_port(taken={kafka_port}), partitions=4)
    stack.start_infra()
    return stack
