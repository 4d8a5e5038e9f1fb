"""`python -m services.ops.chaos`: a throw-away dev stack on free ports, one chaos run on it, the figures."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from ..devstack import DevStack, free_port
from .render import render
from .run import run_chaos


def main(
    prescriptions: int = typer.Option(2000, help="How many prescriptions the hospital publishes"),
    rate: float = typer.Option(40.0, help="Prescriptions per second"),
    kill_min: float = typer.Option(3.0, help="Least seconds between two kills"),
    kill_max: float = typer.Option(6.0, help="Most seconds between two kills"),
    seed: int = typer.Option(7, help="Seed of the county, the couriers and the killer"),
    settle_timeout: float = typer.Option(600.0, help="How long to wait for the system to settle after the kills"),
    report_json: Path | None = typer.Option(None, help="Also write the report to this JSON file"),
    keep: bool = typer.Option(False, help="Keep the temporary stack directory (logs) even if all went well"),
) -> None:
    """Bring up a throw-away dev stack on free ports, run the chaos test on it, print the figures."""
    console = Console()
    home = Path(tempfile.mkdtemp(prefix="pharmacy-chaos-"))
    kafka_port = free_port()
    stack = DevStack(home=home, kafka_port=kafka_port, mongo_port=free_port(taken={kafka_port}))
    console.print(f"dev stack in {home} (broker {stack.bootstrap}, database {stack.mongo_url})")
    stack.start_infra()
    try:
        report = asyncio.run(
            run_chaos(
                stack,
                prescriptions=prescriptions,
                kill_every_s=(kill_min, kill_max),
                seed=seed,
                rate=rate,
                settle_timeout_s=settle_timeout,
                progress=lambda line: console.print(f"[dim]{line}[/]"),
            )
        )
    finally:
        stack.stop_all()
    render(report, console)
    if report_json is not None:
        report_json.write_text(json.dumps(report.to_json(), indent=2, default=str))
    if report.violations() or keep:
        console.print(f"logs kept in {stack.logs}")
        raise typer.Exit(1 if report.violations() else 0)
    shutil.rmtree(home, ignore_errors=True)


app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
