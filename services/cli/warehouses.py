"""Warehouses described in a file (as `services/ops/data/warehouses.json` shows), as the
registration commands `pharmacy warehouse register --file` publishes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pharmacy_contracts import inventory as inv


def registrations(
    source: Path | Iterable[Mapping[str, Any]], *, requested_by: str, producer: str = "warehouse-cli"
) -> list[inv.WarehouseRegistrationRequested]:
    """A registration command per warehouse of a JSON file, or of the entries themselves. Publish
    them before any restock of those warehouses: inventory refuses stock for one it does not know."""
    entries = json.loads(source.read_text()) if isinstance(source, Path) else list(source)
    return [
        inv.WarehouseRegistrationRequested.model_validate(
            {
                "correlation_id": f"register-{entry['warehouse_id']}",
                "producer": producer,
                "requested_by": requested_by,
                **entry,
            }
        )
        for entry in entries
    ]
