"""Every table of the `pharmacy` tool and of the demo, at 80 columns (issue 15): every id, number and
date appears whole, never cut to `WH-…` nor folded across lines. A listing shows its essential
columns (`--wide`: all of them) and draws a row that does not fit as a block of lines; `--json`
gives scripts one JSON document. Nothing here needs a running stack: the commands read fakes."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console, RenderableType
from typer.testing import CliRunner

from pharmacy_contracts import topics
from pharmacy_contracts.prescription import Reason
from pharmacy_contracts.stages import Stage
from services.cli import main, pharmacist, warehouse_staff
from services.cli.couriers import _gazetteer, places_of, places_table
from services.cli.dlq import commands as dlq_commands
from services.cli.dlq import render as dlq_render
from services.cli.dlq.letters import DeadLetter
from services.cli.dlq.render import letters_view, print_letter
from services.cli.dlq.replay_log import Replayed, ReplayRecord
from services.cli.pharmacist import review_detail, review_table
from services.cli.render import ledger_table, stock_table
from services.consultation.domain import PrescriptionStatus
from services.inventory.domain import LedgerEntry, Warehouse
from services.ops.demo import activity_table, endings_table, progress_view
from services.prescription.domain import Verdict, VerdictState
from tests.unit.builders import item_data, make_lot, make_prescription, make_warehouse

WIDTH = 80

RX = "RX-2026-000123"
RX_OTHER = "RX-2026-000124"
PATIENT = "PAT-2026-004512"
WH = "WH-CENTRAL"
PH = "PH-NORTHFORD"
UNREGISTERED = "PH-KARA-BULAK"
LOT = "MET-24-117-NORTHFORD"
EXPIRED_LOT = "SALB-23-004-NORTHFORD"
FAR_LOT = "AML-27-002-CENTRAL"
EXPIRY = date(2028, 3, 31)  # within the 30 days of TODAY: "expires soon" goes under it
TODAY = date(2028, 3, 10)
NOW = datetime(2028, 3, 10, 12, 0, tzinfo=UTC)
DLQ = "consultation.prescriptions.v1.dlq"


def rendered(renderable: RenderableType, width: int = WIDTH) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def assert_whole(text: str, *tokens: str, width: int = WIDTH) -> None:
    """No ellipsis, no line past the width (the console would crop it), and each token on one line
    with no letter, digit or hyphen either side: neither cut short nor split across lines."""
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width, text
    for token in tokens:
        assert re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text), f"{token!r} is not whole in:\n{text}"


def header_row(text: str, *headers: str) -> bool:
    """Whether one line starts with these column headers, in order: a table, not blocks."""
    return any(line.split()[: len(headers)] == list(headers) for line in text.splitlines())


def block_line(text: str, header: str, value: str) -> bool:
    """Whether a line reads "header  value": a row drawn as a block of lines."""
    return re.search(rf"^{re.escape(header)}\s+{re.escape(value)}\s*$", text, re.MULTILINE) is not None


# --- the data: long ids, big numbers, dates -------------------------------------------------------


def warehouses() -> list[Warehouse]:
    central = make_warehouse(
        WH,
        lots={
            LOT: make_lot("MET500", 1000000, EXPIRY, reserved=1000, quarantined=1000, dispatched=1000),
            FAR_LOT: make_lot("AML5", 1000, date(2031, 12, 31)),
        },
    )
    northford = make_warehouse(
        PH, lots={EXPIRED_LOT: make_lot("SALB100", 0, date(2028, 2, 29), expired=1000, received=1000)}
    )
    return [central, northford, make_warehouse(UNREGISTERED, location=None, LEV50=1000)]


def ledger_entries() -> list[LedgerEntry]:
    def entry(minute: int, kind: str, quantity: int, source: str, target: str, **why: str) -> LedgerEntry:
        return LedgerEntry(
            entry_id=f"E-{minute}",
            message_id=f"MSG-{minute}",
            event_type="inventory.test",
            index=0,
            warehouse_id=WH,
            occurred_at=NOW + timedelta(minutes=minute),
            kind=kind,  # type: ignore[arg-type]
            lot_id=LOT,
            drug_code="MET500",
            quantity=quantity,
            source=source,  # type: ignore[arg-type]
            target=target,  # type: ignore[arg-type]
            **why,
        )

    return [
        entry(0, "received", 1000000, "outside", "available", by="Aigerim Nurlanovna", reason="opening stock count"),
        entry(1, "reserved", 1000, "available", "reserved", prescription_id=RX),
        entry(2, "dispatched", 1000, "reserved", "dispatched", prescription_id=RX),
    ]


def held_verdicts() -> list[Verdict]:
    reasons = [
        Reason(code="CONTROLLED_SUBSTANCE", message="Morphine 10 mg is a controlled substance"),
        Reason(code="MODERATE_INTERACTION", message="warfarin with ibuprofen: a risk of bleeding"),
    ]
    held = Verdict(
        prescription_id=RX,
        state=VerdictState.HELD,
        patient_id=PATIENT,
        reasons=reasons,
        held_at=NOW - timedelta(hours=3, minutes=5),
        escalate_at=NOW + timedelta(hours=1),
        expires_at=NOW + timedelta(hours=21),
        escalated=True,
    )
    return [held, held.model_copy(update={"prescription_id": RX_OTHER, "escalated": False})]


def dead_letter() -> DeadLetter:
    detail = b"1 validation error for PrescriptionSubmitted: prescription.items.0.quantity: greater than 0"
    headers = {
        "dlq.reason": b"contract_violation",
        "dlq.detail": detail,
        "dlq.topic": b"consultation.prescriptions.v1",
        "dlq.partition": b"2",
        "dlq.offset": b"1000000",
        "dlq.attempts": b"3",
        "traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    return DeadLetter(
        topic=DLQ,
        partition=0,
        offset=1000,
        timestamp_ms=int(NOW.timestamp() * 1000),
        key=RX.encode(),
        value=b'{"prescription_id": "RX-2026-000123"}',
        headers=tuple(headers.items()),
    )


def replay_records(letter: DeadLetter) -> dict[str, ReplayRecord]:
    replayed = Replayed(at=NOW, by="ops-aigul", topic="consultation.prescriptions.v1", partition=2, offset=1000001)
    return {letter.position: ReplayRecord(letter.position, letter.fingerprint, (replayed, replayed))}


# --- the tables, rendered --------------------------------------------------------------------------


def test_stock_is_a_table_at_80_columns_with_every_id_figure_and_date_whole():
    text = rendered(stock_table(warehouses(), today=TODAY))
    assert_whole(text, WH, PH, UNREGISTERED, LOT, EXPIRED_LOT, FAR_LOT, "MET500", "SALB100", "LEV50")
    assert_whole(text, "2028-03-31", "2028-02-29", "2031-12-31", "1000000", "1000", "EXPIRED", "expires soon")
    assert header_row(text, "drug", "lot", "expires", "available", "reserved", "quarantine")
    assert "(not registered)" in text


def test_wide_stock_is_a_block_per_lot_at_80_columns_and_a_table_where_it_fits():
    narrow = rendered(stock_table(warehouses(), today=TODAY, wide=True))
    assert_whole(narrow, WH, PH, LOT, EXPIRED_LOT, "2028-03-31", "2028-02-29", "1000000", "1000", "+0")
    assert block_line(narrow, "lot", LOT) and block_line(narrow, "available", "1000000")
    assert block_line(narrow, "delivered", "0") and block_line(narrow, "dispatched", "1000")
    wide = rendered(stock_table(warehouses(), today=TODAY, wide=True), width=160)
    assert_whole(wide, LOT, "1000000", width=160)
    assert header_row(wide, "drug", "lot", "expires", "available", "reserved", "quarantine", "dispatched")


def test_the_ledger_is_a_table_at_80_columns_and_wide_a_block_per_movement():
    text = rendered(ledger_table(ledger_entries()))
    assert_whole(text, LOT, WH, RX, "MET500", "2028-03-10", "12:01:00", "1000000", "999000", "1000")
    assert header_row(text, "at", "(UTC)", "movement", "units", "available")
    assert re.search(r"2028-03-10 12:01:00 +reserved +1000 +999000 +RX-2026-000123", text), text
    wide = rendered(ledger_table(ledger_entries(), wide=True))
    assert_whole(wide, LOT, RX, "1000000", "999000", "outside", "available", "dispatched")
    assert block_line(wide, "at (UTC)", "2028-03-10 12:00:00") and block_line(wide, "units", "1000000")
    assert block_line(wide, "for, by, why", "Aigerim Nurlanovna; opening stock count")


def test_the_review_queue_shows_the_prescription_id_to_type_next_whole():
    text = rendered(review_table(held_verdicts(), NOW))
    assert_whole(text, RX, RX_OTHER, "3h05m", "21h00m", "escalated", "CONTROLLED_SUBSTANCE", "MODERATE_INTERACTION")
    assert header_row(text, "prescription", "held", "for", "expires", "in", "reasons")
    wide = rendered(review_table(held_verdicts(), NOW, wide=True))
    assert_whole(wide, RX, RX_OTHER, PATIENT, "2028-03-10", "13:00", "2028-03-11", "09:00")
    assert block_line(wide, "prescription", RX) and block_line(wide, "patient", PATIENT)


def test_a_held_prescriptions_lines_keep_codes_and_quantities_whole():
    items = [
        item_data("MET500", quantity=1000, days_supply=90, dosage_text="1 tablet twice daily with meals")
        | {"chronic": True},
        item_data("AML5", quantity=1000000, days_supply=30, dosage_text="1 tablet daily in the morning"),
    ]
    prescription = make_prescription(prescription_id=RX, items=items)
    verdict = Verdict(prescription_id=RX, state=VerdictState.HELD, prescription=prescription)
    text = rendered(review_detail(verdict, {"MET500": "Metformin 500 mg", "AML5": "Amlodipine 5 mg"}, TODAY))
    assert_whole(text, RX, "MET500", "AML5", "1000", "1000000", "90", "30", "long-term", "acute")
    assert_whole(text, f"{prescription.issued_at:%Y-%m-%d}", f"{prescription.valid_until:%Y-%m-%d}")


def test_the_gazetteer_keeps_ids_and_coordinates_whole():
    places = places_of(_gazetteer())
    text = rendered(places_table(places))
    assert_whole(text, *(place.place_id for place in places))
    assert_whole(text, *(f"{place.latitude:.4f}, {place.longitude:.4f}" for place in places))
    assert header_row(text, "id", "kind", "where", "names")


def test_dead_letters_are_lines_at_80_columns_and_a_table_where_the_row_fits():
    letter = dead_letter()
    narrow = rendered(letters_view([letter], replay_records(letter)))
    assert_whole(narrow, DLQ, "0:1000", "2028-03-10", "12:00:00", "contract_violation", RX)
    assert_whole(narrow, "consultation.prescriptions.v1", "2:1000000", "consultation.prescriptions.v1:2:1000001")
    assert "┃" not in narrow, "no table: it would not fit"
    wide = rendered(letters_view([letter], replay_records(letter)), width=200)
    assert_whole(wide, DLQ, "0:1000", "2028-03-10 12:00:00", "contract_violation", RX, "×2", width=200)
    assert "│ contract_violation │" in wide


def test_a_dead_letters_headers_keep_their_values_whole(monkeypatch: pytest.MonkeyPatch):
    console = Console(file=io.StringIO(), width=WIDTH, record=True, color_system=None)
    monkeypatch.setattr(dlq_render, "console", console)
    print_letter(dead_letter())
    text = console.export_text()
    assert_whole(text, f"{DLQ}:0:1000", RX, "1000000", "contract_violation", "2028-03-10")
    assert_whole(text, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def test_the_demos_live_view_keeps_states_and_counts_whole():
    counts = Counter({Stage.DELIVERED: 1000, Stage.HELD_FOR_REVIEW: 12, Stage.WAITING_FOR_COURIER: 1000000})
    feed = [f"12:00:01 reserved {WH} 1000 × MET500 for {RX} lots {LOT} (1000, exp 2028-03-31)"]
    text = rendered(progress_view(counts, 80, 80, 12.4, feed))
    assert_whole(text, "80/80", "1000", "1000000", "12", RX, LOT, WH, "2028-03-31")
    for stage in Stage:
        assert stage.value.replace("_", " ") in text, f"{stage} whole"
    assert "(nothing yet)" in rendered(progress_view(Counter(), 0, 80, 0.0, []))


def test_the_demos_summary_tables_keep_states_counts_and_stock_whole():
    delivered = PrescriptionStatus(prescription_id=RX, stage=Stage.DELIVERED, delivery_attempts=2)
    waiting = PrescriptionStatus(
        prescription_id=RX_OTHER, stage=Stage.WAITING_FOR_COURIER, why=["no courier within 50 km of PH-NORTHFORD"]
    )
    endings = rendered(endings_table([delivered, waiting, waiting.model_copy(update={"prescription_id": "RX-3"})]))
    assert_whole(endings, "delivered", "waiting_for_courier", "(not finished)", "2", "1", PH)
    activity = rendered(activity_table([("held for a pharmacist, approved", 1000), ("failed attempts: refused", 12)]))
    assert_whole(activity, "1000", "12")
    stock = rendered(stock_table(warehouses(), today=TODAY))  # as the demo's summary prints it
    assert_whole(stock, WH, LOT, "2028-03-31", "1000000")


# --- the commands, at COLUMNS=80 and with --json ---------------------------------------------------


class _Inventory:
    def __init__(self, db: Any) -> None:
        pass

    async def all_warehouses(self) -> list[Warehouse]:
        return warehouses()

    async def movements(self, warehouse_id: str, lot_id: str) -> list[LedgerEntry]:
        return ledger_entries() if (warehouse_id, lot_id) == (WH, LOT) else []


class _Prescriptions:
    async def held_verdicts(self) -> list[Verdict]:
        return held_verdicts()


class _TopicIds:
    def __init__(self, settings: Any) -> None:
        pass

    async def __call__(self, names: list[str]) -> dict[str, uuid.UUID | None]:
        return {name: TOPIC_ID if name == topics.INVENTORY_EVENTS.name else None for name in names}


TOPIC_ID = uuid.UUID("6f1f3b4e-5a2d-4c8e-9b7a-2d1e0f3c4b5a")


@pytest.fixture
def pharmacy(monkeypatch: pytest.MonkeyPatch, tmp_path: Any):
    """`pharmacy ...` at 80 columns over the fakes; returns the result (stdout and stderr apart)."""

    async def with_database(use: Any) -> Any:
        return await use(None)

    async def with_storage(use: Any) -> Any:
        return await use(_Prescriptions())

    async def read_dead_letters(settings: Any, names: Any = None) -> list[DeadLetter]:
        return [dead_letter()]

    async def records(settings: Any, letters: Any) -> dict[str, ReplayRecord]:
        return replay_records(dead_letter())

    monkeypatch.setattr(main, "with_database", with_database)
    monkeypatch.setattr(warehouse_staff, "with_database", with_database)
    monkeypatch.setattr(warehouse_staff, "InventoryStorage", _Inventory)
    monkeypatch.setattr(main, "KafkaTopicIds", _TopicIds)
    monkeypatch.setattr(pharmacist, "_with_storage", with_storage)
    monkeypatch.setattr(pharmacist, "utc_now", lambda: NOW)
    monkeypatch.setattr(dlq_commands, "read_dead_letters", read_dead_letters)
    monkeypatch.setattr(dlq_commands, "replay_records", records)
    monkeypatch.delenv("PHARMACY_GAZETTEER_FILE", raising=False)
    monkeypatch.delenv("PHARMACY_KAFKA_TRACKING_EPOCH", raising=False)
    monkeypatch.setenv("PHARMACY_DEV_HOME", str(tmp_path))

    def invoke(*arguments: str) -> Any:
        result = CliRunner().invoke(main.app, list(arguments), env={"COLUMNS": str(WIDTH)})
        assert result.exit_code == 0, result.output
        return result

    return invoke


def test_the_listing_commands_fit_80_columns(pharmacy: Any):
    assert_whole(pharmacy("warehouse", "stock").stdout, WH, PH, LOT, "2028-02-29", "1000000", "1000")
    assert_whole(pharmacy("warehouse", "stock", "--wide").stdout, WH, LOT, "1000000")
    assert_whole(pharmacy("warehouse", "ledger", WH, LOT).stdout, LOT, RX, "1000000", "999000", "2028-03-10")
    assert_whole(pharmacy("warehouse", "ledger", WH, LOT, "--wide").stdout, LOT, RX, "1000000", "999000")
    assert_whole(pharmacy("review", "list").stdout, RX, RX_OTHER, "3h05m", "21h00m")
    assert_whole(pharmacy("review", "list", "--wide").stdout, RX, RX_OTHER, PATIENT, "2028-03-11")
    assert_whole(pharmacy("dispatch", "places").stdout, "WINTER-CAMP-7", "SAXAUL-FARMS", "51.8100, 69.4000")
    assert_whole(pharmacy("dlq", "list").stdout, DLQ, "0:1000", "2:1000000", "contract_violation", RX)
    assert_whole(pharmacy("topic-ids").stdout, topics.INVENTORY_EVENTS.name, str(TOPIC_ID), "none")


def _document(result: Any) -> Any:
    assert "\x1b" not in result.stdout, "no colour"
    return json.loads(result.stdout)  # one document, nothing else on stdout


def test_every_listing_gives_scripts_one_json_document(pharmacy: Any):
    stock = _document(pharmacy("warehouse", "stock", "--json"))
    lot = next(lot for lot in stock if lot["lot_id"] == LOT)
    assert lot == lot | {"warehouse_id": WH, "expiry_date": "2028-03-31", "available": 1000000, "delivered": 0}
    assert {(lot["lot_id"], lot["registered"]) for lot in stock} >= {(EXPIRED_LOT, True), ("LEV50-L1", False)}

    ledger = _document(pharmacy("warehouse", "ledger", WH, LOT, "--json"))
    assert (ledger["warehouse_id"], ledger["lot_id"], ledger["drug_code"]) == (WH, LOT, "MET500")
    assert [m["after"]["available"] for m in ledger["movements"]] == [1000000, 999000, 999000]
    assert ledger["movements"][1]["prescription_id"] == RX and ledger["totals"]["dispatched"] == 1000

    queue = _document(pharmacy("review", "list", "--json"))
    assert [held["prescription_id"] for held in queue] == [RX, RX_OTHER]
    assert queue[0]["expires_at"].startswith("2028-03-11T09:00") and queue[0]["escalated"] is True

    places = _document(pharmacy("dispatch", "places", "kara", "--json"))
    assert [place["place_id"] for place in places] == ["KARA-BULAK"]

    (letter,) = _document(pharmacy("dlq", "list", "--json"))
    assert letter["position"] == f"{DLQ}:0:1000" and letter["key"] == RX and letter["original_offset"] == 1000000
    assert [replay["offset"] for replay in letter["replays"]] == [1000001, 1000001]

    ids = _document(pharmacy("topic-ids", "--json"))
    assert {"topic": topics.INVENTORY_EVENTS.name, "topic_id": str(TOPIC_ID)} in ids["topics"]
    assert len(ids["topics"]) == len(topics.ALL_TOPICS) and ids["tracking_epoch"] is None
