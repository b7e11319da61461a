"""GET /admin/v1/keys/{kid}/usage over HTTP, on ledger rows written straight into Postgres."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest

from spendgate.proxy.admin_usage import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    cursor_secret,
    encode_cursor,
)
from spendgate.storage.usage_query import Position
from tests.helpers import ADMIN_TOKEN, AdminClient, FakeClock, call
from tests.test_cli import run_cli

NOW = datetime(2026, 1, 31, 10, 0, tzinfo=UTC)  # the clock fixture's time
US = timedelta(microseconds=1)


async def new_key(client: AdminClient) -> str:
    project = await call(client, "POST", "/projects", {"name": "acme", "plan": "pro"}, 201)
    key = await call(client, "POST", f"/projects/{project['id']}/keys", {"name": "k"}, 201)
    assert isinstance(key["id"], str)
    return key["id"]


async def ledger(db: asyncpg.Connection, key_id: str, *rows: dict[str, Any]) -> None:
    """Ledger rows as the writer stores them; `request_id` and `created_at` are required."""
    defaults = {
        "key_id": key_id,
        "project_id": "prj_x",
        "model": "mock/echo-1",
        "provider": "mock",
        "prompt_tokens": 2,
        "completion_tokens": 16,
        "cost_nano": 34_000,
        "status": 200,
        "duration_ms": 12,
        "billing": "credits",
        "stream": False,
    }
    full = [{**defaults, **row} for row in rows]
    columns = list(full[0])
    await db.executemany(
        f"INSERT INTO usage_events ({', '.join(columns)})"
        f" VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))})",
        [[row[c] for c in columns] for row in full],
    )


async def usage(client: AdminClient, key_id: str, status: int = 200, **params: Any) -> Any:
    query = f"?{urlencode(params)}" if params else ""
    return await call(client, "GET", f"/keys/{key_id}/usage{query}", status=status)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_rows_come_newest_first_with_their_fields_and_money_as_strings(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    kid = await new_key(client)
    other = await new_key(client)
    t = datetime(2026, 1, 20, 8, 30, 0, 123_000, tzinfo=UTC)
    await ledger(
        db,
        kid,
        {"request_id": "req_a", "created_at": t},
        {
            "request_id": "req_b",
            "created_at": t + timedelta(hours=1),
            "model": "openai/gpt-4o-mini",
            "provider": "openai",
            "prompt_tokens": 1000,
            "completion_tokens": 0,
            "cost_nano": 150_000,
            "status": 502,
            "duration_ms": 30_001,
            "billing": "byok",
            "stream": True,
        },
        {"request_id": "req_c", "created_at": t + timedelta(days=1), "cost_nano": 0},
    )
    await ledger(db, other, {"request_id": "req_other", "created_at": t})

    body = await usage(client, kid)

    assert body == {
        "requests": [
            {
                "request_id": "req_c",
                "created_at": "2026-01-21T08:30:00.123Z",
                "model": "mock/echo-1",
                "provider": "mock",
                "prompt_tokens": 2,
                "completion_tokens": 16,
                "cost": "0",
                "status": 200,
                "duration_ms": 12,
                "billing": "credits",
                "stream": False,
            },
            {
                "request_id": "req_b",
                "created_at": "2026-01-20T09:30:00.123Z",
                "model": "openai/gpt-4o-mini",
                "provider": "openai",
                "prompt_tokens": 1000,
                "completion_tokens": 0,
                "cost": "0.00015",
                "status": 502,
                "duration_ms": 30001,
                "billing": "byok",
                "stream": True,
            },
            {
                "request_id": "req_a",
                "created_at": "2026-01-20T08:30:00.123Z",
                "model": "mock/echo-1",
                "provider": "mock",
                "prompt_tokens": 2,
                "completion_tokens": 16,
                "cost": "0.000034",
                "status": 200,
                "duration_ms": 12,
                "billing": "credits",
                "stream": False,
            },
        ],
        "next_cursor": None,
        "totals": {
            "requests": 3,
            "cost": "0.000184",
            "prompt_tokens": 1004,
            "completion_tokens": 32,
        },
        "by_day": [
            {"day": "2026-01-20", "requests": 2, "cost": "0.000184"},
            {"day": "2026-01-21", "requests": 1, "cost": "0"},
        ],
        "by_model": [
            {"model": "openai/gpt-4o-mini", "requests": 1, "cost": "0.00015"},
            {"model": "mock/echo-1", "requests": 2, "cost": "0.000034"},
        ],
    }


async def test_the_default_range_is_the_30_days_up_to_now(
    client: AdminClient, db: asyncpg.Connection, clock: FakeClock
) -> None:
    kid = await new_key(client)
    start = NOW - timedelta(days=30)
    await ledger(
        db,
        kid,
        {"request_id": "too_old", "created_at": start - US},
        {"request_id": "first", "created_at": start},
        {"request_id": "last", "created_at": NOW - US},
        {"request_id": "now", "created_at": NOW},
    )
    body = await usage(client, kid)
    assert [r["request_id"] for r in body["requests"]] == ["last", "first"]
    assert body["by_day"] == [
        {"day": "2026-01-01", "requests": 1, "cost": "0.000034"},
        {"day": "2026-01-31", "requests": 1, "cost": "0.000034"},
    ]

    clock.advance(timedelta(microseconds=1))  # "now" is the clock's
    body = await usage(client, kid)
    assert [r["request_id"] for r in body["requests"]] == ["now", "last"]

    # One bound given: the other is 30 days from it, or now.
    body = await usage(client, kid, until=iso(start + US))
    assert [r["request_id"] for r in body["requests"]] == ["first", "too_old"]
    body = await usage(client, kid, since=iso(NOW - US))
    assert [r["request_id"] for r in body["requests"]] == ["now", "last"]
    body = await usage(client, kid, until="0001-01-02T00:00:00Z")  # from the first instant
    assert body["requests"] == []


async def test_since_is_inclusive_and_until_exclusive_in_any_offset(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    kid = await new_key(client)
    t = datetime(2026, 1, 15, 12, tzinfo=UTC)
    await ledger(
        db,
        kid,
        *({"request_id": f"r{i}", "created_at": t + i * timedelta(minutes=30)} for i in range(5)),
    )
    since = t + timedelta(minutes=30)

    for since_text, until_text in [
        ("2026-01-15T12:30:00Z", "2026-01-15T13:30:00Z"),
        ("2026-01-15T14:30:00+02:00", "2026-01-15T08:30:00-05:00"),
        ("2026-01-15t12:30:00.000z", "2026-01-15 13:30:00.000000000Z"),
        ("2026-01-15T12:29:59.9999991Z", "2026-01-15T13:29:59.9999999Z"),  # rounded up
    ]:
        body = await usage(client, kid, since=since_text, until=until_text)
        assert [r["request_id"] for r in body["requests"]] == ["r2", "r1"], since_text
        assert body["totals"]["requests"] == 2

    # An unencoded + of an offset arrives as a space: still read as +.
    path = f"/keys/{kid}/usage?since=2026-01-15T14:30:00+02:00&until=2026-01-15T15:30:00+02:00"
    body = await call(client, "GET", path)
    assert [r["request_id"] for r in body["requests"]] == ["r2", "r1"]

    body = await usage(client, kid, since=iso(since), until=iso(since))  # empty range
    assert body["requests"] == [] and body["totals"]["requests"] == 0
    assert (body["by_day"], body["by_model"]) == ([], [])


async def test_pages_walk_every_row_exactly_once(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    kid = await new_key(client)
    same = datetime(2026, 1, 20, tzinfo=UTC)
    rows = [{"request_id": f"req_{i:02d}", "created_at": same} for i in range(8)]
    # 1 microsecond apart: the same millisecond on the wire, distinct in the cursor
    rows += [{"request_id": f"req_{i:02d}", "created_at": same + i * US} for i in range(8, 25)]
    await ledger(db, kid, *rows)
    params: dict[str, Any] = {
        "since": "2026-01-01T00:00:00Z",
        "until": "2026-02-01T00:00:00Z",
        "limit": 10,
    }

    pages = [await usage(client, kid, **params)]
    while pages[-1]["next_cursor"] is not None:
        # the cursor alone carries the range on
        pages.append(await usage(client, kid, limit=10, cursor=pages[-1]["next_cursor"]))

    assert [len(page["requests"]) for page in pages] == [10, 10, 5]
    seen = [r["request_id"] for page in pages for r in page["requests"]]
    order = sorted(rows, key=lambda r: (r["created_at"], r["request_id"]), reverse=True)
    assert seen == [r["request_id"] for r in order]
    for page in pages:  # the totals are the whole range's on every page
        assert page["totals"] == pages[0]["totals"]
        assert page["totals"]["requests"] == 25

    # Giving the same range with the cursor is fine; the page size may change.
    again = await usage(client, kid, **{**params, "limit": 3, "cursor": pages[0]["next_cursor"]})
    assert [r["request_id"] for r in again["requests"]] == seen[10:13]


async def test_totals_by_day_and_by_model_are_exact(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    kid = await new_key(client)
    day = datetime(2026, 1, 10, tzinfo=UTC)
    await ledger(
        db,
        kid,
        {"request_id": "a1", "created_at": day - US, "model": "m/a", "cost_nano": 1},
        {"request_id": "a2", "created_at": day, "model": "m/a", "cost_nano": 500_000_000},
        {"request_id": "b1", "created_at": day + timedelta(hours=23), "model": "m/b"},
        {"request_id": "c1", "created_at": day + timedelta(days=2), "model": "m/c"},
        {"request_id": "z1", "created_at": day + timedelta(days=2), "model": "m/0", "cost_nano": 0},
        {
            "request_id": "big",
            "created_at": day + timedelta(days=3),
            "model": "m/a",
            "cost_nano": 12_000_000_000,
            "prompt_tokens": 2**31 - 1,
            "completion_tokens": 2**31 - 1,
        },
    )
    body = await usage(client, kid, since="2026-01-01T00:00:00Z", until="2026-01-31T00:00:00Z")
    assert body["totals"] == {
        "requests": 6,
        "cost": "12.500068001",
        "prompt_tokens": 2**31 - 1 + 10,
        "completion_tokens": 2**31 - 1 + 80,
    }
    assert body["by_day"] == [
        {"day": "2026-01-09", "requests": 1, "cost": "0.000000001"},
        {"day": "2026-01-10", "requests": 2, "cost": "0.500034"},
        {"day": "2026-01-12", "requests": 2, "cost": "0.000034"},
        {"day": "2026-01-13", "requests": 1, "cost": "12"},
    ]
    # by cost, then name: m/b and m/c cost the same
    assert body["by_model"] == [
        {"model": "m/a", "requests": 3, "cost": "12.500000001"},
        {"model": "m/b", "requests": 1, "cost": "0.000034"},
        {"model": "m/c", "requests": 1, "cost": "0.000034"},
        {"model": "m/0", "requests": 1, "cost": "0"},
    ]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-15"}, "since"),
        ({"since": "2026-01-15T12:00:00"}, "since"),  # naive
        ({"until": "2026-01-15T12:00"}, "until"),
        ({"until": "2026-02-30T00:00:00Z"}, "until"),
        ({"until": "2026-01-15T24:00:00Z"}, "until"),
        ({"until": "2026-01-15T23:59:60Z"}, "until"),
        ({"since": "2026-01-15T12:00:00+24:00"}, "since"),
        ({"since": "2026-01-15T12:00:00+01:60"}, "since"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),  # before year 1 in UTC
        ({"since": "２０２６-01-15T12:00:00Z"}, "since"),
        ({"since": "2026-01-15T12:00:00.Z"}, "since"),
        ({"since": "2026-01-20T00:00:00Z", "until": "2026-01-10T00:00:00Z"}, "since"),
        ({"since": "2026-02-01T00:00:00Z"}, "since"),  # after now, the default until
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": " 10"}, "limit"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "a.b"}, "cursor"),
        ({"cursor": "x" * 2000 + ".y"}, "cursor"),
        ({"offset": "10"}, "offset"),
        ({"Limit": "10"}, "Limit"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    client: AdminClient, params: dict[str, str], param: str
) -> None:
    kid = await new_key(client)
    error = (await usage(client, kid, 400, **params))["error"]
    assert (error["code"], error["param"]) == ("invalid_field", param), error


async def test_a_parameter_given_twice_is_refused(client: AdminClient) -> None:
    kid = await new_key(client)
    error = (await call(client, "GET", f"/keys/{kid}/usage?limit=5&limit=6", status=400))["error"]
    assert (error["code"], error["param"]) == ("invalid_field", "limit")


async def test_limits_of_1_and_1000_are_accepted(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    kid = await new_key(client)
    t = NOW - timedelta(days=1)
    await ledger(
        db, kid, *({"request_id": f"r{i:04d}", "created_at": t + i * US} for i in range(1001))
    )
    one = await usage(client, kid, limit="1")
    assert [r["request_id"] for r in one["requests"]] == ["r1000"] and one["next_cursor"]
    most = await usage(client, kid, limit="1000")
    assert len(most["requests"]) == 1000 and most["next_cursor"]
    last = await usage(client, kid, limit="1000", cursor=most["next_cursor"])
    assert [r["request_id"] for r in last["requests"]] == ["r0000"] and last["next_cursor"] is None


async def test_cursors_of_another_key_or_range_or_edited_are_refused(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    kid, other = await new_key(client), await new_key(client)
    t = datetime(2026, 1, 20, tzinfo=UTC)
    for key in (kid, other):
        await ledger(
            db, key, *({"request_id": f"{key}_{i}", "created_at": t + i * US} for i in range(3))
        )
    params: dict[str, Any] = {
        "since": "2026-01-01T00:00:00Z",
        "until": "2026-01-31T00:00:00Z",
        "limit": 1,
    }
    cursor = (await usage(client, kid, **params))["next_cursor"]
    assert (await usage(client, kid, **{**params, "cursor": cursor}))["requests"]

    async def refused(key: str, **query: Any) -> str:
        error = (await usage(client, key, 400, **query))["error"]
        assert (error["code"], error["param"]) == ("invalid_field", "cursor"), error
        assert isinstance(error["message"], str)
        return error["message"]

    assert "another key" in await refused(other, cursor=cursor)
    assert "another" in await refused(kid, cursor=cursor, since="2026-01-02T00:00:00Z")
    assert "another" in await refused(kid, cursor=cursor, until="2026-01-30T00:00:00Z")

    # Edited: the payload re-encoded with another position, the old tag kept.
    payload, tag = cursor.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields[4] += 1
    edited = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    await refused(kid, cursor=f"{edited}.{tag}")
    flipped = tag[:-2] + ("A" if tag[-2] != "A" else "B") + tag[-1]
    await refused(kid, cursor=f"{payload}.{flipped}")
    await refused(kid, cursor=f"{payload}.")
    await refused(kid, cursor=f"{payload}.{tag}.{tag}")
    await refused(kid, cursor=f"{payload}!.{tag}")

    # Forged: well formed, but signed with a key derived from another token.
    position = Position(t + 2 * US, f"{kid}_2")
    since, until = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 31, tzinfo=UTC)
    forged = encode_cursor(
        cursor_secret("not-the-admin-token"), kid, Cursor(since, until, position)
    )
    await refused(kid, cursor=forged)
    genuine = encode_cursor(cursor_secret(ADMIN_TOKEN), kid, Cursor(since, until, position))
    body = await usage(client, kid, limit=1, cursor=genuine)
    assert [r["request_id"] for r in body["requests"]] == [f"{kid}_1"]


async def test_unknown_and_deleted_keys_are_404(
    client: AdminClient, db: asyncpg.Connection
) -> None:
    for unknown in ("key_nope", "key_%00"):  # NUL cannot even reach Postgres
        error = (await usage(client, unknown, 404))["error"]
        assert error["code"] == "not_found"

    kid = await new_key(client)
    await ledger(db, kid, {"request_id": "r1", "created_at": NOW - timedelta(hours=1)})
    assert (await usage(client, kid))["totals"]["requests"] == 1
    await call(client, "DELETE", f"/keys/{kid}", status=204)
    assert (await usage(client, kid, 404))["error"]["code"] == "not_found"
    assert await db.fetchval("SELECT count(*) FROM usage_events WHERE key_id = $1", kid) == 1


async def test_the_openapi_document_lists_the_usage_parameters(client: AdminClient) -> None:
    doc = await call(client, "GET", "/openapi.json")
    operation = doc["paths"]["/keys/{kid}/usage"]["get"]
    limit = next(p for p in operation["parameters"] if p["name"] == "limit")
    assert [p["name"] for p in operation["parameters"]] == ["since", "until", "limit", "cursor"]
    assert (limit["schema"]["maximum"], limit["schema"]["default"]) == (MAX_LIMIT, DEFAULT_LIMIT)


async def test_the_cli_prints_the_requests_and_the_totals(
    client: AdminClient, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    kid = await new_key(client)
    t = datetime(2026, 1, 15, 12, tzinfo=UTC)
    await ledger(db, kid, *({"request_id": f"req_{i}", "created_at": t + i * US} for i in range(3)))
    since, until = "2026-01-15T13:00:00+01:00", "2026-01-16T00:00:00Z"  # + must be encoded

    code, out, _ = await run_cli(
        client,
        monkeypatch,
        "keys",
        "usage",
        kid,
        "--since",
        since,
        "--until",
        until,
        "--limit",
        "2",
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "CREATED",
        "REQUEST",
        "MODEL",
        "STATUS",
        "TOKENS",
        "IN/OUT",
        "COST",
        "MS",
    ]
    assert lines[1].split() == [
        "2026-01-15T12:00:00Z", "req_2", "mock/echo-1", "200", "2/16", "$0.000034", "12"
    ]  # fmt: skip
    assert "total:    3 requests, $0.000102, 6 prompt + 48 completion tokens" in lines
    assert "model:    mock/echo-1: 3 requests, $0.000102" in lines
    cursor = next(line for line in lines if line.startswith("more:")).split()[-1]

    code, out, _ = await run_cli(
        client, monkeypatch, "keys", "usage", kid, "--cursor", cursor, "--json"
    )
    assert code == 0
    page = json.loads(out)
    assert [r["request_id"] for r in page["requests"]] == ["req_0"]
    assert page["next_cursor"] is None

    code, _, err = await run_cli(client, monkeypatch, "keys", "usage", kid, "--limit", "0")
    assert code == 1 and "limit" in err
