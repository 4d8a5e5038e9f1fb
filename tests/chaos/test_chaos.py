"""Chaos: 2,000 prescriptions flow through six service processes while one of them is killed with
SIGKILL every few seconds and restarted; afterwards every guarantee must still hold.

The run and its checks live in `services.ops.chaos` (also `python -m services.ops.chaos`). The
figures are printed (even without `pytest -s`), written to `chaos-report.json` under the test's
tmp dir, and repeated in the assertion message when a guarantee is broken.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from services.ops.chaos import ChaosReport, render, run_chaos
from services.ops.devstack import DevStack

PRESCRIPTIONS = int(os.environ.get("PHARMACY_CHAOS_PRESCRIPTIONS", "2000"))
RATE = float(os.environ.get("PHARMACY_CHAOS_RATE", "10"))


def _progress(line: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


@pytest.mark.timeout(1800)
async def test_every_guarantee_holds_while_processes_are_killed(
    stack: DevStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report: ChaosReport = await run_chaos(
        stack,
        prescriptions=PRESCRIPTIONS,
        kill_every_s=(3.0, 6.0),
        seed=2026,
        rate=RATE,
        settle_timeout_s=900.0,
        progress=_progress,
    )
    figures = report.to_json()
    report_file = tmp_path / "chaos-report.json"
    report_file.write_text(json.dumps(figures, indent=2, default=str))
    with capsys.disabled():
        render(report, Console(file=sys.stdout, width=160))
        print(f"report: {report_file}; service logs: {report.logs_dir}")

    summary = json.dumps(
        {
            key: figures[key]
            for key in (
                "prescriptions",
                "duration_s",
                "total_kills",
                "kills",
                "terminal",
                "non_terminal",
                "double_reservations",
                "double_dispatches",
                "net_dispatch_mismatches",
                "ledger_mismatches",
                "dispatch_ids_reused",
                "dispatches_acted_twice",
                "duplicate_offers_ignored",
                "final_lag",
                "violations",
            )
        },
        indent=1,
        default=str,
    )
    context = f"chaos report ({report_file}, logs {report.logs_dir}):\n{summary}"

    assert report.prescriptions >= PRESCRIPTIONS
    assert report.total_kills >= 10, context
    assert set(report.kills_per_service()) == {"consultation", "prescription", "inventory", "courier"}, context
    assert report.settled, context
    assert not report.non_terminal and not report.missing_status, context
    assert sum(report.terminal.values()) == report.prescriptions, context
    assert not report.several_terminal_states and not report.owner_disagrees, context
    assert all(row.balanced for row in report.stock), context
    assert all(row.received == row.restocked_sent for row in report.stock), context
    assert all(row.adjusted == row.adjusted_applied for row in report.stock), context
    assert all(row.delivered == row.delivered_expected for row in report.stock), context
    assert all(row.quarantined == row.quarantined_expected for row in report.stock), context
    assert all(row.reserved == 0 and row.dispatched == 0 for row in report.stock) and not report.open_holds, context
    assert report.lots_checked and not report.unbalanced_lots, context
    assert report.ledger_entries and not report.ledger_mismatches, context
    assert not report.double_reservations and not report.reserved_and_refused, context
    assert not report.allocation_mismatches, context
    assert not report.double_dispatches and not report.net_dispatch_mismatches, context
    assert not report.dispatch_ids_reused and not report.dispatches_acted_twice, context
    assert not report.offers_without_outcome, context
    assert report.codes_rejected == report.wrong_codes_planned, context
    assert not any(report.final_lag.values()) and report.outbox_pending == 0, context
    assert not report.restarts_not_ready, context
    assert report.violations() == [], context
