from pydantic import BaseModel, ConfigDict, Field

from pharmacy_contracts.limits import MAX_STOCK_UNITS, StockUnits
from services.runtime.settings import RuntimeSettings

from .domain import DEMAND_DAYS
from .transfers import ReorderPolicy


class DrugReorderSettings(BaseModel):
    """One drug's reorder settings; a setting left out takes the default (`transfer_*`)."""

    model_config = ConfigDict(extra="forbid")

    lead_time_days: int | None = Field(default=None, ge=0, le=365)
    safety_stock: StockUnits | None = None
    cover: StockUnits | None = None


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

    # Townships restocked from the centre (services/inventory/transfers.py). Bounded like the
    # `TransferSuggested` event that carries them.
    demand_window_days: int = Field(
        default=14,
        ge=1,
        le=DEMAND_DAYS,
        description="Days a township's average daily demand of a drug is taken over (its reorder point)",
    )
    transfer_lead_time_days: int = Field(
        default=3, ge=0, le=365, description="Days a transfer from the central warehouse takes to reach a township"
    )
    transfer_safety_stock: StockUnits = Field(
        default=20, description="Units a township keeps beyond lead-time demand: part of its reorder point"
    )
    transfer_cover: StockUnits = Field(
        default=50, description="Units a suggested transfer brings beyond the reorder point"
    )
    transfer_policies: dict[str, DrugReorderSettings] = Field(
        default_factory=dict,
        description='Per-drug overrides of the three above, e.g. {"LEV50": {"lead_time_days": 5, "cover": 120}}',
    )
    transfer_min_shelf_days: int = Field(
        default=30,
        ge=0,
        le=3650,
        description="Days a lot must have left to count as usable at a township, and to be sent there (on arrival)",
    )

    @property
    def reorder_default(self) -> ReorderPolicy:
        return ReorderPolicy(self.transfer_lead_time_days, self.transfer_safety_stock, self.transfer_cover)

    @property
    def reorder_policies(self) -> dict[str, ReorderPolicy]:
        """Each drug with overrides, its whole policy (the defaults filling what it leaves out)."""
        default = self.reorder_default
        return {
            drug: ReorderPolicy(
                default.lead_time_days if one.lead_time_days is None else one.lead_time_days,
                default.safety_stock if one.safety_stock is None else one.safety_stock,
                default.cover if one.cover is None else one.cover,
            )
            for drug, one in self.transfer_policies.items()
        }
