"""`pharmacy review`: the pharmacist's commands.

Decisions and cancellations go out as messages on prescription.reviews.v1, the way every user
reaches the system; the queue and the reference data are the prescription service's own storage.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pharmacy_contracts import topics
from pharmacy_contracts.consultation import PrescriptionItem
from pharmacy_contracts.envelope import utc_now
from pharmacy_contracts.prescription import CancellationOrdered, PrescriptionHeld, ReviewDecided, ReviewEscalated
from services.prescription.domain import Interaction, MedicationEntry, PrescriberRecord, Verdict
from services.prescription.storage import PrescriptionStorage
from services.runtime import credentials
from services.runtime.mongo import client_for

from . import bus
from .render import Fitted, listing, print_json
from .running import console, run, say_answer, settings_from_env

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


def review_table(held: list[Verdict], now: datetime, *, wide: bool = False) -> Fitted:
    """The queue, oldest first: the prescription id (the next command needs it whole), how long it
    has waited, the time left (and whether it escalated), the reasons; `wide`: the patient and the
    deadlines as times too."""
    table = listing(f"review queue: {len(held)} held")
    table.add_column("prescription", no_wrap=True)
    if wide:
        table.add_column("patient", no_wrap=True)
    table.add_column("held for", justify="right", no_wrap=True)
    table.add_column("expires in", justify="right", no_wrap=True)
    if wide:
        table.add_column("escalates (UTC)", no_wrap=True)
        table.add_column("expires (UTC)", no_wrap=True)
    table.add_column("reasons", overflow="fold")
    for verdict in held:
        # Reasons carry names from upstream and staff: escaped, never read as markup.
        reasons = "\n".join(f"[bold]{r.code}[/] {escape(r.message)}" for r in verdict.reasons)
        left = _age(verdict.expires_at - now) if verdict.expires_at else "?"
        row = [verdict.prescription_id]
        if wide:
            row.append(verdict.patient_id or "")
        row += [_age(now - verdict.held_at) if verdict.held_at else "?", left]
        if verdict.escalated:
            row[-1] += "\n[red]escalated[/]"
        if wide:
            row += [f"{at:%Y-%m-%d %H:%M}" if at else "?" for at in (verdict.escalate_at, verdict.expires_at)]
        table.add_row(*row, reasons)
    return Fitted(table)


def review_document(held: list[Verdict]) -> list[dict[str, Any]]:
    """`review list --json`: each held prescription with its reasons and deadlines."""
    fields = {"prescription_id", "patient_id", "reasons", "held_at", "escalate_at", "expires_at", "escalated"}
    return [verdict.model_dump(mode="json", include=fields) for verdict in held]


@app.command("list")
def list_held(
    wide: bool = typer.Option(False, "--wide", help="Also the patient, and when each escalates and expires"),
    as_json: bool = typer.Option(False, "--json", help="The queue as one JSON document"),
) -> None:
    """Held prescriptions, oldest first, with their reasons and how long they have waited."""
    held = run(_with_storage(lambda storage: storage.held_verdicts()))
    if as_json:
        print_json(review_document(held))
        return
    console.print(review_table(held, utc_now(), wide=wide))


def age_on(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _course(item: PrescriptionItem) -> str:
    return "long-term" if item.chronic else "acute"


def _days(item: PrescriptionItem) -> str:
    if item.days_supply is None:
        return "not stated"
    said = {"prescribed": "", "dosage": " (from the dosage)", "formulary": " (formulary default)"}
    return f"{item.days_supply}{said.get(item.days_supply_basis or 'prescribed', '')}"


def review_detail(
    verdict: Verdict,
    names: Mapping[str, str],
    today: date,
    active: Sequence[MedicationEntry] = (),
) -> Group:
    """One held prescription as a pharmacist decides on it: who, what, why it is held, the patient's
    other active medicines, and what the sender's bundle said beyond the lines (units,
    substitution, notes, controlled drugs, endorsements)."""
    prescription = verdict.prescription
    parts: list[Any] = [Text(f"{verdict.prescription_id}: held", style="bold")]
    if prescription is None:
        parts.append(Text("no prescription kept with this verdict (it is not held)"))
        return Group(*parts)
    patient, prescriber = prescription.patient, prescription.prescriber
    registry = f"{prescriber.licence_registry} " if prescriber.licence_registry else "licence "
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column(overflow="fold")
    facts.add_row("patient", f"{patient.patient_id}, {age_on(patient.date_of_birth, today)} years")
    facts.add_row("allergies", ", ".join(patient.allergies) or "none recorded")
    medicines = [
        f"{names.get(e.drug_code, e.drug_code)} until {e.supply_ends_at:%Y-%m-%d} ({e.prescription_id})" for e in active
    ]
    facts.add_row("active medicines", "\n".join(medicines) or "none on record here")
    facts.add_row("diagnosis", ", ".join(prescription.diagnosis_codes) or "none given")
    facts.add_row("prescriber", f"{prescriber.name}, {registry}{prescriber.licence_number}")
    facts.add_row("valid", f"{prescription.issued_at:%Y-%m-%d} to {prescription.valid_until:%Y-%m-%d}")
    parts.append(facts)
    lines = Table(title="lines", title_justify="left", expand=False)
    lines.add_column("#", justify="right", no_wrap=True)
    # A drug's name and the days' basis are words: they wrap, each code and number staying whole.
    lines.add_column("drug", overflow="fold")
    lines.add_column("quantity", no_wrap=True)
    lines.add_column("days", overflow="fold")
    lines.add_column("course", no_wrap=True)
    lines.add_column("dosage", overflow="fold")
    remarks: list[Text] = []
    for number, item in enumerate(prescription.items, 1):
        drug = names.get(item.drug_code)
        lines.add_row(
            str(number),
            f"{item.drug_code} {drug}" if drug else item.drug_code,
            f"{item.quantity} {item.quantity_unit or 'units'}",
            _days(item),
            _course(item),
            item.dosage_text,
        )
        said = [
            "no substitution: exactly this product" if not item.substitution_allowed else "",
            f"controlled drug: {item.controlled_drug}" if item.controlled_drug else "",
            f"endorsed: {', '.join(item.endorsements)}" if item.endorsements else "",
            f"note: {item.note_to_pharmacist}" if item.note_to_pharmacist else "",
        ]
        remarks += [Text(f"  {number}. {remark}") for remark in said if remark]
    parts.append(Fitted(lines))
    if remarks:
        parts.append(Text("how to dispense", style="dim"))
        parts += remarks
    parts.append(Text("held for", style="dim"))
    parts += [Text(f"  {r.code}: {r.message}") for r in verdict.reasons]
    if prescription.mapping_notes:
        parts.append(Text("from the sender's FHIR bundle", style="dim"))
        parts += [Text(f"  {note}") for note in prescription.mapping_notes]
    return Group(*parts)


@app.command()
def show(prescription_id: str) -> None:
    """One held prescription in full: patient, prescriber, lines with units and days, how to dispense
    them, why it is held, and what the mapping of the sender's bundle says."""

    now = utc_now()

    async def read(storage: PrescriptionStorage) -> tuple[Verdict | None, dict[str, str], list[MedicationEntry]]:
        verdict = await storage.verdict_of(prescription_id)
        prescription = verdict.prescription if verdict else None
        history = await storage.history_of(prescription.patient.patient_id) if prescription else None
        active = [e for e in history.others_than(prescription_id) if e.active_at(now)] if history else []
        codes = [i.drug_code for i in prescription.items] if prescription else []
        entries = await storage.formulary_entries([*codes, *(e.drug_code for e in active)])
        return verdict, {code: entry.name for code, entry in entries.items()}, active

    verdict, names, active = run(_with_storage(read))
    if verdict is None:
        console.print(f"[red]{escape(prescription_id)}[/]: the prescription service has no verdict for it yet")
        raise typer.Exit(1)
    console.print(review_detail(verdict, names, now.date(), active))


