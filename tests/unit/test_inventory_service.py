"""The inventory service's use cases on the in-memory store: reservations, the delivery moving held
stock, warehouse staff's commands, the expiry sweep and the ledger, each a batch at a time, in
milliseconds. The real broker and database are in tests/integration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from pharmacy_contracts import Envelope, topics
from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts.consultation import Address, Coordinates
from pharmacy_contracts.limits import MAX_STOCK_UNITS
from pharmacy_contracts.prescription import (
    ApprovedLine,
    DeliveryDetails,
    DrugListed,
    PrescriptionApproved,
    PrescriptionCancelled,
)
from services.inventory import storage as inventory_storage
from services.inventory.domain import (
    Allocation,
    AllocationState,
    LedgerEntry,
    Line,
    ListedDrug,
    Location,
    Warehouse,
    recompute_lots,
    reserve,
)
from services.inventory.service import InventoryService
from services.inventory.settings import InventorySettings
from services.inventory.storage import InventoryStorage
from services.runtime.relay import outbox_entry
from services.runtime.store import DocumentMemory, MemoryStore, S, Save, Saved, Stored
from services.runtime.unit_of_work import Outcome, Record, UnitOfWork
from tests.support import stand_ins
from tests.unit.builders import make_lot, make_warehouse

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TODAY = NOW.date()
#: The patients' home; NEAR is at their door, MID about 75 km off, FAR about 230 km.
HOME = (51.81, 69.40)
NEAR = Location(latitude=51.81, longitude=69.40)
MID = Location(latitude=51.55, longitude=70.40)
FAR = Location(latitude=50.61, longitude=72.10)
THRESHOLD = 5


class HookedStore(MemoryStore[S]):
    """A MemoryStore that runs `before_save` once, just before its next save: another writer
    (a second instance, a courier's event) getting in between a batch's read and its write."""

    def __init__(self, name: str, model: type[S], **kwargs: Any) -> None:
        super().__init__(name, model, **kwargs)
        self.before_save: Callable[[], None] | None = None

    async def save(self, saves: Sequence[Save[S]]) -> Saved:
        hook, self.before_save = self.before_save, None
        if hook is not None:
            hook()
        return await super().save(saves)


#: The drugs the formulary has announced to the test's inventory.
LISTED = ("D", "A", "B", "C", "MET500", "INS100")


class Storage(InventoryStorage):
    """InventoryStorage's repositories over in-memory stores (its queries beyond the Store protocol too)."""

    def __init__(self) -> None:
        # With the memories production has (storage.py), so round trips count as there.
        self.warehouses = HookedStore("inventory_warehouses", Warehouse, memory=DocumentMemory())  # type: ignore[assignment]
        self.allocations = HookedStore(  # type: ignore[assignment]
            "inventory_allocations", Allocation, keeps_trace=True, memory=DocumentMemory(presumes_new=True)
        )
        self.drugs = HookedStore("inventory_drugs", ListedDrug, memory=DocumentMemory())  # type: ignore[assignment]
        for code in LISTED:
            self.drugs.put(code, ListedDrug(drug_code=code, name=f"drug {code}", form="tablet"))  # type: ignore[attr-defined]
        self.ledger: dict[str, LedgerEntry] = {}
        self.ledger_writes = 0

    @property
    def stores(self) -> list[HookedStore[Any]]:
        return [self.warehouses, self.allocations]  # type: ignore[list-item]

    async def _every_warehouse(self) -> dict[str, Stored[Warehouse]]:
        store, before = self.stores[0], self.stores[0].round_trips
        found = {stored.id: stored for stored in await store.all()}
        store.round_trips = before + 1  # one query (whether or not MemoryStore counts `all()` itself)
        assert store.memory is not None
        store.memory.loaded(found.values())
        return found

    async def record_movements(self, entries: Sequence[LedgerEntry]) -> None:
        if entries:
            self.ledger_writes += 1
            self.ledger.update((e.entry_id, e) for e in entries)

    async def movements(self, warehouse_id: str | None = None, lot_id: str | None = None) -> list[LedgerEntry]:
        return [
            e for e in self.ledger.values() if warehouse_id in (None, e.warehouse_id) and lot_id in (None, e.lot_id)
        ]

    def round_trips(self) -> int:
        return sum(store.round_trips for store in self.stores)

    def reset_round_trips(self) -> None:
        for store in self.stores:
            store.round_trips = 0

    def warehouse(self, warehouse_id: str) -> Warehouse:
        found = self.stores[0].state_of(warehouse_id)
        assert found is not None
        return found

    def allocation(self, rx: str) -> Allocation | None:
        return self.stores[1].state_of(rx)

    def put_warehouse(self, warehouse: Warehouse) -> None:
        self.stores[0].put(warehouse.warehouse_id, warehouse)

    def put_allocation(self, allocation: Allocation) -> None:
        self.stores[1].put(allocation.prescription_id, allocation)


class Published(stand_ins.Published):
    def kinds(self, key: str | None = None) -> list[str]:
        """The types of the events published, each once (another instance's write of a document
        publishes again what its outbox still holds: at least once, by design)."""
        unique = {e["message_id"]: e for e in self.entries}.values()
        return [e["type"].split(".")[-1] for e in unique if key is None or e["key"] == key]

    def of_kind(self, type_: str) -> list[dict[str, Any]]:
        unique = {e["message_id"]: e for e in self.entries}.values()
        return [json.loads(e["body"]) for e in unique if e["type"].endswith(type_)]


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def published() -> Published:
    return Published()


def settings(**overrides: Any) -> InventorySettings:
    return InventorySettings(low_stock_threshold=THRESHOLD, **overrides)


@pytest.fixture
def service(storage: Storage, published: Published) -> InventoryService:
    return InventoryService(storage, UnitOfWork(published, outbox_entry), settings(), clock=lambda: NOW)


def warehouse(warehouse_id: str, at: Location, **available: int) -> Warehouse:
    return make_warehouse(warehouse_id, location=at, **available)


def approval(rx: str, *lines: tuple[str, int], days_supply: int = 30, message_id: str | None = None) -> Any:
    home = Coordinates(latitude=HOME[0], longitude=HOME[1])
    return PrescriptionApproved(
        message_id=message_id or f"MSG-{rx}",
        correlation_id=rx,
        producer="prescription",
        prescription_id=rx,
        patient_id=f"PAT-{rx}",
        lines=[ApprovedLine(drug_code=d, quantity=q, days_supply=days_supply) for d, q in lines],
        delivery=DeliveryDetails(
            address=Address(line="Farm 1", town="Northford", coordinates=home), contact_phone="+7 700 000 0000"
        ),
    )


def attempt(rx: str, warehouse_id: str, number: int = 1) -> dict[str, Any]:
    return {
        "correlation_id": rx,
        "producer": "courier",
        "prescription_id": rx,
        "dispatch_id": f"{rx}-D{number}",
        "courier_id": "CR-1",
        "attempt": number,
        "warehouse_id": warehouse_id,
    }


def cancelled(rx: str, warehouse_id: str | None, *, returned: bool) -> c.DeliveryCancelled:
    return c.DeliveryCancelled(
        correlation_id=rx, producer="courier", prescription_id=rx, warehouse_id=warehouse_id, goods_returned=returned
    )


def abandoned(rx: str, warehouse_id: str, *, travelled: bool, last_reason: str = "patient_absent") -> Any:
    return c.DeliveryAbandoned(
        correlation_id=rx,
        producer="courier",
        prescription_id=rx,
        warehouse_id=warehouse_id,
        attempts=3,
        last_reason=last_reason,
        goods_travelled=travelled,
    )


def registration(warehouse_id: str, message_id: str | None = None) -> inv.WarehouseRegistrationRequested:
    return inv.WarehouseRegistrationRequested(
        message_id=message_id or f"REG-{warehouse_id}",
        correlation_id=f"REGISTER-{warehouse_id}",
        producer="test",
        warehouse_id=warehouse_id,
        name=f"Test {warehouse_id}",
        kind="township",
        location=Coordinates(latitude=51.5, longitude=70.0),
        requested_by="Warehouse Staff",
    )


def restock(
    warehouse_id: str, drug: str, quantity: int, lot: str, *, expiry: date = date(2031, 1, 1), **kw: Any
) -> Any:
    return inv.RestockRequested(
        correlation_id=f"RESTOCK-{lot}",
        producer="test",
        warehouse_id=warehouse_id,
        drug_code=drug,
        lot_id=lot,
        expiry_date=expiry,
        quantity=quantity,
        requested_by="Warehouse Staff",
        **kw,
    )


def adjustment(warehouse_id: str, drug: str, lot: str, delta: int) -> inv.AdjustmentRequested:
    return inv.AdjustmentRequested(
        correlation_id=f"ADJUST-{lot}",
        producer="test",
        warehouse_id=warehouse_id,
        drug_code=drug,
        lot_id=lot,
        delta=delta,
        reason="stock count",
        requested_by="Warehouse Staff",
    )


async def outcomes(use_case: Callable[[list[Record[Any]]], Any], *messages: Envelope) -> list[Outcome]:
    return [h.outcome for h in await use_case([Record(m) for m in messages])]


def figures(w: Warehouse, lot_id: str) -> tuple[int, int, int, int, int, int]:
    lot = w.lots[lot_id]
    return lot.available, lot.reserved, lot.dispatched, lot.quarantined, lot.expired, lot.delivered


def balanced(*warehouses: Warehouse) -> bool:
    """Every lot balances, and the holds account for exactly what the lots hold."""
    for w in warehouses:
        for lot_id, lot in w.lots.items():
            picks = [(p.quantity, h.dispatched) for h in w.holds.values() for p in h.picks if p.lot_id == lot_id]
            if not lot.balanced or lot.reserved != sum(q for q, out in picks if not out):
                return False
            if lot.dispatched != sum(q for q, out in picks if out):
                return False
    return True


# --- reservations -------------------------------------------------------------------------------


async def test_the_nearest_warehouse_that_has_everything_fills_it_first_expiry_first(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=500))  # at the door, but without B
    mid = warehouse("PH-MID", MID, B=10)
    mid.lots["A-SHORT"] = make_lot("A", 50, TODAY + timedelta(days=2 + 30 - 1))  # one day short
    mid.lots["A-SOON"] = make_lot("A", 20, TODAY + timedelta(days=2 + 30))  # lasts exactly
    mid.lots["A-LATER"] = make_lot("A", 50, TODAY + timedelta(days=300))
    storage.put_warehouse(mid)
    storage.put_warehouse(warehouse("WH-FAR", FAR, A=500, B=500))

    assert await outcomes(service.on_decision, approval("RX-1", ("A", 20), ("B", 4), ("A", 10))) == [Outcome.APPLIED]

    (reserved,) = published.of_kind("stock_reserved")
    assert reserved["warehouse_id"] == "PH-MID"
    assert [(p["lot_id"], p["quantity"]) for p in reserved["picks"]] == [("A-SOON", 20), ("A-LATER", 10), ("B-L1", 4)]
    assert reserved["lines"] == [{"drug_code": "A", "quantity": 30}, {"drug_code": "B", "quantity": 4}]
    assert reserved["causation_id"] == "MSG-RX-1"
    after = storage.warehouse("PH-MID")
    assert figures(after, "A-SOON")[:2] == (0, 20) and figures(after, "A-SHORT")[:2] == (50, 0)
    allocation = storage.allocation("RX-1")
    assert allocation is not None
    assert (allocation.state, allocation.warehouse_id, allocation.lines) == (
        AllocationState.RESERVED,
        "PH-MID",
        {"A": 30, "B": 4},
    )


