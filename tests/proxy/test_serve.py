"""`spendgate serve`: with nothing configured (embedded servers, a generated admin token),
and its ledger process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import asyncpg
import openai
import redis.asyncio as redis
from openai.types.chat import ChatCompletionMessageParam

from spendgate.config import Settings
from tests.gateway_fixtures import ledger
from tests.helpers import ADMIN_TOKEN, answering, serve_env

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_starts_embedded_servers_and_serves_the_admin_api(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
    env.update(
        SPENDGATE_DATA_DIR=str(tmp_path / "data"), SPENDGATE_PORT=str(port), SPENDGATE_WORKERS="1"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spendgate",
        "serve",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("listening on" in line for line in said):
                line = (await process.stderr.readline()).decode()
                assert line, "serve exited early: " + "".join(said)
                said.append(line)
        text = "".join(said)
        assert "embedded PostgreSQL" in text and "embedded Valkey" in text
        token = await asyncio.to_thread((tmp_path / "data" / "admin_token").read_text)
        token = token.strip()
        assert token in text  # printed once at start for the operator
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=headers) as http:
            for _ in range(50):
                try:
                    async with http.post("/admin/v1/projects", json={"name": "demo"}) as response:
                        assert response.status == 201
                        project = await response.json()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            async with http.post(
                f"/admin/v1/projects/{project['id']}/keys", json={"name": "k"}
            ) as response:
                assert response.status == 201
                assert (await response.json())["key"].startswith("sgk_")
    finally:
        await stopped(process)
    assert process.returncode == 0


async def stopped(process: asyncio.subprocess.Process) -> None:
    """SIGTERM unless it has exited, then wait for it (a drain takes seconds at most)."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        await process.wait()


def children_by_niceness(pid: int) -> dict[int, int]:
    """The direct children of `pid` with their niceness (proc(5): stat field 19)."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{child}/stat").read_text()
            found[int(child)] = int(stat[stat.rindex(")") + 2 :].split()[16])
    return found


async def test_the_ledger_process_writes_restarts_and_drains_after_the_workers(
    settings: Settings, db: asyncpg.Connection, raw_redis: redis.Redis
) -> None:
    """`serve` runs the usage writer in a niced process of its own: it writes what the
    worker settles, is replaced when it dies, and at SIGTERM drains only once the worker has
    finished its last request. (`raw_redis` deletes the streams and keys it made.)"""
    port = free_port()
    env = serve_env(settings, port, SPENDGATE_WORKERS="1", SPENDGATE_MOCK_LATENCY_MS="1500")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spendgate", "serve", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(base, headers=admin) as http:
            await answering(http, "/readyz")
            async with http.post("/admin/v1/projects", json={"name": "p"}) as created:
                project = await created.json()
            path = f"/admin/v1/projects/{project['id']}/keys"
            async with http.post(path, json={"name": "k"}) as created:
                key = await created.json()
        client = openai.AsyncOpenAI(api_key=key["key"], base_url=base + "/v1", max_retries=0)

        async def chat() -> str:
            answer = await client.chat.completions.with_raw_response.create(
                model="mock/echo-1", messages=HI
            )
            return answer.headers["x-request-id"]

        first = await asyncio.gather(chat(), chat())
        assert sorted(r["request_id"] for r in await ledger(db, key["id"], 2)) == sorted(first)

        nice = children_by_niceness(process.pid)
        assert sorted(nice.values()) == [0, 10]  # the worker, the ledger process
        (writer,) = [pid for pid, level in nice.items() if level == 10]
        os.kill(writer, signal.SIGKILL)
        async with asyncio.timeout(10):
            while writer in (nice := children_by_niceness(process.pid)) or 10 not in nice.values():
                await asyncio.sleep(0.05)
        second = await chat()  # written by the new ledger process
        rows = await ledger(db, key["id"], 3)
        assert sorted(r["request_id"] for r in rows) == sorted([*first, second])

        # SIGTERM while a request is in flight (the mock answers after 1.5 s): the worker
        # finishes and settles it, and only then is the ledger process told to drain.
        last = asyncio.create_task(chat())
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert (await last).startswith("req_")
        await client.close()
    finally:
        await stopped(process)
    assert process.returncode == 0
    rows = await db.fetch("SELECT request_id FROM usage_events WHERE key_id = $1", key["id"])
    assert sorted(r["request_id"] for r in rows) == sorted([*first, second, last.result()])
