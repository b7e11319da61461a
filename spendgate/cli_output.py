"""How the CLI prints what the admin API answers: tables and key summaries, or the JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def emit(args: argparse.Namespace, data: Any, lines: Callable[[Any], list[str]]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for line in lines(data):
            print(line)


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def limits_text(key: dict[str, Any]) -> str:
    parts = []
    if key.get("usage_limit") is not None:
        parts.append(f"${key['usage_limit']} all-time")
    recurring = key.get("recurring_limit")
    if recurring:
        parts.append(f"${recurring['amount']} / {recurring['every']} {recurring['unit']}")
    return ", ".join(parts) or "none"


def period_text(key: dict[str, Any]) -> str:
    period = key.get("current_period")
    if not period:
        return "-"
    return f"${period['usage']} (resets {period['resets_at']})"


def key_lines(key: dict[str, Any]) -> list[str]:
    lines = [
        f"id:             {key['id']}",
        f"name:           {key['name']}",
        f"key:            {key['preview']}",
        f"status:         {key['status']}",
        f"created:        {key['created_at']}",
        f"usage:          ${key['usage']}",
        f"current period: {period_text(key)}",
        f"limits:         {limits_text(key)}",
        f"IAM rules:      {key['iam_rules_count'] or 'none'}",
    ]
    return lines


def rules_lines(rules: list[dict[str, Any]]) -> list[str]:
    if not rules:
        return ["no IAM rules: the key may use every model"]
    rows = []
    for rule in rules:
        kind = next(k for k in ("models", "providers", "pricing") if k in rule)
        spec = rule[kind]
        what = ", ".join(spec) if isinstance(spec, list) else json.dumps(spec)
        rows.append([rule["id"], rule["effect"], rule["status"], kind, what])
    return table(rows, ["ID", "EFFECT", "STATUS", "TYPE", "MATCHES"])


def usage_lines(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["created_at"],
            r["request_id"],
            r["model"],
            str(r["status"]),
            f"{r['prompt_tokens']}/{r['completion_tokens']}",
            "$" + r["cost"],
            str(r["duration_ms"]),
        ]
        for r in data["requests"]
    ]
    totals = data["totals"]
    lines = table(rows, ["CREATED", "REQUEST", "MODEL", "STATUS", "TOKENS IN/OUT", "COST", "MS"])
    lines += [
        "",
        f"total:    {totals['requests']} requests, ${totals['cost']}, "
        f"{totals['prompt_tokens']} prompt + {totals['completion_tokens']} completion tokens",
    ]
    lines += [
        f"model:    {m['model']}: {m['requests']} requests, ${m['cost']}" for m in data["by_model"]
    ]
    if data["next_cursor"]:
        lines.append(f"more:     --cursor {data['next_cursor']}")
    return lines
