"""Patient-safety rules and the review lifecycle. Pure functions of data: no I/O, the time is passed in.

Each rule returns the reasons it found (a code for machines, a sentence for people). Reject
reasons stop a prescription; hold reasons send it to a pharmacist. `check_prescription` runs
them all and `outcome_of` turns what they found into approved, held or rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from itertools import combinations, product
from typing import Literal

from pydantic import BaseModel, Field

from pharmacy_contracts.consultation import Prescription, PrescriptionItem
from pharmacy_contracts.prescription import DeliveryDetails, Reason, ReasonCode

MESSAGE_LIMIT = 500  # Reason.message's maximum length
DEFAULT_REFILL_TOLERANCE = 0.8
#: Medication history entries whose supply ended longer ago than this are dropped when the patient's
#: history is next written: no rule looks at them, and the document must not grow forever.
HISTORY_KEPT_AFTER_SUPPLY = timedelta(days=365)

#: `decided_by` of decisions no person took.
BY_CHECKS = "automatic-checks"
BY_REVIEW_TIMEOUT = "review-timeout"


# --- reference data (each in its own collection) ------------------------------------------------------


class FormularyEntry(BaseModel):
    drug_code: str
    name: str
    form: str = "tablet"
    strength: str = ""
    ingredient_classes: list[str] = Field(
        default_factory=list, description="Matched case-insensitively against allergies and interactions"
    )
    max_quantity: int = Field(gt=0, description="Most dispensing units one prescription may ask for")
    max_days_supply: int = Field(gt=0)
    max_days_supply_chronic: int | None = Field(
        default=None, gt=0, description="The limit for items marked chronic; without it, max_days_supply applies"
    )
    default_days_supply: int | None = Field(
        default=None, gt=0, description="Days of supply of a line that states none (a FHIR bundle may not)"
    )
    cold_chain: bool = False
    controlled: bool = False
    high_risk: bool = Field(default=False, description="Always reviewed by a pharmacist (anticoagulants, say)")
    urgent: bool = Field(
        default=False, description="Needed within hours (insulin, antibiotics): a delivery round drives to it first"
    )

    def days_supply_limit(self, chronic: bool) -> int:
        if chronic and self.max_days_supply_chronic is not None:
            return self.max_days_supply_chronic
        return self.max_days_supply


class PrescriberRecord(BaseModel):
    """A registered prescriber; the licence number is the document id."""

    licence_number: str
    prescriber_id: str
    name: str
    licensed_until: date
    suspended: bool = False
    remote_expert: bool = False


Severity = Literal["severe", "moderate"]


class Interaction(BaseModel):
    """Two ingredient classes that must not (severe) or should not unreviewed (moderate) be taken together."""

    class_a: str
    class_b: str
    severity: Severity
    note: str = ""

    @property
    def pair(self) -> frozenset[str]:
        return frozenset({normalise(self.class_a), normalise(self.class_b)})

    @property
    def pair_id(self) -> str:
        """The document id: the same for (a, b) and (b, a), so a reversed pair replaces, not duplicates."""
        return "+".join(sorted(self.pair)) if len(self.pair) == 2 else f"{normalise(self.class_a)}+self"


def normalise(ingredient_class: str) -> str:
    return ingredient_class.strip().casefold()


class InteractionTable:
    """Interactions by their unordered pair of classes."""

    def __init__(self, interactions: Iterable[Interaction] = ()) -> None:
        self._by_pair = {interaction.pair: interaction for interaction in interactions}

    def between(self, class_a: str, class_b: str) -> Interaction | None:
        return self._by_pair.get(frozenset({normalise(class_a), normalise(class_b)}))


@dataclass(frozen=True)
class Reference:
    """The reference data one batch of checks reads, read once for the whole batch."""

    formulary: Mapping[str, FormularyEntry] = field(default_factory=dict)
    #: By licence number; a licence not in the registry is absent.
    prescribers: Mapping[str, PrescriberRecord] = field(default_factory=dict)
    interactions: InteractionTable = field(default_factory=InteractionTable)


# --- the patient's medication history (one document per patient) -------------------------------------


#: Why an approved prescription never reached the patient (`MedicationEntry.not_supplied`).
NotSupplied = Literal["OUT_OF_STOCK", "NOT_IN_ONE_WAREHOUSE", "DELIVERY_ABANDONED", "DELIVERY_CANCELLED"]


class MedicationEntry(BaseModel):
    """One approved item of a prescription: what the patient takes, since when, for how long."""

    prescription_id: str
    drug_code: str
    ingredient_classes: list[str] = Field(default_factory=list)
    started_at: datetime
    days_supply: int
    cancelled: bool = False
    not_supplied: NotSupplied | None = Field(
        default=None, description="The goods never reached the patient (no stock, delivery given up or withdrawn)"
    )

    @property
    def supply_ends_at(self) -> datetime:
        return self.started_at + timedelta(days=self.days_supply)

    @property
    def withdrawn(self) -> bool:
        """Cancelled or never supplied: the patient does not have this medicine."""
        return self.cancelled or self.not_supplied is not None

    def active_at(self, now: datetime) -> bool:
        return not self.withdrawn and self.supply_ends_at > now


class MedicationHistory(BaseModel):
    patient_id: str
    entries: list[MedicationEntry] = Field(default_factory=list)

    def others_than(self, prescription_id: str) -> list[MedicationEntry]:
        """The entries of the patient's other prescriptions: a prescription never conflicts with itself."""
        return [e for e in self.entries if e.prescription_id != prescription_id]

    def has(self, prescription_id: str) -> bool:
        return any(e.prescription_id == prescription_id for e in self.entries)


