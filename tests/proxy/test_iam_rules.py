"""IAM rules over the admin API and their effect on proxied calls, with the openai SDK."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers import call
from tests.proxy.conftest import Gateway, GatewayFactory, ledger

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def set_rules(gateway: Gateway, key_id: str, rules: Any, status: int = 200) -> Any:
    return await call(gateway.admin, "PUT", f"/keys/{key_id}/iam-rules", rules, status)


async def chat(gateway: Gateway, token: str, model: str) -> str:
    """ "ok", or the error code of the refusal."""
    try:
        await gateway.sdk(token).chat.completions.create(model=model, messages=HI)
    except openai.PermissionDeniedError as denied:
        body = denied.body
        assert isinstance(body, dict) and body["type"] == "permission_error"
        return str(body["code"])
    return "ok"


async def test_rules_are_stored_with_server_ids_and_counted_in_the_key_list(
    gateway: Gateway,
) -> None:
    key = await gateway.key()
    stored = await set_rules(
        gateway,
        key["id"],
        [
            {"effect": "allow", "models": ["mock/*"]},
            {"effect": "deny", "pricing": {"tier": "free"}, "status": "inactive"},
        ],
    )
    assert [r["id"].startswith("rule_") for r in stored] == [True, True]
    assert stored[0] == {
        "id": stored[0]["id"],
        "effect": "allow",
        "status": "active",
        "models": ["mock/*"],
    }
    assert stored[1]["pricing"] == {"tier": "free"} and stored[1]["status"] == "inactive"
    assert await call(gateway.admin, "GET", f"/keys/{key['id']}/iam-rules") == stored
    got = await gateway.get_key(key["id"])
    assert got["iam_rules"] == stored and got["iam_rules_count"] == 2
    listed = await call(gateway.admin, "GET", f"/projects/{key['project_id']}/keys")
    assert listed["data"][0]["iam_rules_count"] == 2
    assert await set_rules(gateway, key["id"], []) == []
    assert (await gateway.get_key(key["id"]))["iam_rules_count"] == 0


@pytest.mark.parametrize(
    ("rules", "param"),
    [
        ([{"effect": "allow", "kinds": ["x"]}], "[0].kinds"),
        ([{"effect": "allow", "models": ["a"], "providers": ["b"]}], "[0]"),
        ([{"effect": "allow", "models": []}], "[0].models"),
        ([{"effect": "allow", "providers": []}], "[0].providers"),
        (
            [
                {"effect": "allow", "models": ["a"]},
                {"effect": "deny", "pricing": {"max_input_per_mtok": "-1"}},
            ],
            "[1].pricing.max_input_per_mtok",
        ),
        ([{"effect": "allow", "pricing": {"tier": "premium"}}], "[0].pricing.tier"),
        ({"effect": "allow", "models": ["a"]}, None),
    ],
)
async def test_bad_rules_are_400_naming_the_field_and_the_old_rules_stay(
    gateway: Gateway, rules: Any, param: str | None
) -> None:
    key = await gateway.key()
    old = await set_rules(gateway, key["id"], [{"effect": "deny", "models": ["mock/free-1"]}])
    error = (await set_rules(gateway, key["id"], rules, 400))["error"]
    assert error["param"] == param
    assert await call(gateway.admin, "GET", f"/keys/{key['id']}/iam-rules") == old
    assert await chat(gateway, key["key"], "mock/free-1") == "model_not_allowed"


async def test_rules_of_an_unknown_key_are_404(gateway: Gateway) -> None:
    await call(gateway.admin, "GET", "/keys/key_nope/iam-rules", status=404)
    await set_rules(gateway, "key_nope", [], 404)


@pytest.mark.parametrize(
    ("rules", "outcomes"),
    [
        (
            [{"effect": "allow", "models": ["echo-1"]}],
            {"echo-1": "ok", "free-1": "model_not_allowed"},
        ),
        (
            [{"effect": "deny", "models": ["mock/free-*"]}],
            {"echo-1": "ok", "free-1": "model_not_allowed"},
        ),
        ([{"effect": "allow", "providers": ["mock"]}], {"echo-1": "ok", "free-1": "ok"}),
        (
            [{"effect": "deny", "providers": ["mock"]}],
            {"echo-1": "provider_not_allowed", "free-1": "provider_not_allowed"},
        ),
        (
            [{"effect": "allow", "pricing": {"tier": "free"}}],
            {"echo-1": "pricing_not_allowed", "free-1": "ok"},
        ),
        (
            [{"effect": "deny", "pricing": {"tier": "free"}}],
            {"echo-1": "ok", "free-1": "pricing_not_allowed"},
        ),
        # echo-1 costs exactly $1 per million input tokens: a "1.00" ceiling lets it in.
        (
            [{"effect": "allow", "pricing": {"max_input_per_mtok": "1.00"}}],
            {"echo-1": "ok", "free-1": "ok"},
        ),
        (
            [{"effect": "allow", "pricing": {"max_input_per_mtok": "0.99"}}],
            {"echo-1": "pricing_not_allowed", "free-1": "ok"},
        ),
        (
            [{"effect": "deny", "pricing": {"max_output_per_mtok": "1"}}],
            {"echo-1": "ok", "free-1": "pricing_not_allowed"},
        ),
        (
            [{"effect": "deny", "providers": ["mock"], "status": "inactive"}],
            {"echo-1": "ok", "free-1": "ok"},
        ),
        (
            [{"effect": "allow", "models": ["mock/echo-1"]}, {"effect": "deny", "models": ["*"]}],
            {"echo-1": "model_not_allowed", "free-1": "model_not_allowed"},
        ),
    ],
)
async def test_each_rule_type_both_ways(
    gateway: Gateway, rules: Any, outcomes: dict[str, str]
) -> None:
    key = await gateway.key()
    await set_rules(gateway, key["id"], rules)
    for model, expected in outcomes.items():
        assert await chat(gateway, key["key"], model) == expected, model
        assert await chat(gateway, key["key"], "mock/" + model) == expected, model


async def test_a_denial_names_its_rule_and_costs_nothing(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    key = await gateway.key()
    stored = await set_rules(gateway, key["id"], [{"effect": "deny", "models": ["echo-*"]}])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await gateway.sdk(key["key"]).chat.completions.create(model="mock/echo-1", messages=HI)
    assert stored[0]["id"] in str(denied.value.body)
    await asyncio.sleep(0.3)
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 0
    assert (await gateway.get_key(key["id"]))["usage"] == "0"


async def test_models_lists_only_what_the_key_may_use(gateway: Gateway) -> None:
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    everything = {m.id for m in (await sdk.models.list()).data}
    assert {"mock/echo-1", "mock/free-1", "mock/embed-1"} <= everything
    await set_rules(gateway, key["id"], [{"effect": "allow", "pricing": {"tier": "paid"}}])
    assert {m.id for m in (await sdk.models.list()).data} == everything - {"mock/free-1"}


async def test_rule_changes_reach_other_replicas_at_once(make_gateway: GatewayFactory) -> None:
    one = await make_gateway()
    two = await make_gateway()
    key = await one.key()
    assert await chat(two, key["key"], "mock/echo-1") == "ok"  # cached in replica two
    await set_rules(one, key["id"], [{"effect": "deny", "models": ["*"]}])
    async with asyncio.timeout(2):  # the invalidation message travels through Redis
        while await chat(two, key["key"], "mock/echo-1") != "model_not_allowed":
            await asyncio.sleep(0.02)


async def test_completions_and_embeddings_are_charged_like_chat(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    key = await gateway.key()
    sdk = gateway.sdk(key["key"])
    completion = await sdk.completions.create(model="mock/echo-1", prompt="abcdefgh", max_tokens=4)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 4)
    embedding = await sdk.embeddings.create(model="mock/embed-1", input=["abcd", "efghijkl"])
    assert embedding.usage.prompt_tokens == 3 and len(embedding.data) == 2
    with pytest.raises(openai.NotFoundError):  # a chat model cannot embed
        await sdk.embeddings.create(model="mock/echo-1", input="x")
    rows = await ledger(db, key["id"], 2)
    assert sorted(r["cost_nano"] for r in rows) == [3 * 100, 2 * 1000 + 4 * 2000]
    assert (await gateway.get_key(key["id"]))["usage"] == "0.0000103"