async def test_a_batch_of_approvals_reserves_in_order_without_overselling_in_a_few_round_trips(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))
    storage.put_warehouse(warehouse("PH-MID", MID, A=30))
    storage.reset_round_trips()

    batch = [approval(f"RX-{n}", ("A", 10)) for n in range(10)]
    assert await outcomes(service.on_decision, *batch) == [Outcome.APPLIED] * 10

    where = [storage.allocation(f"RX-{n}") for n in range(10)]
    assert [(a.state, a.warehouse_id) for a in where if a is not None] == [
        *[(AllocationState.RESERVED, "PH-NEAR")] * 5,
        *[(AllocationState.RESERVED, "PH-MID")] * 3,
        *[(AllocationState.OUT_OF_STOCK, None)] * 2,
    ], "each approval on the stock the ones before it left: the nearest first, then the next, then none"
    assert published.kinds().count("stock_reserved") == 8
    assert [b["reason"] for b in published.of_kind("reservation_failed")] == ["OUT_OF_STOCK"] * 2
    near, mid = storage.warehouse("PH-NEAR"), storage.warehouse("PH-MID")
    assert (near.level("A").available, mid.level("A").available) == (0, 0)
    assert balanced(near, mid)
    # The allocations are presumed new (no read); read the warehouses; claim (and fail) the
    # allocations; write the warehouses (asking and keeping their applied ids: the in-memory store
    # keeps every message's, MongoDB the commands' only); settle on the claims in memory: not ten of each.
    assert storage.round_trips() == 6


