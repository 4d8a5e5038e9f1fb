"""The courier service's collections, as repositories: deliveries (with the outbox) and the courier
roster. Only this module (and the runtime) knows MongoDB.

The use cases load and save deliveries a batch at a time through the unit of work; the queries
here are the few that look across deliveries: the roster with each courier's load (read into a
cache, not per batch, see `FleetCache`), and the deliveries a sweep looks at.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from services.runtime.mongo_store import MongoStore
from services.runtime.store import DocumentMemory, overwrite

from . import domain
from .domain import CourierProfile, Delivery, DeliveryState


class CourierStorage:
    def __init__(self, database: Any) -> None:
        #: One document per prescription: its delivery, with the events it caused (its outbox).
        # Couriers' reports come from phones on the road, which send again when they lose signal:
        # a delivery absorbs a few dozen messages in its life, and remembers every one's id. It is
        # created by its prescription's first message and changed by this process a moment later
        # (its memory spares the loads; see DocumentMemory).
        self.deliveries: MongoStore[Delivery] = MongoStore(
            database,
            "courier_deliveries",
            Delivery,
            keeps_trace=True,
            keeps_every_message=True,
            memory=DocumentMemory(presumes_new=True),
            marks_published=True,
        )
        #: One document per courier, written by dispatchers (`pharmacy couriers load`), no message.
        self.roster: MongoStore[CourierProfile] = MongoStore(database, "courier_roster", CourierProfile)
        self._delivery_documents = database["courier_deliveries"]

    @property
    def with_outbox(self) -> list[MongoStore[Any]]:
        return [self.deliveries]

    async def ensure_indexes(self) -> None:
        await self.deliveries.ensure_indexes(plain=["active_courier_id", "state"])
        await self.roster.ensure_indexes()

    # --- the roster -------------------------------------------------------------------------------

    async def couriers(self) -> list[CourierProfile]:
        """The whole roster (a few hundred documents at most), read whole."""
        return [s.state for s in await self.roster.all() if s.state is not None]

    async def loads(self, couriers: Iterable[CourierProfile]) -> dict[str, int]:
        """Deliveries each courier holds now, in one indexed query."""
        ids = [c.courier_id for c in couriers]
        path = "state.active_courier_id"
        cursor = self._delivery_documents.find({path: {"$in": ids}}, {path: 1})
        # MongoDB returns a projected sub-field nested; the dev server returns it under its dotted path.
        held = Counter([d["state"].get("active_courier_id") if "state" in d else d.get(path) async for d in cursor])
        return {courier_id: held[courier_id] for courier_id in ids}

    async def save_courier(self, courier: CourierProfile) -> None:
        """A dispatcher's entry: the courier's document becomes `courier`, whatever it was."""
        await overwrite(self.roster, courier.courier_id, courier)

    # --- deliveries -------------------------------------------------------------------------------

    async def delivery(self, prescription_id: str) -> Delivery | None:
        return (await self.deliveries.load([prescription_id]))[prescription_id].state

    async def open_deliveries(self) -> list[Delivery]:
        """Deliveries a sweep looks at: not finished (indexed on the state)."""
        swept = sorted(state.value for state in domain.SWEPT)
        return await self._states_where({"state.state": {"$in": swept}})

    async def held_by(self, courier_id: str) -> list[Delivery]:
        """Deliveries offered to or held by a courier now (indexed on the courier), for their app."""
        return await self._states_where({"state.active_courier_id": courier_id})

    async def waiting_deliveries(self) -> list[Delivery]:
        """Deliveries waiting for a courier (indexed on the state)."""
        return await self._states_where({"state.state": DeliveryState.AWAITING_COURIER.value})

    async def all_deliveries(self) -> list[Delivery]:
        """Every delivery (tools and checks; not on any message's path)."""
        return [s.state for s in await self.deliveries.all() if s.state is not None]

    async def _states_where(self, query: dict[str, Any]) -> list[Delivery]:
        return [Delivery.model_validate(d["state"]) async for d in self._delivery_documents.find(query, {"state": 1})]
