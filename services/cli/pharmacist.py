"""`pharmacy review`: the pharmacist's commands.

Decisions and cancellations go out as messages on prescription.reviews.v1, the way every user
reaches the system; the queue and the reference data are the prescription service's own storage.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from pharmacy_contracts.envelope import utc_now
from pharmacy_contracts.prescription import CancellationOrdered, ReviewDecided
from services.prescription.domain import Interaction, PrescriberRecord, Verdict
from services.prescription.storage import PrescriptionStorage
from services.runtime.mongo import client_for

from . import bus
from .running import console, run, settings_from_env

T = TypeVar("T")

app = typer.Typer(
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="For pharmacists: the review queue, approve or reject holds, cancel, and the prescriber and "
    "interaction tables the checks use.",
)


async def _with_storage(use: Callable[[PrescriptionStorage], Awaitable[T]]) -> T:
    settings = settings_from_env()
    client = client_for(settings)
    try:
        return await use(PrescriptionStorage(client[settings.mongo_database]))
    finally:
        client.close()


# --- the review queue -----------------------------------------------------------------------------


def _age(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def review_table(held: list[Verdict], now: datetime) -> Table:
    table = Table(title=f"review queue: {len(held)} held")
    for column in ("prescription", "patient", "reasons", "held for", "escalated", "expires in"):
        table.add_column(column)
    for verdict in held:
        # Reasons carry names from upstream and staff: escaped, never read as markup.
        reasons = "\n".join(f"[bold]{r.code}[/] {escape(r.message)}" for r in verdict.reasons)
        table.add_row(
            verdict.prescription_id,
            verdict.patient_id or "",
            reasons,
            _age(now - verdict.held_at) if verdict.held_at else "?",
            "[red]yes[/]" if verdict.escalated else "no",
            _age(verdict.expires_at - now) if verdict.expires_at else "?",
        )
    return table


@app.command("list")
def list_held() -> None:
    """Held prescriptions, oldest first, with their reasons and how long they have waited."""
    held = run(_with_storage(lambda storage: storage.held_verdicts()))
    console.print(review_table(held, utc_now()))


# --- decisions --------------------------------------------------------------------------------------


def _decide(prescription_id: str, decision: Literal["approve", "reject"], pharmacist: str, note: str) -> None:
    try:
        message = ReviewDecided(
            correlation_id=prescription_id,
            producer="pharmacist-cli",
            prescription_id=prescription_id,
            decision=decision,
            pharmacist_id=pharmacist,
            note=note,
        )
    except ValidationError as error:
        console.print(f"[red]not a valid decision:[/] {escape(str(error))}")
        raise typer.Exit(2) from None
    run(bus.publish(settings_from_env(), message))
    console.print(
        f"{decision} of [bold]{prescription_id}[/] by {pharmacist} sent as message {message.message_id}; "
        f"a prescription that is not held is refused (see `pharmacy dlq`)"
    )


@app.command()
def approve(
    prescription_id: str,
    pharmacist: str = typer.Option(..., help="Your pharmacist id"),
    note: str = typer.Option(..., help="Why it is safe to dispense"),
) -> None:
    """Release a held prescription: it is approved and goes on to stock and delivery."""
    _decide(prescription_id, "approve", pharmacist, note)


@app.command()
def reject(
    prescription_id: str,
    pharmacist: str = typer.Option(..., help="Your pharmacist id"),
    note: str = typer.Option(..., help="Why it must not be dispensed"),
) -> None:
    """Reject a held prescription (reason PHARMACIST_REJECTED with your note)."""
    _decide(prescription_id, "reject", pharmacist, note)


@app.command()
def cancel(
    prescription_id: str,
    pharmacist: str = typer.Option(..., help="Your pharmacist id"),
    reason: str = typer.Option(..., help="Why it is withdrawn"),
) -> None:
    """Withdraw a held or approved prescription at any stage; stock and couriers undo what they did."""
    try:
        message = CancellationOrdered(
            correlation_id=prescription_id,
            producer="pharmacist-cli",
            prescription_id=prescription_id,
            pharmacist_id=pharmacist,
            reason=reason,
        )
    except ValidationError as error:
        console.print(f"[red]not a valid cancellation:[/] {escape(str(error))}")
        raise typer.Exit(2) from None
    run(bus.publish(settings_from_env(), message))
    console.print(f"cancellation of [bold]{prescription_id}[/] by {pharmacist} sent as message {message.message_id}")


# --- reference data ---------------------------------------------------------------------------------


def _records(file: Path, model: type[Any]) -> list[Any]:
    try:
        return [model.model_validate(entry) for entry in json.loads(file.read_text())]
    except (ValueError, ValidationError) as error:
        console.print(f"[red]{file} is not a JSON list of valid records:[/] {escape(str(error))}")
        raise typer.Exit(2) from None


@app.command("load-prescribers")
def load_prescribers(file: Path = typer.Argument(..., exists=True, help="A JSON list of prescribers")) -> None:
    """Load or update the prescriber registry (licence number, licensed until, suspended, remote expert)."""
    records: list[PrescriberRecord] = _records(file, PrescriberRecord)

    async def save(storage: PrescriptionStorage) -> None:
        for record in records:
            await storage.save_prescriber(record)

    run(_with_storage(save))
    console.print(f"{len(records)} prescribers loaded")


@app.command("load-interactions")
def load_interactions(file: Path = typer.Argument(..., exists=True, help="A JSON list of interactions")) -> None:
    """Load or update the interaction table (pairs of ingredient classes with a severity)."""
    interactions: list[Interaction] = _records(file, Interaction)

    async def save(storage: PrescriptionStorage) -> None:
        for interaction in interactions:
            await storage.save_interaction(interaction)

    run(_with_storage(save))
    console.print(f"{len(interactions)} interactions loaded")


if __name__ == "__main__":
    app()
