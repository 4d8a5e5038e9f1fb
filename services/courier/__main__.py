from services.runtime.service import run_service

from .app import create_app
from .settings import CourierSettings


def main() -> None:
    run_service("courier", CourierSettings(), create_app)


if __name__ == "__main__":
    main()
