"""/health/live fails once a running service has a consumer that no longer consumes or a handler
stuck past the poll interval (a restart is the only cure for either), and holds otherwise.

The subscribers are FastStream's own, registered by `ServiceRuntime.consume`; only aiokafka's
consumer under them is a stand-in, so no broker is needed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.errors import ConsumerStoppedError

from pharmacy_contracts import topics
from services.runtime.health import HandlersInFlight, HttpEndpoint, NotReady
from services.runtime.observability import ServiceMetrics
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from tests.support import asgi

POLL_INTERVAL_S = RuntimeSettings().kafka_max_poll_interval_ms / 1000


class Consumer:
    """aiokafka's consumer as the consume loop sees it: `getmany` raises `fails_with` once (if
    given), then waits for records that never come."""

    def __init__(self, fails_with: BaseException | None = None) -> None:
        self.fails_with = fails_with

    async def getmany(self, **_: Any) -> dict[Any, Any]:
        if self.fails_with is not None:
            error, self.fails_with = self.fails_with, None
            raise error
        await asyncio.Event().wait()
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def runtime() -> AsyncIterator[ServiceRuntime]:
    service = ServiceRuntime("liveness-test", RuntimeSettings())
    service.phase = "running"
    yield service
    for subscriber in service.broker.subscribers:
        for task in subscriber.tasks:
            task.cancel()
    service.mongo.close()


async def nothing_to_do(records: Any) -> list[Any]:
    return []


async def consuming(runtime: ServiceRuntime, consumer: Consumer) -> Any:
    """A subscriber registered as the services register theirs, started over `consumer` the way
    FastStream starts one once its consumer joined the group."""
    runtime.consume(topics.CONSULTATION_INTAKE, group="liveness", title="liveness", handle_batch=nothing_to_do)
    runtime.broker._setup_logger()  # what connecting does: FastStream's task supervisor logs through it
    subscriber = runtime.broker.subscribers[-1]
    subscriber._post_start()
    subscriber.add_task(subscriber._run_consume_loop, (consumer,))
    await asyncio.sleep(0.01)  # the loop runs until its first fetch, and a crash restarts it
    return subscriber


async def get(endpoint: HttpEndpoint, path: str) -> tuple[int, dict[str, Any]]:
    return await asgi.get(endpoint.asgi_app(), path)


async def live(runtime: ServiceRuntime) -> tuple[int, dict[str, Any]]:
    return await get(runtime.http_endpoint(), "/health/live")


async def test_a_running_service_whose_consumers_consume_and_handlers_return_is_live(runtime: ServiceRuntime) -> None:
    await consuming(runtime, Consumer())
    assert await live(runtime) == (200, {"status": "live", "service": "liveness-test"})


async def test_liveness_fails_once_a_consume_loop_has_ended(runtime: ServiceRuntime) -> None:
    # aiokafka's consumer stopped under the loop: FastStream's loop returns and is not started again.
    subscriber = await consuming(runtime, Consumer(fails_with=ConsumerStoppedError()))
    assert subscriber.running and all(task.done() for task in subscriber.tasks)
    status, body = await live(runtime)
    assert status == 503
    assert body["status"] == "not live"
    assert body["reason"] == f"consumers: no longer consuming: {subscriber.group_id}"


async def test_liveness_fails_for_a_stopped_subscriber(runtime: ServiceRuntime) -> None:
    subscriber = await consuming(runtime, Consumer())
    await subscriber.stop()
    status, body = await live(runtime)
    assert status == 503
    assert body["reason"] == f"consumers: no longer consuming: {subscriber.group_id}"


async def test_a_consume_loop_that_crashed_and_was_restarted_keeps_the_service_live(runtime: ServiceRuntime) -> None:
    subscriber = await consuming(runtime, Consumer(fails_with=RuntimeError("a bug in a fetch")))
    crashed, restarted = subscriber.tasks
    assert crashed.done() and not restarted.done()
    assert (await live(runtime))[0] == 200


@contextlib.asynccontextmanager
async def handler_stuck(runtime: ServiceRuntime) -> AsyncIterator[Clock]:
    """A batch handler that does not return until the block ends, timed on the clock it yields."""
    clock = Clock()
    runtime.in_flight = HandlersInFlight(clock)
    release = asyncio.Event()

    async def stuck(records: Any) -> list[Any]:
        await release.wait()
        return []

    handling = asyncio.create_task(runtime._counted(stuck)([]))
    await asyncio.sleep(0)
    try:
        yield clock
    finally:
        release.set()
        await handling


async def test_liveness_fails_for_a_handler_in_flight_past_the_poll_interval(runtime: ServiceRuntime) -> None:
    async with handler_stuck(runtime) as clock:
        assert runtime.handlers_in_flight == 1
        clock.now += POLL_INTERVAL_S - 1
        assert (await live(runtime))[0] == 200  # slow, but the consumer is still in its group

        clock.now += 2
        status, body = await live(runtime)
        assert status == 503
        assert body["reason"] == (
            f"handlers: a batch handler has run {POLL_INTERVAL_S + 1:.0f} s, "
            f"past the poll interval of {POLL_INTERVAL_S:.0f} s"
        )
    assert runtime.handlers_in_flight == 0
    assert (await live(runtime))[0] == 200


@pytest.mark.parametrize("phase", ["starting", "stopping"])
async def test_liveness_holds_while_consumers_join_or_stop_on_purpose(runtime: ServiceRuntime, phase: str) -> None:
    subscriber = await consuming(runtime, Consumer(fails_with=ConsumerStoppedError()))
    await subscriber.stop()
    async with handler_stuck(runtime) as clock:
        clock.now += POLL_INTERVAL_S * 2
        runtime.phase = phase
        assert (await live(runtime))[0] == 200


async def test_the_endpoint_reports_every_failing_liveness_check_on_one_line() -> None:
    async def fine() -> None:
        pass

    async def stalled() -> None:
        raise NotReady("no longer consuming: pharmacy.a")

    async def broken() -> None:
        raise RuntimeError("a check that fails\nover two lines")

    endpoint = HttpEndpoint(
        "svc",
        ServiceMetrics(process_collectors=False),
        dict,
        host="127.0.0.1",
        port=0,
        check_timeout_s=1.0,
        live_checks=lambda: {"a": fine, "b": stalled, "c": broken},
    )
    status, body = await get(endpoint, "/health/live")
    assert status == 503
    assert body == {
        "status": "not live",
        "service": "svc",
        "reason": "b: no longer consuming: pharmacy.a; c: RuntimeError: a check that fails over two lines",
    }
