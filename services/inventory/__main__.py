from services.runtime.service import run_service

from .app import create_app
from .settings import InventorySettings


def main() -> None:
    run_service("inventory", InventorySettings(), create_app)


if __name__ == "__main__":
    main()
