from pydantic import Field

from services.runtime.settings import RuntimeSettings


class BoardSettings(RuntimeSettings):
    """The board's settings (environment prefix `PHARMACY_`): `PHARMACY_BOARD_PORT`, `PHARMACY_BOARD_HOST`, ..."""

    board_host: str = Field(default="127.0.0.1", description="0.0.0.0 in a container")
    board_port: int = Field(default=8000, ge=1, le=65535)
    board_updates_per_second: float = Field(
        default=4.0, gt=0, description="At most this many updates a second go to each open page"
    )
    board_latest_prescriptions: int = Field(default=15, ge=1, le=200, description="Prescriptions listed by name")
