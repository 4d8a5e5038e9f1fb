"""Fixtures only; the helpers they use live in tests/support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.ops.devstack import DevStack
from services.runtime.settings import RuntimeSettings
from tests.support.stack import start_test_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """A real Kafka-protocol broker and MongoDB-protocol server for the whole session."""
    running = start_test_stack(tmp_path_factory.mktemp("devstack"))
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="session")
def settings(stack: DevStack) -> RuntimeSettings:
    return stack.runtime_settings()
