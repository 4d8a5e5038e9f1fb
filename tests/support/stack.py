"""Start the embedded broker and database for a test session, on free ports in a temp dir."""

from __future__ import annotations

import socket
import time
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


def wait_for_log(stack: DevStack, name: str, text: str, timeout: float = 90.0) -> None:
    path = stack.logs / f"{name}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if stack.pid_of(name) is None:
            raise RuntimeError(f"{name} exited:\n{path.read_text(errors='replace')[-3000:] if path.exists() else ''}")
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not log {text!r} within {timeout:.0f}s")


def start_services(stack: DevStack, *names: str, env: dict[str, str] | None = None) -> None:
    """Start service processes (`inventory-2` means a second inventory instance) and wait until ready."""
    for name in names:
        service, _, instance = name.partition("-")
        stack.start_service(service, int(instance or 1), env=env)
    for name in names:
        wait_for_log(stack, name if "-" in name else f"{name}-1", '"service started"')
