"""Use cases of the courier service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.prescription import PrescriptionApproved
from services.runtime.documents import Change
from services.runtime.errors import Refused

from . import domain
from .domain import CourierProfile, Delivery, DeliveryState, ReportOutcome
from .storage import CourierStorage

log = structlog.get_logger()
PRODUCER = "courier"

Mutation = Callable[[Delivery], Delivery | None]


@dataclass
class _RosterView:
    roster: list[CourierProfile] | None = None
    loads: dict[str, int] = field(default_factory=dict)
    wanted: bool = False


class CourierService:
    def __init__(self, storage: CourierStorage, max_attempts: int, roster_refresh_s: float):
        self._storage = storage
        self._max_attempts = max_attempts
        self._roster_refresh_s = roster_refresh_s
        self._roster_read: asyncio.Future[tuple[list[CourierProfile], dict[str, int]]] | None = None
        self._roster_read_at = 0.0

    async def _roster_and_loads(self) -> tuple[list[CourierProfile], dict[str, int]]:
        """The roster and the deliveries on the road per courier, shared by every offer decided
        within `roster_refresh_s`; each offer counts itself into the shared loads, so offers decided
        together are spread over the couriers. Loads only balance the work, so a count a second
        or two old is good enough, and reading it per offer costs a query over every delivery on
        the road."""
        read = self._roster_read
        stale = time.monotonic() - self._roster_read_at > self._roster_refresh_s
        if read is None or (read.done() and (stale or read.cancelled() or read.exception() is not None)):
            self._roster_read = asyncio.ensure_future(self._read_roster())
            self._roster_read_at = time.monotonic()
        return await asyncio.shield(self._roster_read)

    async def _read_roster(self) -> tuple[list[CourierProfile], dict[str, int]]:
        roster = await self._storage.couriers()
        return roster, await self._storage.loads(roster)

    # --- what the delivery waits for ------------------------------------------------------------

    async def on_decision(self, event: Envelope) -> None:
        if isinstance(event, PrescriptionApproved):
            details = event.delivery
            await self._update(
                event.prescription_id,
                lambda d: None if d.details is not None else d.model_copy(update={"details": details}),
                event,
            )

    async def on_inventory_event(self, event: Envelope) -> None:
        match event:
            case inv.StockReserved():
                warehouse_id = event.warehouse_id
                await self._update(
                    event.prescription_id,
                    lambda d: None if d.warehouse_id else d.model_copy(update={"warehouse_id": warehouse_id}),
                    event,
                )
            case inv.ReservationFailed():
                await self._update(
                    event.prescription_id,
                    lambda d: (
                        d.model_copy(update={"state": DeliveryState.CANCELLED})
                        if d.state is DeliveryState.WAITING
                        else None
                    ),
                    event,
                )

    async def _update(self, rx: str, mutate: Mutation, cause: Envelope) -> None:
        """Apply `mutate`; if the delivery then has all it needs, offer it to a courier in the same write.

        The roster and loads are read only when an offer is due; if the delivery became ready
        between our read and our write (the approval and the reservation arrive on two consumers),
        the write is skipped, the roster read, and the decision taken again.
        """
        view = _RosterView()

        def decide(current: Delivery | None) -> Change[Delivery] | None:
            mutated = mutate(current or Delivery(prescription_id=rx))
            if mutated is None:
                return None
            if not domain.ready_to_offer(mutated):
                return Change(mutated)
            if view.roster is None:
                view.wanted = True
                return None
            return self._offer(mutated, view.roster, view.loads, cause)

        for _ in range(3):
            view.wanted = False
            await self._storage.deliveries.apply(rx, decide, message_id=cause.message_id)
            if not view.wanted:
                return
            view.roster, view.loads = await self._roster_and_loads()
        raise RuntimeError(f"delivery {rx} kept changing while choosing a courier")

    def _offer(
        self, delivery: Delivery, roster: list[CourierProfile], loads: dict[str, int], cause: Envelope
    ) -> Change[Delivery]:
        tried = [a.courier_id for a in delivery.attempts]
        courier = domain.choose_courier(roster, loads, tried)
        offered = domain.offer(delivery, courier)
        if courier is not None:
            loads[courier.courier_id] = loads.get(courier.courier_id, 0) + 1
        attempt = offered.current
        if courier is None or attempt is None or offered.state is not DeliveryState.OFFERED:
            log.warning("no courier available; delivery waits", prescription_id=delivery.prescription_id)
            return Change(offered)
        assert offered.details is not None and offered.warehouse_id is not None
        common = {"correlation_id": delivery.prescription_id, "causation_id": cause.message_id, "producer": PRODUCER}
        dispatch = c.DispatchOffered(
            **common,
            dispatch_id=attempt.dispatch_id,
            courier_id=courier.courier_id,
            package_id=delivery.prescription_id,
            attempt=attempt.number,
            pickup_warehouse_id=offered.warehouse_id,
            address=offered.details.address,
            contact_phone=offered.details.contact_phone,
            cold_chain=offered.details.cold_chain,
            controlled=offered.details.controlled,
        )
        assigned = c.CourierAssigned(
            **common,
            prescription_id=delivery.prescription_id,
            dispatch_id=attempt.dispatch_id,
            courier_id=courier.courier_id,
            attempt=attempt.number,
            warehouse_id=offered.warehouse_id,
        )
        log.info("courier dispatched", courier_id=courier.courier_id, attempt=attempt.number)
        return Change(offered, [assigned, dispatch])

    # --- what couriers report -------------------------------------------------------------------

    async def on_report(self, report: c.CourierReported) -> None:
        rx = report.package_id
        outcomes: list[ReportOutcome] = []
        roster, loads = await self._roster_and_loads() if report.status == "failed" else ([], {})

        def decide(current: Delivery | None) -> Change[Delivery] | None:
            outcomes.clear()
            if current is None:
                raise Refused("unknown_package", f"no delivery for package {rx}")
            try:
                updated, outcome = domain.apply_report(
                    current,
                    dispatch_id=report.dispatch_id,
                    courier_id=report.courier_id,
                    status=report.status,
                    failure_reason=report.failure_reason,
                    max_attempts=self._max_attempts,
                )
            except domain.ReportRefused as refused:
                raise Refused(refused.code, str(refused)) from None
            outcomes.append(outcome)
            if outcome is ReportOutcome.IGNORED:
                return None
            return self._report_events(current, updated, outcome, report, roster, loads)

        if await self._storage.deliveries.apply(rx, decide, message_id=report.message_id):
            log.info("courier report applied", outcome=outcomes[-1], courier_id=report.courier_id)

    def _report_events(
        self,
        before: Delivery,
        after: Delivery,
        outcome: ReportOutcome,
        report: c.CourierReported,
        roster: list[CourierProfile],
        loads: dict[str, int],
    ) -> Change[Delivery]:
        attempt = before.current
        assert attempt is not None and before.warehouse_id is not None
        common = {
            "correlation_id": before.prescription_id,
            "causation_id": report.message_id,
            "producer": PRODUCER,
            "prescription_id": before.prescription_id,
            "dispatch_id": attempt.dispatch_id,
            "courier_id": attempt.courier_id,
            "attempt": attempt.number,
        }
        where = {"warehouse_id": before.warehouse_id}
        match outcome:
            case ReportOutcome.ACCEPTED:
                return Change(after, [c.DeliveryAccepted(**common)])
            case ReportOutcome.PICKED_UP:
                return Change(after, [c.DeliveryPickedUp(**common, **where)])
            case ReportOutcome.DELIVERED:
                return Change(after, [c.DeliveryCompleted(**common, **where)])
        assert report.failure_reason is not None
        failed = c.DeliveryFailed(
            **common,
            **where,
            reason=report.failure_reason,
            goods_returned=before.state is DeliveryState.PICKED_UP,
            will_retry=outcome is ReportOutcome.FAILED_WILL_RETRY,
        )
        if outcome is ReportOutcome.FAILED_GIVEN_UP:
            abandoned = c.DeliveryAbandoned(
                correlation_id=before.prescription_id,
                causation_id=report.message_id,
                producer=PRODUCER,
                prescription_id=before.prescription_id,
                warehouse_id=before.warehouse_id,
                attempts=len(after.attempts),
                last_reason=report.failure_reason,
            )
            log.info("delivery undeliverable", attempts=len(after.attempts))
            return Change(after, [failed, abandoned])
        redispatch = self._offer(after, roster, loads, report)
        return Change(redispatch.state, [failed, *redispatch.events])
