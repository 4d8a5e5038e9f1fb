"""Metric recording helpers, trace context helpers and the readiness verdict, without broker or database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.runtime.health import NotReady, run_checks
from services.runtime.observability import (
    ConsumerObserver,
    ServiceMetrics,
    continuing_trace,
    current_traceparent,
    outside_message_traces,
    prescription_finished,
    publishing_under,
    tracer_provider_for,
    traces_url,
)
from services.runtime.settings import RuntimeSettings

UPSTREAM = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def record(topic: str = "inventory.commands.v1", headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=2,
        offset=41,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{}",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        headers=headers or [],
    )


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def observer(tracer_provider: TracerProvider | None = None) -> ConsumerObserver:
    tracer = tracer_provider.get_tracer("test") if tracer_provider else None
    return ConsumerObserver(ServiceMetrics(process_collectors=False), "pharmacy.inventory", tracer)


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_outcomes_are_counted_per_topic_and_group() -> None:
    observed = observer()
    observed.handled("inventory.commands.v1")
    observed.handled("inventory.commands.v1")
    observed.failed("inventory.commands.v1", ValueError("boom"))
    observed.dead_lettered("inventory.commands.v1", "contract_violation")
    m = observed.metrics
    group = {"group": "pharmacy.inventory", "topic": "inventory.commands.v1"}
    assert value(m, "pharmacy_messages_handled_total", **group) == 2
    assert value(m, "pharmacy_messages_failed_total", **group, error="ValueError") == 1
    assert value(m, "pharmacy_dead_letters_total", **group, reason="contract_violation") == 1
    assert value(m, "pharmacy_dead_letters_total", **group, reason="too_large") == 0


def test_handling_time_is_observed_even_when_the_handling_raises() -> None:
    observed = observer()
    with pytest.raises(RuntimeError, match="infrastructure"), observed.handling(record()):
        raise RuntimeError("infrastructure")
    with observed.handling(record()):
        pass
    labels = {"group": "pharmacy.inventory", "topic": "inventory.commands.v1"}
    assert value(observed.metrics, "pharmacy_message_handling_seconds_count", **labels) == 2


def test_the_terminal_state_hook_counts_only_under_a_handling() -> None:
    observed = observer()
    prescription_finished("delivered")  # no handling in progress (a unit test of a service): ignored
    with observed.handling(record()):
        prescription_finished("delivered")
        prescription_finished("rejected")
    assert value(observed.metrics, "pharmacy_prescriptions_finished_total", state="delivered") == 1
    assert value(observed.metrics, "pharmacy_prescriptions_finished_total", state="rejected") == 1


def test_consumer_lag_series_of_revoked_partitions_disappear() -> None:
    metrics = ServiceMetrics(process_collectors=False)
    metrics.set_consumer_lag({("g", "t", 0): 5, ("g", "t", 1): 0})
    assert value(metrics, "pharmacy_consumer_lag", group="g", topic="t", partition="0") == 5
    metrics.set_consumer_lag({("g", "t", 1): 3})
    assert (
        metrics.registry.get_sample_value("pharmacy_consumer_lag", {"group": "g", "topic": "t", "partition": "0"})
        is None
    )
    assert value(metrics, "pharmacy_consumer_lag", group="g", topic="t", partition="1") == 3


def test_outbox_gauges_and_counters() -> None:
    metrics = ServiceMetrics(process_collectors=False)
    metrics.outbox_seen("inventory_stock", 7)
    metrics.outbox_seen("inventory_stock", 0)
    metrics.outbox_relayed_events("inventory_stock", 3)
    assert value(metrics, "pharmacy_outbox_backlog_documents", store="inventory_stock") == 0
    assert value(metrics, "pharmacy_outbox_relayed_events_total", store="inventory_stock") == 3


def test_exposition_is_prometheus_text_with_the_documented_names() -> None:
    metrics = ServiceMetrics()
    metrics.handled.labels("t", "g").inc()
    text = metrics.exposition().decode()
    assert 'pharmacy_messages_handled_total{group="g",topic="t"} 1.0' in text
    assert "# TYPE pharmacy_message_handling_seconds histogram" in text
    assert "process_cpu_seconds_total" in text


def test_with_tracing_off_an_incoming_traceparent_is_carried_on() -> None:
    observed = observer()
    assert current_traceparent() is None
    with observed.handling(record(headers=[("traceparent", UPSTREAM.encode())])):
        carried = current_traceparent()
    assert carried == UPSTREAM
    assert current_traceparent() is None


def test_each_record_gets_a_consumer_span_child_of_its_traceparent() -> None:
    provider, exporter = in_memory()
    observed = observer(provider)
    with observed.handling(record(headers=[("traceparent", UPSTREAM.encode()), ("correlation-id", b"RX-1")])):
        inside = current_traceparent()
    with observed.handling(record()):
        pass
    traced, untraced = exporter.get_finished_spans()
    assert traced.kind is SpanKind.CONSUMER
    assert traced.name == "inventory.commands.v1 process"
    assert f"{traced.context.trace_id:032x}" == UPSTREAM.split("-")[1]
    assert f"{traced.parent.span_id:016x}" == UPSTREAM.split("-")[2]
    assert traced.attributes["messaging.message.conversation_id"] == "RX-1"
    assert inside == f"00-{traced.context.trace_id:032x}-{traced.context.span_id:016x}-01"
    assert untraced.parent is None  # no traceparent: a trace of its own
    assert untraced.context.trace_id != traced.context.trace_id


def test_work_is_outside_message_traces_without_a_span_or_when_the_record_carried_no_traceparent() -> None:
    provider, _ = in_memory()
    assert outside_message_traces()  # a sweep, a background task
    for observed in (observer(), observer(provider)):
        with observed.handling(record()):
            assert outside_message_traces()
        with observed.handling(record(headers=[("traceparent", UPSTREAM.encode())])):
            assert not outside_message_traces()
    with provider.get_tracer("test").start_as_current_span("a tool's own span"):
        assert not outside_message_traces()


def test_work_outside_message_traces_continues_the_remembered_trace_in_a_span_linked_to_its_own() -> None:
    provider, exporter = in_memory()
    observed = observer(provider)
    tracer = provider.get_tracer("test")
    with (
        observed.handling(record(topic="courier.updates.v1")),
        continuing_trace(UPSTREAM, tracer, "courier_deliveries apply", {"k": "v"}),
    ):
        inside = current_traceparent()
    continued, report = exporter.get_finished_spans()
    assert continued.name == "courier_deliveries apply"
    assert f"{continued.context.trace_id:032x}" == UPSTREAM.split("-")[1]
    assert f"{continued.parent.span_id:016x}" == UPSTREAM.split("-")[2]
    assert [link.context.span_id for link in continued.links] == [report.context.span_id]
    assert report.context.trace_id != continued.context.trace_id
    assert inside == f"00-{continued.context.trace_id:032x}-{continued.context.span_id:016x}-01"

    with continuing_trace(UPSTREAM, None, "tracing off", {}):  # no tracer: the context is carried on
        assert current_traceparent() == UPSTREAM
    assert current_traceparent() is None


def test_an_event_is_published_under_its_stored_traceparent_and_an_untraced_one_under_none() -> None:
    provider, _ = in_memory()
    with provider.get_tracer("test").start_as_current_span("unrelated"):
        with publishing_under(UPSTREAM):
            assert current_traceparent() == UPSTREAM
        with publishing_under(None):
            assert current_traceparent() is None


def test_tracing_is_off_unless_an_endpoint_is_configured(monkeypatch: Any) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracer_provider_for("inventory", RuntimeSettings()) is None
    provider = tracer_provider_for("inventory", RuntimeSettings(otel_exporter_otlp_endpoint="http://collector:4318"))
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "inventory"
    provider.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    standard = tracer_provider_for("courier", RuntimeSettings())
    assert standard is not None
    standard.shutdown()


def test_the_traces_path_is_added_to_a_base_url_once() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


def test_readiness_names_each_failing_check() -> None:
    async def fine() -> None:
        pass

    async def down() -> None:
        raise ConnectionError("refused")

    async def starting() -> None:
        raise NotReady("starting")

    async def hangs() -> None:
        await asyncio.sleep(10)

    ok, checks = asyncio.run(run_checks({"broker": fine, "database": fine}, 0.1))
    assert ok
    assert checks == {"broker": "ok", "database": "ok"}
    ok, checks = asyncio.run(run_checks({"broker": hangs, "database": down, "consumers": starting}, 0.05))
    assert not ok
    assert checks == {
        "broker": "no answer within 0.05s",
        "database": "ConnectionError: refused",
        "consumers": "starting",
    }
