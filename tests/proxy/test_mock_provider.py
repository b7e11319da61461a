from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pytest_aiohttp import AiohttpServer

from spendgate.enforcement.usage import Usage
from spendgate.proxy.mock_provider import MockProvider, MockReply
from spendgate.proxy.sse import DONE, EventSplitter, count_output
from tests.helpers import usage_of, usage_only

CHAT = "/chat/completions"


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def json_of(reply: MockReply) -> Any:
    assert reply.chunks is None and reply.body is not None
    assert reply.headers["Content-Type"] == "application/json"
    return orjson.loads(reply.body)


async def events_of(reply: MockReply) -> list[bytes]:
    assert reply.status == 200 and reply.body is None and reply.chunks is not None
    assert reply.headers["Content-Type"] == "text/event-stream"
    raw = b"".join([piece async for piece in reply.chunks])
    splitter = EventSplitter()
    events = splitter.feed(raw)
    assert splitter.remainder() == b""
    return events


async def chat(**body: Any) -> Any:
    reply = await MockProvider().handle(CHAT, {"model": "echo-1"} | body)
    assert reply.status == 200, reply.body
    return await json_of(reply)


# --- token counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "prompt_tokens"),
    [
        ([user("hi")], 1),  # 2 bytes
        ([user("")], 1),  # at least 1
        ([user("abcd")], 1),
        ([user("abcde")], 2),
        ([user("123456789")], 3),  # 9 bytes
        ([user("é" * 4)], 2),  # 8 bytes of UTF-8 in 4 characters
        ([user("日本語")], 3),  # 9 bytes
        ([user("😀😀")], 2),  # 8 bytes
        ([{"role": "system", "content": "abcd"}, user("efgh")], 2),  # all messages count
        ([user([{"type": "text", "text": "abcd"}, {"type": "text", "text": "e"}])], 2),
        (
            [
                user(
                    [
                        {"type": "image_url", "image_url": {"url": "x" * 400}},
                        {"type": "text", "text": "hi"},
                    ]
                )
            ],
            1,
        ),
        ([user("abcd"), {"role": "assistant", "content": None, "tool_calls": []}], 1),
    ],
)
async def test_prompt_tokens_are_utf8_bytes_over_4_rounded_up(
    messages: list[dict[str, Any]], prompt_tokens: int
) -> None:
    usage = (await chat(messages=messages))["usage"]
    assert usage["prompt_tokens"] == prompt_tokens


@pytest.mark.parametrize(
    ("limits", "completion_tokens", "finish_reason"),
    [
        ({}, 16, "stop"),
        ({"max_tokens": 5}, 5, "length"),
        ({"max_tokens": 1}, 1, "length"),
        ({"max_tokens": 16}, 16, "length"),
        ({"max_tokens": 1000}, 16, "stop"),
        ({"max_completion_tokens": 3}, 3, "length"),
        ({"max_tokens": 9, "max_completion_tokens": 4}, 4, "length"),  # max_completion_tokens wins
        ({"max_tokens": 4, "max_completion_tokens": 9}, 9, "length"),
        ({"max_tokens": None}, 16, "stop"),
        ({"max_tokens": "5"}, 16, "stop"),  # invalid counts as absent
        ({"max_tokens": 0}, 16, "stop"),
        ({"max_tokens": True}, 16, "stop"),
        ({"max_tokens": 2.0}, 16, "stop"),
        ({"max_tokens": 6, "max_completion_tokens": "x"}, 6, "length"),
    ],
)
async def test_completion_tokens(
    limits: dict[str, Any], completion_tokens: int, finish_reason: str
) -> None:
    reply = await chat(messages=[user("one two three")], **limits)
    assert reply["usage"]["completion_tokens"] == completion_tokens
    assert reply["usage"]["total_tokens"] == 4 + completion_tokens
    content = reply["choices"][0]["message"]["content"]
    assert len(content.split()) == completion_tokens  # one word per token
    assert reply["choices"][0]["finish_reason"] == finish_reason


async def test_the_answer_echoes_the_last_user_message() -> None:
    messages = [user("first words"), {"role": "assistant", "content": "x"}, user("alpha beta")]
    reply = await chat(messages=messages, max_tokens=5)
    assert reply["choices"][0]["message"] == {
        "role": "assistant",
        "content": "alpha beta alpha beta alpha",
        "refusal": None,
    }


