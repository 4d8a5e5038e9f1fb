"""The prescription service alone, in-process, against the real broker and database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any
from uuid import uuid4

import pytest

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import CancellationAccepted, PrescriptionAccepted
from pharmacy_contracts.courier import DeliveryAbandoned, DeliveryWaiting
from pharmacy_contracts.inventory import ReservationFailed, Shortage
from pharmacy_contracts.prescription import (
    CancellationOrdered,
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionHeld,
    PrescriptionRejected,
    ReviewDecided,
    ReviewEscalated,
)
from services.cli import bus
from services.prescription.app import build, create_app
from services.prescription.domain import FormularyEntry, Interaction, PrescriberRecord, VerdictState
from services.prescription.service import PrescriptionService
from services.prescription.settings import PrescriptionSettings
from services.prescription.storage import PrescriptionStorage
from services.runtime.mongo import connect
from services.runtime.settings import RuntimeSettings
from services.runtime.unit_of_work import Record
from tests.support.inprocess import (
    Clock,
    TopicWatch,
    headers_of,
    of_type,
    own_groups,
    publish_noting,
    running,
    wait_consumed,
)
from tests.support.scenario import prescription_message

DECISIONS = topics.PRESCRIPTION_DECISIONS.name
REVIEWS_DLQ = topics.PRESCRIPTION_REVIEWS.dead_letter_topic
LICENCE = "LIC-T"  # the licence of tests.support.scenario's prescriber

FORMULARY = [
    FormularyEntry(
        drug_code="INSGL",
        name="Insulin glargine",
        ingredient_classes=["insulin"],
        max_quantity=15,
        max_days_supply=30,
        max_days_supply_chronic=90,
        cold_chain=True,
    ),
    FormularyEntry(
        drug_code="MET500", name="Metformin", ingredient_classes=["biguanide"], max_quantity=360, max_days_supply=30
    ),
    FormularyEntry(
        drug_code="MOR10",
        name="Morphine",
        ingredient_classes=["opioid"],
        max_quantity=60,
        max_days_supply=30,
        controlled=True,
    ),
    FormularyEntry(
        drug_code="WAR5",
        name="Warfarin",
        ingredient_classes=["anticoagulant"],
        max_quantity=90,
        max_days_supply=30,
        high_risk=True,
    ),
    FormularyEntry(
        drug_code="IBU400", name="Ibuprofen", ingredient_classes=["nsaid"], max_quantity=84, max_days_supply=30
    ),
    FormularyEntry(
        drug_code="LIS10", name="Lisinopril", ingredient_classes=["ace-inhibitor"], max_quantity=90, max_days_supply=30
    ),
]
PRESCRIBERS = [
    PrescriberRecord(licence_number=LICENCE, prescriber_id="DR-T", name="Dr Test", licensed_until=date(2099, 12, 31)),
    PrescriberRecord(licence_number="LIC-OLD", prescriber_id="DR-O", name="Dr Old", licensed_until=date(2024, 1, 31)),
]
INTERACTIONS = [
    Interaction(class_a="anticoagulant", class_b="nsaid", severity="severe", note="bleeding"),
    Interaction(class_a="ace-inhibitor", class_b="nsaid", severity="moderate", note="kidneys"),
]


def accepted(
    prescription_id: str,
    items: list[tuple[str, int]],
    *,
    licence: str = LICENCE,
    patient_id: str | None = None,
    **kwargs: Any,
) -> PrescriptionAccepted:
    submitted = prescription_message(prescription_id, items, **kwargs)
    prescription = submitted.prescription
    prescription = prescription.model_copy(
        update={
            "prescriber": prescription.prescriber.model_copy(update={"licence_number": licence}),
            "patient": prescription.patient.model_copy(
                update={"patient_id": patient_id or prescription.patient.patient_id}
            ),
        }
    )
    return PrescriptionAccepted(
        correlation_id=prescription_id,
        producer="consultation",
        sender_id=submitted.sender_id,
        prescription=prescription,
    )


def decided(prescription_id: str, decision: str, pharmacist: str = "PH-1", note: str = "looked at it") -> ReviewDecided:
    return ReviewDecided(
        correlation_id=prescription_id,
        producer="pharmacist-cli",
        prescription_id=prescription_id,
        decision=decision,  # type: ignore[arg-type]
        pharmacist_id=pharmacist,
        note=note,
    )


def service_settings(settings: RuntimeSettings) -> PrescriptionSettings:
    # The sweep runs only when a test calls it.
    return own_groups(PrescriptionSettings, settings, sweep_interval_s=3600.0)


@asynccontextmanager
async def seeded(settings: RuntimeSettings) -> AsyncIterator[PrescriptionStorage]:
    client = connect(settings.mongo_url.get_secret_value())
    storage = PrescriptionStorage(client[settings.mongo_database])
    try:
        for entry in FORMULARY:
            await storage.save_formulary_entry(entry)
        for record in PRESCRIBERS:
            await storage.save_prescriber(record)
        for interaction in INTERACTIONS:
            await storage.save_interaction(interaction)
        yield storage
    finally:
        client.close()


def of_rx(watch: TopicWatch, prescription_id: str) -> list[Any]:
    return [m for m in watch.messages(DECISIONS) if getattr(m, "prescription_id", None) == prescription_id]


async def intake_barrier(settings: RuntimeSettings, watch: TopicWatch, *keys: str) -> None:
    """After the intake messages keyed by `keys` (and every verdict written before): for each key a
    cancellation with that key, of a prescription of its own, whose PrescriptionCancelled goes out
    through the verdict store after whatever those messages caused (see `TopicWatch.wait_for_barrier`)."""
    barriers = [
        CancellationAccepted(
            correlation_id=key,
            producer="consultation",
            sender_id="hospital-test",
            prescription_id=f"{key}-BARRIER-{uuid4().hex[:8]}",
            reason="barrier",
            requested_by="test",
        )
        for key in keys
    ]
    await bus.publish(settings, *barriers)
    await watch.wait_for_barrier(
        lambda w: all(of_rx(w, b.prescription_id) for b in barriers), f"the intake barriers after {keys}"
    )


async def review_barrier(settings: RuntimeSettings, watch: TopicWatch, *prescription_ids: str) -> None:
    """After the review messages about `prescription_ids`, none of them still held: a rejection by
    nobody, refused inside the verdict store's write and dead-lettered after whatever the earlier
    messages caused (the watch must follow the reviews' dead-letter topic)."""
    barriers = [decided(rx, "reject", "PH-BARRIER", "barrier") for rx in prescription_ids]
    ids = {b.message_id for b in barriers}
    await bus.publish(settings, *barriers)
    await watch.wait_for_barrier(
        lambda w: ids <= {headers_of(r)["message-id"] for r in w.raw(REVIEWS_DLQ)},
        f"the review barriers after {prescription_ids}",
    )


async def test_checks_every_rule_and_decides_once(settings: RuntimeSettings) -> None:
    good = accepted("RX-P-GOOD", [("INSGL", 5)])
    too_many = accepted("RX-P-MANY", [("INSGL", 16)])
    unknown = accepted("RX-P-UNKNOWN", [("NOPE", 1)])
    expired = accepted("RX-P-OLD", [("INSGL", 1)], valid_for=timedelta(seconds=-1))
    lapsed_licence = accepted("RX-P-LAPSED", [("INSGL", 1)], licence="LIC-OLD")
    no_licence = accepted("RX-P-NOLIC", [("INSGL", 1)], licence="LIC-NOBODY")
    severe = accepted("RX-P-SEVERE", [("WAR5", 30), ("IBU400", 20)])
    controlled = accepted("RX-P-MORPHINE", [("MOR10", 20)])
    async with seeded(settings) as storage:
        async with (
            running(create_app(service_settings(settings))),
            TopicWatch(settings.kafka_bootstrap_servers, DECISIONS) as watch,
        ):
            rules_broken = (too_many, unknown, expired, lapsed_licence, no_licence, severe)
            await bus.publish(settings, good, good, *rules_broken)
            await bus.publish(settings, controlled)
            await watch.wait_for(lambda w: len(w.messages()) >= 8, "eight decisions")
            await intake_barrier(settings, watch, *(m.correlation_id for m in (good, *rules_broken, controlled)))
        verdicts = {v.prescription_id: v for v in await storage.all_verdicts()}
        history = await storage.history_of(good.prescription.patient.patient_id)

    decisions = watch.messages()
    approved = of_type(decisions, PrescriptionApproved)
    assert [a.prescription_id for a in approved] == ["RX-P-GOOD"], "the duplicate is decided once"
    assert approved[0].delivery.cold_chain is True
    assert approved[0].causation_id == good.message_id
    assert approved[0].reviewed_by is None
    codes = {r.prescription_id: [x.code for x in r.reasons] for r in of_type(decisions, PrescriptionRejected)}
    assert codes == {
        "RX-P-MANY": ["QUANTITY_ABOVE_MAXIMUM"],
        "RX-P-UNKNOWN": ["UNKNOWN_DRUG"],
        "RX-P-OLD": ["PRESCRIPTION_EXPIRED"],
        "RX-P-LAPSED": ["PRESCRIBER_LICENCE_EXPIRED"],
        "RX-P-NOLIC": ["PRESCRIBER_UNKNOWN"],
        "RX-P-SEVERE": ["SEVERE_INTERACTION"],
    }
    (held,) = of_type(decisions, PrescriptionHeld)
    assert (held.prescription_id, [r.code for r in held.reasons]) == ("RX-P-MORPHINE", ["CONTROLLED_SUBSTANCE"])
    assert held.expires_at - held.escalate_at == timedelta(hours=20)
    assert verdicts["RX-P-MORPHINE"].state is VerdictState.HELD
    assert verdicts["RX-P-MORPHINE"].prescription == controlled.prescription
    assert history is not None and [e.prescription_id for e in history.entries] == ["RX-P-GOOD"]


async def test_patient_history_holds_a_refill_and_flags_an_interaction(settings: RuntimeSettings) -> None:
    first = accepted("RX-H-1", [("MET500", 60), ("LIS10", 30)], patient_id="PAT-HIST")
    refill = accepted("RX-H-2", [("MET500", 60)], patient_id="PAT-HIST")
    painkiller = accepted("RX-H-3", [("IBU400", 20)], patient_id="PAT-HIST")
    async with (
        seeded(settings),
        running(create_app(service_settings(settings))),
        TopicWatch(settings.kafka_bootstrap_servers, DECISIONS) as watch,
    ):
        await bus.publish(settings, first)
        await watch.wait_for(lambda w: of_rx(w, "RX-H-1"), "the first approval")
        await bus.publish(settings, refill, painkiller)
        await watch.wait_for(lambda w: of_rx(w, "RX-H-2") and of_rx(w, "RX-H-3"), "two holds")

    assert isinstance(of_rx(watch, "RX-H-1")[0], PrescriptionApproved)
    (refill_held,) = of_rx(watch, "RX-H-2")
    (painkiller_held,) = of_rx(watch, "RX-H-3")
    assert [r.code for r in refill_held.reasons] == ["REFILL_TOO_SOON"]
    assert [r.code for r in painkiller_held.reasons] == ["MODERATE_INTERACTION"]
    assert "RX-H-1" in painkiller_held.reasons[0].message


async def test_a_pharmacist_approves_or_rejects_a_hold_and_nothing_else(settings: RuntimeSettings) -> None:
    to_approve = accepted("RX-R-YES", [("MOR10", 20), ("INSGL", 2)])
    to_reject = accepted("RX-R-NO", [("MOR10", 20)])
    never_held = accepted("RX-R-PLAIN", [("INSGL", 2)])
    app, _ = build(service_settings(settings))
    async with (
        seeded(settings) as storage,
        running(app),
        TopicWatch(settings.kafka_bootstrap_servers, DECISIONS, REVIEWS_DLQ) as watch,
    ):
        await bus.publish(settings, to_approve, to_reject, never_held)
        await watch.wait_for(lambda w: all(of_rx(w, r) for r in ("RX-R-YES", "RX-R-NO", "RX-R-PLAIN")), "3 checks")
        approve = decided("RX-R-YES", "approve", "PH-7", "pain team confirmed the dose")
        reject = decided("RX-R-NO", "reject", "PH-7", "duplicate of a paper prescription")
        not_held = decided("RX-R-PLAIN", "approve")
        await bus.publish(settings, approve, approve, reject, not_held)
        await watch.wait_for(lambda w: len(of_rx(w, "RX-R-YES")) >= 2 and len(of_rx(w, "RX-R-NO")) >= 2, "decisions")
        await watch.wait_for(lambda w: w.raw(REVIEWS_DLQ), "the refused decision")
        # RX-R-PLAIN's own dead letter ends its handling; the others' barriers end theirs.
        await review_barrier(settings, watch, "RX-R-YES", "RX-R-NO")
        verdict = await storage.verdict_of("RX-R-YES")
        history = await storage.history_of(to_approve.prescription.patient.patient_id)

    held, released = of_rx(watch, "RX-R-YES")
    assert isinstance(held, PrescriptionHeld)
    assert isinstance(released, PrescriptionApproved), "approved once, the duplicate changes nothing"
    assert (released.reviewed_by, released.causation_id) == ("PH-7", approve.message_id)
    assert (released.delivery.cold_chain, released.delivery.controlled) == (True, True)
    assert [(line.drug_code, line.quantity) for line in released.lines] == [("MOR10", 20), ("INSGL", 2)]
    _, rejected = of_rx(watch, "RX-R-NO")
    assert isinstance(rejected, PrescriptionRejected) and rejected.reviewed_by == "PH-7"
    assert [(r.code, r.message) for r in rejected.reasons] == [
        ("PHARMACIST_REJECTED", "rejected by pharmacist PH-7: duplicate of a paper prescription")
    ]
    assert len(of_rx(watch, "RX-R-PLAIN")) == 1, "a decision on a prescription not held changes nothing"
    (dead,) = [r for r in watch.raw(REVIEWS_DLQ) if headers_of(r)["correlation-id"] == "RX-R-PLAIN"]
    assert headers_of(dead)["dlq.reason"] == "not_under_review"
    assert verdict is not None
    assert (verdict.state, verdict.decided_by, verdict.note) == (
        VerdictState.APPROVED,
        "PH-7",
        "pain team confirmed the dose",
    )
    assert verdict.prescription is None
    assert history is not None and {e.drug_code for e in history.entries if e.prescription_id == "RX-R-YES"} == {
        "MOR10",
        "INSGL",
    }


async def test_an_undecided_hold_escalates_then_expires(settings: RuntimeSettings) -> None:
    clock = Clock()
    app, service = build(service_settings(settings), clock=clock)
    held = accepted("RX-T-WAIT", [("MOR10", 20)])
    async with (
        seeded(settings) as storage,
        running(app),
        TopicWatch(settings.kafka_bootstrap_servers, DECISIONS) as watch,
    ):
        await bus.publish(settings, held)
        await watch.wait_for(lambda w: of_rx(w, "RX-T-WAIT"), "the hold")
        start = clock.now

        clock.now = start + timedelta(hours=4) - timedelta(seconds=1)
        await sweep(service)
        clock.now = start + timedelta(hours=4)
        await sweep(service)
        await sweep(service)  # escalates once
        await watch.wait_for(lambda w: len(of_rx(w, "RX-T-WAIT")) >= 2, "the escalation")
        clock.now = start + timedelta(hours=24) - timedelta(seconds=1)
        await sweep(service)
        clock.now = start + timedelta(hours=24)
        await sweep(service)
        await sweep(service)  # rejects once
        await watch.wait_for(lambda w: len(of_rx(w, "RX-T-WAIT")) >= 3, "the expiry")
        await intake_barrier(settings, watch, "RX-T-WAIT")  # the sweeps were awaited: any key comes after them
        verdict = await storage.verdict_of("RX-T-WAIT")

    on_hold, escalation, expiry = of_rx(watch, "RX-T-WAIT")
    assert isinstance(on_hold, PrescriptionHeld)
    assert isinstance(escalation, ReviewEscalated)
    assert (escalation.held_since, escalation.expires_at) == (start, start + timedelta(hours=24))
    assert [r.code for r in escalation.reasons] == ["CONTROLLED_SUBSTANCE"]
    assert isinstance(expiry, PrescriptionRejected)
    assert [r.code for r in expiry.reasons] == ["REVIEW_EXPIRED"]
    assert verdict is not None
    assert (verdict.state, verdict.escalated, verdict.decided_by) == (VerdictState.REJECTED, True, "review-timeout")


async def sweep(service: PrescriptionService) -> None:
    await service.sweep_reviews()


async def cancel(service: PrescriptionService, rx: str, *, reason: str, message_id: str) -> None:
    """An upstream cancellation handed straight to the intake use case, as its consumer would."""
    message = CancellationAccepted(
        message_id=message_id,
        correlation_id=rx,
        producer="consultation",
        sender_id="hospital-test",
        prescription_id=rx,
        reason=reason,
        requested_by="Dr Test",
    )
    await service.on_intake([Record(message)])


async def test_cancellation_of_a_held_or_approved_prescription(settings: RuntimeSettings) -> None:
    held = accepted("RX-C-HELD", [("MOR10", 20)])
    approved = accepted("RX-C-OK", [("INSGL", 2)], patient_id="PAT-CANCEL")
    rejected = accepted("RX-C-BAD", [("NOPE", 1)])
    by_pharmacist = CancellationOrdered(
        correlation_id="RX-C-HELD",
        producer="pharmacist-cli",
        prescription_id="RX-C-HELD",
        pharmacist_id="PH-2",
        reason="doubt",
    )

    def upstream(rx: str) -> CancellationAccepted:
        return CancellationAccepted(
            correlation_id=rx,
            producer="consultation",
            sender_id="hospital-test",
            prescription_id=rx,
            reason="patient moved",
            requested_by="Dr Test",
        )

    async with (
        seeded(settings) as storage,
        running(create_app(service_settings(settings))),
        TopicWatch(settings.kafka_bootstrap_servers, DECISIONS, REVIEWS_DLQ) as watch,
    ):
        await bus.publish(settings, held, approved, rejected)
        await watch.wait_for(lambda w: all(of_rx(w, r) for r in ("RX-C-HELD", "RX-C-OK", "RX-C-BAD")), "3 checks")
        await bus.publish(settings, by_pharmacist, upstream("RX-C-OK"), upstream("RX-C-BAD"), upstream("RX-C-EARLY"))
        await watch.wait_for(
            lambda w: all(len(of_rx(w, r)) >= 2 for r in ("RX-C-HELD", "RX-C-OK")) and of_rx(w, "RX-C-EARLY"),
            "three cancellations",
        )
        # Checked after its cancellation: dropped, nothing published.
        late = accepted("RX-C-EARLY", [("INSGL", 2)])
        await bus.publish(settings, late, decided("RX-C-HELD", "approve"))
        await intake_barrier(settings, watch, "RX-C-OK", "RX-C-BAD", "RX-C-EARLY")
        await review_barrier(settings, watch, "RX-C-HELD")
        verdicts = {v.prescription_id: v for v in await storage.all_verdicts()}
        history = await storage.history_of("PAT-CANCEL")

    _, held_cancelled = of_rx(watch, "RX-C-HELD")
    assert isinstance(held_cancelled, PrescriptionCancelled)
    assert (held_cancelled.was_approved, held_cancelled.requested_by, held_cancelled.reason) == (False, "PH-2", "doubt")
    _, approved_cancelled = of_rx(watch, "RX-C-OK")
    assert isinstance(approved_cancelled, PrescriptionCancelled)
    assert (approved_cancelled.was_approved, approved_cancelled.requested_by) == (True, "Dr Test")
    assert len(of_rx(watch, "RX-C-BAD")) == 1, "a rejected prescription stays rejected"
    (early,) = of_rx(watch, "RX-C-EARLY")
    assert isinstance(early, PrescriptionCancelled) and early.was_approved is False
    assert {rx: verdicts[rx].state for rx in ("RX-C-HELD", "RX-C-OK", "RX-C-BAD", "RX-C-EARLY")} == {
        "RX-C-HELD": VerdictState.CANCELLED,
        "RX-C-OK": VerdictState.CANCELLED,
        "RX-C-BAD": VerdictState.REJECTED,
        "RX-C-EARLY": VerdictState.CANCELLED,
    }
    assert history is not None and [(e.prescription_id, e.cancelled) for e in history.entries] == [("RX-C-OK", True)]


async def test_a_cancellation_racing_an_approval_leaves_no_active_supply(
    settings: RuntimeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    racing = accepted("RX-X-RACE", [("MOR10", 20)], patient_id="PAT-RACE")
    crashing = accepted("RX-X-CRASH", [("MET500", 60)], patient_id="PAT-CRASH")
    app, service = build(service_settings(settings))
    async with (
        seeded(settings) as storage,
        running(app),
        TopicWatch(settings.kafka_bootstrap_servers, DECISIONS) as watch,
    ):
        await bus.publish(settings, racing, crashing)
        await watch.wait_for(lambda w: of_rx(w, "RX-X-RACE") and of_rx(w, "RX-X-CRASH"), "a hold and an approval")

        # The pharmacist's approval (its own consumer group) runs to its end while the cancellation
        # is on its way to the verdict: the supply is recorded after the cancellation started.
        verdicts = service._storage.verdicts
        write_verdicts = verdicts.save
        cancel_id = "MSG-CANCEL-RACE"

        async def approval_slips_in(saves: Any) -> Any:
            if any(cancel_id in save.tracking.recent for save in saves):
                monkeypatch.setattr(verdicts, "save", write_verdicts)
                await service.on_review([Record(decided("RX-X-RACE", "approve"))])
            return await write_verdicts(saves)

        monkeypatch.setattr(verdicts, "save", approval_slips_in)
        await cancel(service, "RX-X-RACE", reason="patient moved", message_id=cancel_id)
        monkeypatch.undo()

        # A crash between the verdict write and the withdrawal: the redelivery is a duplicate for the
        # verdict, and withdraws all the same.
        withdraw = service._withdraw_supplies

        async def crash(*args: Any) -> None:
            raise RuntimeError("process killed")

        monkeypatch.setattr(service, "_withdraw_supplies", crash)
        with pytest.raises(RuntimeError):
            await cancel(service, "RX-X-CRASH", reason="moved", message_id="MSG-CANCEL-2")
        monkeypatch.setattr(service, "_withdraw_supplies", withdraw)
        crashed = await storage.history_of("PAT-CRASH")
        await cancel(service, "RX-X-CRASH", reason="moved", message_id="MSG-CANCEL-2")

        await watch.wait_for(lambda w: len(of_rx(w, "RX-X-RACE")) >= 3 and len(of_rx(w, "RX-X-CRASH")) >= 2, "events")
        await intake_barrier(settings, watch, "RX-X-RACE")  # every call above was awaited: any key comes after
        verdicts_now = {rx: await storage.verdict_of(rx) for rx in ("RX-X-RACE", "RX-X-CRASH")}
        race_history = await storage.history_of("PAT-RACE")
        crash_history = await storage.history_of("PAT-CRASH")

    held, approved, cancelled = of_rx(watch, "RX-X-RACE")
    assert isinstance(held, PrescriptionHeld) and isinstance(approved, PrescriptionApproved)
    assert isinstance(cancelled, PrescriptionCancelled) and cancelled.was_approved is True
    assert [type(m) for m in of_rx(watch, "RX-X-CRASH")] == [PrescriptionApproved, PrescriptionCancelled]
    assert all(v is not None and v.state is VerdictState.CANCELLED for v in verdicts_now.values())
    assert race_history is not None and [(e.prescription_id, e.cancelled) for e in race_history.entries] == [
        ("RX-X-RACE", True)
    ]
    assert crashed is not None and [e.cancelled for e in crashed.entries] == [False], "the crash left it active"
    assert crash_history is not None and [e.cancelled for e in crash_history.entries] == [True]


async def test_a_supply_that_never_reached_the_patient_no_longer_counts(settings: RuntimeSettings) -> None:
    first = accepted("RX-S-FIRST", [("MET500", 60)], patient_id="PAT-SUPPLY")
    again = accepted("RX-S-AGAIN", [("MET500", 60)], patient_id="PAT-SUPPLY")
    abandoned = accepted("RX-S-ABANDONED", [("LIS10", 30)], patient_id="PAT-ROAD")
    out_of_stock = ReservationFailed(
        correlation_id="RX-S-FIRST",
        producer="inventory",
        prescription_id="RX-S-FIRST",
        shortages=[Shortage(drug_code="MET500", requested=60, best_available=10)],
    )
    given_up = DeliveryAbandoned(
        correlation_id="RX-S-ABANDONED",
        producer="courier",
        prescription_id="RX-S-ABANDONED",
        warehouse_id="WH-1",
        attempts=3,
        last_reason="address_not_found",
        goods_travelled=True,
    )
    unrelated = DeliveryWaiting(
        correlation_id="RX-S-ABANDONED",
        producer="courier",
        prescription_id="RX-S-ABANDONED",
        warehouse_id="WH-1",
        why="no courier free",
    )
    dead_letters = (topics.INVENTORY_EVENTS.dead_letter_topic, topics.COURIER_DELIVERIES.dead_letter_topic)
    app = create_app(service_settings(settings))
    async with (
        seeded(settings) as storage,
        running(app),
        TopicWatch(settings.kafka_bootstrap_servers, DECISIONS, *dead_letters) as watch,
    ):
        await bus.publish(settings, first, abandoned)
        await watch.wait_for(lambda w: of_rx(w, "RX-S-FIRST") and of_rx(w, "RX-S-ABANDONED"), "two approvals")
        landed = await publish_noting(settings, out_of_stock, unrelated, given_up, given_up)
        await wait_consumed(settings, app, landed)
        await bus.publish(settings, again)
        await watch.wait_for(lambda w: of_rx(w, "RX-S-AGAIN"), "the second prescription's decision")
        # Also reads the supply group's dead letters, published before `wait_consumed` returned.
        await intake_barrier(settings, watch, "RX-S-AGAIN")
        supply_history = await storage.history_of("PAT-SUPPLY")
        road_history = await storage.history_of("PAT-ROAD")

    (decision,) = of_rx(watch, "RX-S-AGAIN")
    assert isinstance(decision, PrescriptionApproved), "no REFILL_TOO_SOON for a supply the patient never got"
    assert supply_history is not None and [(e.prescription_id, e.not_supplied) for e in supply_history.entries] == [
        ("RX-S-FIRST", "OUT_OF_STOCK"),
        ("RX-S-AGAIN", None),
    ]
    assert road_history is not None and [e.not_supplied for e in road_history.entries] == ["DELIVERY_ABANDONED"]
    ours = [
        r
        for topic in dead_letters
        for r in watch.raw(topic)
        if headers_of(r)["dlq.group"].endswith("prescription.supply")
    ]
    assert not ours, "valid events are never dead-lettered"
