"""FastStream wiring of the courier service."""

from __future__ import annotations

from faststream import FastStream

from pharmacy_contracts import topics
from services.runtime.service import ServiceRuntime

from .service import CourierService
from .settings import CourierSettings
from .storage import CourierStorage


def create_app(settings: CourierSettings) -> FastStream:
    runtime = ServiceRuntime("courier", settings)
    storage = CourierStorage(runtime.database)
    runtime.publish_outbox_of(storage.with_outbox)
    service = CourierService(storage, settings.max_delivery_attempts, settings.roster_refresh_s)

    runtime.consume(
        topics.PRESCRIPTION_DECISIONS,
        group="courier.decisions",
        handle=service.on_decision,
        title="take delivery details of approved prescriptions",
    )
    runtime.consume(
        topics.INVENTORY_EVENTS,
        group="courier.stock",
        handle=service.on_inventory_event,
        title="dispatch once stock is reserved",
    )
    runtime.consume(
        topics.COURIER_UPDATES,
        group="courier.updates",
        handle=service.on_report,
        title="follow couriers' reports",
    )
    return runtime.app(on_startup=storage.ensure_indexes)
