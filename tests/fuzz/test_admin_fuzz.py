"""The admin API, fuzzed from its own OpenAPI document (GET /admin/v1/openapi.json).

For each operation of the document, hypothesis builds requests from the operation's
schemas: path ids that exist (read from Postgres as the run goes), that existed, or are
junk; query parameters and bodies that conform to the schemas or break one rule of them
(wrong types, missing and extra fields, strings past their length, numbers past their
range, NaN-like and unicode edge strings, lone surrogates, deep nesting, invalid JSON, a
Content-Encoding the body does not have); and the admin token, or not. Every answer must
be below 500; every 4xx the error envelope with a request id; a request without the admin
token a 401; a refused request must leave the admin tables (checksummed after every
request) as they were, and so must every GET; a 2xx must match the document's response
schema. The run goes on after a failure and reports each distinct one with its smallest
request; inputs that once failed are replayed first on every run (`REGRESSIONS`).

Where the implementation and the schemas disagree without breaking anything (a body the
schema allows but the server refuses with a 400, or the other way round) the run counts
it and `test_the_fuzz_run_summary` prints the tally, with the request count (>= 10,000).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from spendgate.config import Settings
from spendgate.config.catalog import load_catalog
from spendgate.enforcement.tokens import BASE62, generate_token
from spendgate.proxy.app import create_app
from spendgate.proxy.openapi import openapi_document
from tests.fuzz.harness import (
    STATE_TABLES,
    Failures,
    Harness,
    envelope_problem,
    serve,
    short_repr,
)
from tests.fuzz.schema import Schemas, rfc3339_times
from tests.fuzz.values import encode, raw_bodies, strings, weighted
from tests.helpers import ADMIN_TOKEN, FakeClock

EXAMPLES_PER_OPERATION = 720
MIN_REQUESTS = 10_000
SECRET_KEY = "fuzz-secret-key-0123456789abcdef"
BYOK_PROVIDER = "acme"
CLOCK_START = datetime(2026, 1, 31, 10, 0, tzinfo=UTC)
# Bytes of one path id or query value (cut anywhere, even inside a UTF-8 sequence): the
# whole URL stays under aiohttp's 8,190-byte request line, which refuses the request itself.
MAX_PART = 200
USAGE_ROWS = 150  # more than a page (100), so a usage answer carries a cursor

DOCUMENT: dict[str, Any] = openapi_document()
SCHEMAS = Schemas(DOCUMENT)
METHODS = ("get", "put", "post", "patch", "delete")


@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # "/keys/{kid}"
    path_params: tuple[str, ...]
    query_params: tuple[Mapping[str, Any], ...]
    body: Mapping[str, Any] | None  # the request body's schema
    responses: Mapping[str, Any]

    @property
    def id(self) -> str:
        return f"{self.method} {self.template}"


def _operations() -> list[Operation]:
    found = []
    for template, item in DOCUMENT["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            parameters = [*item.get("parameters", ()), *op.get("parameters", ())]
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            found.append(
                Operation(
                    method=method.upper(),
                    template=template,
                    path_params=tuple(p["name"] for p in parameters if p["in"] == "path"),
                    query_params=tuple(p for p in parameters if p["in"] == "query"),
                    body=None if body is None else body["schema"],
                    responses=op["responses"],
                )
            )
    # Deletes last, so the other operations meet many live objects.
    return sorted(found, key=lambda op: op.method == "DELETE")


OPERATIONS = _operations()

# -- requests ------------------------------------------------------------------------------

# A path id, resolved when the request is sent: ("live", n) is the n-th object that exists
# then, ("dead", n) the n-th one deleted so far, ("text", s) the string s itself and
# ("bytes", b) raw bytes, percent-encoded (invalid UTF-8 included).
IdChoice = tuple[str, Any]


@dataclass(frozen=True)
class AdminRequest:
    ids: tuple[tuple[str, IdChoice], ...]
    query: tuple[tuple[str, str], ...]
    authorization: tuple[str, ...]  # the Authorization header(s) sent, in order
    auth_expected: bool | None  # the admin token is (True) / is not (False) given; None: moot
    content_type: str | None
    body: bytes | None
    content_encoding: str | None = None  # sent as is: the body is never compressed

    def __repr__(self) -> str:
        return (
            f"AdminRequest(ids={short_repr(self.ids)}, query={short_repr(self.query)}, "
            f"authorization={short_repr(self.authorization)}, "
            f"content_type={self.content_type!r}, content_encoding={self.content_encoding!r}, "
            f"body={short_repr(self.body, 500)})"
        )


GOOD = f"Bearer {ADMIN_TOKEN}"
GOOD_AUTH: Sequence[tuple[str, ...]] = (
    (GOOD,),
    (f"bearer {ADMIN_TOKEN}",),
    (f"BEARER {ADMIN_TOKEN}",),
)
BAD_AUTH: Sequence[tuple[str, ...]] = (
    (),
    ("Bearer",),
    ("Bearer ",),
    ("Bearer wrong",),
    (f"Basic {ADMIN_TOKEN}",),
    (ADMIN_TOKEN,),
    (f"Token {ADMIN_TOKEN}",),
    (f"Bearer {ADMIN_TOKEN}x",),
    (f"Bearer {ADMIN_TOKEN[:-1]}",),
    (f"Bearer {ADMIN_TOKEN.upper()}",),
    (f"Bearer {generate_token()}",),  # a proxy API token is never an admin token
    ("Bearer " + "x" * 4000,),
    ("Bearer wrong", GOOD),  # the first of two headers is the one read
)
ODD_AUTH: Sequence[tuple[str, ...]] = (  # no expectation beyond "no 5xx"
    (f"Bearer  {ADMIN_TOKEN}",),
    (f"Bearer\t{ADMIN_TOKEN}",),
    (GOOD, "Bearer wrong"),
    (GOOD, GOOD),
)
CONTENT_TYPES: Sequence[str | None] = (
    "application/json",
    "application/json; charset=utf-8",
    None,
    "text/plain",
    "",
    "application/json; charset=utf-16",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=zz",
)


def _authorization() -> st.SearchStrategy[tuple[tuple[str, ...], bool | None]]:
    return weighted(
        (36, st.sampled_from(GOOD_AUTH).map(lambda a: (a, True))),
        (3, st.sampled_from(BAD_AUTH).map(lambda a: (a, False))),
        (1, st.sampled_from(ODD_AUTH).map(lambda a: (a, None))),
    )


def _id_choice(name: str) -> st.SearchStrategy[IdChoice]:
    prefix = {"pid": "prj", "kid": "key"}.get(name, "")
    return weighted(
        (12, st.integers(0, 10_000).map(lambda n: ("live", n))),
        (1, st.integers(0, 1_000).map(lambda n: ("dead", n))),
        (2, st.text(BASE62, min_size=20, max_size=20).map(lambda s: ("text", f"{prefix}_{s}"))),
        (3, strings.map(lambda s: ("text", s))),
        (1, st.binary(min_size=1, max_size=12).map(lambda b: ("bytes", b))),
    )


BAD_TIMES = (
    "2026-01-31T10:00:00",
    "2026-01-31",
    "2026-02-30T00:00:00Z",
    "2026-01-31T24:00:00Z",
    "2026-01-31T10:00:60Z",
    "2026-01-31T10:00:00+24:00",
    "2026-01-31T10:00:00+01:60",
    "2026-01-31T10:00:00.Z",
    "2026-01-31T10:00:00.1234567891234Z",
    "2026-01-31 10:00:00 01:00",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+00:01",
    "0001-01-31T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.9999999Z",
    "9999-12-31T23:59:59-23:59",
    "１９７０-01-01T00:00:00Z",
)


def _extreme_times() -> st.SearchStrategy[str]:
    """Any moment in datetime's range, spelled in RFC 3339."""
    return st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda moment: moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    )


