"""Courier service: turns reserved prescriptions into deliveries, dispatches couriers, follows their reports."""

from services.runtime.service import run_service

from .app import create_app
from .settings import CourierSettings, MissingDeliveryCodeKey


def main() -> None:
    settings = CourierSettings()
    try:
        settings.delivery_code_secret()
    except MissingDeliveryCodeKey as missing:
        raise SystemExit(f"courier service not started: {missing}") from None
    run_service("courier", settings, create_app)


if __name__ == "__main__":
    main()
