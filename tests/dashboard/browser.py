"""The API Keys page in headless Chromium, driven by Playwright.

Importing this module skips the importing test module when Playwright or the system's
Chromium is missing. Nothing is downloaded: Playwright drives /usr/bin/chromium (Debian's
`chromium` package), never a browser build of its own.

Each test launches its own browser: Playwright's async objects belong to the event loop
that made them, and each test has its own loop, since the gateway fixtures are per test.
A launch costs about half a second.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.gateway_fixtures import Gateway
from tests.helpers import ADMIN_TOKEN

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"  # git ignores it

try:
    from playwright.async_api import (
        ConsoleMessage,
        Locator,
        Page,
        Request,
        async_playwright,
        expect,
    )
except ImportError:
    pytest.skip(
        "the dashboard tests need the playwright package: pip install -e '.[test]'",
        allow_module_level=True,
    )
if not CHROMIUM.exists():
    pytest.skip(
        f"the dashboard tests need Chromium at {CHROMIUM}: apt-get install chromium",
        allow_module_level=True,
    )

__all__ = ["Dashboard", "Locator", "expect", "open_dashboard"]

# Chromium logs every non-2xx fetch; the page shows those errors itself, so they are no fault.
_HTTP_STATUS_NOTE = re.compile(r"^Failed to load resource: the server responded with a status")


class Dashboard:
    """The page in one browser tab, in front of one gateway."""

    def __init__(self, page: Page, gateway: Gateway) -> None:
        self.page = page
        self.gateway = gateway
        self.url = str(gateway.admin.make_url("/dashboard/"))
        self.faults: list[str] = []  # uncaught exceptions, CSP and console errors
        self.requested: list[str] = []  # every URL the page asked for

    def watch(self) -> None:
        self.page.on("pageerror", lambda error: self.faults.append(f"uncaught: {error}"))
        self.page.on("console", self._console)
        self.page.on("request", self._request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not _HTTP_STATUS_NOTE.match(message.text):
            self.faults.append(f"console: {message.text}")

    def _request(self, request: Request) -> None:
        self.requested.append(request.url)

    async def open(self, project_id: str | None = None, token: str = ADMIN_TOKEN) -> None:
        """Load the page (on `project_id`, if given) and sign in."""
        await self.page.goto(self.url + (f"#{project_id}" if project_id else ""))
        await self.sign_in(token)
        await expect(self.page.get_by_role("heading", name="API Keys", level=1)).to_be_visible()

    async def sign_in(self, token: str) -> None:
        await self.page.get_by_label("Admin token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()

    def row(self, name: str) -> Locator:
        """The key list's row of the key named `name`."""
        header = self.page.get_by_role("rowheader", name=name, exact=True)
        return self.page.locator("#keys-body tr").filter(has=header)

    def cell(self, name: str, column: str) -> Locator:
        return self.row(name).locator(f'[data-label="{column}"]')

    def dialog(self, title: str) -> Locator:
        return self.page.get_by_role("dialog", name=title)

    async def act(self, key_name: str, action: str) -> None:
        """Click a row action: "Update limits", "Disable", "IAM rules", "Usage details"..."""
        await self.row(key_name).get_by_role("button", name=action).click()

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)

    async def session_storage(self) -> dict[str, str]:
        return dict(await self.page.evaluate("() => ({...sessionStorage})"))

    async def local_storage(self) -> dict[str, str]:
        return dict(await self.page.evaluate("() => ({...localStorage})"))


@asynccontextmanager
async def open_dashboard(
    gateway: Gateway, width: int = 1280, height: int = 900
) -> AsyncIterator[Dashboard]:
    """A fresh browser on the gateway's dashboard (not yet loaded). On the way out, any
    uncaught script error, CSP violation or console error fails the test."""
    SCREENSHOTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = await browser.new_context(
                viewport={"width": width, "height": height},
                permissions=["clipboard-read", "clipboard-write"],
            )
            dashboard = Dashboard(await context.new_page(), gateway)
            dashboard.watch()
            yield dashboard
            assert dashboard.faults == []
        finally:
            await browser.close()
