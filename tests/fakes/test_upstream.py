"""The fake upstream behaves as its modes promise, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pytest_aiohttp import AiohttpServer

from spendgate.enforcement.usage import Usage
from spendgate.proxy.sse import DONE, EventSplitter, count_output
from tests.fakes.upstream import FakeUpstream
from tests.helpers import usage_of, usage_only

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM_BODY = CHAT_BODY | {"stream": True, "stream_options": {"include_usage": True}}


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def base_url(fake: FakeUpstream, aiohttp_server: AiohttpServer) -> str:
    server = await aiohttp_server(fake.app())
    return str(server.make_url("/v1"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body, headers={"Authorization": "Bearer sk-up"}) as resp:
        return resp.status, await resp.json()


async def stream(session: aiohttp.ClientSession, url: str, body: Any) -> list[bytes]:
    splitter = EventSplitter()
    events: list[bytes] = []
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        async for piece in resp.content.iter_any():
            events += splitter.feed(piece)
    assert splitter.remainder() == b""
    return events


async def test_ok_chat_records_the_request_and_reports_the_configured_usage(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.prompt_tokens, fake.completion_tokens, fake.cached_tokens = 30, 3, 20
    status, body = await post(session, base_url + "/chat/completions", CHAT_BODY)
    assert status == 200
    reply = ChatCompletion.model_validate(body)
    assert reply.choices[0].message.content == "w0 w1 w2"
    assert Usage.from_openai(body["usage"]) == Usage(30, 3, 20)
    [received] = fake.requests
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.headers["authorization"] == "Bearer sk-up"
    assert received.json == CHAT_BODY


async def test_ok_stream_speaks_openai_sse(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    events = await stream(session, base_url + "/chat/completions", STREAM_BODY)
    assert events[-1] == DONE
    assert count_output(b"".join(events)) == fake.completion_tokens
    assert all(b'"usage":null' in event for event in events[:-2])
    assert usage_only(events[-2])
    assert usage_of(events[-2]) == Usage(10, 5)
    chunks = [ChatCompletionChunk.model_validate_json(event[6:]) for event in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "w0 w1 w2 w3 w4"
    )


async def test_a_stream_has_no_usage_unless_asked(
    base_url: str, session: aiohttp.ClientSession
) -> None:
    events = await stream(session, base_url + "/chat/completions", CHAT_BODY | {"stream": True})
    assert events[-1] == DONE
    assert not any(b'"usage"' in event for event in events)


async def test_no_usage_ignores_include_usage(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.mode = "no_usage"
    events = await stream(session, base_url + "/chat/completions", STREAM_BODY)
    assert events[-1] == DONE
    assert count_output(b"".join(events)) == 5
    assert not any(b'"usage"' in event for event in events)
    status, body = await post(session, base_url + "/chat/completions", CHAT_BODY)
    assert status == 200 and "usage" not in body


@pytest.mark.parametrize(
    ("mode", "status", "type_"),
    [("error_500", 500, "server_error"), ("error_400", 400, "invalid_request_error")],
)
async def test_error_modes_answer_an_openai_error(
    fake: FakeUpstream,
    base_url: str,
    session: aiohttp.ClientSession,
    mode: Any,
    status: int,
    type_: str,
) -> None:
    fake.mode = mode
    for path, body in [("/chat/completions", STREAM_BODY), ("/embeddings", {"input": "x"})]:
        got, error = await post(session, base_url + path, body)
        assert got == status
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert error["error"]["type"] == type_
    assert len(fake.requests) == 2  # still recorded


async def test_malformed_json(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.mode = "malformed_json"
    async with session.post(base_url + "/chat/completions", json=CHAT_BODY) as resp:
        assert resp.status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await resp.read())
    events = await stream(session, base_url + "/chat/completions", STREAM_BODY)
    assert events[-1] == DONE
    assert b'"usage"' in events[-2]
    assert usage_of(events[-2]) is None  # not valid JSON


async def test_cut_stream_drops_the_connection_before_done(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.mode, fake.cut_after = "cut_stream", 3
    splitter = EventSplitter()
    events: list[bytes] = []
    async with session.post(base_url + "/chat/completions", json=STREAM_BODY) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in resp.content.iter_any():
                events += splitter.feed(piece)
    assert count_output(b"".join(events)) == 3
    assert len(events) == 4  # the role chunk and three content chunks, no [DONE]
    assert not any(usage_of(event) for event in events)


async def test_cut_json_body(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.mode = "cut_stream"
    async with session.post(base_url + "/chat/completions", json=CHAT_BODY) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_slow_first_byte_delays_the_headers(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.mode, fake.delay = "slow_first_byte", 0.3
    timeout = aiohttp.ClientTimeout(sock_read=0.1)
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(base_url + "/chat/completions", json=CHAT_BODY, timeout=timeout):
            pass
    fake.delay = 0.05
    assert (await post(session, base_url + "/chat/completions", CHAT_BODY))[0] == 200


async def test_slow_stream_waits_between_events(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.mode, fake.delay, fake.completion_tokens = "slow_stream", 0.05, 2
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.post(base_url + "/chat/completions", json=STREAM_BODY) as resp:
        first = await resp.content.readuntil(b"\n\n")
        first_at = loop.time() - started
        rest = await resp.read()
    total = loop.time() - started
    assert b'"role":"assistant"' in first
    assert first_at < 0.05  # the first event comes at once
    # role, 2 content, finish, usage, [DONE]: five waits after the first event
    assert total >= 5 * 0.05
    assert rest.endswith(DONE)


async def test_completions_embeddings_and_models(
    fake: FakeUpstream, base_url: str, session: aiohttp.ClientSession
) -> None:
    status, body = await post(session, base_url + "/completions", {"model": "m", "prompt": "x"})
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "w0 w1 w2 w3 w4"
    events = await stream(
        session, base_url + "/completions", {"model": "m", "prompt": "x"} | STREAM_BODY
    )
    assert count_output(b"".join(events)) == 5
    assert usage_of(events[-2]) == Usage(10, 5)

    status, body = await post(
        session, base_url + "/embeddings", {"model": "e", "input": ["a", "b"]}
    )
    assert status == 200
    assert len(CreateEmbeddingResponse.model_validate(body).data) == 2

    async with session.get(base_url + "/models") as resp:
        models = await resp.json()
    assert [model["id"] for model in models["data"]] == fake.models
    assert [r.path for r in fake.requests][-1] == "/v1/models"