def _query_value(parameter: Mapping[str, Any]) -> st.SearchStrategy[str]:
    name, schema = parameter["name"], parameter["schema"]
    if schema.get("format") == "date-time":
        return weighted(
            (6, rfc3339_times()),
            (2, st.sampled_from(BAD_TIMES)),
            (1, _extreme_times()),
            (1, strings),
        )
    if schema.get("type") == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 10**6)
        return weighted(
            (6, st.integers(low, high).map(str)),
            (3, st.sampled_from(["0", "-1", str(high + 1), "1.5", "1e3", " 5", "05", "١٢", ""])),
            (1, st.integers().map(str)),
            (1, strings),
        )
    assert name == "cursor", name
    return weighted(
        (4, st.integers(0, 1_000).map(lambda n: f"\x00cursor:{n}")),  # a captured cursor
        (
            3,
            st.tuples(st.integers(0, 1_000), st.integers(0, 500)).map(
                lambda p: f"\x00tampered:{p[0]}:{p[1]}"
            ),
        ),
        (1, st.from_regex(r"[A-Za-z0-9_-]{1,200}\.[A-Za-z0-9_-]{1,60}", fullmatch=True)),
        (2, strings),
    )


def _query(op: Operation) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    declared = {p["name"]: _query_value(p) for p in op.query_params}
    chosen = st.fixed_dictionaries({}, optional=declared).map(lambda d: tuple(d.items()))
    extra_names = st.sampled_from([p["name"] for p in op.query_params] + ["x", "limit[]", ""])
    extra = st.lists(st.tuples(extra_names | strings, strings), max_size=2).map(tuple)
    return weighted(
        (9, chosen),
        (1, st.tuples(chosen, extra).map(lambda pair: pair[0] + pair[1])),
    )


