"""The chaos run's checks on hand-made evidence, in milliseconds: a run that broke a guarantee must be
reported as broken (the chaos test itself only ever sees runs that held)."""

from __future__ import annotations

import random
from datetime import date
from typing import Any

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import topics
from pharmacy_contracts.lifecycle import Stage
from services.consultation.domain import PrescriptionStatus
from services.courier.domain import DeliveryState
from services.inventory.domain import AllocationState
from services.ops.chaos.checks import check, expected_closing, owner_agrees, with_repacks
from services.ops.chaos.evidence import Evidence, TopicLog
from services.ops.chaos.load import Couriers, Load
from services.ops.chaos.report import ChaosReport
from services.runtime.settings import RuntimeSettings
from tests.unit.builders import one_of_each_message, picked_up, reserved, restocked

READ = (topics.INVENTORY_EVENTS, topics.COURIER_DISPATCH, topics.COURIER_DELIVERIES)


def evidence(events: dict[topics.Topic, list[Any]] | None = None, **fields: Any) -> Evidence:
    logs = {t.name: TopicLog(list((events or {}).get(t, [])), republished=0, unreadable=0) for t in READ}
    return Evidence(
        **{
            "ids": [],
            "statuses": {},
            "allocations": {},
            "deliveries": {},
            "verdicts": {},
            "warehouses": [],
            "logs": logs,
            "dead_letters": {},
            "ledger": [],
            "load": Load(RuntimeSettings(), rate=1.0, rng=random.Random(0)),
            "couriers": Couriers(seed=1, unreachable=set()),
            **fields,
        }
    )


def checked(seen: Evidence, prescriptions: int = 0) -> ChaosReport:
    report = ChaosReport(prescriptions=prescriptions, faulty_submitted=0, rate_per_s=1.0, seed=1, settled=True)
    check(report, seen)
    return report


def delivered(rx: str) -> PrescriptionStatus:
    return PrescriptionStatus(prescription_id=rx, stage=Stage.DELIVERED, terminal=True)


def test_a_run_with_nothing_wrong_reports_no_violation():
    assert checked(evidence()).violations() == []


def test_a_prescription_without_a_status_or_whose_owner_disagrees_is_reported():
    report = checked(evidence(ids=["RX-1", "RX-2"], statuses={"RX-2": delivered("RX-2")}), prescriptions=2)

    assert report.missing_status == ["RX-1"]
    assert set(report.owner_disagrees) == {"RX-2"}, "no delivery record says it was delivered"
    assert any("without any status" in v for v in report.violations())


def test_a_prescription_reserved_twice_is_reported():
    twice = [reserved(2, "RX-1", "WH-1"), reserved(3, "RX-1", "WH-2")]
    report = checked(evidence({topics.INVENTORY_EVENTS: twice}))

    assert report.double_reservations == {"RX-1": 2}
    assert any("reserved more than once" in v for v in report.violations())


def test_an_offer_seen_again_is_not_acted_on_again():
    offer = next(m for m in one_of_each_message() if isinstance(m, c.DispatchOffered))
    couriers = Couriers(seed=1, unreachable=set())

    assert couriers.plan_for(offer) is not None
    assert couriers.plan_for(offer) is None
    report = checked(evidence({topics.COURIER_DISPATCH: [offer]}, couriers=couriers))
    assert (report.offers_acted_on, report.duplicate_offers_ignored, report.duplicate_offers_republished) == (1, 1, 1)
    assert report.offers_without_outcome == [offer.dispatch_id]


def test_a_round_stop_sent_again_is_no_reuse_but_a_dispatch_id_offered_to_two_couriers_is():
    offer = next(m for m in one_of_each_message() if isinstance(m, c.DispatchOffered))
    stop = offer.model_copy(update={"round_id": "R-1", "stop": 1})
    moved = stop.model_copy(update={"message_id": "MSG-REPLANNED", "stop": 2})
    elsewhere = stop.model_copy(update={"message_id": "MSG-OTHER-VAN", "courier_id": "CUR-OTHER"})
    alone = offer.model_copy(update={"message_id": "MSG-AGAIN"})

    assert checked(evidence({topics.COURIER_DISPATCH: [stop, moved]})).dispatch_ids_reused == {}
    assert set(checked(evidence({topics.COURIER_DISPATCH: [stop, moved, elsewhere]})).dispatch_ids_reused) == {
        offer.dispatch_id
    }
    assert set(checked(evidence({topics.COURIER_DISPATCH: [offer, alone]})).dispatch_ids_reused) == {offer.dispatch_id}


def test_the_outcome_decides_where_held_stock_must_have_gone():
    assert expected_closing(Stage.DELIVERED, reserved=True, travelled=True) == {"StockDelivered": 1}
    assert expected_closing(Stage.CANCELLED, reserved=True, travelled=False) == {"StockReleased": 1}
    assert expected_closing(Stage.UNDELIVERABLE, reserved=True, travelled=True) == {"StockQuarantined": 1}
    assert expected_closing(Stage.OUT_OF_STOCK, reserved=False, travelled=False) == {}


def test_a_package_found_damaged_closes_its_hold_to_quarantine_and_a_repack_opens_the_next():
    delivered = expected_closing(Stage.DELIVERED, reserved=True, travelled=True)
    assert with_repacks(delivered, damaged=0, repacked=0) == {"StockDelivered": 1}
    assert with_repacks(delivered, damaged=1, repacked=1) == {"StockDelivered": 1, "StockQuarantined": 1}
    given_up = expected_closing(Stage.UNDELIVERABLE, reserved=True, travelled=False)
    assert with_repacks(given_up, damaged=1, repacked=0) == {"StockQuarantined": 1}, "the damage was the end of it"


def test_the_owner_of_a_terminal_stage_must_have_recorded_it():
    assert owner_agrees(Stage.DELIVERED, DeliveryState.DELIVERED, None, None)
    assert not owner_agrees(Stage.OUT_OF_STOCK, None, AllocationState.RESERVED, None)
    assert not owner_agrees(Stage.PICKED_UP, DeliveryState.DELIVERED, None, None), "not a terminal stage"


def test_travelled_goods_are_the_ones_picked_up():
    assert evidence({topics.COURIER_DELIVERIES: [picked_up(prescription_id="RX-9")]}).travelled == {"RX-9"}


def test_a_restock_answered_by_two_events_is_reported():
    """Applied twice, a restock still balances the books: only counting its answers shows it."""
    seen = evidence()
    command = inv.RestockRequested(
        correlation_id="CMD-1",
        producer="tests",
        warehouse_id="WH-1",
        drug_code="MET500",
        lot_id="MET500-L1",
        expiry_date=date(2031, 12, 31),
        quantity=100,
        requested_by="Aigerim",
    )
    seen.load.restocks.append(command)
    answer = restocked(0).model_copy(update={"causation_id": command.message_id})
    twice = answer.model_copy(update={"message_id": "another-event-id"})
    report = checked(evidence({topics.INVENTORY_EVENTS: [answer, twice]}, load=seen.load))

    assert report.restocks_answered_twice == [command.message_id]
    assert any("restocks answered by two events" in v for v in report.violations())
    once = checked(evidence({topics.INVENTORY_EVENTS: [answer]}, load=seen.load))
    assert once.restocks_answered_twice == []
