"""The four services as separate processes, started once for the e2e module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from services.ops.devstack import SERVICES, DevStack, LogWindow
from services.runtime.settings import RuntimeSettings
from tests.support.scenario import System


@pytest.fixture(scope="module")
def service_env() -> dict[str, str]:
    """Settings for every service process of the module; a module overrides this to shorten deadlines."""
    return {}


@pytest.fixture(scope="module")
def services(stack: DevStack, service_env: dict[str, str]) -> Iterator[DevStack]:
    stack.extra_env.update(service_env)
    stack.start_services(*SERVICES)
    try:
        yield stack
    finally:
        for name in stack.running():
            if name not in ("broker", "database"):
                stack.stop(name)


@pytest.fixture
async def system(services: DevStack, settings: RuntimeSettings) -> AsyncIterator[System]:
    running = System(settings)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def logs_of_this_test(services: DevStack) -> LogWindow:
    """The service logs from this test's start on: the logs are appended to for the whole module,
    so a line an earlier test caused must not count as this test's."""
    return services.log_window()
