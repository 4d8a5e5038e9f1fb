"""What every command of the `pharmacy` tool shares: settings from the environment, one console,
and running a coroutine with failures turned into one readable line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.text import Text

from services.runtime.settings import RuntimeSettings

T = TypeVar("T")
console = Console()


def settings_from_env() -> RuntimeSettings:
    return RuntimeSettings()


def run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except TimeoutError as error:
        console.print(Text(f"the broker is slow: {error}", style="red"))
        raise typer.Exit(1) from None
    except KafkaError as error:
        console.print(Text(f"Kafka: {error!r}", style="red"))
        raise typer.Exit(1) from None
