"""The chaos report as tables on a console."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .report import ChaosReport


def render(report: ChaosReport, console: Console | None = None) -> None:
    console = console or Console()
    run = Table(title="chaos run", show_header=False)
    run.add_row(
        "prescriptions",
        f"{report.prescriptions} ({report.faulty_submitted} the checks reject) at {report.rate_per_s}/s",
    )
    run.add_row(
        "duration",
        f"{report.duration_s}s (publishing {report.publish_s}s, settling after the kills {report.settle_s}s)",
    )
    ready = report.restart_ready_s
    run.add_row(
        "kills",
        f"{report.total_kills}: "
        + ", ".join(f"{k} {v}" for k, v in report.kills.items())
        + f"  · per service: {report.kills_per_service()}",
    )
    if ready:
        run.add_row("restart → ready", f"median {ready[len(ready) // 2]}s, max {ready[-1]}s over {len(ready)} restarts")
    run.add_row("exited on their own", str(report.unexpected_exits or 0))
    run.add_row("settled", "yes" if report.settled else "[red]NO[/]")
    console.print(run)

    outcomes = Table(title="how each prescription ended")
    outcomes.add_column("state")
    outcomes.add_column("prescriptions", justify="right")
    for state, count in report.terminal.items():
        outcomes.add_row(state, str(count))
    for state, count in report.non_terminal.items():
        outcomes.add_row(f"[red]{state} (not terminal)[/]", str(count))
    if report.missing_status:
        outcomes.add_row("[red]no status at all[/]", str(len(report.missing_status)))
    console.print(outcomes)

    stock = Table(
        title="stock books: received + adjusted = available + reserved + dispatched + quarantined + expired + delivered"
    )
    columns = ("received", "adjusted", "available", "reserved", "dispatched", "quarantined", "expired", "delivered")
    for column in ("warehouse", "drug", *columns, "delivered rx", "came back"):
        stock.add_column(column, justify="left" if column in ("warehouse", "drug") else "right")
    stock.add_column("balanced")
    for r in report.stock:
        stock.add_row(
            r.warehouse_id,
            r.drug_code,
            *(str(getattr(r, column)) for column in columns),
            str(r.delivered_expected),
            str(r.quarantined_expected),
            "[green]yes[/]" if r.balanced else "[red]NO[/]",
        )
    console.print(stock)

    checks = Table(title="guarantees")
    checks.add_column("check")
    checks.add_column("figure", justify="right")
    rows = [
        ("prescriptions not terminal", sum(report.non_terminal.values()) + len(report.missing_status)),
        ("prescriptions with several terminal states", len(report.several_terminal_states)),
        ("status disagreeing with the owning service", len(report.owner_disagrees)),
        ("stock rows not balanced", sum(not r.balanced for r in report.stock)),
        ("stock rows: received ≠ restocked", sum(r.received != r.restocked_sent for r in report.stock)),
        ("stock rows: adjusted ≠ adjustments", sum(r.adjusted != r.adjusted_applied for r in report.stock)),
        ("stock rows: delivered ≠ delivered rx", sum(r.delivered != r.delivered_expected for r in report.stock)),
        ("stock rows: quarantined ≠ came back", sum(r.quarantined != r.quarantined_expected for r in report.stock)),
        ("stock still reserved (units)", sum(r.reserved for r in report.stock)),
        ("stock still on the road (units)", sum(r.dispatched for r in report.stock)),
        (f"lots not balanced (of {report.lots_checked})", len(report.unbalanced_lots)),
        (f"lots the ledger does not recompute ({report.ledger_entries} entries)", len(report.ledger_mismatches)),
        ("holds still open", len(report.open_holds)),
        ("drugs whose county books do not balance", len(report.county_unbalanced)),
        ("drugs with receipts not closed at the source", len(report.transfers_not_closed)),
        ("transfer steps taken twice", len(report.transfer_steps_twice)),
        ("adjustments not answered once", len(report.adjustments_unanswered + report.adjustments_answered_twice)),
        ("restocks answered twice", len(report.restocks_answered_twice)),
        ("prescriptions reserved twice", len(report.double_reservations)),
        ("prescriptions reserved and refused", len(report.reserved_and_refused)),
        ("allocations ≠ reservations published", len(report.allocation_mismatches)),
        ("dispatched more often than picked up", len(report.double_dispatches)),
        ("stock movements ≠ outcome", len(report.net_dispatch_mismatches)),
        ("dispatch ids on more than one offer", len(report.dispatch_ids_reused)),
        ("dispatches acted on twice (courier service)", len(report.dispatches_acted_twice)),
        ("offers acted on without one outcome", len(report.offers_without_outcome)),
        ("wrong delivery codes not refused once", abs(report.wrong_codes_planned - report.codes_rejected)),
        ("consumer lag (messages)", sum(report.final_lag.values())),
        ("outboxes with pending events", report.outbox_pending),
    ]
    for name, figure in rows:
        checks.add_row(name, f"[green]{figure}[/]" if not figure else f"[red]{figure}[/]")
    console.print(checks)

    info = Table(title="at-least-once at work", show_header=False)
    info.add_row("offers on courier.dispatch.v1 (distinct)", str(report.offers_total))
    info.add_row("offers the couriers acted on", str(report.offers_acted_on))
    info.add_row(
        "offers seen again and ignored",
        f"{report.duplicate_offers_ignored} ({report.duplicate_offers_republished} the same message re-published)",
    )
    info.add_row("wrong delivery codes read out / refused", f"{report.wrong_codes_planned} / {report.codes_rejected}")
    info.add_row("events re-published (same message id)", str(report.republished_events))
    info.add_row("restocks / adjustments sent", f"{report.restocks_sent} / {report.adjustments_sent}")
    info.add_row("dead letters", str(report.dead_letters or 0))
    console.print(info)

    violations = report.violations()
    if violations:
        console.print("[bold red]guarantees violated:[/]")
        for violation in violations:
            console.print(f"  • {violation}")
        console.print(f"service logs: {report.logs_dir}")
    else:
        console.print("[bold green]every guarantee held[/]")
