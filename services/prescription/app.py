"""FastStream wiring of the prescription service."""

from __future__ import annotations

from faststream import FastStream

from pharmacy_contracts import topics
from pharmacy_contracts.envelope import utc_now
from services.runtime.service import ServiceRuntime

from .service import PrescriptionService
from .settings import PrescriptionSettings
from .storage import PrescriptionStorage


def create_app(settings: PrescriptionSettings) -> FastStream:
    runtime = ServiceRuntime("prescription", settings)
    storage = PrescriptionStorage(runtime.database)
    runtime.publish_outbox_of(storage.with_outbox)
    service = PrescriptionService(storage, clock=utc_now)

    runtime.consume(
        topics.CONSULTATION_INTAKE,
        group="prescription.check",
        handle=service.check,
        title="check prescriptions against the formulary",
    )
    return runtime.app(on_startup=storage.ensure_indexes)
