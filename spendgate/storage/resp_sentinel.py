"""The request path's client on a master that Redis Sentinel names.

Sentinel is asked for the master's address at every (re)connect, so a failover is followed
by the next connection. Old connections end by themselves: when Sentinel demotes a master
it makes it close its clients (CLIENT KILL TYPE normal), and a master that died fails its
connections. Should a command still reach a demoted master, its READONLY answer drops the
connection and the command is sent once more, to the master Sentinel names then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from spendgate.storage.resp import (
    CONNECT_TIMEOUT,
    REPLY_TIMEOUT,
    AddressLookup,
    Arg,
    Command,
    ReplyError,
    RespClient,
)


class SentinelRespClient(RespClient):
    """A RespClient whose address is the master `master()` returns at each (re)connect;
    `url` gives the user, password, database and TLS of the master."""

    def __init__(
        self,
        url: str,
        master: AddressLookup,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        async def address() -> tuple[str, int]:
            try:
                return await master()
            except (RedisError, OSError) as exc:
                raise ConnectionError(f"sentinel named no master: {exc}") from exc

        super().__init__(
            url, connect_timeout=connect_timeout, reply_timeout=reply_timeout, address=address
        )

    async def execute(self, *args: Arg, key: str | None = None) -> Any:
        try:
            return await super().execute(*args, key=key)
        except ReplyError as exc:
            if not _demoted(exc):
                raise
        await self.aclose()
        return await super().execute(*args, key=key)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        replies = await super().pipeline(commands)
        if not any(_demoted(reply) for reply in replies):
            return replies
        await self.aclose()
        return await super().pipeline(commands)


def _demoted(reply: object) -> bool:
    """A write refused because the server is a replica now: the master moved."""
    return isinstance(reply, ReplyError) and str(reply).startswith("READONLY")
