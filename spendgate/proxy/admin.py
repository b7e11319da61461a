"""The admin API (`/admin/v1`): projects and keys.

Writes go to Postgres first, then to the key record in Redis that the proxy enforces
from, and an invalidation message drops every process's cached copy. Deleting is the
exception: the Redis tombstone comes first, so a failure half-way leaves the key refused
rather than usable.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from spendgate.config.catalog import Catalog
from spendgate.enforcement import iam, tokens
from spendgate.enforcement.errors import NotFound
from spendgate.enforcement.keys import (
    ApiKey,
    Clock,
    KeyChanges,
    KeyUsage,
    NewKey,
    Project,
    truncate_ms,
)
from spendgate.enforcement.money import format_usd
from spendgate.proxy import admin_input, admin_usage
from spendgate.proxy.errors import InvalidJSON, Unauthorized
from spendgate.proxy.openapi import openapi_document
from spendgate.proxy.responses import json_response, rfc3339
from spendgate.storage.credentials import Credentials
from spendgate.storage.errors import StorageUnavailable
from spendgate.storage.redis_keys import KeyRecords
from spendgate.storage.repository import Repository
from spendgate.storage.usage_query import UsageQueries
from spendgate.types import JSONObject

PREFIX = "/admin/v1"
ID_SHAPE = re.compile(r"[A-Za-z0-9_]{1,64}")


def key_json(key: ApiKey, usage: KeyUsage, now: datetime) -> JSONObject:
    recurring = key.recurring_limit
    period = key.period_at(now)
    return {
        "id": key.id,
        "project_id": key.project_id,
        "name": key.name,
        "preview": key.preview,
        "status": key.status,
        "created_at": rfc3339(key.created_at),
        "last_used_at": rfc3339(key.last_used_at),
        "usage": format_usd(usage.used),
        "usage_limit": None if key.usage_limit is None else format_usd(key.usage_limit),
        "recurring_limit": None
        if recurring is None
        else {
            "amount": format_usd(recurring.amount),
            "every": recurring.window.every,
            "unit": recurring.window.unit,
        },
        "current_period": None
        if period is None
        else {
            "usage": format_usd(usage.in_period(period)),
            "started_at": rfc3339(period.started_at),
            "resets_at": rfc3339(period.resets_at),
        },
        "iam_rules_count": key.iam_rules_count,
    }


def project_json(project: Project) -> JSONObject:
    return {
        "id": project.id,
        "name": project.name,
        "plan": project.plan,
        "key_limit": project.effective_key_limit,
        "key_count": project.key_count,
        "created_at": rfc3339(project.created_at),
    }


async def read_json(request: web.Request) -> JSONObject:
    value = await read_json_value(request)
    if not isinstance(value, dict):
        raise InvalidJSON("the body must be a JSON object")
    return value


async def read_json_value(request: web.Request) -> Any:
    try:
        return admin_input.parse_json(await request.read())
    except admin_input.BodyError as exc:
        raise InvalidJSON(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class AdminApi:
    repo: Repository
    records: KeyRecords
    clock: Clock
    credentials: Credentials
    catalog: Catalog
    cursor_secret: bytes  # signs usage pagination cursors; see admin_usage.cursor_secret

    # -- projects --------------------------------------------------------

    async def create_project(self, request: web.Request) -> web.Response:
        new = admin_input.new_project(await read_json(request))
        project = await self.repo.create_project(
            tokens.new_id("prj"), new.name, new.plan, new.key_limit
        )
        return json_response(project_json(project), status=201)

    async def list_projects(self, request: web.Request) -> web.Response:
        projects = await self.repo.list_projects()
        return json_response({"data": [project_json(p) for p in projects]})

    async def get_project(self, request: web.Request) -> web.Response:
        project = await self.repo.get_project(request.match_info["pid"])
        return json_response(project_json(project))

    async def update_project(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        current = await self.repo.get_project(request.match_info["pid"])
        changes = admin_input.project_changes(body, current.plan, current.key_limit)
        project = await self.repo.update_project(
            current.id, changes.name, changes.plan, changes.key_limit
        )
        return json_response(project_json(project))

    # -- BYOK credentials ------------------------------------------------

    def _byok_provider(self, request: web.Request) -> str:
        name = request.match_info["provider"]
        provider = self.catalog.providers.get(name)
        if provider is None or provider.base_url is None:
            raise NotFound("provider", name)
        return name

    async def put_credential(self, request: web.Request) -> web.Response:
        """Store the project's own credential for a provider (encrypted; never returned)."""
        provider = self._byok_provider(request)
        body = await read_json(request)
        api_key = admin_input.credential(body)
        project_id = request.match_info["pid"]
        await self.credentials.put(project_id, provider, api_key)
        return json_response(await self._credentials_json(project_id, provider))

    async def delete_credential(self, request: web.Request) -> web.Response:
        provider = self._byok_provider(request)
        if not await self.credentials.delete(request.match_info["pid"], provider):
            raise NotFound("credential", provider)
        return web.Response(status=204)

    async def _credentials_json(self, project_id: str, provider: str) -> JSONObject:
        providers = await self.credentials.providers(project_id)
        return {"project_id": project_id, "provider": provider, "byok_providers": providers}

    # -- keys ------------------------------------------------------------

    async def create_key(self, request: web.Request) -> web.Response:
        body = admin_input.new_key(await read_json(request))
        now = truncate_ms(self.clock.now())
        token = tokens.generate_token()
        token_hash = tokens.hash_token(token)
        key = await self.repo.create_key(
            NewKey(
                id=tokens.new_id("key"),
                project_id=request.match_info["pid"],
                name=body.name,
                token_hash=token_hash,
                preview=tokens.preview(token),
                usage_limit=body.usage_limit,
                recurring_limit=body.recurring_limit,
                period_anchor=now if body.recurring_limit else None,
            )
        )
        try:
            await self.records.write(
                key, token_hash, counters=KeyUsage(period_start=key.period_anchor)
            )
        except StorageUnavailable:
            # The token would be shown for a key the proxy cannot enforce: undo.
            await self.repo.delete_key(key.id)
            raise
        return json_response({**key_json(key, KeyUsage(), now), "key": token}, status=201)

    async def list_keys(self, request: web.Request) -> web.Response:
        project = await self.repo.get_project(request.match_info["pid"])
        keys = await self.repo.list_keys(project.id)
        usage = await self.records.usage([k.id for k in keys])
        now = self.clock.now()
        return json_response(
            {
                "data": [key_json(k, usage[k.id], now) for k in keys],
                "plan": {
                    "name": project.plan,
                    "key_limit": project.effective_key_limit,
                    "key_count": project.key_count,
                },
            }
        )

    async def _key_response(self, key: ApiKey) -> web.Response:
        usage = await self.records.usage([key.id])
        data = key_json(key, usage[key.id], self.clock.now())
        data["iam_rules"] = list(key.iam_rules)
        return json_response(data)

    async def get_key(self, request: web.Request) -> web.Response:
        return await self._key_response(await self.repo.get_key(request.match_info["kid"]))

    async def update_key(self, request: web.Request) -> web.Response:
        changes = admin_input.key_changes(await read_json(request))
        key_id = request.match_info["kid"]
        if changes == KeyChanges():
            return await self._key_response(await self.repo.get_key(key_id))
        key = await self.repo.update_key(key_id, changes, truncate_ms(self.clock.now()))
        await self.records.write(key)
        return await self._key_response(key)

    async def key_usage(self, request: web.Request) -> web.Response:
        """The key's ledger rows, newest first, with totals for the range."""
        key_id = request.match_info["kid"]
        params = admin_usage.parse_params(
            request.query, key_id, self.clock.now(), self.cursor_secret
        )
        report = await UsageQueries(self.repo.pool).report(
            key_id, params.since, params.until, params.limit, params.after
        )
        next_cursor = None
        if report.next is not None:
            cursor = admin_usage.Cursor(params.since, params.until, report.next)
            next_cursor = admin_usage.encode_cursor(self.cursor_secret, key_id, cursor)
        return json_response(admin_usage.report_json(report, next_cursor))

    async def get_rules(self, request: web.Request) -> web.Response:
        key = await self.repo.get_key(request.match_info["kid"])
        return json_response(list(key.iam_rules))

    async def put_rules(self, request: web.Request) -> web.Response:
        """Replace the key's rules; a bad rule refuses the whole list (the old rules stay)."""
        body = await read_json_value(request)
        rules = iam.parse_rules(body, new_id=lambda: tokens.new_id("rule"))
        key = await self.repo.replace_rules(request.match_info["kid"], rules)
        await self.records.write(key)
        return json_response(list(key.iam_rules))

    async def delete_key(self, request: web.Request) -> web.Response:
        key = await self.repo.get_key(request.match_info["kid"])
        await self.records.delete(key, await self.repo.token_hash(key.id))
        await self.repo.delete_key(key.id)
        return web.Response(status=204)

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi_document())


ADMIN = web.AppKey("admin", AdminApi)


def _route(method: Callable[[AdminApi, web.Request], Awaitable[web.Response]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        for name in ("pid", "kid"):  # ids are ours: anything else names nothing
            value = request.match_info.get(name)
            if value is not None and not ID_SHAPE.fullmatch(value):
                raise NotFound("project" if name == "pid" else "key", value)
        return await method(request.config_dict[ADMIN], request)

    return handler


def admin_app() -> web.Application:
    """The /admin/v1 sub-application; its AdminApi is set on the root app at start-up."""
    admin = web.Application()
    admin.add_routes(
        [
            web.get("/openapi.json", _route(AdminApi.openapi)),
            web.post("/projects", _route(AdminApi.create_project)),
            web.get("/projects", _route(AdminApi.list_projects)),
            web.get("/projects/{pid}", _route(AdminApi.get_project)),
            web.patch("/projects/{pid}", _route(AdminApi.update_project)),
            web.put("/projects/{pid}/providers/{provider}", _route(AdminApi.put_credential)),
            web.delete("/projects/{pid}/providers/{provider}", _route(AdminApi.delete_credential)),
            web.post("/projects/{pid}/keys", _route(AdminApi.create_key)),
            web.get("/projects/{pid}/keys", _route(AdminApi.list_keys)),
            web.get("/keys/{kid}", _route(AdminApi.get_key)),
            web.patch("/keys/{kid}", _route(AdminApi.update_key)),
            web.delete("/keys/{kid}", _route(AdminApi.delete_key)),
            web.get("/keys/{kid}/iam-rules", _route(AdminApi.get_rules)),
            web.put("/keys/{kid}/iam-rules", _route(AdminApi.put_rules)),
            web.get("/keys/{kid}/usage", _route(AdminApi.key_usage)),
        ]
    )
    return admin


def require_admin_token(request: web.Request, admin_token: str) -> None:
    """Every path under /admin, routed or not, needs the admin token; the proxy's API
    tokens are never accepted there."""
    if request.path == "/admin" or request.path.startswith("/admin/"):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not tokens.same_secret(given, admin_token):
            raise Unauthorized()
