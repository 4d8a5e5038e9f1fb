"""Fixtures only; the helpers they use live in tests/support."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from motor.motor_asyncio import AsyncIOMotorDatabase

from services.ops.devstack import DevStack, standalone_database
from services.runtime.mongo import connect, ping
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


#: A database already running to use instead of starting one (`make mutation` starts one for all its
#: runs); every test writes to a database of its own, so runs never see each other's documents.
SHARED_DATABASE = "PHARMACY_TEST_MONGO_URL"


@pytest.fixture(scope="module")
def mongo_url() -> Iterator[str]:
    """Only a database, for the stores' own tests: they need no broker, and it starts in a moment."""
    if os.environ.get(SHARED_DATABASE):
        yield os.environ[SHARED_DATABASE]
        return
    with standalone_database() as url:
        yield url


@pytest.fixture
async def database(mongo_url: str) -> AsyncIterator[AsyncIOMotorDatabase]:
    """A database of this test's own, dropped afterwards (a shared server stays small)."""
    client = connect(mongo_url)
    name = f"store_{uuid.uuid4().hex[:12]}"
    try:
        await ping(client)
        yield client[name]
        await client.drop_database(name)
    finally:
        client.close()
