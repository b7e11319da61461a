"""Sending a request to its provider: one pooled HTTP client, or the in-process mock.

aiohttp's exceptions are translated here, in one place, as httpx's transports do:
refused or lost before an answer -> UpstreamUnavailable (502); no answer within the
first-byte timeout -> UpstreamTimeout (504); a stream that breaks after it started ->
UpstreamCut, which the relay turns into a final error event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from spendgate.config import Settings
from spendgate.config.catalog import Provider
from spendgate.proxy.errors import UpstreamTimeout, UpstreamUnavailable
from spendgate.proxy.mock_provider import MockProvider

MOCK = "mock"


class UpstreamCut(Exception):
    """A streamed answer broke off after it had started."""


@dataclass(slots=True)
class UpstreamReply:
    status: int
    content_type: str
    body: bytes | None  # a whole answer
    chunks: AsyncIterator[bytes] | None  # a streamed answer, as the bytes arrive
    release: Callable[[], None]

    @property
    def streaming(self) -> bool:
        return self.chunks is not None


def _nothing() -> None:
    return None


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The one pooled client. `sock_read` bounds the wait for the first byte and for each
    later chunk; `total` bounds a whole answer, streams included."""
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout,
        connect=settings.upstream_connect_timeout,
        sock_read=settings.upstream_first_byte_timeout,
    )
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )


class Upstreams:
    def __init__(self, session: aiohttp.ClientSession, mock: MockProvider | None) -> None:
        self._session = session
        self._mock = mock

    async def send(
        self,
        provider: Provider,
        path: str,
        body: bytes,
        parsed: Mapping[str, Any],
        api_key: str | None,
        stream: bool,
    ) -> UpstreamReply:
        """POST `body` to the provider's `path` (e.g. "/chat/completions"). Only the
        provider's credential goes upstream, never the client's."""
        if provider.base_url is None:
            return await self._send_mock(path, parsed)
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        url = provider.base_url.rstrip("/") + path
        try:
            response = await self._session.post(url, data=body, headers=headers)
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            raise UpstreamTimeout(provider.name) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(provider.name) from exc
        content_type = response.headers.get("Content-Type", "application/json")
        if stream and response.status == 200 and content_type.startswith("text/event-stream"):
            return UpstreamReply(
                response.status, content_type, None, _chunks(response), response.release
            )
        try:
            data = await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(provider.name) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(provider.name) from exc
        finally:
            response.release()
        return UpstreamReply(response.status, content_type, data, None, _nothing)

    async def _send_mock(self, path: str, parsed: Mapping[str, Any]) -> UpstreamReply:
        if self._mock is None:
            raise UpstreamUnavailable(MOCK)
        reply = await self._mock.handle(path, parsed)
        content_type = reply.headers.get("Content-Type", "application/json")
        return UpstreamReply(reply.status, content_type, reply.body, reply.chunks, _nothing)


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for data in response.content.iter_any():
            yield data
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamCut(str(exc)) from exc
    finally:
        response.release()
