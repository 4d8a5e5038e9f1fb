"""The live board in a real browser: Debian's headless chromium, driven by Playwright, watches the
board while prescriptions go through the four service processes, and sees it change without a reload;
then checks that it fits a 1,280 px laptop and a phone without sideways scrolling.

`BOARD_SCREENSHOT=1` also saves the final board to docs/board.png (the README's picture).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from services.board.browser import CHROMIUM, VIEWPORT, board_page
from services.courier.domain import CourierProfile
from services.ops.devstack import BOARD, DevStack
from services.prescription.domain import FormularyEntry
from tests.support.scenario import System, prescription_message, scripted_couriers
from tests.support.stack import free_port

pytestmark = pytest.mark.e2e

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "board.png"
WAIT_MS = 60_000
PHONE = {"width": 390, "height": 844}
# What would make a reader scroll sideways or miss part of an id, measured in the page as laid out.
LAYOUT = """() => {
  const width = window.innerWidth;
  const describe = (node) => node.outerHTML.slice(0, 160);
  const all = [...document.querySelectorAll("body *")];
  const panels = [...document.querySelectorAll(".panel")].map((panel) => panel.getBoundingClientRect());
  return {
    width,
    scrollWidth: document.documentElement.scrollWidth,
    beyondViewport: all.filter((node) => node.getBoundingClientRect().right > width + 0.5).map(describe),
    clipped: [...document.querySelectorAll(".panel, th, td")]
      .filter((node) => node.scrollWidth > node.clientWidth + 1)
      .map(describe),
    brokenIds: [...document.querySelectorAll(".id")].filter((node) => node.getClientRects().length > 1).map(describe),
    panelLefts: [...new Set(panels.map((rect) => Math.round(rect.left)))],
  };
}"""


@pytest.fixture(scope="module")
def service_env() -> dict[str, str]:
    return {"PHARMACY_SWEEP_INTERVAL_S": "0.5"}  # the near-expiry alert shows up within a second


@pytest.fixture(scope="module")
def board_url(services: DevStack) -> Iterator[str]:
    url = services.start_board(port=free_port())
    try:
        yield url
    finally:
        services.stop(BOARD)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    return CHROMIUM


@pytest.fixture
def screenshot() -> Path | None:
    """Where to save the final board, if asked to (BOARD_SCREENSHOT=1)."""
    if os.environ.get("BOARD_SCREENSHOT") != "1":
        return None
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT


@pytest.fixture
async def page(board_url: str, chromium: Path, tmp_path: Path) -> AsyncIterator[Page]:
    async with board_page(board_url, tmp_path / "chromium-profile", chromium) as opened:
        yield opened


def formulary() -> list[FormularyEntry]:
    return [
        FormularyEntry(drug_code="MET500", name="Metformin 500 mg", max_quantity=200, max_days_supply=90),
        FormularyEntry(drug_code="AML5", name="Amlodipine 5 mg", max_quantity=200, max_days_supply=90),
    ]


async def test_the_board_follows_prescriptions_live(system: System, page: Page, screenshot: Path | None) -> None:
    await expect(page.locator("#connection")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)
    # A reload would lose this: at the end it proves every change came in over the open connection.
    await page.evaluate("window.notReloaded = true")

    today = date.today()
    await system.seed(
        formulary=formulary(),
        couriers=[CourierProfile(courier_id="C-AMINA", name="Amina"), CourierProfile(courier_id="C-BAYU", name="Bayu")],
        stock=[
            ("WH-NORTH", "MET500", 100, "MET-2028-A", today + timedelta(days=700)),
            ("WH-NORTH", "MET500", 40, "MET-SOON", today + timedelta(days=20)),  # too short for a 30-day therapy
            ("WH-NORTH", "AML5", 25, "AML-2027-B", today + timedelta(days=400)),
        ],
    )
    metformin = page.locator('tr.drug[data-warehouse="WH-NORTH"][data-drug="MET500"]')
    await expect(metformin.locator("td.available")).to_have_text("140", timeout=WAIT_MS)
    # Stock events carry codes only: the name comes from the formulary's announcement.
    await expect(metformin.locator(".name")).to_have_text("Metformin 500 mg", timeout=WAIT_MS)
    soon = page.locator('tr.lot[data-lot="MET-SOON"] [data-badge="soon"]')
    await expect(soon).to_be_visible(timeout=WAIT_MS)

    couriers = scripted_couriers(
        system.settings,
        {"RX-0001": ["deliver"], "RX-0003": ["hold-after-pickup"]},  # RX-0003 stays on the road
    )
    couriers.start()
    try:
        await system.publish(
            prescription_message("RX-0001", [("MET500", 30)]),
            prescription_message("RX-0002", [("MET500", 500)]),  # above the formulary's maximum
            prescription_message("RX-0003", [("AML5", 10)]),  # leaves 15 of AML5: low stock
            prescription_message("RX-0004", [("AML5", 90)]),  # no warehouse has 90
        )
        expected = {"RX-0001": "delivered", "RX-0002": "rejected", "RX-0003": "with_courier", "RX-0004": "out_of_stock"}
        for prescription_id, state in expected.items():
            row = page.locator(f'#rx-latest tr[data-prescription="{prescription_id}"]')
            await expect(row).to_have_attribute("data-state", state, timeout=WAIT_MS)
        for state in ("delivered", "rejected", "with_courier", "out_of_stock"):
            await expect(page.locator(f'.tile[data-state="{state}"] .count')).to_have_text("1")

        # First expiry, first out passes over the short-dated lot: 30 leave the long one.
        await expect(metformin.locator("td.available")).to_have_text("110", timeout=WAIT_MS)
        await expect(page.locator('tr.lot[data-lot="MET-2028-A"] td.available')).to_have_text("70")
        await expect(page.locator('tr.lot[data-lot="MET-SOON"] td.available')).to_have_text("40")
        aml = page.locator('tr.drug[data-warehouse="WH-NORTH"][data-drug="AML5"]')
        await expect(aml.locator("td.dispatched")).to_have_text("10", timeout=WAIT_MS)
        await expect(aml.locator('[data-badge="low"]')).to_be_visible(timeout=WAIT_MS)

        carrying = page.locator("#couriers tbody tr")
        await expect(carrying.filter(has_text="RX-0003")).to_have_count(1, timeout=WAIT_MS)
        delivered = page.locator("#couriers td.delivered")
        await expect(delivered.filter(has_text="1")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator('#alerts li[data-kind="low_stock"]')).to_have_count(1, timeout=WAIT_MS)

        assert await page.evaluate("window.notReloaded === true"), "the page must update without reloading"
        if screenshot:
            await page.wait_for_timeout(2000)  # let the change highlights fade
            await page.screenshot(path=str(screenshot), full_page=True)
    finally:
        await couriers.stop()


async def layout_at(page: Page, viewport: dict[str, int]) -> dict[str, Any]:
    await page.set_viewport_size(viewport)
    return await page.evaluate(LAYOUT)


async def test_the_board_fits_a_laptop_and_a_phone_without_sideways_scrolling(system: System, page: Page) -> None:
    await expect(page.locator("#connection")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)
    # Ids as long as the demo's: a township pharmacy's opening lot, a courier, a prescription.
    lot = f"L{date.today():%Y%m%d}-opening-PH-KARA-BULAK-LEV50"
    await system.seed(
        formulary=[
            FormularyEntry(drug_code="LEV50", name="Levothyroxine 50 mcg", max_quantity=200, max_days_supply=90)
        ],
        couriers=[CourierProfile(courier_id="C-DILNOZA", name="Dilnoza")],
        stock=[("PH-KARA-BULAK", "LEV50", 90, lot, date.today() + timedelta(days=730))],
    )
    couriers = scripted_couriers(system.settings, {"RX-2026-00050": ["deliver"]})
    couriers.start()
    try:
        await system.publish(
            prescription_message("RX-2026-00050", [("LEV50", 30)]),
            prescription_message("RX-2026-00051", [("LEV50", 900)]),  # rejected: a long reason code
        )
        row = page.locator('#rx-latest tr[data-prescription="RX-2026-00050"]')
        await expect(row).to_have_attribute("data-state", "delivered", timeout=WAIT_MS)
        rejected = page.locator('#rx-latest tr[data-prescription="RX-2026-00051"]')
        await expect(rejected).to_have_attribute("data-state", "rejected", timeout=WAIT_MS)
        await expect(page.locator(f'tr.lot[data-lot="{lot}"] td.lot-id')).to_have_text(lot, timeout=WAIT_MS)
    finally:
        await couriers.stop()

    for viewport in (VIEWPORT, {"width": 1400, "height": 900}, PHONE):
        layout = await layout_at(page, viewport)
        where = f"at {viewport['width']} px"
        assert layout["scrollWidth"] <= layout["width"], f"the page scrolls sideways {where}"
        assert layout["beyondViewport"] == [], f"wider than the viewport {where}"
        assert layout["clipped"] == [], f"content cut off {where}"
        assert layout["brokenIds"] == [], f"ids broken across lines {where}"
    assert len(layout["panelLefts"]) == 1, "on a phone the panels stand in one column"
    assert len((await layout_at(page, VIEWPORT))["panelLefts"]) == 2, "a laptop shows two columns"
