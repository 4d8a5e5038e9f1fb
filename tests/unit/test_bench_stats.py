"""The arithmetic behind `make bench`: percentiles, medians, rates, the paced schedule, latencies,
and the services' counters per prescription (database round trips, records delivered and ignored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from pharmacy_contracts.topics import ALL_TOPICS
from services.ops.bench.cli import parse_rates
from services.ops.bench.counters import (
    ACTED_ON,
    DELIVERED,
    PATH_TO_DISPATCH,
    ROUND_TRIPS,
    SKIPPED,
    Counters,
    increase,
    parse_counters,
    records_per_prescription,
    round_trips_per_prescription,
)
from services.ops.bench.phases import latency_phase
from services.ops.bench.processes import by_owner, owner_of
from services.ops.bench.render import result_rows
from services.ops.bench.report import build_report
from services.ops.bench.results import (
    BATCHES,
    THROUGHPUT_TARGET,
    BenchError,
    BenchOptions,
    LatencyResult,
    PacedRate,
    RunResult,
    StoredRelayResult,
    rate_label,
)
from services.ops.bench.stats import (
    achieved_rate,
    cpu_share,
    half_of,
    hop_latencies_ms,
    latencies_within,
    latency_summary,
    median,
    medians,
    per_prescription,
    percentile,
    rate_per_s,
    ratio,
    scheduled_at,
    stage_window,
)
from services.ops.bench.watch import milestone_of
from services.ops.lag import service_groups
from services.ops.relay_ceiling import RelayResult
from services.runtime.settings import RuntimeSettings


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


def trips(group: str, command: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ROUND_TRIPS, frozenset({"group": group, "command": command}.items())


def records(group: str, message_type: str, topic: str = "t") -> tuple[str, frozenset[tuple[str, str]]]:
    return DELIVERED, frozenset({"group": group, "topic": topic, "type": message_type}.items())


class TestServiceCounters:
    def test_reads_the_round_trips_and_records_from_a_metrics_page(self) -> None:
        page = (
            "# HELP pharmacy_database_round_trips_total Database commands\n"
            "# TYPE pharmacy_database_round_trips_total counter\n"
            'pharmacy_database_round_trips_total{command="find",group="pharmacy.courier.stock"} 12.0\n'
            "# HELP pharmacy_messages_handled_total Messages\n"
            "# TYPE pharmacy_messages_handled_total counter\n"
            'pharmacy_messages_handled_total{group="pharmacy.courier.stock",topic="t"} 3.0\n'
        )

        assert parse_counters(page) == {trips("pharmacy.courier.stock", "find"): 12.0}

    def test_the_increase_counts_new_series_from_zero_and_drops_unchanged_ones(self) -> None:
        before: Counters = {trips("g", "find"): 10.0, trips("g", "update"): 4.0}
        after: Counters = {trips("g", "find"): 25.0, trips("g", "update"): 4.0, trips("g", "insert"): 2.0}

        assert increase(before, after) == {trips("g", "find"): 15.0, trips("g", "insert"): 2.0}

    def test_round_trips_per_prescription_per_service_on_the_path_and_in_all(self) -> None:
        increases = {
            "inventory-1": {
                trips("pharmacy.inventory.reservations", "find"): 300.0,
                trips("pharmacy.inventory.reservations", "update"): 200.0,
                trips("pharmacy.inventory.ledger", "insert"): 100.0,
                trips("(background)", "find"): 50.0,
                records("pharmacy.inventory.ledger", "inventory.stock_reserved"): 100.0,  # not a round trip
            },
            "inventory-2": {trips("pharmacy.inventory.reservations", "find"): 100.0},
            "courier-1": {trips("pharmacy.courier.updates", "update"): 100.0},
        }

        found = round_trips_per_prescription(increases, prescriptions=100, prefix="pharmacy")

        assert found["inventory"]["path"] == 6.0  # both instances' reservations
        assert found["inventory"]["all"] == 7.5  # and the ledger's and the background's
        assert found["inventory"]["group.(background)"] == 0.5
        assert found["courier"] == {"path": 0.0, "all": 1.0, "group.courier.updates": 1.0}

    def test_records_a_group_has_no_branch_for_are_ignored(self) -> None:
        increases = {
            "inventory-1": {
                records("pharmacy.inventory.reservations", "prescription.approved"): 100.0,
                records("pharmacy.inventory.reservations", "prescription.held_for_review"): 20.0,
                records("pharmacy.inventory.deliveries", "courier.assigned"): 100.0,
                records("pharmacy.inventory.deliveries", "courier.delivered"): 100.0,
                trips("pharmacy.inventory.deliveries", "find"): 500.0,  # not a record
            },
        }

        found = records_per_prescription(increases, prescriptions=100, prefix="pharmacy")

        assert found == {
            "inventory.deliveries": {"delivered": 2.0, "ignored": 1.0, "skipped": 0.0},
            "inventory.reservations": {"delivered": 1.2, "ignored": 0.2, "skipped": 0.0},
        }

    def test_records_passed_over_by_their_type_header_are_skipped_not_delivered(self) -> None:
        skipped = (SKIPPED, frozenset({("group", "pharmacy.prescription.supply"), ("type", "courier.assigned")}))
        increases = {
            "prescription-1": {
                skipped: 300.0,
                records("pharmacy.prescription.supply", "inventory.reservation_failed"): 10.0,
            }
        }

        found = records_per_prescription(increases, prescriptions=100, prefix="pharmacy")

        assert found == {"prescription.supply": {"delivered": 0.1, "ignored": 0.0, "skipped": 3.0}}

    def test_a_run_adds_the_services_and_groups_up(self) -> None:
        run = RunResult(
            1,
            round_trips_per_prescription={
                "consultation": {"path": 2.0, "all": 5.0, "group.consultation.intake": 2.0, "group.(background)": 1.5},
                "courier": {"path": 3.5, "all": 4.0, "group.(background)": 0.5},
            },
            records_per_prescription={"courier.stock": {"delivered": 4.0, "ignored": 3.0}},
            paced_round_trips_per_prescription={
                "inventory": {"path": 7.0, "all": 9.5},
                "courier": {"path": 2.0, "all": 3.0},
            },
        )

        figures = run.metrics()

        assert (figures["round_trips_path"], figures["round_trips_all"]) == (5.5, 9.0)
        assert figures["round_trips_all.courier"] == 4.0
        assert figures["round_trips.consultation.intake"] == 2.0
        assert figures["round_trips.(background)"] == 2.0  # every service's, added up
        assert (figures["records_delivered"], figures["records_ignored"]) == (4.0, 3.0)
        assert (figures["paced_round_trips_path"], figures["paced_round_trips_all"]) == (9.0, 12.5)


class TestWhatGroupsActOn:
    """ACTED_ON is read from the handlers; these keep it from drifting from the apps."""

    def test_every_group_of_the_services_is_classified_and_no_other(self) -> None:
        settings = RuntimeSettings(delivery_code_key="0" * 64)
        groups = {group.removeprefix(f"{settings.kafka_group_prefix}.") for group in service_groups(settings)}

        assert set(ACTED_ON) == groups
        assert set(PATH_TO_DISPATCH) <= groups

    def test_a_group_acts_only_on_types_of_the_topics_it_reads(self) -> None:
        settings = RuntimeSettings(delivery_code_key="0" * 64)
        types_on = {topic.name: {m.model_fields["type"].default for m in topic.messages} for topic in ALL_TOPICS}
        for group, topic_names in service_groups(settings).items():
            readable = set().union(*(types_on[name] for name in topic_names))
            acted_on = ACTED_ON[group.removeprefix(f"{settings.kafka_group_prefix}.")]
            assert acted_on <= readable, (group, acted_on - readable)


def bench_options(rates: str = "5,20,half", paced_seconds: float | None = None, runs: int = 3) -> BenchOptions:
    return BenchOptions(
        count=300,
        rates=parse_rates(rates),
        paced_seconds=paced_seconds,
        runs=runs,
        timeout_s=120.0,
        relay_messages=0,
        stored_relay_messages=0,
        warmup=20,
        instances=1,
        service_env={},
        home=Path(".devstack/bench"),
        seed=5000,
    )


def latency_at(rate_key: str, per_s: float, latencies_ms: list[float], missing: int = 0) -> LatencyResult:
    return LatencyResult(
        rate_key=rate_key,
        target_rate=per_s,
        planned_seconds=10.0,
        timeout_s=120.0,
        submitted=len(latencies_ms) + missing,
        achieved_rate=per_s,
        latencies_ms=latencies_ms,
        missing=missing,
        stages={"rejected": 0, "out_of_stock": 0},
        send_errors=0,
        hop_ms={"accepted": [1.0, 3.0]},
    )


def runs_at_three_rates() -> list[RunResult]:
    """Three runs whose throughput phases came to 48.8, 50.0 and 47.0 rx/s: half is 24.4, 25, 23.5."""
    runs = []
    for number, (half, shift) in enumerate(((24.4, 0.0), (25.0, 100.0), (23.5, 50.0)), start=1):
        run = RunResult(number)
        run.latencies = {
            "5/s": latency_at("5/s", 5.0, [100.0 + shift, 300.0 + shift]),
            "20/s": latency_at("20/s", 20.0, [150.0 + shift, 200.0 + shift], missing=number - 1),
            "half": latency_at("half", half, [400.0 + shift, 900.0 + shift]),
        }
        run.paced_round_trips_per_prescription = {"inventory": {"path": 7.0, "all": 9.5}}
        run.paced_round_trips_rate = "5/s"
        runs.append(run)
    return runs


class TestPacedRates:
    def test_the_default_is_5_and_20_per_second_and_half_the_throughput(self) -> None:
        rates = parse_rates("5,20,half")

        assert rates == (PacedRate(5.0), PacedRate(20.0), PacedRate(None))
        assert [rate.key for rate in rates] == ["5/s", "20/s", "half"]

    def test_spaces_case_and_a_per_second_suffix_are_allowed(self) -> None:
        assert [rate.key for rate in parse_rates(" 2.5/s , Half ")] == ["2.5/s", "half"]

    @pytest.mark.parametrize(
        ("text", "complaint"),
        [
            ("fast", "'fast' is neither a rate per second nor 'half'"),
            ("5,,20", "'' is neither a rate per second nor 'half'"),
            ("", "'' is neither a rate per second nor 'half'"),
            ("0", "'0': a rate is at least 0.1/s"),
            ("-5", "'-5': a rate is at least 0.1/s"),
            ("inf", "'inf': a rate is at least 0.1/s"),
            ("5,5.0", "5/s is listed twice"),
            ("half,20,HALF", "half is listed twice"),
        ],
    )
    def test_bad_input_is_refused_naming_the_option_and_the_item(self, text: str, complaint: str) -> None:
        with pytest.raises(typer.BadParameter) as refused:
            parse_rates(text)

        assert complaint in refused.value.format_message()
        assert "--rates" in refused.value.format_message()

    def test_half_is_half_the_throughput_to_a_tenth_and_at_least_half_a_prescription_per_second(self) -> None:
        assert half_of(48.8) == 24.4
        assert half_of(39.25) == 19.6  # 19.625 to a tenth
        assert half_of(1.2) == 0.6
        assert half_of(0.6) == 0.5
        assert half_of(0.0) is None
        assert half_of(None) is None

    def test_half_resolves_from_the_runs_throughput_and_a_fixed_rate_is_itself(self) -> None:
        assert PacedRate(None).resolve(48.8) == 24.4
        assert PacedRate(None).resolve(None) is None
        assert PacedRate(20.0).resolve(None) == 20.0
        assert PacedRate(20.0).resolve(48.8) == 20.0

    def test_a_rate_is_labelled_by_its_key_and_half_by_what_it_came_to(self) -> None:
        assert rate_label("5/s", 5.0) == "5/s"
        assert rate_label("half", 24.4) == "half (24.4/s)"
        assert latency_at("half", 24.4, [1.0]).label == "half (24.4/s)"

    def test_half_without_a_throughput_fails_its_phase_before_starting_a_stack(self) -> None:
        with pytest.raises(BenchError, match="no throughput"):
            latency_phase(RunResult(1), bench_options(), screen=None, rate=PacedRate(None))  # type: ignore[arg-type]

    def test_by_default_every_rate_submits_at_least_100_prescriptions(self) -> None:
        options = bench_options()

        assert options.paced_seconds_at(20.0) == 10.0
        assert options.paced_seconds_at(5.0) == 20.0
        assert options.paced_seconds_at(0.5) == 200.0

    def test_a_paced_duration_given_holds_at_every_rate(self) -> None:
        options = bench_options(paced_seconds=4.0)

        assert options.paced_seconds_at(5.0) == options.paced_seconds_at(24.4) == 4.0

    def test_round_trips_are_counted_at_5_per_second_if_measured_else_at_the_first_rate(self) -> None:
        assert bench_options("20,5,half").round_trips_rate == PacedRate(5.0)
        assert bench_options("half,20").round_trips_rate == PacedRate(None)

    def test_every_batch_of_every_run_and_rate_has_prescription_ids_of_its_own(self) -> None:
        options = bench_options("5,20,half,10,50")
        throughput = [options.seed_of(run, batch) for run in range(1, 4) for batch in BATCHES[:2]]
        latency = [
            options.seed_of(run, batch, index)
            for run in range(1, 4)
            for batch in BATCHES[2:]
            for index in range(len(options.rates))
        ]
        seeds = throughput + latency

        assert len(set(seeds)) == len(seeds)


class TestLatencyPerRate:
    def test_medians_are_taken_per_rate_and_half_is_labelled_with_its_median_rate(self) -> None:
        report = build_report(runs_at_three_rates(), bench_options(), {"cpu_count": 2})

        assert list(report["latency"]) == ["5/s", "20/s", "half (24.4/s)"]
        assert report["latency"]["5/s"]["p50_ms"] == 250.0  # runs 200, 300, 250
        assert report["latency"]["20/s"]["max_ms"] == 250.0  # runs 200, 300, 250
        assert report["latency"]["20/s"]["missing"] == 1  # runs 0, 1, 2
        assert report["latency"]["half (24.4/s)"]["rate_per_s"] == 24.4
        assert report["medians"]["latency[half].hop_p50_ms.accepted"] == 2.0

    def test_the_p99_target_is_judged_at_20_per_second_only(self) -> None:
        runs = runs_at_three_rates()  # p99 at 20/s about 250 ms, at half far above

        report = build_report(runs, bench_options(), {"cpu_count": 2})

        assert report["latency"]["20/s"]["p99_ms"] == pytest.approx(249.5)
        assert report["meets_targets"]["p99"] is True
        assert report["targets"]["p99_at"] == "20/s"

    def test_without_20_per_second_the_p99_target_is_not_judged(self) -> None:
        runs = runs_at_three_rates()
        for run in runs:
            del run.latencies["20/s"]

        report = build_report(runs, bench_options("5,half"), {"cpu_count": 2})

        assert report["meets_targets"]["p99"] is None

    def test_the_json_keys_every_rate_by_its_label_in_the_medians_and_each_run(self) -> None:
        report = json.loads(json.dumps(build_report(runs_at_three_rates(), bench_options(), {"cpu_count": 2})))

        assert report["options"]["rates"] == ["5/s", "20/s", "half"]
        assert report["options"]["paced_seconds"] is None
        assert set(report["latency"]["5/s"]) == {
            "rate_per_s",
            "achieved_rate",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
            "arrived",
            "missing",
        }
        assert list(report["runs"][1]["latency"]) == ["5/s", "20/s", "half (25/s)"]
        assert report["runs"][1]["latency"]["20/s"]["missing"] == 1
        assert report["runs"][1]["latency"]["20/s"]["latencies_ms"] == [250.0, 300.0]
        assert report["paced_round_trips_rate"] == "5/s"
        assert report["runs"][0]["paced_round_trips_rate"] == "5/s"

    def test_a_rate_no_run_measured_is_left_out(self) -> None:
        runs = runs_at_three_rates()
        for run in runs:
            del run.latencies["half"]  # e.g. every throughput phase failed

        report = build_report(runs, bench_options(), {"cpu_count": 2})

        assert list(report["latency"]) == ["5/s", "20/s"]

    def test_the_table_has_a_line_per_rate_and_holds_only_20_per_second_to_the_target(self) -> None:
        runs = runs_at_three_rates()
        summary = build_report(runs, bench_options(), {"cpu_count": 2})["medians"]

        rows = [row for row in result_rows(runs, summary, ["5/s", "20/s", "half"]) if row.label.startswith("latency")]

        assert [row.label for row in rows] == [
            "latency at 5/s: p50/p95/p99/max (ms)",
            "latency at 20/s: p50/p95/p99/max (ms)",
            "latency at half (24.4/s): p50/p95/p99/max (ms)",
        ]
        assert [row.target is not None for row in rows] == [False, True, False]
        round_trips = [row.label for row in result_rows(runs, summary, ["5/s"]) if "round trips per rx at" in row.label]
        assert round_trips == [
            "  round trips per rx at 5/s, path to dispatch",
            "  round trips per rx at 5/s, in all",
        ]