def with_supply(
    history: MedicationHistory | None,
    prescription: Prescription,
    formulary: Mapping[str, FormularyEntry],
    started_at: datetime,
) -> MedicationHistory | None:
    """The history with the prescription's items added; None if they are already there (idempotent)."""
    patient_id = prescription.patient.patient_id
    history = history or MedicationHistory(patient_id=patient_id)
    if history.has(prescription.prescription_id):
        return None
    added = [
        MedicationEntry(
            prescription_id=prescription.prescription_id,
            drug_code=item.drug_code,
            ingredient_classes=list(formulary[item.drug_code].ingredient_classes)
            if item.drug_code in formulary
            else [],
            started_at=started_at,
            days_supply=item.days_supply or 0,
        )
        for item in prescription.items
    ]
    kept = [e for e in history.entries if e.supply_ends_at + HISTORY_KEPT_AFTER_SUPPLY > started_at]
    return MedicationHistory(patient_id=patient_id, entries=kept + added)


def with_cancelled(history: MedicationHistory | None, prescription_id: str) -> MedicationHistory | None:
    """The history with the prescription's entries marked cancelled; None if there is nothing to mark."""
    if history is None or not any(e.prescription_id == prescription_id and not e.cancelled for e in history.entries):
        return None
    entries = [
        e.model_copy(update={"cancelled": True}) if e.prescription_id == prescription_id else e for e in history.entries
    ]
    return history.model_copy(update={"entries": entries})


def with_not_supplied(
    history: MedicationHistory | None, prescription_id: str, why: NotSupplied
) -> MedicationHistory | None:
    """The history with the prescription's entries marked as never supplied, so the interaction and
    refill rules no longer count medicine the patient does not have; None if no entry of it still
    counts (idempotent; an entry already cancelled stays as it is)."""
    if history is None or not any(e.prescription_id == prescription_id and not e.withdrawn for e in history.entries):
        return None
    entries = [
        e.model_copy(update={"not_supplied": why}) if e.prescription_id == prescription_id and not e.withdrawn else e
        for e in history.entries
    ]
    return history.model_copy(update={"entries": entries})


# --- the checks -------------------------------------------------------------------------------------