def held_line(held: PrescriptionHeld) -> str:
    """A new hold as `review watch` announces it: what, why, by when, and the command to look."""
    codes = ", ".join(dict.fromkeys(r.code for r in held.reasons))
    rx = held.prescription_id
    return (
        f"HELD {rx} ({codes}); escalates {held.escalate_at:%H:%M} UTC, expires {held.expires_at:%Y-%m-%d %H:%M} UTC: "
        f"pharmacy review show {rx}"
    )


@app.command()
def watch(
    from_beginning: bool = typer.Option(False, "--from-beginning/--new-only", help="Earlier holds too"),
) -> None:
    """Announce each prescription held for review as it happens (and each escalation), with its
    reasons and deadline; `pharmacy review show RX` then shows it in full."""

    async def feed() -> None:
        decisions = topics.PRESCRIPTION_DECISIONS
        async for _, message, _ in bus.follow(settings_from_env(), decisions, from_beginning=from_beginning):
            if isinstance(message, PrescriptionHeld):
                console.print(Text(held_line(message)))
            elif isinstance(message, ReviewEscalated):
                rx, expires = message.prescription_id, f"{message.expires_at:%Y-%m-%d %H:%M} UTC"
                console.print(Text(f"ESCALATED {rx}: still held, expires {expires}", style="red"))

    run(feed())


@app.command()
def token(
    pharmacist_id: str = typer.Argument(..., help="The pharmacist's id"),
    issue: int = typer.Option(
        1, "--issue", min=1, max=credentials.MAX_ISSUE, help="Which of their tokens: 2 to rotate the first"
    ),
) -> None:
    """The token that signs one pharmacist's decisions and cancellations: they keep it as
    PHARMACY_PHARMACIST_TOKEN in their shell. Made with the prescription service's
    PHARMACY_PHARMACIST_KEY (or the local dev stack's). To rotate one pharmacist's token, issue the
    next (`--issue 2`), then revoke the old one on the prescription service:
    PHARMACY_PHARMACIST_KEY_FLOOR='{"P-ID": 2}'. Changing the key revokes every pharmacist's token."""
    key = credentials.secret_of(settings_from_env().pharmacist_key)
    if key is None:
        console.print("[red]PHARMACY_PHARMACIST_KEY is not set:[/] set it to the prescription service's key")
        raise typer.Exit(2)
    print(credentials.pharmacist_token(key, pharmacist_id, issue))


# --- decisions --------------------------------------------------------------------------------------


def _send_and_answer(message: ReviewDecided | CancellationOrdered, what: str, pharmacist: str) -> None:
    """Signed with the pharmacist's token (PHARMACY_PHARMACIST_TOKEN); the service's answer printed."""
    settings = settings_from_env()
    wait = settings.answer_wait_s
    if wait <= 0:
        run(bus.publish(settings, message))
        console.print(f"{escape(what)} sent as message {message.message_id}")
        return
    say_answer(run(bus.ask(settings, message, topics.PRESCRIPTION_ANSWERS, pharmacist, wait)), waited_s=wait, what=what)


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
    _send_and_answer(message, f"{decision} of {prescription_id} by {pharmacist}", pharmacist)


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
    _send_and_answer(message, f"cancellation of {prescription_id} by {pharmacist}", pharmacist)


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
