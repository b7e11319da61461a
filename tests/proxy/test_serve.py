"""`spendgate serve` with nothing configured: embedded servers, a generated admin token."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp


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
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await process.wait()
    assert process.returncode == 0
