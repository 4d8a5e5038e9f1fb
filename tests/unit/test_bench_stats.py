"""The arithmetic behind `make bench`: percentiles, medians, rates, the paced schedule, latencies."""

from __future__ import annotations

import json

import pytest

from services.ops.bench import (
    THROUGHPUT_TARGET,
    StoredRelayResult,
    achieved_rate,
    by_owner,
    cpu_share,
    hop_latencies_ms,
    latencies_within,
    latency_summary,
    median,
    medians,
    milestone_of,
    owner_of,
    per_prescription,
    percentile,
    rate_per_s,
    ratio,
    scheduled_at,
    stage_window,
)
from services.ops.relay_ceiling import RelayResult


class TestPercentile:
    def test_interpolates_between_the_nearest_ranks_like_numpy(self) -> None:
        values = list(range(1, 101))  # 1..100
        assert percentile(values, 50) == pytest.approx(50.5)
        assert percentile(values, 99) == pytest.approx(99.01)
        assert percentile(values, 95) == pytest.approx(95.05)

    def test_ends_are_the_minimum_and_maximum(self) -> None:
        assert percentile([7.0, 3.0, 9.0], 0) == 3.0
        assert percentile([7.0, 3.0, 9.0], 100) == 9.0

    def test_order_of_the_input_does_not_matter(self) -> None:
        assert percentile([30, 10, 20], 50) == percentile([10, 20, 30], 50) == 20

    def test_one_value_is_every_percentile(self) -> None:
        assert percentile([42.0], 1) == percentile([42.0], 99) == 42.0

    def test_no_values_no_percentile(self) -> None:
        assert percentile([], 99) is None

    def test_refuses_a_percentile_outside_0_to_100(self) -> None:
        with pytest.raises(ValueError):
            percentile([1.0], 101)


class TestMedian:
    def test_ignores_runs_that_could_not_measure(self) -> None:
        assert median([1500.0, None, 900.0, 1200.0]) == 1200.0

    def test_of_an_even_count_is_the_mean_of_the_middle_two(self) -> None:
        assert median([1.0, 2.0, 3.0, 4.0]) == 2.5

    def test_nothing_known_gives_none(self) -> None:
        assert median([None, None]) is None
        assert median([]) is None

    def test_medians_per_metric_over_runs(self) -> None:
        runs = [{"throughput": 10.0, "p99": 300.0}, {"throughput": 30.0}, {"throughput": 20.0, "p99": None}]
        assert medians(runs) == {"throughput": 20.0, "p99": 300.0}


class TestRates:
    def test_rate_is_count_over_seconds(self) -> None:
        assert rate_per_s(3000, 2.0) == 1500.0

    def test_no_rate_without_count_or_time(self) -> None:
        assert rate_per_s(0, 2.0) is None
        assert rate_per_s(10, 0.0) is None
        assert rate_per_s(10, None) is None

    def test_a_finished_stage_is_timed_to_its_last_arrival(self) -> None:
        arrivals = {"RX-1": 11.0, "RX-2": 12.5}
        assert stage_window(arrivals, ["RX-1", "RX-2"], started=10.0, waited_until=40.0) == 2.5

    def test_an_unfinished_stage_is_timed_to_the_end_of_the_wait(self) -> None:
        # One early arrival then a stall: 1 in 30 s, not 1 in 1 s.
        assert stage_window({"RX-1": 11.0}, ["RX-1", "RX-2"], started=10.0, waited_until=40.0) == 30.0
        assert stage_window({}, ["RX-1"], started=10.0, waited_until=40.0) == 30.0

    def test_ratio_needs_both_figures(self) -> None:
        assert ratio(1500.0, 6000.0) == 0.25
        assert ratio(None, 6000.0) is None
        assert ratio(1500.0, None) is None
        assert ratio(1500.0, 0.0) is None

    def test_target_direction(self) -> None:
        assert THROUGHPUT_TARGET.met(1500.0) is True
        assert THROUGHPUT_TARGET.met(1499.9) is False
        assert THROUGHPUT_TARGET.met(None) is None


class TestPacedSchedule:
    def test_every_send_is_due_at_an_absolute_time_from_the_start(self) -> None:
        assert [scheduled_at(100.0, 500.0, i) for i in (0, 1, 500)] == [100.0, 100.002, 101.0]

    def test_a_late_send_does_not_move_the_later_ones(self) -> None:
        # Whatever happened to send 9, send 10 is due exactly 10 intervals after the start.
        assert scheduled_at(0.0, 50.0, 10) == pytest.approx(0.2)

    def test_achieved_rate_counts_intervals_not_sends(self) -> None:
        assert achieved_rate([0.0, 0.5, 1.0]) == pytest.approx(2.0)
        assert achieved_rate([5.0]) is None
        assert achieved_rate([]) is None


