"""Use cases of the inventory service."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.prescription import PrescriptionApproved
from services.runtime.documents import Change
from services.runtime.errors import Refused

from . import domain
from .domain import Allocation, AllocationState, Warehouse
from .storage import InventoryStorage

log = structlog.get_logger()
PRODUCER = "inventory"
MAX_RESERVATION_ROUNDS = 20


def _levels(warehouse: Warehouse, drugs: Iterable[str]) -> list[inv.StockLevel]:
    return [_level(warehouse, drug) for drug in sorted(drugs)]


def _level(warehouse: Warehouse, drug: str) -> inv.StockLevel:
    s = warehouse.level(drug)
    return inv.StockLevel(drug_code=drug, available=s.available, reserved=s.reserved, dispatched=s.dispatched)


def _lines(lines: dict[str, int]) -> list[inv.StockLine]:
    return [inv.StockLine(drug_code=d, quantity=q) for d, q in sorted(lines.items())]


class InventoryService:
    def __init__(self, storage: InventoryStorage, low_stock_threshold: int):
        self._storage = storage
        self._threshold = low_stock_threshold

    def _alerts(self, before: Warehouse, after: Warehouse, drugs: Iterable[str], cause: Envelope) -> list[Envelope]:
        return [
            inv.LowStock(
                correlation_id=cause.correlation_id,
                causation_id=cause.message_id,
                producer=PRODUCER,
                warehouse_id=after.warehouse_id,
                drug_code=drug,
                available=after.level(drug).available,
                threshold=self._threshold,
            )
            for drug in sorted(drugs)
            if domain.fell_below(before, after, drug, self._threshold)
        ]

    # --- reservations ---------------------------------------------------------------------------

    async def on_decision(self, event: Envelope) -> None:
        if isinstance(event, PrescriptionApproved):
            await self.reserve(event)

    async def reserve(self, approved: PrescriptionApproved) -> None:
        """All lines from one warehouse, or nothing.

        The allocation record is claimed first, so a redelivered approval after a crash resumes
        the same reservation instead of starting a second one; the warehouse write itself is
        guarded by its version, so two inventory instances can never both take the last units.
        """
        rx = approved.prescription_id
        lines = domain.merge_lines((line.drug_code, line.quantity) for line in approved.lines)
        allocation = await self._storage.allocations.get(rx)
        if allocation is not None and allocation.state is not AllocationState.RESERVING:
            log.info("prescription already allocated; duplicate dropped", state=allocation.state)
            return
        if allocation is None:
            claim = Allocation(prescription_id=rx, state=AllocationState.RESERVING, lines=lines)
            await self._storage.allocations.apply(rx, lambda current: None if current else Change(claim))

        for _ in range(MAX_RESERVATION_ROUNDS):
            warehouses = await self._storage.all_warehouses()
            holding = next((w for w in warehouses if rx in w.holds), None)
            if holding is not None:
                await self._settle(rx, AllocationState.RESERVED, holding.warehouse_id, [])
                return
            chosen = domain.choose_warehouse(warehouses, lines)
            if chosen is None:
                shortages = domain.shortages(warehouses, lines)
                failed = inv.ReservationFailed(
                    correlation_id=rx,
                    causation_id=approved.message_id,
                    producer=PRODUCER,
                    prescription_id=rx,
                    reason="OUT_OF_STOCK" if shortages else "NOT_IN_ONE_WAREHOUSE",
                    shortages=[
                        inv.Shortage(drug_code=s.drug_code, requested=s.requested, best_available=s.best_available)
                        for s in shortages
                    ],
                )
                await self._settle(rx, AllocationState.OUT_OF_STOCK, None, [failed])
                log.info("out of stock", reason=failed.reason, shortages=[s.drug_code for s in failed.shortages])
                return
            if await self._reserve_at(chosen.warehouse_id, rx, lines, approved):
                await self._settle(rx, AllocationState.RESERVED, chosen.warehouse_id, [])
                log.info("stock reserved", warehouse_id=chosen.warehouse_id, lines=lines)
                return
            log.info("stock taken by a concurrent reservation; choosing again", warehouse_id=chosen.warehouse_id)
        raise RuntimeError(f"could not settle the reservation of {rx}")

    async def _reserve_at(self, warehouse_id: str, rx: str, lines: dict[str, int], cause: Envelope) -> bool:
        outcome: list[bool] = []

        def decide(current: Warehouse | None) -> Change[Warehouse] | None:
            outcome.clear()
            if current is None or (not domain.can_fill(current, lines) and rx not in current.holds):
                outcome.append(False)
                return None
            outcome.append(True)
            if rx in current.holds:
                return None
            after = domain.reserve(current, rx, lines)
            reserved = inv.StockReserved(
                correlation_id=rx,
                causation_id=cause.message_id,
                producer=PRODUCER,
                prescription_id=rx,
                warehouse_id=warehouse_id,
                lines=_lines(lines),
                levels=_levels(after, lines),
            )
            return Change(after, [reserved, *self._alerts(current, after, lines, cause)])

        await self._storage.warehouses.apply(warehouse_id, decide)
        return outcome[-1]

    async def _settle(self, rx: str, state: AllocationState, warehouse_id: str | None, events: list[Envelope]) -> None:
        def decide(current: Allocation | None) -> Change[Allocation] | None:
            if current is None or current.state is not AllocationState.RESERVING:
                return None
            return Change(current.model_copy(update={"state": state, "warehouse_id": warehouse_id}), events)

        await self._storage.allocations.apply(rx, decide)

    # --- the delivery moves stock ---------------------------------------------------------------

    async def on_delivery_event(self, event: Envelope) -> None:
        match event:
            case c.DeliveryPickedUp():
                await self._move(event, domain.dispatch, inv.StockDispatched, "stock dispatched")
            case c.DeliveryFailed(goods_returned=True):
                await self._move(event, domain.return_goods, inv.StockReturned, "goods returned")
            case c.DeliveryAbandoned():
                await self._move(event, domain.release, inv.StockReleased, "reservation released")
            case c.DeliveryCompleted():
                await self._move(event, domain.complete, None, "hold closed on delivery")

    async def _move(
        self,
        event: c.DeliveryPickedUp | c.DeliveryFailed | c.DeliveryAbandoned | c.DeliveryCompleted,
        rule: Callable[[Warehouse, str], Warehouse | None],
        reported_as: type[inv.StockDispatched | inv.StockReturned | inv.StockReleased] | None,
        what: str,
    ) -> None:
        rx = event.prescription_id

        def decide(current: Warehouse | None) -> Change[Warehouse] | None:
            if current is None or rx not in current.holds:
                return None
            after = rule(current, rx)
            if after is None:
                return None
            held = current.holds[rx].lines
            events: list[Envelope] = []
            if reported_as is not None:
                events.append(
                    reported_as(
                        correlation_id=rx,
                        causation_id=event.message_id,
                        producer=PRODUCER,
                        prescription_id=rx,
                        warehouse_id=current.warehouse_id,
                        lines=_lines(held),
                        levels=_levels(after, held),
                    )
                )
            return Change(after, events)

        if await self._storage.warehouses.apply(event.warehouse_id, decide, message_id=event.message_id):
            log.info(what, warehouse_id=event.warehouse_id)

    # --- warehouse staff ------------------------------------------------------------------------

    async def on_command(self, command: Envelope) -> None:
        match command:
            case inv.RestockRequested():
                await self._restock(command)
            case inv.AdjustmentRequested():
                await self._adjust(command)

    async def _restock(self, command: inv.RestockRequested) -> None:
        def decide(current: Warehouse | None) -> Change[Warehouse]:
            before = current or Warehouse(warehouse_id=command.warehouse_id)
            after = domain.restock(before, command.drug_code, command.quantity)
            restocked = inv.StockRestocked(
                correlation_id=command.correlation_id,
                causation_id=command.message_id,
                producer=PRODUCER,
                warehouse_id=command.warehouse_id,
                drug_code=command.drug_code,
                quantity=command.quantity,
                requested_by=command.requested_by,
                level=_level(after, command.drug_code),
            )
            return Change(after, [restocked])

        if await self._storage.warehouses.apply(command.warehouse_id, decide, message_id=command.message_id):
            log.info(
                "restocked", warehouse_id=command.warehouse_id, drug_code=command.drug_code, quantity=command.quantity
            )

    async def _adjust(self, command: inv.AdjustmentRequested) -> None:
        def decide(current: Warehouse | None) -> Change[Warehouse] | None:
            if current is None:
                raise Refused("unknown_warehouse", f"unknown warehouse {command.warehouse_id}")
            common = {
                "correlation_id": command.correlation_id,
                "causation_id": command.message_id,
                "producer": PRODUCER,
                "warehouse_id": command.warehouse_id,
                "drug_code": command.drug_code,
            }
            try:
                after = domain.adjust(current, command.drug_code, command.delta)
            except domain.StockRefused as refused:
                return Change(current, [inv.StockCommandRefused(**common, reason=str(refused))])
            adjusted = inv.StockAdjusted(
                **common,
                delta=command.delta,
                reason=command.reason,
                requested_by=command.requested_by,
                level=_level(after, command.drug_code),
            )
            return Change(after, [adjusted, *self._alerts(current, after, [command.drug_code], command)])

        if await self._storage.warehouses.apply(command.warehouse_id, decide, message_id=command.message_id):
            log.info("adjustment handled", warehouse_id=command.warehouse_id, drug_code=command.drug_code)
