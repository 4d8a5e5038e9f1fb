"""Use cases of the prescription service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from pharmacy_contracts.consultation import PrescriptionAccepted
from pharmacy_contracts.prescription import (
    ApprovedLine,
    DeliveryDetails,
    PrescriptionApproved,
    PrescriptionRejected,
)
from services.runtime.documents import Change

from . import domain
from .storage import PrescriptionStorage

log = structlog.get_logger()
PRODUCER = "prescription"


class PrescriptionService:
    def __init__(self, storage: PrescriptionStorage, clock: Callable[[], datetime]):
        self._storage = storage
        self._clock = clock

    async def check(self, accepted: PrescriptionAccepted) -> None:
        prescription = accepted.prescription
        formulary = await self._storage.formulary_entries(item.drug_code for item in prescription.items)
        now = self._clock()
        result = domain.check_prescription(prescription, formulary, now)

        def decide(existing: domain.Verdict | None) -> Change[domain.Verdict] | None:
            if existing is not None:
                return None
            verdict = domain.Verdict(
                prescription_id=prescription.prescription_id,
                approved=result.approved,
                reasons=list(result.reasons),
                decided_at=now,
            )
            common = {
                "correlation_id": prescription.prescription_id,
                "causation_id": accepted.message_id,
                "producer": PRODUCER,
                "prescription_id": prescription.prescription_id,
            }
            if not result.approved:
                return Change(verdict, [PrescriptionRejected(**common, reasons=list(result.reasons))])
            entries = [formulary[item.drug_code] for item in prescription.items]
            approved = PrescriptionApproved(
                **common,
                patient_id=prescription.patient.patient_id,
                lines=[
                    ApprovedLine(drug_code=i.drug_code, quantity=i.quantity, days_supply=i.days_supply)
                    for i in prescription.items
                ],
                delivery=DeliveryDetails(
                    address=prescription.patient.address,
                    contact_phone=prescription.patient.phone,
                    cold_chain=any(e.cold_chain for e in entries),
                    controlled=any(e.controlled for e in entries),
                ),
            )
            return Change(verdict, [approved])

        change = await self._storage.verdicts.apply(
            prescription.prescription_id, decide, message_id=accepted.message_id
        )
        if change is None:
            log.info("prescription already decided; duplicate dropped")
            return
        log.info(
            "prescription approved" if result.approved else "prescription rejected",
            reasons=[r.code for r in result.reasons],
        )
