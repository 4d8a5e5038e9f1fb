from services.runtime.service import run_service

from .app import create_app
from .settings import PrescriptionSettings


def main() -> None:
    run_service("prescription", PrescriptionSettings(), create_app)


if __name__ == "__main__":
    main()
