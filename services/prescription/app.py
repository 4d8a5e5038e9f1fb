"""FastStream wiring of the prescription service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aiokafka.structs import ConsumerRecord
from faststream import FastStream

from pharmacy_contracts import topics
from pharmacy_contracts.envelope import utc_now
from services.runtime import credentials
from services.runtime.service import ServiceRuntime

from .service import SUPPLY_ENDINGS, PrescriptionService, refused_decision_answer
from .settings import PrescriptionSettings
from .storage import PrescriptionStorage


def create_app(settings: PrescriptionSettings) -> FastStream:
    return build(settings)[0]


def build(
    settings: PrescriptionSettings, *, clock: Callable[[], datetime] = utc_now
) -> tuple[FastStream, PrescriptionService]:
    """The app and its service, so a test can drive the clock and call the review sweep itself."""
    runtime = ServiceRuntime("prescription", settings)
    storage = PrescriptionStorage(runtime.database)
    runtime.publish_outbox_of(storage.with_outbox, written_by_tools=storage.written_by_tools)
    service = PrescriptionService(storage, runtime.unit_of_work, clock=clock, policy=settings.review_policy())

    runtime.consume(
        topics.CONSULTATION_INTAKE,
        group="prescription.check",
        handle_batch=service.on_intake,
        title="check prescriptions against the safety rules; honour cancellations",
    )
    pharmacist_key = credentials.secret_of(settings.pharmacist_key)

    async def answer_refusal(record: ConsumerRecord, reason: str, detail: str) -> None:
        """A pharmacist whose signed decision was refused hears why (prescription.answers.v1)."""
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or () if value}
        answer = refused_decision_answer(headers, record.value, record.key, reason, detail)
        if answer is not None:
            await runtime.publish_now(answer)

    runtime.consume(
        topics.PRESCRIPTION_REVIEWS,
        group="prescription.reviews",
        handle_batch=service.on_review,
        title="apply pharmacists' review decisions and cancellations",
        # A decision counts only signed by the pharmacist it names (their token, `pharmacy review token`).
        gate=credentials.signature_gate(
            pharmacist_key, credentials.PHARMACIST, "pharmacist_id", settings.pharmacist_key_floor
        ),
        on_dead_letter=answer_refusal,
    )
    runtime.consume(
        topics.INVENTORY_EVENTS,
        topics.COURIER_DELIVERIES,
        group="prescription.supply",
        background=True,
        handle_batch=service.on_supply_event,
        acts_on=SUPPLY_ENDINGS,
        title="mark approved prescriptions that never reached the patient (no stock, delivery given up or withdrawn)",
    )
    runtime.every_sweep("review-deadlines", service.sweep_reviews)

    async def startup() -> None:
        if pharmacist_key is None:  # refuse to start rather than run with every decision quarantined
            raise RuntimeError(
                "PHARMACY_PHARMACIST_KEY is not set: no pharmacist's decision could be verified "
                "(deploy/PRODUCTION.md makes one)"
            )
        await storage.ensure_indexes()

    return runtime.app(on_startup=startup), service
