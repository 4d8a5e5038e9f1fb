"""Use cases of the courier service."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from pharmacy_contracts import Envelope
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.prescription import PrescriptionApproved, PrescriptionCancelled
from services.runtime import delivery_codes
from services.runtime.documents import Change
from services.runtime.errors import Refused

from . import domain
from .domain import Attempt, CancelOutcome, CourierProfile, Delivery, DeliveryState, Policy, ReportOutcome
from .storage import CourierStorage

log = structlog.get_logger()
PRODUCER = "courier"
#: Reports that free a courier ask for waiting deliveries to be offered; a burst of them shares one look.
WAITING_PASS_GAP_S = 0.1
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass
class _RosterView:
    """The roster and per-courier loads one decision (or one pass over many) chooses from."""

    roster: list[CourierProfile] | None = None
    loads: dict[str, int] = field(default_factory=dict)
    wanted: bool = False
    #: Offers counted into `loads` by the decision in hand, not yet written.
    counted: list[tuple[dict[str, int], str]] = field(default_factory=list)

    def count_offer(self, courier_id: str) -> None:
        """Counted while deciding, so the next decision of the same group write sees it; taken back
        if the decision is run again (a concurrent write won) or its write fails (see `_apply`)."""
        self.loads[courier_id] = self.loads.get(courier_id, 0) + 1
        self.counted.append((self.loads, courier_id))

    def uncount(self) -> None:
        for loads, courier_id in self.counted:
            if loads.get(courier_id, 0) > 0:
                loads[courier_id] -= 1
        self.counted.clear()


Decide = Callable[[Delivery | None, _RosterView], Change[Delivery] | None]


class CourierService:
    def __init__(
        self,
        storage: CourierStorage,
        *,
        policy: Policy,
        roster_refresh_s: float,
        code_key: bytes | None,
        clock: Callable[[], datetime],
    ):
        self._storage = storage
        self._policy = policy
        self._roster_refresh_s = roster_refresh_s
        self._code_key = code_key
        self._clock = clock
        self._roster_read: asyncio.Future[tuple[list[CourierProfile], dict[str, int]]] | None = None
        self._roster_read_at = 0.0
        self._waiting_lock = asyncio.Lock()
        self._waiting_task: asyncio.Task[None] | None = None
        self._waiting_wanted = False
        #: Whether a delivery may be waiting for a courier; until a look says otherwise, assume so.
        self._maybe_waiting = True

    async def stop(self) -> None:
        if self._waiting_task is not None:
            self._waiting_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiting_task

    # --- the roster -------------------------------------------------------------------------------

    async def _roster_and_loads(self, *, fresh: bool = False) -> tuple[list[CourierProfile], dict[str, int]]:
        """The roster and the deliveries on hand per courier, shared by every offer decided within
        `roster_refresh_s`; each offer counts itself into the shared loads (and each courier freed
        here counts itself out), so offers decided together respect capacities. Across instances
        the loads can be up to `roster_refresh_s` old: capacity is then kept approximately."""
        read = self._roster_read
        stale = time.monotonic() - self._roster_read_at > self._roster_refresh_s
        if fresh or read is None or (read.done() and (stale or read.cancelled() or read.exception() is not None)):
            self._roster_read = asyncio.ensure_future(self._read_roster())
            self._roster_read_at = time.monotonic()
        return await asyncio.shield(self._roster_read)

    async def _read_roster(self) -> tuple[list[CourierProfile], dict[str, int]]:
        roster = await self._storage.couriers()
        return roster, await self._storage.loads(roster)

    def _freed(self, courier_id: str) -> None:
        """A courier carries one delivery fewer: count it out and offer them a waiting delivery."""
        read = self._roster_read
        if read is not None and read.done() and not read.cancelled() and read.exception() is None:
            loads = read.result()[1]
            if loads.get(courier_id, 0) > 0:
                loads[courier_id] -= 1
        self._offer_waiting_soon()

    # --- one delivery, one write --------------------------------------------------------------------

    async def _apply(
        self, rx: str, decide: Decide, message_id: str | None, view: _RosterView | None = None
    ) -> Change[Delivery] | None:
        """Apply `decide`; the roster is read only when it asks for one (an offer is due): it then
        returns None with `view.wanted` set, and is asked again with the roster."""
        view = view or _RosterView()

        def run(current: Delivery | None) -> Change[Delivery] | None:
            view.uncount()  # a decision run again counts its offer again
            return decide(current, view)

        for _ in range(3):
            view.wanted = False
            try:
                change = await self._storage.deliveries.apply(rx, run, message_id=message_id)
            except BaseException:
                view.uncount()
                raise
            if change is None:
                view.uncount()
            view.counted.clear()  # written: the offer's count stays
            if not view.wanted:
                return change
            view.roster, view.loads = await self._roster_and_loads()
        raise RuntimeError(f"delivery {rx} kept changing while choosing a courier")

    def _offer_if_ready(
        self,
        before: Delivery | None,
        after: Delivery,
        events: Sequence[Envelope],
        view: _RosterView,
        causation_id: str | None,
        now: datetime,
    ) -> Change[Delivery] | None:
        if not domain.ready_to_offer(after):
            return Change(after, events)
        if view.roster is None:
            view.wanted = True
            return None
        return self._offer(before, after, view, causation_id, now, events)

    def _offer(
        self,
        before: Delivery | None,
        delivery: Delivery,
        view: _RosterView,
        causation_id: str | None,
        now: datetime,
        events: Sequence[Envelope] = (),
    ) -> Change[Delivery]:
        assert view.roster is not None and delivery.details is not None and delivery.warehouse_id is not None
        rx = delivery.prescription_id
        courier = domain.choose_courier(view.roster, view.loads, delivery)
        offered = domain.offer(delivery, courier, now=now, accept_timeout=self._policy.accept_timeout)
        common = {"correlation_id": rx, "causation_id": causation_id, "producer": PRODUCER}
        if courier is None:
            self._maybe_waiting = True
            if not domain.began_waiting(before, offered):
                return Change(offered, events)
            why = domain.why_no_courier(view.roster, view.loads, delivery)
            log.warning("no courier can take the delivery; it waits", prescription_id=rx, why=why)
            waiting = c.DeliveryWaiting(**common, prescription_id=rx, warehouse_id=delivery.warehouse_id, why=why)
            return Change(offered, [*events, waiting])
        view.count_offer(courier.courier_id)
        attempt = offered.current
        assert attempt is not None
        dispatch = c.DispatchOffered(
            **common,
            dispatch_id=attempt.dispatch_id,
            courier_id=courier.courier_id,
            package_id=rx,
            attempt=attempt.number,
            pickup_warehouse_id=delivery.warehouse_id,
            address=delivery.details.address,
            contact_phone=delivery.details.contact_phone,
            cold_chain=delivery.details.cold_chain,
            controlled=delivery.details.controlled,
            pickup_location=delivery.pickup_location,
            accept_by=attempt.accept_by,
        )
        assigned = c.CourierAssigned(
            **common,
            prescription_id=rx,
            dispatch_id=attempt.dispatch_id,
            courier_id=courier.courier_id,
            attempt=attempt.number,
            warehouse_id=delivery.warehouse_id,
        )
        log.info(
            "courier dispatched",
            prescription_id=rx,
            courier_id=courier.courier_id,
            attempt=attempt.number,
            trip_km=round(domain.trip_km(courier, delivery), 1),
        )
        return Change(offered, [*events, assigned, dispatch])

    # --- what the delivery waits for ------------------------------------------------------------

    async def on_decision(self, event: Envelope) -> None:
        match event:
            case PrescriptionApproved():
                await self._take_details(event)
            case PrescriptionCancelled():
                await self._cancel(event)

    async def _take_details(self, event: PrescriptionApproved) -> None:
        rx, details, now = event.prescription_id, event.delivery, self._clock()

        def decide(current: Delivery | None, view: _RosterView) -> Change[Delivery] | None:
            delivery = current or Delivery(prescription_id=rx)
            if delivery.details is not None:
                return None
            known = delivery.model_copy(update={"details": details, "details_at": now})
            return self._offer_if_ready(current, known, [], view, event.message_id, now)

        await self._apply(rx, decide, event.message_id)

    async def on_inventory_event(self, event: Envelope) -> None:
        match event:
            case inv.StockReserved():
                await self._take_reservation(event)
            case inv.ReservationFailed():
                await self._reservation_failed(event)

    async def _take_reservation(self, event: inv.StockReserved) -> None:
        rx, now = event.prescription_id, self._clock()

        def decide(current: Delivery | None, view: _RosterView) -> Change[Delivery] | None:
            delivery = current or Delivery(prescription_id=rx)
            if delivery.warehouse_id:
                return None
            known = delivery.model_copy(
                update={"warehouse_id": event.warehouse_id, "pickup_location": event.pickup_location}
            )
            if known.cancel_notice_due:
                # Cancelled before the reservation: now inventory can be told which warehouse to release.
                notice = self._cancelled(rx, event.message_id, event.warehouse_id, goods_returned=False)
                return Change(known.model_copy(update={"cancel_notice_due": False}), [notice])
            return self._offer_if_ready(current, known, [], view, event.message_id, now)

        await self._apply(rx, decide, event.message_id)

    async def _reservation_failed(self, event: inv.ReservationFailed) -> None:
        rx = event.prescription_id

        def decide(current: Delivery | None, _: _RosterView) -> Change[Delivery] | None:
            delivery = current or Delivery(prescription_id=rx)
            if delivery.cancel_notice_due:
                notice = self._cancelled(rx, event.message_id, None, goods_returned=False)
                return Change(delivery.model_copy(update={"cancel_notice_due": False}), [notice])
            if delivery.state is DeliveryState.WAITING:
                return Change(delivery.model_copy(update={"state": DeliveryState.CANCELLED}))
            return None

        await self._apply(rx, decide, event.message_id)

    # --- cancellation ----------------------------------------------------------------------------

    async def _cancel(self, event: PrescriptionCancelled) -> None:
        rx = event.prescription_id
        if not event.was_approved:
            return  # never approved: no delivery exists or ever will
        outcomes: list[tuple[CancelOutcome, Delivery]] = []

        def decide(current: Delivery | None, _: _RosterView) -> Change[Delivery] | None:
            outcomes.clear()
            # A delivery not seen yet is recorded cancelled, so a late approval or reservation never dispatches it.
            before = current or Delivery(prescription_id=rx)
            after, outcome = domain.cancel(before)
            outcomes.append((outcome, before))
            return self._cancel_events(before, after, outcome, event.message_id)

        change = await self._apply(rx, decide, event.message_id)
        if not outcomes:
            return
        outcome, before = outcomes[-1]
        if outcome is CancelOutcome.TOO_LATE:
            log.info("too late to cancel the delivery", prescription_id=rx, state=before.state)
        elif outcome is CancelOutcome.ALREADY:
            log.info("delivery already cancelled", prescription_id=rx, state=before.state)
        elif change is not None:
            log.info("delivery cancelled", prescription_id=rx, outcome=outcome, courier_id=before.active_courier_id)
            if outcome is CancelOutcome.WITHDRAWN and before.active_courier_id:
                self._freed(before.active_courier_id)

    def _cancel_events(
        self, before: Delivery, after: Delivery, outcome: CancelOutcome, causation_id: str
    ) -> Change[Delivery] | None:
        rx = before.prescription_id
        attempt = before.current
        # An earlier attempt's goods that travelled and came back (held for the retry) never go back on the shelf.
        travelled = domain.goods_travelled(before)
        match outcome:
            case CancelOutcome.CANCELLED:
                if after.cancel_notice_due:
                    return Change(after)
                return Change(after, [self._cancelled(rx, causation_id, before.warehouse_id, goods_returned=travelled)])
            case CancelOutcome.WITHDRAWN:
                assert attempt is not None
                return Change(
                    after,
                    [
                        self._withdrawn(attempt, rx, causation_id, reason="cancelled", return_goods=False),
                        self._cancelled(rx, causation_id, before.warehouse_id, goods_returned=travelled),
                    ],
                )
            case CancelOutcome.RECALLED:
                assert attempt is not None
                return Change(
                    after, [self._withdrawn(attempt, rx, causation_id, reason="cancelled", return_goods=True)]
                )
        return None

    @staticmethod
    def _cancelled(
        rx: str, causation_id: str | None, warehouse_id: str | None, *, goods_returned: bool = False
    ) -> c.DeliveryCancelled:
        return c.DeliveryCancelled(
            correlation_id=rx,
            causation_id=causation_id,
            producer=PRODUCER,
            prescription_id=rx,
            warehouse_id=warehouse_id,
            goods_returned=goods_returned,
        )

    @staticmethod
    def _withdrawn(
        attempt: Attempt,
        rx: str,
        causation_id: str | None,
        *,
        reason: Literal["acceptance_timeout", "cancelled"],
        return_goods: bool,
    ) -> c.DispatchWithdrawn:
        return c.DispatchWithdrawn(
            correlation_id=rx,
            causation_id=causation_id,
            producer=PRODUCER,
            dispatch_id=attempt.dispatch_id,
            courier_id=attempt.courier_id,
            package_id=rx,
            reason=reason,
            return_goods=return_goods,
        )

    # --- what couriers report -------------------------------------------------------------------

    async def on_report(self, report: c.CourierReported) -> None:
        rx, now = report.package_id, self._clock()
        code_is_right = (
            report.status == "delivered"
            and self._code_key is not None
            and delivery_codes.is_right_code(self._code_key, rx, report.delivery_code)
        )
        view = _RosterView()
        if report.status == "failed":  # a retry is offered in the same write
            view.roster, view.loads = await self._roster_and_loads()
        outcomes: list[tuple[ReportOutcome, Delivery]] = []
        before_states: list[DeliveryState] = []

        def decide(current: Delivery | None, view: _RosterView) -> Change[Delivery] | None:
            outcomes.clear()
            before_states.clear()
            if current is None:
                raise Refused("unknown_package", f"no delivery for package {rx}")
            before_states.append(current.state)
            try:
                updated, outcome = domain.apply_report(
                    current,
                    dispatch_id=report.dispatch_id,
                    courier_id=report.courier_id,
                    status=report.status,
                    failure_reason=report.failure_reason,
                    code_is_right=code_is_right,
                    policy=self._policy,
                    now=now,
                )
            except domain.ReportRefused as refused:
                raise Refused(refused.code, str(refused)) from None
            outcomes.append((outcome, updated))
            if outcome is ReportOutcome.IGNORED:
                return None
            return self._report_events(current, updated, outcome, report, view, now)

        if await self._apply(rx, decide, report.message_id, view) is None:
            return
        outcome, updated = outcomes[-1]
        recalled = before_states[-1] is DeliveryState.RETURNING
        if outcome is ReportOutcome.CODE_REJECTED:
            attempt = updated.current
            log.warning(
                "delivery code refused: the delivery does not count",
                prescription_id=rx,
                courier_id=report.courier_id,
                dispatch_id=report.dispatch_id,
                wrong_codes=attempt.wrong_codes if attempt else None,
            )
        elif outcome is ReportOutcome.CODE_LOCKED:
            log.warning(
                "too many wrong delivery codes: the attempt is locked; the dispatcher decides",
                prescription_id=rx,
                courier_id=report.courier_id,
                dispatch_id=report.dispatch_id,
                wrong_codes=self._policy.max_wrong_codes,
            )
        elif outcome is ReportOutcome.DELIVERED and recalled:
            log.warning(
                "delivered before the recall reached the courier: the cancellation came too late",
                prescription_id=rx,
                courier_id=report.courier_id,
            )
        elif outcome is ReportOutcome.PICKED_UP and recalled:
            log.warning(
                "goods picked up before the recall reached the courier; they come back",
                prescription_id=rx,
                courier_id=report.courier_id,
            )
        elif outcome is ReportOutcome.FAILED_GIVEN_UP:
            log.info(
                "delivery undeliverable", prescription_id=rx, courier_id=report.courier_id, reason=report.failure_reason
            )
        else:
            log.info("courier report applied", prescription_id=rx, outcome=outcome, courier_id=report.courier_id)
        if outcome in domain.FREES_COURIER:
            self._freed(report.courier_id)

    def _report_events(
        self,
        before: Delivery,
        after: Delivery,
        outcome: ReportOutcome,
        report: c.CourierReported,
        view: _RosterView,
        now: datetime,
    ) -> Change[Delivery] | None:
        attempt = before.current
        assert attempt is not None and before.warehouse_id is not None
        rx = before.prescription_id
        common = {
            "correlation_id": rx,
            "causation_id": report.message_id,
            "producer": PRODUCER,
            "prescription_id": rx,
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
            case ReportOutcome.CODE_REJECTED | ReportOutcome.CODE_LOCKED:
                wrong = after.current.wrong_codes if after.current else 1
                locked = outcome is ReportOutcome.CODE_LOCKED
                return Change(after, [c.DeliveryCodeRejected(**common, wrong_codes=wrong, locked=locked)])
            case ReportOutcome.RETURNED:
                # Confirmed by a courier recalled before pickup, nothing travelled: the stock goes back on the shelf.
                travelled = domain.goods_travelled(after)
                notice = self._cancelled(rx, report.message_id, before.warehouse_id, goods_returned=travelled)
                return Change(after, [notice])
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
                correlation_id=rx,
                causation_id=report.message_id,
                producer=PRODUCER,
                prescription_id=rx,
                warehouse_id=before.warehouse_id,
                attempts=max(1, domain.failures(after)),
                last_reason=report.failure_reason,
                goods_travelled=domain.goods_travelled(after),
            )
            return Change(after, [failed, abandoned])
        return self._offer_if_ready(before, after, [failed], view, report.message_id, now)

    # --- deadlines and waiting deliveries (the sweep) ----------------------------------------------

    async def sweep(self) -> None:
        """Offers not accepted in time go to the next courier, passed deadlines are alerted once,
        and waiting deliveries are offered to couriers who became free. Idempotent: every change
        is a versioned write, decided again on the current document."""
        now = self._clock()
        open_deliveries = await self._storage.deliveries.find(state={"$in": sorted(domain.SWEPT)})
        due = [
            d.prescription_id
            for d in open_deliveries
            if domain.offer_expired(d, now) or domain.overdue(d, now, self._policy) is not None
        ]
        view = _RosterView()
        for rx in due:
            await self._sweep_one(rx, now, view)
        if any(d.state is DeliveryState.AWAITING_COURIER for d in open_deliveries):
            self._maybe_waiting = True
        await self._offer_waiting()

    async def _sweep_one(self, rx: str, now: datetime, view: _RosterView) -> None:
        expired: list[Attempt] = []
        alerts: list[domain.OverdueStage] = []

        def decide(current: Delivery | None, view: _RosterView) -> Change[Delivery] | None:
            expired.clear()
            alerts.clear()
            if current is None:
                return None
            after, events = current, []
            attempt = current.current
            if domain.offer_expired(current, now):
                assert attempt is not None
                if view.roster is None:
                    view.wanted = True
                    return None
                expired.append(attempt)
                common = {"correlation_id": rx, "causation_id": None, "producer": PRODUCER}
                events += [
                    c.DeliveryOfferExpired(
                        **common,
                        prescription_id=rx,
                        dispatch_id=attempt.dispatch_id,
                        courier_id=attempt.courier_id,
                        attempt=attempt.number,
                    ),
                    self._withdrawn(attempt, rx, None, reason="acceptance_timeout", return_goods=False),
                ]
                redispatch = self._offer(current, domain.expire_offer(current, now), view, None, now, events)
                after, events = redispatch.state, list(redispatch.events)
            passed = domain.overdue(after, now, self._policy)
            if passed is not None:
                stage, since = passed
                alerts.append(stage)
                after = domain.mark_overdue(after, stage)
                courier_id = after.current.courier_id if stage == "on_the_road" and after.current else None
                events.append(
                    c.DeliveryOverdue(
                        correlation_id=rx,
                        producer=PRODUCER,
                        prescription_id=rx,
                        stage=stage,
                        since=since,
                        courier_id=courier_id,
                    )
                )
            return None if after is current else Change(after, events)

        if await self._apply(rx, decide, None, view) is None:
            return
        for attempt in expired:
            log.info(
                "offer not accepted in time; withdrawn",
                prescription_id=rx,
                courier_id=attempt.courier_id,
                dispatch_id=attempt.dispatch_id,
            )
            self._freed(attempt.courier_id)
        for stage in alerts:
            log.warning("delivery overdue; the dispatcher decides", prescription_id=rx, stage=stage)

    def _offer_waiting_soon(self) -> None:
        """Look for waiting deliveries in the background: one look at a time, repeated while asked."""
        if not self._maybe_waiting:
            return
        self._waiting_wanted = True
        if self._waiting_task is None or self._waiting_task.done():
            # A context of its own: its log lines are not the message's that happened to start it.
            self._waiting_task = asyncio.create_task(
                self._offer_waiting_while_wanted(), name="courier-waiting", context=contextvars.Context()
            )

    async def _offer_waiting_while_wanted(self) -> None:
        while self._waiting_wanted:
            self._waiting_wanted = False
            try:
                await self._offer_waiting()
            except Exception:  # the sweep looks again
                log.exception("offering waiting deliveries failed; the sweep tries again")
                return
            await asyncio.sleep(WAITING_PASS_GAP_S)

    async def _offer_waiting(self) -> None:
        """Offer waiting deliveries, longest waiting first, to couriers who can take them now."""
        async with self._waiting_lock:
            if not self._maybe_waiting:
                return
            # Cleared before looking, so a delivery that starts waiting meanwhile sets it again.
            self._maybe_waiting = False
            found = await self._storage.deliveries.find(state=DeliveryState.AWAITING_COURIER.value)
            waiting = [d for d in found if domain.ready_to_offer(d)]
            if not waiting:
                return
            self._maybe_waiting = True
            roster, loads = await self._roster_and_loads(fresh=True)
            view = _RosterView(roster, loads)
            now = self._clock()
            offered = 0
            for delivery in sorted(waiting, key=lambda d: (d.awaiting_since or _EPOCH, d.prescription_id)):
                if domain.choose_courier(roster, loads, delivery) is None:
                    continue
                change = await self._apply(delivery.prescription_id, self._offer_if_still_waiting(now), None, view)
                offered += change is not None
            if offered:
                log.info("waiting deliveries offered", offered=offered, still_waiting=len(waiting) - offered)

    def _offer_if_still_waiting(self, now: datetime) -> Decide:
        def decide(current: Delivery | None, view: _RosterView) -> Change[Delivery] | None:
            if (
                current is None
                or current.state is not DeliveryState.AWAITING_COURIER
                or not domain.ready_to_offer(current)
            ):
                return None
            assert view.roster is not None
            if domain.choose_courier(view.roster, view.loads, current) is None:
                return None
            return self._offer(current, current, view, None, now)

        return decide
