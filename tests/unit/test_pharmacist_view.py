"""What a pharmacist sees of a held prescription (`pharmacy review show`): what came in a published
national bundle (units, substitution, controlled-drug schedule, endorsements, notes, the mapping's
notes) survives to the screen, at 80 columns, nothing cut."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from pathlib import Path

from rich.console import Console

from pharmacy_contracts.prescription import PrescriptionHeld, Reason
from services.cli.pharmacist import age_on, held_line, review_detail
from services.consultation import fhir
from services.prescription.domain import MedicationEntry, Verdict, VerdictState

CORPUS = Path(__file__).resolve().parents[1] / "data" / "fhir"


def shown(verdict: Verdict, names: dict[str, str] | None = None, active: list[MedicationEntry] | None = None) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(review_detail(verdict, names or {}, date(2021, 5, 20), active or []))
    return console.file.getvalue()  # type: ignore[attr-defined]


def held(bundle: str) -> Verdict:
    prescription = fhir.to_prescription(fhir.parse_bundle((CORPUS / bundle).read_bytes())).prescription
    reason = Reason(code="CONTROLLED_SUBSTANCE", message="Morphine is a controlled substance", item_index=0)
    return Verdict(
        prescription_id=prescription.prescription_id,
        state=VerdictState.HELD,
        patient_id=prescription.patient.patient_id,
        reasons=[reason],
        prescription=prescription,
    )


def test_a_controlled_drug_bundle_shows_schedule_units_substitution_and_the_hold():
    verdict = held("nhs-eps/sc-acute-clinical-practitioner-controlled-drugs-1-prepare.json")
    text = shown(verdict)
    prescriber = verdict.prescription.prescriber  # type: ignore[union-attr]
    assert f"{prescriber.licence_registry} {prescriber.licence_number}" in text
    assert "1. controlled drug: schedule Schedule 2, quantity in words: twenty eight" in text
    assert "2. no substitution: exactly this product" in text
    assert "CONTROLLED_SUBSTANCE: Morphine is a controlled substance" in text
    assert "from the sender's FHIR bundle" in text
    assert "…" not in text, "nothing is cut at 80 columns"


def test_endorsements_notes_and_drug_names_are_shown():
    verdict = held("nhs-eps/sc-acute-health-professional-6-endorsements-prepare.json")
    item = verdict.prescription.items[0]  # type: ignore[union-attr]
    text = shown(verdict, {item.drug_code: "Co-cyprindiol"})
    assert "1. endorsed: CC, FS" in text
    assert item.drug_code in text and "Co-cyprindiol" in text
    assert f"{item.quantity} {item.quantity_unit}" in text


def test_a_pack_count_is_shown_in_the_units_it_was_multiplied_out_to():
    text = shown(held("de-erezept/e2e-2021-pzn-nr1-verordnung.json"))
    assert "12 TAB" in text and "not stated" in text


def test_age_is_counted_in_whole_years_on_the_day():
    assert age_on(date(1958, 3, 14), date(2026, 3, 13)) == 67
    assert age_on(date(1958, 3, 14), date(2026, 3, 14)) == 68


def test_the_patients_other_active_medicines_are_listed_with_their_end():
    verdict = held("nhs-eps/sc-acute-health-professional-6-endorsements-prepare.json")
    warfarin = MedicationEntry(
        prescription_id="RX-EARLIER",
        drug_code="WAR5",
        started_at=datetime(2021, 5, 1, tzinfo=UTC),
        days_supply=30,
    )
    text = shown(verdict, {"WAR5": "Warfarin 5 mg"}, active=[warfarin])
    assert "Warfarin 5 mg until 2021-05-31 (RX-EARLIER)" in text
    assert "none on record here" in shown(verdict)


def test_a_new_hold_is_announced_with_its_reasons_deadlines_and_the_command_to_look():
    message = PrescriptionHeld(
        correlation_id="RX-H1",
        producer="prescription",
        prescription_id="RX-H1",
        patient_id="PAT-1",
        reasons=[Reason(code="CONTROLLED_SUBSTANCE", message="Morphine is a controlled substance")],
        escalate_at=datetime(2026, 12, 7, 14, 0, tzinfo=UTC),
        expires_at=datetime(2026, 12, 8, 10, 0, tzinfo=UTC),
    )
    assert held_line(message) == (
        "HELD RX-H1 (CONTROLLED_SUBSTANCE); escalates 14:00 UTC, expires 2026-12-08 10:00 UTC: "
        "pharmacy review show RX-H1"
    )
