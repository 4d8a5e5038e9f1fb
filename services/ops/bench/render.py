"""The figures as the bench prints them: a line per step, the results table, where the time goes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from ..devstack import SERVICES
from ..relay_ceiling import RelayResult
from .counters import PATH_TO_DISPATCH
from .processes import BENCH_PROCESS, INFRASTRUCTURE, is_service_process, owner_of
from .results import (
    HALF,
    IGNORED_TARGET,
    P99_RATE,
    P99_TARGET,
    RECORDS_TARGET,
    ROUND_TRIPS_PATH_TARGET,
    ROUND_TRIPS_TARGET,
    RSS_TARGET,
    THROUGHPUT_TARGET,
    LatencyResult,
    RunResult,
    StoredRelayResult,
    Target,
    ThroughputResult,
    latency_metric,
    rate_label,
)
from .stats import ratio
from .watch import STAGE_OWNERS, STAGES


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def describe_throughput(result: ThroughputResult) -> str:
    state = "" if result.complete else f" [red]INCOMPLETE: {result.stages['dispatched']}/{result.prescriptions}[/]"
    stages = ", ".join(f"{stage} {result.stages[stage]}" for stage in STAGES)
    return (
        f"throughput {_number(result.dispatched_per_s, 1)} rx/s to dispatch over {result.window_seconds:.1f}s{state} "
        f"(published in {result.submit_seconds:.2f}s; {stages}){describe_refusals(result.stages, result.send_errors)}"
    )


def describe_refusals(stages: Mapping[str, int], send_errors: int) -> str:
    """Every prescription sent is meant to be approved and reserved: say so loudly when one was not."""
    refused = {"rejected": stages["rejected"], "out of stock": stages["out_of_stock"], "send errors": send_errors}
    shown = ", ".join(f"{what} {count}" for what, count in refused.items() if count)
    return f" [red]{shown}: the figures do not measure the normal path[/]" if shown else ""


def describe_relay(relay: RelayResult, throughput: ThroughputResult | None) -> str:
    share = ratio(throughput.dispatched_per_s if throughput else None, relay.rate_per_s)
    state = "" if relay.complete else f" [red]INCOMPLETE ({relay.error or 'timed out'})[/]"
    return f"relay ceiling {_number(relay.rate_per_s)} msg/s{state}; ours / ceiling {_number(share, 3)}"


def describe_writes(writes: Mapping[str, float], complete: bool) -> str:
    listed = ", ".join(f"{name} {count:g}" for name, count in sorted(writes.items(), key=lambda item: -item[1]))
    state = "" if complete else " [red]INCOMPLETE: counted before every consumer had caught up[/]"
    return f"database writes per prescription: {sum(writes.values()):.1f}{state} ({listed})"


def describe_round_trips(per_service: Mapping[str, Mapping[str, float]], complete: bool) -> str:
    """Per service: round trips per prescription on the path to DispatchOffered / in all."""
    if not per_service:
        return "[red]database round trips: no service answered on /metrics[/]"
    path, everything = (sum(figures[f] for figures in per_service.values()) for f in ("path", "all"))
    listed = ", ".join(
        f"{service} {per_service[service]['path']:g} / {per_service[service]['all']:g}"
        for service in sorted(per_service, key=_process_order)
    )
    state = "" if complete else " [red]INCOMPLETE: counted before every consumer had caught up[/]"
    return (
        f"database round trips per prescription, on the path to DispatchOffered / in all: "
        f"{path:.1f} / {everything:.1f}{state} ({listed})"
    )


def describe_records(per_group: Mapping[str, Mapping[str, float]], complete: bool) -> str:
    """Records delivered per prescription, and those delivered to a group that ignores them."""
    delivered, ignored, skipped = (
        sum(figures.get(f, 0.0) for figures in per_group.values()) for f in ("delivered", "ignored", "skipped")
    )
    listed = ", ".join(
        f"{group} {figures['delivered']:g}" + (f" ({figures['ignored']:g} ignored)" if figures["ignored"] else "")
        for group, figures in sorted(per_group.items(), key=lambda item: -item[1]["delivered"])
    )
    state = "" if complete else " [red]INCOMPLETE: counted before every consumer had caught up[/]"
    return (
        f"records delivered per prescription: {delivered:.1f}, ignored {ignored:.1f}{state} ({listed}); "
        f"passed over unparsed by their type header: {skipped:.1f}"
    )


def describe_stored_relay(stored: StoredRelayResult, throughput: ThroughputResult | None) -> str:
    share = ratio(throughput.dispatched_per_s if throughput else None, stored.relay.rate_per_s)
    state = "" if stored.relay.complete else f" [red]INCOMPLETE ({stored.relay.error or 'timed out'})[/]"
    return (
        f"stored relay {_number(stored.relay.rate_per_s)} msg/s{state}; ours / stored relay {_number(share, 3)}; "
        f"database CPU {_number(stored.database_ms_per_write, 3)} ms per document it stored"
    )


def describe_latency(result: LatencyResult) -> str:
    s = result.summary()
    return (
        f"latency at {result.label}, {_number(result.achieved_rate, 1)}/s achieved: p50 {_number(s['p50_ms'])} ms, "
        f"p95 {_number(s['p95_ms'])} ms, p99 {_number(s['p99_ms'])} ms, max {_number(s['max_ms'])} ms, "
        f"missing {result.missing}/{result.submitted}{describe_refusals(result.stages, result.send_errors)}"
    )


def _verdict(target: Target, value: float | None) -> str:
    met = target.met(value)
    return "" if met is None else ("[green]✓[/]" if met else "[red]✗[/]")


@dataclass(frozen=True)
class Row:
    label: str
    metric: str  # a key of RunResult.metrics()
    digits: int = 0
    target: Target | None = None
    rate_key: str | None = None  # a latency row: p50 / p95 / p99 / max at this rate, `metric` its p99


def latency_row(summary: Mapping[str, float | None], key: str) -> Row:
    label = rate_label(key, summary.get(latency_metric(key, "rate_per_s")))
    target = P99_TARGET if key == P99_RATE.key else None
    return Row(f"latency at {label}: p50/p95/p99/max (ms)", latency_metric(key, "p99_ms"), 0, target, key)


def latency_cell(figures: Mapping[str, float | None], key: str, run_rate: bool = False) -> str:
    """p50 / p95 / p99 / max, the missing ones when there are any; with `run_rate` the rate a run's
    half came to (runs may differ)."""
    if figures.get(latency_metric(key, "arrived")) is None:
        return "—"
    percentiles = "/".join(_number(figures.get(latency_metric(key, f"{p}_ms"))) for p in ("p50", "p95", "p99", "max"))
    missing = figures.get(latency_metric(key, "missing")) or 0
    shown = percentiles + (f" [red]({missing:g} missing)[/]" if missing else "")
    per_s = figures.get(latency_metric(key, "rate_per_s"))
    return f"{per_s:g}/s: {shown}" if run_rate and key == HALF and per_s is not None else shown


def result_rows(runs: Sequence[RunResult], summary: Mapping[str, float | None], rate_keys: Sequence[str]) -> list[Row]:
    paced = next((run.paced_round_trips_rate for run in runs if run.paced_round_trips_rate), "the paced rate")
    processes = sorted({name for run in runs for name in run.peak_rss_overall()}, key=_process_order)
    services = sorted({name for run in runs for name in run.round_trips_per_prescription}, key=_process_order)
    rows = [
        Row("throughput to dispatch (rx/s)", "throughput_per_s", 1, THROUGHPUT_TARGET),
        Row("  prescriptions dispatched", "dispatched"),
        Row("  throughput to delivered (rx/s)", "delivered_per_s", 1),
        Row("  database writes per prescription", "writes_per_rx", 1),
        Row("  database CPU per pipeline write (ms)", "database_ms_per_pipeline_write", 3),
        Row("  database round trips per rx, path to dispatch", "round_trips_path", 1, ROUND_TRIPS_PATH_TARGET),
        *(Row(f"    {name}", f"round_trips_path.{name}", 1) for name in services),
        Row("  database round trips per rx, in all", "round_trips_all", 1, ROUND_TRIPS_TARGET),
        *(Row(f"    {name}", f"round_trips_all.{name}", 1) for name in services),
        Row("  records delivered per rx", "records_delivered", 1, RECORDS_TARGET),
        Row("  records delivered per rx to a group that ignores them", "records_ignored", 1, IGNORED_TARGET),
        Row("bare 4-hop relay (msg/s)", "relay_per_s"),
        Row("ours / relay", "ratio_to_relay", 3),
        Row("stored 4-hop relay, 1 write per hop (msg/s)", "stored_relay_per_s"),
        Row("ours / stored relay", "ratio_to_stored_relay", 3),
        Row("  database CPU per document it stored (ms)", "database_ms_per_write", 3),
        *(latency_row(summary, key) for key in rate_keys),
        Row(f"  round trips per rx at {paced}, path to dispatch", "paced_round_trips_path", 1, ROUND_TRIPS_PATH_TARGET),
        Row(f"  round trips per rx at {paced}, in all", "paced_round_trips_all", 1, ROUND_TRIPS_TARGET),
    ]
    for name in processes:
        target = RSS_TARGET if is_service_process(name) else None
        rows.append(Row(f"peak RSS {name} (MB)", f"rss_mb.{name}", 1, target))
    return rows


def _process_order(name: str) -> tuple[int, str]:
    """The services in pipeline order, then the broker, the database and the bench."""
    order = [*SERVICES, *INFRASTRUCTURE, BENCH_PROCESS]
    return order.index(owner_of(name)), name


def results_table(
    runs: Sequence[RunResult],
    summary: Mapping[str, float | None],
    machine: Mapping[str, Any],
    rate_keys: Sequence[str],
) -> Table:
    table = Table(
        title=f"make bench · medians of {len(runs)} run(s)",
        caption=f"{machine['cpu_count']} CPUs · {machine['platform']} · Python {machine['python']} · "
        f"{machine['date']} · {machine['git']}",
    )
    table.add_column("figure")
    table.add_column("target")
    table.add_column("median", justify="right", style="bold")
    table.add_column("")
    for run in runs:
        table.add_column(f"run {run.number}", justify="right")
    per_run = [run.metrics() for run in runs]
    for row in result_rows(runs, summary, rate_keys):
        target = str(row.target) if row.target else ""
        value = summary.get(row.metric)
        verdict = _verdict(row.target, value) if row.target else ""
        if row.rate_key:
            median = latency_cell(summary, row.rate_key)
            cells = [latency_cell(figures, row.rate_key, run_rate=True) for figures in per_run]
        else:
            median = _number(value, row.digits)
            cells = [_run_cell(figures.get(row.metric), row, run) for figures, run in zip(per_run, runs, strict=True)]
        table.add_row(row.label, target, median, verdict, *cells)
    return table


def hop_rate_key(rate_keys: Sequence[str]) -> str | None:
    """The rate whose hop latencies are shown: the one p99 is judged at, else the first."""
    return P99_RATE.key if P99_RATE.key in rate_keys else next(iter(rate_keys), None)


def where_the_time_goes(summary: Mapping[str, float | None], rate_keys: Sequence[str]) -> Table:
    """Per service, medians: how fast its stage went in the burst, the CPU it used doing that, and
    the latency it added at a paced rate. The slowest stage, or a service near 1.0 core, is what
    limits the pipeline."""
    table = Table(title="where the time goes (medians)")
    paced = hop_rate_key(rate_keys) or ""
    paced_label = rate_label(paced, summary.get(latency_metric(paced, "rate_per_s")))
    for header in (
        "stage (moved by)",
        "burst: stage rx/s",
        "CPU cores",
        "CPU ms/rx",
        f"at {paced_label}: hop p50 ms",
        "hop p99 ms",
    ):
        table.add_column(header, justify="left" if header.startswith("stage") else "right")
    for stage in STAGES:
        owner = STAGE_OWNERS[stage]
        is_process = owner in SERVICES  # the last stage is the simulated couriers' and the courier service's
        table.add_row(
            f"{stage} ({owner})",
            _number(summary.get(f"stage_per_s.{stage}"), 1),
            _number(summary.get(f"cpu_cores.{owner}"), 2) if is_process else "",
            _number(summary.get(f"cpu_ms_per_rx.{owner}"), 2) if is_process else "",
            _number(summary.get(latency_metric(paced, f"hop_p50_ms.{stage}")), 1),
            _number(summary.get(latency_metric(paced, f"hop_p99_ms.{stage}")), 1),
        )
    for name in (*INFRASTRUCTURE, BENCH_PROCESS):
        table.add_row(
            f"[dim]{name}[/]",
            "",
            _number(summary.get(f"cpu_cores.{name}"), 2),
            _number(summary.get(f"cpu_ms_per_rx.{name}"), 2),
            "",
            "",
        )
    return table


def where_the_records_go(summary: Mapping[str, float | None]) -> Table:
    """Per consumer group, medians per prescription of the burst: the records delivered to it,
    those its handler ignores, and the database round trips its handlers sent."""
    table = Table(title="where the records and round trips go (medians per prescription)")
    for header in ("consumer group", "records delivered", "ignored", "round trips", ""):
        table.add_column(header, justify="left" if header == "consumer group" else "right")
    groups = {name.split(".", 1)[1] for name in summary if name.startswith(("records_delivered.", "round_trips."))}
    for group in sorted(groups, key=lambda g: (g not in PATH_TO_DISPATCH, g.startswith("("), g)):
        table.add_row(
            group,
            _number(summary.get(f"records_delivered.{group}"), 2),
            _number(summary.get(f"records_ignored.{group}"), 2),
            _number(summary.get(f"round_trips.{group}"), 2),
            "[dim]on the path to dispatch[/]" if group in PATH_TO_DISPATCH else "",
        )
    return table


#: Figures that a run measured over only part of what it set out to (a timeout hit).
PARTIAL = {
    "throughput_per_s": lambda run: run.throughput is not None and not run.throughput.complete,
    "relay_per_s": lambda run: run.relay is not None and not run.relay.complete,
    "stored_relay_per_s": lambda run: run.stored_relay is not None and not run.stored_relay.relay.complete,
    "database_ms_per_write": lambda run: run.stored_relay is not None and not run.stored_relay.relay.complete,
    "writes_per_rx": lambda run: bool(run.writes_per_prescription) and not run.writes_complete,
    "round_trips_all": lambda run: bool(run.round_trips_per_prescription) and not run.writes_complete,
    "records_delivered": lambda run: bool(run.records_per_prescription) and not run.writes_complete,
    "paced_round_trips_all": lambda run: (
        bool(run.paced_round_trips_per_prescription) and not run.paced_counters_complete
    ),
}


def _run_cell(value: float | None, row: Row, run: RunResult) -> str:
    partial = PARTIAL.get(row.metric, lambda _: False)(run)
    return _number(value, row.digits) + (" [red](incomplete)[/]" if partial else "")
