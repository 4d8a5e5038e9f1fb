"""Fixtures only; the helpers they use live in tests/support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.ops.devstack import DevStack
from services.runtime.settings import RuntimeSettings
from tests.support.stack import start_test_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """A real Kafka-protocol broker and MongoDB-protocol server, fresh for each test module
    (they start in about a second), so modules never see each other's messages."""
    running = start_test_stack(tmp_path_factory.mktemp("devstack"))
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def settings(stack: DevStack) -> RuntimeSettings:
    return stack.runtime_settings()
