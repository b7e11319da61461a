"""`spendgate serve | migrate | projects ... | keys ...`.

`serve` and `migrate` run here; `projects` and `keys` speak to a running gateway's admin
API (`--url`, default `SPENDGATE_URL` or http://SPENDGATE_HOST:SPENDGATE_PORT, with the
admin token from `SPENDGATE_ADMIN_TOKEN` or the data dir).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from spendgate.cli_output import (
    emit,
    key_lines,
    limits_text,
    period_text,
    rules_lines,
    table,
    usage_lines,
)
from spendgate.config import ConfigError, Settings

Command = Callable[[argparse.Namespace, Settings], int]


class CliError(Exception):
    """Printed as `error: ...` with exit status 1."""


# -- the admin API client ------------------------------------------------


def admin_call(
    args: argparse.Namespace, settings: Settings, method: str, path: str, body: Any = None
) -> Any:
    from spendgate.proxy.server import admin_token_path

    token = settings.admin_token
    if token is None:
        path_file = admin_token_path(settings.data_dir)
        if not path_file.exists():
            raise CliError("no admin token: set SPENDGATE_ADMIN_TOKEN")
        token = path_file.read_text(encoding="utf-8").strip()
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + "/admin/v1" + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            error = json.loads(raw)["error"]
            message = error["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode(errors="replace")[:200]
        raise CliError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the gateway at {url}: {exc}") from None
    return json.loads(raw) if raw else None


# -- argument parsing of limits --------------------------------------------


def recurring_arg(text: str) -> dict[str, Any] | None:
    """`AMOUNT/EVERY/UNIT` (e.g. `10/1/day`), or `none` to remove."""
    if text.lower() == "none":
        return None
    parts = text.split("/")
    if len(parts) != 3 or not parts[1].isdigit():
        raise argparse.ArgumentTypeError("expected AMOUNT/EVERY/UNIT, e.g. 10/1/day, or none")
    return {"amount": parts[0], "every": int(parts[1]), "unit": parts[2]}


def money_arg(text: str) -> str | None:
    return None if text.lower() == "none" else text


# -- commands ----------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from spendgate.proxy.server import serve

    changes = {k: getattr(args, k) for k in ("host", "port", "workers") if getattr(args, k)}
    serve(settings.replace(**changes))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from spendgate.proxy.server import run_migrations

    applied = run_migrations(settings)
    print("applied: " + ", ".join(applied) if applied else "up to date")
    return 0


def cmd_projects_create(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {"name": args.name, "plan": args.plan}
    if args.key_limit is not None:
        body["key_limit"] = args.key_limit
    project = admin_call(args, settings, "POST", "/projects", body)
    emit(args, project, lambda p: [f"{p['id']}  {p['name']}  {p['plan']}"])
    return 0


def cmd_projects_list(args: argparse.Namespace, settings: Settings) -> int:
    data = admin_call(args, settings, "GET", "/projects")
    emit(
        args,
        data,
        lambda d: table(
            [
                [p["id"], p["name"], p["plan"], f"{p['key_count']} of {p['key_limit']}"]
                for p in d["data"]
            ],
            ["ID", "NAME", "PLAN", "KEYS"],
        ),
    )
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.usage_limit is not None:
        body["usage_limit"] = args.usage_limit
    if args.recurring is not None:
        body["recurring_limit"] = args.recurring
    key = admin_call(args, settings, "POST", f"/projects/{args.project}/keys", body)
    if args.json:
        print(json.dumps(key, indent=2))
        return 0
    print(f"Created {key['id']} ({key['name']}).")
    print("This is the only time the full key is shown. Store it securely now:")
    print()
    print(f"    {key['key']}")
    print()
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    data = admin_call(args, settings, "GET", f"/projects/{args.project}/keys")

    def lines(d: Any) -> list[str]:
        plan = d["plan"]
        rows = [
            [
                k["id"],
                k["name"],
                k["preview"],
                k["status"],
                k["created_at"],
                "$" + k["usage"],
                period_text(k),
                limits_text(k),
                str(k["iam_rules_count"] or "-"),
            ]
            for k in d["data"]
        ]
        header = ["ID", "NAME", "KEY", "STATUS", "CREATED", "USAGE", "CURRENT PERIOD", "LIMITS"]
        return [
            *table(rows, [*header, "IAM"]),
            f"{plan['key_count']} of {plan['key_limit']} keys used ({plan['name']} plan)",
        ]

    emit(args, data, lines)
    return 0


def cmd_keys_show(args: argparse.Namespace, settings: Settings) -> int:
    emit(args, admin_call(args, settings, "GET", f"/keys/{args.key_id}"), key_lines)
    return 0


def patch_key(args: argparse.Namespace, settings: Settings, body: dict[str, Any]) -> int:
    emit(args, admin_call(args, settings, "PATCH", f"/keys/{args.key_id}", body), key_lines)
    return 0


def cmd_keys_enable(args: argparse.Namespace, settings: Settings) -> int:
    return patch_key(args, settings, {"status": "active"})


def cmd_keys_disable(args: argparse.Namespace, settings: Settings) -> int:
    return patch_key(args, settings, {"status": "inactive"})


def cmd_keys_set_limits(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {}
    if args.usage_limit is not None:
        body["usage_limit"] = money_arg(args.usage_limit)
    if args.recurring is not None:
        body["recurring_limit"] = recurring_arg(args.recurring)
    if not body:
        raise CliError("give --usage-limit and/or --recurring (a value or 'none')")
    if "recurring_limit" in body and not args.json:
        print("Changing the recurring limit starts a new period now.", file=sys.stderr)
    return patch_key(args, settings, body)


def cmd_keys_iam_show(args: argparse.Namespace, settings: Settings) -> int:
    emit(args, admin_call(args, settings, "GET", f"/keys/{args.key_id}/iam-rules"), rules_lines)
    return 0


def cmd_keys_iam_set(args: argparse.Namespace, settings: Settings) -> int:
    text = sys.stdin.read() if args.rules == "-" else args.rules
    try:
        rules = json.loads(text)
    except ValueError as exc:
        raise CliError(f"the rules are not valid JSON: {exc}") from None
    stored = admin_call(args, settings, "PUT", f"/keys/{args.key_id}/iam-rules", rules)
    emit(args, stored, rules_lines)
    return 0


def cmd_keys_usage(args: argparse.Namespace, settings: Settings) -> int:
    names = ("since", "until", "limit", "cursor")
    query = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    path = f"/keys/{args.key_id}/usage"
    if query:
        path += "?" + urllib.parse.urlencode(query)  # encodes the + of an offset
    emit(args, admin_call(args, settings, "GET", path), usage_lines)
    return 0


def cmd_keys_delete(args: argparse.Namespace, settings: Settings) -> int:
    if not args.yes:
        raise CliError(f"deleting {args.key_id} is permanent; repeat with --yes")
    admin_call(args, settings, "DELETE", f"/keys/{args.key_id}")
    print(f"Deleted {args.key_id}.")
    return 0


# -- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendgate", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=os.environ.get("SPENDGATE_URL"), help="gateway URL")
    client.add_argument("--json", action="store_true", help="print the API's JSON")

    projects = commands.add_parser("projects", help="manage projects").add_subparsers(
        dest="action", required=True
    )
    create = projects.add_parser("create", parents=[client])
    create.add_argument("--name", required=True)
    create.add_argument("--plan", default="free", choices=["free", "pro", "enterprise"])
    create.add_argument("--key-limit", type=int, help="enterprise only")
    create.set_defaults(func=cmd_projects_create)
    projects.add_parser("list", parents=[client]).set_defaults(func=cmd_projects_list)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", parents=[client], help="create a key; prints it once")
    create.add_argument("--project", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--usage-limit", help="all-time limit in USD")
    create.add_argument("--recurring", type=recurring_arg, help="AMOUNT/EVERY/UNIT, e.g. 10/1/day")
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", parents=[client])
    listing.add_argument("--project", required=True)
    listing.set_defaults(func=cmd_keys_list)
    for name, func in [
        ("show", cmd_keys_show),
        ("enable", cmd_keys_enable),
        ("disable", cmd_keys_disable),
    ]:
        sub = keys.add_parser(name, parents=[client])
        sub.add_argument("key_id")
        sub.set_defaults(func=func)
    limits = keys.add_parser("set-limits", parents=[client])
    limits.add_argument("key_id")
    limits.add_argument("--usage-limit", help="all-time limit in USD, or none")
    limits.add_argument("--recurring", help="AMOUNT/EVERY/UNIT, or none")
    limits.set_defaults(func=cmd_keys_set_limits)
    iam = keys.add_parser("iam", help="show or replace a key's IAM rules").add_subparsers(
        dest="iam_action", required=True
    )
    show = iam.add_parser("show", parents=[client])
    show.add_argument("key_id")
    show.set_defaults(func=cmd_keys_iam_show)
    replace = iam.add_parser("set", parents=[client], help="replace the rules")
    replace.add_argument("key_id")
    replace.add_argument(
        "rules",
        help='a JSON array, e.g. \'[{"effect": "allow", "models": ["gpt-4o*"]}]\', or - for stdin',
    )
    replace.set_defaults(func=cmd_keys_iam_set)
    usage = keys.add_parser("usage", parents=[client], help="a key's requests and totals")
    usage.add_argument("key_id")
    usage.add_argument("--since", help="RFC 3339 time, inclusive (default: 30 days ago)")
    usage.add_argument("--until", help="RFC 3339 time, exclusive (default: now)")
    usage.add_argument("--limit", type=int, help="requests per page, 1 to 1000 (default 100)")
    usage.add_argument("--cursor", help="the next page, as printed after 'more:'")
    usage.set_defaults(func=cmd_keys_usage)
    delete = keys.add_parser("delete", parents=[client])
    delete.add_argument("key_id")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    delete.set_defaults(func=cmd_keys_delete)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        func: Command = args.func
        return func(args, settings)
    except (CliError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
