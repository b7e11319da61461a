"""The reference of `make bench`: a bare aiohttp pass-through proxy, nothing else.

No authentication, no parsing, no accounting: POST /v1/chat/completions goes to the upstream
with one shared aiohttp.ClientSession, a JSON answer comes back whole, an SSE answer is
relayed chunk by chunk as it arrives. It runs on the same aiohttp server settings as
`spendgate serve --workers 1` (web.run_app, access log off, uvloop when installed, as
spendgate uses it). Its client is aiohttp's, as the issue that set the targets defines the
reference; spendgate calls providers with a leaner client of its own
(spendgate/proxy/http_client.py), which is part of what the benchmark compares.

    python bench/bare_proxy.py --port 8001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

try:
    import uvloop
except ImportError:  # not on Windows; spendgate then runs on the default loop too
    uvloop = None  # type: ignore[assignment]

SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    base = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=900, connect=10, sock_read=120)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
        app[SESSION] = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        try:
            yield
        finally:
            await app[SESSION].close()

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            "Content-Type": request.headers.get("Content-Type", "application/json"),
            "Accept": request.headers.get("Accept", "*/*"),
        }
        upstream = await app[SESSION].post(
            base + "/v1/chat/completions", data=body, headers=headers
        )
        try:
            content_type = upstream.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                data = await upstream.read()
                return web.Response(
                    status=upstream.status, body=data, headers={"Content-Type": content_type}
                )
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": content_type, "Cache-Control": "no-cache"},
            )
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionError:  # the client left mid-stream (wrk stopping): stop too
                pass
            return response
        finally:
            upstream.release()

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--upstream", default="http://127.0.0.1:9000")
    args = parser.parse_args()
    print(f"bench bare proxy: listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handle_signals=True,
        loop=asyncio.new_event_loop() if uvloop is None else uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
