"""The `pharmacy dlq` commands (typer): `list`, `show` and `replay`."""

from __future__ import annotations

from collections.abc import Sequence

import typer
from aiokafka.structs import RecordMetadata
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from services.runtime.settings import RuntimeSettings

from ..render import print_json
from ..running import console, run, settings_from_env
from .letters import DeadLetter, dead_letter_topic
from .reading import read_dead_letter, read_dead_letters
from .render import count_of, letters_document, letters_view, print_letter, printable
from .replay_log import REPLAYS_COLLECTION, ReplayRecord, operator, replay_records, with_replay_log
from .replaying import NotRecordedError, replay

_stderr = Console(stderr=True)

app = typer.Typer(
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="For operators: list, show and replay dead letters (the <topic>.dlq topics).",
)


def _dead_letter_topic_param(name: str) -> str:
    try:
        return dead_letter_topic(name)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _records_or_warning(
    settings: RuntimeSettings, letters: Sequence[DeadLetter], warn: Console = console
) -> dict[str, ReplayRecord] | None:
    """For the commands that only look: the replay records, or a warning and None if the database
    cannot be reached (the letters themselves are still worth seeing)."""
    try:
        return run(replay_records(settings, letters))
    except PyMongoError as error:
        warn.print(
            Text(
                f"replay records ({REPLAYS_COLLECTION}) unavailable, not shown: {printable(str(error), 200)}",
                style="yellow",
            )
        )
        return None


@app.command("list")
def list_command(
    topic: str | None = typer.Option(None, "--topic", help="Only this topic's dead letters (original or .dlq name)"),
    as_json: bool = typer.Option(False, "--json", help="The letters and their replays as one JSON document"),
) -> None:
    """Every dead letter, or one topic's, oldest first, and whether (and when) each was replayed:
    a table where it fits the terminal, else a few lines per letter."""
    names = [_dead_letter_topic_param(topic)] if topic else None
    settings = settings_from_env()
    letters = run(read_dead_letters(settings, names))
    if as_json:
        # A warning that the records are unreadable goes to stderr: stdout stays one JSON document.
        records = _records_or_warning(settings, letters, warn=_stderr) if letters else {}
        print_json(letters_document(letters, records))
        return
    if not letters:
        console.print(f"no dead letters on {names[0] if names else 'any dead-letter topic'}")
        return
    console.print(letters_view(letters, _records_or_warning(settings, letters)))


@app.command()
def show(
    dlq_topic: str = typer.Argument(..., metavar="DLQ_TOPIC", help="The dead-letter topic (or its original topic)"),
    partition: int = typer.Argument(..., min=0, metavar="PARTITION"),
    offset: int = typer.Argument(..., min=0, metavar="OFFSET"),
) -> None:
    """One dead letter: every header, the value, and every replay of it."""
    name = _dead_letter_topic_param(dlq_topic)
    settings = settings_from_env()
    letter = run(read_dead_letter(settings, name, partition, offset))
    if letter is None:
        console.print(f"no dead letter at {escape(name)}:{partition}:{offset}")
        raise typer.Exit(1)
    print_letter(letter)
    records = _records_or_warning(settings, [letter])
    if records is not None:
        record = records.get(letter.position)
        if record is None:
            console.print("not replayed")
        for replayed in record.replays if record else ():
            console.print(Text(f"replayed {printable(replayed.describe())}", style="green"))


