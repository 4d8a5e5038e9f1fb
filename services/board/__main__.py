"""`python -m services.board`: the live board on PHARMACY_BOARD_HOST:PHARMACY_BOARD_PORT."""

import uvicorn

from services.runtime.logging import configure_logging

from .app import create_app
from .settings import BoardSettings


def main() -> None:
    settings = BoardSettings()
    configure_logging("board", settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.board_host,
        port=settings.board_port,
        log_config=None,  # uvicorn's loggers go through the JSON pipeline configure_logging set up
        access_log=False,  # every page poll is not a decision worth a log line
    )


if __name__ == "__main__":
    main()
