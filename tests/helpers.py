"""Helpers shared by the tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

AdminClient = TestClient[web.Request, web.Application]
ADMIN_TOKEN = "test-admin-token-0123456789"


class FakeClock:
    """A clock tests move by hand, so windows pass without sleeping."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


async def call(
    client: AdminClient, method: str, path: str, json: Any = None, status: int = 200
) -> Any:
    """One admin call; asserts the status and returns the decoded body (None for 204)."""
    response = await client.request(method, "/admin/v1" + path, json=json)
    text = await response.text()
    assert response.status == status, text
    return None if response.status == 204 else await response.json()