class TestLatencies:
    def test_late_and_absent_prescriptions_are_missing(self) -> None:
        submitted = {"RX-1": 10.0, "RX-2": 10.0, "RX-3": 10.0}
        dispatched = {"RX-1": 10.1, "RX-2": 40.0}  # RX-2 after the 5 s timeout, RX-3 never
        latencies, missing = latencies_within(submitted, dispatched, timeout_s=5.0)
        assert latencies == [pytest.approx(100.0)]
        assert missing == 2

    def test_summary_reports_missing_beside_the_percentiles(self) -> None:
        summary = latency_summary([10.0, 20.0, 30.0], missing=4)
        assert summary["p50_ms"] == 20.0
        assert summary["max_ms"] == 30.0
        assert (summary["arrived"], summary["missing"]) == (3, 4)

    def test_summary_of_nothing_arrived(self) -> None:
        summary = latency_summary([], missing=10)
        assert summary["p99_ms"] is None
        assert summary["max_ms"] is None
        assert summary["missing"] == 10

    def test_hop_latency_is_measured_from_the_stage_before(self) -> None:
        submitted = {"RX-1": 0.0, "RX-2": 0.0}
        seen = {"accepted": {"RX-1": 0.1, "RX-2": 0.2}, "approved": {"RX-1": 0.4}}
        hops = hop_latencies_ms(submitted, seen, ["accepted", "approved"])
        assert hops["accepted"] == [pytest.approx(100.0), pytest.approx(200.0)]
        assert hops["approved"] == [pytest.approx(300.0)]  # RX-2 not approved yet: not counted


class TestMilestones:
    def test_a_dispatch_offer_is_matched_by_its_package_id(self) -> None:
        raw = json.dumps({"type": "courier.dispatch_offered", "package_id": "RX-5000-00001"}).encode()
        assert milestone_of(raw) == ("dispatched", "RX-5000-00001")

    def test_an_accepted_prescription_carries_its_id_inside(self) -> None:
        raw = json.dumps(
            {"type": "consultation.prescription_accepted", "prescription": {"prescription_id": "RX-1"}}
        ).encode()
        assert milestone_of(raw) == ("accepted", "RX-1")

    def test_other_messages_and_garbage_are_no_milestone(self) -> None:
        assert milestone_of(json.dumps({"type": "courier.picked_up", "prescription_id": "RX-1"}).encode()) is None
        assert milestone_of(b"not json") is None
        assert milestone_of(b"[]") is None


class TestProcesses:
    def test_cpu_share_is_cpu_seconds_per_wall_second(self) -> None:
        assert cpu_share({"broker": 1.0}, {"broker": 2.5}, seconds=3.0) == {"broker": 0.5}
        assert cpu_share({"broker": 1.0}, {"broker": 2.5}, seconds=0.0) == {}

    def test_instances_add_up_under_their_service(self) -> None:
        assert owner_of("inventory-2") == "inventory"
        assert owner_of("broker") == "broker"
        assert by_owner({"inventory-1": 0.4, "inventory-2": 0.3, "database": 0.5}) == {
            "inventory": 0.7,
            "database": 0.5,
        }


class TestDatabaseFigures:
    def test_writes_per_prescription_leave_out_what_does_not_grow_with_the_load(self) -> None:
        writes = {"status": 7_800, "ledger": 2_900, "warehouses": 170, "formulary": 13}

        assert per_prescription(writes, 1_000) == {"status": 7.8, "ledger": 2.9, "warehouses": 0.17}

    def test_the_database_cost_of_a_write_is_its_cpu_over_the_documents_every_hop_stored(self) -> None:
        relay = RelayResult(1_000, 1_000, seconds=2.0, message_bytes=900, hops=4, complete=True, writes_per_hop=1)
        stored = StoredRelayResult(relay=relay, database_cpu_s=0.8)

        assert stored.relay.documents_written == 4_000
        assert stored.database_ms_per_write == pytest.approx(0.2)

    def test_a_relay_that_stored_nothing_has_no_cost_per_write(self) -> None:
        relay = RelayResult(messages=1_000, delivered=0, seconds=0.0, message_bytes=900, hops=4, complete=False)

        assert StoredRelayResult(relay=relay, database_cpu_s=0.5).database_ms_per_write is None
