"""Sending a request to its provider: one pooled HTTP client, or the in-process mock.

The client's exceptions are translated here, in one place, as httpx's transports do:
refused or lost before an answer -> UpstreamUnavailable (502); no answer within the
first-byte timeout -> UpstreamTimeout (504); a stream that breaks after it started ->
UpstreamCut, which the relay turns into a final error event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from spendgate.config import Settings
from spendgate.config.catalog import Provider
from spendgate.proxy.errors import UpstreamTimeout, UpstreamUnavailable
from spendgate.proxy.http_client import HttpClient, Origin
from spendgate.proxy.http_connection import HttpClientError, Response
from spendgate.proxy.mock_provider import MockProvider

MOCK = "mock"
# The request headers besides Host and Content-Length. `identity`: compressing a JSON
# answer costs the provider and us more CPU than it saves on the wire.
_HEADERS = b"Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
_JSON_HEADERS = _HEADERS + b"Accept: application/json\r\n"
_SSE_HEADERS = _HEADERS + b"Accept: text/event-stream\r\n"


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


def create_client(settings: Settings) -> HttpClient:
    """The one pooled client. The read timeout bounds the wait for the first byte and for
    each later chunk; the total one bounds a whole answer, streams included."""
    return HttpClient(
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_first_byte_timeout,
        total_timeout=settings.upstream_timeout,
    )


class Upstreams:
    def __init__(self, client: HttpClient, mock: MockProvider | None) -> None:
        self._client = client
        self._mock = mock
        self._origins: dict[str, Origin] = {}

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
        base_url = provider.base_url
        if base_url is None:
            return await self._send_mock(path, parsed)
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = Origin.parse(base_url)
        headers = _SSE_HEADERS if stream else _JSON_HEADERS
        if api_key:
            headers += _authorization(provider.name, api_key)
        try:
            response = await self._client.post(origin, path, headers, body)
        except TimeoutError as exc:
            raise UpstreamTimeout(provider.name) from exc
        except HttpClientError as exc:
            raise UpstreamUnavailable(provider.name) from exc
        content_type = response.headers.get("content-type", "application/json")
        if stream and response.status == 200 and content_type.startswith("text/event-stream"):
            return UpstreamReply(
                response.status, content_type, None, _chunks(response), response.release
            )
        try:
            data = await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(provider.name) from exc
        except HttpClientError as exc:
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


async def _chunks(response: Response) -> AsyncIterator[bytes]:
    try:
        async for data in response.chunks():
            yield data
    except (TimeoutError, HttpClientError) as exc:
        raise UpstreamCut(str(exc)) from exc
    finally:
        response.release()


@lru_cache(maxsize=1024)
def _authorization(provider: str, api_key: str) -> bytes:
    """The Authorization header line. A key with a line break would add headers of its
    own: such a key cannot be sent (and is never shown)."""
    if any(c in api_key for c in "\r\n\0"):
        raise UpstreamUnavailable(provider)
    try:
        return b"Authorization: Bearer %s\r\n" % api_key.encode("latin-1")
    except UnicodeEncodeError:
        raise UpstreamUnavailable(provider) from None
