"""Projects and API keys in Postgres: the admin path's reads and writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from spendgate.enforcement.errors import KeyLimitReached, NotFound
from spendgate.enforcement.iam import Rule
from spendgate.enforcement.keys import (
    UNSET,
    ApiKey,
    KeyChanges,
    NewKey,
    Project,
    RecurringLimit,
    Unset,
    key_limit,
)
from spendgate.enforcement.windows import Window
from spendgate.storage.postgres import postgres_errors

_PROJECT_COLUMNS = """
    p.id, p.name, p.plan, p.key_limit, p.created_at,
    (SELECT count(*) FROM api_keys k WHERE k.project_id = p.id) AS key_count
"""
_KEY_COLUMNS = """
    k.id, k.project_id, k.name, k.preview, k.status, k.usage_limit_nano,
    k.recurring_amount_nano, k.recurring_every, k.recurring_unit, k.period_anchor,
    k.version, k.created_at, k.last_used_at,
    (SELECT coalesce(jsonb_agg(jsonb_build_object('id', r.id, 'effect', r.effect,
                                                  'status', r.status, r.rule_type, r.spec)
                               ORDER BY r.position), '[]')
     FROM iam_rules r WHERE r.key_id = k.id) AS iam_rules
"""


def _project(row: asyncpg.Record) -> Project:
    return Project(
        id=row["id"],
        name=row["name"],
        plan=row["plan"],
        key_limit=row["key_limit"],
        key_count=row["key_count"],
        created_at=row["created_at"],
    )


def _key(row: asyncpg.Record) -> ApiKey:
    recurring = None
    if row["recurring_amount_nano"] is not None:
        recurring = RecurringLimit(
            row["recurring_amount_nano"], Window(row["recurring_every"], row["recurring_unit"])
        )
    return ApiKey(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        preview=row["preview"],
        status=row["status"],
        usage_limit=row["usage_limit_nano"],
        recurring_limit=recurring,
        period_anchor=row["period_anchor"],
        version=row["version"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        iam_rules=tuple(orjson.loads(row["iam_rules"])),
    )


def _recurring_columns(limit: RecurringLimit | None) -> tuple[Any, Any, Any]:
    if limit is None:
        return None, None, None
    return limit.amount, limit.window.every, limit.window.unit


class Repository:
    """Reads and writes of projects and keys; every write is one transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool, for the other readers of the same database (the usage queries)."""
        return self._pool

    # -- projects --------------------------------------------------------

    async def create_project(
        self, project_id: str, name: str, plan: str, custom_limit: int | None
    ) -> Project:
        async with postgres_errors():
            row = await self._pool.fetchrow(
                f"""WITH p AS (INSERT INTO projects (id, name, plan, key_limit)
                               VALUES ($1, $2, $3, $4) RETURNING *)
                    SELECT {_PROJECT_COLUMNS} FROM p""",
                project_id,
                name,
                plan,
                custom_limit,
            )
        assert row is not None
        return _project(row)

    async def list_projects(self) -> list[Project]:
        async with postgres_errors():
            rows = await self._pool.fetch(
                f"SELECT {_PROJECT_COLUMNS} FROM projects p ORDER BY p.created_at, p.id"
            )
        return [_project(r) for r in rows]

    async def get_project(self, project_id: str) -> Project:
        async with postgres_errors():
            row = await self._pool.fetchrow(
                f"SELECT {_PROJECT_COLUMNS} FROM projects p WHERE p.id = $1", project_id
            )
        if row is None:
            raise NotFound("project", project_id)
        return _project(row)

    async def update_project(
        self, project_id: str, name: str | None, plan: str | None, custom_limit: int | None
    ) -> Project:
        """Sets the given name/plan; the custom limit is always written (None clears it)."""
        async with postgres_errors():
            row = await self._pool.fetchrow(
                f"""WITH p AS (UPDATE projects SET name = coalesce($2, name),
                                                   plan = coalesce($3, plan),
                                                   key_limit = $4
                               WHERE id = $1 RETURNING *)
                    SELECT {_PROJECT_COLUMNS} FROM p""",
                project_id,
                name,
                plan,
                custom_limit,
            )
        if row is None:
            raise NotFound("project", project_id)
        return _project(row)

    # -- keys ------------------------------------------------------------

    async def create_key(self, new: NewKey) -> ApiKey:
        """Insert a key unless the project is at its plan's limit. The project row is
        locked first, so concurrent creates count one after another."""
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            project = await conn.fetchrow(
                "SELECT plan, key_limit FROM projects WHERE id = $1 FOR UPDATE", new.project_id
            )
            if project is None:
                raise NotFound("project", new.project_id)
            allowed = key_limit(project["plan"], project["key_limit"])
            count = await conn.fetchval(
                "SELECT count(*) FROM api_keys WHERE project_id = $1", new.project_id
            )
            if count >= allowed:
                raise KeyLimitReached(project["plan"], allowed)
            amount, every, unit = _recurring_columns(new.recurring_limit)
            row = await conn.fetchrow(
                f"""WITH k AS (
                        INSERT INTO api_keys (id, project_id, name, token_hash, preview, status,
                            usage_limit_nano, recurring_amount_nano, recurring_every,
                            recurring_unit, period_anchor)
                        VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10)
                        RETURNING *)
                    SELECT {_KEY_COLUMNS} FROM k""",
                new.id,
                new.project_id,
                new.name,
                new.token_hash,
                new.preview,
                new.usage_limit,
                amount,
                every,
                unit,
                new.period_anchor,
            )
        assert row is not None
        return _key(row)

    async def list_keys(self, project_id: str) -> list[ApiKey]:
        async with postgres_errors():
            rows = await self._pool.fetch(
                f"""SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.project_id = $1
                    ORDER BY k.created_at, k.id""",
                project_id,
            )
        return [_key(r) for r in rows]

    async def find_key(self, key_id: str) -> ApiKey | None:
        async with postgres_errors():
            row = await self._pool.fetchrow(
                f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.id = $1", key_id
            )
        return None if row is None else _key(row)

    async def get_key(self, key_id: str) -> ApiKey:
        key = await self.find_key(key_id)
        if key is None:
            raise NotFound("key", key_id)
        return key

    async def update_key(self, key_id: str, changes: KeyChanges, now: datetime) -> ApiKey:
        """Apply the given changes; a new recurring limit (or its removal) re-anchors the
        period at `now`. Bumps the version the Redis record is checked against."""
        sets = ["version = version + 1"]
        args: list[Any] = [key_id]

        def assign(column: str, value: Any) -> None:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")

        if changes.name is not UNSET:
            assign("name", changes.name)
        if changes.status is not UNSET:
            assign("status", changes.status)
        if changes.usage_limit is not UNSET:
            assign("usage_limit_nano", changes.usage_limit)
        if not isinstance(changes.recurring_limit, Unset):
            amount, every, unit = _recurring_columns(changes.recurring_limit)
            assign("recurring_amount_nano", amount)
            assign("recurring_every", every)
            assign("recurring_unit", unit)
            assign("period_anchor", None if changes.recurring_limit is None else now)
        async with postgres_errors():
            row = await self._pool.fetchrow(
                f"""WITH k AS (UPDATE api_keys SET {", ".join(sets)} WHERE id = $1 RETURNING *)
                    SELECT {_KEY_COLUMNS} FROM k""",
                *args,
            )
        if row is None:
            raise NotFound("key", key_id)
        return _key(row)

    async def delete_key(self, key_id: str) -> tuple[ApiKey, bytes]:
        """Delete for good; returns the key as it was and its token hash."""
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_KEY_COLUMNS}, k.token_hash FROM api_keys k WHERE k.id = $1 FOR UPDATE",
                key_id,
            )
            if row is None:
                raise NotFound("key", key_id)
            await conn.execute("DELETE FROM api_keys WHERE id = $1", key_id)
        return _key(row), bytes(row["token_hash"])

    async def key_by_token_hash(self, token_hash: bytes) -> ApiKey | None:
        async with postgres_errors():
            row = await self._pool.fetchrow(
                f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.token_hash = $1", token_hash
            )
        return None if row is None else _key(row)

    async def ledger_usage(self, key_id: str, since: datetime | None) -> tuple[int, int]:
        """A key's all-time cost in the ledger, and its cost since `since` (0 if None)."""
        async with postgres_errors():
            row = await self._pool.fetchrow(
                """SELECT coalesce(sum(cost_nano), 0)::bigint AS used,
                          coalesce(sum(cost_nano) FILTER (WHERE created_at >= $2), 0)::bigint
                              AS period_used
                   FROM usage_events WHERE key_id = $1""",
                key_id,
                since,
            )
        assert row is not None
        return int(row["used"]), int(row["period_used"]) if since is not None else 0

    async def replace_rules(self, key_id: str, rules: Sequence[Rule]) -> ApiKey:
        """Replace a key's rules in one transaction; bumps the key's version."""
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
            if found is None:
                raise NotFound("key", key_id)
            await conn.execute("DELETE FROM iam_rules WHERE key_id = $1", key_id)
            await conn.executemany(
                "INSERT INTO iam_rules (id, key_id, position, effect, status, rule_type, spec)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
                [
                    (
                        rule.id,
                        key_id,
                        position,
                        rule.effect,
                        "active" if rule.active else "inactive",
                        rule.type,
                        orjson.dumps(rule.json()[rule.type]).decode(),
                    )
                    for position, rule in enumerate(rules)
                ],
            )
            row = await conn.fetchrow(
                f"""WITH k AS (UPDATE api_keys SET version = version + 1 WHERE id = $1
                               RETURNING *)
                    SELECT {_KEY_COLUMNS} FROM k""",
                key_id,
            )
        assert row is not None
        return _key(row)

    async def token_hash(self, key_id: str) -> bytes:
        async with postgres_errors():
            value = await self._pool.fetchval(
                "SELECT token_hash FROM api_keys WHERE id = $1", key_id
            )
        if value is None:
            raise NotFound("key", key_id)
        return bytes(value)
