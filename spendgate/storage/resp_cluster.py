"""The request path's client on a Redis Cluster: one RespClient per master, each command sent
to the master that serves its key's hash slot.

The slot map comes from CLUSTER SLOTS, asked of any node that answers: the known nodes
first, then the seed URLs. Every command names its key (`key=`, or the first element of a
pipeline's tuples), so it is routed without a redirection. When the cluster moves:

- MOVED (a slot has a new master: resharding or failover): the command goes there, and the
  whole map is read again in the background;
- ASK (a slot half-way through a migration): ASKING and the command go to the node named,
  on one connection; the map is unchanged;
- TRYAGAIN (a script's keys are split by a migration in flight): tried again shortly;
- a node lost: the map is read again, and the command retried once if its slot now has
  another master;
- CLUSTERDOWN, a slot no node serves, no node answering: `ClusterUnavailable`, a
  `ConnectionError`, which `redis_errors()` turns into StorageUnavailable (503) like any
  lost Redis.

A command follows at most MAX_TRIES hops. Pipelines are split by node, sent to every node at
once, and their replies put back in the caller's order. Scripts: `run()` (RedisCommands')
sends EVALSHA to the key's node and EVAL when that node does not have the script yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from spendgate.storage.resp import (
    CONNECT_TIMEOUT,
    REPLY_TIMEOUT,
    Arg,
    Command,
    RedisCommands,
    ReplyError,
    RespClient,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]

MAX_TRIES = 3
TRYAGAIN_DELAY = 0.02
# A map read after an error waits this long after the previous one, so a node that stays
# down does not cost every request a CLUSTER SLOTS.
REFRESH_INTERVAL = 0.1
_REDIRECTIONS = ("MOVED", "ASK", "TRYAGAIN")


class ClusterUnavailable(ConnectionError):
    """The cluster cannot serve the command now: CLUSTERDOWN, a slot no node serves, a
    slot still moving after MAX_TRIES hops, or no node answering."""


class ClusterRespClient(RedisCommands):
    """The request path's commands on a Redis Cluster reached through the seed `urls`
    (user, password and TLS of the first URL are every node's). It holds no connection of
    its own: each master's commands go through a RespClient of that master."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        if not urls:
            raise ValueError("a cluster needs at least one seed URL")
        self._template = urlsplit(urls[0])
        self._seeds = [_address(urlsplit(url)) for url in urls]
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._nodes: dict[Address, RespClient] = {}
        self._owners: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._masters: list[Address] = []
        self._known: list[Address] = []  # masters and replicas of the last map read
        self._suspects: set[Address] = set()  # nodes that failed since the last map read
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._failure: str | None = None  # why the last map read failed, if it did

    # -- RedisCommands -----------------------------------------------------------

    async def execute(self, *args: Arg, key: str | None = None) -> Any:
        """Run one command on the master of `key`'s slot (any master when None)."""
        return await self._execute(args, key, await self._owner(key))

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run commands in one round trip per master, all masters at once; each reply in
        the caller's order, a ReplyError for a command Redis refused. Commands redirected
        (MOVED, ASK, TRYAGAIN) are followed one by one. A node lost raises."""
        if not commands:
            return []
        if not self._masters:
            await self._refresh()
        groups: dict[Address, list[int]] = {}
        for index, (key, _) in enumerate(commands):
            groups.setdefault(self._owner_now(key), []).append(index)
        replies: list[Any] = [None] * len(commands)

        async def send(address: Address, indexes: list[int]) -> None:
            try:
                answers = await self._node(address).pipeline([commands[i] for i in indexes])
            except OSError:
                self._lost(address)
                raise
            for index, answer in zip(indexes, answers, strict=True):
                replies[index] = answer

        sent = await asyncio.gather(
            *(send(address, indexes) for address, indexes in groups.items()),
            return_exceptions=True,
        )
        for outcome in sent:
            if isinstance(outcome, BaseException):
                raise outcome
        redirected = [
            index
            for index, reply in enumerate(replies)
            if isinstance(reply, ReplyError) and str(reply).startswith(_REDIRECTIONS)
        ]
        if redirected:
            followed = await asyncio.gather(
                *(self._follow(commands[i], replies[i]) for i in redirected),
                return_exceptions=True,
            )
            for index, reply in zip(redirected, followed, strict=True):
                if isinstance(reply, BaseException) and not isinstance(reply, ReplyError):
                    raise reply
                replies[index] = reply
        return replies

    async def connect(self) -> None:
        """Read the slot map and connect to every master now."""
        await self._refresh()
        await asyncio.gather(*(self._node(address).connect() for address in self._masters))

    async def aclose(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        task, self._refreshing = self._refreshing, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.aclose()

    # -- routing ----------------------------------------------------------------------------

    async def _owner(self, key: str | None) -> Address:
        if not self._masters:
            await self._refresh()
        return self._owner_now(key)

    def _owner_now(self, key: str | None) -> Address:
        """The master serving `key`'s slot in the map as it is; any master for None."""
        if key is None:
            return self._masters[0]
        slot = key_slot(key.encode())
        owner = self._owners[slot]
        if owner is None:
            self._refresh_soon()
            raise ClusterUnavailable(f"no node of the cluster serves slot {slot}")
        return owner

    def _node(self, address: Address) -> RespClient:
        """The client of a node, made on first use. Kept until aclose(), even once the
        node has left the map: a command may still be on its way there."""
        node = self._nodes.get(address)
        if node is None:
            node = RespClient(
                _node_url(self._template, address),
                connect_timeout=self._connect_timeout,
                reply_timeout=self._reply_timeout,
            )
            self._nodes[address] = node
        return node

    async def _execute(
        self, args: Sequence[Arg], key: str | None, address: Address, asking: bool = False
    ) -> Any:
        for _ in range(MAX_TRIES):
            node = self._node(address)
            try:
                if not asking:
                    return await node.execute(*args, key=key)
                # ASKING lets the next command of the same connection use the importing
                # slot; a pipeline sends both, in order, on one connection.
                _, reply = await node.pipeline([(None, ("ASKING",)), (key, args)])
                if isinstance(reply, ReplyError):
                    raise reply
                return reply
            except ReplyError as exc:
                address, asking = await self._next_hop(exc, key, address)
            except TimeoutError:
                self._lost(address)
                raise
            except ConnectionError:
                # The node is gone (its client already tried a new connection). After a
                # failover its slots have another master: retry there, once.
                self._lost(address)
                owner = await self._owner_after_loss(key)
                if owner is None or owner == address:
                    raise
                address, asking = owner, False
        raise ClusterUnavailable(f"the slot of {key!r} kept moving ({MAX_TRIES} tries)")

    async def _follow(self, command: Command, reply: ReplyError) -> Any:
        key, args = command
        address, asking = await self._next_hop(reply, key, self._owner_now(key))
        return await self._execute(args, key, address, asking)

    async def _next_hop(
        self, error: ReplyError, key: str | None, address: Address
    ) -> tuple[Address, bool]:
        """Where to send a command Redis answered `error` to, and whether with ASKING;
        raises what is not a redirection."""
        kind, _, rest = str(error).partition(" ")
        if kind in ("MOVED", "ASK"):
            slot_text, _, target = rest.partition(" ")
            host, _, port = target.rpartition(":")
            destination = (host or address[0], int(port))
            if kind == "ASK":
                return destination, True
            self._owners[int(slot_text)] = destination
            self._refresh_soon()
            return destination, False
        if kind == "TRYAGAIN":
            await asyncio.sleep(TRYAGAIN_DELAY)
            return self._owner_now(key), False
        if kind == "CLUSTERDOWN":
            raise ClusterUnavailable(str(error)) from error
        raise error

    # -- the slot map -----------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Read the map now; concurrent callers share one read. Right after a failed read
        its error is raised again, without asking every node once more."""
        task = self._refreshing
        if task is None:
            since = asyncio.get_running_loop().time() - self._refreshed_at
            if self._failure is not None and since < REFRESH_INTERVAL:
                raise ClusterUnavailable(self._failure)
            task = self._start_refresh()
        await asyncio.shield(task)

    def _refresh_soon(self) -> None:
        """Read the map in the background: now, or REFRESH_INTERVAL after the last read."""
        if self._refreshing is not None or self._refresh_timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._refreshed_at + REFRESH_INTERVAL - loop.time()
        if wait <= 0:
            self._start_refresh()
        else:
            self._refresh_timer = loop.call_later(wait, self._refresh_due)

    def _refresh_due(self) -> None:
        self._refresh_timer = None
        if self._refreshing is None:
            self._start_refresh()

    def _start_refresh(self) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._read_map())
        self._refreshing = task
        task.add_done_callback(self._map_read)
        return task

    def _map_read(self, task: asyncio.Task[None]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if task.cancelled():
            return
        error = task.exception()
        failure = None if error is None else str(error)
        if failure is not None and failure != self._failure:  # once per new reason
            log.warning("redis cluster: cannot read the slot map: %s", failure)
        self._failure = failure

    def _lost(self, address: Address) -> None:
        self._suspects.add(address)
        self._refresh_soon()

    async def _owner_after_loss(self, key: str | None) -> Address | None:
        """The slot's master after reading the map again (None if it cannot be read)."""
        loop = asyncio.get_running_loop()
        try:
            if self._refreshing is not None:
                await asyncio.shield(self._refreshing)
            elif loop.time() - self._refreshed_at >= REFRESH_INTERVAL:
                await self._refresh()
            return self._owner_now(key)
        except OSError:
            return None

    async def _read_map(self) -> None:
        self._refreshed_at = asyncio.get_running_loop().time()
        # Nodes that answered last time first, the ones that just failed last.
        candidates = list(dict.fromkeys([*self._known, *self._seeds]))
        candidates.sort(key=lambda node: node in self._suspects)
        failures = []
        for address in candidates:
            try:
                reply = await self._node(address).execute("CLUSTER", "SLOTS")
                self._apply(reply, address)
            except (OSError, ReplyError) as exc:
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            self._suspects.clear()
            return
        raise ClusterUnavailable("no node of the cluster answered: " + "; ".join(failures))

    def _apply(self, reply: list[Any], answered: Address) -> None:
        """Take a CLUSTER SLOTS reply: [[first slot, last slot, master, *replicas]...],
        each node [host, port, id, ...] (host "" = the node that answered, "?" = unknown)."""
        owners: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        masters: list[Address] = []
        known: list[Address] = []
        for first, last, master, *replicas in reply:
            address = _node_address(master, answered)
            if address is None:
                continue
            owners[first : last + 1] = [address] * (last + 1 - first)
            masters.append(address)
            known.extend(a for a in (_node_address(r, answered) for r in replicas) if a)
        if not masters:
            raise ClusterUnavailable("the cluster serves no slot")
        self._owners = owners
        self._masters = list(dict.fromkeys(masters))
        self._known = list(dict.fromkeys([*self._masters, *known]))


def _node_address(node: list[Any], answered: Address) -> Address | None:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    if host == "?":
        return None
    return (host or answered[0], int(node[1]))


def _address(url: SplitResult) -> Address:
    return (url.hostname or "localhost", url.port or 6379)


def _node_url(template: SplitResult, address: Address) -> str:
    """The seed URL with the node's host and port: the same user, password and TLS."""
    host, port = address
    userinfo, at, _ = template.netloc.rpartition("@")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return template._replace(netloc=f"{userinfo}{at}{host}:{port}").geturl()