async def test_a_batch_soon_after_the_last_plans_on_the_warehouses_in_memory(
    service: InventoryService, storage: Storage
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))
    await service.on_decision([Record(approval("RX-1", ("A", 10)))])
    storage.reset_round_trips()
    assert await outcomes(service.on_decision, approval("RX-2", ("A", 10))) == [Outcome.APPLIED]
    assert storage.round_trips() == 5, "the batch before read them all: no read this time"
    assert storage.warehouse("PH-NEAR").level("A").available == 30


async def test_no_stock_is_refused_on_a_copy_from_memory(service: InventoryService, storage: Storage) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=10))
    await service.on_decision([Record(approval("RX-1", ("A", 10)))])
    # Another instance restocked it since: this process's copy still says none is left.
    restocked = storage.warehouse("PH-NEAR")
    restocked.lots["A-NEW"] = make_lot("A", 10, TODAY + timedelta(days=300))
    storage.put_warehouse(restocked)
    assert await outcomes(service.on_decision, approval("RX-2", ("A", 10))) == [Outcome.APPLIED]
    allocation = storage.allocation("RX-2")
    assert allocation is not None and allocation.state is AllocationState.RESERVED


async def test_the_warehouses_are_read_again_once_the_memory_is_old(
    service: InventoryService, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.put_warehouse(warehouse("WH-FAR", FAR, A=50))
    await service.on_decision([Record(approval("RX-1", ("A", 10)))])
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))  # registered by another instance since
    monkeypatch.setattr(inventory_storage, "WAREHOUSES_REREAD_S", 0.0)
    await service.on_decision([Record(approval("RX-2", ("A", 10)))])
    allocation = storage.allocation("RX-2")
    assert allocation is not None and allocation.warehouse_id == "PH-NEAR"


async def test_an_approval_nobody_can_fill_changes_no_stock(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    x = warehouse("WH-X", MID, X=6)
    x.lots["X-SHORT"] = make_lot("X", 50, TODAY + timedelta(days=10))  # too short to count
    storage.put_warehouse(x)
    storage.put_warehouse(warehouse("WH-Y", FAR, Y=9))

    handled = await service.on_decision(
        [Record(approval("RX-SHORT", ("X", 8))), Record(approval("RX-SPLIT", ("X", 2), ("Y", 2)))]
    )

    assert [h.outcome for h in handled] == [Outcome.APPLIED, Outcome.APPLIED]
    short, split = published.of_kind("reservation_failed")
    assert (short["reason"], short["shortages"]) == (
        "OUT_OF_STOCK",
        [{"drug_code": "X", "requested": 8, "best_available": 6}],
    )
    assert (split["reason"], split["shortages"]) == ("NOT_IN_ONE_WAREHOUSE", [])
    assert storage.warehouse("WH-X") == x and storage.warehouse("WH-X").holds == {}
    for rx in ("RX-SHORT", "RX-SPLIT"):
        allocation = storage.allocation(rx)
        assert allocation is not None and (allocation.state, allocation.warehouse_id) == (
            AllocationState.OUT_OF_STOCK,
            None,
        )
        assert storage.stores[1].stored(rx).version == 1, "one allocation write for a failure"  # type: ignore[union-attr]


async def test_an_approval_sent_again_reserves_once(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))
    approved = approval("RX-1", ("A", 10))

    assert await outcomes(service.on_decision, approved, approved) == [Outcome.APPLIED, Outcome.UNCHANGED]
    assert await outcomes(service.on_decision, approved) == [Outcome.UNCHANGED]
    assert await outcomes(service.on_decision, approval("RX-1", ("A", 10), message_id="OTHER")) == [Outcome.UNCHANGED]

    assert published.kinds() == ["stock_reserved"]
    assert storage.warehouse("PH-NEAR").level("A").reserved == 10


async def test_other_decisions_on_the_topic_are_none_of_inventorys_business(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    # A cancellation reaches inventory as the courier's DeliveryCancelled, once no delivery will follow.
    withdrawn = PrescriptionCancelled(
        correlation_id="RX-1",
        producer="prescription",
        prescription_id="RX-1",
        reason="therapy changed",
        requested_by="Dr K",
        was_approved=True,
    )
    assert await outcomes(service.on_decision, withdrawn) == [Outcome.UNCHANGED]
    assert published.entries == [] and storage.round_trips() == 0


async def test_a_warehouse_that_lost_a_race_is_decided_again_on_what_the_winner_left(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=10))
    storage.put_warehouse(warehouse("PH-MID", MID, A=10))
    # Another instance reserves the nearest warehouse's last units between this batch's read and its write.
    taken = warehouse("PH-NEAR", NEAR, A=10).model_copy(
        update={"lots": {"A-L1": make_lot("A", 0, reserved=10, received=10)}}
    )
    storage.warehouses.before_save = lambda: storage.put_warehouse(taken)  # type: ignore[attr-defined]

    assert await outcomes(service.on_decision, approval("RX-1", ("A", 10))) == [Outcome.APPLIED]

    (reserved,) = published.of_kind("stock_reserved")
    assert reserved["warehouse_id"] == "PH-MID", "planned again on a fresh read: the next nearest"
    allocation = storage.allocation("RX-1")
    assert allocation is not None and (allocation.state, allocation.warehouse_id) == (
        AllocationState.RESERVED,
        "PH-MID",
    )
    assert storage.warehouse("PH-NEAR") == taken, "the winner's write stands; nothing oversold"


