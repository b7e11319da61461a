"""A client that hangs up while still sending its body: an everyday network event, not an
internal error (DESIGN.md: unknown exceptions become a 500 "logged once" -- this is no
unknown exception), and it costs nothing."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web

from spendgate.config import Settings
from spendgate.proxy.app import create_app
from tests.faults.conftest import spend_state
from tests.helpers import ADMIN_TOKEN, FakeClock


async def test_a_client_hanging_up_mid_body_is_no_internal_error(
    settings: Settings,
    clock: FakeClock,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As `spendgate serve` runs: a handler is not cancelled when its client leaves, so
    # reading the rest of the body is what finds the connection gone.
    runner = web.AppRunner(create_app(settings, clock=clock), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=admin) as http:
            async with http.post("/admin/v1/projects", json={"name": "p"}) as created:
                project = await created.json()
            async with http.post(
                f"/admin/v1/projects/{project['id']}/keys", json={"name": "k"}
            ) as created:
                key = await created.json()

        caplog.set_level(logging.INFO)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + key["key"].encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"model": "mock/echo-1", "messages": [{"role": "user", "content": "hi'
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        def request_logged() -> bool:
            return any(r.name == "spendgate.access" for r in caplog.records)

        async with asyncio.timeout(5):
            while not request_logged():
                await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()

    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("spendgate") and r.levelno >= logging.ERROR
    ]
    access = [r for r in caplog.records if r.name == "spendgate.access"]
    # Counted as a server error, it would feed 5xx dashboards and alerts.
    outcomes = [(getattr(r, "status", None), getattr(r, "outcome", None)) for r in access]
    assert errors == [] and outcomes[0][0] != 500, (errors, outcomes)
    state = await spend_state(raw_redis, redis_prefix, key["id"])
    assert (state.used, state.reserved, state.reservations) == (0, 0, {})
