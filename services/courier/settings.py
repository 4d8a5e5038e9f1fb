from datetime import timedelta
from typing import Annotated

from pydantic import Field, SecretStr

from pharmacy_contracts.courier import FailureReason
from services.runtime.settings import RuntimeSettings

from .domain import DEFAULT_RETRY_LIMITS, Policy
from .round_settings import RoundSettings


class MissingDeliveryCodeKey(RuntimeError):
    pass


class CourierSettings(RuntimeSettings, RoundSettings):
    rounds: bool = Field(
        default=False,
        description=(
            "Deliveries go out in delivery rounds planned per depot (a van, several doors, in order) "
            "instead of one trip each to the nearest free courier"
        ),
    )
    rounds_cadence_s: float = Field(
        default=30 * 60, gt=0, description="A depot's waiting deliveries are planned into rounds at least this often"
    )
    rounds_min_deliveries: int = Field(
        default=6, ge=1, description="This many deliveries waiting at a depot are planned at once, cadence or not"
    )
    max_delivery_attempts: int = Field(
        default=3, ge=1, description="Failed attempts after which a delivery is undeliverable, whatever the reason"
    )
    retry_limits: dict[FailureReason, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: dict(DEFAULT_RETRY_LIMITS),
        description=(
            "Failed attempts allowed when the latest failure has this reason (JSON); "
            "a reason not listed allows max_delivery_attempts"
        ),
    )
    offer_accept_timeout_s: float = Field(
        default=15 * 60, gt=0, description="An offer not accepted within this goes to the next courier"
    )
    delivery_deadline_s: float = Field(
        default=24 * 3600, gt=0, description="On the road longer than this: the dispatcher is alerted"
    )
    courier_wait_deadline_s: float = Field(
        default=4 * 3600,
        gt=0,
        description=(
            "Waiting for a courier, or approved and waiting for the stock reservation, longer than this: "
            "the dispatcher is alerted"
        ),
    )
    max_wrong_codes: int = Field(
        default=5,
        ge=1,
        description="Wrong delivery codes after which an attempt takes no more codes and the dispatcher is alerted",
    )
    roster_refresh_s: float = Field(
        default=2.0, ge=0, description="How old the roster and per-courier loads used to choose a courier may be"
    )

    def policy(self) -> Policy:
        return Policy(
            max_attempts=self.max_delivery_attempts,
            retry_limits=dict(self.retry_limits),
            accept_timeout=timedelta(seconds=self.offer_accept_timeout_s),
            on_the_road_deadline=timedelta(seconds=self.delivery_deadline_s),
            courier_wait_deadline=timedelta(seconds=self.courier_wait_deadline_s),
            max_wrong_codes=self.max_wrong_codes,
        )

    def delivery_code_secret(self) -> bytes:
        """The key patients' delivery codes are checked with; the service does not start without it."""
        key: SecretStr | None = self.delivery_code_key
        if key is None or not key.get_secret_value():
            raise MissingDeliveryCodeKey(
                "PHARMACY_DELIVERY_CODE_KEY is not set: the courier service checks the code each patient "
                "reads out at the door against it, so it must be the same key the consultation service uses"
            )
        return key.get_secret_value().encode()