@app.command("replay")
def replay_command(
    dlq_topic: str = typer.Argument(..., metavar="DLQ_TOPIC", help="The dead-letter topic (or its original topic)"),
    partition: int | None = typer.Argument(None, min=0, metavar="PARTITION"),
    offset: int | None = typer.Argument(None, min=0, metavar="OFFSET"),
    every: bool = typer.Option(False, "--all", help="Every dead letter of the topic not replayed before"),
    reason: str | None = typer.Option(None, help="With --all: only dead letters with this dlq.reason"),
    again: bool = typer.Option(
        False, "--again", help="Also replay letters already replayed (each new replay is recorded too)"
    ),
    by: str | None = typer.Option(None, "--by", help="Who is replaying, for the record (default: your login name)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed and skipped, send nothing"),
) -> None:
    """Publish dead letters again to their original topic: same bytes, key and headers.

    Either one letter (DLQ_TOPIC PARTITION OFFSET) or `DLQ_TOPIC --all [--reason R]`.

    Every replay is recorded in the MongoDB collection `dlq_replays` (`_id` =
    "<dlq topic>:<partition>:<offset>": when, by whom, where it landed), and letters recorded
    there are skipped next time unless you give --again. Letters go one at a time, each recorded
    right after the broker confirmed it, so a crash in between can replay at worst that one
    letter twice (the services' handlers are idempotent: a second copy changes nothing).
    """
    name = _dead_letter_topic_param(dlq_topic)
    settings = settings_from_env()
    if every:
        if partition is not None or offset is not None:
            raise typer.BadParameter("give either PARTITION OFFSET or --all, not both")
        letters = [
            letter for letter in run(read_dead_letters(settings, [name])) if reason is None or letter.reason == reason
        ]
    else:
        if partition is None or offset is None:
            raise typer.BadParameter("give PARTITION and OFFSET, or --all")
        if reason is not None:
            raise typer.BadParameter("--reason only goes with --all")
        found = run(read_dead_letter(settings, name, partition, offset))
        if found is None:
            console.print(f"no dead letter at {escape(name)}:{partition}:{offset}")
            raise typer.Exit(1)
        letters = [found]
    if not letters:
        console.print(
            f"no dead letters to replay on {escape(name)}"
            + (f" with reason {escape(printable(reason))}" if reason else "")
        )
        return
    try:
        targets = [letter.replay_target() for letter in letters]
    except ValueError as error:
        console.print(Text(f"refusing to replay: {printable(str(error))}", style="red"))
        raise typer.Exit(1) from None

    try:
        records = run(replay_records(settings, letters))
    except PyMongoError as error:
        console.print(
            Text(
                f"refusing to replay: the replay records ({REPLAYS_COLLECTION}) cannot be read, so neither "
                f"skipping nor recording would work: {printable(str(error), 200)}",
                style="red",
            )
        )
        raise typer.Exit(1) from None
    skipped = [] if again else [letter for letter in letters if letter.position in records]
    skipping = {letter.position for letter in skipped}
    chosen = [
        (letter, target) for letter, target in zip(letters, targets, strict=True) if letter.position not in skipping
    ]
    verb = "would skip" if dry_run else "skipped"
    for letter in skipped:
        console.print(Text(f"{verb} {letter.position}: {printable(records[letter.position].describe())}"))
    skipped_note = f", {len(skipped)} skipped: already replayed (--again replays them anyway)" if skipped else ""

    if dry_run:
        for letter, target in chosen:
            again_note = f", {printable(records[letter.position].describe())}" if letter.position in records else ""
            console.print(
                Text(f"would replay {letter.position} → {target}  ({printable(letter.reason) or '?'}{again_note})")
            )
        console.print(f"dry run: {count_of(chosen, 'dead letter')} would be replayed{skipped_note}, nothing sent")
        return

    def report(letter: DeadLetter, landed: RecordMetadata) -> None:
        console.print(
            Text(
                f"replayed {letter.position} → {landed.topic}:{landed.partition}:{landed.offset}"
                f"  ({printable(letter.reason) or '?'}, key {printable(letter.key, 40) or '(none)'})"
            )
        )

    who = by or operator()
    try:
        sending = [letter for letter, _ in chosen]
        count = run(
            with_replay_log(settings, lambda log: replay(settings, sending, on_replayed=report, log=log, by=who))
        )
    except NotRecordedError as error:
        console.print(Text(f"not recorded: {printable(str(error))}", style="red"))
        raise typer.Exit(1) from None
    console.print(f"{count} dead letter{'s' if count != 1 else ''} replayed{skipped_note}")
