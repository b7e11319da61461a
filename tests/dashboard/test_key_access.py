"""What the page does to real traffic: a proxied request (the official openai SDK through
the gateway, the built-in mock provider behind it) refused once the page disables a key or
denies a model, and the usage details of real requests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import openai
import pytest

from spendgate.enforcement.money import format_usd
from tests.dashboard.browser import Dashboard, expect
from tests.gateway_fixtures import Gateway, ledger
from tests.helpers import FakeClock, call

MESSAGES: Any = [{"role": "user", "content": "hello"}]


async def new_key(gateway: Gateway, name: str = "production") -> dict[str, Any]:
    project = await call(gateway.admin, "POST", "/projects", {"name": "acme", "plan": "pro"}, 201)
    body = {"name": name}
    key = await call(gateway.admin, "POST", f"/projects/{project['id']}/keys", body, 201)
    assert isinstance(key, dict)
    return key


async def ask(client: openai.AsyncOpenAI, model: str = "mock/echo-1") -> str:
    """One chat completion; its x-request-id."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=8
    )
    raw.parse()
    return raw.headers["x-request-id"]


async def test_disabling_a_key_refuses_its_requests_until_it_is_enabled(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    key = await new_key(gateway)
    client = gateway.sdk(key["key"])
    await ask(client)
    await dashboard.open(key["project_id"])

    await dashboard.act("production", "Disable")
    await expect(dashboard.cell("production", "Status")).to_have_text("Inactive")
    toggle = dashboard.row("production").get_by_role("button", name="Enable")
    await expect(toggle).to_be_focused()  # the same place, now saying Enable
    await dashboard.shot("key-disabled")
    with pytest.raises(openai.AuthenticationError) as refused:
        await ask(client)
    assert refused.value.code == "api_key_disabled"

    await toggle.click()
    await expect(dashboard.cell("production", "Status")).to_have_text("Active")
    await dashboard.shot("key-enabled")
    assert (await gateway.get_key(key["id"]))["status"] == "active"
    await ask(client)


async def test_iam_rules_set_in_the_page_refuse_a_denied_model(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    key = await new_key(gateway)
    client = gateway.sdk(key["key"])
    await dashboard.open(key["project_id"])
    dialog = dashboard.dialog("IAM rules of production")

    await dashboard.act("production", "IAM rules")
    await expect(dialog.get_by_text("No rules: this key may use every model.")).to_be_visible()
    await dialog.get_by_role("button", name="Add rule").click()
    rule = dialog.get_by_role("group", name="Rule 1")
    await rule.get_by_label("Effect").select_option("deny")
    await rule.get_by_label("Models (comma-separated)").fill("mock/echo-1")
    await dialog.get_by_role("button", name="Save rules").click()
    await expect(dialog).to_be_hidden()
    await expect(dashboard.cell("production", "IAM Rules")).to_have_text("Configured (1 rule)")

    with pytest.raises(openai.PermissionDeniedError) as denied:
        await ask(client, "mock/echo-1")
    assert denied.value.code == "model_not_allowed"
    await ask(client, "mock/free-1")

    # The rules come back into the editor; a bad ceiling is refused beside its field and
    # changes nothing.
    await dashboard.act("production", "IAM rules")
    await expect(rule.get_by_label("Models (comma-separated)")).to_have_value("mock/echo-1")
    await expect(rule.get_by_label("Effect")).to_have_value("deny")
    await dialog.get_by_role("button", name="Add rule").click()
    pricing = dialog.get_by_role("group", name="Rule 2")
    await pricing.get_by_label("Applies to").select_option("pricing")
    await pricing.get_by_label("Tier").select_option("paid")
    ceiling = pricing.get_by_label("Max input price (USD / 1M tokens)")
    await ceiling.fill("cheap")
    await dialog.get_by_role("button", name="Save rules").click()
    await expect(pricing.locator(".field-error:visible")).to_have_text(
        ["USD per million tokens: must be a decimal string or number in USD"]
    )
    await expect(ceiling).to_be_focused()
    await dashboard.shot("iam-rules-field-error")
    assert len(await call(gateway.admin, "GET", f"/keys/{key['id']}/iam-rules")) == 1

    await ceiling.fill("0.50")
    await dialog.get_by_role("button", name="Save rules").click()
    await expect(dialog).to_be_hidden()
    await expect(dashboard.cell("production", "IAM Rules")).to_have_text("Configured (2 rules)")
    rules = await call(gateway.admin, "GET", f"/keys/{key['id']}/iam-rules")
    assert [{k: v for k, v in r.items() if k != "id"} for r in rules] == [
        {"effect": "deny", "status": "active", "models": ["mock/echo-1"]},
        {
            "effect": "allow",
            "status": "active",
            "pricing": {"tier": "paid", "max_input_per_mtok": "0.5"},
        },
    ]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await ask(client, "mock/free-1")  # free tier: no allow rule of pricing matches
    assert denied.value.code == "pricing_not_allowed"
    await dashboard.act("production", "IAM rules")
    await dashboard.shot("iam-rules-editor")


async def test_usage_details_show_real_traffic_by_day_and_page(
    dashboard: Dashboard, gateway: Gateway, clock: FakeClock, db: asyncpg.Connection
) -> None:
    key = await new_key(gateway)
    client = gateway.sdk(key["key"])
    sent = [await ask(client) for _ in range(5)]  # 2026-01-31
    clock.advance(timedelta(days=2))
    sent += [await ask(client) for _ in range(7)]  # 2026-02-02
    clock.advance(timedelta(minutes=1))
    rows = await ledger(db, key["id"], len(sent))
    assert {row["request_id"] for row in rows} == set(sent)
    cost = format_usd(sum(row["cost_nano"] for row in rows))
    day_cost = format_usd(rows[0]["cost_nano"] * 5)  # every request costs the same

    await dashboard.open(key["project_id"])
    await expect(dashboard.cell("production", "Usage")).to_have_text(f"${cost}")
    await dashboard.act("production", "Usage details")
    dialog = dashboard.dialog("Usage details of production")
    totals = dialog.locator("#usage-totals")
    prompt = sum(row["prompt_tokens"] for row in rows)
    completion = sum(row["completion_tokens"] for row in rows)
    await expect(totals.locator("dd")).to_have_text(
        ["12", f"${cost}", str(prompt), str(completion)]
    )
    await expect(dialog.locator("svg.bars rect.bar title")).to_have_text(
        [
            f"2026-01-31: ${day_cost}, 5 requests",
            "2026-02-01: $0, 0 requests",
            f"2026-02-02: ${format_usd(rows[0]['cost_nano'] * 7)}, 7 requests",
        ]
    )
    by_model = dialog.locator("#usage-models tbody tr").locator("th, td")
    await expect(by_model).to_have_text(["mock/echo-1", "12", f"${cost}"])

    # A page at a time, newest first.
    await dialog.get_by_label("Rows per page").select_option("10")
    requests = dialog.locator("#usage-requests tbody tr")
    await expect(requests).to_have_count(10)
    await expect(dialog.get_by_text("Page 1", exact=True)).to_be_visible()
    await expect(dialog.get_by_role("button", name="Newer")).to_be_disabled()
    first_page = await requests.evaluate_all("rows => rows.map(row => row.dataset.requestId)")
    assert set(first_page[:7]) == set(sent[5:])  # the newest day first
    await dialog.evaluate("dialog => dialog.scrollTo(0, 0)")
    await dashboard.shot("usage-details")

    await dialog.get_by_role("button", name="Older").click()
    await expect(dialog.get_by_text("Page 2", exact=True)).to_be_visible()
    await expect(requests).to_have_count(2)
    await expect(dialog.get_by_role("button", name="Older")).to_be_disabled()
    await expect(dialog.get_by_role("button", name="Newer")).to_be_focused()
    second_page = await requests.evaluate_all("rows => rows.map(row => row.dataset.requestId)")
    assert set(first_page) | set(second_page) == set(sent)
    await expect(requests.first).to_contain_text("2026-01-31")
    await dashboard.shot("usage-details-page-2")

    await dialog.get_by_role("button", name="Newer").click()
    await expect(requests).to_have_count(10)
    await dashboard.page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(
        dashboard.row("production").get_by_role("button", name="Usage details")
    ).to_be_focused()
