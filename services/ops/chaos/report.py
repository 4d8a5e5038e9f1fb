"""The chaos run's report: every figure it measured, and the guarantees it found broken."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from services.inventory.domain import Figures


@dataclass
class StockRow:
    warehouse_id: str
    drug_code: str
    received: int
    adjusted: int
    available: int
    reserved: int
    dispatched: int
    quarantined: int
    expired: int
    delivered: int
    restocked_sent: int  # what warehouse staff asked for: opening stock plus restocks
    adjusted_applied: int  # sum of StockAdjusted deltas on inventory.events.v1
    delivered_expected: int  # the lines of the prescriptions delivered from this warehouse
    quarantined_expected: int  # the lines of undeliverable prescriptions whose goods had travelled
    # transfers between warehouses (services/inventory/transfers.py)
    in_transit: int = 0
    transferred_in: int = 0
    transferred_out: int = 0

    @property
    def figures(self) -> Figures:
        return Figures(
            **{name: getattr(self, name) for name in Figures.model_fields},
        )

    @property
    def balanced(self) -> bool:
        return self.figures.balanced


@dataclass
class ChaosReport:
    prescriptions: int
    faulty_submitted: int
    rate_per_s: float
    seed: int
    duration_s: float = 0.0
    publish_s: float = 0.0
    settle_s: float = 0.0
    settled: bool = False
    # the killer
    kills: dict[str, int] = field(default_factory=dict)
    unexpected_exits: dict[str, int] = field(default_factory=dict)
    restart_ready_s: list[float] = field(default_factory=list)
    restarts_not_ready: list[str] = field(default_factory=list)
    # outcomes
    terminal: dict[str, int] = field(default_factory=dict)
    non_terminal: dict[str, int] = field(default_factory=dict)
    missing_status: list[str] = field(default_factory=list)
    several_terminal_states: dict[str, list[str]] = field(default_factory=dict)
    owner_disagrees: dict[str, str] = field(default_factory=dict)
    # stock
    stock: list[StockRow] = field(default_factory=list)
    lots_checked: int = 0
    unbalanced_lots: list[str] = field(default_factory=list)  # warehouse/lot: figures
    ledger_entries: int = 0
    ledger_mismatches: dict[str, str] = field(default_factory=dict)  # warehouse/lot → ledger vs document
    open_holds: list[str] = field(default_factory=list)
    county_unbalanced: list[str] = field(default_factory=list)  # drug: county figures
    transfers_not_closed: list[str] = field(default_factory=list)  # drug: received at townships, not closed
    transfer_steps_twice: dict[str, str] = field(default_factory=dict)  # transfer id → steps taken twice
    restocks_sent: int = 0
    adjustments_sent: int = 0
    adjustments_unanswered: list[str] = field(default_factory=list)
    adjustments_answered_twice: list[str] = field(default_factory=list)
    restocks_answered_twice: list[str] = field(default_factory=list)
    # reservations and dispatches
    double_reservations: dict[str, int] = field(default_factory=dict)
    reserved_and_refused: list[str] = field(default_factory=list)
    allocation_mismatches: dict[str, str] = field(default_factory=dict)
    double_dispatches: dict[str, str] = field(default_factory=dict)
    net_dispatch_mismatches: dict[str, str] = field(default_factory=dict)
    # couriers
    offers_total: int = 0  # distinct offers (by message id) on courier.dispatch.v1
    offers_acted_on: int = 0
    duplicate_offers_ignored: int = 0  # seen again by the couriers, same dispatch id: not acted on
    duplicate_offers_republished: int = 0  # of those: the same message id (at-least-once publishing)
    dispatch_ids_reused: dict[str, list[str]] = field(default_factory=dict)  # dispatch id → message ids
    dispatches_acted_twice: dict[str, str] = field(default_factory=dict)  # by the courier service
    offers_without_outcome: list[str] = field(default_factory=list)
    wrong_codes_planned: int = 0  # offers where the patient first read out a wrong code
    codes_rejected: int = 0  # DeliveryCodeRejected on courier.deliveries.v1
    # plumbing
    republished_events: dict[str, int] = field(default_factory=dict)  # same message id twice, per topic
    dead_letters: dict[str, int] = field(default_factory=dict)
    final_lag: dict[str, int] = field(default_factory=dict)
    lag_detail: dict[str, str] = field(default_factory=dict)  # per partition, for groups not at zero
    outbox_pending: int = 0
    log_warnings: dict[str, dict[str, int]] = field(default_factory=dict)
    logs_dir: str = ""

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def kills_per_service(self) -> dict[str, int]:
        per: Counter[str] = Counter()
        for name, count in self.kills.items():
            per[name.partition("-")[0]] += count
        return dict(per)

    def violations(self) -> list[str]:
        """Every guarantee the run found broken, one sentence each (empty: all held)."""
        found = []
        unfinished = sum(self.non_terminal.values()) + len(self.missing_status)
        if not self.settled:
            found.append("the system did not settle (all terminal, lag zero, outboxes empty) in time")
        if unfinished:
            found.append(
                f"{unfinished} prescriptions not in a terminal state: {self.non_terminal}, "
                f"{len(self.missing_status)} without any status {self.missing_status[:5]}"
            )
        if sum(self.terminal.values()) + unfinished != self.prescriptions:
            found.append(f"{sum(self.terminal.values()) + unfinished} statuses for {self.prescriptions} prescriptions")
        if self.several_terminal_states:
            found.append(f"prescriptions with several terminal states: {_some(self.several_terminal_states)}")
        if self.owner_disagrees:
            found.append(f"status disagrees with the owning service: {_some(self.owner_disagrees)}")
        unbalanced = [r for r in self.stock if not r.balanced]
        if unbalanced:
            found.append(f"stock books do not balance: {[_row(r) for r in unbalanced]}")
        if wrong := [r for r in self.stock if r.received != r.restocked_sent]:
            found.append(f"received differs from what was restocked: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.adjusted != r.adjusted_applied]:
            found.append(f"adjusted differs from the adjustments published: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.reserved != 0]:
            found.append(f"stock still reserved after everything finished: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.dispatched != 0]:
            found.append(f"stock still on the road after everything finished: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.delivered != r.delivered_expected]:
            found.append(f"delivered stock differs from what was delivered: {[_row(r) for r in wrong]}")
        if wrong := [r for r in self.stock if r.quarantined != r.quarantined_expected]:
            found.append(f"quarantined stock differs from what came back: {[_row(r) for r in wrong]}")
        if self.unbalanced_lots:
            found.append(f"{len(self.unbalanced_lots)} lots do not balance: {self.unbalanced_lots[:5]}")
        if self.ledger_mismatches:
            found.append(f"the ledger does not recompute these lots: {_some(self.ledger_mismatches)}")
        if self.open_holds:
            found.append(f"{len(self.open_holds)} holds still open: {self.open_holds[:5]}")
        if self.county_unbalanced:
            found.append(f"the county's books do not balance: {self.county_unbalanced[:5]}")
        if self.transfers_not_closed:
            found.append(f"transfers received but not closed at their source: {self.transfers_not_closed[:5]}")
        if self.transfer_steps_twice:
            found.append(f"transfer steps taken more than once: {_some(self.transfer_steps_twice)}")
        if self.adjustments_unanswered or self.adjustments_answered_twice:
            found.append(
                f"adjustments not answered exactly once: unanswered {self.adjustments_unanswered[:5]}, "
                f"twice {self.adjustments_answered_twice[:5]}"
            )
        if self.restocks_answered_twice:
            found.append(f"restocks answered by two events: {self.restocks_answered_twice[:5]}")
        if self.double_reservations:
            found.append(f"prescriptions reserved more than once: {_some(self.double_reservations)}")
        if self.reserved_and_refused:
            found.append(f"prescriptions both reserved and refused: {self.reserved_and_refused[:5]}")
        if self.allocation_mismatches:
            found.append(f"allocations disagree with the reservations published: {_some(self.allocation_mismatches)}")
        if self.double_dispatches:
            found.append(f"stock dispatched more often than picked up: {_some(self.double_dispatches)}")
        if self.net_dispatch_mismatches:
            found.append(f"stock movements do not match the outcome: {_some(self.net_dispatch_mismatches)}")
        if self.dispatch_ids_reused:
            found.append(f"dispatch ids used by more than one offer: {_some(self.dispatch_ids_reused)}")
        if self.dispatches_acted_twice:
            found.append(f"dispatches acted on more than once: {_some(self.dispatches_acted_twice)}")
        if self.offers_without_outcome:
            found.append(f"offers acted on with no outcome: {self.offers_without_outcome[:5]}")
        if self.codes_rejected != self.wrong_codes_planned:
            found.append(f"{self.wrong_codes_planned} wrong delivery codes read out, {self.codes_rejected} refused")
        if any(self.final_lag.values()):
            found.append(f"consumer lag not zero: { {k: v for k, v in self.final_lag.items() if v} }")
        if self.outbox_pending:
            found.append(f"{self.outbox_pending} documents still have events in their outbox")
        if self.restarts_not_ready:
            found.append(f"restarted processes that never became ready: {self.restarts_not_ready}")
        return found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_kills"] = self.total_kills
        data["kills_per_service"] = self.kills_per_service()
        data["violations"] = self.violations()
        for row, stock in zip(data["stock"], self.stock, strict=True):
            row["balanced"] = stock.balanced
        return data


def _some(mapping: dict[str, Any], limit: int = 5) -> str:
    items = list(mapping.items())
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(f"{k}: {v}" for k, v in items[:limit]) + more


def _row(r: StockRow) -> str:
    return f"{r.warehouse_id}/{r.drug_code} {figures_text(r.figures)} (restocked {r.restocked_sent}, adjustments " + (
        f"{r.adjusted_applied}, delivered prescriptions {r.delivered_expected}, came back {r.quarantined_expected})"
    )


def figures_text(f: Figures) -> str:
    text = (
        f"received {f.received} adjusted {f.adjusted} = available {f.available} + reserved {f.reserved} "
        f"+ dispatched {f.dispatched} + quarantined {f.quarantined} + expired {f.expired} + delivered {f.delivered}"
    )
    if f.in_transit or f.transferred_in or f.transferred_out:
        text += (
            f" (transfers: + in transit {f.in_transit} + transferred out {f.transferred_out}"
            f", transferred in {f.transferred_in} on the left)"
        )
    return text