async def test_n_choices_multiply_completion_tokens() -> None:
    reply = await chat(messages=[user("hello")], max_tokens=3, n=2)
    parsed = ChatCompletion.model_validate(reply)  # the SDK's own type: wire compatible
    assert [choice.index for choice in parsed.choices] == [0, 1]
    assert [choice.message.content for choice in parsed.choices] == ["hello hello hello"] * 2
    assert reply["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 6,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


async def test_completions_count_the_prompt_strings() -> None:
    provider = MockProvider()
    one = await json_of(
        await provider.handle("/completions", {"model": "free-1", "prompt": "héllo"})
    )
    assert one["usage"]["prompt_tokens"] == 2  # 6 bytes
    assert one["usage"]["completion_tokens"] == 16
    body = {"model": "echo-1", "prompt": ["abcd", "efgh", "i"], "max_tokens": 2}
    many = await json_of(await provider.handle("/completions", body))
    assert many["usage"]["prompt_tokens"] == 3  # 9 bytes over all prompts
    # one choice per prompt, as OpenAI does
    assert [c["text"] for c in many["choices"]] == ["abcd abcd", "efgh efgh", "i i"]
    assert many["usage"]["completion_tokens"] == 6
    Completion.model_validate(many)


async def test_embeddings_count_the_input_strings() -> None:
    provider = MockProvider()
    body = {"model": "embed-1", "input": ["abc", "défg"]}
    reply = await json_of(await provider.handle("/embeddings", body))
    assert reply["usage"] == {"prompt_tokens": 2, "total_tokens": 2}  # 3 + 5 bytes
    parsed = CreateEmbeddingResponse.model_validate(reply)
    assert [item.index for item in parsed.data] == [0, 1]
    assert all(len(item.embedding) == 8 for item in parsed.data)
    assert parsed.data[0].embedding != parsed.data[1].embedding
    again = await json_of(await provider.handle("/embeddings", body))
    assert again["data"] == reply["data"]  # deterministic


async def test_base64_embeddings_decode_to_the_same_floats() -> None:
    provider = MockProvider()
    floats = await json_of(await provider.handle("/embeddings", {"model": "embed-1", "input": "x"}))
    body = {"model": "embed-1", "input": "x", "encoding_format": "base64"}
    packed = await json_of(await provider.handle("/embeddings", body))
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert list(decoded) == floats["data"][0]["embedding"]


async def test_token_id_arrays_count_one_token_per_id() -> None:
    provider = MockProvider()
    body: dict[str, Any] = {"model": "embed-1", "input": [[1, 2, 3], [4]]}
    reply = await json_of(await provider.handle("/embeddings", body))
    assert reply["usage"]["prompt_tokens"] == 4
    body = {"model": "echo-1", "prompt": [5, 6], "max_tokens": 1}
    reply = await json_of(await provider.handle("/completions", body))
    assert reply["usage"]["prompt_tokens"] == 2


# --- streaming -------------------------------------------------------------------------------


def content_of(events: list[bytes]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for event in events:
        if event == DONE:
            continue
        parsed = ChatCompletionChunk.model_validate_json(event.removeprefix(b"data: "))
        for choice in parsed.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return texts


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("max_tokens", [1, 7, None])
async def test_a_stream_matches_the_json_answer(n: int, max_tokens: int | None) -> None:
    body = {"model": "echo-1", "messages": [user("the quick brown fox")], "n": n}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    provider = MockProvider()
    whole = await json_of(await provider.handle(CHAT, body))
    streamed = body | {"stream": True, "stream_options": {"include_usage": True}}
    events = await events_of(await provider.handle(CHAT, streamed))

    tokens = max_tokens or 16
    assert count_output(b"".join(events)) == tokens * n  # a chunk per token
    assert events[-1] == DONE
    assert [usage_only(event) for event in events[:-1]] == [False] * (len(events) - 2) + [True]
    usage = whole["usage"]
    assert usage_of(events[-2]) == Usage(usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["completion_tokens"] == tokens * n
    expected = {choice["index"]: choice["message"]["content"] for choice in whole["choices"]}
    assert content_of(events) == expected
    finishes = [
        choice.finish_reason
        for event in events[:-1]
        for choice in ChatCompletionChunk.model_validate_json(event[6:]).choices
    ]
    assert finishes.count(whole["choices"][0]["finish_reason"]) == n


async def test_chunks_carry_usage_null_only_when_usage_was_asked() -> None:
    body = {"model": "echo-1", "messages": [user("hi")], "max_tokens": 2, "stream": True}
    provider = MockProvider()
    plain = await events_of(await provider.handle(CHAT, body))
    assert len(plain) == 1 + 2 + 1 + 1  # role, content x2, finish, [DONE]
    assert not any(b'"usage"' in event for event in plain)
    asked = body | {"stream_options": {"include_usage": True}}
    with_usage = await events_of(await provider.handle(CHAT, asked))
    assert len(with_usage) == len(plain) + 1
    assert all(b'"usage":null' in event for event in with_usage[:-2])
    assert usage_only(with_usage[-2])
    not_asked = body | {"stream_options": {"include_usage": False}}
    assert len(await events_of(await provider.handle(CHAT, not_asked))) == len(plain)


async def test_completion_stream() -> None:
    body = {"model": "echo-1", "prompt": "say this", "max_tokens": 3, "stream": True}
    body |= {"stream_options": {"include_usage": True}}
    events = await events_of(await MockProvider().handle("/completions", body))
    assert events[-1] == DONE
    # (The SDK's Completion type says finish_reason is never null, yet OpenAI's stream
    # chunks carry null until the last one, so the SDK reads them without validating.)
    chunks = [orjson.loads(event[6:]) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "say this say"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 3 + ["length"]
    assert count_output(b"".join(events)) == 3
    assert usage_of(events[-2]) == Usage(2, 3)
    assert usage_only(events[-2])


# --- wire compatibility through the official SDK ---------------------------------------------


def serve(provider: MockProvider) -> web.Application:
    """The mock behind plain HTTP, the way a real provider answers."""

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/v1")
        reply = await provider.handle(path, orjson.loads(await request.read()))
        if reply.body is not None:
            return web.Response(status=reply.status, headers=reply.headers, body=reply.body)
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        await response.prepare(request)
        assert reply.chunks is not None
        async for piece in reply.chunks:
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/{path:.*}", handle)
    return app


async def test_the_openai_sdk_reads_every_kind_of_answer(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(serve(MockProvider()))
    base_url = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="echo-1", messages=[{"role": "user", "content": "ping pong"}], max_tokens=3
        )
        assert completion.choices[0].message.content == "ping pong ping"
        assert completion.usage is not None and completion.usage.prompt_tokens == 3

        stream = await client.chat.completions.create(
            model="echo-1",
            messages=[{"role": "user", "content": "ping pong"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "ping pong ping"
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

        text = await client.completions.create(model="free-1", prompt="abc", max_tokens=2)
        assert text.choices[0].text == "abc abc"
        text_stream = await client.completions.create(
            model="free-1", prompt="abc", max_tokens=2, stream=True
        )
        assert "".join([c.choices[0].text async for c in text_stream]) == "abc abc"

        # The SDK asks for base64 by default and decodes it itself.
        embedding = await client.embeddings.create(model="embed-1", input="abc")
        assert len(embedding.data[0].embedding) == 8
        assert embedding.usage.prompt_tokens == 1

        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nope", messages=[user("x")])  # type: ignore[list-item]
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="echo-1", messages=[])


# --- errors ----------------------------------------------------------------------------------


def assert_error(reply: MockReply, status: int, code: str) -> None:
    assert reply.status == status
    assert reply.chunks is None and reply.body is not None
    error = orjson.loads(reply.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (CHAT, {"model": "gpt-4o", "messages": [user("x")]}, 404, "model_not_found"),
        (CHAT, {"model": "embed-1", "messages": [user("x")]}, 404, "model_not_found"),
        ("/embeddings", {"model": "echo-1", "input": "x"}, 404, "model_not_found"),
        (CHAT, {"messages": [user("x")]}, 400, "missing_model"),
        (CHAT, {"model": "echo-1", "messages": "hi"}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": []}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": ["hi"]}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": [{"content": "x"}]}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": [user(3)]}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": [user([{"type": "text"}])]}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": [user(["x"])]}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": [user("x")], "n": 0}, 400, "invalid_value"),
        (CHAT, {"model": "echo-1", "messages": [user("x")], "n": 129}, 400, "invalid_value"),
        ("/completions", {"model": "echo-1", "prompt": None}, 400, "invalid_value"),
        ("/completions", {"model": "echo-1", "prompt": ["a", 1]}, 400, "invalid_value"),
        (
            "/completions",
            {"model": "echo-1", "prompt": ["a"] * 100, "n": 100},
            400,
            "invalid_value",
        ),
        ("/embeddings", {"model": "embed-1", "input": []}, 400, "invalid_value"),
        ("/embeddings", {"model": "embed-1", "input": [[1], "a"]}, 400, "invalid_value"),
        ("/images/generations", {"model": "echo-1"}, 404, "unknown_url"),
    ],
)
async def test_bad_calls_get_an_openai_error_body(
    path: str, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(await MockProvider().handle(path, body), status, code)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` seven times in eight, any JSON value otherwise."""
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: good if ok else json_values)


text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})
image_part = st.fixed_dictionaries(
    {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": st.text()})}
)
message = mostly(
    st.fixed_dictionaries(
        {
            "role": mostly(st.sampled_from(["user", "system", "assistant"])),
            "content": mostly(st.text() | st.none() | st.lists(mostly(text_part | image_part))),
        }
    )
)
MODELS = {CHAT: ["echo-1", "free-1"], "/completions": ["echo-1"], "/embeddings": ["embed-1"]}


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Any]:
    """A path and a body for it: mostly well-formed, any field possibly any JSON value."""
    path = draw(st.sampled_from([*MODELS, "/models"]))
    inputs = mostly(
        st.text()
        | st.lists(st.text(), min_size=1, max_size=3)
        | st.lists(st.lists(st.integers(), min_size=1), min_size=1, max_size=3)
    )
    body = st.fixed_dictionaries(
        {
            "model": mostly(st.sampled_from([*MODELS.get(path, []), "embed-1", "x"])),
            "messages": mostly(st.lists(message, min_size=1, max_size=3)),
            "prompt": inputs,
            "input": inputs,
            "stream": mostly(st.booleans()),
        },
        optional={
            "max_tokens": mostly(st.integers(-3, 40)),
            "max_completion_tokens": mostly(st.integers(-3, 40)),
            "n": mostly(st.integers(0, 4)),
            "stream_options": mostly(st.fixed_dictionaries({"include_usage": st.booleans()})),
            "encoding_format": mostly(st.sampled_from(["float", "base64"])),
        },
    )
    return path, draw(mostly(body))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls())
async def test_any_json_body_gets_an_answer_never_an_exception(call: tuple[str, Any]) -> None:
    path, body = call
    reply = await MockProvider().handle(path, body)
    if reply.status != 200:
        assert reply.status in (400, 404)
        assert_error(reply, reply.status, orjson.loads(reply.body or b"")["error"]["code"])
        return
    if reply.chunks is not None:
        events = await events_of(reply)
        assert events[-1] == DONE
        for event in events[:-1]:
            assert isinstance(orjson.loads(event[6:]), dict)
        usage = usage_of(events[-2])
        if usage is not None:  # include_usage: one content chunk per completion token
            assert count_output(b"".join(events)) == usage.completion_tokens
        return
    answer = await json_of(reply)
    usage_object = answer["usage"]
    assert usage_object["prompt_tokens"] >= 1
    if path == "/embeddings":
        assert all(item["object"] == "embedding" for item in answer["data"])
        return
    texts = [c["message"]["content"] if path == CHAT else c["text"] for c in answer["choices"]]
    assert usage_object["completion_tokens"] == sum(len(text.split()) for text in texts)
    assert all(1 <= len(text.split()) <= 16 for text in texts)


# --- latency ---------------------------------------------------------------------------------


async def test_latency_delays_each_answer_without_blocking_the_loop() -> None:
    provider = MockProvider(latency_ms=100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = {"model": "echo-1", "messages": [user("x")]}
    replies = await asyncio.gather(*(provider.handle(CHAT, body) for _ in range(10)))
    elapsed = loop.time() - started
    assert all(reply.status == 200 for reply in replies)
    assert 0.1 <= elapsed < 0.5  # ten answers waited together, not one after another


async def test_no_latency_answers_at_once() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await MockProvider().handle(CHAT, {"model": "echo-1", "messages": [user("x")]})
    assert loop.time() - started < 0.05


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        MockProvider(latency_ms=-1)