def _body(op: Operation) -> st.SearchStrategy[bytes | None]:
    if op.body is None:
        return weighted((12, st.none()), (1, raw_bodies), (1, st.just(b'{"name": "x"}')))
    as_ascii = st.booleans()
    return weighted(
        (5, st.tuples(SCHEMAS.valid(op.body), as_ascii).map(lambda p: encode(*p))),
        (6, st.tuples(SCHEMAS.invalid(op.body), as_ascii).map(lambda p: encode(*p))),
        (1, raw_bodies),
    )


def requests(op: Operation) -> st.SearchStrategy[AdminRequest]:
    ids = st.tuples(*(st.tuples(st.just(n), _id_choice(n)) for n in op.path_params))
    query = _query(op) if op.query_params else st.just(())
    auth = _authorization()
    content_type = weighted((8, st.just("application/json")), (1, st.sampled_from(CONTENT_TYPES)))
    body = _body(op)
    encoding = weighted((30, st.none()), (1, st.sampled_from(["gzip", "deflate", "identity"])))

    # A composite, so that hypothesis shows the request's own (shortened) repr rather than
    # the calls that built it, bodies of megabytes included.
    @st.composite
    def request(draw: st.DrawFn) -> AdminRequest:
        authorization, expected = draw(auth)
        return AdminRequest(
            draw(ids),
            draw(query),
            authorization,
            expected,
            draw(content_type),
            draw(body),
            draw(encoding),
        )

    return request()


# -- the run -------------------------------------------------------------------------------


def _parse(body: bytes) -> tuple[bool, Any]:
    """(is JSON, the value) as the admin API parses it: decimals as Decimal."""

    def reject(name: str) -> Any:
        raise ValueError(name)

    try:
        return True, json.loads(body.decode("utf-8"), parse_float=Decimal, parse_constant=reject)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False, None