class VerdictState(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    HELD = "held"  # for a pharmacist's review
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Check:
    """What the checks found: reasons to reject and reasons to hold for review."""

    rejections: tuple[Reason, ...] = ()
    holds: tuple[Reason, ...] = ()

    @property
    def outcome(self) -> VerdictState:
        return outcome_of(self.rejections, self.holds)

    @property
    def approved(self) -> bool:
        return self.outcome is VerdictState.APPROVED

    @property
    def reasons(self) -> tuple[Reason, ...]:
        """The reasons of the outcome: a rejection lists every reject reason (hold reasons are moot
        once rejected), a hold every hold reason, an approval none."""
        return self.rejections or self.holds


def outcome_of(rejections: Sequence[Reason], holds: Sequence[Reason]) -> VerdictState:
    if rejections:
        return VerdictState.REJECTED
    if holds:
        return VerdictState.HELD
    return VerdictState.APPROVED


@dataclass(frozen=True)
class Safety:
    """Everything beyond the prescription that the checks read."""

    formulary: Mapping[str, FormularyEntry]
    prescriber: PrescriberRecord | None
    interactions: InteractionTable = field(default_factory=InteractionTable)
    #: Entries of the patient's other prescriptions (see `MedicationHistory.others_than`).
    history: Sequence[MedicationEntry] = ()
    refill_tolerance: float = DEFAULT_REFILL_TOLERANCE


def check_prescription(prescription: Prescription, safety: Safety, now: datetime) -> Check:
    """Every reason found, not just the first: a pharmacist wants the whole list."""
    formulary = safety.formulary
    interactions = interaction_reasons(prescription, formulary, safety.interactions, safety.history, now)
    rejections = [
        *validity_reasons(prescription, now),
        *prescriber_reasons(prescription, safety.prescriber),
        *formulary_reasons(prescription, formulary),
        *allergy_reasons(prescription, formulary),
        *(reason for severity, reason in interactions if severity == "severe"),
    ]
    holds = [
        *(reason for severity, reason in interactions if severity == "moderate"),
        *refill_reasons(prescription, safety.history, now, safety.refill_tolerance),
        *review_flag_reasons(prescription, formulary),
    ]
    return Check(rejections=tuple(rejections), holds=tuple(holds))


def validity_reasons(prescription: Prescription, now: datetime) -> list[Reason]:
    """Not before issued-at, not after valid-until (both instants included)."""
    reasons: list[Reason] = []
    if prescription.valid_until <= prescription.issued_at:
        reasons.append(_reason("VALIDITY_WINDOW_INVALID", "valid-until is not after issued-at"))
    if now < prescription.issued_at:
        reasons.append(_reason("PRESCRIPTION_NOT_YET_VALID", f"issued at {prescription.issued_at:%Y-%m-%d %H:%M} UTC"))
    if now > prescription.valid_until:
        reasons.append(_reason("PRESCRIPTION_EXPIRED", f"expired at {prescription.valid_until:%Y-%m-%d %H:%M} UTC"))
    return reasons


def prescriber_reasons(prescription: Prescription, record: PrescriberRecord | None) -> list[Reason]:
    """Only registered prescribers licensed on the day the prescription was issued (the last day counts)."""
    licence = prescription.prescriber.licence_number
    if record is None:
        return [_reason("PRESCRIBER_UNKNOWN", f"licence {licence} is not in the prescriber registry")]
    if record.suspended:
        return [_reason("PRESCRIBER_LICENCE_EXPIRED", f"licence {licence} of {record.name} is suspended")]
    issued_on = prescription.issued_at.date()
    if record.licensed_until < issued_on:
        return [
            _reason(
                "PRESCRIBER_LICENCE_EXPIRED",
                f"licence {licence} of {record.name} expired on {record.licensed_until:%Y-%m-%d}, "
                f"before the prescription was issued on {issued_on:%Y-%m-%d}",
            )
        ]
    return []


def formulary_reasons(prescription: Prescription, formulary: Mapping[str, FormularyEntry]) -> list[Reason]:
    """Each item's drug is in the formulary and within its quantity and days-of-supply limits."""
    reasons: list[Reason] = []
    for index, item in enumerate(prescription.items):
        entry = formulary.get(item.drug_code)
        if entry is None:
            reasons.append(_reason("UNKNOWN_DRUG", f"{item.drug_code} is not in the formulary", index))
            continue
        if item.quantity <= 0:
            reasons.append(_reason("QUANTITY_NOT_POSITIVE", f"{entry.name}: quantity {item.quantity}", index))
        elif item.quantity > entry.max_quantity:
            reasons.append(
                _reason(
                    "QUANTITY_ABOVE_MAXIMUM",
                    f"{entry.name}: {item.quantity} units, at most {entry.max_quantity}",
                    index,
                )
            )
        reasons += days_supply_reasons(item, entry, index)
        reasons += unit_reasons(item, entry, index)
    return reasons


def with_formulary_defaults(prescription: Prescription, formulary: Mapping[str, FormularyEntry]) -> Prescription:
    """Lines that state no days of supply take the formulary's default for their drug, and say so."""
    items = []
    for item in prescription.items:
        entry = formulary.get(item.drug_code)
        if item.days_supply is None and entry is not None and entry.default_days_supply is not None:
            item = item.model_copy(update={"days_supply": entry.default_days_supply, "days_supply_basis": "formulary"})
        items.append(item)
    return prescription.model_copy(update={"items": items})


#: Words prescribers and FHIR senders use for the same dispensing unit.
UNIT_SYNONYMS = {
    "tab": "tablet",
    "caplet": "tablet",
    "cap": "capsule",
    "millilitre": "ml",
    "milliliter": "ml",
    "ampule": "ampoule",
    "amp": "ampoule",
    "inhaler": "dose",
    "actuation": "dose",
    "puff": "dose",
    "pre-filled disposable injection": "pen",
    "prefilled pen": "pen",
}


def dispensing_unit(unit: str) -> str:
    """A unit as the formulary names forms: lower case, singular, the usual synonym."""
    word = " ".join(unit.lower().replace("(s)", "").split())
    for plural in ("es", "s"):
        singular = word.removesuffix(plural)
        if singular != word and (singular in UNIT_SYNONYMS or singular in UNIT_SYNONYMS.values()):
            word = singular
            break
    return UNIT_SYNONYMS.get(word, word)


def unit_reasons(item: PrescriptionItem, entry: FormularyEntry, index: int) -> list[Reason]:
    """A quantity written in another unit than the drug is dispensed in is not guessed at."""
    if item.quantity_unit is None or dispensing_unit(item.quantity_unit) == dispensing_unit(entry.form):
        return []
    return [
        _reason(
            "QUANTITY_UNIT_MISMATCH",
            f"{entry.name}: {item.quantity} {item.quantity_unit} prescribed, dispensed by the {entry.form}",
            index,
        )
    ]


def days_supply_reasons(item: PrescriptionItem, entry: FormularyEntry, index: int) -> list[Reason]:
    if item.days_supply is None:
        return [
            _reason(
                "DAYS_SUPPLY_NOT_STATED",
                f"{entry.name}: the prescription states no days of supply and the formulary has no default",
                index,
            )
        ]
    limit = entry.days_supply_limit(item.chronic)
    if 1 <= item.days_supply <= limit:
        return []
    kind = " for chronic therapy" if item.chronic and entry.max_days_supply_chronic is not None else ""
    hint = ""
    if not item.chronic and entry.max_days_supply_chronic is not None and item.days_supply > limit:
        hint = f" ({entry.max_days_supply_chronic} if marked chronic)"
    return [
        _reason(
            "DAYS_SUPPLY_OUT_OF_RANGE",
            f"{entry.name}: {item.days_supply} days, allowed 1-{limit}{kind}{hint}",
            index,
        )
    ]


def allergy_reasons(prescription: Prescription, formulary: Mapping[str, FormularyEntry]) -> list[Reason]:
    """An item with an ingredient class the patient is recorded as allergic to."""
    allergies = {normalise(a) for a in prescription.patient.allergies}
    reasons: list[Reason] = []
    for index, item in enumerate(prescription.items):
        entry = formulary.get(item.drug_code)
        if entry is None:
            continue
        for ingredient_class in entry.ingredient_classes:
            if normalise(ingredient_class) in allergies:
                reasons.append(
                    _reason(
                        "ALLERGY_CONFLICT",
                        f"{entry.name} is a {ingredient_class}; the patient is recorded as allergic to it",
                        index,
                    )
                )
    return reasons


def interaction_reasons(
    prescription: Prescription,
    formulary: Mapping[str, FormularyEntry],
    interactions: InteractionTable,
    history: Sequence[MedicationEntry],
    now: datetime,
) -> list[tuple[Severity, Reason]]:
    """Interacting classes between two items of the prescription, and between an item and the
    patient's other active prescriptions. Each reason is on the prescription's (later) item."""
    found: list[tuple[Severity, Reason]] = []
    known = [
        (i, item, formulary[item.drug_code]) for i, item in enumerate(prescription.items) if item.drug_code in formulary
    ]
    for (_, _, first), (index, _, second) in combinations(known, 2):
        for class_a, class_b in product(first.ingredient_classes, second.ingredient_classes):
            interaction = interactions.between(class_a, class_b)
            if interaction is not None:
                other = f"{first.name} ({class_a})"
                found.append(_interaction(interaction, second.name, class_b, other, index))
    active = [entry for entry in history if entry.active_at(now)]
    for (index, _, entry), taken in product(known, active):
        for class_a, class_b in product(entry.ingredient_classes, taken.ingredient_classes):
            interaction = interactions.between(class_a, class_b)
            if interaction is not None:
                other = (
                    f"{taken.drug_code} ({class_b}) of active prescription {taken.prescription_id}"
                    f" (supply until {taken.supply_ends_at:%Y-%m-%d})"
                )
                found.append(_interaction(interaction, entry.name, class_a, other, index))
    return found


def _interaction(
    interaction: Interaction, name: str, ingredient_class: str, other: str, index: int
) -> tuple[Severity, Reason]:
    note = f": {interaction.note}" if interaction.note else ""
    code: ReasonCode = "SEVERE_INTERACTION" if interaction.severity == "severe" else "MODERATE_INTERACTION"
    message = f"{name} ({ingredient_class}) with {other}: {interaction.severity} interaction{note}"
    return interaction.severity, _reason(code, message, index)


def refill_too_soon(earlier: MedicationEntry, now: datetime, tolerance: float) -> bool:
    """The earlier supply of the same drug should still last: less than `tolerance` of it has passed."""
    if earlier.withdrawn:
        return False
    return earlier.started_at + timedelta(days=tolerance * earlier.days_supply) > now


def refill_reasons(
    prescription: Prescription, history: Sequence[MedicationEntry], now: datetime, tolerance: float
) -> list[Reason]:
    reasons: list[Reason] = []
    for index, item in enumerate(prescription.items):
        for earlier in history:
            if earlier.drug_code == item.drug_code and refill_too_soon(earlier, now, tolerance):
                due = earlier.started_at + timedelta(days=tolerance * earlier.days_supply)
                reasons.append(
                    _reason(
                        "REFILL_TOO_SOON",
                        f"{item.drug_code}: {earlier.days_supply} days were supplied on "
                        f"{earlier.started_at:%Y-%m-%d} ({earlier.prescription_id}); "
                        f"a refill is due from {due:%Y-%m-%d %H:%M} UTC",
                        index,
                    )
                )
    return reasons


def review_flag_reasons(prescription: Prescription, formulary: Mapping[str, FormularyEntry]) -> list[Reason]:
    """Controlled substances and high-risk drugs always go to a pharmacist."""
    reasons: list[Reason] = []
    for index, item in enumerate(prescription.items):
        entry = formulary.get(item.drug_code)
        if entry is None:
            continue
        if entry.controlled:
            reasons.append(_reason("CONTROLLED_SUBSTANCE", f"{entry.name} is a controlled substance", index))
        if entry.high_risk:
            reasons.append(_reason("HIGH_RISK_DRUG", f"{entry.name} is a high-risk drug", index))
    return reasons


def delivery_details(prescription: Prescription, formulary: Mapping[str, FormularyEntry]) -> DeliveryDetails:
    """What the courier needs; the flags say how the goods must travel."""
    entries = [formulary[item.drug_code] for item in prescription.items if item.drug_code in formulary]
    return DeliveryDetails(
        address=prescription.patient.address,
        contact_phone=prescription.patient.phone,
        cold_chain=any(e.cold_chain for e in entries),
        controlled=any(e.controlled for e in entries),
        urgent=any(e.urgent for e in entries),
    )


def _reason(code: ReasonCode, message: str, item_index: int | None = None) -> Reason:
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 1] + "…"
    return Reason(code=code, message=message, item_index=item_index)


