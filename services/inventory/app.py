"""FastStream wiring of the inventory service."""

from __future__ import annotations

from faststream import FastStream

from pharmacy_contracts import topics
from services.runtime.service import ServiceRuntime

from .service import InventoryService
from .settings import InventorySettings
from .storage import InventoryStorage


def create_app(settings: InventorySettings) -> FastStream:
    runtime = ServiceRuntime("inventory", settings)
    storage = InventoryStorage(runtime.database)
    runtime.publish_outbox_of(storage.with_outbox)
    service = InventoryService(storage, settings.low_stock_threshold)

    runtime.consume(
        topics.PRESCRIPTION_DECISIONS,
        group="inventory.reservations",
        handle=service.on_decision,
        title="reserve stock for approved prescriptions",
    )
    runtime.consume(
        topics.COURIER_DELIVERIES,
        group="inventory.deliveries",
        handle=service.on_delivery_event,
        title="dispatch, return or release held stock as deliveries progress",
    )
    runtime.consume(
        topics.INVENTORY_COMMANDS,
        group="inventory.commands",
        handle=service.on_command,
        title="restock and adjust on warehouse staff's request",
    )
    return runtime.app(on_startup=storage.ensure_indexes)
