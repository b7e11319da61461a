"""The key lifecycle over the admin API, checked against Postgres and Redis."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import asyncpg
import redis.asyncio as redis

from spendgate.enforcement.keys import bucket_of
from spendgate.enforcement.tokens import is_well_formed
from tests.helpers import AdminClient, FakeClock, call


async def new_project(client: AdminClient, plan: str = "free", **extra: Any) -> str:
    project = await call(client, "POST", "/projects", {"name": "acme", "plan": plan, **extra}, 201)
    assert isinstance(project["id"], str)
    return project["id"]


async def new_key(client: AdminClient, pid: str, **body: Any) -> dict[str, Any]:
    created = await call(client, "POST", f"/projects/{pid}/keys", {"name": "prod", **body}, 201)
    assert isinstance(created, dict)
    return created


def record_name(prefix: str, key_id: str) -> str:
    return f"{prefix}:{{b{bucket_of(key_id, 64)}}}:key:{key_id}"


async def test_created_key_shows_its_token_once_and_stores_only_its_hash(
    client: AdminClient, db: asyncpg.Connection, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    pid = await new_project(client)
    created = await new_key(client, pid, usage_limit="50")
    token = created["key"]
    assert is_well_formed(token)
    assert created["preview"] == f"sgk_{token[4:8]}...{token[-4:]}"
    assert created["usage"] == "0" and created["usage_limit"] == "50"
    assert created["status"] == "active" and created["current_period"] is None

    listed = await call(client, "GET", f"/projects/{pid}/keys")
    got = await call(client, "GET", f"/keys/{created['id']}")
    assert token not in str(listed) and token not in str(got)
    assert listed["data"][0]["preview"] == created["preview"]
    assert listed["plan"] == {"name": "free", "key_limit": 5, "key_count": 1}

    digest = hashlib.sha256(token.encode()).digest()
    row = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
    assert row is not None and bytes(row["token_hash"]) == digest
    dump = await db.fetchval("SELECT string_agg(t::text, ' ') FROM api_keys t")
    assert token not in dump and token[4:] not in dump

    assert await raw_redis.get(f"{redis_prefix}:tok:{digest.hex()}") == created["id"].encode()
    everything = ""
    async for name in raw_redis.scan_iter(match=f"{redis_prefix}:*"):
        everything += repr(name)
        if await raw_redis.type(name) == b"hash":
            everything += repr(await raw_redis.hgetall(name))
        elif await raw_redis.type(name) == b"string":
            everything += repr(await raw_redis.get(name))
    assert created["id"] in everything  # the scan did see the key's records
    assert token not in everything and token[4:] not in everything


async def test_key_record_in_redis_follows_every_change(
    client: AdminClient, raw_redis: redis.Redis, redis_prefix: str, clock: FakeClock
) -> None:
    pid = await new_project(client)
    key = await new_key(
        client, pid, usage_limit="1.5", recurring_limit={"amount": 10, "every": 1, "unit": "day"}
    )
    name = record_name(redis_prefix, key["id"])
    record = await raw_redis.hgetall(name)
    assert record[b"status"] == b"active"
    assert record[b"project"] == pid.encode()
    assert record[b"limit"] == b"1500000000"
    assert (record[b"r_amount"], record[b"r_every"], record[b"r_unit"]) == (
        b"10000000000",
        b"1",
        b"day",
    )
    anchor = int(clock.now().timestamp() * 1000)
    assert record[b"anchor"] == str(anchor).encode() and record[b"p_start"] == record[b"anchor"]

    messages = raw_redis.pubsub()
    await messages.subscribe(f"{redis_prefix}:invalidate")
    await messages.get_message(timeout=1)  # the subscribe confirmation
    await call(client, "PATCH", f"/keys/{key['id']}", {"status": "inactive"})
    assert await raw_redis.hget(name, "status") == b"inactive"
    message = await messages.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None and message["data"] == key["id"].encode()
    await messages.aclose()  # type: ignore[no-untyped-call]

    await call(client, "PATCH", f"/keys/{key['id']}", {"usage_limit": None})
    assert await raw_redis.hget(name, "limit") == b""
    await call(client, "PATCH", f"/keys/{key['id']}", {"recurring_limit": None})
    record = await raw_redis.hgetall(name)
    assert record[b"r_amount"] == b"" and record[b"anchor"] == b""


async def test_recurring_limit_update_starts_a_new_period_but_all_time_update_does_not(
    client: AdminClient, raw_redis: redis.Redis, redis_prefix: str, clock: FakeClock
) -> None:
    pid = await new_project(client)
    key = await new_key(client, pid, recurring_limit={"amount": "10", "every": 1, "unit": "day"})
    name = record_name(redis_prefix, key["id"])
    first = key["current_period"]
    assert first == {
        "usage": "0",
        "started_at": "2026-01-31T10:00:00Z",
        "resets_at": "2026-02-01T10:00:00Z",
    }
    # Some usage in the current period, as the settle script would have counted it.
    await raw_redis.hset(name, mapping={"used": 7_000_000_000, "p_used": 3_000_000_000})

    clock.advance(timedelta(days=3, hours=5))  # idle for three windows
    got = await call(client, "GET", f"/keys/{key['id']}")
    assert got["current_period"] == {
        "usage": "0",
        "started_at": "2026-02-03T10:00:00Z",
        "resets_at": "2026-02-04T10:00:00Z",
    }
    assert got["usage"] == "7"

    clock.advance(timedelta(minutes=1))
    same = await call(client, "PATCH", f"/keys/{key['id']}", {"usage_limit": "100"})
    assert same["current_period"]["started_at"] == "2026-02-03T10:00:00Z"

    renewed = await call(
        client,
        "PATCH",
        f"/keys/{key['id']}",
        {"recurring_limit": {"amount": "20", "every": 2, "unit": "week"}},
    )
    assert renewed["current_period"] == {
        "usage": "0",
        "started_at": "2026-02-03T15:01:00Z",
        "resets_at": "2026-02-17T15:01:00Z",
    }
    assert renewed["recurring_limit"] == {"amount": "20", "every": 2, "unit": "week"}
    assert renewed["usage"] == "7"


async def test_current_period_shows_usage_of_the_live_period_only(
    client: AdminClient, raw_redis: redis.Redis, redis_prefix: str, clock: FakeClock
) -> None:
    pid = await new_project(client)
    key = await new_key(client, pid, recurring_limit={"amount": "10", "every": 1, "unit": "month"})
    name = record_name(redis_prefix, key["id"])
    await raw_redis.hset(name, mapping={"used": 2_500_000_000, "p_used": 2_500_000_000})
    got = await call(client, "GET", f"/keys/{key['id']}")
    assert got["current_period"]["usage"] == "2.5"
    assert got["current_period"]["resets_at"] == "2026-02-28T10:00:00Z"  # Jan 31 clamped

    clock.advance(timedelta(days=28))  # the counters still belong to the old period
    got = await call(client, "GET", f"/keys/{key['id']}")
    assert got["current_period"] == {
        "usage": "0",
        "started_at": "2026-02-28T10:00:00Z",
        "resets_at": "2026-03-31T10:00:00Z",
    }


async def test_disable_enable_rename_and_delete(
    client: AdminClient, db: asyncpg.Connection, raw_redis: redis.Redis, redis_prefix: str
) -> None:
    pid = await new_project(client)
    key = await new_key(client, pid)
    kid = key["id"]
    assert (await call(client, "PATCH", f"/keys/{kid}", {"status": "inactive"}))["status"] == (
        "inactive"
    )
    enabled = await call(client, "PATCH", f"/keys/{kid}", {"status": "active", "name": "ci"})
    assert (enabled["status"], enabled["name"]) == ("active", "ci")

    digest = hashlib.sha256(key["key"].encode()).hexdigest()
    await call(client, "DELETE", f"/keys/{kid}", status=204)
    await call(client, "GET", f"/keys/{kid}", status=404)
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0
    assert await raw_redis.get(f"{redis_prefix}:tok:{digest}") is None
    assert await raw_redis.hget(record_name(redis_prefix, kid), "status") == b"deleted"
    assert await raw_redis.pttl(record_name(redis_prefix, kid)) > 0
    listed = await call(client, "GET", f"/projects/{pid}/keys")
    assert listed["data"] == [] and listed["plan"]["key_count"] == 0


async def test_plan_limit_counts_inactive_keys_and_frees_on_delete(client: AdminClient) -> None:
    pid = await new_project(client)
    keys = [await new_key(client, pid) for _ in range(5)]
    await call(client, "PATCH", f"/keys/{keys[0]['id']}", {"status": "inactive"})
    refused = await call(client, "POST", f"/projects/{pid}/keys", {"name": "sixth"}, 403)
    assert refused["error"]["code"] == "key_limit_reached"
    await call(client, "DELETE", f"/keys/{keys[1]['id']}", status=204)
    await new_key(client, pid)
    await call(client, "POST", f"/projects/{pid}/keys", {"name": "seventh"}, 403)


async def test_plan_limits_by_plan(client: AdminClient) -> None:
    pro = await new_project(client, "pro")
    assert (await call(client, "GET", f"/projects/{pro}"))["key_limit"] == 20
    enterprise = await new_project(client, "enterprise")
    assert (await call(client, "GET", f"/projects/{enterprise}"))["key_limit"] == 500
    custom = await new_project(client, "enterprise", key_limit=2)
    await new_key(client, custom)
    await new_key(client, custom)
    await call(client, "POST", f"/projects/{custom}/keys", {"name": "x"}, 403)
    raised = await call(client, "PATCH", f"/projects/{custom}", {"key_limit": 3})
    assert raised["key_limit"] == 3 and raised["key_count"] == 2
    await new_key(client, custom)
    downgraded = await call(client, "PATCH", f"/projects/{custom}", {"plan": "free"})
    assert downgraded["key_limit"] == 5 and downgraded["plan"] == "free"


async def test_twenty_concurrent_creates_on_a_free_project_yield_exactly_five_keys(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    pid = await new_project(client)
    responses = await asyncio.gather(
        *(client.post(f"/admin/v1/projects/{pid}/keys", json={"name": f"k{i}"}) for i in range(20))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] * 5 + [403] * 15
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE project_id = $1", pid) == 5
