"""The CLI against a running app: it prints the token once and never again."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import pytest

from spendgate.cli import main
from tests.helpers import ADMIN_TOKEN, AdminClient


async def run_cli(
    client: AdminClient, monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[int, str, str]:
    """Run `spendgate argv...` in a thread (it blocks on HTTP) against the test server."""
    monkeypatch.setenv("SPENDGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    url = str(client.server.make_url("")).rstrip("/")

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*argv, "--url", url])
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(run)


async def test_project_and_key_lifecycle_through_the_cli(
    client: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = await run_cli(
        client, monkeypatch, "projects", "create", "--name", "acme", "--plan", "pro", "--json"
    )
    assert code == 0
    pid = json.loads(out)["id"]

    code, out, _ = await run_cli(
        client,
        monkeypatch,
        "keys",
        "create",
        "--project",
        pid,
        "--name",
        "prod",
        "--usage-limit",
        "50",
        "--recurring",
        "500/1/month",
    )
    assert code == 0
    token = next(word for word in out.split() if word.startswith("sgk_"))
    assert "only time" in out

    code, out, _ = await run_cli(client, monkeypatch, "keys", "list", "--project", pid)
    assert code == 0
    assert token not in out
    assert f"sgk_{token[4:8]}...{token[-4:]}" in out
    assert "$50 all-time, $500 / 1 month" in out
    assert "1 of 20 keys used (pro plan)" in out

    code, out, _ = await run_cli(client, monkeypatch, "keys", "list", "--project", pid, "--json")
    kid = json.loads(out)["data"][0]["id"]
    assert token not in out

    code, out, _ = await run_cli(client, monkeypatch, "keys", "disable", kid)
    assert code == 0 and "inactive" in out
    code, out, _ = await run_cli(client, monkeypatch, "keys", "enable", kid, "--json")
    assert json.loads(out)["status"] == "active"

    code, out, err = await run_cli(
        client,
        monkeypatch,
        "keys",
        "set-limits",
        kid,
        "--usage-limit",
        "none",
        "--recurring",
        "10/1/day",
    )
    assert code == 0 and "starts a new period" in err
    code, out, _ = await run_cli(client, monkeypatch, "keys", "show", kid, "--json")
    shown = json.loads(out)
    assert shown["usage_limit"] is None
    assert shown["recurring_limit"] == {"amount": "10", "every": 1, "unit": "day"}
    assert token not in out

    code, _, err = await run_cli(client, monkeypatch, "keys", "delete", kid)
    assert code == 1 and "--yes" in err
    code, out, _ = await run_cli(client, monkeypatch, "keys", "delete", kid, "--yes")
    assert code == 0
    code, _, err = await run_cli(client, monkeypatch, "keys", "show", kid)
    assert code == 1 and "404" in err


async def test_cli_reports_api_errors_and_bad_arguments(
    client: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = await run_cli(
        client, monkeypatch, "projects", "create", "--name", "x", "--key-limit", "3"
    )
    assert code == 1 and "400" in err and "key_limit" in err
    code, _, err = await run_cli(client, monkeypatch, "keys", "set-limits", "key_x")
    assert code == 1 and "--usage-limit" in err
    code, _, err = await run_cli(
        client, monkeypatch, "keys", "set-limits", "key_x", "--recurring", "10-day"
    )
    assert code == 2 and "AMOUNT/EVERY/UNIT" in err


async def test_cli_without_a_reachable_gateway_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDGATE_ADMIN_TOKEN", ADMIN_TOKEN)

    def run() -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["projects", "list", "--url", "http://127.0.0.1:9"])
        return code, err.getvalue()

    code, err = await asyncio.to_thread(run)
    assert code == 1 and "cannot reach" in err


def test_migrate_command_is_idempotent(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPENDGATE_DATABASE_URL", database_url)
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "up to date"


def test_a_bad_setting_stops_the_cli_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPENDGATE_PORT", "eighty")
    assert main(["migrate"]) == 1
    assert "SPENDGATE_PORT" in capsys.readouterr().err


async def test_iam_rules_through_the_cli(
    client: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = await run_cli(client, monkeypatch, "projects", "create", "--name", "a", "--json")
    pid = json.loads(out)["id"]
    code, out, _ = await run_cli(
        client, monkeypatch, "keys", "create", "--project", pid, "--name", "k", "--json"
    )
    kid = json.loads(out)["id"]
    code, out, _ = await run_cli(client, monkeypatch, "keys", "iam", "show", kid)
    assert code == 0 and "no IAM rules" in out
    rules = json.dumps(
        [
            {"effect": "allow", "models": ["gpt-4o*", "mock/*"]},
            {"effect": "deny", "pricing": {"tier": "free"}},
        ]
    )
    code, out, _ = await run_cli(client, monkeypatch, "keys", "iam", "set", kid, rules)
    assert code == 0 and "gpt-4o*, mock/*" in out and '{"tier": "free"}' in out
    code, out, _ = await run_cli(client, monkeypatch, "keys", "iam", "show", kid, "--json")
    assert [r["effect"] for r in json.loads(out)] == ["allow", "deny"]
    code, _, err = await run_cli(
        client, monkeypatch, "keys", "iam", "set", kid, '[{"effect": "allow", "models": []}]'
    )
    assert code == 1 and "[0].models" in err
    code, _, err = await run_cli(client, monkeypatch, "keys", "iam", "set", kid, "not json")
    assert code == 1 and "not valid JSON" in err
    code, out, _ = await run_cli(client, monkeypatch, "keys", "list", "--project", pid)
    assert out.splitlines()[1].split()[-1] == "2"  # the IAM column counts the rules
