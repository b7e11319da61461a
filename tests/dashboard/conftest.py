"""Fixtures of the dashboard tests: a real gateway (real Redis and Postgres) on a TCP port,
and the page in headless Chromium in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from tests.gateway_fixtures import Gateway

if TYPE_CHECKING:
    from tests.dashboard.browser import Dashboard


@pytest.fixture
async def dashboard(gateway: Gateway) -> AsyncIterator[Dashboard]:
    # Imported here: the module skips the tests when Playwright or Chromium is missing.
    from tests.dashboard.browser import open_dashboard

    async with open_dashboard(gateway) as dashboard:
        yield dashboard
