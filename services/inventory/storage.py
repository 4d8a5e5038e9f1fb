"""The inventory service's collections: warehouses (stock and holds) and allocations."""

from __future__ import annotations

from typing import Any

from services.runtime.documents import DocumentStore

from .domain import Allocation, Warehouse


class InventoryStorage:
    def __init__(self, database: Any) -> None:
        self.warehouses: DocumentStore[Warehouse] = DocumentStore(database, "inventory_warehouses", Warehouse)
        self.allocations: DocumentStore[Allocation] = DocumentStore(database, "inventory_allocations", Allocation)

    @property
    def with_outbox(self) -> list[DocumentStore[Any]]:
        return [self.warehouses, self.allocations]

    async def ensure_indexes(self) -> None:
        await self.warehouses.ensure_indexes()
        await self.allocations.ensure_indexes(plain=["state"])

    async def all_warehouses(self) -> list[Warehouse]:
        return await self.warehouses.find()
