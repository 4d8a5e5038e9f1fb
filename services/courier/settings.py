from pydantic import Field

from services.runtime.settings import RuntimeSettings


class CourierSettings(RuntimeSettings):
    max_delivery_attempts: int = Field(default=3, ge=1, description="Attempts before a delivery is undeliverable")
