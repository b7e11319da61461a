"""A pooled HTTP/1.1 client for provider calls, on an asyncio protocol and httptools.

Every request through the gateway makes one provider call, so this client's CPU is on
every request's bill. aiohttp's client builds a ClientRequest, a ClientResponse, a
StreamReader, several timer handles and multidicts per call; this one writes the request
in one `transport.write` and parses the answer with llhttp (httptools) straight into one
object (http_connection.py; docs/BENCHMARKS.md has the figures).

What it does: POST a body to an origin; keep-alive connections pooled per origin (idle
ones closed after KEEPALIVE seconds); TLS with certificate checks and SNI; a timeout to
connect, and those of the answer (http_connection.py). What it does not: redirects,
proxies, cookies, HTTP/2; provider APIs need none of them.

Errors: HttpClientError when the call fails (refused, lost, malformed), TimeoutError when
a timeout runs out.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from spendgate.proxy.http_connection import Connection, HttpClientError, Response

KEEPALIVE = 15.0  # seconds an idle connection is kept; servers drop theirs later than this


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a base URL's requests go, and the bytes every request to it starts with."""

    host: str
    port: int
    tls: bool
    path: str  # the base URL's path, e.g. "/v1", that request paths are appended to
    host_header: bytes

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            shown = f"{shown}:{port}"
        return cls(host, port, tls, parts.path.rstrip("/"), shown.encode("idna"))


class HttpClient:
    """Connections pooled per origin; `post` sends, the Response reads."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._ssl = ssl_context
        self._pools: dict[Origin, deque[Connection]] = {}
        self._closed = False

    async def post(self, origin: Origin, path: str, headers: bytes, body: bytes) -> Response:
        """Send `body` to `origin`'s path + `path` with `headers` (`Name: value` lines, each
        ended by CRLF; the caller vouches for them) and wait for the answer's status and
        headers. The caller reads the Response, then calls release()."""
        connection = await self._acquire(origin)
        data = b"POST %s%s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
            origin.path.encode("latin-1"),
            path.encode("latin-1"),
            origin.host_header,
            headers,
            len(body),
            body,
        )
        response = connection.send(data, self._read_timeout, self._total_timeout)
        try:
            await response.started()
        except BaseException:
            response.release()
            raise
        return response

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            while pool:
                pool.pop().close()

    async def _acquire(self, origin: Origin) -> Connection:
        if self._closed:
            raise HttpClientError("the client is closed")
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = deque()
        if pool:
            oldest_kept = asyncio.get_running_loop().time() - KEEPALIVE
            while pool:
                connection = pool.pop()  # the most recently used: the likeliest alive
                if not connection.lost and connection.idle_since >= oldest_kept:
                    return connection
                connection.close()
        return await self._connect(origin, pool)

    async def _connect(self, origin: Origin, pool: deque[Connection]) -> Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            context = self._ssl or _default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(pool, loop),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise HttpClientError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return connection


_CONTEXT: ssl.SSLContext | None = None


def _default_context() -> ssl.SSLContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = ssl.create_default_context()
    return _CONTEXT
