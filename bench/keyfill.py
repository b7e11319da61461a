"""Bulk key loading for the key-count scaling run of `make bench` (SCALE=1).

Puts N filler API keys into one project, straight into the stores (the admin API would
take hours, and caps a project at 1,000,000 keys): one `INSERT ... SELECT generate_series`
into Postgres, and for Redis the same layout the admin path writes (see
spendgate/storage/redis_keys.py): the key record hash `<prefix>:{b<N>}:key:<id>` and the
token lookup `<prefix>:tok:<sha256 hex>`, sent as raw pipelined RESP. The filler tokens are
`sgk-bench-filler-<i>` (not well-formed: nobody can call with them); Postgres and Redis hold
the same hashes.
"""

from __future__ import annotations

import hashlib
import socket
import zlib
from urllib.parse import unquote, urlsplit

import asyncpg
import redis

FILLER_TOKEN = "sgk-bench-filler-{}"
FILLER_ID = "key_benchfill{:010d}"
BATCH = 20_000


async def fill_postgres(dsn: str, project_id: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO api_keys (id, project_id, name, token_hash, preview, status, version)
               SELECT format('key_benchfill%s', lpad(i::text, 10, '0')), $1, 'filler-' || i,
                      sha256(convert_to(format('sgk-bench-filler-%s', i), 'UTF8')),
                      'sgk_fill...' || lpad((i % 10000)::text, 4, '0'), 'active', 1
               FROM generate_series(1, $2::int) AS i""",
            project_id,
            count,
        )
        await conn.execute("ANALYZE api_keys")
    finally:
        await conn.close()


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _record_fields(project_id: str) -> tuple[bytes, int]:
    """The RESP tail of every filler's HSET: the fields sync_key.lua would write, with the
    counters of a new key."""
    fields = [
        b"version",
        b"1",
        b"anchor",
        b"",
        b"status",
        b"active",
        b"project",
        project_id.encode(),
        b"limit",
        b"",
        b"r_amount",
        b"",
        b"r_every",
        b"",
        b"r_unit",
        b"",
        b"rules",
        b"[]",
        b"used",
        b"0",
        b"p_used",
        b"0",
        b"p_start",
        b"",
        b"r_all",
        b"0",
        b"r_per",
        b"0",
    ]
    return _command(*fields).split(b"\r\n", 1)[1], len(fields)


def fill_redis(url: str, prefix: str, buckets: int, project_id: str, count: int) -> None:
    """Pipelined raw RESP on one socket, BATCH commands at a time; every reply of HSET and
    SET is one line, so a batch is done when that many CRLFs came back."""
    parts = urlsplit(url)
    tail, nfields = _record_fields(project_id)
    hset_head = b"*%d\r\n$4\r\nHSET\r\n" % (nfields + 2)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as sock:
        setup = []
        if parts.password:
            user = unquote(parts.username or "default").encode()
            setup.append(_command(b"AUTH", user, unquote(parts.password).encode()))
        database = (parts.path or "/0").lstrip("/") or "0"
        setup.append(_command(b"SELECT", database.encode()))
        _exchange(sock, b"".join(setup), len(setup))
        pending: list[bytes] = []
        commands = 0
        for i in range(1, count + 1):
            kid = FILLER_ID.format(i).encode()
            token_hash = hashlib.sha256(FILLER_TOKEN.format(i).encode()).hexdigest().encode()
            bucket = zlib.crc32(kid) % buckets
            record = b"%s:{b%d}:key:%s" % (prefix.encode(), bucket, kid)
            token = b"%s:tok:%s" % (prefix.encode(), token_hash)
            pending.append(b"%s$%d\r\n%s\r\n%s" % (hset_head, len(record), record, tail))
            pending.append(
                b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (len(token), token, len(kid), kid)
            )
            commands += 2
            if commands >= BATCH:
                _exchange(sock, b"".join(pending), commands)
                pending.clear()
                commands = 0
        if pending:
            _exchange(sock, b"".join(pending), commands)


def _exchange(sock: socket.socket, payload: bytes, replies: int) -> None:
    sock.sendall(payload)
    seen = 0
    tail = b""
    while seen < replies:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("redis closed the connection")
        chunk = tail + data
        if chunk.startswith(b"-") or b"\r\n-" in chunk:
            line = chunk[chunk.find(b"-") :].split(b"\r\n", 1)[0]
            raise RuntimeError(f"redis refused a bulk write: {line.decode(errors='replace')}")
        seen += data.count(b"\n")
        tail = chunk[-2:]


def delete_redis_prefix(url: str, prefix: str) -> int:
    """UNLINK every key under `prefix:` (SCAN, never FLUSHALL: the server may be shared)."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted
