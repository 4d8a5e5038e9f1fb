"""Operations: Prometheus metrics and OpenTelemetry traces of one service process (its health
endpoints, which serve the metrics, are in `health`).

* Metrics live in one registry per `ServiceRuntime` (several services may share a test process).
  The consumer side is recorded per record by the runtime's subscriber: FastStream's Prometheus
  middleware sees our batch subscribers' batches, not their records, so its `faststream_received_*`
  series count batches labelled by their first record's topic; its publish series are exact.
* Traces are off unless an OTLP endpoint is configured. Each record is handled in its own span,
  whose parent is the `traceparent` the record carries; the events a handling causes are written to
  the outbox with that span's `traceparent` and published under it, possibly later by the relay.
  Work that no message's trace covers (a courier's app reports without a `traceparent`; a sweep)
  continues the trace a prescription's document remembers (`continuing_trace`, `UnitOfWork`).
  So one prescription's hops (submission, verdict, reservation, delivery) form one trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from pymongo import monitoring

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord
    from faststream.kafka import KafkaBroker
    from opentelemetry.sdk.trace import TracerProvider

    from .settings import RuntimeSettings

log = structlog.get_logger()

#: From a few milliseconds (a group-committed write) to the retries of an unreachable database.
HANDLING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
#: The metrics of the service handling the current message, for hooks deep in a service's code.
_current_metrics: ContextVar[ServiceMetrics | None] = ContextVar("pharmacy_metrics", default=None)
#: Set while a record that carried no traceparent is handled: its span began a trace only for want
#: of one, so a document it acts on may know better which trace the work belongs to.
_record_untraced: ContextVar[bool] = ContextVar("pharmacy_record_untraced", default=False)
#: The consumer group whose handler is running: the database commands sent under it are that
#: group's (see `RoundTripListener`).
_current_group: ContextVar[str | None] = ContextVar("pharmacy_group", default=None)
#: The contract type of the record in hand, once parsed (the runtime's subscriber sets it): each
#: record delivered is counted by group and type, so what a group receives and never acts on shows.
current_message_type: ContextVar[str | None] = ContextVar("pharmacy_message_type", default=None)
#: The group label of database commands sent outside any handler: the outbox relay, sweeps, start-up.
OUTSIDE_HANDLERS = "(background)"
#: The type label of a record that was dead-lettered before it could be parsed.
UNPARSED = "(unparsed)"

#: One per process, not per `ServiceMetrics`: the listener belongs to the database client, which
#: `connect` makes without knowing the service; every `ServiceMetrics` exposes it. A test process
#: hosting several services shows their sum in each (their handlers' commands told apart by group).
DATABASE_ROUND_TRIPS = Counter(
    "pharmacy_database_round_trips",
    "Database commands sent (each one round trip), by the consumer group whose handler sent them "
    f"({OUTSIDE_HANDLERS}: the relay, sweeps) and the command (find, insert, update, getMore, ...)",
    ["group", "command"],
    registry=None,
)


class RoundTripListener(monitoring.CommandListener):
    """Counts every command a database client sends, under the group of the handler that sent it.

    Motor runs each command on a thread of its own with a copy of the caller's context, so the
    group seen here is the caller's. A store's group write or coalesced read runs in a task that
    serves every handler waiting on it; its commands count under the group whose handler started
    that task (a store two groups write mixes them; the process's total is exact)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], Any] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        key = (_current_group.get() or OUTSIDE_HANDLERS, event.command_name)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = DATABASE_ROUND_TRIPS.labels(*key)
        series.inc()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class ServiceMetrics:
    """The Prometheus series of one service process, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_collectors: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process_collectors:  # CPU, memory, open files, GC: what every exporter shows
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        r = self.registry
        self.handled = Counter(
            "pharmacy_messages_handled",
            "Messages whose handler completed (their effect is stored, or they were recognised as duplicates)",
            ["topic", "group"],
            registry=r,
        )
        self.failed = Counter(
            "pharmacy_messages_failed",
            "Handler attempts that raised (retried, or dead-lettered once attempts ran out), by exception type",
            ["topic", "group", "error"],
            registry=r,
        )
        self.handling_seconds = Histogram(
            "pharmacy_message_handling_seconds",
            "Time from taking a record from its batch to its effect or dead letter, retries included",
            ["topic", "group"],
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "pharmacy_dead_letters",
            "Records sent to the dead-letter topic, by the topic they came from and the reason code",
            ["topic", "group", "reason"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "pharmacy_outbox_backlog_documents",
            "Documents whose outbox events no live write published (older than outbox_stale_after_s), "
            "as the relay found them at its last poll (a page holds at most 200)",
            ["store"],
            registry=r,
        )
        self.outbox_relayed = Counter(
            "pharmacy_outbox_relayed_events",
            "Events the outbox relay published because the write that stored them did not",
            ["store"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "pharmacy_consumer_lag",
            "Records of an assigned partition not yet fetched by this process (end offset minus position)",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.prescriptions_finished = Counter(
            "pharmacy_prescriptions_finished",
            "Prescriptions that reached a terminal state (delivered, rejected, out_of_stock, undeliverable, cancelled)",
            ["state"],
            registry=r,
        )
        self.records_delivered = Counter(
            "pharmacy_records_delivered",
            f"Records delivered to a consumer group, by topic and contract type ({UNPARSED}: dead-lettered "
            "before parsing), retries not counted again",
            ["group", "topic", "type"],
            registry=r,
        )
        self.records_skipped = Counter(
            "pharmacy_records_skipped",
            "Records a consumer group fetched and passed over unparsed: its `message-type` header names a "
            "type the group does not act on",
            ["group", "topic", "type"],
            registry=r,
        )
        r.register(DATABASE_ROUND_TRIPS)
        self._lag_series: set[tuple[str, str, str]] = set()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def outbox_seen(self, store: str, waiting_documents: int) -> None:
        self.outbox_backlog.labels(store).set(waiting_documents)

    def outbox_relayed_events(self, store: str, events: int) -> None:
        self.outbox_relayed.labels(store).inc(events)

    def set_consumer_lag(self, lags: Mapping[tuple[str, str, int], int]) -> None:
        """Replace the lag series: partitions this process no longer holds drop out."""
        current = {(group, topic, str(partition)): lag for (group, topic, partition), lag in lags.items()}
        for labels in self._lag_series - current.keys():
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(*labels)
        for labels, lag in current.items():
            self.consumer_lag.labels(*labels).set(lag)
        self._lag_series = set(current)


def prescription_finished(state: str) -> None:
    """Count a prescription that reached the terminal `state`; call once, where the state becomes terminal.

    Meant for code running under a handler (the runtime binds its metrics per record); elsewhere,
    unit tests of a service say, it does nothing."""
    metrics = _current_metrics.get()
    if metrics is not None:
        metrics.prescriptions_finished.labels(state).inc()


class ConsumerObserver:
    """What one consumer group records about each record: outcome counts, time, and its span."""

    def __init__(self, metrics: ServiceMetrics, group: str, tracer: trace.Tracer | None) -> None:
        self.metrics = metrics
        self.group = group
        self._tracer = tracer
        # Series of the hot path, looked up once per topic (a label lookup costs as much as the update).
        self._handled: dict[str, Any] = {}
        self._seconds: dict[str, Any] = {}
        self._delivered: dict[tuple[str, str], Any] = {}

    def claim_task(self) -> None:
        """Mark the running task as this group's consumer: the database commands it sends, and those
        of the tasks it starts, count as this group's also outside `handling` (a whole batch handed
        to a unit of work). Not reset: a subscriber's batches all run in its own task."""
        _current_group.set(self.group or None)

    def handled(self, topic: str) -> None:
        series = self._handled.get(topic)
        if series is None:
            series = self._handled[topic] = self.metrics.handled.labels(topic, self.group)
        series.inc()

    def failed(self, topic: str, error: BaseException) -> None:
        self.metrics.failed.labels(topic, self.group, type(error).__name__).inc()

    def dead_lettered(self, topic: str, reason: str) -> None:
        self.metrics.dead_letters.labels(topic, self.group, reason).inc()

    @contextlib.contextmanager
    def handling(self, record: ConsumerRecord[Any, Any]) -> Iterator[None]:
        """Around one record: times it, binds the metrics for hooks, and runs it in a span whose
        parent is the record's `traceparent`. With tracing off, a record's incoming `traceparent` is
        still made current, so the events it causes carry the trace on."""
        metrics_token = _current_metrics.set(self.metrics)
        group_token = _current_group.set(self.group or None)
        type_token = current_message_type.set(None)
        started = time.perf_counter()
        carrier = _record_trace_headers(record)
        untraced_token = _record_untraced.set(TRACEPARENT not in carrier)
        trace_token = None
        try:
            if self._tracer is not None:
                with self._span(record, carrier):
                    yield
            else:
                trace_token = otel_context.attach(_PROPAGATOR.extract(carrier)) if carrier else None
                yield
        finally:
            if trace_token is not None:
                otel_context.detach(trace_token)
            _record_untraced.reset(untraced_token)
            series = self._seconds.get(record.topic)
            if series is None:
                series = self._seconds[record.topic] = self.metrics.handling_seconds.labels(record.topic, self.group)
            series.observe(time.perf_counter() - started)
            self._count_delivered(record.topic, current_message_type.get() or UNPARSED)
            current_message_type.reset(type_token)
            _current_group.reset(group_token)
            _current_metrics.reset(metrics_token)

    def skipped(self, record: ConsumerRecord[Any, Any], message_type: str) -> None:
        """A record passed over by its type header: neither delivered to the handler nor timed."""
        self.metrics.records_skipped.labels(self.group, record.topic, message_type).inc()

    def _count_delivered(self, topic: str, message_type: str) -> None:
        series = self._delivered.get((topic, message_type))
        if series is None:
            series = self._delivered[topic, message_type] = self.metrics.records_delivered.labels(
                self.group, topic, message_type
            )
        series.inc()

    @contextlib.contextmanager
    def _span(self, record: ConsumerRecord[Any, Any], carrier: dict[str, str]) -> Iterator[None]:
        assert self._tracer is not None
        # A record without a traceparent starts a trace of its own, not one per batch.
        parent = _PROPAGATOR.extract(carrier) if carrier else otel_context.Context()
        batch = trace.get_current_span().get_span_context()  # FastStream's span around the batch
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.consumer.group.name": self.group,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        }
        correlation = _header(record, "correlation-id")
        if correlation is not None:
            attributes["messaging.message.conversation_id"] = correlation
        with self._tracer.start_as_current_span(
            f"{record.topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(batch)] if batch.is_valid else None,
        ):
            yield