@dataclass
class AdminFuzz:
    harness: Harness
    live: dict[str, list[str]]
    dead: dict[str, list[str]]
    cursors: list[tuple[str, str]] = field(default_factory=list)  # (key id, cursor)
    state: tuple[str, ...] = ()
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    nonconforming: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    divergences: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str, str], str] = field(default_factory=dict)
    failures: Failures = field(default_factory=Failures)
    protocol_refusals: Counter[tuple[int, str]] = field(default_factory=Counter)

    async def refresh(self) -> None:
        """The ids that exist now; ids that disappeared go to `dead`."""
        for name, table in (("pid", "projects"), ("kid", "api_keys")):
            rows = await self.harness.db.fetch(f"SELECT id FROM {table} ORDER BY created_at, id")
            now = [row["id"] for row in rows]
            gone = set(self.live[name]) - set(now)
            self.dead[name].extend(sorted(gone))
            self.live[name] = now

    def _id(self, name: str, choice: IdChoice) -> bytes:
        kind, value = choice
        if kind in ("live", "dead"):
            pool = (self.live if kind == "live" else self.dead).get(name) or ["none"]
            return str(pool[value % len(pool)]).encode()
        if kind == "bytes":
            return bytes(value)
        return str(value).encode("utf-8", "surrogatepass")

    def _query_text(self, value: str, key_id: str) -> bytes:
        if value.startswith("\x00cursor:") or value.startswith("\x00tampered:"):
            parts = value.split(":")
            mine = [c for k, c in self.cursors if k == key_id] or [c for _, c in self.cursors]
            cursor = mine[int(parts[1]) % len(mine)] if mine else "none.none"
            if parts[0] == "\x00tampered":
                at = int(parts[2]) % len(cursor)
                flipped = "A" if cursor[at] != "A" else "B"
                cursor = cursor[:at] + flipped + cursor[at + 1 :]
            return cursor.encode()
        return value.encode("utf-8", "surrogatepass")

    def url(self, op: Operation, request: AdminRequest) -> tuple[str, str]:
        """The encoded URL, and the id the kid parameter resolved to."""
        path = op.template
        key_id = ""
        for name, choice in request.ids:
            raw = self._id(name, choice)[:MAX_PART]
            if name == "kid":
                key_id = raw.decode("utf-8", "replace")
            path = path.replace("{" + name + "}", quote(raw, safe=""))
        query = "&".join(
            f"{quote(n.encode('utf-8', 'surrogatepass')[:MAX_PART], safe='')}="
            f"{quote(self._query_text(v, key_id)[:MAX_PART], safe='')}"
            for n, v in request.query
        )
        return "/admin/v1" + path + ("?" + query if query else ""), key_id

    async def check(self, op: Operation, request: AdminRequest) -> None:
        url, key_id = self.url(op, request)
        headers: CIMultiDict[str] = CIMultiDict()
        for value in request.authorization:
            headers.add("Authorization", value)
        if request.content_type is not None:
            headers["Content-Type"] = request.content_type
        if request.content_encoding is not None:
            headers["Content-Encoding"] = request.content_encoding
        self.sent[op.id] += 1
        size = len(url) + len(request.body or b"")
        try:
            response = await self.harness.client.request(
                op.method,
                URL(url, encoded=True),
                data=request.body,
                headers=headers,
                skip_auto_headers=["Content-Type"] if request.content_type is None else (),
            )
            body = await response.read()
        except aiohttp.ClientError as exc:
            self.failures.add(op.id, f"no answer: {exc!r}", size, f"{url}\n{request!r}")
            return
        status = response.status
        self.statuses[(op.id, status)] += 1
        where = f"{op.method} {url}\n  -> {status} {body[:600]!r}\n  {request!r}"
        after = await self.harness.state()
        problems = []
        crash = self.harness.server_errors.take()
        if "x-request-id" not in response.headers and status in (400, 414, 431):
            # Refused by aiohttp's HTTP parser before the app saw it: counted, not failed.
            self.protocol_refusals[(status, body[:70].decode("latin-1"))] += 1
        elif status >= 500:
            signature, trace = crash or (f"status {status}", "")
            self.failures.add(op.id, signature, size, f"{where}\n{trace}")
        else:
            if not response.headers.get("x-request-id", "").startswith("req_"):
                problems.append("no x-request-id")
            if status >= 400 and (problem := envelope_problem(body)) is not None:
                problems.append(f"not the error envelope ({problem})")
        if status >= 400:
            changed = [t for t, a, b in zip(STATE_TABLES, self.state, after, strict=True) if a != b]
            if changed:
                problems.append(f"a refused request changed {', '.join(changed)}")
        elif op.method == "GET" and after != self.state:
            problems.append("a GET changed the tables")
        if request.auth_expected is False and status != 401 and "x-request-id" in response.headers:
            problems.append(f"no admin token, yet {status}")
        for problem in problems:
            self.failures.add(op.id, problem, size, where)
        if request.auth_expected and envelope_problem(body) is None or status < 400:
            self._compare_with_schemas(op, request, status, body, url)
        if status < 400:
            self._conforms(op, status, body, where)
            if op.template.endswith("/usage") and status == 200:
                cursor = orjson.loads(body).get("next_cursor")
                if cursor:
                    self.cursors.append((key_id, cursor))
        if after != self.state:
            await self.refresh()
        self.state = after

    def _conforms(self, op: Operation, status: int, body: bytes, where: str) -> None:
        """A 2xx is one the document lists, with a body its schema allows."""
        documented = op.responses.get(str(status))
        if documented is None:
            self.nonconforming[op.id].append(f"undocumented status {status}: {where}")
            return
        content = documented.get("content", {}).get("application/json")
        if content is None:
            if body:
                self.nonconforming[op.id].append(f"a body where none is documented: {where}")
            return
        problems = SCHEMAS.errors(orjson.loads(body), content["schema"])
        if problems:
            self.nonconforming[op.id].append(f"{problems[:3]}: {where}")

    def _compare_with_schemas(
        self, op: Operation, request: AdminRequest, status: int, body: bytes, url: str
    ) -> None:
        """Count where the server and the schemas disagree on a request's validity."""
        reasons = []
        if op.body is not None:
            parsed, value = _parse(request.body or b"")
            reasons = SCHEMAS.errors(value, op.body) if parsed else ["body: not JSON"]
        for name, value in request.query:
            params = [p for p in op.query_params if p["name"] == name]
            if not params or sum(1 for n, _ in request.query if n == name) > 1:
                reasons.append(f"query {name!r}: unknown or repeated")
            elif name == "cursor":  # any string to the schema; only issued ones to the server
                return
            elif params[0]["schema"].get("type") == "integer":
                number = int(value) if value.isascii() and value.isdigit() else None
                reasons += SCHEMAS.errors(number, params[0]["schema"], name)
            else:
                reasons += SCHEMAS.errors(value, params[0]["schema"], name)
        if status < 300 and reasons:
            self._diverged(op, "accepted, schema says invalid", reasons[0], url, request)
        elif status == 400 and not reasons:
            error = orjson.loads(body)["error"]
            detail = f"{error['code']} {error['param']}: {error['message']}"
            self._diverged(op, "refused, schema says valid", detail, url, request)

    def _diverged(
        self, op: Operation, kind: str, detail: str, url: str, request: AdminRequest
    ) -> None:
        label = (op.id, kind, re.sub(r"\[[0-9]+\]", "[i]", detail)[:100])
        self.divergences[label] += 1
        self.examples.setdefault(label, f"{url} {request!r}"[:500])