# --- the verdict and the review ---------------------------------------------------------------------


class Verdict(BaseModel):
    """What the prescription service decided, kept as its record of the prescription.

    `reasons` are the checks' reasons, followed by the reason of a pharmacist's rejection or of an
    expired review. While held, the prescription and its delivery details are kept so the approval
    can be published when a pharmacist releases it; they are dropped once decided.
    """

    prescription_id: str
    state: VerdictState
    patient_id: str | None = None
    reasons: list[Reason] = Field(default_factory=list)
    checked_at: datetime | None = None
    prescription: Prescription | None = None
    delivery: DeliveryDetails | None = None
    held_at: datetime | None = None
    escalate_at: datetime | None = None
    expires_at: datetime | None = None
    escalated: bool = False
    decided_by: str | None = None
    decided_at: datetime | None = None
    note: str | None = None

    @property
    def approved(self) -> bool:
        return self.state is VerdictState.APPROVED


@dataclass(frozen=True)
class ReviewPolicy:
    escalate_after: timedelta = timedelta(hours=4)
    expire_after: timedelta = timedelta(hours=24)
    refill_tolerance: float = DEFAULT_REFILL_TOLERANCE


def verdict_of_check(
    prescription: Prescription,
    check: Check,
    formulary: Mapping[str, FormularyEntry],
    policy: ReviewPolicy,
    now: datetime,
) -> Verdict:
    outcome = check.outcome
    verdict = Verdict(
        prescription_id=prescription.prescription_id,
        state=outcome,
        patient_id=prescription.patient.patient_id,
        reasons=list(check.reasons),
        checked_at=now,
    )
    if outcome is VerdictState.HELD:
        return verdict.model_copy(
            update={
                "prescription": prescription,
                "delivery": delivery_details(prescription, formulary),
                "held_at": now,
                "escalate_at": now + policy.escalate_after,
                "expires_at": now + policy.expire_after,
            }
        )
    return verdict.model_copy(update={"decided_by": BY_CHECKS, "decided_at": now})


