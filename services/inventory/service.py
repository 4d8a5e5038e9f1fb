"""Use cases of the inventory service."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Any

import structlog

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.envelope import utc_now
from pharmacy_contracts.prescription import PrescriptionApproved
from services.runtime.documents import Change
from services.runtime.errors import Refused

from . import domain
from .domain import Allocation, AllocationState, Hold, Line, Location, Outcome, Warehouse
from .settings import InventorySettings
from .storage import InventoryStorage

log = structlog.get_logger()
PRODUCER = "inventory"
MAX_RESERVATION_ROUNDS = 20

HoldRule = Callable[[Warehouse, str], Outcome | None]
#: How a hold moves: the rule, the event that reports the move, and what the log line says.
HoldMove = tuple[HoldRule, Callable[..., Envelope], str]


def _level(warehouse: Warehouse, drug: str) -> inv.StockLevel:
    s = warehouse.level(drug)
    return inv.StockLevel(
        drug_code=drug, available=s.available, reserved=s.reserved, dispatched=s.dispatched, quarantined=s.quarantined
    )


def _levels(warehouse: Warehouse, drugs: Iterable[str]) -> list[inv.StockLevel]:
    return [_level(warehouse, drug) for drug in sorted(set(drugs))]


def _lines(lines: dict[str, int]) -> list[inv.StockLine]:
    return [inv.StockLine(drug_code=d, quantity=q) for d, q in sorted(lines.items())]


def _coordinates(location: Location) -> Coordinates:
    return Coordinates(latitude=location.latitude, longitude=location.longitude)


class InventoryService:
    def __init__(
        self, storage: InventoryStorage, settings: InventorySettings, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._storage = storage
        self._settings = settings
        self._clock = clock

    def _today(self) -> date:
        return self._clock().date()

    def _envelope(self, correlation_id: str, cause: Envelope | None) -> dict[str, Any]:
        """Fields every event shares; its time is the service's clock, so the ledger and tests agree on it."""
        return {
            "correlation_id": correlation_id,
            "causation_id": cause.message_id if cause is not None else None,
            "producer": PRODUCER,
            "occurred_at": self._clock(),
        }

    def _threshold(self, drug: str) -> int:
        return domain.threshold_for(drug, self._settings.low_stock_thresholds, self._settings.low_stock_threshold)

    def _alerts(
        self, before: Warehouse, after: Warehouse, drugs: Iterable[str], correlation_id: str, cause: Envelope | None
    ) -> list[Envelope]:
        return [
            inv.LowStock(
                **self._envelope(correlation_id, cause),
                warehouse_id=after.warehouse_id,
                drug_code=drug,
                available=after.level(drug).available,
                threshold=self._threshold(drug),
            )
            for drug in sorted(set(drugs))
            if domain.fell_below(before, after, drug, self._threshold(drug))
        ]

    # --- reservations ---------------------------------------------------------------------------

    async def on_decision(self, event: Envelope) -> None:
        if isinstance(event, PrescriptionApproved):
            await self.reserve(event)

    async def reserve(self, approved: PrescriptionApproved) -> None:
        """All lines from the nearest warehouse that can fill them with lots that last, or nothing.

        The allocation record is claimed first, and the chosen warehouse recorded in it (under its
        version guard) before that warehouse is written: a redelivered approval after a crash, or a
        second worker handling the same approval, resumes the same warehouse instead of reserving
        at a second one. The warehouse write itself is guarded by its version, so two inventory
        instances can never both take the last units.
        """
        rx = approved.prescription_id
        lines = domain.merge_lines((line.drug_code, line.quantity, line.days_supply) for line in approved.lines)
        quantities = {drug: line.quantity for drug, line in lines.items()}
        coordinates = approved.delivery.address.coordinates
        patient = Location(latitude=coordinates.latitude, longitude=coordinates.longitude)
        today, delivery_days = self._today(), self._settings.delivery_days

        allocation = await self._storage.allocations.get(rx)
        if allocation is None:
            claim = Allocation(prescription_id=rx, state=AllocationState.RESERVING, lines=quantities)
            await self._storage.allocations.apply(rx, lambda current: None if current else Change(claim))
            allocation = await self._storage.allocations.get(rx)
        if allocation is not None and allocation.state is not AllocationState.RESERVING:
            log.info("prescription already allocated; approval dropped", state=allocation.state)
            return
        claimed = allocation.warehouse_id if allocation is not None else None
        given_up: str | None = None

        for _ in range(MAX_RESERVATION_ROUNDS):
            warehouses = await self._storage.all_warehouses()
            holding = next((w for w in warehouses if rx in w.holds), None)
            if holding is not None:
                await self._settle(rx, AllocationState.RESERVED, holding.warehouse_id, [])
                await self._undo_if_cancelled(rx, holding.warehouse_id, approved)
                return
            if claimed is not None:
                if await self._reserve_at(claimed, rx, lines, approved):
                    await self._settle(rx, AllocationState.RESERVED, claimed, [])
                    log.info("stock reserved at the warehouse claimed earlier", warehouse_id=claimed, lines=quantities)
                    await self._undo_if_cancelled(rx, claimed, approved)
                    return
                log.info("the claimed warehouse can no longer fill it; choosing again", warehouse_id=claimed)
                given_up, claimed = claimed, None
                continue
            chosen = domain.choose_warehouse(warehouses, lines, patient, today=today, delivery_days=delivery_days)
            if chosen is None:
                short = domain.shortages(warehouses, lines, today=today, delivery_days=delivery_days)
                failed = inv.ReservationFailed(
                    **self._envelope(rx, approved),
                    prescription_id=rx,
                    reason="OUT_OF_STOCK" if short else "NOT_IN_ONE_WAREHOUSE",
                    shortages=[
                        inv.Shortage(drug_code=s.drug_code, requested=s.requested, best_available=s.best_available)
                        for s in short
                    ],
                )
                await self._settle(rx, AllocationState.OUT_OF_STOCK, None, [failed])
                log.info("out of stock", reason=failed.reason, shortages=[s.drug_code for s in failed.shortages])
                return
            claimed = await self._claim_warehouse(rx, chosen.warehouse_id, replacing=given_up)
            if claimed is None:
                log.info("delivery withdrawn before a warehouse was chosen; nothing reserved")
                return
            if claimed != chosen.warehouse_id:
                log.info("another worker claimed a warehouse for this approval; resuming it", warehouse_id=claimed)
                continue
            if await self._reserve_at(chosen.warehouse_id, rx, lines, approved):
                await self._settle(rx, AllocationState.RESERVED, chosen.warehouse_id, [])
                log.info(
                    "stock reserved",
                    warehouse_id=chosen.warehouse_id,
                    lines=quantities,
                    km=round(domain.distance_km(chosen.location, patient), 1),  # type: ignore[arg-type]
                )
                await self._undo_if_cancelled(rx, chosen.warehouse_id, approved)
                return
            log.info("stock taken by a concurrent reservation; choosing again", warehouse_id=chosen.warehouse_id)
            given_up, claimed = chosen.warehouse_id, None
        raise RuntimeError(f"could not settle the reservation of {rx}")

    async def _claim_warehouse(self, rx: str, warehouse_id: str, *, replacing: str | None) -> str | None:
        """Record `warehouse_id` as where this reservation is made, unless another worker recorded a
        warehouse first (other than `replacing`, one that could not fill it). Returns the warehouse
        now claimed, or None if the allocation is no longer being reserved (withdrawn)."""

        def decide(current: Allocation | None) -> Change[Allocation] | None:
            if current is None or current.state is not AllocationState.RESERVING:
                return None
            if current.warehouse_id is not None and current.warehouse_id != replacing:
                return None
            return Change(current.model_copy(update={"warehouse_id": warehouse_id}))

        await self._storage.allocations.apply(rx, decide)
        allocation = await self._storage.allocations.get(rx)
        if allocation is None or allocation.state is not AllocationState.RESERVING:
            return None
        return allocation.warehouse_id

    async def _reserve_at(self, warehouse_id: str, rx: str, lines: dict[str, Line], cause: Envelope) -> bool:
        outcome: list[bool] = []
        today, delivery_days = self._today(), self._settings.delivery_days

        def decide(current: Warehouse | None) -> Change[Warehouse] | None:
            outcome.clear()
            if current is not None and rx in current.holds:
                outcome.append(True)
                return None
            try:
                if current is None or not current.registered:
                    raise domain.StockRefused(f"{warehouse_id} is not a registered warehouse")
                reserved = domain.reserve(current, rx, lines, today=today, delivery_days=delivery_days)
            except domain.StockRefused:
                outcome.append(False)
                return None
            outcome.append(True)
            after = reserved.warehouse
            assert after.location is not None
            lots = after.lots
            event = inv.StockReserved(
                **self._envelope(rx, cause),
                prescription_id=rx,
                warehouse_id=warehouse_id,
                pickup_location=_coordinates(after.location),
                lines=_lines({drug: line.quantity for drug, line in lines.items()}),
                picks=[
                    inv.LotPick(
                        drug_code=p.drug_code,
                        lot_id=p.lot_id,
                        expiry_date=lots[p.lot_id].expiry_date,
                        quantity=p.quantity,
                    )
                    for p in reserved.picks
                ],
                levels=_levels(after, lines),
                movements=list(reserved.movements),
            )
            return Change(after, [event, *self._alerts(current, after, lines, rx, cause)])

        await self._storage.warehouses.apply(warehouse_id, decide)
        return outcome[-1]

    async def _settle(self, rx: str, state: AllocationState, warehouse_id: str | None, events: list[Envelope]) -> None:
        def decide(current: Allocation | None) -> Change[Allocation] | None:
            if current is None or current.state is not AllocationState.RESERVING:
                return None
            return Change(current.model_copy(update={"state": state, "warehouse_id": warehouse_id}), events)

        await self._storage.allocations.apply(rx, decide)

    async def _undo_if_cancelled(self, rx: str, warehouse_id: str, cause: Envelope) -> None:
        """The delivery was withdrawn while this reservation was being made (see `_withdraw`): hand
        the units back. Both sides write, then look, so one of them always sees the other."""
        allocation = await self._storage.allocations.get(rx)
        if allocation is not None and allocation.state is AllocationState.CANCELLED:
            log.info("delivery withdrawn while reserving; releasing", warehouse_id=warehouse_id)
            await self._apply_hold_rule(rx, warehouse_id, cause, self._withdrawal("cancelled"))

    # --- the delivery moves stock ---------------------------------------------------------------

    async def on_delivery_event(self, event: Envelope) -> None:
        if isinstance(event, c.DeliveryPickedUp | c.DeliveryFailed | c.DeliveryCompleted | c.DeliveryAbandoned):
            # The courier acts on a StockReserved, so the reservation was made even if its writer
            # died before settling the allocation. Settle it before the hold moves (and perhaps
            # closes): an approval redelivered after the hold closed must find it settled, not
            # reserve the whole prescription a second time (found by the chaos run).
            await self._settle(event.prescription_id, AllocationState.RESERVED, event.warehouse_id, [])
        match event:
            case c.DeliveryPickedUp():
                await self._hold_moved(event, event.warehouse_id, domain.dispatch, inv.StockDispatched, "dispatched")
            case c.DeliveryFailed(goods_returned=True):
                await self._hold_moved(event, event.warehouse_id, domain.return_goods, inv.StockReturned, "returned")
            case c.DeliveryCompleted():
                await self._hold_moved(event, event.warehouse_id, domain.deliver, inv.StockDelivered, "delivered")
            case c.DeliveryAbandoned(goods_travelled=True):
                why = "damaged" if event.last_reason == "damaged" else "undeliverable"
                await self._quarantine(event, event.warehouse_id, why)
            case c.DeliveryAbandoned():
                await self._withdraw(event, event.warehouse_id, "undeliverable")
            case c.DeliveryCancelled(goods_returned=True):
                await self._quarantine(event, event.warehouse_id, "cancelled")
            case c.DeliveryCancelled():
                await self._withdraw(event, event.warehouse_id, "cancelled")

    async def _withdraw(self, event: Envelope, warehouse_id: str | None, why: str) -> None:
        """The courier says the goods never left: back on the shelf. If this warehouse saw them leave
        after all (now, or on an earlier attempt), quarantine them: nothing that travelled goes
        straight back to available stock. Decided on the hold in the same write that moves it."""
        rx: str = event.prescription_id  # type: ignore[attr-defined]
        # Remember the withdrawal first, so an approval still being reserved undoes itself.
        await self._storage.allocations.apply(rx, lambda current: _cancelled(rx, current), message_id=event.message_id)
        warehouse_id = warehouse_id or await self._holding_warehouse(rx)
        if warehouse_id is None:
            log.info("delivery withdrawn before any stock was held", why=why)
            return
        await self._apply_hold_rule(rx, warehouse_id, event, self._withdrawal(why), message_id=event.message_id)

    @staticmethod
    def _withdrawal(why: str) -> Callable[[Hold], HoldMove]:
        def quarantined(**fields: Any) -> inv.StockQuarantined:
            return inv.StockQuarantined(**fields, why=why)

        def choose(hold: Hold) -> HoldMove:
            if hold.travelled:
                return domain.withdraw, quarantined, f"quarantined ({why}): the goods had left the warehouse"
            return domain.withdraw, inv.StockReleased, "released"

        return choose

    async def _quarantine(self, event: Envelope, warehouse_id: str | None, why: str) -> None:
        rx: str = event.prescription_id  # type: ignore[attr-defined]
        warehouse_id = warehouse_id or await self._holding_warehouse(rx)
        if warehouse_id is None:
            log.warning("goods came back but no warehouse holds stock for them", why=why)
            return

        def quarantined(**fields: Any) -> inv.StockQuarantined:
            return inv.StockQuarantined(**fields, why=why)

        await self._hold_moved(event, warehouse_id, domain.quarantine, quarantined, f"quarantined ({why})")

    async def _holding_warehouse(self, rx: str) -> str | None:
        allocation = await self._storage.allocations.get(rx)
        if allocation is not None and allocation.warehouse_id is not None:
            return allocation.warehouse_id
        return next((w.warehouse_id for w in await self._storage.all_warehouses() if rx in w.holds), None)

    async def _hold_moved(
        self, event: Envelope, warehouse_id: str, rule: HoldRule, reported_as: Callable[..., Envelope], what: str
    ) -> None:
        rx: str = event.prescription_id  # type: ignore[attr-defined]
        move: HoldMove = (rule, reported_as, what)
        await self._apply_hold_rule(rx, warehouse_id, event, lambda _: move, message_id=event.message_id)

    async def _apply_hold_rule(
        self,
        rx: str,
        warehouse_id: str,
        cause: Envelope,
        choose: Callable[[Hold], HoldMove],
        *,
        message_id: str | None = None,
    ) -> None:
        """Move the prescription's hold by the rule `choose` picks for the hold as this write finds it."""
        moved: list[str] = []

        def decide(current: Warehouse | None) -> Change[Warehouse] | None:
            moved.clear()
            if current is None or rx not in current.holds:
                return None
            rule, reported_as, what = choose(current.holds[rx])
            outcome = rule(current, rx)
            if outcome is None:
                return None
            moved.append(what)
            held = current.holds[rx].lines
            reported = reported_as(
                **self._envelope(rx, cause),
                prescription_id=rx,
                warehouse_id=current.warehouse_id,
                lines=_lines(held),
                levels=_levels(outcome.warehouse, held),
                movements=list(outcome.movements),
            )
            return Change(outcome.warehouse, [reported])

        if await self._storage.warehouses.apply(warehouse_id, decide, message_id=message_id) and moved:
            log.info(f"stock {moved[-1]}", warehouse_id=warehouse_id)

    # --- warehouse staff ------------------------------------------------------------------------

    async def on_command(self, command: Envelope) -> None:
        match command:
            case inv.WarehouseRegistrationRequested():
                await self._register(command)
            case inv.RestockRequested():
                await self._restock(command)
            case inv.AdjustmentRequested():
                await self._adjust(command)

    async def _register(self, command: inv.WarehouseRegistrationRequested) -> None:
        location = Location(latitude=command.location.latitude, longitude=command.location.longitude)

        def decide(current: Warehouse | None) -> Change[Warehouse]:
            after = domain.register(
                current, command.warehouse_id, name=command.name, kind=command.kind, location=location
            )
            registered = inv.WarehouseRegistered(
                **self._envelope(command.correlation_id, command),
                warehouse_id=command.warehouse_id,
                name=command.name,
                kind=command.kind,
                location=command.location,
            )
            return Change(after, [registered])

        if await self._storage.warehouses.apply(command.warehouse_id, decide, message_id=command.message_id):
            log.info("warehouse registered", warehouse_id=command.warehouse_id, kind=command.kind)

    def _refused(self, command: inv.RestockRequested | inv.AdjustmentRequested, reason: str) -> Envelope:
        return inv.StockCommandRefused(
            **self._envelope(command.correlation_id, command),
            warehouse_id=command.warehouse_id,
            drug_code=command.drug_code,
            reason=reason,
        )

    async def _restock(self, command: inv.RestockRequested) -> None:
        def decide(current: Warehouse | None) -> Change[Warehouse]:
            if current is None or not current.registered:
                raise Refused("unknown_warehouse", f"warehouse {command.warehouse_id} is not registered")
            try:
                outcome = domain.restock(
                    current, command.lot_id, command.drug_code, command.expiry_date, command.quantity
                )
            except domain.StockRefused as refused:
                return Change(current, [self._refused(command, str(refused))])
            restocked = inv.StockRestocked(
                **self._envelope(command.correlation_id, command),
                warehouse_id=command.warehouse_id,
                drug_code=command.drug_code,
                lot_id=command.lot_id,
                expiry_date=command.expiry_date,
                quantity=command.quantity,
                requested_by=command.requested_by,
                level=_level(outcome.warehouse, command.drug_code),
                movements=list(outcome.movements),
            )
            return Change(outcome.warehouse, [restocked])

        if await self._storage.warehouses.apply(command.warehouse_id, decide, message_id=command.message_id):
            log.info(
                "restock handled",
                warehouse_id=command.warehouse_id,
                drug_code=command.drug_code,
                lot_id=command.lot_id,
                quantity=command.quantity,
            )

    async def _adjust(self, command: inv.AdjustmentRequested) -> None:
        def decide(current: Warehouse | None) -> Change[Warehouse]:
            if current is None or not current.registered:
                raise Refused("unknown_warehouse", f"warehouse {command.warehouse_id} is not registered")
            try:
                outcome = domain.adjust(current, command.lot_id, command.drug_code, command.delta)
            except domain.StockRefused as refused:
                return Change(current, [self._refused(command, str(refused))])
            after = outcome.warehouse
            adjusted = inv.StockAdjusted(
                **self._envelope(command.correlation_id, command),
                warehouse_id=command.warehouse_id,
                drug_code=command.drug_code,
                lot_id=command.lot_id,
                delta=command.delta,
                reason=command.reason,
                requested_by=command.requested_by,
                level=_level(after, command.drug_code),
                movements=list(outcome.movements),
            )
            alerts = self._alerts(current, after, [command.drug_code], command.correlation_id, command)
            return Change(after, [adjusted, *alerts])

        if await self._storage.warehouses.apply(command.warehouse_id, decide, message_id=command.message_id):
            log.info(
                "adjustment handled", warehouse_id=command.warehouse_id, lot_id=command.lot_id, delta=command.delta
            )

    # --- expiry (a sweep: no message says a date has passed) --------------------------------------

    async def sweep_expiry(self) -> None:
        """Alert once on lots nearing expiry; take expired lots off the shelf. Idempotent: the lots
        remember the alert, and expired units are no longer available."""
        today, window = self._today(), self._settings.near_expiry_days
        for warehouse in await self._storage.all_warehouses():
            if domain.expired_lots(warehouse, today) or domain.nearing_expiry(warehouse, today, window):
                await self._storage.warehouses.apply(warehouse.warehouse_id, self._expiry_decision(today, window))

    def _expiry_decision(self, today: date, window: int) -> Callable[[Warehouse | None], Change[Warehouse] | None]:
        def decide(current: Warehouse | None) -> Change[Warehouse] | None:
            if current is None:
                return None
            nearing = domain.nearing_expiry(current, today, window)
            expired = domain.expire(current, today)
            if not nearing and not expired.movements:
                return None
            after = domain.mark_near_expiry_alerted(expired.warehouse, nearing)
            wid = current.warehouse_id
            events: list[Envelope] = [
                inv.LotNearingExpiry(
                    **self._envelope(lot_id, None),
                    warehouse_id=wid,
                    drug_code=lot.drug_code,
                    lot_id=lot_id,
                    expiry_date=lot.expiry_date,
                    available=lot.available,
                )
                for lot_id in nearing
                for lot in [current.lots[lot_id]]
            ]
            for movement in expired.movements:
                lot = current.lots[movement.lot_id]
                events.append(
                    inv.LotExpired(
                        **self._envelope(movement.lot_id, None),
                        warehouse_id=wid,
                        drug_code=movement.drug_code,
                        lot_id=movement.lot_id,
                        expiry_date=lot.expiry_date,
                        removed=movement.quantity,
                        level=_level(after, movement.drug_code),
                        movements=[movement],
                    )
                )
            drugs = [m.drug_code for m in expired.movements]
            events += self._alerts(current, after, drugs, wid, None)
            log.info(
                "expiry sweep",
                warehouse_id=wid,
                nearing_expiry=nearing,
                expired=sorted({m.lot_id for m in expired.movements}),
            )
            return Change(after, events)

        return decide

    # --- the ledger -----------------------------------------------------------------------------

    async def record_movements(self, event: Envelope) -> None:
        """Every movement an event reports becomes one ledger entry; recording an event twice is harmless."""
        movements: list[inv.Movement] = getattr(event, "movements", None) or []
        warehouse_id: str | None = getattr(event, "warehouse_id", None)
        if not movements or warehouse_id is None:
            return
        entries = domain.ledger_entries(event.message_id, event.type, warehouse_id, event.occurred_at, movements)
        await self._storage.record_movements(entries)
        log.info("movements recorded", warehouse_id=warehouse_id, count=len(entries))


def _cancelled(rx: str, current: Allocation | None) -> Change[Allocation] | None:
    """A withdrawn delivery's allocation: one not yet settled becomes CANCELLED (reserving nothing)."""
    if current is None:
        return Change(Allocation(prescription_id=rx, state=AllocationState.CANCELLED, lines={}))
    if current.state is AllocationState.RESERVING:
        return Change(current.model_copy(update={"state": AllocationState.CANCELLED}))
    return None