async def _seed(harness: Harness, fuzz: AdminFuzz) -> None:
    """Projects of every plan, keys with and without limits, rules, a BYOK credential, a
    deleted key, and ledger rows for one key."""
    projects = []
    for plan, extra in (("free", {}), ("pro", {}), ("enterprise", {"key_limit": 40})):
        body = {"name": f"seed {plan}", "plan": plan, **extra}
        projects.append((await harness.admin("POST", "/projects", body, 201))["id"])
    await harness.admin(
        "POST", "/projects", {"name": "full", "plan": "enterprise", "key_limit": 0}, 201
    )
    keys = []
    bodies: list[dict[str, Any]] = [
        {"name": "plain"},
        {"name": "capped", "usage_limit": "10"},
        {"name": "daily", "recurring_limit": {"amount": "1.5", "every": 1, "unit": "day"}},
        {
            "name": "both",
            "usage_limit": 3,
            "recurring_limit": {"amount": 1, "every": 2, "unit": "month"},
        },
    ]
    for project in projects:
        for body in bodies:
            keys.append((await harness.admin("POST", f"/projects/{project}/keys", body, 201))["id"])
    rules = [
        {"effect": "allow", "models": ["mock/*"]},
        {"effect": "deny", "providers": ["acme"], "status": "inactive"},
        {"effect": "allow", "pricing": {"tier": "paid", "max_input_per_mtok": "1.00"}},
    ]
    await harness.admin("PUT", f"/keys/{keys[0]}/iam-rules", rules)
    await harness.admin(
        "PUT", f"/projects/{projects[1]}/providers/{BYOK_PROVIDER}", {"api_key": "sk-byok-1"}
    )
    await harness.admin("DELETE", f"/keys/{keys.pop()}", status=204)
    await harness.db.execute(
        """
        INSERT INTO usage_events (request_id, created_at, key_id, project_id, model, provider,
            prompt_tokens, completion_tokens, cost_nano, status, duration_ms, billing, stream)
        SELECT 'req_seed_' || i, $3::timestamptz - i * interval '3 hours', $1, $2,
               'mock/echo-1', 'mock', i, 16, 1000 * i, CASE WHEN i % 7 = 0 THEN 400 ELSE 200 END,
               5, 'credits', i % 2 = 0
        FROM generate_series(1, $4::int) AS i
        """,
        keys[0],
        projects[0],
        CLOCK_START,
        USAGE_ROWS,
    )
    await fuzz.refresh()
    fuzz.state = await harness.state()


