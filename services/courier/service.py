"""Use cases of the courier service, each over a batch: delivery details and cancellations from the
prescription service, reservations from inventory, couriers' reports, and the sweep (offers not
accepted in time, deadlines, deliveries waiting for a courier).

Each use case takes a batch's records and answers, in the same order, what became of each
(`Handled`). The deliveries the batch touches are loaded with one query, decided in memory with the
plain functions of decisions.py and saved with one bulk write, through the unit of work (see
services/runtime/unit_of_work.py).

Offering is the one decision that looks beyond its own delivery: it chooses from the roster and
each courier's load (the deliveries they hold). Those come from `FleetCache`, read at most every
`roster_refresh_s` and kept up to date in between from what this process saved: the handovers in
the `Decided` results of the records applied, never from inside a decision, which the unit of work
may run again when its save lost a race. Two deliveries of one batch must not both take a courier's
last place, so before deciding, the batch's offers are worked out in order on the documents as
loaded (`OfferPlan`): each record is then decided on the fleet with the offers before it counted in,
a pure function of what was loaded. Batches in flight at the same time in this process hold their
planned offers in the cache, so they see each other's; across instances the loads may be up to
`roster_refresh_s` old, and capacity is kept approximately.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog

from pharmacy_contracts import Envelope, signing
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.prescription import PrescriptionApproved, PrescriptionCancelled
from services.runtime.reasons import SENDER_UNKNOWN, identifier_or_none
from services.runtime.store import Save, Saved, Store, Stored
from services.runtime.unit_of_work import Handled, Outcome, Record, UnitOfWork

from . import decisions, domain, messages, round_pass
from .decisions import Decided, Fleet, Handover, Look, Rules
from .domain import CancelOutcome, Delivery, DeliveryState, Policy, ReportOutcome
from .messages import PRODUCER
from .storage import CourierStorage

log = structlog.get_logger()
#: Reports that free a courier ask for waiting deliveries to be offered; a burst of them shares one look.
WAITING_PASS_GAP_S = 0.1
_EPOCH = datetime.min.replace(tzinfo=UTC)


class FleetCache:
    """The roster and each courier's load, read at most every `refresh_s` (one read shared by the
    batches that want it meanwhile), moved in between by the handovers this process saved, and by
    the offers planned by batches in flight (`hold`), until they are saved or not."""

    def __init__(self, read: Callable[[], Awaitable[Fleet]], refresh_s: float) -> None:
        self._read = read
        self._refresh_s = refresh_s
        self._reading: asyncio.Future[Fleet] | None = None
        self._read_at = 0.0
        self._settled = Fleet()
        self._held: dict[int, tuple[Handover, ...]] = {}

    async def refresh(self, *, fresh: bool = False) -> None:
        reading = self._reading
        stale = time.monotonic() - self._read_at > self._refresh_s
        failed = reading is not None and reading.done() and (reading.cancelled() or reading.exception() is not None)
        if fresh or reading is None or failed or (reading.done() and stale):
            reading = self._reading = asyncio.ensure_future(self._read())
            self._read_at = time.monotonic()
            reading.add_done_callback(self._take)
        await asyncio.shield(reading)

    def _take(self, reading: asyncio.Future[Fleet]) -> None:
        # Handovers settled while the read was under way may or may not be in what it found: until
        # the next read, a load may be off by those (the same window across instances is wider).
        if reading is self._reading and not reading.cancelled() and reading.exception() is None:
            self._settled = reading.result()

    def view(self, *, excluding: int | None = None) -> Fleet:
        """The fleet with every batch's planned offers counted in, but those of `excluding`."""
        return self._settled.after(h for batch, held in self._held.items() if batch != excluding for h in held)

    def hold(self, batch: int, handovers: Collection[Handover]) -> None:
        self._held[batch] = tuple(handovers)

    def settle(self, batch: int, saved: Collection[Handover]) -> None:
        """The batch's planned offers give way to the handovers it saved."""
        self._held.pop(batch, None)
        self._settled = self._settled.after(saved)


