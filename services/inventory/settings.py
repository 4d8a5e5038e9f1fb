from pydantic import Field

from services.runtime.settings import RuntimeSettings


class InventorySettings(RuntimeSettings):
    low_stock_threshold: int = Field(default=20, ge=0, description="Alert when available units fall below this")