ReviewAction = Literal["escalate", "expire"]


def due_review_action(verdict: Verdict, now: datetime) -> ReviewAction | None:
    """A held review whose deadline passed: expire it at `expires_at`, escalate it (once) at `escalate_at`."""
    if verdict.state is not VerdictState.HELD or verdict.escalate_at is None or verdict.expires_at is None:
        return None
    if now >= verdict.expires_at:
        return "expire"
    if now >= verdict.escalate_at and not verdict.escalated:
        return "escalate"
    return None


def escalated(verdict: Verdict) -> Verdict:
    return verdict.model_copy(update={"escalated": True})


def _released(verdict: Verdict, state: VerdictState, by: str, now: datetime, **update: object) -> Verdict:
    return verdict.model_copy(
        update={"state": state, "decided_by": by, "decided_at": now, "prescription": None, "delivery": None, **update}
    )


def approved_by_pharmacist(verdict: Verdict, pharmacist_id: str, note: str, now: datetime) -> Verdict:
    return _released(verdict, VerdictState.APPROVED, pharmacist_id, now, note=note)


def pharmacist_rejection(pharmacist_id: str, note: str) -> Reason:
    return _reason("PHARMACIST_REJECTED", f"rejected by pharmacist {pharmacist_id}: {note}")


def rejected_by_pharmacist(verdict: Verdict, pharmacist_id: str, note: str, now: datetime) -> Verdict:
    reasons = [*verdict.reasons, pharmacist_rejection(pharmacist_id, note)]
    return _released(verdict, VerdictState.REJECTED, pharmacist_id, now, note=note, reasons=reasons)