class Observability:
    """The metrics and the tracer of one service process (owned by its `ServiceRuntime`)."""

    def __init__(
        self,
        service: str,
        settings: RuntimeSettings,
        *,
        metrics: ServiceMetrics | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.metrics = metrics or ServiceMetrics()
        self._owns_provider = tracer_provider is None
        self.tracer_provider = tracer_provider or tracer_provider_for(service, settings)
        self.tracer = None if self.tracer_provider is None else self.tracer_provider.get_tracer("services.runtime")

    @classmethod
    def disabled(cls) -> ConsumerObserver:
        """A consumer observer recording into a registry nobody reads (a subscriber built without one)."""
        return ConsumerObserver(ServiceMetrics(process_collectors=False), "", None)

    @property
    def tracing(self) -> bool:
        return self.tracer is not None

    def broker_middlewares(self) -> list[Any]:
        from faststream.kafka.prometheus import KafkaPrometheusMiddleware

        middlewares: list[Any] = []
        if self.tracer_provider is not None:
            from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

            middlewares.append(KafkaTelemetryMiddleware(tracer_provider=self.tracer_provider))
        middlewares.append(KafkaPrometheusMiddleware(registry=self.metrics.registry, app_name=self.service))
        return middlewares

    def consumer(self, group: str) -> ConsumerObserver:
        return ConsumerObserver(self.metrics, group, self.tracer)

    async def sample_consumer_lag(self, broker: KafkaBroker, timeout_s: float) -> None:
        """Lag of every partition this process's consumers hold: one end-offsets request per consumer;
        positions are known locally once a partition has been fetched from."""
        lags: dict[tuple[str, str, int], int] = {}
        for subscriber in broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if consumer is None:
                continue
            assigned = list(consumer.assignment())
            if not assigned:
                continue
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), timeout_s)
            for partition in assigned:
                try:
                    position = await asyncio.wait_for(consumer.position(partition), timeout_s)
                except Exception:  # revoked meanwhile, or no position yet (a timeout)
                    continue
                # Clamped: the dev broker may report an end below a position just fetched.
                lags[subscriber.group_id, partition.topic, partition.partition] = max(0, ends[partition] - position)
        self.metrics.set_consumer_lag(lags)

    async def shutdown(self, timeout_s: float = 3.0) -> None:
        """Export the spans still buffered, giving up after `timeout_s`: an unreachable collector
        must not hold SIGTERM up (the exporter retries for up to its own timeout, 10 s by default)."""
        provider = self.tracer_provider
        if provider is None or not self._owns_provider:
            return
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def flush() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                    loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        # A daemon thread: one stuck on the collector does not keep the process from exiting.
        threading.Thread(target=flush, name="otel-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(finished, timeout_s)
        except TimeoutError:
            log.warning("spans not exported at shutdown: the collector did not answer in time", timeout_s=timeout_s)


# --- tracing ---------------------------------------------------------------------------------------


def tracer_provider_for(service: str, settings: RuntimeSettings) -> TracerProvider | None:
    """An OTLP/HTTP-exporting provider when an endpoint is configured, else None (tracing off).

    `PHARMACY_OTEL_EXPORTER_OTLP_ENDPOINT` is a collector's base URL like the standard variable;
    without it the exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables itself (headers,
    timeout, certificates). `OTEL_TRACES_SAMPLER` and `OTEL_RESOURCE_ATTRIBUTES` apply as usual."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint and not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: service, SERVICE_INSTANCE_ID: settings.instance_id})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint)) if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on", otlp_endpoint=endpoint or "from OTEL_EXPORTER_OTLP_* variables")
    return provider


def traces_url(endpoint: str) -> str:
    """The traces path of a collector's base URL, as the standard OTEL_EXPORTER_OTLP_ENDPOINT means it."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def current_traceparent() -> str | None:
    """The W3C traceparent of the span in progress, to store with the events it causes."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def outside_message_traces() -> bool:
    """Whether the work in hand belongs to no trace a message brought: a record that carried no
    `traceparent` (a courier's app reporting), a sweep, a background task."""
    return _record_untraced.get() or not trace.get_current_span().get_span_context().is_valid


@contextlib.contextmanager
def continuing_trace(
    traceparent: str, tracer: trace.Tracer | None, name: str, attributes: Mapping[str, Any]
) -> Iterator[None]:
    """Work on a document in the trace the document remembers (`traceparent`): in a span child of
    it, linked to the span in hand (a report's own trace), so the events it causes join that trace.
    Without a tracer (tracing off) the remembered context is only made current: events carry it on."""
    parent = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    if tracer is None:
        token = otel_context.attach(parent)
        try:
            yield
        finally:
            otel_context.detach(token)
        return
    in_hand = trace.get_current_span().get_span_context()
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        links=[Link(in_hand)] if in_hand.is_valid else None,
    ):
        yield


@contextlib.contextmanager
def publishing_under(traceparent: str | None) -> Iterator[None]:
    """Make the stored `traceparent` the current trace context while an event is published, so the
    telemetry middleware's producer span joins the trace of the handling that caused the event; an
    event without one starts its own trace rather than joining whatever happens to be current."""
    token = otel_context.attach(
        _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else otel_context.Context()
    )
    try:
        yield
    finally:
        otel_context.detach(token)


def traces_publishes(broker: KafkaBroker) -> bool:
    from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

    return any(isinstance(m, KafkaTelemetryMiddleware) for m in broker.middlewares)


def _record_trace_headers(record: ConsumerRecord[Any, Any]) -> dict[str, str]:
    return {
        key: value.decode("ascii", "replace")
        for key, value in (record.headers or ())
        if key in ("traceparent", "tracestate") and value
    }


def _header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name and value:
            return value.decode("utf-8", "replace")
    return None
