"""The prescription service alone, in-process, against the real broker and database."""

from __future__ import annotations

from datetime import timedelta

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import PrescriptionAccepted
from pharmacy_contracts.prescription import PrescriptionApproved, PrescriptionRejected
from services.cli import bus
from services.prescription.app import create_app
from services.prescription.domain import FormularyEntry
from services.prescription.settings import PrescriptionSettings
from services.prescription.storage import PrescriptionStorage
from services.runtime.documents import connect
from services.runtime.settings import RuntimeSettings
from tests.support.inprocess import TopicWatch, of_type, running
from tests.support.scenario import prescription_message


def accepted(prescription_id: str, items: list[tuple[str, int]], **kwargs: object) -> PrescriptionAccepted:
    submitted = prescription_message(prescription_id, items, **kwargs)  # type: ignore[arg-type]
    return PrescriptionAccepted(
        correlation_id=prescription_id,
        producer="consultation",
        sender_id=submitted.sender_id,
        prescription=submitted.prescription,
    )


async def test_checks_against_the_formulary_and_decides_once(settings: RuntimeSettings) -> None:
    client = connect(settings.mongo_url.get_secret_value())
    storage = PrescriptionStorage(client[settings.mongo_database])
    await storage.save_formulary_entry(
        FormularyEntry(drug_code="INSGL", name="Insulin glargine", max_quantity=15, max_days_supply=90, cold_chain=True)
    )
    good = accepted("RX-P-GOOD", [("INSGL", 5)])
    too_many = accepted("RX-P-MANY", [("INSGL", 16)])
    unknown = accepted("RX-P-UNKNOWN", [("NOPE", 1)])
    expired = accepted("RX-P-OLD", [("INSGL", 1)], valid_for=timedelta(seconds=-1))
    try:
        async with (
            running(create_app(PrescriptionSettings(**settings.model_dump()))),
            TopicWatch(settings.kafka_bootstrap_servers, topics.PRESCRIPTION_DECISIONS.name) as watch,
        ):
            await bus.publish(settings, good, good, too_many, unknown, expired)
            await watch.wait_for(lambda w: len(w.messages()) >= 4, "four decisions")
            await watch.settle()
    finally:
        client.close()

    decisions = watch.messages()
    approved = of_type(decisions, PrescriptionApproved)
    assert [a.prescription_id for a in approved] == ["RX-P-GOOD"], "the duplicate is decided once"
    assert approved[0].delivery.cold_chain is True
    assert approved[0].causation_id == good.message_id
    codes = {r.prescription_id: [x.code for x in r.reasons] for r in of_type(decisions, PrescriptionRejected)}
    assert codes == {
        "RX-P-MANY": ["QUANTITY_ABOVE_MAXIMUM"],
        "RX-P-UNKNOWN": ["UNKNOWN_DRUG"],
        "RX-P-OLD": ["PRESCRIPTION_EXPIRED"],
    }