def review_expiry(verdict: Verdict) -> Reason:
    held = f"{verdict.held_at:%Y-%m-%d %H:%M} UTC" if verdict.held_at else "?"
    expired = f"{verdict.expires_at:%Y-%m-%d %H:%M} UTC" if verdict.expires_at else "?"
    return _reason("REVIEW_EXPIRED", f"held for review since {held}; no pharmacist decided by {expired}")


def expired_review(verdict: Verdict, now: datetime) -> Verdict:
    reasons = [*verdict.reasons, review_expiry(verdict)]
    return _released(verdict, VerdictState.REJECTED, BY_REVIEW_TIMEOUT, now, reasons=reasons)


CANCELLABLE = frozenset({VerdictState.APPROVED, VerdictState.HELD})


def history_to_withdraw(verdict: Verdict | None) -> str | None:
    """The patient whose medication history must drop this prescription: any verdict that ended
    cancelled, however it got there. Asked after every cancellation's verdict write, even one that
    changed nothing, because an approval running at the same time may have recorded the supply
    after the cancellation last looked (a verdict cancelled before the checks has no patient yet,
    and the check that comes later withdraws its own supply)."""
    if verdict is None or verdict.state is not VerdictState.CANCELLED:
        return None
    return verdict.patient_id


def cancelled(
    verdict: Verdict | None, prescription_id: str, requested_by: str, reason: str, now: datetime
) -> Verdict | None:
    """A cancellation is honoured while approved or held, and before the checks ran (the prescription
    is then dropped when it arrives). Rejected or already cancelled: None, nothing to undo."""
    if verdict is None:
        verdict = Verdict(prescription_id=prescription_id, state=VerdictState.CANCELLED)
    elif verdict.state not in CANCELLABLE:
        return None
    return _released(verdict, VerdictState.CANCELLED, requested_by, now, note=reason)
