"""Health, metrics and traces of services running in-process against the real broker and database."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Coroutine, Sequence
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, SecretStr

from pharmacy_contracts import topics
from pharmacy_contracts.inventory import RestockRequested
from services.cli import bus
from services.consultation.app import create_app
from services.consultation.settings import ConsultationSettings
from services.runtime.mongo_store import MongoStore
from services.runtime.observability import current_traceparent
from services.runtime.relay import OutboxRelay, StoreOutbox, outbox_entry
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings
from services.runtime.unit_of_work import Decision, Handled, Record, UnitOfWork
from tests.support.inprocess import one_at_a_time, own_groups, running, sender_keys
from tests.support.scenario import wait_until
from tests.support.stack import free_port
from tests.unit.builders import rejected

TOPIC = topics.INVENTORY_COMMANDS


async def get(url: str) -> tuple[int, bytes]:
    """One HTTP/1.1 GET; the status and the body (no client library needed)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def samples(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = await get(f"{base}/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls)


async def test_a_service_reports_health_and_counts_what_it_handles(settings: RuntimeSettings) -> None:
    port = free_port()
    service_settings = own_groups(
        ConsultationSettings, settings, sender_keys=sender_keys(settings, "hospital-test"), http_port=port
    )
    prescription_id = f"RX-OBS-{uuid.uuid4().hex[:6]}"
    base = f"http://127.0.0.1:{port}"
    async with running(create_app(service_settings)):
        assert (await get(f"{base}/health/live"))[0] == 200
        status, body = await get(f"{base}/health/ready")
        assert status == 200, body
        assert json.loads(body)["checks"] == {"consumers": "ok", "broker": "ok", "database": "ok"}

        # A terminal lifecycle event, and an unsigned "prescription" the gate refuses.
        await bus.publish(settings, rejected(prescription_id=prescription_id))
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topics.CONSULTATION_PRESCRIPTIONS.name, b"not signed", key=b"x")
        finally:
            await producer.stop()

        async def counted() -> bool:
            found = await samples(base)
            return (
                total(found, "pharmacy_prescriptions_finished_total", state="rejected") >= 1
                and total(found, "pharmacy_dead_letters_total", topic=topics.CONSULTATION_PRESCRIPTIONS.name) >= 1
            )

        await wait_until(counted, "the rejection and the dead letter to be counted", timeout=30)
        found = await samples(base)
    decisions = {"topic": topics.PRESCRIPTION_DECISIONS.name, "group": service_settings.group("consultation.status")}
    assert total(found, "pharmacy_messages_handled_total", **decisions) >= 1
    assert total(found, "pharmacy_message_handling_seconds_count", **decisions) >= 1
    assert total(found, "pharmacy_prescriptions_finished_total", state="rejected") == 1
    assert total(found, "faststream_published_messages_total") >= 1  # the dead letter, by FastStream's middleware
    assert total(found, "process_resident_memory_bytes") > 0


class Proxy:
    """A TCP proxy the test can cut, to make the database unreachable for one runtime only. It runs
    its own event loop in a thread: the Mongo client blocks the service's loop now and then (close)."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def start(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        self._run(listen())

    def cut(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()

        self._run(close())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}


async def test_readiness_fails_while_the_database_is_unreachable_and_says_so(settings: RuntimeSettings) -> None:
    mongo_port = urlsplit(settings.mongo_url.get_secret_value()).port
    assert mongo_port is not None
    proxy = Proxy(mongo_port)
    proxy.start()
    proxied = settings.model_copy(update={"mongo_url": SecretStr(f"mongodb://127.0.0.1:{proxy.port}")})
    runtime = ServiceRuntime("test", proxied)
    async with running(runtime.app()):
        assert runtime.http is not None and runtime.http.url is not None
        base = runtime.http.url
        assert (await get(f"{base}/health/ready"))[0] == 200
        proxy.cut()
        status, body = await get(f"{base}/health/ready")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert checks["database"] != "ok"
        assert checks["broker"] == "ok"
        assert (await get(f"{base}/health/live"))[0] == 200  # alive: a restart would not bring the database back

        proxy.start()  # the same port again

        async def ready_again() -> bool:
            return (await get(f"{base}/health/ready"))[0] == 200

        await wait_until(ready_again, "readiness once the database answers again", timeout=40)
    proxy.close()


class Seen(BaseModel):
    count: int


def command(marker: str, requested_by: str) -> RestockRequested:
    return RestockRequested(
        correlation_id=marker,
        producer="test",
        warehouse_id=f"WH-{marker}",
        drug_code="D",
        lot_id="L1",
        expiry_date=date(2030, 1, 1),
        quantity=1,
        requested_by=requested_by,
    )


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def process_spans(exporter: InMemorySpanExporter, marker: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.name == f"{TOPIC.name} process" and s.attributes.get("messaging.message.conversation_id") == marker
    ]


async def test_a_trace_follows_events_across_services_and_through_the_relay(settings: RuntimeSettings) -> None:
    """upstream handles a command and emits the next one through its outbox; downstream handles
    that. Both handlings belong to the trace the first command was sent in, whether the event went
    out right after the write or was left for the relay."""
    suffix = uuid.uuid4().hex[:6]
    first, relayed = f"TRACE{suffix}", f"RELAY{suffix}"
    upstream_provider, upstream_spans = in_memory()
    downstream_provider, downstream_spans = in_memory()
    group_settings = settings.model_copy(update={"kafka_group_prefix": f"t{suffix}", "http_enabled": False})

    upstream = ServiceRuntime("upstream", group_settings, tracer_provider=upstream_provider)
    store = MongoStore(upstream.database, f"test_trace_{suffix}", Seen)
    upstream.publish_outbox_of([store])

    def next_one(current: Seen | None, message: RestockRequested) -> Decision[Seen]:
        if message.requested_by != "test":
            return Decision.unchanged()  # earlier tests' messages
        return Decision(Seen(count=1), [command(f"{message.correlation_id}-next", "upstream")])

    async def emit_next(records: Sequence[Record[RestockRequested]]) -> list[Handled[RestockRequested]]:
        return await upstream.unit_of_work.run(store, records, key=lambda m: m.correlation_id, decide=next_one)

    upstream.consume(TOPIC, group="upstream", handle_batch=emit_next, title="test")

    downstream = ServiceRuntime("downstream", group_settings, tracer_provider=downstream_provider)
    handled: list[str] = []

    async def note(message: RestockRequested) -> None:
        if message.requested_by == "upstream":
            handled.append(message.correlation_id)

    downstream.consume(TOPIC, group="downstream", handle_batch=one_at_a_time(note), title="test")

    submitted = upstream_provider.get_tracer("test").start_span("submit prescription")
    async with running(upstream.app()), running(downstream.app()):
        with trace.use_span(submitted, end_on_exit=True):
            traceparent = current_traceparent()
        assert traceparent is not None
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            body = command(first, "test").model_dump_json().encode()
            await producer.send_and_wait(
                TOPIC.name,
                body,
                key=f"WH-{first}".encode(),
                headers=[("traceparent", traceparent.encode()), ("correlation-id", first.encode())],
            )
        finally:
            await producer.stop()

        # An event stored under a span but published later by the relay, outside any span.
        quiet = MongoStore(upstream.database, f"test_trace_relay_{suffix}", Seen)
        crashing = UnitOfWork(None, outbox_entry)  # stores its events and publishes none of them
        with upstream_provider.get_tracer("test").start_as_current_span("a handling that crashed") as crashed:
            await crashing.run(
                quiet,
                [Record(command(relayed, "upstream"))],
                key=lambda _: "doc",
                decide=lambda current, message: Decision(Seen(count=1), [message]),
            )
        outboxes = [StoreOutbox(quiet, crashing)]
        relay = OutboxRelay(upstream.broker, outboxes, poll_interval_s=1, metrics=upstream.observability.metrics)
        assert await relay.drain_once(everything=True) == 1

        async def both_handled() -> bool:
            return {f"{first}-next", relayed} <= set(handled)

        await wait_until(both_handled, "downstream to handle both events", timeout=30)
        await downstream.observability.sample_consumer_lag(downstream.broker, timeout_s=5)
        lag = {
            s.labels["partition"]: s.value
            for family in downstream.observability.metrics.registry.collect()
            if family.name == "pharmacy_consumer_lag"
            for s in family.samples
            if s.labels["group"] == group_settings.group("downstream")
        }
        assert set(lag) == {str(p) for p in range(settings.kafka_topic_partitions)}
        assert all(value >= 0 for value in lag.values())
        relay_series = {"store": quiet.name}
        registry = upstream.observability.metrics.registry
        assert registry.get_sample_value("pharmacy_outbox_relayed_events_total", relay_series) == 1

    trace_id = submitted.get_span_context().trace_id
    [upstream_span] = process_spans(upstream_spans, first)
    assert upstream_span.context.trace_id == trace_id
    assert upstream_span.parent is not None and upstream_span.parent.span_id == submitted.get_span_context().span_id
    publishes = [s for s in upstream_spans.get_finished_spans() if s.name == f"{TOPIC.name} publish"]
    assert any(s.context.trace_id == trace_id for s in publishes), "FastStream's producer span joins the trace"

    [downstream_span] = process_spans(downstream_spans, f"{first}-next")
    assert downstream_span.context.trace_id == trace_id

    [after_relay] = process_spans(downstream_spans, relayed)
    assert after_relay.context.trace_id == crashed.get_span_context().trace_id
