"""The gateway on a local port, driven by synchronous hypothesis tests through a private
event loop.

pytest-asyncio runs one event loop per test function, so its fixtures cannot keep one app
running across the many test items of a fuzz run. A `Harness` owns its own loop instead:
the app starts once per module (real Postgres and Redis, migrations run for real), and each
hypothesis example runs one coroutine on that loop with `harness.run(...)`.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import orjson
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.helpers import ADMIN_TOKEN

T = TypeVar("T")

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The admin API's tables: a request it refuses must leave all of them as they were.
STATE_TABLES = ("projects", "api_keys", "iam_rules", "provider_credentials")
# Per table: the row count and the sum of the rows' xmin (the id of the transaction that
# wrote each row version). Any committed insert, update or delete changes one of the two,
# even an update that writes the same values back; a rolled-back write changes neither.
# Cheaper than hashing the rows' text (md5(string_agg(...))) by an order of magnitude once
# the tables hold thousands of rows, which they do by the end of a run.
STATE_SQL = "SELECT " + ", ".join(
    f"(SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM {table})"
    for table in STATE_TABLES
)
ALL_TABLES = "projects, api_keys, iam_rules, provider_credentials, usage_events"
ENVELOPE_FIELDS = ("message", "type", "param", "code")

Client = TestClient[web.Request, web.Application]


class ServerErrors(logging.Handler):
    """The tracebacks of the errors the app's outermost layer logs as unhandled (the 500s)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)

    def take(self) -> tuple[str, str] | None:
        """(signature, traceback) of the last unhandled error since the previous call."""
        records, self.records = self.records, []
        if not records or records[-1].exc_info is None:
            return None
        kind, error, trace = records[-1].exc_info
        assert kind is not None
        frames = traceback.extract_tb(trace)
        ours = [f for f in frames if "/spendgate/" in f.filename] or frames
        where = ours[-1]
        short = where.filename[where.filename.rfind("spendgate/") :]
        text = "".join(traceback.format_exception(kind, error, trace))
        return f"{kind.__name__}: {error} at {short}:{where.lineno} in {where.name}", text


@dataclass
class Failures:
    """Distinct failures per test subject, each with its smallest failing request: the run
    goes on after one, so a single run reports every bug it meets."""

    found: dict[str, dict[str, tuple[int, str]]] = field(default_factory=lambda: defaultdict(dict))
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def add(self, subject: str, signature: str, size: int, description: str) -> None:
        self.counts[(subject, signature)] += 1
        known = self.found[subject].get(signature)
        if known is None or size < known[0]:
            self.found[subject][signature] = (size, description)

    def report(self, subject: str) -> str:
        return "\n\n".join(
            f"[{self.counts[(subject, signature)]}x] {signature}\n{description}"
            for signature, (_, description) in self.found[subject].items()
        )


class Harness:
    """A started app, a client for it and a Postgres connection, all on `loop`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, client: Client, db: asyncpg.Connection
    ) -> None:
        self.loop = loop
        self.client = client
        self.db = db
        self.server_errors = ServerErrors()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def state(self) -> tuple[str, ...]:
        """One checksum per admin table."""
        row = await self.db.fetchrow(STATE_SQL)
        assert row is not None
        return tuple(row)

    async def admin(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """One well-formed admin call that must answer `status`; its decoded body."""
        response = await self.client.request(
            method, "/admin/v1" + path, json=body, headers=ADMIN_HEADERS
        )
        text = await response.read()
        assert response.status == status, (method, path, body, response.status, text)
        return None if response.status == 204 else orjson.loads(text)


def short_repr(value: Any, limit: int = 300) -> str:
    """repr(value), cut after `limit` characters: failing inputs can be megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def envelope_problem(body: bytes) -> str | None:
    """Why `body` is not OpenAI's error envelope; None when it is one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return "not {'error': {...}}"
    error = data["error"]
    if set(error) != set(ENVELOPE_FIELDS):
        return f"error fields {sorted(error)}"
    if not all(isinstance(error[name], str) for name in ("message", "type", "code")):
        return "message, type and code must be strings"
    if error["param"] is not None and not isinstance(error["param"], str):
        return "param must be a string or null"
    return None


@contextmanager
def serve(
    app: web.Application, database_url: str, redis_url: str, prefix: str
) -> Iterator[Harness]:
    """`app` started on a local port, on a private loop; emptied tables and Redis keys
    afterwards."""
    loop = asyncio.new_event_loop()

    async def start() -> Harness:
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        db = await asyncpg.connect(database_url)
        return Harness(loop, client, db)

    harness = loop.run_until_complete(start())
    # spendgate's outermost layer logs what it answers 500 for; aiohttp's server logs what
    # escapes the app (its own bare "500 Internal Server Error").
    loggers = [logging.getLogger(name) for name in ("spendgate.proxy.errors", "aiohttp.server")]
    for logger in loggers:
        logger.addHandler(harness.server_errors)
    try:
        yield harness
    finally:
        for logger in loggers:
            logger.removeHandler(harness.server_errors)
        loop.run_until_complete(_stop(harness, redis_url, prefix))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _stop(harness: Harness, redis_url: str, prefix: str) -> None:
    await harness.client.close()
    await harness.db.execute(f"TRUNCATE {ALL_TABLES} CASCADE")
    await harness.db.close()
    client = redis.Redis.from_url(redis_url)
    async for name in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(name)
    await client.aclose()
