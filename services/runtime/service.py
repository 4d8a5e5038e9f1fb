"""Wiring shared by the four services: one `ServiceRuntime` per process, built by `create_app`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from faststream import FastStream

from pharmacy_contracts.topics import Topic

from .documents import DocumentStore, connect, ping
from .kafka import Gate, Handler, create_broker, subscribe
from .logging import configure_logging
from .relay import OutboxRelay, publisher_for
from .settings import RuntimeSettings

log = structlog.get_logger()


class ServiceRuntime:
    """The clients one service process owns: built once, closed at shutdown."""

    def __init__(self, name: str, settings: RuntimeSettings) -> None:
        self.name = name
        self.settings = settings
        self.mongo = connect(settings.mongo_url.get_secret_value())
        self.database = self.mongo[settings.mongo_database]
        self.broker = create_broker(settings, client_id=f"{name}-{settings.instance_id}")
        self.relay = OutboxRelay(self.broker, [], settings.outbox_poll_interval_s)
        self._sweeps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._sweep_tasks: list[asyncio.Task[None]] = []

    def publish_outbox_of(self, stores: Sequence[DocumentStore[Any]]) -> None:
        """Each write to these stores publishes its events; the relay catches what a crash left."""
        publish = publisher_for(self.broker)
        for store in stores:
            store.publish_with(publish)
        self.relay = OutboxRelay(
            self.broker, stores, self.settings.outbox_poll_interval_s, self.settings.outbox_stale_after_s
        )

    def consume(self, *topics: Topic, group: str, handle: Handler, title: str, gate: Gate | None = None) -> None:
        subscribe(self.broker, self.settings, topics=topics, group=group, handle=handle, title=title, gate=gate)

    def every_sweep(self, name: str, sweep: Callable[[], Awaitable[None]]) -> None:
        """Run `sweep` every `sweep_interval_s` while the service runs: deadlines that passed
        (reviews, courier offers, lot expiry) are found by looking, so nothing waits forever even
        when no message arrives. Sweeps write through the same versioned documents as handlers, so
        two instances sweeping at once cannot both act."""
        self._sweeps.append((name, sweep))

    async def _sweep_forever(self, name: str, sweep: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed; it runs again at the next interval", sweep=name)

    def app(self, *, on_startup: Callable[[], Awaitable[None]] | None = None) -> FastStream:
        async def prepare() -> None:
            await ping(self.mongo)
            if on_startup is not None:
                await on_startup()

        async def started() -> None:
            self.relay.start()
            self._sweep_tasks = [
                asyncio.create_task(self._sweep_forever(name, sweep), name=f"sweep-{name}")
                for name, sweep in self._sweeps
            ]
            log.info("service started", bootstrap=self.settings.kafka_bootstrap_servers)

        async def stop_consuming_then_flush() -> None:
            # Stop fetching first and let in-flight handlers finish and commit, then publish what
            # they stored, and only then let FastStream close the producer.
            for task in self._sweep_tasks:
                task.cancel()
            await asyncio.gather(*self._sweep_tasks, return_exceptions=True)
            await asyncio.gather(*(sub.stop() for sub in self.broker.subscribers))
            await self.relay.stop()
            log.info("service stopped consuming and flushed its outbox")

        async def close_database() -> None:
            self.mongo.close()

        return FastStream(
            self.broker,
            logger=None,
            on_startup=[prepare],
            after_startup=[started],
            on_shutdown=[stop_consuming_then_flush],
            after_shutdown=[close_database],
        )


def run_service(name: str, settings: RuntimeSettings, create_app: Callable[[Any], FastStream]) -> None:
    """Entry point body of every service: logs, app, run until SIGTERM/SIGINT."""
    configure_logging(name, settings.log_level, settings.log_format)
    asyncio.run(create_app(settings).run())
