"""Use cases of the inventory service, each over a batch: reservations, the delivery moving held
stock, warehouse staff's commands, the expiry sweep, the ledger, and transfers from the centre to
townships (suggested on a reservation or by a sweep, shipped and received on staff's commands, noted
and closed at the other end on reading the events back: see transfers.py for why in two steps).

Each use case takes a batch's records and answers, in the same order, what became of each
(`Handled`). It loads what the batch touches with one query per store, decides in memory with the
plain functions of decisions.py (`(state, message) -> Decision`), and saves each store
once, through the unit of work (see services/runtime/unit_of_work.py).

Reservation is the one use case that spans documents: an allocation per prescription (which
warehouse its stock comes from) and the warehouses (lots and holds). A batch of approvals:

1. Reads every warehouse (they are few) with one query, and the batch's allocations together with
   it (from the store's memory where held; an allocation it does not hold is presumed new, and
   its insert proves it).
2. Plans the approvals in arrival order in memory (`domain.plan_reservations`), each on the
   warehouses as the approvals before it left them: a hold already there wins (the hold is the
   truth), then the warehouse an earlier attempt claimed if it can still fill it, then the nearest
   that can fill every line with lots that last; otherwise the reservation fails.
3. Writes the allocations once: a claim of the chosen warehouse (RESERVING, warehouse), or the
   final word where there is nothing left to do at a warehouse (OUT_OF_STOCK with its
   ReservationFailed; RESERVED where a hold was found). A claim that finds another worker's claim
   resumes that warehouse instead.
4. Writes the warehouses once, on the read of step 1 (held in the store's memory): each hold is
   decided on the version it replaces, so two instances can never both take the last units. A
   warehouse that lost a race is read and decided again; one that can no longer fill a
   prescription sends it back to step 1 for another round, whose plan moves the claim elsewhere.
5. Settles the allocations of what was reserved (RESERVED), once, on the claims in memory.

The claim before the hold is what a second worker on the same approval (a rebalance hands it over
mid-batch) or a redelivery after a crash runs into: it resumes the claimed warehouse instead of
reserving at a second one. So a new reservation writes its allocation twice (claim, then settle);
every other outcome writes it once. A crash between the hold and the settle leaves a hold that the
redelivered approval finds (step 2) and settles; the courier's events also settle an allocation
before they move its hold, so a hold closed meanwhile is never taken for one never made.

A delivery withdrawn while a reservation is made: the withdrawal writes CANCELLED on the allocation
and then looks for a hold to release; the reservation writes its hold and then settles, and a
settle that finds CANCELLED releases the hold. Both write, then look, so one of them always sees
the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import partial
from typing import Any

import structlog

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import Coordinates
from pharmacy_contracts.envelope import utc_now
from pharmacy_contracts.inventory import RestockRequested
from pharmacy_contracts.prescription import PrescriptionApproved
from services.runtime.store import Store, Stored
from services.runtime.unit_of_work import Handled, Outcome, Record, UnitOfWork

from . import domain, transfers
from .decisions import (
    AtWarehouse,
    DeliveryEvent,
    ExpiryDue,
    Rules,
    TransfersDue,
    after_delivery_event,
    allocate,
    decide_command,
    demand_of,
    expire_lots,
    hear_transfer,
    list_drug,
    move_hold,
    movements_of,
    reserve_at,
    settle_reservation,
    suggest_due,
    transfer_id_for,
)
from .domain import Allocation, AllocationState, Demand, Location, Warehouse
from .messages import PRODUCER
from .settings import InventorySettings
from .storage import InventoryStorage

log = structlog.get_logger()
#: Rounds of planning a batch of approvals gets when warehouses keep changing under it.
MAX_RESERVATION_ROUNDS = 20

#: What each consumer acts on; the rest of its topic is passed over unparsed.
APPROVALS: tuple[type[Envelope], ...] = (PrescriptionApproved,)
DELIVERY_EVENTS: tuple[type[Envelope], ...] = (
    c.DeliveryPickedUp,
    c.DeliveryFailed,
    c.DeliveryCompleted,
    c.DeliveryAbandoned,
    c.DeliveryCancelled,
)
#: The events that move stock, which the ledger records (the others on the topic move nothing).
MOVING_STOCK = tuple(m for m in topics.INVENTORY_EVENTS.messages if "movements" in m.model_fields)
#: A transfer's steps another warehouse acts on: shipped (the township notes it), received (the centre closes it).
TRANSFER_STEPS: tuple[type[Envelope], ...] = (inv.TransferShipped, inv.TransferReceived)

#: Outcomes after which a record goes no further (it is dead-lettered or tried again).
STOPPED = (Outcome.REFUSED, Outcome.FAILED)


@dataclass
class Reservation:
    """One approval's way through a batch: its plan, the warehouse it goes to, what each step did."""

    demand: Demand
    plan: domain.ReservationPlan | None = None
    warehouse_id: str | None = None
    steps: list[Handled[Any]] = field(default_factory=list)
    #: What its log line says once it is done.
    story: str | None = None
    done: bool = False

    def planned(self, record: Record[Any], plan: domain.ReservationPlan) -> None:
        self.plan = plan
        match plan:
            case domain.AlreadyDecided(state):
                why = "already being reserved in this batch" if state is None else f"already {state.value}"
                self.stop(Handled(record, Outcome.UNCHANGED), f"approval dropped: {why}")
            case domain.ReserveAt(warehouse_id, claimed=True):
                self.warehouse_id = warehouse_id
                self.story = "stock reserved at the warehouse claimed earlier"

    def planned_for(self) -> tuple[domain.ReservationPlan | None, Demand]:
        return self.plan, self.demand

    def held_at(self) -> tuple[str, Demand]:
        """The warehouse holding its stock, and what it holds it for (once its hold is written)."""
        assert self.warehouse_id is not None
        return self.warehouse_id, self.demand

    def go_to(self, warehouse_id: str, handled: Handled[Any], story: str | None = None) -> None:
        self.warehouse_id = warehouse_id
        self.steps.append(handled)
        self.story = story or self.story

    def stop(self, handled: Handled[Any], story: str | None = None) -> None:
        self.steps.append(handled)
        self.story = story or self.story
        self.done = True


