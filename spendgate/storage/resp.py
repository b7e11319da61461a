"""The request path's Redis client: every process's commands pipelined on one connection.

Each request runs two scripts (admit and settle). Through redis-py's asyncio client each
call costs about 250 µs of CPU: a pool with an `asyncio.Condition`, command packing in
Python, and a Task per command for its timeout (docs/BENCHMARKS.md). This client sends the
commands of all concurrent requests down one connection, joined into one write per turn
of the event loop, and matches the replies in order, which is the order Redis answers a
connection's commands in. Packing and parsing are hiredis's (C). A stalled server is
caught by one timer per connection (nothing heard for 500 ms while commands wait), not
one per command.

It does what the request path needs and no more: commands, and scripts by SHA that load
themselves on NOSCRIPT. Everything else (admin writes, the ledger's streams, pub/sub) stays
on redis-py.

Errors: a refused or lost connection raises `ConnectionError`, an unanswered command
`TimeoutError` (both `OSError`, which `redis_errors()` turns into StorageUnavailable), an
error reply `ReplyError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

Arg = str | bytes | int
# A command of a pipeline: the key it works on (None for a command on no key), its words.
Command = tuple[str | None, Sequence[Arg]]

CONNECT_TIMEOUT = 0.1
REPLY_TIMEOUT = 0.5
SECOND_LOOK = 0.05


class ReplyError(Exception):
    """Redis answered with an error (a bug in a command or script, not an outage)."""


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class _Connection(asyncio.Protocol):
    """One connection: commands go out in order, replies resolve them in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout: float) -> None:
        self._loop = loop
        self._reply_timeout = reply_timeout
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        # Futures of the commands sent and not answered yet, in order.
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        # When the connection last showed life: a reply, or the command that found it idle.
        self._quiet_since = 0.0
        self._suspect = False
        self.broken = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes; they do implement them.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self._quiet_since = self._loop.time()
        self._suspect = False
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._break(ConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # an answer nobody asked for: the stream is out of step
                self._break(ConnectionError("redis sent an unexpected reply"))
                return
            future = waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(ConnectionError("redis closed the connection"))

    # -- commands -----------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; what is queued goes out in one write, as soon as
        the event loop has run the callbacks that are ready now."""
        if self.broken:
            raise ConnectionError("redis connection lost")
        future = self._loop.create_future()
        if not self._waiting:
            self._quiet_since = self._loop.time()
        self._waiting.append(future)
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._reply_timeout, self._check)
        return future

    def _flush(self) -> None:
        if self.broken or self._transport is None:
            return
        outgoing = self._outgoing
        self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
        outgoing.clear()

    def _check(self) -> None:
        """Commands waiting and nothing heard for the reply timeout: the server (or the
        path to it) stalled, and the connection is given up. Only on a second look: the
        first may come right after the event loop itself was busy for that long, before
        it read what arrived meanwhile (uvloop runs timers before it polls the sockets)."""
        self._watchdog = None
        if not self._waiting or self.broken:
            return
        overdue_at = self._quiet_since + self._reply_timeout
        if self._loop.time() < overdue_at:
            self._watchdog = self._loop.call_at(overdue_at, self._check)
        elif not self._suspect:
            self._suspect = True
            self._watchdog = self._loop.call_later(SECOND_LOOK, self._check)
        else:
            self._break(TimeoutError("redis did not answer in time"))

    def close(self) -> None:
        self._break(ConnectionError("redis connection closed"))

    def _break(self, exc: OSError) -> None:
        """Fail every unanswered command and close: what was sent may or may not have run,
        so the caller retries (the scripts are idempotent) or reports Redis unavailable."""
        self.broken = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outgoing.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()


class RedisCommands(ABC):
    """What the request path and the usage writer need of Redis, whatever the deployment:
    RespClient (one server), ClusterRespClient (resp_cluster.py), SentinelRespClient
    (resp_sentinel.py)."""

    @abstractmethod
    async def execute(self, *args: Arg, key: str | None = None) -> Any:
        """Run one command; `key` names the key it works on (None: it works on none)."""

    @abstractmethod
    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run commands in one round trip; each reply in order, a ReplyError for a command
        Redis refused. Not a transaction: each command runs on its own."""

    @abstractmethod
    async def connect(self) -> None:
        """Connect now rather than on the first command."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA, or EVAL once when the server does not have the script yet."""
        key = keys[0] if keys else None
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args, key=key)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args, key=key)


# Where to connect, asked at every (re)connect: (host, port), or ConnectionError.
AddressLookup = Callable[[], Awaitable[tuple[str, int]]]


class RespClient(RedisCommands):
    """A client for `url` (redis://, rediss:// or unix://, with user, password and db).
    With `address`, the host and port come from it at every (re)connect instead."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        reply_timeout: float = REPLY_TIMEOUT,
        address: AddressLookup | None = None,
    ) -> None:
        options = parse_url(url)
        self._address = address
        self._host: str = options.get("host", "localhost")
        self._port: int = options.get("port", 6379)
        self._path: str | None = options.get("path")
        # Made here, at start-up: it reads the system's CA certificates from disk.
        tls = options.get("connection_class") is SSLConnection
        self._tls = ssl.create_default_context() if tls else None
        self._setup: list[bytes] = []
        password, username = options.get("password"), options.get("username")
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._setup.append(_pack(auth))
        if options.get("db"):
            self._setup.append(_pack(("SELECT", options["db"])))
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def execute(self, *args: Arg, key: str | None = None) -> Any:
        """Run one command. `key` names the key it works on: on a cluster (see
        resp_cluster.py) it picks the node; here there is only one. A connection lost
        before the answer came is retried once on a new one (every command spendgate
        sends here is safe to repeat)."""
        packed = _pack(args)
        connection = self._connection
        if connection is None or connection.broken:
            connection = await self._connect()
        try:
            return await connection.send(packed)
        except TimeoutError:
            raise
        except ConnectionError:
            connection = await self._connect()
            return await connection.send(packed)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        connection = await self._connect()
        futures = [connection.send(_pack(tuple(args))) for _, args in commands]
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, OSError):  # the connection failed: no reply is trustworthy
                raise reply
        return replies

    async def connect(self) -> None:
        await self._connect()

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connect(self) -> _Connection:
        """The current connection, or a new one; concurrent callers share one attempt."""
        if self._connection is not None and not self._connection.broken:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._connection = attempt.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()

        def protocol() -> _Connection:
            return _Connection(loop, self._reply_timeout)

        if self._address is not None:
            self._host, self._port = await self._address()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    _, connection = await loop.create_unix_connection(protocol, self._path)
                else:
                    _, connection = await loop.create_connection(
                        protocol, self._host, self._port, ssl=self._tls
                    )
        except TimeoutError:
            raise ConnectionError("redis did not accept a connection in time") from None
        try:
            for command in self._setup:
                await connection.send(command)
        except ReplyError as exc:  # a wrong password or database: the operator's to fix
            connection.close()
            raise ConnectionError(f"redis refused the connection's set-up: {exc}") from None
        except BaseException:
            connection.close()
            raise
        return connection


def _pack(args: tuple[Arg, ...]) -> bytes:
    # hiredis's stub declares a one-element tuple; it takes any number of arguments.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed
