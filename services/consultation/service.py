"""Use cases of the consultation service."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import structlog

from pharmacy_contracts import Envelope, signing
from pharmacy_contracts.consultation import (
    CancellationRequested,
    PatientLanguage,
    PrescriptionAccepted,
    PrescriptionSubmitted,
    SenderReceipt,
)
from pharmacy_contracts.topics import Topic
from services.runtime.delivery_codes import delivery_code
from services.runtime.errors import Refused
from services.runtime.kafka import Decode
from services.runtime.observability import prescription_finished
from services.runtime.reasons import SENDER_UNKNOWN, identifier_or_none
from services.runtime.unit_of_work import Decision, Handled, Outcome, Record, UnitOfWork

from . import domain, fhir, messages
from .gazetteer import Gazetteer
from .storage import ConsultationStorage
from .wording import Wording

log = structlog.get_logger()

#: What upstream systems publish on consultation.prescriptions.v1.
FromUpstream = PrescriptionSubmitted | CancellationRequested


class ConsultationService:
    """Use cases over batches: each takes a batch's records and says what became of each."""

    def __init__(
        self,
        storage: ConsultationStorage,
        unit_of_work: UnitOfWork,
        clock: Callable[[], datetime],
        sender_keys: Mapping[str, Mapping[str, bytes]],
        delivery_code_key: bytes,
        gazetteer: Gazetteer | None = None,
        default_patient_language: PatientLanguage = "ug",
        wording: Wording | None = None,
    ):
        self._storage = storage
        self._uow = unit_of_work
        self._clock = clock
        self._sender_keys = sender_keys
        self._delivery_code_key = delivery_code_key
        self._gazetteer = gazetteer or Gazetteer.load()
        self._default_language: PatientLanguage = default_patient_language
        self._wording = wording or Wording()

    def check_signature(self, body: bytes, headers: dict[str, str]) -> None:
        """Only registered upstream systems may send prescriptions or cancel them, and only in their own name.

        Runs on the raw bytes before parsing; a refusal quarantines the message (dead letter)."""
        try:
            sender = signing.verify(body, headers, self._sender_keys)
        except signing.SignatureRefused as refused:
            raise Refused(refused.code, str(refused)) from None
        # A FHIR bundle has no sender_id field; it may name its sender in meta.source (see fhir.claimed_sender).
        claimed = fhir.claimed_sender(body) if fhir.is_fhir(headers) else _sender_in(body)
        if claimed is not None and claimed != sender:
            raise Refused("sender_mismatch", f"signed by {sender!r} but claims to be {claimed!r}")

    async def receive_from_upstream(self, records: Sequence[Record[FromUpstream]]) -> list[Handled[FromUpstream]]:
        """Everything (signature-checked) upstream systems send: prescriptions and their cancellations.

        Each sender's message id is claimed for its content first, so a replay with other content
        is refused before it touches a prescription; what passes is then taken in."""
        claims = _behind_failures(
            records,
            await self._uow.run(
                self._storage.messages, records, key=_claim_key, decide=_claim_for_content, tracked=False
            ),
        )
        passed = [r for r, h in zip(records, claims, strict=True) if h.outcome not in (Outcome.REFUSED, Outcome.FAILED)]
        taken = iter(await self._uow.run(self._storage.intake, passed, key=_prescription_id, decide=self._take_in))
        outcomes = [h if h.outcome in (Outcome.REFUSED, Outcome.FAILED) else next(taken) for h in claims]
        for handled in outcomes:
            _log_intake(handled)
        return outcomes

    def _take_in(self, existing: domain.IntakeRecord | None, message: FromUpstream) -> Decision[domain.IntakeRecord]:
        match message:
            case PrescriptionSubmitted():
                return self._receive_prescription(existing, message)
            case CancellationRequested():
                return self._receive_cancellation(existing, message)
        # The topic's contract admits nothing else; kept for a person if that ever changes.
        return Decision.refused("unexpected_message", f"{type(message).__name__} is not sent by upstream systems")

    def _receive_prescription(
        self, existing: domain.IntakeRecord | None, submitted: PrescriptionSubmitted
    ) -> Decision[domain.IntakeRecord]:
        prescription = submitted.prescription
        verdict = domain.judge_intake(existing, submitted.sender_id, submitted.message_id)
        if verdict is domain.IntakeVerdict.DUPLICATE:
            return Decision.unchanged()
        if verdict is domain.IntakeVerdict.ID_REUSED:
            return Decision.refused(
                "prescription_id_reused",
                f"prescription {prescription.prescription_id} was already received in another message",
            )
        # An address without coordinates is placed by the county gazetteer when it names a known place.
        prescription = self._gazetteer.placed(prescription)
        submitted = submitted.model_copy(update={"prescription": prescription})
        record = domain.IntakeRecord(
            prescription_id=prescription.prescription_id,
            sender_id=submitted.sender_id,
            message_id=submitted.message_id,
            received_at=self._clock(),
            prescription=prescription,
        )
        return Decision(record, [messages.prescription_accepted(submitted), messages.accepted_receipt(submitted)])

    def _receive_cancellation(
        self, existing: domain.IntakeRecord | None, requested: CancellationRequested
    ) -> Decision[domain.IntakeRecord]:
        prescription_id = requested.prescription_id
        verdict = domain.judge_cancellation(existing, requested.sender_id)
        if verdict is domain.CancellationVerdict.UNKNOWN_PRESCRIPTION:
            return Decision.refused("unknown_prescription", f"no prescription {prescription_id} was received to cancel")
        if verdict is domain.CancellationVerdict.NOT_YOUR_PRESCRIPTION:
            # Which system did send it is not the requester's business.
            return Decision.refused(
                "not_your_prescription",
                f"prescription {prescription_id} came from another system; {requested.sender_id} may not cancel it",
            )
        if verdict is domain.CancellationVerdict.ALREADY_CANCELLED or existing is None:
            return Decision.unchanged()
        cancellation = domain.Cancellation(
            message_id=requested.message_id,
            requested_by=requested.requested_by,
            reason=requested.reason,
            received_at=self._clock(),
        )
        events = [messages.cancellation_accepted(requested), messages.accepted_receipt(requested)]
        return Decision(domain.with_cancellation(existing, cancellation), events)

    async def track(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Each prescription's status, folded from its lifecycle events: one load and one save a batch."""
        about = [r for r in records if domain.prescription_of(r.message) is not None]
        # The receipts a change of stage owes its sender, what the patient is told and the hospital's
        # follow-up calls follow from the status and the event alone (ids included): published
        # before the status is saved, they need no outbox.
        folded = iter(
            await self._uow.run(self._storage.status, about, key=_lifecycle_key, decide=self._fold, publish_first=True)
        )
        outcomes = [
            next(folded) if domain.prescription_of(r.message) is not None else Handled(r, Outcome.UNCHANGED)
            for r in records
        ]
        for handled in outcomes:
            if handled.result is not None:  # the event finished the prescription
                handled.record.in_context(prescription_finished, handled.result)
            accepted = handled.record.message
            if (
                handled.outcome is Outcome.APPLIED
                and isinstance(accepted, PrescriptionAccepted)
                and accepted.prescription.patient.phone is None
            ):
                handled.record.in_context(log.info, "the patient gave no phone: no notifications will be sent")
        return outcomes

    def _fold(self, status: domain.PrescriptionStatus | None, event: Envelope) -> Decision[domain.PrescriptionStatus]:
        prescription_id = domain.prescription_of(event)
        assert prescription_id is not None
        # Derived, never stored elsewhere or logged: the patient reads it to the courier at the door.
        code = delivery_code(self._delivery_code_key, prescription_id)
        folded = domain.track_step(status, event, delivery_code=code)
        if folded is None:
            return Decision.unchanged()
        updated, entry = folded
        receipts = [
            messages.status_receipt(updated, told, event) for told in domain.to_tell(status, updated, entry, event)
        ]
        notifications = [
            messages.patient_notified(updated, notice, event, wording=self._wording, delivery_code=code)
            for notice in domain.to_notify(status, updated, event, default_language=self._default_language)
        ]
        follow_up = domain.follow_up(status, updated, event)
        follow_ups = [messages.follow_up_requested(updated, follow_up, event)] if follow_up is not None else []
        finished = updated.terminal and not (status is not None and status.terminal)
        return Decision(
            updated, [*receipts, *notifications, *follow_ups], result=updated.stage.value if finished else None
        )


def _behind_failures(
    records: Sequence[Record[FromUpstream]], claims: list[Handled[FromUpstream]]
) -> list[Handled[FromUpstream]]:
    """A prescription's messages keep their order: one behind a message of the same prescription
    whose claim failed fails too (it is retried with it), so a cancellation never overtakes the
    prescription it cancels."""
    failed: set[str] = set()
    kept = []
    for record, handled in zip(records, claims, strict=True):
        prescription_id = _prescription_id(record.message)
        if handled.outcome is Outcome.FAILED:
            failed.add(prescription_id)
        elif prescription_id in failed and handled.outcome is not Outcome.REFUSED:
            handled = Handled(record, Outcome.FAILED, error=f"behind a failed message of {prescription_id}")
        kept.append(handled)
    return kept


def _claim_key(message: FromUpstream) -> str:
    return f"{message.sender_id}:{message.message_id}"


def _prescription_id(message: FromUpstream) -> str:
    return (
        message.prescription.prescription_id if isinstance(message, PrescriptionSubmitted) else message.prescription_id
    )


def _lifecycle_key(event: Envelope) -> str:
    prescription_id = domain.prescription_of(event)
    assert prescription_id is not None
    return prescription_id


def _claim_for_content(existing: domain.MessageClaim | None, message: FromUpstream) -> Decision[domain.MessageClaim]:
    """A sender's message id stands for one content forever, whichever kind of message it is."""
    content = hashlib.sha256(message.model_dump_json().encode()).hexdigest()
    if domain.is_replay(existing, content):
        return Decision.refused("message_id_replayed", f"message {message.message_id} was seen with other content")
    if existing is not None:
        return Decision.unchanged()
    claim = domain.MessageClaim(
        sender_id=message.sender_id,
        message_id=message.message_id,
        content_sha256=content,
        prescription_id=_prescription_id(message),
    )
    return Decision(claim)


def _log_intake(handled: Handled[FromUpstream]) -> None:
    message = handled.record.message
    kind = "prescription" if isinstance(message, PrescriptionSubmitted) else "cancellation"
    if handled.outcome is Outcome.APPLIED:
        line, fields = f"{kind} received", {"sender_id": message.sender_id}
    elif handled.outcome in (Outcome.DUPLICATE, Outcome.UNCHANGED):
        line, fields = f"{kind} already recorded; nothing changed", {"sender_id": message.sender_id}
    else:
        return  # refusals and failures are logged where they are dead-lettered
    handled.record.in_context(log.info, line, **fields)


def upstream_decoder(rules: fhir.MappingRules) -> Decode:
    """Native messages as the topic's contract says; a FHIR R4 bundle (content-type
    application/fhir+json) as the PrescriptionSubmitted it maps onto under `rules`, or
    Refused(fhir_unmappable)."""

    def decode_upstream(body: bytes, headers: dict[str, str], topic: Topic) -> Envelope:
        if not fhir.is_fhir(headers):
            return topic.parse(body)
        submitted, notes = fhir.to_submission(body, headers, rules)
        # The notes stay with the prescription (they may quote the patient's address): counted here.
        log.info(
            "FHIR bundle mapped onto a prescription",
            correlation_id=submitted.correlation_id,
            items=len(submitted.prescription.items),
            mapping_notes=len(notes),
        )
        return submitted

    return decode_upstream


def refusal_receipt(headers: Mapping[str, str], key: bytes | None, reason: str, detail: str) -> SenderReceipt | None:
    """The answer to a verified sender whose message was refused at the door (None: the sender is
    unknown). Its prescription is the record's key, its message id the header, where they are ids."""
    sender = identifier_or_none(headers.get(signing.SENDER_HEADER))
    if reason in SENDER_UNKNOWN or sender is None:
        return None
    return messages.refused_receipt(
        sender,
        message_id=identifier_or_none(headers.get("message-id")),
        prescription_id=identifier_or_none(key.decode("utf-8", "replace") if key else None),
        code=reason,
        detail=detail,
        as_fhir=fhir.is_fhir(headers),
    )


def _sender_in(body: bytes) -> str | None:
    """The sender id the message body claims, if it is readable at all (parsing proper comes later)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting thousands deep
        return None
    sender = data.get("sender_id") if isinstance(data, dict) else None
    return sender if isinstance(sender, str) else None
