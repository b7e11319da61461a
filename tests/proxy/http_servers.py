"""Raw HTTP/1.1 servers on 127.0.0.1 for the HTTP client's tests: each connection is handed
to a handler that reads requests and writes whatever bytes the test wants, well-formed or
not, at the pace it wants, and can close or reset the connection."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from spendgate.proxy.http_client import Origin


@dataclass
class Request:
    """One request as the server read it."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.line.split(" ")[1]


@dataclass
class Peer:
    """One accepted connection, as the server sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Request] = field(default_factory=list)
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(self) -> Request | None:
        """The next request; None once the client has closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
            return None
        line, *lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
        headers = [(name, value.strip()) for name, _, value in (h.partition(":") for h in lines)]
        length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
        request = Request(line, headers, await self.reader.readexactly(length))
        self.requests.append(request)
        return request

    async def until_closed_by_client(self) -> None:
        """Read (and drop) whatever comes until the client closes the connection."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.closed_by_client.set()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def reset(self) -> None:
        """Drop the connection with a TCP reset instead of an orderly close."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """Hands each accepted connection to `handler`, and closes it when the handler returns."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peers: list[Peer] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def origin(self, path: str = "") -> Origin:
        return Origin.parse(self.url + path)

    @property
    def requests(self) -> list[Request]:
        return [request for peer in self.peers for request in peer.requests]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            await self._handler(peer)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):  # cancelled: by close(), below
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


def answer(body: bytes, *headers: str, status: str = "200 OK", version: str = "1.1") -> bytes:
    lines = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/{version} {status}\r\n{lines}\r\n".encode("latin-1") + body


def json_answer(body: bytes, *headers: str) -> bytes:
    return answer(body, "Content-Type: application/json", f"Content-Length: {len(body)}", *headers)


STREAM_HEAD = answer(b"", "Content-Type: text/event-stream", "Transfer-Encoding: chunked")
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def answering(data: bytes) -> Handler:
    """A handler that answers every request on the connection with `data`."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            peer.send(data)

    return handler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
