"""One HTTP/1.1 connection to a provider, and the answer it carries (http_client.py pools
the connections).

The connection is an asyncio protocol; httptools (llhttp) parses the answer straight into
one Response: status, headers (names lower-cased), and the body as it arrives, whether it
has a Content-Length, is chunked, or ends when the server closes. A gzip or deflate answer
is decoded. One timer per answer keeps the timeout between reads (the first byte, then
each chunk) and the one for the whole answer. A streamed answer read slower than it
arrives pauses the socket past MAX_BUFFERED bytes; `read()`, which wants it whole, never
pauses it. An answer not read to its end closes its connection at release().

Errors: HttpClientError when the call fails (lost, malformed), TimeoutError when a
timeout runs out.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, cast

import httptools

MAX_BUFFERED = 256 * 1024  # bytes of a streamed answer held before the socket pauses


class HttpClientError(Exception):
    """The call failed: refused, lost, or answered with something that is not HTTP."""


class Response:
    """One answer, filled in by its connection as bytes arrive."""

    __slots__ = (
        "status",
        "headers",
        "_connection",
        "_loop",
        "_parts",
        "_buffered",
        "_ready",
        "_waiter",
        "_done",
        "_error",
        "_keep_alive",
        "_decoder",
        "_paused",
        "_last_read",
        "_deadline",
        "_read_timeout",
        "_timer",
        "_released",
        "_whole",
    )

    def __init__(self, connection: Connection, read_timeout: float, total_timeout: float) -> None:
        loop = connection.loop
        now = loop.time()
        self.status = 0
        self.headers: dict[str, str] = {}
        self._connection = connection
        self._loop = loop
        self._parts: deque[bytes] = deque()
        self._buffered = 0
        self._ready: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._keep_alive = False
        self._decoder: Any = None  # a zlib decompressobj when the answer is compressed
        self._paused = False
        self._last_read = now
        self._deadline = now + total_timeout
        self._read_timeout = read_timeout
        self._timer: asyncio.TimerHandle | None = loop.call_at(
            min(now + read_timeout, self._deadline), self._check_time
        )
        self._released = False
        self._whole = False  # read() wants the whole body: never paused

    # -- reading ---------------------------------------------------------------------

    async def started(self) -> None:
        """Wait for the status line and headers."""
        await self._ready

    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True
        if self._paused:
            self._paused = False
            self._connection.resume()
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = b"".join(self._parts)
        self._parts.clear()
        return self._decode(body, final=True)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives: what is already here, then the error if it broke off."""
        while True:
            if self._parts:
                data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
                self._parts.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    self._connection.resume()
                data = self._decode(data, final=False)
                if data:
                    yield data
                continue
            if self._done:
                if tail := self._decode(b"", final=True):
                    yield tail
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    def release(self) -> None:
        """Hand the connection back: to the pool when the answer was read to its end and
        the server keeps the connection open, else closed."""
        if self._released:
            return
        self._released = True
        self._stop_timer()
        if self._done and self._keep_alive and self._error is None:
            self._connection.finished()
        else:
            self._connection.close()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _decode(self, data: bytes, final: bool) -> bytes:
        if self._decoder is None:
            return data
        try:
            out: bytes = self._decoder.decompress(data)
            if final:
                out += self._decoder.flush()
        except zlib.error as exc:
            raise HttpClientError(f"the compressed answer is corrupt: {exc}") from None
        if final and not self._decoder.eof:
            raise HttpClientError("the compressed answer is cut short")
        return out

    # -- filled in by the connection ---------------------------------------------------

    def _headers_done(self, status: int) -> None:
        self.status = status
        coding = self.headers.get("content-encoding", "identity").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, detected
        elif coding not in ("identity", ""):
            self._fail(HttpClientError(f"unsupported content encoding {coding!r}"))
            self._connection.close()
            return
        if not self._ready.done():
            self._ready.set_result(None)

    def _arrived(self) -> None:
        """Body bytes came (once a read, however many chunks it held)."""
        if self._buffered > MAX_BUFFERED and not self._paused and not self._whole:
            self._paused = True
            self._connection.pause()
        self._wake()

    def _complete(self, keep_alive: bool) -> None:
        if self._error is not None:
            return
        self._done = True
        self._keep_alive = keep_alive
        self._stop_timer()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        self._stop_timer()
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: a caller that left must not log it
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_time(self) -> None:
        self._timer = None
        if self._done or self._error is not None:
            return
        now = self._loop.time()
        if now >= self._deadline:
            self._timed_out()
            return
        if self._paused:  # we are the slow side, not the server
            self._last_read = now
        due = self._last_read + self._read_timeout
        if now >= due:
            self._timed_out()
            return
        self._timer = self._loop.call_at(min(due, self._deadline), self._check_time)

    def _timed_out(self) -> None:
        self._fail(TimeoutError("the provider did not answer in time"))
        self._connection.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time."""

    def __init__(self, pool: deque[Connection], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.lost = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._length_known = False  # Content-Length or chunked: else the body ends at EOF
        self._interim = False  # a 1xx answer before the final one

    # -- the request side ------------------------------------------------------------

    def send(self, data: bytes, read_timeout: float, total_timeout: float) -> Response:
        assert self.transport is not None and self.response is None
        response = Response(self, read_timeout, total_timeout)
        self.response = response
        self._length_known = False
        self.transport.write(data)
        return response

    def finished(self) -> None:
        self.response = None
        if self.lost:
            return
        self.idle_since = self.loop.time()
        self.pool.append(self)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._done:  # bytes nobody asked for: not to be trusted
            self.close()
            return
        response._last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(HttpClientError(f"malformed answer: {exc}"))
            self.close()
            return
        if response._parts:
            response._arrived()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self.response
        if response is None or response._done:
            return
        if exc is None and response.status and not self._length_known and response._error is None:
            response._complete(keep_alive=False)  # a body delimited by the close
            return
        response._fail(HttpClientError(f"the connection was lost: {exc or 'closed'}"))

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        key = name.decode("latin-1").lower()
        if key == "content-length" or (key == "transfer-encoding" and b"chunked" in value):
            self._length_known = True
        self.response.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True
            self.response.headers.clear()
            self._length_known = False
            return
        self.response._headers_done(status)

    def on_body(self, body: bytes) -> None:  # for each chunk of a chunked body: kept lean
        response = self.response
        assert response is not None
        if response._error is None:
            response._parts.append(body)
            response._buffered += len(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        if self._interim:
            self._interim = False
            return
        self.response._complete(self._parser.should_keep_alive())
