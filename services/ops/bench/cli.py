"""`python -m services.ops.bench`: the command line."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console

from .interrupts import interrupt_on_sigterm
from .phases import run_once
from .render import results_table, where_the_records_go, where_the_time_goes
from .report import build_report, machine_info, write_outputs
from .results import (
    DEFAULT_PACED_S,
    HALF,
    MIN_PACED_PRESCRIPTIONS,
    P99_RATE,
    P99_TARGET,
    RSS_TARGET,
    THROUGHPUT_TARGET,
    BenchOptions,
    PacedRate,
    RunResult,
)
from .screen import BenchScreen


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE")
        env[name] = value
    return env


def parse_rates(text: str) -> tuple[PacedRate, ...]:
    """The paced rates of `--rates` (e.g. "5,20,half"), in the order their phases run."""
    rates: list[PacedRate] = []
    for item in text.split(","):
        word = item.strip().lower().removesuffix("/s")
        if word == HALF:
            rate = PacedRate()
        else:
            try:
                per_s = float(word)
            except ValueError:
                raise typer.BadParameter(
                    f"{item.strip()!r} is neither a rate per second nor {HALF!r} (e.g. 5,20,half)", param_hint="--rates"
                ) from None
            if not math.isfinite(per_s) or per_s < 0.1:
                raise typer.BadParameter(f"{item.strip()!r}: a rate is at least 0.1/s", param_hint="--rates")
            rate = PacedRate(per_s)
        if rate in rates:
            raise typer.BadParameter(f"{rate.key} is listed twice", param_hint="--rates")
        rates.append(rate)
    return tuple(rates)


def main(
    count: int = typer.Option(3000, min=1, help="Prescriptions published at once for the throughput figure"),
    timeout: float = typer.Option(
        120.0,
        min=1,
        help="How long a phase waits after its last submission; a prescription not dispatched "
        "within this many seconds of its submission is missing",
    ),
    rates: str = typer.Option(
        "5,20,half",
        help=f"Paced rates for the latency figures, comma-separated, each a phase on a fresh stack: submissions "
        f"per second, or {HALF} (half the throughput this run measured, to 0.1/s, at least 0.5/s). "
        f"p99 is held to its target at {P99_RATE.key}",
    ),
    rate: float | None = typer.Option(None, min=0.1, help="Deprecated: the same as --rates RATE"),
    paced_seconds: float | None = typer.Option(
        None,
        min=0.1,
        help=f"How long each paced submission lasts (default: {DEFAULT_PACED_S:g} s, and longer at rates under "
        f"{MIN_PACED_PRESCRIPTIONS / DEFAULT_PACED_S:g}/s, so that each rate submits at least "
        f"{MIN_PACED_PRESCRIPTIONS} prescriptions; given, it holds for every rate)",
        show_default=False,
    ),
    runs: int = typer.Option(3, min=1, help="Runs; medians are reported"),
    relay_messages: int = typer.Option(30_000, min=0, help="Messages through the bare relay (0: skip it)"),
    stored_relay_messages: int = typer.Option(
        6_000, min=0, help="Messages through the stored relay, which writes each at every hop (0: skip it)"
    ),
    warmup: int = typer.Option(20, min=0, help="Prescriptions dispatched before each phase's clock starts"),
    instances: int = typer.Option(1, min=1, max=4, help="Processes per service"),
    env: list[str] = typer.Option(
        [], "--env", help="KEY=VALUE for the service processes, repeatable, e.g. PHARMACY_KAFKA_LINGER_MS=2"
    ),
    output: Path = typer.Option(Path("bench-results/bench.json"), help="Where the figures go (JSON)"),
    plot: Path = typer.Option(Path("bench-results/latency.png"), help="Where the latency plot goes (PNG)"),
    home: Path = typer.Option(Path(".devstack/bench"), help="Dev stack homes (logs, database) of the phases"),
    seed: int = typer.Option(5000, min=0, max=9000, help="Seed of the prescriptions (ids RX-<seed>-<n>)"),
) -> None:
    """Throughput, latency at paced rates, memory of the pipeline on the dev stack, and the relay ceilings."""
    # Piped into a file or `tee`, rich would assume 80 columns and fold every table row in two.
    console = Console(width=None if sys.stdout.isatty() else 132)
    if rate is not None:
        console.print(f"[yellow]--rate is deprecated[/]: measuring at --rates {rate:g} only")
    options = BenchOptions(
        count,
        (PacedRate(rate),) if rate is not None else parse_rates(rates),
        paced_seconds,
        runs,
        timeout,
        relay_messages,
        stored_relay_messages,
        warmup,
        instances,
        parse_env(env),
        home,
        seed,
    )
    screen = BenchScreen(console)
    interrupt_on_sigterm()
    runs_measured: list[RunResult] = []  # an interrupted run is reported with what it measured
    interrupted = False
    try:
        with screen.progress:
            listed_rates = ", ".join(paced.key for paced in options.rates)
            screen.step(
                f"{runs} run(s) of {1 + len(options.rates)} phases (throughput, then latency at {listed_rates}), each "
                f"phase on a fresh dev stack with prescription ids of its own; "
                f"targets: {THROUGHPUT_TARGET}, p99 {P99_TARGET} at {P99_RATE.key}, {RSS_TARGET} per service"
            )
            for number in range(1, runs + 1):
                runs_measured.append(RunResult(number))
                run_once(runs_measured[-1], options, screen)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]interrupted[/]: stacks stopped; reporting what was measured")
    machine = machine_info()
    report = build_report(runs_measured, options, machine)
    if runs_measured:
        rate_keys = report["options"]["rates"]
        console.print(results_table(runs_measured, report["medians"], machine, rate_keys))
        console.print(where_the_time_goes(report["medians"], rate_keys))
        console.print(where_the_records_go(report["medians"]))
    for path in write_outputs(runs_measured, report, output, plot):
        console.print(f"written: [bold]{path}[/]")
    if interrupted:
        raise typer.Exit(130)


app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(main)
