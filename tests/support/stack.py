"""Start the embedded broker and database for a test session, on free ports in a temp dir."""

from __future__ import annotations

import socket
from pathlib import Path

from services.ops.devstack import DevStack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_test_stack(home: Path) -> DevStack:
    stack = DevStack(home=home, kafka_port=free_port(), mongo_port=free_port(), partitions=4)
    stack.start_infra()
    return stack