async def test_a_lost_race_on_a_warehouse_that_can_still_fill_it_reserves_there(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=30))
    storage.stores[0].let_another_writer_win("PH-NEAR")

    assert (
        await outcomes(service.on_decision, approval("RX-1", ("A", 10)), approval("RX-2", ("A", 10)))
        == [Outcome.APPLIED] * 2
    )
    assert [b["warehouse_id"] for b in published.of_kind("stock_reserved")] == ["PH-NEAR"] * 2
    assert storage.warehouse("PH-NEAR").level("A").reserved == 20


async def test_two_instances_reserving_at_once_never_oversell(storage: Storage, published: Published) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=25))
    storage.put_warehouse(warehouse("PH-MID", MID, A=25))
    one, two = (
        InventoryService(storage, UnitOfWork(published, outbox_entry), settings(), clock=lambda: NOW) for _ in range(2)
    )

    # Both read the same stock before either writes (the reads are the batches' only pause).
    handled = await asyncio.gather(
        one.on_decision([Record(approval(f"RX-A{n}", ("A", 10))) for n in range(3)]),
        two.on_decision([Record(approval(f"RX-B{n}", ("A", 10))) for n in range(3)]),
    )

    assert Outcome.FAILED not in [h.outcome for batch in handled for h in batch]
    near, mid = storage.warehouse("PH-NEAR"), storage.warehouse("PH-MID")
    assert (len(near.holds), len(mid.holds)) == (2, 2)
    assert (near.level("A").available, mid.level("A").available) == (5, 5)
    assert published.kinds().count("stock_reserved") == 4 and published.kinds().count("reservation_failed") == 2
    assert balanced(near, mid)


async def test_one_approval_handled_by_two_instances_at_once_is_reserved_once(
    storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=25))
    storage.put_warehouse(warehouse("PH-MID", MID, A=25))
    one, two = (
        InventoryService(storage, UnitOfWork(published, outbox_entry), settings(), clock=lambda: NOW) for _ in range(2)
    )
    approved = approval("RX-1", ("A", 10))

    await asyncio.gather(one.on_decision([Record(approved)]), two.on_decision([Record(approved)]))

    assert published.kinds() == ["stock_reserved"]
    assert storage.warehouse("PH-NEAR").level("A").reserved == 10 and storage.warehouse("PH-MID").holds == {}


async def test_a_warehouse_that_cannot_be_written_fails_only_its_own_approvals(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=10))
    storage.put_warehouse(warehouse("PH-MID", MID, B=10))
    storage.stores[0].fail_writes_of("PH-NEAR", "document too large")

    handled = await service.on_decision([Record(approval("RX-A", ("A", 5))), Record(approval("RX-B", ("B", 5)))])

    assert [h.outcome for h in handled] == [Outcome.FAILED, Outcome.APPLIED]
    assert handled[0].error is not None and "too large" in handled[0].error
    assert [b["prescription_id"] for b in published.of_kind("stock_reserved")] == ["RX-B"]
    claimed = storage.allocation("RX-A")
    assert claimed is not None and (claimed.state, claimed.warehouse_id) == (AllocationState.RESERVING, "PH-NEAR")

    # The retry resumes the warehouse it claimed.
    storage.stores[0].heal("PH-NEAR")
    assert await outcomes(service.on_decision, approval("RX-A", ("A", 5))) == [Outcome.APPLIED]
    settled = storage.allocation("RX-A")
    assert settled is not None and (settled.state, settled.warehouse_id) == (AllocationState.RESERVED, "PH-NEAR")


async def test_an_allocation_that_cannot_be_written_fails_only_its_approval(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=10))
    storage.stores[1].fail_writes_of("RX-A")

    handled = await service.on_decision([Record(approval("RX-A", ("A", 5))), Record(approval("RX-B", ("A", 5)))])

    assert [h.outcome for h in handled] == [Outcome.FAILED, Outcome.APPLIED]
    assert storage.warehouse("PH-NEAR").holds.keys() == {"RX-B"}, "no stock held without its claim"


async def test_a_redelivered_approval_resumes_the_warehouse_it_claimed_or_holds_at(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))
    # An earlier process held stock for RX-HELD at the far warehouse and died before settling it.
    far = warehouse("WH-FAR", FAR, A=50)
    held = reserve(far, "RX-HELD", {"A": Line("A", 5, 30)}, today=TODAY, delivery_days=2).warehouse
    storage.put_warehouse(held)
    for rx in ("RX-HELD", "RX-CLAIMED"):  # RX-CLAIMED: claimed the far warehouse and died before its hold
        storage.put_allocation(
            Allocation(prescription_id=rx, state=AllocationState.RESERVING, lines={"A": 5}, warehouse_id="WH-FAR")
        )

    assert await outcomes(service.on_decision, approval("RX-CLAIMED", ("A", 5)), approval("RX-HELD", ("A", 5))) == [
        Outcome.APPLIED,
        Outcome.APPLIED,
    ]

    assert [(b["prescription_id"], b["warehouse_id"]) for b in published.of_kind("stock_reserved")] == [
        ("RX-CLAIMED", "WH-FAR")
    ], "the claimed warehouse though another is nearer; the held one not reserved twice"
    for rx in ("RX-CLAIMED", "RX-HELD"):
        allocation = storage.allocation(rx)
        assert allocation is not None and (allocation.state, allocation.warehouse_id) == (
            AllocationState.RESERVED,
            "WH-FAR",
        )
    assert storage.warehouse("WH-FAR").level("A").reserved == 10
    assert storage.warehouse("PH-NEAR").holds == {}


