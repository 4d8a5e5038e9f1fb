from pydantic import Field

from pharmacy_contracts.limits import MAX_STOCK_UNITS, StockUnits
from services.runtime.settings import RuntimeSettings


class InventorySettings(RuntimeSettings):
    """Stock rules' settings (environment prefix `PHARMACY_`; dicts as JSON)."""

    # Bounded like the `LowStock` alert that carries them, so a mistyped threshold stops the
    # service at start, not every alert it would raise.
    low_stock_threshold: int = Field(
        default=20, ge=0, le=MAX_STOCK_UNITS, description="Alert when available units fall below this"
    )
    low_stock_thresholds: dict[str, StockUnits] = Field(
        default_factory=dict,
        description='Per-drug thresholds overriding low_stock_threshold, e.g. {"INSGL": 5}',
    )
    delivery_days: int = Field(
        default=2, ge=0, le=365, description="Days a delivery may take: a lot must last them plus the whole therapy"
    )
    near_expiry_days: int = Field(
        default=30, ge=0, le=3650, description="Alert once per lot with shelf units expiring within this many days"
    )
