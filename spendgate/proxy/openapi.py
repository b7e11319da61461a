"""The admin API's OpenAPI 3.1 document, served at /admin/v1/openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

from spendgate import __version__
from spendgate.proxy.openapi_schemas import PLAN, SCHEMAS, TIME, ref
from spendgate.types import JSONObject


def _error(description: str) -> JSONObject:
    return {
        "description": description,
        "content": {"application/json": {"schema": ref("Error")}},
    }


def _ok(status: str, schema: JSONObject, description: str = "OK") -> JSONObject:
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _body(schema: JSONObject) -> JSONObject:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str, responses: JSONObject, body: JSONObject | None = None, **extra: Any
) -> JSONObject:
    op: JSONObject = {"summary": summary, "responses": {**responses, **ERRORS}, **extra}
    if body is not None:
        op["requestBody"] = _body(body)
    return op


ERRORS = {
    "400": _error("invalid field or malformed JSON; `param` names the field"),
    "401": _error("missing or wrong admin token"),
    "404": _error("no such project or key"),
    "503": _error("Postgres or Redis unavailable"),
}
PID = {"name": "pid", "in": "path", "required": True, "schema": {"type": "string"}}
KID = {"name": "kid", "in": "path", "required": True, "schema": {"type": "string"}}
PROVIDER = {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}}
RULE_LIST = {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}}
USAGE_PARAMETERS = [
    {
        "name": "since",
        "in": "query",
        "description": "RFC 3339 time with Z or an offset, inclusive; default: until - 30 days",
        "schema": TIME,
    },
    {
        "name": "until",
        "in": "query",
        "description": "RFC 3339 time with Z or an offset, exclusive; default: now",
        "schema": TIME,
    },
    {
        "name": "limit",
        "in": "query",
        "description": "requests per page",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    {
        "name": "cursor",
        "in": "query",
        "description": "the previous page's next_cursor (opaque; it keeps the page's range)",
        "schema": {"type": "string"},
    },
]


@cache
def openapi_document() -> JSONObject:
    project_list = {
        "type": "object",
        "properties": {"data": {"type": "array", "items": ref("Project")}},
    }
    key_list = {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": ref("Key")},
            "plan": {
                "type": "object",
                "properties": {
                    "name": PLAN,
                    "key_limit": {"type": "integer"},
                    "key_count": {"type": "integer"},
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "spendgate admin API", "version": __version__},
        "servers": [{"url": "/admin/v1"}],
        "security": [{"adminToken": []}],
        "paths": {
            "/projects": {
                "post": _op(
                    "Create a project", _ok("201", ref("Project"), "Created"), ref("NewProject")
                ),
                "get": _op("List projects", _ok("200", project_list)),
            },
            "/projects/{pid}": {
                "parameters": [PID],
                "get": _op("Get a project", _ok("200", ref("Project"))),
                "patch": _op("Change a project", _ok("200", ref("Project")), ref("ProjectChanges")),
            },
            "/projects/{pid}/keys": {
                "parameters": [PID],
                "post": _op(
                    "Create a key; the response alone holds the full token",
                    {
                        **_ok("201", ref("CreatedKey"), "Created"),
                        "403": _error("key_limit_reached: the plan allows no more keys"),
                    },
                    ref("NewKey"),
                ),
                "get": _op("List a project's keys", _ok("200", key_list)),
            },
            "/projects/{pid}/providers/{provider}": {
                "parameters": [PID, PROVIDER],
                "put": _op(
                    "Store the project's own credential for a provider (BYOK); never returned",
                    _ok("200", ref("Credentials")),
                    ref("Credential"),
                ),
                "delete": _op("Remove it", {"204": {"description": "Removed"}}),
            },
            "/keys/{kid}/iam-rules": {
                "parameters": [KID],
                "get": _op("A key's IAM rules", _ok("200", RULE_LIST)),
                "put": _op(
                    "Replace a key's IAM rules (written without ids; a bad rule changes nothing)",
                    _ok("200", RULE_LIST),
                    {"type": "array", "maxItems": 100, "items": ref("NewRule")},
                ),
            },
            "/keys/{kid}/usage": {
                "parameters": [KID],
                "get": _op(
                    "A key's requests from the ledger, newest first, and its totals by day and"
                    " model over [since, until); a deleted key's usage is not served (404)",
                    _ok("200", ref("KeyUsage")),
                    parameters=USAGE_PARAMETERS,
                ),
            },
            "/keys/{kid}": {
                "parameters": [KID],
                "get": _op("Get a key with its IAM rules", _ok("200", ref("Key"))),
                "patch": _op(
                    "Change a key; null removes a limit; a new recurring limit starts a new period",
                    _ok("200", ref("Key")),
                    ref("KeyChanges"),
                ),
                "delete": _op("Delete a key for good", {"204": {"description": "Deleted"}}),
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