class OfferPlan:
    """The deliveries store, for one batch whose records may offer: each load is followed by working
    out, on the documents just loaded, the fleet each record is to be decided on, with the offers and
    handovers of the records before it counted in. The decisions the unit of work then makes are
    the plan's own (the same pure function on the same document); a document loaded again after a
    lost race is planned again in place of its first plan, so its offer is never counted twice."""

    def __init__(
        self, store: Store[Delivery], records: Sequence[Record[Envelope]], fleet: FleetCache, rules: Rules, batch: int
    ) -> None:
        self.name, self.model, self.keeps_trace = store.name, store.model, store.keeps_trace
        self.keeps_every_message = store.keeps_every_message
        self._store = store
        self._fleet = fleet
        self._rules = rules
        self._batch = batch
        self._records: dict[str, list[Record[Envelope]]] = {}
        for record in records:
            self._records.setdefault(decisions.delivery_key(record.message), []).append(record)
        self._planned: dict[str, list[Handover]] = {}
        self._views: dict[str, Fleet] = {}

    def fleet_for(self, message: Envelope) -> Fleet:
        return self._views[message.message_id]

    async def load(self, ids: Collection[str], *, from_memory: bool = False) -> dict[str, Stored[Delivery]]:
        loaded = await self._store.load(ids, from_memory=from_memory)
        for doc_id in ids:
            self._plan(doc_id, loaded[doc_id])
        self._fleet.hold(self._batch, [h for handovers in self._planned.values() for h in handovers])
        return loaded

    def _plan(self, doc_id: str, stored: Stored[Delivery]) -> None:
        self._planned.pop(doc_id, None)
        fleet = self._fleet.view(excluding=self._batch).after(h for hs in self._planned.values() for h in hs)
        planned: list[Handover] = []
        state = stored.state
        seen: set[str] = set()
        for record in self._records.get(doc_id, []):
            if record.message_id in seen:
                continue  # the same message twice: the unit of work takes the first
            seen.add(record.message_id)
            self._views[record.message_id] = view = fleet.after(planned)
            if stored.broken is not None:
                continue  # its records fail unread: nothing of it is offered
            try:
                decision = decisions.decide(view, self._rules, state, record.message)
            except Exception:  # the unit of work runs it again and fails the record itself
                continue
            if decision.state is not None and isinstance(decision.result, Decided):
                planned.append(decision.result.handover)
                state = decision.state
        self._planned[doc_id] = planned

    async def save(self, saves: Sequence[Save[Delivery]]) -> Saved:
        return await self._store.save(saves)

    def remembers(self, topic: str | None) -> bool:
        return self._store.remembers(topic)

    async def applied(self, message_ids: Collection[str]) -> set[str]:
        return await self._store.applied(message_ids)

    async def pending_outbox(self, limit: int = 200, *, written_before: float | None = None) -> list[Stored[Delivery]]:
        return await self._store.pending_outbox(limit, written_before=written_before)

    async def drop_published(self, published: Mapping[str, Collection[str]]) -> None:
        await self._store.drop_published(published)

    async def note_mark(self) -> None:
        await self._store.note_mark()

    async def retire(self) -> None:
        await self._store.retire()


#: What each consumer acts on (the rest of its topic is passed over unparsed: `acts_on`).
DECISIONS: tuple[type[Envelope], ...] = (PrescriptionApproved, PrescriptionCancelled)
STOCK_EVENTS: tuple[type[Envelope], ...] = (
    inv.StockReserved,
    inv.ReservationFailed,
    inv.StockRepacked,
    inv.StockQuarantined,
    inv.PrescriptionRecalled,
)