@pytest.fixture(scope="module")
def fuzz(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AdminFuzz]:
    providers = tmp_path_factory.mktemp("fuzz") / "providers.toml"
    providers.write_text(
        f"""
[providers.{BYOK_PROVIDER}]
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-gateway-0123456789"
models = ["m1"]
[providers.{BYOK_PROVIDER}.prices.m1]
input_per_mtok = "1.00"
output_per_mtok = "2.00"
"""
    )
    prefix = "sgfuzz-admin-" + generate_token()[4:16]
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=prefix,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
    )
    catalog = load_catalog(Path(providers), mock=True, environ={})
    app = create_app(settings, clock=FakeClock(CLOCK_START), catalog=catalog)
    with serve(app, database_url, redis_url, prefix) as harness:
        fuzz = AdminFuzz(
            harness, live={"pid": [], "kid": [], "provider": []}, dead=defaultdict(list)
        )
        fuzz.live["provider"] = [BYOK_PROVIDER, "mock", "openai"]
        harness.run(_seed(harness, fuzz))
        served = harness.run(harness.admin("GET", "/openapi.json"))
        assert served == orjson.loads(orjson.dumps(DOCUMENT))
        yield fuzz


def _regression(
    body: bytes | None = None, encoding: str | None = None, **ids: IdChoice
) -> AdminRequest:
    return AdminRequest(tuple(ids.items()), (), (GOOD,), True, "application/json", body, encoding)