async def test_a_claim_another_worker_made_meanwhile_is_resumed(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))
    storage.put_warehouse(warehouse("WH-FAR", FAR, A=50))
    other = Allocation(prescription_id="RX-1", state=AllocationState.RESERVING, lines={"A": 5}, warehouse_id="WH-FAR")
    storage.allocations.before_save = lambda: storage.put_allocation(other)  # type: ignore[attr-defined]

    assert await outcomes(service.on_decision, approval("RX-1", ("A", 5))) == [Outcome.APPLIED]

    assert [b["warehouse_id"] for b in published.of_kind("stock_reserved")] == ["WH-FAR"], "never at two warehouses"
    assert storage.warehouse("PH-NEAR").holds == {}


async def test_a_delivery_withdrawn_first_leaves_nothing_to_reserve(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))

    assert await outcomes(service.on_delivery_event, cancelled("RX-1", None, returned=False)) == [Outcome.APPLIED]
    assert await outcomes(service.on_decision, approval("RX-1", ("A", 5))) == [Outcome.UNCHANGED]

    assert published.entries == []
    allocation = storage.allocation("RX-1")
    assert allocation is not None and allocation.state is AllocationState.CANCELLED
    assert storage.warehouse("PH-NEAR").level("A").available == 50


async def test_a_delivery_withdrawn_while_reserving_gives_the_units_back(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=50))
    # The withdrawal writes CANCELLED while this batch writes its hold: the settle then finds it.
    withdrawn = Allocation(
        prescription_id="RX-1", state=AllocationState.CANCELLED, lines={"A": 5}, warehouse_id="PH-NEAR"
    )
    storage.warehouses.before_save = lambda: storage.put_allocation(withdrawn)  # type: ignore[attr-defined]

    assert await outcomes(service.on_decision, approval("RX-1", ("A", 5))) == [Outcome.APPLIED]

    assert published.kinds() == ["stock_reserved", "stock_released"]
    near = storage.warehouse("PH-NEAR")
    assert near.holds == {} and near.level("A").available == 50
    allocation = storage.allocation("RX-1")
    assert allocation is not None and allocation.state is AllocationState.CANCELLED


# --- the delivery moves held stock ------------------------------------------------------------------


@pytest.fixture
async def reserved(service: InventoryService, storage: Storage, published: Published) -> list[str]:
    """Six prescriptions of 10 units each, reserved at PH-NEAR (100 units of A)."""
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=100))
    rxs = [f"RX-{n}" for n in range(1, 7)]
    await service.on_decision([Record(approval(rx, ("A", 10))) for rx in rxs])
    published.entries.clear()
    storage.reset_round_trips()
    return rxs


async def test_the_delivery_dispatches_returns_and_delivers_held_stock(
    service: InventoryService, storage: Storage, published: Published, reserved: list[str]
) -> None:
    rx = reserved[0]
    picked_up = c.DeliveryPickedUp(**attempt(rx, "PH-NEAR"))
    failed = c.DeliveryFailed(**attempt(rx, "PH-NEAR"), reason="patient_absent", goods_returned=True, will_retry=True)
    again = c.DeliveryPickedUp(**attempt(rx, "PH-NEAR", 2))
    delivered = c.DeliveryCompleted(**attempt(rx, "PH-NEAR", 2))

    assert await outcomes(service.on_delivery_event, picked_up, failed, picked_up) == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]
    assert figures(storage.warehouse("PH-NEAR"), "A-L1")[:3] == (40, 60, 0), "the sealed package is held for the retry"
    assert await outcomes(service.on_delivery_event, again, delivered, delivered) == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]

    assert published.kinds(rx) == ["stock_dispatched", "stock_returned", "stock_dispatched", "stock_delivered"]
    near = storage.warehouse("PH-NEAR")
    assert figures(near, "A-L1") == (40, 50, 0, 0, 0, 10)
    assert rx not in near.holds and balanced(near)
    assert published.of_kind("stock_delivered")[0]["causation_id"] == delivered.message_id


async def test_goods_that_travelled_go_to_quarantine_and_goods_that_did_not_go_back(
    service: InventoryService, storage: Storage, published: Published, reserved: list[str]
) -> None:
    damaged, kept, withdrawn, unknown_wh, came_back, _ = reserved
    batch = [
        c.DeliveryPickedUp(**attempt(damaged, "PH-NEAR")),
        abandoned(damaged, "PH-NEAR", travelled=True, last_reason="damaged"),
        abandoned(kept, "PH-NEAR", travelled=False),
        c.DeliveryPickedUp(**attempt(withdrawn, "PH-NEAR")),
        cancelled(withdrawn, "PH-NEAR", returned=True),
        cancelled(unknown_wh, None, returned=False),  # found through the allocation
        c.DeliveryPickedUp(**attempt(came_back, "PH-NEAR")),
        c.DeliveryFailed(
            **attempt(came_back, "PH-NEAR"), reason="patient_absent", goods_returned=True, will_retry=True
        ),
        cancelled(came_back, "PH-NEAR", returned=False),  # it left: quarantined, whatever the notice says
    ]

    assert Outcome.FAILED not in await outcomes(service.on_delivery_event, *batch)

    quarantined = {b["prescription_id"]: b["why"] for b in published.of_kind("stock_quarantined")}
    assert quarantined == {damaged: "damaged", withdrawn: "cancelled", came_back: "cancelled"}
    assert [b["prescription_id"] for b in published.of_kind("stock_released")] == [kept, unknown_wh]
    near = storage.warehouse("PH-NEAR")
    assert figures(near, "A-L1") == (60, 10, 0, 30, 0, 0), "30 quarantined, never back on the shelf"
    assert balanced(near)
    # The allocations (settled already: nothing to write) confirmed with one read; the warehouse
    # decided on its copy in memory and written once (asking and keeping the applied ids, as above).
    assert storage.round_trips() == 4


