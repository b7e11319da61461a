"""The API Keys page in a browser: signing in, creating keys, the plan allowance, limits."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from spendgate.enforcement.tokens import preview
from tests.dashboard.browser import Dashboard, expect, open_dashboard
from tests.gateway_fixtures import Gateway
from tests.helpers import ADMIN_TOKEN, FakeClock, call

TOKEN_SHAPE = re.compile(r"sgk_[0-9A-Za-z]{38}")


async def project(gateway: Gateway, plan: str = "pro", name: str = "acme") -> dict[str, Any]:
    created = await call(gateway.admin, "POST", "/projects", {"name": name, "plan": plan}, 201)
    assert isinstance(created, dict)
    return created


async def keys_of(gateway: Gateway, project_id: str) -> list[dict[str, Any]]:
    listing = await call(gateway.admin, "GET", f"/projects/{project_id}/keys")
    return list(listing["data"])


async def test_the_admin_token_is_kept_for_the_tab_only(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    await project(gateway)
    page = dashboard.page
    await page.goto(dashboard.url)
    await dashboard.sign_in("not-the-admin-token-at-all")
    token_field = page.get_by_label("Admin token")
    await expect(page.locator("#admin-token-error")).to_have_text(
        "The gateway refused this admin token."
    )
    await expect(token_field).to_have_attribute("aria-invalid", "true")
    assert await dashboard.session_storage() == {}
    await dashboard.shot("sign-in-refused")

    await dashboard.sign_in(ADMIN_TOKEN)
    await expect(page.get_by_role("heading", name="API Keys", level=1)).to_be_visible()
    await expect(page.get_by_label("Project", exact=True)).to_have_text("acme (pro)")
    assert await dashboard.session_storage() == {"spendgate.admin_token": ADMIN_TOKEN}
    assert await dashboard.local_storage() == {}
    assert await page.context.cookies() == []
    assert not any(ADMIN_TOKEN in url for url in dashboard.requested)

    await page.reload()  # the same tab: still signed in
    await expect(page.get_by_text("0 of 20 keys used (pro plan)")).to_be_visible()
    await dashboard.shot("keys-empty")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert await dashboard.session_storage() == {}

    # A token the gateway no longer takes (rotated, say) sends the tab back to sign in.
    await page.evaluate("sessionStorage.setItem('spendgate.admin_token', 'rotated-away-token')")
    await page.reload()
    await expect(page.locator("#admin-token-error")).to_have_text(
        "The gateway refused the admin token; sign in again."
    )
    assert await dashboard.session_storage() == {}


async def test_picking_a_project_shows_its_keys_and_survives_a_reload(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    acme = await project(gateway, name="acme")
    beta = await project(gateway, plan="free", name="beta")
    await call(gateway.admin, "POST", f"/projects/{beta['id']}/keys", {"name": "beta-ci"}, 201)
    await dashboard.open(acme["id"])
    page = dashboard.page
    await expect(page.get_by_text("This project has no API keys yet.")).to_be_visible()

    await page.get_by_label("Project", exact=True).select_option(label="beta (free)")
    await expect(dashboard.row("beta-ci")).to_be_visible()
    await expect(page.get_by_text("1 of 5 keys used (free plan)")).to_be_visible()
    assert page.url.endswith(f"#{beta['id']}")
    await page.reload()
    await expect(dashboard.row("beta-ci")).to_be_visible()


async def test_a_created_key_is_shown_once_then_only_masked(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    acme = await project(gateway)
    await dashboard.open(acme["id"])
    page = dashboard.page
    create = page.get_by_role("button", name="Create API Key")
    dialog = dashboard.dialog("Create API Key")

    # Keyboard: Enter opens the dialog with focus on its first field; Escape closes it and
    # focus goes back to the button.
    await create.focus()
    await page.keyboard.press("Enter")
    await expect(dialog.get_by_label("Name")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(create).to_be_focused()

    await create.click()
    await dialog.get_by_label("Name").fill("production")
    await dialog.get_by_label("All-time usage limit").fill("50")
    await dialog.get_by_label("Amount (USD)").fill("500")
    await dialog.get_by_label("Every").fill("13")
    await dialog.get_by_label("Unit").select_option("month")
    await dialog.get_by_role("button", name="Create API Key").click()
    # A window past 12 months is refused in the page, in the server's words.
    await expect(dialog.locator(".field-error:visible")).to_have_text(
        ["must be 1 to 12 for unit month (1 hour to 12 months)"]
    )
    await expect(dialog.get_by_label("Every")).to_be_focused()

    # Money is judged by the server; its error lands beside the field it names.
    await dialog.get_by_label("Every").fill("1")
    await dialog.get_by_label("All-time usage limit").fill("1.0000000001")
    await dialog.get_by_role("button", name="Create API Key").click()
    await expect(dialog.locator(".field-error:visible")).to_have_text(["has more than 9 decimals"])
    await expect(dialog.get_by_label("All-time usage limit")).to_have_attribute(
        "aria-invalid", "true"
    )
    await dashboard.shot("create-key-field-error")
    assert await keys_of(gateway, acme["id"]) == []

    await dialog.get_by_label("All-time usage limit").fill("50")
    await dialog.get_by_role("button", name="Create API Key").click()
    dialog = dashboard.dialog("Your new API key")
    token_field = dialog.get_by_label("API key", exact=True)
    await expect(token_field).to_have_value(TOKEN_SHAPE)
    token = await token_field.input_value()
    await expect(dialog.get_by_text("It is shown in full only this once")).to_be_visible()
    await dialog.get_by_role("button", name="Copy").click()
    await expect(dialog.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == token
    await dashboard.shot("create-key-token-once")

    await dialog.get_by_role("button", name="Done").click()
    await expect(dialog).to_be_hidden()
    assert token not in await page.content()
    assert token not in str(await dashboard.session_storage())
    assert not any(token in url for url in dashboard.requested)

    row = dashboard.row("production")
    await expect(row.locator('[data-label="API Key"]')).to_have_text(preview(token))
    await expect(dashboard.cell("production", "Status")).to_have_text("Active")
    await expect(dashboard.cell("production", "Usage")).to_have_text("$0 of $50")
    await expect(dashboard.cell("production", "Limits")).to_have_text(
        "$50 all-time · $500 / 1 month"
    )
    await expect(dashboard.cell("production", "Current Period")).to_contain_text(
        "$0 of $500 resets 2026-02-28 10:00 UTC"  # a month from the fake clock's Jan 31
    )
    await expect(dashboard.cell("production", "IAM Rules")).to_have_text("Not configured")
    await expect(page.get_by_text("1 of 20 keys used (pro plan)")).to_be_visible()
    await dashboard.shot("keys-list-masked")

    # The token shown was the real one.
    answer = await gateway.sdk(token).chat.completions.create(
        model="mock/echo-1", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    [stored] = await keys_of(gateway, acme["id"])
    assert stored["usage_limit"] == "50"
    assert stored["recurring_limit"] == {"amount": "500", "every": 1, "unit": "month"}


async def test_at_the_plan_limit_create_is_disabled_with_the_reason(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    free = await project(gateway, plan="free", name="hobby")
    for number in range(4):
        await call(
            gateway.admin, "POST", f"/projects/{free['id']}/keys", {"name": f"k{number}"}, 201
        )
    await dashboard.open(free["id"])
    page = dashboard.page
    create = page.get_by_role("button", name="Create API Key")
    await expect(page.get_by_text("4 of 5 keys used (free plan)")).to_be_visible()
    await expect(create).to_be_enabled()

    await create.click()
    dialog = dashboard.dialog("Create API Key")
    await dialog.get_by_label("Name").fill("the fifth")
    await dialog.get_by_role("button", name="Create API Key").click()
    dialog = dashboard.dialog("Your new API key")
    await expect(dialog.get_by_label("API key", exact=True)).to_have_value(TOKEN_SHAPE)
    await dialog.get_by_role("button", name="Done").click()

    await expect(page.get_by_text("5 of 5 keys used (free plan)")).to_be_visible()
    await expect(create).to_be_disabled()
    reason = page.locator("#create-blocked")
    await expect(reason).to_have_text(
        "This project has reached its free plan's limit of 5 API keys. "
        "Delete unused keys or upgrade the plan to create another."
    )
    await expect(create).to_have_attribute("aria-describedby", "create-blocked")
    await dashboard.shot("plan-limit-reached")

    # Deleting a key, after confirming, makes room again.
    await dashboard.act("k0", "Delete")
    confirm = dashboard.dialog("Delete API key k0")
    await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    await dashboard.shot("delete-confirm")
    await confirm.get_by_role("button", name="Delete key").click()
    await expect(confirm).to_be_hidden()
    await expect(dashboard.row("k0")).to_have_count(0)
    await expect(page.get_by_text("4 of 5 keys used (free plan)")).to_be_visible()
    await expect(create).to_be_enabled()
    names = sorted(key["name"] for key in await keys_of(gateway, free["id"]))
    assert names == ["k1", "k2", "k3", "the fifth"]


async def test_updating_limits_sends_only_what_changed(
    dashboard: Dashboard, gateway: Gateway, clock: FakeClock
) -> None:
    acme = await project(gateway)
    body = {"name": "ci", "recurring_limit": {"amount": "10", "every": 1, "unit": "day"}}
    key = await call(gateway.admin, "POST", f"/projects/{acme['id']}/keys", body, 201)
    started = key["current_period"]["started_at"]
    clock.advance(timedelta(hours=3))
    await dashboard.open(acme["id"])
    dialog = dashboard.dialog("Update limits of ci")

    await dashboard.act("ci", "Update limits")
    await expect(dialog.get_by_label("Amount (USD)")).to_have_value("10")
    await expect(dialog.get_by_text("starts a new window now")).to_be_visible()
    await dialog.get_by_label("All-time usage limit").fill("25.50")
    await dialog.get_by_role("button", name="Save limits").click()
    await expect(dialog).to_be_hidden()
    await expect(dashboard.cell("ci", "Limits")).to_have_text("$25.5 all-time · $10 / 1 day")
    after = await gateway.get_key(key["id"])
    assert after["current_period"]["started_at"] == started  # the window went on

    await dashboard.act("ci", "Update limits")
    await dialog.get_by_label("Amount (USD)").fill("12")
    await dialog.get_by_label("Every").fill("2")
    await dialog.get_by_label("Unit").select_option("week")
    await dashboard.shot("update-limits")
    await dialog.get_by_role("button", name="Save limits").click()
    await expect(dialog).to_be_hidden()
    await expect(dashboard.cell("ci", "Limits")).to_have_text("$25.5 all-time · $12 / 2 weeks")
    await expect(dashboard.row("ci").get_by_role("button", name="Update limits")).to_be_focused()
    after = await gateway.get_key(key["id"])
    assert after["current_period"]["started_at"] == "2026-01-31T13:00:00Z"  # a new window

    await dashboard.act("ci", "Update limits")
    await dialog.get_by_label("All-time usage limit").fill("")
    await dialog.get_by_label("Amount (USD)").fill("")
    await dialog.get_by_role("button", name="Save limits").click()
    await expect(dashboard.cell("ci", "Limits")).to_have_text("No limits")
    await expect(dashboard.cell("ci", "Current Period")).to_have_text("No recurring limit")


async def test_the_list_reads_on_a_narrow_screen(gateway: Gateway) -> None:
    acme = await project(gateway)
    body = {"name": "production", "usage_limit": "500"}
    await call(gateway.admin, "POST", f"/projects/{acme['id']}/keys", body, 201)
    async with open_dashboard(gateway, width=390, height=844) as dashboard:
        await dashboard.open(acme["id"])
        await expect(dashboard.cell("production", "Limits")).to_be_visible()
        overflow = await dashboard.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow == 0
        # Each key is a card whose cells name their column.
        label = await dashboard.cell("production", "Limits").evaluate(
            "cell => getComputedStyle(cell, '::before').content"
        )
        assert label == '"Limits"'
        await dashboard.shot("narrow-screen")
