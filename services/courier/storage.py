"""The courier service's collections: deliveries and the courier roster."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pharmacy_contracts import topics
from services.runtime.documents import Change, DocumentStore

from .domain import CourierProfile, Delivery


class CourierStorage:
    def __init__(self, database: Any) -> None:
        # Couriers' reports come from phones on the road, which send again when they lose signal.
        self.deliveries: DocumentStore[Delivery] = DocumentStore(
            database, "courier_deliveries", Delivery, keeps_trace=True, remembers_commands=[topics.COURIER_UPDATES.name]
        )
        self.roster: DocumentStore[CourierProfile] = DocumentStore(
            database, "courier_roster", CourierProfile, remembers_commands=[topics.COURIER_UPDATES.name]
        )

    @property
    def with_outbox(self) -> list[DocumentStore[Any]]:
        return [self.deliveries]

    async def ensure_indexes(self) -> None:
        await self.deliveries.ensure_indexes(plain=["active_courier_id", "state"])
        await self.roster.ensure_indexes()

    async def couriers(self) -> list[CourierProfile]:
        return await self.roster.find()

    async def loads(self, couriers: list[CourierProfile]) -> dict[str, int]:
        """Deliveries on the road per courier, in one query."""
        ids = [c.courier_id for c in couriers]
        on_the_road = Counter(await self.deliveries.values_of("active_courier_id", active_courier_id={"$in": ids}))
        return {courier_id: on_the_road[courier_id] for courier_id in ids}

    async def save_courier(self, courier: CourierProfile) -> None:
        await self.roster.apply(courier.courier_id, lambda _: Change(courier))
