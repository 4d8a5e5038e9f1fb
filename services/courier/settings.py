from pydantic import Field

from services.runtime.settings import RuntimeSettings


class CourierSettings(RuntimeSettings):
    max_delivery_attempts: int = Field(default=3, ge=1, description="Attempts before a delivery is undeliverable")
    roster_refresh_s: float = Field(
        default=2.0, ge=0, description="How old the roster and per-courier loads used to choose a courier may be"
    )
