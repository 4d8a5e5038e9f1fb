"""FastStream wiring of the consultation service."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from faststream import FastStream

from pharmacy_contracts import topics
from pharmacy_contracts.envelope import utc_now
from services.runtime.service import ServiceRuntime

from . import domain
from .gazetteer import BUNDLED, Gazetteer
from .service import ConsultationService, refusal_receipt, upstream_decoder
from .settings import ConsultationSettings
from .storage import ConsultationStorage
from .wording import Wording

#: Topics whose events move a prescription along; the status of each is kept from them.
LIFECYCLE_TOPICS = (
    topics.CONSULTATION_INTAKE,
    topics.PRESCRIPTION_DECISIONS,
    topics.INVENTORY_EVENTS,
    topics.COURIER_DELIVERIES,
)


def create_app(settings: ConsultationSettings) -> FastStream:
    runtime = ServiceRuntime("consultation", settings)
    storage = ConsultationStorage(runtime.database)
    runtime.publish_outbox_of(storage.with_outbox)
    service = ConsultationService(
        storage,
        runtime.unit_of_work,
        clock=utc_now,
        sender_keys=settings.secrets(),
        delivery_code_key=settings.delivery_code_secret(),
        gazetteer=Gazetteer.load(settings.gazetteer_file or BUNDLED),
        default_patient_language=settings.default_patient_language,
        wording=Wording(settings.patient_timezone),
    )

    async def answer_refusal(record: ConsumerRecord, reason: str, detail: str) -> None:
        """A verified sender hears why its message was refused (consultation.receipts.v1)."""
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or () if value}
        receipt = refusal_receipt(headers, record.key, reason, detail)
        if receipt is not None:
            await runtime.publish_now(receipt)

    runtime.consume(
        topics.CONSULTATION_PRESCRIPTIONS,
        group="consultation.intake",
        handle_batch=service.receive_from_upstream,
        title="receive signed prescriptions and cancellations from upstream",
        # Every record of the topic passes the gate before it is parsed, whatever its type.
        gate=service.check_signature,
        # Native JSON, or a FHIR R4 Bundle marked `content-type: application/fhir+json`.
        decode=upstream_decoder(settings.fhir_rules()),
        on_dead_letter=answer_refusal,
    )
    runtime.consume(
        *LIFECYCLE_TOPICS,
        group="consultation.status",
        background=True,
        handle_batch=service.track,
        acts_on=domain.LIFECYCLE_EVENTS,
        title="keep each prescription's status from its lifecycle events",
    )
    return runtime.app(on_startup=storage.ensure_indexes)