class InventoryService:
    """Use cases over batches: each takes a batch's records and says what became of each."""

    def __init__(
        self,
        storage: InventoryStorage,
        unit_of_work: UnitOfWork,
        settings: InventorySettings,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._storage = storage
        self._uow = unit_of_work
        self._settings = settings
        self._clock = clock

    def _rules(self) -> Rules:
        return Rules(self._clock(), self._settings)

    async def _run(self, store: Store[Any], records: Sequence[Record[Any]], **how: Any) -> list[Handled[Any]]:
        """The unit of work over one store, and nothing at all for no records."""
        return await self._uow.run(store, records, **how) if records else []

    # --- prescription.decisions: reservations ------------------------------------------------------

    async def on_decision(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Reserve stock for every approval of the batch (see the module's docstring); the topic's
        other decisions are none of this service's business."""
        rules = self._rules()
        reservations = {
            i: Reservation(demand_of(r.message))
            for i, r in enumerate(records)
            if isinstance(r.message, PrescriptionApproved)
        }
        for round_number in range(MAX_RESERVATION_ROUNDS):
            waiting = {i: rs for i, rs in reservations.items() if not rs.done}
            if not waiting:
                break
            await self._reservation_round(rules, records, waiting, first_round=round_number == 0)
        handled: list[Handled[Envelope]] = []
        for i, record in enumerate(records):
            reservation = reservations.get(i)
            if reservation is None:
                handled.append(Handled(record, Outcome.UNCHANGED))
                continue
            if not reservation.done:
                reservation.steps.append(
                    Handled(record, Outcome.FAILED, error="the warehouses kept changing under the reservation")
                )
            one = _combined(record, reservation.steps)
            record.in_context(_log_reservation, one, reservation)
            handled.append(one)
        return handled

    @staticmethod
    def _plan(
        rules: Rules,
        demands: Sequence[Demand],
        allocations: Mapping[str, Allocation | None],
        warehouses: Mapping[str, Stored[Warehouse]],
    ) -> list[domain.ReservationPlan]:
        return domain.plan_reservations(
            demands,
            allocations,
            [s.state for s in warehouses.values() if s.state is not None],
            today=rules.today,
            delivery_days=rules.delivery_days,
        )

    async def _reservation_round(
        self, rules: Rules, records: Sequence[Record[Any]], waiting: Mapping[int, Reservation], *, first_round: bool
    ) -> None:
        """One read, one plan, one write per store (the steps of the module's docstring)."""
        allocations = await self._storage.allocation_documents(rs.demand.prescription_id for rs in waiting.values())
        current = {rx: stored.state for rx, stored in allocations.items()}
        demands = [rs.demand for rs in waiting.values()]
        if first_round:
            warehouses, read_now = await self._storage.warehouses_to_plan_on()
        else:  # a warehouse changed under the last round's plan: plan on what is there now
            warehouses, read_now = await self._storage.warehouse_documents(), True
        plans = self._plan(rules, demands, current, warehouses)
        if not read_now and any(isinstance(plan, domain.Unfillable) for plan in plans):
            # No stock is refused on a copy from memory: a restock elsewhere may have filled it.
            plans = self._plan(rules, demands, current, await self._storage.warehouse_documents())
        for (i, reservation), plan in zip(waiting.items(), plans, strict=True):
            reservation.planned(records[i], plan)
        to_release = await self._allocate(rules, records, waiting)
        # The centres a township's reservation may suggest a transfer from, as this round read them.
        seen = {wid: stored.state for wid, stored in warehouses.items() if stored.state is not None}
        to_settle = await self._reserve(replace(rules, warehouses=seen), records, waiting, to_release)
        to_release += await self._settle(records, waiting, to_settle)
        await self._release(rules, records, waiting, to_release)

    async def _allocate(
        self,
        rules: Rules,
        records: Sequence[Record[Any]],
        waiting: Mapping[int, Reservation],
    ) -> list[int]:
        """The allocations before any warehouse: claims, failures, holds found settled. Returns the
        approvals found withdrawn while their stock is held (to release)."""
        to_allocate = [i for i, rs in waiting.items() if not rs.done and rs.warehouse_id is None]
        allocated = await self._run(
            self._storage.allocations,
            [records[i] for i in to_allocate],
            key=_rx,
            decide=partial(
                allocate, rules, {records[i].message_id: (waiting[i].plan, waiting[i].demand) for i in to_allocate}
            ),
            tracked=False,
        )
        to_release = []
        for i, step in zip(to_allocate, allocated, strict=True):
            reservation, after = waiting[i], step.result
            if step.outcome in STOPPED:
                reservation.stop(step)
            elif isinstance(reservation.plan, domain.AlreadyHeld):
                if after is not None and after.state is AllocationState.CANCELLED:
                    reservation.go_to(reservation.plan.warehouse_id, step)
                    to_release.append(i)
                else:
                    reservation.stop(step, "stock was held already; allocation settled")
            elif after is not None and after.state is AllocationState.RESERVING and after.warehouse_id is not None:
                planned = reservation.plan.warehouse_id if isinstance(reservation.plan, domain.ReserveAt) else None
                story = (
                    "stock reserved" if after.warehouse_id == planned else "stock reserved at another worker's claim"
                )
                reservation.go_to(after.warehouse_id, step, story)
            elif step.outcome is Outcome.APPLIED:
                reservation.stop(step, "out of stock")
            else:
                reservation.stop(step, f"approval dropped: already {after.state.value if after else 'gone'}")
        return to_release

    async def _reserve(
        self,
        rules: Rules,
        records: Sequence[Record[Any]],
        waiting: Mapping[int, Reservation],
        releasing: Sequence[int],
    ) -> list[int]:
        """The holds, on the read the plan was made on. Returns the approvals held (to settle); an
        approval its warehouse can no longer fill waits for the next round."""
        to_reserve = [i for i, rs in waiting.items() if not rs.done and i not in releasing]
        at_warehouses = await self._run(
            self._storage.warehouses,
            [records[i] for i in to_reserve],
            key=partial(_warehouse_of, {records[i].message_id: waiting[i] for i in to_reserve}),
            decide=partial(reserve_at, rules, {records[i].message_id: waiting[i].demand for i in to_reserve}),
        )
        to_settle = []
        for i, step in zip(to_reserve, at_warehouses, strict=True):
            reservation = waiting[i]
            if step.outcome in STOPPED:
                reservation.stop(step)
            elif step.outcome is not Outcome.DUPLICATE and step.result is AtWarehouse.CANNOT_FILL:
                reservation.warehouse_id = None  # taken meanwhile: planned again on a fresh read
            else:
                found_held = step.outcome is Outcome.DUPLICATE or step.result is AtWarehouse.ALREADY_HELD
                reservation.steps.append(step)
                reservation.story = "stock was held already; allocation settled" if found_held else reservation.story
                to_settle.append(i)
        return to_settle

    async def _settle(
        self, records: Sequence[Record[Any]], waiting: Mapping[int, Reservation], to_settle: Sequence[int]
    ) -> list[int]:
        """RESERVED where the stock is held. Returns the approvals found withdrawn meanwhile (to release)."""
        settled = await self._run(
            self._storage.allocations,
            [records[i] for i in to_settle],
            key=_rx,
            decide=partial(settle_reservation, {records[i].message_id: waiting[i].held_at() for i in to_settle}),
            tracked=False,
        )
        to_release = []
        for i, step in zip(to_settle, settled, strict=True):
            after = step.result
            if step.outcome not in STOPPED and after is not None and after.state is AllocationState.CANCELLED:
                waiting[i].steps.append(step)
                to_release.append(i)
            else:
                waiting[i].stop(step)
        return to_release

    async def _release(
        self, rules: Rules, records: Sequence[Record[Any]], waiting: Mapping[int, Reservation], to_release: list[int]
    ) -> None:
        """A delivery withdrawn while its stock was being reserved: the hold goes back."""
        released = await self._run(
            self._storage.warehouses,
            [records[i] for i in to_release],
            key=partial(_warehouse_of, {records[i].message_id: waiting[i] for i in to_release}),
            decide=partial(move_hold, rules),
            tracked=False,
        )
        for i, step in zip(to_release, released, strict=True):
            waiting[i].stop(step, "delivery withdrawn while reserving; released")

    # --- courier.deliveries: the delivery moves held stock -----------------------------------------

    async def on_delivery_event(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Dispatch, return, deliver, release or quarantine the prescription's hold as its delivery
        goes. The allocation is written first: settled (the courier acts on a StockReserved, so the
        reservation was made even if its writer died before settling; an approval redelivered
        after the hold closed must find it settled), or CANCELLED for a delivery withdrawn (an
        approval still being reserved then gives its units back)."""
        rules = self._rules()
        relevant = [i for i, r in enumerate(records) if isinstance(r.message, DeliveryEvent)]
        allocated = await self._run(
            self._storage.allocations,
            [records[i] for i in relevant],
            key=_rx,
            decide=after_delivery_event,
            tracked=False,
        )
        steps: dict[int, list[Handled[Envelope]]] = {i: [step] for i, step in zip(relevant, allocated, strict=True)}
        warehouse_of: dict[str, str | None] = {}  # by message id
        for i, step in zip(relevant, allocated, strict=True):
            if step.outcome not in STOPPED:
                after: Allocation | None = step.result
                warehouse_of[records[i].message_id] = _named_warehouse(records[i].message) or (
                    after.warehouse_id if after is not None else None
                )
        if None in warehouse_of.values():
            # Neither the event nor the allocation says where: look for the hold (and write on that read).
            documents = await self._storage.warehouse_documents()
            holding = _holding(s.state for s in documents.values() if s.state is not None)
            for i in relevant:
                if records[i].message_id in warehouse_of and warehouse_of[records[i].message_id] is None:
                    warehouse_of[records[i].message_id] = holding.get(_rx(records[i].message))
        moving = [i for i in relevant if warehouse_of.get(records[i].message_id) is not None]
        moved = await self._run(
            self._storage.warehouses,
            [records[i] for i in moving],
            key=partial(_by_message, warehouse_of),
            decide=partial(move_hold, rules),
        )
        for i, step in zip(moving, moved, strict=True):
            steps[i].append(step)
        handled = [
            _combined(r, steps[i]) if i in steps else Handled(r, Outcome.UNCHANGED) for i, r in enumerate(records)
        ]
        for i in relevant:
            moved_as = steps[i][-1].result if len(steps[i]) > 1 else None
            handled[i].record.in_context(
                _log_delivery_event, handled[i], warehouse_of.get(records[i].message_id), moved_as
            )
        return handled

    # --- inventory.commands: warehouse staff -------------------------------------------------------

    async def on_command(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Registrations, restocks and adjustments, each warehouse's in arrival order. A command sent
        again, however many messages later, is recognised and changes nothing. A restock of a drug
        the formulary does not list is refused (one lookup of the batch's restocked drugs)."""
        restocked = [r.message.drug_code for r in records if isinstance(r.message, RestockRequested)]
        rules = replace(self._rules(), listed=await self._storage.listed(restocked))
        if any(isinstance(r.message, inv.TransferShipRequested) for r in records):
            # Where a shipment goes must be a registered warehouse: every warehouse, mostly from memory.
            documents, _ = await self._storage.warehouses_to_plan_on()
            rules = replace(rules, warehouses={wid: d.state for wid, d in documents.items() if d.state is not None})
        recalled = [
            (r.message.warehouse_id, r.message.lot_id) for r in records if isinstance(r.message, inv.LotRecallRequested)
        ]
        if recalled:
            # Deliveries of the lot from before lots remembered them, from the ledger.
            rules = replace(rules, delivered=await self._storage.delivered_units(recalled))
        handled = await self._run(
            self._storage.warehouses,
            records,
            key=lambda command: getattr(command, "warehouse_id", command.correlation_id),
            decide=partial(decide_command, rules),
        )
        for one in handled:
            one.record.in_context(_log_command, one)
        return handled

    # --- inventory.events: the ledger, and transfers between warehouses ----------------------------

    async def on_inventory_event(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Inventory's own events, read back: a transfer's next step at the other warehouse, then
        every movement into the ledger (both are idempotent, so a batch handled again is harmless).
        One consumer does both: a transfer's steps are not urgent (people carry the goods), and a
        service reads a topic once."""
        stepped = await self.on_transfer_event(records)
        recorded = await self.record_movements(records)
        return [_combined(r, [one, two]) for r, one, two in zip(records, stepped, recorded, strict=True)]

    async def on_transfer_event(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """A transfer's next step at the other warehouse (see transfers.py): a shipment is noted in
        transit at its township, a receipt closes the in-transit units at its centre. Each is applied
        once: the transfer's state on the document says whether it was."""
        rules = self._rules()
        steps = [i for i, r in enumerate(records) if isinstance(r.message, TRANSFER_STEPS)]
        handled = await self._run(
            self._storage.warehouses,
            [records[i] for i in steps],
            key=_other_end,
            decide=partial(hear_transfer, rules),
        )
        by_index = dict(zip(steps, handled, strict=True))
        for one in handled:
            one.record.in_context(_log_transfer_step, one)
        return [by_index.get(i) or Handled(r, Outcome.UNCHANGED) for i, r in enumerate(records)]

    async def sweep_transfers(self) -> None:
        """Suggest the transfers no reservation did (the township's stock fell by an adjustment, an
        expiry or a write-off; the centre had nothing to spare then and has now): every warehouse in
        one query, then one version-guarded save of the townships that need one."""
        rules = self._rules()
        documents = await self._storage.warehouse_documents()
        warehouses = {wid: stored.state for wid, stored in documents.items() if stored.state is not None}
        rules = replace(rules, warehouses=warehouses)
        due = []
        for wid, township in warehouses.items():
            drugs = _transfers_due(township, rules)
            if drugs:
                due.append(
                    Record(TransfersDue(correlation_id=wid, producer=PRODUCER.name, warehouse_id=wid, drug_codes=drugs))
                )
        swept = await self._run(
            self._storage.warehouses,  # on the read just made, held in the store's memory
            due,
            key=lambda proposal: proposal.warehouse_id,
            decide=partial(suggest_due, rules),
            tracked=False,
        )
        for handled in swept:
            if handled.outcome is Outcome.APPLIED:
                log.info("transfers suggested", warehouse_id=handled.record.message.warehouse_id, drugs=handled.result)
            elif handled.outcome is Outcome.FAILED:
                log.warning("transfers not suggested; the next sweep tries again", error=handled.error)

    # --- prescription.formulary: the drugs that may be stocked -------------------------------------

    async def on_formulary(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Keep the formulary's drugs, as the prescription service announces them."""
        return await self._run(self._storage.drugs, records, key=lambda listed: listed.drug_code, decide=list_drug)

    # --- expiry (a sweep: no message says a date has passed) ---------------------------------------

    async def sweep_expiry(self) -> None:
        """Alert once on lots nearing expiry; take expired lots off the shelf: every warehouse in one
        query, then one version-guarded save of those with something due. Idempotent: the lots
        remember the alert, and expired units are no longer available."""
        rules = self._rules()
        window = self._settings.near_expiry_days
        warehouses = await self._storage.warehouse_documents()
        due = [
            Record(ExpiryDue(correlation_id=wid, producer=PRODUCER.name, warehouse_id=wid))
            for wid, stored in warehouses.items()
            if stored.state is not None and _expiry_due(stored.state, rules.today, window)
        ]
        swept = await self._run(
            self._storage.warehouses,  # on the read just made, held in the store's memory
            due,
            key=lambda proposal: proposal.warehouse_id,
            decide=partial(expire_lots, rules, window),
            tracked=False,
        )
        for handled in swept:
            if handled.outcome is Outcome.APPLIED:
                _log_expiry(handled)
            elif handled.outcome is Outcome.FAILED:
                log.warning("expiry not swept; the next sweep tries again", error=handled.error)

    # --- inventory.events: the ledger --------------------------------------------------------------

    async def record_movements(self, records: Sequence[Record[Envelope]]) -> list[Handled[Envelope]]:
        """Every movement the batch's events report becomes one ledger entry, all in one write;
        recording an event twice is harmless."""
        entries = {i: movements_of(r.message) for i, r in enumerate(records)}
        await self._storage.record_movements([e for found in entries.values() for e in found])
        for i, record in enumerate(records):
            if found := entries[i]:
                record.in_context(log.info, "movements recorded", warehouse_id=found[0].warehouse_id, count=len(found))
        return [Handled(r, Outcome.APPLIED if entries[i] else Outcome.UNCHANGED) for i, r in enumerate(records)]


# --- keys and helpers -------------------------------------------------------------------------------------


def _rx(message: Envelope) -> str:
    prescription_id = getattr(message, "prescription_id", None)
    return prescription_id if isinstance(prescription_id, str) else message.correlation_id


def _warehouse_of(reservations: Mapping[str, Reservation], approved: PrescriptionApproved) -> str:
    warehouse_id = reservations[approved.message_id].warehouse_id
    assert warehouse_id is not None
    return warehouse_id


def _named_warehouse(event: Envelope) -> str | None:
    warehouse_id = getattr(event, "warehouse_id", None)
    return warehouse_id if isinstance(warehouse_id, str) else None


def _by_message(values: Mapping[str, str | None], message: Envelope) -> str:
    value = values[message.message_id]
    assert value is not None
    return value


def _holding(warehouses: Iterable[Warehouse]) -> dict[str, str]:
    """Which warehouse holds stock for each prescription."""
    return {rx: w.warehouse_id for w in warehouses for rx in w.holds}


def _other_end(event: Envelope) -> str:
    """The warehouse a transfer step is for: a shipment's township, a receipt's centre."""
    if isinstance(event, inv.TransferShipped):
        return event.to_warehouse_id
    assert isinstance(event, inv.TransferReceived)
    return event.from_warehouse_id


def _transfers_due(township: Warehouse, rules: Rules) -> list[str]:
    """The drugs a transfer would be suggested for at this township now (on the sweep's read)."""
    others = [w for wid, w in rules.warehouses.items() if wid != township.warehouse_id]
    return [
        drug
        for drug in sorted(township.daily_demand)
        if transfers.suggest(
            township,
            drug,
            others,
            rules.transfer_rules,
            transfer_id=transfer_id_for(township.warehouse_id, drug, "sweep"),
            at=rules.now,
        )
        is not None
    ]


def _expiry_due(warehouse: Warehouse, today: date, window: int) -> bool:
    return bool(domain.expired_lots(warehouse, today) or domain.nearing_expiry(warehouse, today, window))


def _combined(record: Record[Any], steps: Sequence[Handled[Any]]) -> Handled[Any]:
    """One record's outcome over the steps it went through: the first that stopped it, or applied
    if any step changed something (with every step's events), or what its last step found."""
    for step in steps:
        if step.outcome in STOPPED:
            return Handled(record, step.outcome, refusal=step.refusal, error=step.error)
    events = tuple(e for step in steps for e in step.events)
    if any(step.outcome is Outcome.APPLIED for step in steps):
        return Handled(record, Outcome.APPLIED, events)
    return Handled(record, Outcome.DUPLICATE if steps and steps[-1].outcome is Outcome.DUPLICATE else Outcome.UNCHANGED)


# --- one log line per decision ---------------------------------------------------------------------------


def _log_reservation(handled: Handled[Any], reservation: Reservation) -> None:
    if handled.outcome in STOPPED:
        return  # refusals and failures are logged where they are dead-lettered or retried
    demand = reservation.demand
    story = reservation.story or "approval handled"
    if story.startswith("stock reserved"):
        reserved = next((e for e in handled.events if isinstance(e, inv.StockReserved)), None)
        km = (
            round(domain.distance_km(_location(reserved.pickup_location), demand.patient), 1)
            if reserved is not None
            else None
        )
        log.info(story, warehouse_id=reservation.warehouse_id, lines=demand.quantities, km=km)
    elif story == "out of stock":
        failed = next((e for e in handled.events if isinstance(e, inv.ReservationFailed)), None)
        log.info(
            story,
            reason=failed.reason if failed else None,
            shortages=[s.drug_code for s in failed.shortages] if failed else [],
        )
    else:
        log.info(story, warehouse_id=reservation.warehouse_id)


def _location(coordinates: Coordinates) -> Location:
    return Location(latitude=coordinates.latitude, longitude=coordinates.longitude)


def _log_delivery_event(handled: Handled[Any], warehouse_id: str | None, moved_as: str | None) -> None:
    if handled.outcome in STOPPED:
        return
    if moved_as is not None:
        log.info(f"stock {moved_as}", warehouse_id=warehouse_id)
    elif warehouse_id is None:
        log.info("no warehouse holds stock for the prescription; nothing to move")


def _log_command(handled: Handled[Any]) -> None:
    command = handled.record.message
    if handled.outcome is Outcome.DUPLICATE:
        log.info("command already applied; duplicate dropped", warehouse_id=getattr(command, "warehouse_id", None))
    elif handled.outcome is not Outcome.APPLIED:
        return
    elif isinstance(command, inv.WarehouseRegistrationRequested):
        log.info("warehouse registered", warehouse_id=command.warehouse_id, kind=command.kind)
    elif isinstance(command, inv.RestockRequested):
        log.info(
            "restock handled",
            warehouse_id=command.warehouse_id,
            drug_code=command.drug_code,
            lot_id=command.lot_id,
            quantity=command.quantity,
            refused=any(isinstance(e, inv.StockCommandRefused) for e in handled.events),
        )
    elif isinstance(command, inv.AdjustmentRequested):
        log.info(
            "adjustment handled",
            warehouse_id=command.warehouse_id,
            lot_id=command.lot_id,
            delta=command.delta,
            refused=any(isinstance(e, inv.StockCommandRefused) for e in handled.events),
        )
    elif isinstance(command, inv.TransferShipRequested | inv.TransferReceiptRequested):
        log.info(
            "transfer shipment handled"
            if isinstance(command, inv.TransferShipRequested)
            else "transfer receipt handled",
            warehouse_id=command.warehouse_id,
            transfer_id=command.transfer_id,
            refused=any(isinstance(e, inv.StockCommandRefused) for e in handled.events),
        )
    elif isinstance(command, inv.LotRecallRequested):
        done = next((e for e in handled.events if isinstance(e, inv.LotRecalled)), None)
        log.info(
            "lot recall handled",
            warehouse_id=command.warehouse_id,
            recall_id=command.recall_id,
            lot_id=command.lot_id,
            refused=done is None,
            quarantined=done.quarantined if done else 0,
            re_picked=len(done.re_picked) if done else 0,
            withdrawn=len(done.withdrawn) if done else 0,
            on_the_road=len(done.on_the_road) if done else 0,
            delivered_to=len(done.delivered_to) if done else 0,
        )
    elif isinstance(command, inv.QuarantineDecided):
        log.info(
            "quarantine decision handled",
            warehouse_id=command.warehouse_id,
            lot_id=command.lot_id,
            quantity=command.quantity,
            decision=command.decision,
            refused=any(isinstance(e, inv.StockCommandRefused) for e in handled.events),
        )


def _log_transfer_step(handled: Handled[Any]) -> None:
    event = handled.record.message
    if handled.outcome is Outcome.APPLIED:
        log.info(f"transfer {handled.result}", transfer_id=event.transfer_id, warehouse_id=_other_end(event))
    elif handled.outcome is Outcome.UNCHANGED:
        log.info("transfer step already taken; nothing to do", transfer_id=event.transfer_id)


def _log_expiry(handled: Handled[Any]) -> None:
    found = handled.result or {}
    log.info("expiry sweep", warehouse_id=handled.record.message.warehouse_id, **found)
