"""What every command of the `pharmacy` tool shares: settings from the environment (or the dev
stack `make up` started), one console, and failures turned into one readable line."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure, PyMongoError
from rich.console import Console
from rich.text import Text

from services.runtime.mongo import client_for
from services.runtime.settings import RuntimeSettings

T = TypeVar("T")
console = Console()
#: Written by the dev stack at `make up` (services/ops/devstack.py `STACK_ENV`), in its home.
DEV_STACK_ENV = "stack.env"


def dev_stack_env() -> Path | None:
    """The file where a running dev stack (`make up`) recorded its broker and database, if any."""
    path = Path(os.environ.get("PHARMACY_DEV_HOME", ".devstack")) / DEV_STACK_ENV
    return path if path.is_file() else None


def settings_from_env() -> RuntimeSettings:
    """The environment's settings; what it leaves out, from the dev stack `make up` started (its
    ports may not be the defaults), else the defaults."""
    return RuntimeSettings(_env_file=dev_stack_env())  # type: ignore[call-arg]


async def with_database(use: Callable[[Any], Awaitable[T]]) -> T:
    """`use` on the database the settings name, with a client closed afterwards."""
    settings = settings_from_env()
    client = client_for(settings)
    try:
        return await use(client[settings.mongo_database])
    finally:
        client.close()


def run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def one_line(error: BaseException) -> str:
    """What went wrong, and what to do, in a line a person reads (the traceback: `--debug`)."""
    settings = settings_from_env()
    match error:
        case ConnectionFailure():
            # The hosts only: never the user or password the URL may carry.
            host = settings.mongo_url.get_secret_value().split("://", 1)[-1].rpartition("@")[2].split("/")[0]
            return f"the database at {host} does not answer: start the dev stack (`make up`) or set PHARMACY_MONGO_URL"
        case KafkaConnectionError() | TimeoutError():
            return (
                f"the broker at {settings.kafka_bootstrap_servers} does not answer: start the dev stack "
                "(`make up`) or set PHARMACY_KAFKA_BOOTSTRAP_SERVERS"
            )
        case KafkaError():
            return f"Kafka refused: {error}"
        case PyMongoError():
            return f"the database refused: {error}"
        case ValidationError():
            problems = error.errors()
            first = problems[0]
            where = ".".join(str(p) for p in first["loc"]) or "the input"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return f"not valid: {where}: {first['msg']}{more}"
        case json.JSONDecodeError():
            return f"not JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        case OSError():
            return str(error)
    return f"{type(error).__name__}: {error}"


def report_failure(error: BaseException) -> None:
    console.print(Text(one_line(error), style="red"))
    console.print(Text("(the whole story: run the command again with --debug)", style="dim"))


def say_answer(answer: object | None, *, waited_s: float, what: str) -> None:
    """What became of a person's message, as the service answered it (or that it has not yet)."""
    if answer is None:
        console.print(
            Text(
                f"{what} sent; no answer within {waited_s:g} s (the service may be behind): "
                "`pharmacy dlq list` shows refusals",
                style="yellow",
            )
        )
        return
    outcome, code, detail = (getattr(answer, name, None) for name in ("outcome", "code", "detail"))
    if outcome in ("applied", "accepted"):
        console.print(Text(f"{what}: {detail or outcome}", style="green"))
    else:
        console.print(Text(f"{what} REFUSED ({code}): {detail or ''}".rstrip(": "), style="bold red"))
        raise typer.Exit(1)