# Inputs that once broke an operation, tried on every run whatever the generator draws.
REGRESSIONS: dict[str, list[AdminRequest]] = {
    "POST /projects": [
        _regression(b'{"name": "a", "plan": []}'),
        _regression(b'{"name": "a", "plan": {}}'),
        _regression(b'{"name": "\\ud800"}'),  # a lone surrogate: valid JSON, not UTF-8
        _regression(b'{"name": "a", "\\ud800": 1}'),  # an unknown field named so
        _regression(b'{"name": "a"}', encoding="gzip"),  # not gzip at all
    ],
    "PATCH /projects/{pid}": [
        _regression(b'{"plan": ["pro"]}', pid=("live", 0)),
        _regression(b'{"name": "\\udfff"}', pid=("live", 0)),
        _regression(b"{}", pid=("text", "\x00")),
    ],
    "GET /projects/{pid}": [_regression(pid=("text", "\x00"))],
    "POST /projects/{pid}/keys": [
        _regression(b'{"name": "x\\ud83d"}', pid=("live", 0)),
        _regression(b'{"name": "k", "\\udfff": 1}', pid=("live", 0)),
        _regression(b'{"name": "k"}', pid=("text", "\x00")),
    ],
    "PUT /projects/{pid}/providers/{provider}": [
        _regression(b'{"api_key": "sk-\\ud800"}', pid=("live", 0), provider=("live", 0)),
        _regression(b'{"api_key": "sk-1"}', pid=("text", "\x00"), provider=("live", 0)),
    ],
    "GET /keys/{kid}": [_regression(kid=("text", "\x00"))],
    "PATCH /keys/{kid}": [
        _regression(b'{"name": "\\ud800"}', kid=("live", 0)),
        _regression(b'{"name": "k"}', kid=("text", "\x00")),
    ],
    "PUT /keys/{kid}/iam-rules": [
        _regression(b'[{"effect": "allow", "models": ["\\ud800"]}]', kid=("live", 0)),
        _regression(b'[{"effect": "deny", "providers": ["a\\udc00"]}]', kid=("live", 0)),
        _regression(b'[{"effect": "allow", "models": ["a"], "\\ud800": 1}]', kid=("live", 0)),
        _regression(b"[]", kid=("text", "\x00")),
    ],
    "GET /keys/{kid}/usage": [_regression(kid=("text", "\x00"))],
    "DELETE /keys/{kid}": [_regression(kid=("text", "\x00"))],
}


@pytest.mark.parametrize("op", OPERATIONS, ids=[op.id for op in OPERATIONS])
def test_an_operation_survives_fuzzing(fuzz: AdminFuzz, op: Operation) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(op))
    def fuzz_once(request: AdminRequest) -> None:
        fuzz.harness.run(fuzz.check(op, request))

    for request in REGRESSIONS.get(op.id, ()):
        fuzz_once = example(request=request)(fuzz_once)
    fuzz_once()
    assert not fuzz.failures.found[op.id], fuzz.failures.report(op.id)
    assert not fuzz.nonconforming[op.id], "\n".join(fuzz.nonconforming[op.id][:10])


def test_the_fuzz_run_summary(fuzz: AdminFuzz) -> None:
    """At least MIN_REQUESTS requests over every operation; prints what the run saw."""
    print(f"\nadmin fuzz: {sum(fuzz.sent.values())} requests")
    for op in OPERATIONS:
        statuses = {s: n for (o, s), n in sorted(fuzz.statuses.items()) if o == op.id}
        print(f"  {op.id:45} {fuzz.sent[op.id]:5}  {statuses}")
    for (status, text), count in fuzz.protocol_refusals.items():
        print(f"  refused by aiohttp's HTTP parser: {count} x {status} {text!r}")
    print("schema/implementation divergences (not failures):")
    for label, count in fuzz.divergences.most_common():
        print(f"  {count:4}  {' | '.join(label)}\n        e.g. {fuzz.examples[label]}")
    if set(fuzz.sent) != {op.id for op in OPERATIONS}:
        pytest.skip("only part of the operations ran")
    assert sum(fuzz.sent.values()) >= MIN_REQUESTS
