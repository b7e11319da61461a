"""Logs: one JSON line per proxied request, and never a token, a credential or a prompt."""

from __future__ import annotations

import logging

import openai
import orjson
import pytest

from spendgate.enforcement.tokens import generate_token
from spendgate.proxy.logs import JsonFormatter
from tests.helpers import ADMIN_TOKEN, call
from tests.proxy.conftest import UPSTREAM_KEY, FakeGatewayFactory

SECRET = "server-secret-for-log-tests"
OWN_KEY = "sk-byok-credential-in-logs-test"
PROMPT = "the-secret-plans-of-project-zebra"


async def test_a_run_logs_requests_and_no_secret_or_prompt(
    via_fake: FakeGatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, gateway = await via_fake(secret_key=SECRET)
    key = await gateway.key(usage_limit="0.00005")
    await call(
        gateway.admin, "PUT", f"/projects/{key['project_id']}/providers/fake", {"api_key": OWN_KEY}
    )
    sdk = gateway.sdk(key["key"])
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": PROMPT}
    ]
    await sdk.chat.completions.create(model="mock/echo-1", messages=messages)
    stream = await sdk.chat.completions.create(model="fake/m1", messages=messages, stream=True)
    async for _ in stream:
        pass
    for failing in (
        sdk.chat.completions.create(model="mock/echo-1", messages=messages),  # limit
        gateway.sdk(generate_token()).chat.completions.create(
            model="mock/echo-1", messages=messages
        ),
        sdk.chat.completions.create(model="nope", messages=messages),
    ):
        with pytest.raises(openai.APIStatusError):
            await failing
    fake.mode = "error_500"
    other = await gateway.key()
    with pytest.raises(openai.InternalServerError):
        await gateway.sdk(other["key"]).chat.completions.create(model="fake/m1", messages=messages)

    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    text = "\n".join(lines)
    for secret in (
        key["key"],
        key["key"][4:],
        other["key"],
        ADMIN_TOKEN,
        UPSTREAM_KEY,
        OWN_KEY,
        SECRET,
        PROMPT,
    ):
        assert secret not in text

    requests = [orjson.loads(line) for line in lines if '"logger":"spendgate.access"' in line]
    assert [r["status"] for r in requests] == [200, 200, 429, 401, 404, 500]
    first = requests[0]
    assert first["msg"] == "request" and first["level"] == "info"
    assert first["request_id"].startswith("req_")
    assert (first["key_id"], first["project_id"]) == (key["id"], key["project_id"])
    assert (first["model"], first["provider"], first["outcome"]) == (
        "mock/echo-1",
        "mock",
        "forwarded",
    )
    assert first["cost"] == "0.000041" and first["duration_ms"] > 0
    assert requests[1]["stream"] is True and requests[1]["provider"] == "fake"
    assert requests[3]["key_id"] is None and requests[3]["outcome"] == "auth_failed"
    assert requests[5]["outcome"] == "upstream_error"