async def test_a_pickup_settles_an_allocation_its_reservation_never_settled(
    service: InventoryService, storage: Storage, published: Published, reserved: list[str]
) -> None:
    rx = reserved[0]
    storage.put_allocation(
        Allocation(prescription_id=rx, state=AllocationState.RESERVING, lines={"A": 10}, warehouse_id="PH-NEAR")
    )

    assert await outcomes(service.on_delivery_event, c.DeliveryPickedUp(**attempt(rx, "PH-NEAR"))) == [Outcome.APPLIED]

    allocation = storage.allocation(rx)
    assert allocation is not None and allocation.state is AllocationState.RESERVED
    assert await outcomes(service.on_decision, approval(rx, ("A", 10), message_id="REDELIVERED")) == [Outcome.UNCHANGED]


async def test_a_withdrawal_without_a_warehouse_finds_the_hold_by_looking(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    near = warehouse("PH-NEAR", NEAR, A=100)
    storage.put_warehouse(near)
    await service.on_decision([Record(approval("RX-1", ("A", 10)))])
    storage.stores[1].put("RX-1", Allocation(prescription_id="RX-1", state=AllocationState.RESERVING, lines={"A": 10}))

    assert await outcomes(service.on_delivery_event, cancelled("RX-1", None, returned=False)) == [Outcome.APPLIED]
    assert published.kinds("RX-1") == ["stock_reserved", "stock_released"]
    assert storage.warehouse("PH-NEAR").lots == near.lots


async def test_events_that_move_no_stock_change_nothing(
    service: InventoryService, storage: Storage, published: Published, reserved: list[str]
) -> None:
    assigned = c.CourierAssigned(**attempt("RX-1", "PH-NEAR"))
    not_back = c.DeliveryFailed(
        **attempt("RX-1", "PH-NEAR"), reason="patient_absent", goods_returned=False, will_retry=True
    )
    nowhere = cancelled("RX-NOWHERE", None, returned=True)

    assert await outcomes(service.on_delivery_event, assigned, not_back, nowhere) == [Outcome.UNCHANGED] * 3
    assert published.entries == []


# --- warehouse staff --------------------------------------------------------------------------------


async def test_registration_restocks_and_adjustments(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    wh, lot = "WH-CMD", "LOT-1"
    early = restock(wh, "D", 7, lot)
    first = restock(wh, "D", 10, lot)
    handled = await service.on_command(
        [
            Record(m)
            for m in (
                early,  # before the warehouse is registered: refused (dead-lettered)
                registration(wh),
                first,
                restock(wh, "D", 5, lot),
                first,  # sent twice: applied once
                restock(wh, "D", 1, lot, expiry=date(2031, 1, 2)),  # refused: the lot says otherwise
                adjustment(wh, "D", lot, -3),  # 12
                adjustment(wh, "D", lot, -100),  # refused: below zero
                adjustment(wh, "D", lot, -8),  # 4: falls below the threshold of 5
                adjustment(wh, "D", lot, -1),  # 3: already below, no second alert
                adjustment("WH-NOWHERE", "D", lot, 1),
            )
        ]
    )

    assert [h.outcome for h in handled] == [
        Outcome.REFUSED,
        *[Outcome.APPLIED] * 3,
        Outcome.DUPLICATE,
        *[Outcome.APPLIED] * 5,
        Outcome.REFUSED,
    ]
    assert handled[0].refusal is not None and handled[0].refusal.code == "unknown_warehouse"
    assert published.kinds() == [
        "warehouse_registered",
        "stock_restocked",
        "stock_restocked",
        "stock_command_refused",
        "stock_adjusted",
        "stock_command_refused",
        "stock_adjusted",
        "low_stock",
        "stock_adjusted",
    ]
    refusals = published.of_kind("stock_command_refused")
    assert "expiring" in refusals[0]["reason"] and "12" in refusals[1]["reason"]
    assert [b["level"]["available"] for b in published.of_kind("stock_adjusted")] == [12, 4, 3]
    lot_now = storage.warehouse(wh).lots[lot]
    assert (lot_now.available, lot_now.received, lot_now.adjusted) == (3, 15, -12)
    assert storage.stores[0].state_of("WH-NOWHERE") is None, "an adjustment does not create a warehouse"

    # The refused restock, sent again now that the warehouse is registered, is applied.
    assert await outcomes(service.on_command, early) == [Outcome.APPLIED]
    assert storage.warehouse(wh).lots[lot].available == 10


async def test_a_restock_of_a_lot_expired_by_the_services_clock_is_refused_on_the_events_topic(
    storage: Storage, published: Published
) -> None:
    # Sent when the lot was still good (occurred_at), decided on the service's clock a day later.
    clock = stand_ins.Clock(NOW)
    service = InventoryService(storage, UnitOfWork(published, outbox_entry), settings(), clock=clock)
    wh = "WH-EXP"
    await service.on_command([Record(registration(wh))])
    today_s = restock(wh, "D", 40, "LOT-TODAY", expiry=TODAY + timedelta(days=1), occurred_at=NOW)
    clock.now = NOW + timedelta(days=1)

    handled = await service.on_command(
        [
            Record(m)
            for m in (
                restock(wh, "D", 50, "LOT-OLD", expiry=TODAY - timedelta(days=30)),
                today_s,
                restock(wh, "D", 60, "LOT-GOOD", expiry=TODAY + timedelta(days=2)),
            )
        ]
    )

    assert [h.outcome for h in handled] == [Outcome.APPLIED] * 3, "answered, not dead-lettered"
    refused = [e for e in published.entries if e["type"] == "inventory.stock_command_refused"]
    assert [(e["topic"], e["key"]) for e in refused] == [(topics.INVENTORY_EVENTS.name, wh)] * 2
    bodies = [json.loads(e["body"]) for e in refused]
    assert [b["causation_id"] for b in bodies] == [handled[0].record.message.message_id, today_s.message_id]
    assert bodies[0]["reason"].startswith(f"lot LOT-OLD of D expired on {TODAY - timedelta(days=30)}")
    assert f"expired on {TODAY + timedelta(days=1)} (today is {TODAY + timedelta(days=1)})" in bodies[1]["reason"]
    assert set(storage.warehouse(wh).lots) == {"LOT-GOOD"}, "nothing expired reaches the shelf"
    assert [b["lot_id"] for b in published.of_kind("stock_restocked")] == ["LOT-GOOD"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"low_stock_threshold": MAX_STOCK_UNITS + 1},
        {"low_stock_thresholds": {"INSGL": MAX_STOCK_UNITS + 1}},
        {"low_stock_thresholds": {"INSGL": -1}},
        {"delivery_days": 366},
        {"near_expiry_days": 3651},
    ],
)
def test_settings_no_alert_or_date_could_carry_are_refused_at_start(overrides):
    # A threshold travels in every LowStock alert, and the days are added to today's date.
    with pytest.raises(ValidationError):
        InventorySettings(**overrides)


