"""FastStream wiring of the inventory service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from faststream import FastStream

from pharmacy_contracts import topics
from pharmacy_contracts.envelope import utc_now
from services.runtime.service import ServiceRuntime

from .service import APPROVALS, DELIVERY_EVENTS, MOVING_STOCK, InventoryService
from .settings import InventorySettings
from .storage import InventoryStorage


def create_app(settings: InventorySettings, clock: Callable[[], datetime] = utc_now) -> FastStream:
    runtime = ServiceRuntime("inventory", settings)
    storage = InventoryStorage(runtime.database)
    runtime.publish_outbox_of(storage.with_outbox)
    service = InventoryService(storage, runtime.unit_of_work, settings, clock=clock)

    runtime.consume(
        topics.PRESCRIPTION_DECISIONS,
        group="inventory.reservations",
        handle_batch=service.on_decision,
        acts_on=APPROVALS,
        title="reserve stock for approved prescriptions",
    )
    runtime.consume(
        topics.COURIER_DELIVERIES,
        group="inventory.deliveries",
        handle_batch=service.on_delivery_event,
        acts_on=DELIVERY_EVENTS,
        title="dispatch, return, deliver, release or quarantine held stock as deliveries progress",
    )
    runtime.consume(
        topics.INVENTORY_COMMANDS,
        group="inventory.commands",
        handle_batch=service.on_command,
        title="register warehouses, restock lots, adjust counts, ship and receive transfers on staff's request",
    )
    runtime.consume(
        topics.PRESCRIPTION_FORMULARY,
        group="inventory.formulary",
        handle_batch=service.on_formulary,
        title="keep the drugs the formulary lists: only these are restocked",
    )
    runtime.consume(
        topics.INVENTORY_EVENTS,
        group="inventory.ledger",
        background=True,
        handle_batch=service.on_inventory_event,
        acts_on=MOVING_STOCK,
        title="keep the stock ledger (one entry per movement); note a transfer shipped, close one received",
    )
    runtime.every_sweep("lot-expiry", service.sweep_expiry)
    runtime.every_sweep("transfer-suggestions", service.sweep_transfers)
    return runtime.app(on_startup=storage.ensure_indexes)