class CourierService:
    """Use cases over batches: each takes a batch's records and says what became of each."""

    def __init__(
        self,
        storage: CourierStorage,
        unit_of_work: UnitOfWork,
        *,
        policy: Policy,
        roster_refresh_s: float,
        code_key: bytes | None,
        clock: Callable[[], datetime],
        rounds: RoundsConfig | None = None,
    ):
        self._storage = storage
        self._rounds = rounds
        self._uow = unit_of_work
        self._policy = policy
        self._code_key = code_key
        self._clock = clock
        self._fleet = FleetCache(self._read_fleet, roster_refresh_s)
        self._batches = itertools.count(1)
        self._waiting_lock = asyncio.Lock()
        self._waiting_task: asyncio.Task[None] | None = None
        self._waiting_wanted = False
        #: Whether a delivery may be waiting for a courier; until a look says otherwise, assume so.
        self._maybe_waiting = True

    def _rules(self) -> Rules:
        return Rules(self._policy, self._clock(), self._code_key, rounds=self._rounds is not None)

    async def stop(self) -> None:
        if self._waiting_task is not None:
            self._waiting_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiting_task

    async def _read_fleet(self) -> Fleet:
        roster = await self._storage.couriers()
        return Fleet(tuple(roster), await self._storage.loads(roster))

    # --- the consumers -----------------------------------------------------------------------------

    async def on_decision(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Approved prescriptions' delivery details, and cancellations; the rest of the topic is none
        of this service's business."""
        return await self._decide_those(records, DECISIONS)

    async def on_inventory_event(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Reserved stock (the delivery may be offered), reservations that failed, and prescriptions
        a lot recall withdrew or calls back from the road."""
        return await self._decide_those(records, STOCK_EVENTS)

    async def on_report(self, records: Sequence[Record[c.CourierReported]]) -> list[Handled[c.CourierReported]]:
        """What couriers report on their dispatches."""
        return await self._decide(records)

    async def on_dispatcher(self, records: Sequence[Record[c.AddressLocated]]) -> list[Handled[c.AddressLocated]]:
        """Dispatchers placing addresses that came without coordinates."""
        return await self._decide(records)

    async def _decide_those(
        self, records: Sequence[Record[Envelope]], kinds: tuple[type[Envelope], ...]
    ) -> list[Handled[Envelope]]:
        indexes = [i for i, r in enumerate(records) if isinstance(r.message, kinds)]
        decided = dict(zip(indexes, await self._decide([records[i] for i in indexes]), strict=True))
        return [decided.get(i) or Handled(r, Outcome.UNCHANGED) for i, r in enumerate(records)]

    # --- deciding a batch -----------------------------------------------------------------------------

    async def _decide(
        self, records: Sequence[Record[Any]], *, tracked: bool = True, rules: Rules | None = None
    ) -> list[Handled[Any]]:
        if not records:
            return []
        rules = rules or self._rules()
        batch = next(self._batches)
        store: Store[Delivery] = self._storage.deliveries
        fleet_for: Callable[[Envelope], Fleet] = _no_fleet
        if any(decisions.may_offer(r.message) for r in records):
            await self._fleet.refresh()
            plan = OfferPlan(store, records, self._fleet, rules, batch)
            store, fleet_for = plan, plan.fleet_for
        saved: list[Handover] = []
        try:
            handled = await self._uow.run(
                store,
                records,
                key=decisions.delivery_key,
                decide=partial(_decide_on, fleet_for, rules),
                tracked=tracked,
            )
            saved = [h.result.handover for h in handled if h.outcome is Outcome.APPLIED and _decided(h)]
        finally:
            self._fleet.settle(batch, saved)
        self._after(handled)
        return handled

    def _after(self, handled: Sequence[Handled[Any]]) -> None:
        freed = False
        for outcome in handled:
            outcome.record.in_context(_log, outcome, self._policy)
            if outcome.outcome is Outcome.APPLIED and _decided(outcome):
                result: Decided = outcome.result
                freed = freed or result.handover.frees is not None
                if result.after.state is DeliveryState.AWAITING_COURIER:
                    self._maybe_waiting = True
        if freed or (self._rounds is not None and self._maybe_waiting):
            self._offer_waiting_soon()

    # --- deadlines and waiting deliveries (the sweep) ----------------------------------------------

    async def sweep(self) -> None:
        """Offers not accepted in time go to the next courier, passed deadlines are alerted once,
        and waiting deliveries are offered to couriers who became free. Idempotent: every change
        is a versioned write, decided again on the current document."""
        rules = self._rules()
        open_deliveries = await self._storage.open_deliveries()
        due = [_look(d, "deadlines") for d in open_deliveries if decisions.due(d, rules)]
        for handled in await self._decide(due, tracked=False, rules=rules):
            if handled.outcome is Outcome.FAILED:
                log.warning("delivery deadline not acted on; the next sweep tries again", error=handled.error)
        if any(d.state is DeliveryState.AWAITING_COURIER for d in open_deliveries):
            self._maybe_waiting = True
        await self._offer_waiting()

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
        if self._rounds is not None:
            await self._plan_rounds(self._rounds)
            return
        async with self._waiting_lock:
            if not self._maybe_waiting:
                return
            # Cleared before looking, so a delivery that starts waiting meanwhile sets it again.
            self._maybe_waiting = False
            waiting = [d for d in await self._storage.waiting_deliveries() if domain.ready_to_offer(d)]
            if not waiting:
                return
            self._maybe_waiting = True
            await self._fleet.refresh(fresh=True)
            fleet = self._fleet.view()
            takers = [d for d in waiting if fleet.courier_for(d) is not None]
            takers.sort(key=lambda d: (d.awaiting_since or _EPOCH, d.prescription_id))
            handled = await self._decide([_look(d, "offer_waiting") for d in takers], tracked=False)
            offered = sum(h.outcome is Outcome.APPLIED for h in handled)
            if offered:
                log.info("waiting deliveries offered", offered=offered, still_waiting=len(waiting) - offered)

    async def _plan_rounds(self, config: RoundsConfig) -> None:
        """Plan the rounds of every depot due a plan (round_pass.py), and offer them: each stop is
        decided on its current document, so a plan made on a copy a report overtook changes nothing
        it should not."""
        async with self._waiting_lock:
            if not self._maybe_waiting:
                return
            self._maybe_waiting = False
            now = self._clock()
            open_deliveries = await self._storage.open_deliveries()
            if any(round_pass.waiting_for_a_round(d) for d in open_deliveries):
                self._maybe_waiting = True  # until they are all in rounds
            depots = round_pass.depots_due(
                open_deliveries, now=now, cadence=config.cadence, min_waiting=config.min_waiting
            )
            if not depots:
                return
            await self._fleet.refresh(fresh=True)
            fleet = self._fleet.view()
            roster = {p.courier_id: p for p in fleet.roster}
            shifts = round_pass.couriers_by_depot(
                fleet.roster, fleet.loads, depots, round_pass.busy_couriers(open_deliveries)
            )
            by_id = {d.prescription_id: d for d in open_deliveries}
            looks: list[Record[Look]] = []
            for depot in depots:
                candidates = list(depot.waiting)
                for open_round in depot.not_left:
                    courier = roster.get(open_round.courier_id)
                    if courier is None or not candidates:
                        continue
                    room = courier.capacity - fleet.loads.get(courier.courier_id, 0) + len(open_round.stops)
                    kept = [d.prescription_id for d in open_round.stops]
                    fits = [d for d in candidates if domain.may_carry(courier, d)]
                    # The search runs beside the event loop: consumers go on meanwhile.
                    replanned = await asyncio.to_thread(
                        config.planner,
                        depot,
                        [round_pass.Van(courier, room)],
                        [*open_round.stops, *fits],
                        required=kept,
                        departs_at=now,
                    )
                    for planned in replanned.rounds:
                        joined = {s.prescription_id for s in planned.stops} - set(kept)
                        if not joined:
                            continue  # nothing new fits: the round stands as its courier knows it
                        looks += self._round_looks(planned, open_round.round_id, depot, by_id, now)
                        candidates = [d for d in candidates if d.prescription_id not in joined]
                vans = [round_pass.Van(p, p.capacity - fleet.loads.get(p.courier_id, 0)) for p in shifts[depot.depot]]
                if not candidates or not vans:
                    continue
                plan = await asyncio.to_thread(config.planner, depot, vans, candidates, required=(), departs_at=now)
                alone = list(plan.alone)
                for planned in plan.rounds:
                    # A stop whose courier let its offer expire or was refused at its door goes to
                    # the next courier on a trip of its own, not back to the same van.
                    kept, passed_on = round_pass.without_refusers(planned, roster, by_id)
                    alone += passed_on
                    round_id = round_pass.round_id_for(depot.depot, planned.courier_id, now)
                    looks += self._round_looks(kept, round_id, depot, by_id, now)
                # No round from this depot can take these, however many vans: a trip each, as without rounds.
                looks += [_look(by_id[rx], "offer_waiting") for rx in alone]
            handled = await self._decide(looks, tracked=False)
            offered = sum(h.outcome is Outcome.APPLIED for h in handled)
            if offered:
                log.info("delivery rounds planned", stops_offered_or_moved=offered, depots=len(depots))

    def _round_looks(
        self,
        planned: round_pass.PlannedRound,
        round_id: str,
        depot: round_pass.Depot,
        by_id: Mapping[str, Delivery],
        now: datetime,
    ) -> list[Record[Look]]:
        if not planned.stops:
            return []
        looks = round_pass.looks_for(planned, round_id=round_id, planned_at=now, depot=depot, deliveries=by_id)
        return [Record(look) for look in looks]


@dataclass(frozen=True)
class RoundsConfig:
    """Deliveries go out in planned rounds: how often a depot is planned and by what."""

    planner: round_pass.Planner
    cadence: timedelta
    min_waiting: int


# --- the decision the unit of work runs, and its keys --------------------------------------------------


def _decide_on(
    fleet_for: Callable[[Envelope], Fleet], rules: Rules, current: Delivery | None, message: Envelope
) -> Any:
    return decisions.decide(fleet_for(message), rules, current, message)


def _no_fleet(_: Envelope) -> Fleet:
    """For batches none of whose records may offer: nothing they decide looks at a courier's load."""
    return Fleet()


def _decided(handled: Handled[Any]) -> bool:
    return isinstance(handled.result, Decided)


def _look(delivery: Delivery, purpose: Any) -> Record[Look]:
    rx = delivery.prescription_id
    return Record(Look(correlation_id=rx, producer=PRODUCER.name, prescription_id=rx, purpose=purpose))


# --- one log line per decision -----------------------------------------------------------------------


def _log(handled: Handled[Any], policy: Policy) -> None:
    message = handled.record.message
    rx = decisions.delivery_key(message)
    if handled.outcome in (Outcome.REFUSED, Outcome.FAILED):
        return  # logged where they are dead-lettered or tried again
    if handled.outcome is Outcome.DUPLICATE:
        log.info("message already applied; duplicate dropped", prescription_id=rx)
        return
    result = handled.result
    if not isinstance(result, Decided):
        return
    if result.cancel is not None:
        _log_cancel(result, rx)
    if result.report is not None and isinstance(message, c.CourierReported):
        _log_report(result, message, policy)
    if result.expired is not None:
        attempt = result.expired
        log.info(
            "offer not accepted in time; withdrawn",
            prescription_id=rx,
            courier_id=attempt.courier_id,
            dispatch_id=attempt.dispatch_id,
        )
    if result.offered_to is not None:
        attempt = result.after.current
        log.info(
            "courier dispatched",
            prescription_id=rx,
            courier_id=result.offered_to.courier_id,
            attempt=attempt.number if attempt else None,
            trip_km=round(domain.trip_km(result.offered_to, result.after), 1),
        )
    if isinstance(message, c.AddressLocated) and result.after.details is not None:
        log.info("address placed on the map", prescription_id=rx, located_by=message.located_by, place=message.place)
    if result.waiting_why is not None and result.waiting_why.startswith(decisions.NEXT_ROUND):
        log.info("the delivery waits for its round", prescription_id=rx, why=result.waiting_why)
    elif result.waiting_why is not None:
        log.warning("no courier can take the delivery; it waits", prescription_id=rx, why=result.waiting_why)
    if result.overdue is not None:
        log.warning("delivery overdue; the dispatcher decides", prescription_id=rx, stage=result.overdue)


def _log_cancel(result: Decided, rx: str) -> None:
    before = result.before
    assert before is not None
    if result.cancel is CancelOutcome.TOO_LATE:
        log.info("too late to cancel the delivery", prescription_id=rx, state=before.state)
    elif result.cancel is CancelOutcome.ALREADY:
        log.info("delivery already cancelled", prescription_id=rx, state=before.state)
    else:
        log.info("delivery cancelled", prescription_id=rx, outcome=result.cancel, courier_id=before.active_courier_id)


def _log_report(result: Decided, report: c.CourierReported, policy: Policy) -> None:
    rx, outcome = report.package_id, result.report
    recalled = result.before is not None and result.before.state is DeliveryState.RETURNING
    if outcome is ReportOutcome.IGNORED:
        log.info("report repeats what is already applied; nothing changed", prescription_id=rx, status=report.status)
    elif outcome is ReportOutcome.CODE_REJECTED:
        attempt = result.after.current
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
            wrong_codes=policy.max_wrong_codes,
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


def refused_report_answer(
    headers: Mapping[str, str], body: bytes | None, key: bytes | None, reason: str, detail: str
) -> c.ReportAnswered | None:
    """The answer to a courier whose signed report was refused (None: the signer is unknown)."""
    courier_id = identifier_or_none(headers.get(signing.SENDER_HEADER))
    if reason in SENDER_UNKNOWN or courier_id is None:
        return None
    try:
        data = json.loads(body or b"")
    except (ValueError, RecursionError):
        data = None
    dispatch = data.get("dispatch_id") if isinstance(data, dict) else None
    package = identifier_or_none(key.decode("utf-8", "replace") if key else None)
    return messages.report_refused(
        courier_id,
        dispatch_id=identifier_or_none(dispatch if isinstance(dispatch, str) else None),
        message_id=identifier_or_none(headers.get("message-id")),
        correlation_id=package or courier_id,
        code=reason,
        detail=detail,
    )
