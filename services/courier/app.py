"""FastStream wiring of the courier service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aiokafka.structs import ConsumerRecord
from faststream import FastStream

from pharmacy_contracts import topics
from pharmacy_contracts.envelope import utc_now
from services.runtime import credentials
from services.runtime.service import ServiceRuntime

from . import gateway
from .round_pass import PyVrpPlanner
from .service import DECISIONS, STOCK_EVENTS, CourierService, RoundsConfig, refused_report_answer
from .settings import CourierSettings
from .storage import CourierStorage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


def build(
    settings: CourierSettings,
    *,
    clock: Callable[[], datetime] = utc_now,
    tracer_provider: TracerProvider | None = None,
) -> tuple[FastStream, CourierService]:
    """The app and its service (tests drive the service's sweep with their own clock, and may
    collect its spans in a `tracer_provider` of their own)."""
    runtime = ServiceRuntime("courier", settings, tracer_provider=tracer_provider)
    storage = CourierStorage(runtime.database)
    runtime.publish_outbox_of(storage.with_outbox)
    key = settings.delivery_code_key
    service = CourierService(
        storage,
        runtime.unit_of_work,
        policy=settings.policy(),
        roster_refresh_s=settings.roster_refresh_s,
        code_key=key.get_secret_value().encode() if key is not None and key.get_secret_value() else None,
        clock=clock,
        rounds=_rounds_of(settings),
    )

    runtime.consume(
        topics.PRESCRIPTION_DECISIONS,
        group="courier.decisions",
        handle_batch=service.on_decision,
        acts_on=DECISIONS,
        title="take delivery details of approved prescriptions, and cancellations",
    )
    runtime.consume(
        topics.INVENTORY_EVENTS,
        group="courier.stock",
        handle_batch=service.on_inventory_event,
        acts_on=STOCK_EVENTS,
        title="dispatch once stock is reserved",
    )
    courier_key = credentials.secret_of(settings.courier_gateway_key)

    async def answer_refusal(record: ConsumerRecord, reason: str, detail: str) -> None:
        """A courier whose signed report was refused hears why (courier.answers.v1)."""
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or () if value}
        answer = refused_report_answer(headers, record.value, record.key, reason, detail)
        if answer is not None:
            await runtime.publish_now(answer)

    runtime.consume(
        topics.COURIER_UPDATES,
        group="courier.updates",
        handle_batch=service.on_report,
        title="follow couriers' reports",
        # A report counts only signed by the courier it names (their token, `pharmacy couriers token`).
        gate=credentials.signature_gate(courier_key, credentials.COURIER, "courier_id", settings.courier_key_floor),
        on_dead_letter=answer_refusal,
    )
    runtime.consume(
        topics.COURIER_DISPATCHERS,
        group="courier.dispatchers",
        handle_batch=service.on_dispatcher,
        title="offer deliveries whose addresses dispatchers placed on the map",
    )
    runtime.every_sweep("deliveries", service.sweep)
    if courier_key is not None:
        runtime.serve(*gateway.routes(courier_key, storage.held_by, settings.courier_key_floor))

    async def startup() -> None:
        settings.delivery_code_secret()  # refuses to start without the key, with a clear message
        if courier_key is None:  # rather than run with every report quarantined
            raise RuntimeError(
                "PHARMACY_COURIER_GATEWAY_KEY is not set: no courier's report could be verified "
                "(deploy/PRODUCTION.md makes one)"
            )
        await storage.ensure_indexes()

    app = runtime.app(on_startup=startup)
    app.on_shutdown(service.stop)
    return app, service


def create_app(settings: CourierSettings) -> FastStream:
    return build(settings)[0]


def _rounds_of(settings: CourierSettings) -> RoundsConfig | None:
    """Delivery rounds, when they are on: planned by PyVRP on the settings' roads and limits."""
    if not settings.rounds:
        return None
    return RoundsConfig(
        PyVrpPlanner(settings.roads(), settings.limits()),
        cadence=timedelta(seconds=settings.rounds_cadence_s),
        min_waiting=settings.rounds_min_deliveries,
    )
