"""Wiring shared by the four services: one `ServiceRuntime` per process, built by `create_app`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from faststream import FastStream

from pharmacy_contracts import Envelope
from pharmacy_contracts.topics import Topic

from . import hooks
from .health import Check, HandlersInFlight, HttpEndpoint, NotReady, stopped_consumers
from .kafka import BatchHandler, DeadLetterHook, Decode, Gate, create_broker, subscribe
from .logging import configure_logging
from .mongo import client_for, ping
from .observability import Observability
from .relay import OutboxRelay, StoreOutbox, outbox_entry, publisher_for
from .settings import RuntimeSettings
from .store import Store
from .topic_ids import KafkaTopicIds, TopicIncarnations
from .unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger()


class ServiceRuntime:
    """The clients one service process owns: built once, closed at shutdown."""

    def __init__(self, name: str, settings: RuntimeSettings, *, tracer_provider: TracerProvider | None = None) -> None:
        """`tracer_provider`: traces go there instead of where the settings say (tests)."""
        self.name = name
        self.settings = settings
        self.observability = Observability(name, settings, tracer_provider=tracer_provider)
        self.mongo = client_for(settings)
        self.database = self.mongo[settings.mongo_database]
        self.broker = create_broker(
            settings, client_id=f"{name}-{settings.instance_id}", middlewares=self.observability.broker_middlewares()
        )
        self.relay = OutboxRelay(self.broker, [], settings.outbox_poll_interval_s, metrics=self.observability.metrics)
        self._sweeps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._routes: list[Any] = []
        self._sweep_tasks: list[asyncio.Task[None]] = []
        #: "starting" until the consumers joined their groups, "running", then "stopping".
        self.phase = "starting"
        #: Handler calls running now and since when: the stop reports how many it waited for and
        #: that none is left; liveness fails on one stuck past the poll interval.
        self.in_flight = HandlersInFlight()
        self.http: HttpEndpoint | None = None
        #: Publishes what each batch's saves put in their outboxes; the relay catches what a crash left.
        self.unit_of_work = UnitOfWork(
            hooks.installed.wrap_publish(publisher_for(self.broker)), outbox_entry, self.observability.tracer
        )
        self._relayed: list[StoreOutbox] = []

    def publish_outbox_of(self, stores: Sequence[Store[Any]], *, written_by_tools: Sequence[Store[Any]] = ()) -> None:
        """The unit of work publishes what each batch saves in these stores; the relay catches what
        a crash left. `written_by_tools`: stores people's tools write (reference data) with events
        in their outbox, which no live write publishes: the relay publishes them at its next pass."""
        self._relayed += [StoreOutbox(store, self.unit_of_work) for store in stores]
        self._relayed += [
            StoreOutbox(store, self.unit_of_work, publishes_its_writes=False) for store in written_by_tools
        ]
        self.relay = OutboxRelay(
            self.broker,
            self._relayed,
            self.settings.outbox_poll_interval_s,
            self.settings.outbox_stale_after_s,
            metrics=self.observability.metrics,
        )

    def consume(
        self,
        *topics: Topic,
        group: str,
        title: str,
        handle_batch: BatchHandler,
        gate: Gate | None = None,
        decode: Decode | None = None,
        background: bool = False,
        acts_on: Collection[type[Envelope]] | None = None,
        on_dead_letter: DeadLetterHook | None = None,
    ) -> None:
        """`handle_batch` takes a batch's records together (one use case over a unit of work).
        `background`: the consumer keeps a projection that no prescription waits for on its way (a
        status, a ledger, a history), so it fetches less eagerly and lets records gather between
        batches (`background_wait_ms`). `acts_on`: the types the handler has anything to do with;
        the others are passed over by their type header, unparsed (see `kafka.subscribe`)."""
        subscribe(
            self.broker,
            self.settings,
            topics=topics,
            group=group,
            handle_batch=self._counted(hooks.installed.wrap_handler(handle_batch)),
            title=title,
            gate=gate,
            decode=decode,
            observability=self.observability,
            background=background,
            acts_on=acts_on,
            incarnations=TopicIncarnations(KafkaTopicIds(self.settings), self.settings.kafka_tracking_epoch),
            on_dead_letter=on_dead_letter,
        )

    async def publish_now(self, *events: Envelope) -> None:
        """Publish events no document's outbox holds (an answer about a record that changed
        nothing), and wait for the broker's confirmation."""
        await publisher_for(self.broker)([outbox_entry(event) for event in events])

    @property
    def handlers_in_flight(self) -> int:
        return len(self.in_flight)

    def _counted(self, handle_batch: BatchHandler) -> BatchHandler:
        async def handle_counted(records: Sequence[Any]) -> Sequence[Any]:
            with self.in_flight.one():
                return await handle_batch(records)

        return handle_counted

    def serve(self, *routes: Any) -> None:
        """Starlette routes served beside /health and /metrics on the service's HTTP port (an edge
        a service offers people, e.g. the courier gateway); none without `http_enabled`."""
        self._routes += routes

    def every_sweep(self, name: str, sweep: Callable[[], Awaitable[None]]) -> None:
        """Run `sweep` every `sweep_interval_s` while the service runs: deadlines that passed
        (reviews, courier offers, lot expiry) are found by looking, so nothing waits forever even
        when no message arrives. Sweeps write through the same versioned documents as handlers, so
        two instances sweeping at once cannot both act."""
        self._sweeps.append((name, sweep))

    def ready_checks(self) -> dict[str, Check]:
        """What /health/ready requires: consumers running, the broker and the database answering."""

        async def consumers() -> None:
            if self.phase != "running":
                raise NotReady(self.phase)

        async def broker() -> None:
            if not await self.broker.ping(self.settings.health_check_timeout_s):
                raise NotReady("unreachable")

        async def database() -> None:
            await ping(self.mongo)

        return {"consumers": consumers, "broker": broker, "database": database}

    def live_checks(self) -> dict[str, Check]:
        """What /health/live requires while the service runs (before, the consumers are still
        joining; while stopping, they stop on purpose): every consumer still consuming, and no
        handler call running longer than `kafka_max_poll_interval_ms`. Neither heals by itself: a
        consume loop that ended never starts again, and a consumer that has not fetched for the
        poll interval has already left its group (aiokafka leaves it). A restart cures both, and
        the records they held are fetched again from the last commit."""
        poll_interval_s = self.settings.kafka_max_poll_interval_ms / 1000

        async def consumers() -> None:
            if self.phase == "running" and (stopped := stopped_consumers(self.broker.subscribers)):
                raise NotReady(f"no longer consuming: {', '.join(stopped)}")

        async def handlers() -> None:
            longest_s = self.in_flight.longest_s()
            if self.phase == "running" and longest_s > poll_interval_s:
                raise NotReady(
                    f"a batch handler has run {longest_s:.0f} s, past the poll interval of {poll_interval_s:.0f} s"
                )

        return {"consumers": consumers, "handlers": handlers}

    def http_endpoint(self) -> HttpEndpoint:
        """Health and metrics of this process, not yet serving (`app` starts it first thing)."""
        return HttpEndpoint(
            self.name,
            self.observability.metrics,
            self.ready_checks,
            host=self.settings.http_host,
            port=self.settings.http_port,
            check_timeout_s=self.settings.health_check_timeout_s,
            live_checks=self.live_checks,
            extra_routes=self._routes,
        )

    async def _lag_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.consumer_lag_interval_s)
            try:
                await self.observability.sample_consumer_lag(self.broker, self.settings.health_check_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a metric is not worth a stack trace every interval
                log.warning("consumer lag not sampled", error=repr(error))

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
            # Serving first: liveness holds while the consumers join their groups (seconds).
            self.phase = "starting"
            if self.settings.http_enabled:
                self.http = self.http_endpoint()
                await self.http.start()
            try:
                await ping(self.mongo)
                if on_startup is not None:
                    await on_startup()
            except BaseException:
                await stop_serving()
                raise

        async def started() -> None:
            self.relay.start()
            self._sweep_tasks = [
                asyncio.create_task(self._sweep_forever(name, sweep), name=f"sweep-{name}")
                for name, sweep in self._sweeps
            ]
            self._sweep_tasks.append(asyncio.create_task(self._lag_forever(), name="consumer-lag"))
            self.phase = "running"
            log.info(
                "service started",
                bootstrap=self.settings.kafka_bootstrap_servers,
                http=self.http.url if self.http else None,
                tracing=self.observability.tracing,
            )

        async def stop_consuming_then_flush() -> None:
            # Stop fetching first and let in-flight handlers finish and commit, then publish what
            # they stored, and only then let FastStream close the producer.
            self.phase = "stopping"
            log.info("service stopping", handlers_in_flight=self.handlers_in_flight)
            for task in self._sweep_tasks:
                task.cancel()
            await asyncio.gather(*self._sweep_tasks, return_exceptions=True)
            await asyncio.gather(*(sub.stop() for sub in self.broker.subscribers))
            relayed = await self.relay.stop()
            try:
                left: int | None = await self.relay.left_behind()
            except Exception as error:  # the database went away: the line says so instead of a count
                log.warning("outbox not checked after the flush", error=repr(error))
                left = None
            # What the stop did, in figures a test (or a person after a deploy) can check.
            log.info(
                "service stopped consuming and flushed its outbox",
                handlers_in_flight=self.handlers_in_flight,
                relayed_at_stop=relayed,
                outbox_left=left,
            )

        async def stop_serving() -> None:
            if self.http is not None:
                await self.http.stop()
                self.http = None

        async def close_database() -> None:
            await stop_serving()
            self.mongo.close()
            await self.observability.shutdown()

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