async def test_a_command_sent_again_after_many_others_is_applied_once(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    first = restock("WH-1", "D", 100, "LOT-FIRST")
    await service.on_command([Record(registration("WH-1")), Record(first)])
    await service.on_command([Record(restock("WH-1", "D", 1, f"LOT-{n}")) for n in range(600)])
    before = storage.warehouse("WH-1")
    storage.reset_round_trips()

    assert await outcomes(service.on_command, first, first) == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert storage.warehouse("WH-1") == before
    assert storage.round_trips() == 1, "the applied ids asked once; nothing read or written"


# --- expiry ------------------------------------------------------------------------------------------


async def test_the_expiry_sweep_alerts_once_and_takes_expired_lots_off_the_shelf(
    storage: Storage, published: Published
) -> None:
    clock = [NOW]
    service = InventoryService(
        storage, UnitOfWork(published, outbox_entry), settings(low_stock_thresholds={"D": 16}), clock=lambda: clock[0]
    )
    lots = {
        "EXP-TOMORROW": make_lot("D", 4, TODAY + timedelta(days=1)),
        "EXP-IN-30": make_lot("D", 5, TODAY + timedelta(days=30)),
        "EXP-IN-31": make_lot("D", 6, TODAY + timedelta(days=31)),
        "EXP-LATER": make_lot("D", 3),
    }
    storage.put_warehouse(make_warehouse("WH-EXP", lots=lots))
    storage.put_warehouse(make_warehouse("WH-QUIET", D=100))
    storage.reset_round_trips()

    await service.sweep_expiry()
    assert storage.round_trips() == 2, "every warehouse in one read, the due ones in one write"
    await service.sweep_expiry()
    assert sorted(b["lot_id"] for b in published.of_kind("lot_nearing_expiry")) == ["EXP-IN-30", "EXP-TOMORROW"]

    clock[0] = NOW + timedelta(days=1)
    await service.sweep_expiry()
    await service.sweep_expiry()

    nearing = [b["lot_id"] for b in published.of_kind("lot_nearing_expiry")]
    assert nearing == ["EXP-IN-30", "EXP-TOMORROW", "EXP-IN-31"], "once per lot"
    (expired,) = published.of_kind("lot_expired")
    assert (expired["lot_id"], expired["removed"], expired["level"]["available"]) == ("EXP-TOMORROW", 4, 14)
    assert expired["occurred_at"].startswith((NOW + timedelta(days=1)).date().isoformat())
    (low,) = published.of_kind("low_stock")
    assert (low["available"], low["threshold"]) == (14, 16)
    assert figures(storage.warehouse("WH-EXP"), "EXP-TOMORROW") == (0, 0, 0, 0, 4, 0)
    assert storage.stores[0].stored("WH-QUIET").version == 1, "a warehouse with nothing due is not written"  # type: ignore[union-attr]


# --- the ledger --------------------------------------------------------------------------------------


async def test_the_ledger_records_every_movement_once_in_one_write_per_batch(
    service: InventoryService, storage: Storage, published: Published, reserved: list[str]
) -> None:
    await service.on_delivery_event([Record(c.DeliveryPickedUp(**attempt(reserved[0], "PH-NEAR")))])
    events = [topics.INVENTORY_EVENTS.parse(e["body"].encode()) for e in published.entries]
    registered = inv.WarehouseRegistered(
        correlation_id="R",
        producer="inventory",
        warehouse_id="PH-NEAR",
        name="Near",
        kind="township",
        location=Coordinates(latitude=51.81, longitude=69.40),
    )

    handled = await service.record_movements([Record(e) for e in [*events, registered]])
    assert [h.outcome for h in handled] == [Outcome.APPLIED, Outcome.UNCHANGED]
    assert storage.ledger_writes == 1
    entries = await storage.movements("PH-NEAR")
    assert [(e.kind, e.quantity) for e in entries] == [("dispatched", 10)]

    await service.record_movements([Record(e) for e in events])  # redelivered
    assert await storage.movements("PH-NEAR") == entries
    assert recompute_lots(entries)["PH-NEAR", "A-L1"].dispatched == 10


async def test_ledger_lines_say_which_prescription_or_who_and_why(
    service: InventoryService, storage: Storage, published: Published, reserved: list[str]
) -> None:
    await service.on_delivery_event([Record(c.DeliveryPickedUp(**attempt(reserved[0], "PH-NEAR")))])
    await service.on_command([Record(adjustment("PH-NEAR", "A", "A-L1", -2))])
    events = [topics.INVENTORY_EVENTS.parse(e["body"].encode()) for e in published.entries]
    await service.record_movements([Record(e) for e in events])

    lines = await storage.movements("PH-NEAR", "A-L1")
    assert [(e.kind, e.prescription_id, e.by, e.reason) for e in lines] == [
        ("dispatched", reserved[0], None, None),
        ("adjusted", None, "Warehouse Staff", "stock count"),
    ]


def quarantine_decision(decision: str, quantity: int, lot: str = "MET500-Q") -> inv.QuarantineDecided:
    return inv.QuarantineDecided(
        correlation_id=f"QUAR-{decision}-{quantity}",
        producer="test",
        warehouse_id="WH-Q",
        drug_code="MET500",
        lot_id=lot,
        quantity=quantity,
        decision=decision,  # type: ignore[arg-type]
        reason="inspected",
        requested_by="Aliya",
    )


async def test_staff_release_or_write_off_quarantined_units_and_a_decision_the_books_cannot_take_is_answered(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    lot = make_lot("MET500", 6, TODAY + timedelta(days=365), quarantined=4, received=10)
    storage.put_warehouse(make_warehouse("WH-Q", location=NEAR, lots={"MET500-Q": lot}))

    handled = await service.on_command(
        [
            Record(quarantine_decision("release", 1)),
            Record(quarantine_decision("write_off", 2)),
            Record(quarantine_decision("release", 5)),  # only 1 left in quarantine: refused, answered
        ]
    )

    assert [h.outcome for h in handled] == [Outcome.APPLIED] * 3
    assert published.kinds() == ["quarantine_cleared", "quarantine_cleared", "stock_command_refused"]
    released, written_off = published.of_kind("inventory.quarantine_cleared")
    assert (released["level"]["available"], released["level"]["quarantined"]) == (7, 3)
    assert (written_off["level"]["available"], written_off["level"]["quarantined"]) == (7, 1)
    (refused,) = published.of_kind("inventory.stock_command_refused")
    assert refused["reason"] == "only 1 units of lot MET500-Q are in quarantine"


async def test_a_restock_of_a_drug_the_formulary_does_not_list_is_refused_until_it_is_listed(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    wh = "WH-F"
    await service.on_command([Record(registration(wh))])
    unlisted = restock(wh, "NOPE", 10, "LOT-N")
    [handled] = await service.on_command([Record(unlisted)])
    assert handled.outcome is Outcome.APPLIED, "answered on the events topic, not dead-lettered"
    [refused] = published.of_kind("stock_command_refused")
    assert "NOPE is not in the formulary" in refused["reason"] and refused["drug_code"] == "NOPE"
    assert "LOT-N" not in storage.warehouse(wh).lots

    listed = DrugListed(
        correlation_id="NOPE", producer="prescription", drug_code="NOPE", name="Now listed", form="tablet"
    )
    assert await outcomes(service.on_formulary, listed, listed) == [Outcome.APPLIED, Outcome.DUPLICATE]
    await service.on_command([Record(restock(wh, "NOPE", 10, "LOT-N"))])
    assert storage.warehouse(wh).lots["LOT-N"].available == 10


async def test_the_formulary_list_is_one_lookup_per_batch_of_restocks(
    service: InventoryService, storage: Storage
) -> None:
    await service.on_command([Record(registration("WH-L"))])
    storage.drugs.memory.forget(LISTED)  # type: ignore[union-attr]
    trips = storage.drugs.round_trips  # type: ignore[attr-defined]
    await service.on_command([Record(restock("WH-L", code, 5, f"LOT-{code}")) for code in ("A", "B", "C", "D")])
    assert storage.drugs.round_trips - trips == 1  # type: ignore[attr-defined]


async def test_low_stock_is_told_while_the_next_prescription_like_the_last_can_still_be_filled(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    """The threshold of 5 alone stays silent at 120 tablets, while the next prescription for 180
    would fail: the largest recent reservation of the drug here raises it."""
    storage.put_warehouse(warehouse("WH-DEMAND", NEAR, MET500=300))
    await outcomes(service.on_decision, approval("RX-BIG-1", ("MET500", 180)))
    (low,) = published.of_kind("low_stock")
    assert (low["drug_code"], low["available"], low["threshold"]) == ("MET500", 120, 180)
    assert storage.warehouse("WH-DEMAND").recent_demand == {"MET500": [180]}


async def test_a_damaged_package_goes_to_quarantine_and_is_packed_again_from_the_shelf(
    service: InventoryService, storage: Storage, published: Published, reserved: list[str]
) -> None:
    rx = reserved[0]
    picked_up = c.DeliveryPickedUp(**attempt(rx, "PH-NEAR"))
    damaged = c.DeliveryFailed(**attempt(rx, "PH-NEAR"), reason="damaged", goods_returned=True, will_retry=True)

    assert await outcomes(service.on_delivery_event, picked_up, damaged, damaged) == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]

    assert published.kinds(rx) == ["stock_dispatched", "stock_quarantined", "stock_repacked"]
    (quarantined,) = published.of_kind("stock_quarantined")
    assert (quarantined["why"], quarantined["packed_again"]) == ("damaged", True)
    (repacked,) = published.of_kind("stock_repacked")
    assert [(p["lot_id"], p["quantity"]) for p in repacked["picks"]] == [("A-L1", 10)]
    near = storage.warehouse("PH-NEAR")
    # 100 units: 50 held for the other five, 10 damaged in quarantine, 10 packed again, 30 on the shelf
    assert figures(near, "A-L1")[:4] == (30, 60, 0, 10)
    assert near.holds[rx].travelled is False and balanced(near)


async def test_a_damaged_package_the_shelf_cannot_pack_again_is_only_quarantined(
    service: InventoryService, storage: Storage, published: Published
) -> None:
    storage.put_warehouse(warehouse("PH-NEAR", NEAR, A=10))
    await service.on_decision([Record(approval("RX-1", ("A", 10)))])
    damaged = c.DeliveryFailed(**attempt("RX-1", "PH-NEAR"), reason="damaged", goods_returned=False, will_retry=True)

    assert await outcomes(service.on_delivery_event, damaged) == [Outcome.APPLIED]

    (quarantined,) = published.of_kind("stock_quarantined")
    assert (quarantined["why"], quarantined["packed_again"]) == ("damaged", False)
    assert published.of_kind("stock_repacked") == []
    near = storage.warehouse("PH-NEAR")
    assert "RX-1" not in near.holds and figures(near, "A-L1")[:4] == (0, 0, 0, 10) and balanced(near)
