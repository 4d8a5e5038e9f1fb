from services.runtime.service import run_service

from .app import create_app
from .settings import ConsultationSettings


def main() -> None:
    run_service("consultation", ConsultationSettings(), create_app)


if __name__ == "__main__":
    main()
