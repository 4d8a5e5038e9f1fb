"""Open the board in Debian's headless chromium with Playwright: for the browser test and the README's
picture. A development aid (Playwright comes with the `test` extra); the board itself never imports it.

    python -m services.board.browser http://127.0.0.1:8000/ docs/board.png
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import typer
from playwright.async_api import Page, async_playwright

#: Debian's chromium package (`make browser`): Playwright's own browser downloads do not work here.
CHROMIUM = Path("/usr/bin/chromium")
# No GPU, no sandbox (containers), and nothing that calls out to the internet.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: The narrowest desktop the board is laid out for: the README's picture is taken at it.
VIEWPORT = {"width": 1280, "height": 800}


@asynccontextmanager
async def board_page(url: str, profile: Path, chromium: Path = CHROMIUM) -> AsyncIterator[Page]:
    """A page showing the board, in a chromium with a fresh profile under `profile`."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=str(chromium), args=list(CHROMIUM_ARGS), headless=True, viewport=VIEWPORT
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(url)
            yield page
        finally:
            await context.close()


async def _screenshot(url: str, path: Path, settle_s: float) -> None:
    with tempfile.TemporaryDirectory() as profile:
        async with board_page(url, Path(profile)) as page:
            await page.locator('#connection[data-connection="live"]').wait_for()
            await page.wait_for_timeout(settle_s * 1000)  # the first update, and the change highlights fading
            await page.screenshot(path=str(path), full_page=True)


def main(
    url: str = typer.Argument("http://127.0.0.1:8000/", help="The running board"),
    path: Path = typer.Argument(Path("docs/board.png"), help="Where to save the PNG"),
    settle_s: float = typer.Option(2.0, help="Seconds to wait after the page went live"),
) -> None:
    """Save a picture of the running board."""
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_screenshot(url, path, settle_s))
    typer.echo(f"saved {path}")


if __name__ == "__main__":
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    app.command()(main)
    app()
